// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Per-tenant counters, written by the tenant's device with relaxed atomics
//! and read by the metrics endpoint and the exit report: requests by status,
//! bytes, quota refusals, what is in flight and held, and a latency histogram.

use std::fmt::Write;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use virtio_accel_spec::Status;

use crate::dmabuf::Fallback;
use crate::quota::QuotaKind;
use crate::shared::{SharedMemory, SharedPlain};

/// Upper bounds of the latency histogram's buckets, in microseconds.
const LATENCY_BOUNDS_US: [u64; 15] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    1_000_000,
];

/// Latency from taking a request to its completion.
#[derive(Debug, Default)]
#[repr(C)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one latency.
    pub fn observe(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_US.partition_point(|bound| *bound < us);
        if let Some(counter) = self.buckets.get(bucket) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative counts per upper bound in seconds (`None` is +Inf), and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<(Option<f64>, u64)>, f64) {
        let mut total = 0;
        let bounds = LATENCY_BOUNDS_US
            .iter()
            .map(|us| Some(*us as f64 / 1e6))
            .chain([None]);
        let cumulative = bounds
            .zip(&self.buckets)
            .map(|(bound, count)| {
                // Saturating: a tenant's process writes these counters.
                total = count.load(Ordering::Relaxed).saturating_add(total);
                (bound, total)
            })
            .collect();
        (cumulative, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }

    /// The latency below which `per_mille` thousandths of the observations
    /// fall, as the upper bound of its bucket (`None`: no observation, or
    /// past the last bound).
    pub fn quantile_bound(&self, per_mille: u64) -> Option<Duration> {
        let (cumulative, _) = self.snapshot();
        let total = cumulative.last().map_or(0, |(_, count)| *count);
        if total == 0 {
            return None;
        }
        let wanted = total.saturating_mul(per_mille).div_ceil(1000);
        cumulative
            .iter()
            .find(|(_, count)| *count >= wanted)
            .and_then(|(bound, _)| bound.map(Duration::from_secs_f64))
    }
}

/// The counters themselves: plain atomics, so that they can live in memory
/// shared with the tenant's process ([`crate::shared`]).
#[derive(Debug, Default)]
#[repr(C)]
pub struct Counters {
    /// Requests completed, by status value.
    requests: [AtomicU64; Status::ALL.len()],
    /// Control commands answered, by status value.
    commands: [AtomicU64; Status::ALL.len()],
    /// Buffer bytes of requests completed with Ok.
    bytes: AtomicU64,
    /// Requests and commands refused with Busy, by quota.
    quota_refusals: [AtomicU64; QuotaKind::ALL.len()],
    /// Requests in flight (a gauge).
    inflight: AtomicU64,
    /// Objects the device holds, live or still in use after OBJECT_DESTROY (a gauge).
    objects: AtomicU64,
    /// Bytes of those objects (a gauge).
    object_bytes: AtomicU64,
    /// VMM connections accepted.
    connections: AtomicU64,
    /// Whether a VMM is connected (a gauge).
    connected: AtomicU64,
    /// Polls of the request rings that took requests ([`crate::poll`]).
    polled: AtomicU64,
    /// Objects held as host dma-bufs (a gauge, §7.1.3).
    dmabuf_objects: AtomicU64,
    /// Objects created as plain memory, by [`Fallback`] reason.
    dmabuf_fallbacks: [AtomicU64; Fallback::ALL.len()],
    /// Requests that waited for other drivers' fences on a dma-buf (§7.1.3).
    implicit_sync_waits: AtomicU64,
    /// Buffers of requests that the engine took through their objects'
    /// dma-bufs (§7.1.3).
    dmabuf_imports: AtomicU64,
    latency: Histogram,
}

// SAFETY: `Counters` is `repr(C)` and made only of `AtomicU64`s (directly,
// in arrays and in `Histogram`, itself `repr(C)`): any bits are valid, every
// access is atomic, and there is no pointer.
unsafe impl SharedPlain for Counters {}

/// Where a tenant's counters live.
#[derive(Debug)]
enum Storage {
    /// In this process only.
    Private(Box<Counters>),
    /// In a memfd shared between the supervisor and the tenant's process.
    Shared(SharedMemory<Counters>),
}

/// The counters of one tenant.
#[derive(Debug)]
pub struct TenantStats {
    name: String,
    counters: Storage,
    /// Times the tenant's process was started again after it ended: the
    /// supervisor's count, out of the tenant's reach.
    restarts: AtomicU64,
    /// Nanoseconds the supervisor's arbiter slowed the tenant's process
    /// down: its count too.
    slowed: AtomicU64,
}

impl std::ops::Deref for TenantStats {
    type Target = Counters;

    fn deref(&self) -> &Counters {
        match &self.counters {
            Storage::Private(counters) => counters,
            Storage::Shared(counters) => counters,
        }
    }
}

fn status_slot(counters: &[AtomicU64], status: Status) -> Option<&AtomicU64> {
    counters.get(u32::from(status) as usize)
}

impl TenantStats {
    /// Zeroed counters for tenant `name`, in this process only.
    pub fn new(name: impl Into<String>) -> Self {
        TenantStats {
            name: name.into(),
            counters: Storage::Private(Box::default()),
            restarts: AtomicU64::new(0),
            slowed: AtomicU64::new(0),
        }
    }

    /// Zeroed counters for tenant `name` in a new shared memory file, to be
    /// handed to the tenant's process ([`TenantStats::shared_file`]).
    pub fn shared(name: impl Into<String>) -> io::Result<Self> {
        let name = name.into();
        let counters = SharedMemory::create(&format!("stats-{name}"))?;
        Ok(TenantStats {
            name,
            counters: Storage::Shared(counters),
            restarts: AtomicU64::new(0),
            slowed: AtomicU64::new(0),
        })
    }

    /// The counters of tenant `name` in `file`, made by [`TenantStats::shared`]
    /// in the supervisor.
    pub fn attach(name: impl Into<String>, file: OwnedFd) -> io::Result<Self> {
        Ok(TenantStats {
            name: name.into(),
            counters: Storage::Shared(SharedMemory::attach(file)?),
            restarts: AtomicU64::new(0),
            slowed: AtomicU64::new(0),
        })
    }

    /// The shared memory file of counters made by [`TenantStats::shared`].
    pub fn shared_file(&self) -> Option<BorrowedFd<'_>> {
        match &self.counters {
            Storage::Private(_) => None,
            Storage::Shared(counters) => Some(counters.as_fd()),
        }
    }

    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tenant's process ended: what it held and served is gone.
    pub fn process_ended(&self) {
        for gauge in [
            &self.connected,
            &self.inflight,
            &self.objects,
            &self.object_bytes,
            &self.dmabuf_objects,
        ] {
            gauge.store(0, Ordering::Relaxed);
        }
    }

    /// The tenant's process was started again.
    pub fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// A request completed with `status` after `latency`; `bytes` are its
    /// buffer bytes.
    pub fn request_done(&self, status: Status, bytes: u64, latency: Duration) {
        if let Some(counter) = status_slot(&self.requests, status) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if status.is_ok() {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        self.latency.observe(latency);
    }

    /// A control command was answered with `status`.
    pub fn command_done(&self, status: Status) {
        if let Some(counter) = status_slot(&self.commands, status) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A quota refused a request or a command.
    pub fn quota_refused(&self, kind: QuotaKind) {
        if let Some(counter) = self.quota_refusals.get(kind.index()) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A poll of the request rings took requests, with no kick waited for.
    pub fn polled(&self) {
        self.polled.fetch_add(1, Ordering::Relaxed);
    }

    /// Polls of the request rings that took requests.
    pub fn polled_count(&self) -> u64 {
        self.polled.load(Ordering::Relaxed)
    }

    /// Sets the number of requests in flight.
    pub fn set_inflight(&self, count: usize) {
        self.inflight.store(count as u64, Ordering::Relaxed);
    }

    /// An object of `size` bytes is now held.
    pub fn object_held(&self, size: u64) {
        self.objects.fetch_add(1, Ordering::Relaxed);
        self.object_bytes.fetch_add(size, Ordering::Relaxed);
    }

    /// An object of `size` bytes was released.
    pub fn object_released(&self, size: u64) {
        self.objects.fetch_sub(1, Ordering::Relaxed);
        self.object_bytes.fetch_sub(size, Ordering::Relaxed);
    }

    /// An object held is a dma-buf (`true`, counted until
    /// [`TenantStats::dmabuf_released`]) or plain memory for `reason`.
    pub fn object_made(&self, made: Result<(), Fallback>) {
        let counter = match made {
            Ok(()) => &self.dmabuf_objects,
            Err(reason) => match self.dmabuf_fallbacks.get(reason.index()) {
                Some(counter) => counter,
                None => return,
            },
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// An object that was a dma-buf was released.
    pub fn dmabuf_released(&self) {
        self.dmabuf_objects.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request waited for other drivers' fences.
    pub fn implicit_sync_waited(&self) {
        self.implicit_sync_waits.fetch_add(1, Ordering::Relaxed);
    }

    /// The engine took `count` buffers of a request through their objects'
    /// dma-bufs.
    pub fn dmabuf_imported(&self, count: u8) {
        self.dmabuf_imports
            .fetch_add(u64::from(count), Ordering::Relaxed);
    }

    /// Objects created as plain memory for `reason`.
    pub fn dmabuf_fallbacks(&self, reason: Fallback) -> u64 {
        self.dmabuf_fallbacks
            .get(reason.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Objects held as dma-bufs.
    pub fn dmabuf_objects(&self) -> u64 {
        self.dmabuf_objects.load(Ordering::Relaxed)
    }

    /// Requests that waited for other drivers' fences.
    pub fn implicit_sync_waits(&self) -> u64 {
        self.implicit_sync_waits.load(Ordering::Relaxed)
    }

    /// Objects held and their bytes.
    pub fn held(&self) -> (u64, u64) {
        (
            self.objects.load(Ordering::Relaxed),
            self.object_bytes.load(Ordering::Relaxed),
        )
    }

    /// The arbiter slowed the tenant's process down for `duration` more
    /// ([`crate::arbiter`]).
    pub fn slowed_for(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.slowed.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How long the arbiter slowed the tenant's process down in all.
    pub fn slowed(&self) -> Duration {
        Duration::from_nanos(self.slowed.load(Ordering::Relaxed))
    }

    /// A VMM connected (`true`) or went away.
    pub fn set_connected(&self, connected: bool) {
        if connected {
            self.connections.fetch_add(1, Ordering::Relaxed);
        }
        self.connected
            .store(u64::from(connected), Ordering::Relaxed);
    }

    /// Requests completed with `status`.
    pub fn requests(&self, status: Status) -> u64 {
        status_slot(&self.requests, status).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Refusals by quota `kind`.
    pub fn quota_refusals(&self, kind: QuotaKind) -> u64 {
        self.quota_refusals
            .get(kind.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The latency histogram.
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// One line for the log: totals of what the tenant did.
    pub fn summary(&self) -> String {
        let total = |counters: &[AtomicU64]| -> u64 {
            // Saturating: a tenant's process writes these counters.
            counters
                .iter()
                .fold(0u64, |sum, c| sum.saturating_add(c.load(Ordering::Relaxed)))
        };
        let ok = self.requests(Status::Ok);
        let refused: u64 = total(&self.quota_refusals);
        let p99 = self
            .latency
            .quantile_bound(990)
            .map_or_else(|| String::from("-"), |d| format!("<= {d:?}"));
        format!(
            "tenant {}: {} connections, {} process restarts, {} requests ({} ok, {} failed, \
             {} over quota), {} bytes, {} commands, p99 latency {p99}",
            self.name,
            self.connections.load(Ordering::Relaxed),
            self.restarts.load(Ordering::Relaxed),
            total(&self.requests),
            ok,
            total(&self.requests).saturating_sub(ok),
            refused,
            self.bytes.load(Ordering::Relaxed),
            total(&self.commands),
        )
    }
}

/// `CamelCase` as `snake_case`, for status names in label values.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (index, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Selects one counter of a tenant.
type Pick = fn(&TenantStats) -> &AtomicU64;

/// Writes one metric family's header.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP vhost_user_accel_{name} {help}");
    let _ = writeln!(out, "# TYPE vhost_user_accel_{name} {kind}");
}

/// The Prometheus text exposition (format 0.0.4) of every tenant's counters.
/// Tenant names are restricted to characters that need no escaping
/// ([`crate::config::check_name`]).
pub fn render(tenants: &[std::sync::Arc<TenantStats>]) -> String {
    let mut out = String::new();
    let by_status =
        |out: &mut String, name: &str, help: &str, pick: fn(&TenantStats) -> &[AtomicU64]| {
            family(out, name, "counter", help);
            for tenant in tenants {
                for (status, counter) in Status::ALL.iter().zip(pick(tenant)) {
                    let status = snake_case(&format!("{status:?}"));
                    let _ = writeln!(
                        out,
                        "vhost_user_accel_{name}{{tenant=\"{}\",status=\"{status}\"}} {}",
                        tenant.name,
                        counter.load(Ordering::Relaxed)
                    );
                }
            }
        };
    by_status(
        &mut out,
        "requests_total",
        "Requests completed, by status.",
        |t| &t.requests,
    );
    by_status(
        &mut out,
        "commands_total",
        "Control commands answered, by status.",
        |t| &t.commands,
    );
    let by_label = |out: &mut String,
                    name: &str,
                    help: &str,
                    label: &str,
                    pick: &dyn Fn(&TenantStats) -> Vec<(&'static str, u64)>| {
        family(out, name, "counter", help);
        for tenant in tenants {
            for (value, count) in pick(tenant) {
                let _ = writeln!(
                    out,
                    "vhost_user_accel_{name}{{tenant=\"{}\",{label}=\"{value}\"}} {count}",
                    tenant.name
                );
            }
        }
    };
    by_label(
        &mut out,
        "quota_refusals_total",
        "Requests and commands refused with Busy, by quota.",
        "quota",
        &|t| {
            QuotaKind::ALL
                .map(|kind| (kind.name(), t.quota_refusals(kind)))
                .to_vec()
        },
    );
    by_label(
        &mut out,
        "dmabuf_fallbacks_total",
        "Objects created as plain guest memory, not a host dma-buf, by reason.",
        "reason",
        &|t| {
            Fallback::ALL
                .map(|reason| (reason.name(), t.dmabuf_fallbacks(reason)))
                .to_vec()
        },
    );
    let singles: [(&str, &str, &str, Pick); 11] = [
        (
            "bytes_total",
            "counter",
            "Buffer bytes of requests completed with Ok.",
            |t| &t.bytes,
        ),
        (
            "inflight_requests",
            "gauge",
            "Requests taken and not completed.",
            |t| &t.inflight,
        ),
        (
            "objects",
            "gauge",
            "Objects held, live or in use after destruction.",
            |t| &t.objects,
        ),
        ("object_bytes", "gauge", "Bytes of the objects held.", |t| {
            &t.object_bytes
        }),
        (
            "connections_total",
            "counter",
            "VMM connections accepted.",
            |t| &t.connections,
        ),
        ("connected", "gauge", "Whether a VMM is connected.", |t| {
            &t.connected
        }),
        (
            "polls_total",
            "counter",
            "Polls of the request rings that took requests without waiting for a kick.",
            |t| &t.polled,
        ),
        (
            "dmabuf_objects",
            "gauge",
            "Objects held as host dma-bufs (udmabuf).",
            |t| &t.dmabuf_objects,
        ),
        (
            "implicit_sync_waits_total",
            "counter",
            "Requests that waited for other host drivers' fences on an object's dma-buf.",
            |t| &t.implicit_sync_waits,
        ),
        (
            "dmabuf_imports_total",
            "counter",
            "Request buffers the engine took through their object's dma-buf, imported into its device.",
            |t| &t.dmabuf_imports,
        ),
        (
            "process_restarts_total",
            "counter",
            "Times the tenant's process was started again after it ended.",
            |t| &t.restarts,
        ),
    ];
    for (name, kind, help, pick) in singles {
        family(&mut out, name, kind, help);
        for tenant in tenants {
            let _ = writeln!(
                out,
                "vhost_user_accel_{name}{{tenant=\"{}\"}} {}",
                tenant.name,
                pick(tenant).load(Ordering::Relaxed)
            );
        }
    }
    family(
        &mut out,
        "slowed_seconds_total",
        "counter",
        "Time the supervisor ran the tenant's process at a lower priority for \
         tenants behind it to catch up (fair sharing).",
    );
    for tenant in tenants {
        let _ = writeln!(
            out,
            "vhost_user_accel_slowed_seconds_total{{tenant=\"{}\"}} {}",
            tenant.name,
            tenant.slowed().as_secs_f64()
        );
    }
    let name = "request_latency_seconds";
    family(
        &mut out,
        name,
        "histogram",
        "Time from taking a request to its completion.",
    );
    for tenant in tenants {
        let (buckets, sum) = tenant.latency.snapshot();
        let count = buckets.last().map_or(0, |(_, count)| *count);
        for (bound, cumulative) in buckets {
            let le = bound.map_or_else(|| String::from("+Inf"), |b| b.to_string());
            let _ = writeln!(
                out,
                "vhost_user_accel_{name}_bucket{{tenant=\"{}\",le=\"{le}\"}} {cumulative}",
                tenant.name
            );
        }
        let _ = writeln!(
            out,
            "vhost_user_accel_{name}_sum{{tenant=\"{}\"}} {sum}",
            tenant.name
        );
        let _ = writeln!(
            out,
            "vhost_user_accel_{name}_count{{tenant=\"{}\"}} {count}",
            tenant.name
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counters_render_as_prometheus_text() {
        let a = Arc::new(TenantStats::new("vm-a"));
        let b = Arc::new(TenantStats::new("vm-b"));
        a.request_done(Status::Ok, 4096, Duration::from_micros(30));
        a.request_done(Status::NoObject, 10, Duration::from_micros(5));
        a.quota_refused(QuotaKind::Inflight);
        a.set_connected(true);
        a.object_made(Err(Fallback::Unaligned));
        b.object_made(Ok(()));
        b.object_made(Ok(()));
        b.dmabuf_released();
        b.implicit_sync_waited();
        b.dmabuf_imported(2);
        b.request_done(Status::Ok, 1, Duration::from_secs(3));
        let text = render(&[a, b]);
        for line in [
            "vhost_user_accel_requests_total{tenant=\"vm-a\",status=\"ok\"} 1",
            "vhost_user_accel_requests_total{tenant=\"vm-a\",status=\"no_object\"} 1",
            "vhost_user_accel_requests_total{tenant=\"vm-b\",status=\"device_error\"} 0",
            "vhost_user_accel_quota_refusals_total{tenant=\"vm-a\",quota=\"inflight\"} 1",
            "vhost_user_accel_bytes_total{tenant=\"vm-a\"} 4096",
            "vhost_user_accel_connected{tenant=\"vm-a\"} 1",
            "vhost_user_accel_connections_total{tenant=\"vm-b\"} 0",
            "vhost_user_accel_dmabuf_fallbacks_total{tenant=\"vm-a\",reason=\"unaligned\"} 1",
            "vhost_user_accel_dmabuf_fallbacks_total{tenant=\"vm-a\",reason=\"no_device\"} 0",
            "vhost_user_accel_dmabuf_objects{tenant=\"vm-b\"} 1",
            "vhost_user_accel_implicit_sync_waits_total{tenant=\"vm-b\"} 1",
            "vhost_user_accel_dmabuf_imports_total{tenant=\"vm-b\"} 2",
            "vhost_user_accel_request_latency_seconds_bucket{tenant=\"vm-a\",le=\"0.00001\"} 1",
            "vhost_user_accel_request_latency_seconds_bucket{tenant=\"vm-a\",le=\"0.00005\"} 2",
            "vhost_user_accel_request_latency_seconds_bucket{tenant=\"vm-b\",le=\"1\"} 0",
            "vhost_user_accel_request_latency_seconds_bucket{tenant=\"vm-b\",le=\"+Inf\"} 1",
            "vhost_user_accel_request_latency_seconds_count{tenant=\"vm-a\"} 2",
            "# TYPE vhost_user_accel_request_latency_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is NAME{LABELS} VALUE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert!(series.ends_with('}'), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn quantiles_come_from_the_buckets() {
        let histogram = Histogram::default();
        assert_eq!(histogram.quantile_bound(990), None);
        for _ in 0..99 {
            histogram.observe(Duration::from_micros(20));
        }
        histogram.observe(Duration::from_millis(3));
        assert_eq!(
            histogram.quantile_bound(500),
            Some(Duration::from_micros(25))
        );
        assert_eq!(
            histogram.quantile_bound(990),
            Some(Duration::from_micros(25))
        );
        assert_eq!(
            histogram.quantile_bound(1000),
            Some(Duration::from_millis(5))
        );
    }
}
