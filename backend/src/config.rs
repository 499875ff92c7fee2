// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Daemon configuration, independent of how it was given (command line,
//! configuration file, tests): the engine, the metrics endpoint, how long
//! the supervisor may pause before restarting a tenant's process, and the
//! tenants, each one VM's device behind its own socket.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use virtio_accel_spec::VirtioAccelConfig;

use crate::sandbox::UserSpec;

/// Most request queues a tenant's device serves: 64 virtqueues with the
/// control queue, the number vhost-user-backend's vrings were designed
/// around (one bit of a 64-bit mask each). (The specification allows up to
/// `MAX_REQUEST_QUEUES`, 64.)
pub const MAX_QUEUES: u16 = 63;
/// Most engine worker threads.
pub const MAX_ENGINE_THREADS: usize = 256;
/// Most tenants one daemon serves.
pub const MAX_TENANTS: usize = 1024;
/// Largest scheduling weight of a tenant.
pub const MAX_WEIGHT: u32 = 1000;
/// Default of the longest pause before a tenant's process that ended is
/// started again (`max-restart-pause-ms`, [`crate::supervisor`]).
pub const DEFAULT_MAX_RESTART_PAUSE: Duration = Duration::from_secs(5);
/// Least `max-restart-pause-ms`: a process that dies as it starts is
/// started again at most a hundred times a second.
pub const MIN_RESTART_PAUSE_MS: u64 = 10;
/// Largest `max-restart-pause-ms`: an hour.
pub const MAX_RESTART_PAUSE_MS: u64 = 3_600_000;

/// A value of the configuration out of its range, or a clash between tenants.
/// The messages of values leave out the setting's name, which the command
/// line (`--queues: ...`) and the configuration file (`FILE:LINE: KEY: ...`)
/// put in front in their own spelling.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Request queues out of range.
    #[error("must be between 1 and {MAX_QUEUES}, got {0}")]
    Queues(u64),
    /// Queue size not a power of two in range.
    #[error("must be a power of two between 2 and 32768, got {0}")]
    QueueSize(u64),
    /// Polling window out of range.
    #[error("must be at most {MAX_POLL_US} (microseconds), got {0}")]
    PollUs(u64),
    /// Engine threads out of range.
    #[error("must be between 1 and {MAX_ENGINE_THREADS}, got {0}")]
    EngineThreads(u64),
    /// Engine priority step out of range.
    #[error("must be between 0 and 19, got {0}")]
    EngineNice(u64),
    /// Weight out of range.
    #[error("must be between 1 and {MAX_WEIGHT}, got {0}")]
    Weight(u64),
    /// A quota of zero would refuse everything.
    #[error("must be at least 1 (leave the quota out for none)")]
    ZeroQuota,
    /// A quota past what the tenant's process can be told.
    #[error("must be at most {max}, got {0}", max = i64::MAX)]
    QuotaTooLarge(u64),
    /// A tenant name that cannot be a metrics label value or a log prefix.
    #[error("must be 1 to 64 letters, digits, '-', '_' or '.', got {0:?}")]
    Name(String),
    /// Two tenants with one name.
    #[error("tenant name {0:?} is used twice")]
    DuplicateName(String),
    /// Two tenants on one socket.
    #[error("socket {0} is used by two tenants")]
    DuplicateSocket(String),
    /// A tenant with both or neither of a socket path and a socket descriptor.
    #[error("give exactly one of socket and socket-fd")]
    SocketChoice,
    /// A descriptor that is not an open socket.
    #[error("{0} is not an open socket")]
    SocketFd(RawFd),
    /// No tenant at all.
    #[error("no tenant: give --socket-path, --socket-fd or a configuration file with [[tenant]]")]
    NoTenant,
    /// Too many tenants.
    #[error("between 1 and {MAX_TENANTS} tenants, got {0}")]
    TooManyTenants(usize),
    /// `--socket-count` with a path that has no `{}`.
    #[error("needs a socket path with a {{}} placeholder for the index, got {0}")]
    NoPlaceholder(String),
    /// A user that cannot be switched to.
    #[error("{0}")]
    User(String),
    /// A metrics address that is neither `HOST:PORT` on loopback nor `unix:PATH`.
    #[error("must be a loopback HOST:PORT (127.0.0.1:9105, [::1]:9105) or unix:PATH, got {0:?}")]
    Metrics(String),
    /// Longest restart pause out of range.
    #[error(
        "must be between {MIN_RESTART_PAUSE_MS} and {MAX_RESTART_PAUSE_MS} (milliseconds), got {0}"
    )]
    RestartPause(u64),
    /// A state directory that is not an absolute path.
    #[error("must be an absolute path, got {0:?}")]
    StateDir(PathBuf),
}

/// Where a tenant's vhost-user socket comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketSource {
    /// Bind and listen on this path (an existing socket file is replaced).
    Path(PathBuf),
    /// A listening socket inherited from the parent (e.g. systemd, libvirt).
    Fd(RawFd),
}

impl std::fmt::Display for SocketSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketSource::Path(path) => write!(f, "{}", path.display()),
            SocketSource::Fd(fd) => write!(f, "fd {fd}"),
        }
    }
}

/// Which engine runs the operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineKind {
    /// Host CPU threads ([`crate::engine::software::SoftwareEngine`]).
    Software,
    /// A Vulkan device for what it runs, host CPU threads for the rest
    /// ([`crate::engine::vulkan::VulkanEngine`]).
    Vulkan,
}

/// Where the metrics endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    /// A TCP port on a loopback address.
    Tcp(std::net::SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for MetricsAddr {
    type Err = ConfigError;

    /// `unix:PATH`, or `HOST:PORT` with a loopback host: the endpoint has no
    /// authentication, so it is never offered beyond this machine.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refused = || ConfigError::Metrics(text.to_owned());
        if let Some(path) = text.strip_prefix("unix:") {
            return if path.is_empty() {
                Err(refused())
            } else {
                Ok(MetricsAddr::Unix(PathBuf::from(path)))
            };
        }
        let addr: std::net::SocketAddr = text.parse().map_err(|_| refused())?;
        if addr.ip().is_loopback() {
            Ok(MetricsAddr::Tcp(addr))
        } else {
            Err(refused())
        }
    }
}

/// Limits the device reports in its configuration (§5, §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most descriptors per chain and segments per object.
    pub max_segments: u32,
    /// Most fences per request or FENCE_WAIT.
    pub max_deps: u32,
    /// Most live objects per connection.
    pub max_objects: u32,
    /// Largest object in bytes.
    pub max_object_size: u64,
    /// Largest buffer of one request in bytes.
    pub max_buffer_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_segments: 64,
            max_deps: 16,
            max_objects: 1024,
            max_object_size: 1 << 30,
            max_buffer_size: 64 << 20,
        }
    }
}

/// Host policy on what one tenant may use: not reported to the driver; a
/// request or command past a quota completes with Busy (§10.3). `None` is
/// no quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Objects the device holds for the tenant: live ones, and destroyed ones
    /// that requests still use.
    pub objects: Option<u64>,
    /// Bytes of guest memory in those objects.
    pub object_bytes: Option<u64>,
    /// Requests in flight over all the tenant's request queues.
    pub inflight: Option<u64>,
    /// Requests per second, with a burst of one second's worth.
    pub jobs_per_sec: Option<u64>,
    /// Buffer bytes per second (the lengths of a request's buffer
    /// references), with a burst of one second's worth.
    pub bytes_per_sec: Option<u64>,
}

/// One tenant: a VM, its socket and its device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantConfig {
    /// Name in logs and metrics.
    pub name: String,
    /// The vhost-user socket.
    pub socket: SocketSource,
    /// Number of request queues (the control queue comes on top).
    pub request_queues: u16,
    /// Largest virtqueue size the device accepts.
    pub queue_size: u16,
    /// Share of the engine against other busy tenants.
    pub weight: u32,
    /// Device limits.
    pub limits: Limits,
    /// Host quotas.
    pub quota: Quota,
    /// The longest the worker of a connection polls the request rings after
    /// an event, in microseconds, before it sleeps ([`crate::poll`]); 0
    /// never polls.
    pub poll_us: u32,
}

impl TenantConfig {
    /// A tenant with defaults for everything but its name and socket.
    pub fn new(name: impl Into<String>, socket: SocketSource) -> Self {
        TenantConfig {
            name: name.into(),
            socket,
            request_queues: 2,
            queue_size: 256,
            weight: 1,
            limits: Limits::default(),
            quota: Quota::default(),
            poll_us: DEFAULT_POLL_US,
        }
    }

    /// The configuration space the device exposes (§5), given the engine's
    /// capability mask.
    pub fn device_config(&self, ops: u32) -> VirtioAccelConfig {
        VirtioAccelConfig {
            num_request_queues: u32::from(self.request_queues).into(),
            ops: ops.into(),
            max_segments: self.limits.max_segments.into(),
            max_deps: self.limits.max_deps.into(),
            max_objects: self.limits.max_objects.into(),
            max_inflight: u32::from(self.queue_size).into(),
            max_object_size: self.limits.max_object_size.into(),
            max_buffer_size: self.limits.max_buffer_size.into(),
        }
    }

    /// Checks every value of the tenant on its own.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name(&self.name)?;
        check_queues(u64::from(self.request_queues))?;
        check_queue_size(u64::from(self.queue_size))?;
        check_weight(u64::from(self.weight))?;
        check_poll_us(u64::from(self.poll_us))?;
        let quota = &self.quota;
        [
            quota.objects,
            quota.object_bytes,
            quota.inflight,
            quota.jobs_per_sec,
            quota.bytes_per_sec,
        ]
        .into_iter()
        .flatten()
        .try_for_each(check_quota)
    }
}

/// The daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Engine kind.
    pub engine: EngineKind,
    /// Worker threads of the software engine.
    pub engine_threads: usize,
    /// How many nice steps below the daemon the software engine's workers run
    /// when it serves a single tenant ([`crate::fairshare::engine_nice`]).
    pub engine_nice: i32,
    /// The Vulkan engine's device: an index, or part of its name; the first
    /// able one if `None`.
    pub vulkan_device: Option<String>,
    /// Whether objects become host dma-bufs where the host allows it
    /// (§7.1.3, [`crate::dmabuf`]).
    pub dmabuf_objects: bool,
    /// The Prometheus endpoint, if any.
    pub metrics: Option<MetricsAddr>,
    /// The tenants.
    pub tenants: Vec<TenantConfig>,
    /// The unprivileged user tenants' processes switch to when the daemon
    /// runs as root.
    pub user: Option<UserSpec>,
    /// The longest pause before the supervisor starts again a tenant's
    /// process that ended ([`crate::supervisor`]); the first pause is the
    /// shorter of this and [`crate::supervisor::RETRY_DELAY`].
    pub max_restart_pause: Duration,
    /// Where the supervisor saves the record of each tenant's device when
    /// it stops, for the next daemon to resume the devices (§11.3); none
    /// if `None`.
    pub state_dir: Option<PathBuf>,
}

impl Config {
    /// A daemon with one default tenant, named `0`, on `socket`.
    pub fn new(socket: SocketSource) -> Self {
        Config::with_tenants(vec![TenantConfig::new("0", socket)])
    }

    /// A daemon with default engine settings serving `tenants`.
    pub fn with_tenants(tenants: Vec<TenantConfig>) -> Self {
        Config {
            engine: EngineKind::Software,
            engine_threads: 2,
            engine_nice: crate::engine::software::DEFAULT_WORKER_NICE,
            vulkan_device: None,
            dmabuf_objects: true,
            metrics: None,
            tenants,
            user: None,
            max_restart_pause: DEFAULT_MAX_RESTART_PAUSE,
            state_dir: None,
        }
    }

    /// Checks every value, and that tenants share neither a name nor a socket.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_engine_threads(self.engine_threads as u64)?;
        check_engine_nice(u64::try_from(self.engine_nice).unwrap_or(u64::MAX))?;
        check_max_restart_pause(
            u64::try_from(self.max_restart_pause.as_millis()).unwrap_or(u64::MAX),
        )?;
        if let Some(dir) = &self.state_dir {
            check_state_dir(dir)?;
        }
        match self.tenants.len() {
            0 => return Err(ConfigError::NoTenant),
            n if n > MAX_TENANTS => return Err(ConfigError::TooManyTenants(n)),
            _ => {}
        }
        self.tenants.iter().try_for_each(TenantConfig::validate)?;
        match self.clash() {
            Some((_, clash)) => Err(clash),
            None => Ok(()),
        }
    }

    /// The first tenant with the name or the socket of an earlier one, and
    /// which of the two it repeats.
    pub fn clash(&self) -> Option<(usize, ConfigError)> {
        let tenants = &self.tenants;
        tenants.iter().enumerate().find_map(|(index, tenant)| {
            let earlier = tenants.get(..index).unwrap_or_default();
            if earlier.iter().any(|other| other.name == tenant.name) {
                Some((index, ConfigError::DuplicateName(tenant.name.clone())))
            } else if earlier.iter().any(|other| other.socket == tenant.socket) {
                let socket = tenant.socket.to_string();
                Some((index, ConfigError::DuplicateSocket(socket)))
            } else {
                None
            }
        })
    }
}

/// Tenant names become metrics label values and log prefixes.
pub fn check_name(name: &str) -> Result<(), ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if (1..=64).contains(&name.len()) && name.chars().all(allowed) {
        Ok(())
    } else {
        Err(ConfigError::Name(name.to_owned()))
    }
}

/// `value` as a `T` for which `valid` holds, or `error(value)`.
fn in_range<T: TryFrom<u64>>(
    value: u64,
    valid: impl Fn(&T) -> bool,
    error: impl Fn(u64) -> ConfigError,
) -> Result<T, ConfigError> {
    T::try_from(value)
        .ok()
        .filter(valid)
        .ok_or_else(|| error(value))
}

/// Request queues per tenant.
pub fn check_queues(value: u64) -> Result<u16, ConfigError> {
    in_range(value, |q| (1..=MAX_QUEUES).contains(q), ConfigError::Queues)
}

/// Largest virtqueue size.
pub fn check_queue_size(value: u64) -> Result<u16, ConfigError> {
    let valid = |size: &u16| *size >= 2 && size.is_power_of_two();
    in_range(value, valid, ConfigError::QueueSize)
}

/// The default of [`TenantConfig::poll_us`]: as long as a few wake-ups of
/// a sleeping thread on another CPU of a virtual machine's host.
pub const DEFAULT_POLL_US: u32 = 50;
/// The largest [`TenantConfig::poll_us`]: polling is for the gap between a
/// completion and the driver's next request, not for long pauses.
pub const MAX_POLL_US: u32 = 1000;

/// The longest poll of a connection's request rings, in microseconds.
pub fn check_poll_us(value: u64) -> Result<u32, ConfigError> {
    in_range(value, |us: &u32| *us <= MAX_POLL_US, ConfigError::PollUs)
}

/// Software engine threads.
pub fn check_engine_threads(value: u64) -> Result<usize, ConfigError> {
    let valid = |threads: &usize| (1..=MAX_ENGINE_THREADS).contains(threads);
    in_range(value, valid, ConfigError::EngineThreads)
}

/// Nice steps of the software engine's workers below the daemon.
pub fn check_engine_nice(value: u64) -> Result<i32, ConfigError> {
    in_range(
        value,
        |nice| (0..=19).contains(nice),
        ConfigError::EngineNice,
    )
}

/// Longest pause between a tenant's processes, in milliseconds.
pub fn check_max_restart_pause(millis: u64) -> Result<Duration, ConfigError> {
    if (MIN_RESTART_PAUSE_MS..=MAX_RESTART_PAUSE_MS).contains(&millis) {
        Ok(Duration::from_millis(millis))
    } else {
        Err(ConfigError::RestartPause(millis))
    }
}

/// The state directory: an absolute path.
pub fn check_state_dir(path: &Path) -> Result<PathBuf, ConfigError> {
    if path.is_absolute() {
        Ok(path.to_owned())
    } else {
        Err(ConfigError::StateDir(path.to_owned()))
    }
}

/// Scheduling weight.
pub fn check_weight(value: u64) -> Result<u32, ConfigError> {
    in_range(value, |w| (1..=MAX_WEIGHT).contains(w), ConfigError::Weight)
}

/// An inherited socket descriptor: it must be open and a socket.
pub fn check_socket_fd(fd: RawFd) -> Result<RawFd, ConfigError> {
    use std::os::unix::fs::FileTypeExt;
    // The link in /proc names what the descriptor is open on, if it is open.
    let is_socket = fd >= 0
        && std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|m| m.file_type().is_socket());
    if is_socket {
        Ok(fd)
    } else {
        Err(ConfigError::SocketFd(fd))
    }
}

/// A user to switch to: a user name or `UID:GID`, neither root.
pub fn check_user(text: &str) -> Result<UserSpec, ConfigError> {
    text.parse()
        .map_err(|e: crate::sandbox::SandboxError| ConfigError::User(crate::error_chain(&e)))
}

/// A quota value.
pub fn check_quota(value: u64) -> Result<(), ConfigError> {
    match value {
        0 => Err(ConfigError::ZeroQuota),
        // The supervisor hands a tenant's configuration to its process as
        // TOML, whose integers are signed 64-bit.
        v if i64::try_from(v).is_err() => Err(ConfigError::QuotaTooLarge(v)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tenant(name: &str, path: &str) -> TenantConfig {
        TenantConfig::new(name, SocketSource::Path(PathBuf::from(path)))
    }

    #[test]
    fn tenants_share_neither_names_nor_sockets() {
        let mut config = Config::with_tenants(vec![tenant("a", "/x"), tenant("b", "/y")]);
        assert_eq!(config.validate(), Ok(()));
        config.tenants[1].name = String::from("a");
        assert_eq!(
            config.validate(),
            Err(ConfigError::DuplicateName(String::from("a")))
        );
        config.tenants[1] = tenant("b", "/x");
        assert_eq!(
            config.validate(),
            Err(ConfigError::DuplicateSocket(String::from("/x")))
        );
        assert_eq!(
            Config::with_tenants(Vec::new()).validate(),
            Err(ConfigError::NoTenant)
        );
    }

    #[test]
    fn values_out_of_range_are_named() {
        let mut one = tenant("ok", "/x");
        one.quota.inflight = Some(0);
        assert_eq!(one.validate(), Err(ConfigError::ZeroQuota));
        one.quota.inflight = Some(1);
        one.weight = 0;
        assert_eq!(one.validate(), Err(ConfigError::Weight(0)));
        assert!(check_name("vm-1.prod_a").is_ok());
        for bad in ["", "a b", "a\"b", "é", &"x".repeat(65)] {
            assert_eq!(check_name(bad), Err(ConfigError::Name(bad.to_owned())));
        }
        assert_eq!(check_queues(64), Err(ConfigError::Queues(64)));
        assert_eq!(check_queues(1 << 20), Err(ConfigError::Queues(1 << 20)));
        assert_eq!(check_queue_size(100), Err(ConfigError::QueueSize(100)));
        assert_eq!(check_queue_size(65536), Err(ConfigError::QueueSize(65536)));
        assert_eq!(check_queue_size(32768), Ok(32768));
        assert_eq!(
            check_max_restart_pause(9),
            Err(ConfigError::RestartPause(9))
        );
        assert_eq!(check_max_restart_pause(10), Ok(Duration::from_millis(10)));
        assert_eq!(
            check_max_restart_pause(3_600_000),
            Ok(Duration::from_secs(3600))
        );
        assert_eq!(
            check_max_restart_pause(3_600_001),
            Err(ConfigError::RestartPause(3_600_001))
        );
        let mut config = Config::with_tenants(vec![tenant("a", "/x")]);
        assert_eq!(config.max_restart_pause, DEFAULT_MAX_RESTART_PAUSE);
        config.max_restart_pause = Duration::from_millis(1);
        assert_eq!(config.validate(), Err(ConfigError::RestartPause(1)));
    }

    #[test]
    fn metrics_stay_on_this_machine() {
        assert_eq!(
            "127.0.0.1:9105".parse(),
            Ok(MetricsAddr::Tcp("127.0.0.1:9105".parse().unwrap()))
        );
        assert!("[::1]:0".parse::<MetricsAddr>().is_ok());
        assert_eq!(
            "unix:/run/m.sock".parse(),
            Ok(MetricsAddr::Unix(PathBuf::from("/run/m.sock")))
        );
        for bad in [
            "0.0.0.0:9105",
            "10.1.2.3:80",
            "localhost:80",
            "unix:",
            "9105",
        ] {
            assert_eq!(
                bad.parse::<MetricsAddr>(),
                Err(ConfigError::Metrics(bad.to_owned()))
            );
        }
    }
}
