// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Rate-limited logging: a guest that floods bad requests, or a VMM that
//! reconnects in a loop, must not flood the host's logs.
//!
//! [`RateLimit`] is the counter; [`TenantLog`] is what the daemon's own code
//! logs through when a guest or a VMM can trigger the line (spec §12.7), and
//! [`LimitedLogger`] holds the lines of the crates it builds on (virtio-queue
//! logs a failed ring read per entry, for one) to the same rate.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use log::{info, log, warn, Level, Log, Metadata, Record};

use crate::dmabuf::Fallback;

/// Allows `burst` messages per `window`, then counts what it suppressed.
#[derive(Debug)]
pub struct RateLimit {
    window: Duration,
    burst: u32,
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

impl RateLimit {
    /// A limiter of `burst` messages per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        RateLimit {
            window,
            burst,
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether a message may be logged now; when a new window opens, also the
    /// number of messages suppressed in the previous ones.
    pub fn allow(&mut self) -> (bool, u64) {
        let now = Instant::now();
        let mut reported = 0;
        if now.duration_since(self.window_start) >= self.window {
            self.window_start = now;
            self.in_window = 0;
            reported = std::mem::take(&mut self.suppressed);
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            (true, reported)
        } else {
            self.suppressed += 1;
            (false, reported)
        }
    }
}

/// Messages each source may log per window.
const BURST: u32 = 10;
/// The window of [`BURST`].
const WINDOW: Duration = Duration::from_secs(1);

/// The log target of [`TenantLog`]'s lines (`RUST_LOG=vhost_user_accel::tenant=warn`
/// keeps only the warnings about guests and VMMs).
pub const TENANT_TARGET: &str = "vhost_user_accel::tenant";

/// The log lines of one tenant that its guest or its VMM can trigger, each
/// source within its own limit. It lives as long as the tenant's process, not
/// a connection: a VMM that reconnects gets no fresh allowance.
#[derive(Debug)]
pub struct TenantLog {
    tenant: String,
    guest: Mutex<RateLimit>,
    vmm: Mutex<RateLimit>,
    /// Whether the VMM's guest memory was found unsealed before.
    unsealed_seen: AtomicBool,
    /// The reasons objects were not made dma-bufs that were logged, one
    /// bit per [`Fallback::index`].
    fallbacks_seen: AtomicU32,
}

impl TenantLog {
    /// The log of tenant `tenant`.
    pub fn new(tenant: &str) -> Self {
        TenantLog {
            tenant: tenant.to_owned(),
            guest: Mutex::new(RateLimit::new(BURST, WINDOW)),
            vmm: Mutex::new(RateLimit::new(BURST, WINDOW)),
            unsealed_seen: AtomicBool::new(false),
            fallbacks_seen: AtomicU32::new(0),
        }
    }

    /// Whether this is the first memory table with unsealed regions that the
    /// tenant's process sees: the warning about them is given once, as a
    /// VMM that does not seal its memory (cloud-hypervisor) never does, at
    /// every table of every connection.
    pub fn first_unsealed_table(&self) -> bool {
        !self.unsealed_seen.swap(true, Ordering::Relaxed)
    }

    /// Says why an object is not a dma-buf (§7.1.3), once per reason and
    /// process: an operator learns what keeps the tenant's objects plain
    /// memory, and a driver that creates objects in a loop floods nothing.
    pub fn dmabuf_fallback(&self, reason: Fallback) {
        let bit = 1 << reason.index();
        if self.fallbacks_seen.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            let tenant = &self.tenant;
            info!(
                target: TENANT_TARGET,
                "tenant {tenant}: an object is not a host dma-buf: {reason} \
                 (counted as {}, said once per process)",
                reason.name()
            );
        }
    }

    /// Logs something the guest's driver did (a malformed request...).
    pub fn guest(&self, level: Level, args: fmt::Arguments<'_>) {
        self.log(&self.guest, "guest", level, args);
    }

    /// Logs something the VMM did (a connection, a memory table...).
    pub fn vmm(&self, level: Level, args: fmt::Arguments<'_>) {
        self.log(&self.vmm, "VMM", level, args);
    }

    fn log(&self, limit: &Mutex<RateLimit>, kind: &str, level: Level, args: fmt::Arguments<'_>) {
        let (allowed, suppressed) = limit.lock().unwrap_or_else(PoisonError::into_inner).allow();
        let tenant = &self.tenant;
        if suppressed > 0 {
            warn!(target: TENANT_TARGET, "tenant {tenant}: {suppressed} {kind} messages suppressed");
        }
        if allowed {
            log!(target: TENANT_TARGET, level, "tenant {tenant}: {args}");
        }
    }
}

/// A logger that passes the daemon's own lines through to `inner` and holds
/// every other crate's lines to ten lines a second per target: those
/// crates log what a VMM or a guest did (a ring in unmapped memory, a bad
/// queue size) without a limit of their own.
pub struct LimitedLogger<L> {
    inner: L,
    foreign: Mutex<HashMap<String, RateLimit>>,
}

impl<L: Log> LimitedLogger<L> {
    /// Limits the foreign lines that reach `inner`.
    pub fn new(inner: L) -> Self {
        LimitedLogger {
            inner,
            foreign: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `record` may pass, and how many lines of its target were held
    /// back since it last could.
    fn admit(&self, record: &Record<'_>) -> (bool, u64) {
        let target = record.target();
        if target.split("::").next() == Some(env!("CARGO_CRATE_NAME")) {
            return (true, 0);
        }
        let mut foreign = self.foreign.lock().unwrap_or_else(PoisonError::into_inner);
        // Targets are module paths of linked crates: a fixed, small set.
        foreign
            .entry(target.to_owned())
            .or_insert_with(|| RateLimit::new(BURST, WINDOW))
            .allow()
    }
}

impl<L: Log> Log for LimitedLogger<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        let (allowed, suppressed) = self.admit(record);
        if suppressed > 0 {
            self.inner.log(
                &Record::builder()
                    .level(Level::Warn)
                    .target(record.target())
                    .args(format_args!("{suppressed} messages suppressed"))
                    .build(),
            );
        }
        if allowed {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Keeps the text of every line it is given.
    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl Log for Lines {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &Record<'_>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{}: {}", record.target(), record.args()));
        }
        fn flush(&self) {}
    }

    fn line(logger: &impl Log, target: &str) {
        logger.log(
            &Record::builder()
                .level(Level::Error)
                .target(target)
                .args(format_args!("a line"))
                .build(),
        );
    }

    #[test]
    fn other_crates_lines_are_limited_and_the_daemons_are_not() {
        let logger = LimitedLogger::new(Lines::default());
        for _ in 0..100 {
            line(&logger, "virtio_queue::queue");
            line(&logger, "vhost_user_accel::device");
        }
        let lines = logger.inner.0.lock().unwrap();
        let count = |target: &str| lines.iter().filter(|l| l.starts_with(target)).count();
        assert_eq!(count("virtio_queue::queue"), BURST as usize);
        assert_eq!(count("vhost_user_accel::device"), 100);
    }

    #[test]
    fn suppresses_past_the_burst_and_reports_later() {
        let mut limit = RateLimit::new(2, Duration::from_millis(30));
        assert_eq!(limit.allow(), (true, 0));
        assert_eq!(limit.allow(), (true, 0));
        assert_eq!(limit.allow(), (false, 0));
        assert_eq!(limit.allow(), (false, 0));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(limit.allow(), (true, 2));
    }
}
