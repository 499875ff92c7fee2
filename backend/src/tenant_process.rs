// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A tenant's own process: what the supervisor hands it, and how it runs.
//!
//! The supervisor ([`crate::supervisor`]) starts the daemon's own binary
//! again with the hidden `--tenant-process` option. The new process finds:
//! - on its standard input, its [`ProcessConfig`] as TOML, then end of file;
//! - at descriptor [`LISTENER_FD`], the tenant's listening vhost-user socket;
//! - at descriptor [`STATS_FD`], the sealed memfd of the tenant's counters;
//! - at descriptor [`RECORD_FD`], the sealed memfd of its device's record,
//!   which the last process of the tenant may have left a device in (§11.3).
//!
//! It then runs a [`Server`] of that one tenant, with an engine of its own:
//! it maps only its own VM's memory, and whatever goes wrong in it (a
//! SIGBUS from a VMM that truncated its memory, a panic, which aborts the
//! process here) ends this process alone, which the supervisor restarts.

use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use log::{debug, info};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use vhost::vhost_user::Listener;

use crate::config::{check_socket_fd, Config, ConfigError, EngineKind, SocketSource, TenantConfig};
use crate::device_record::DeviceRecord;
use crate::fairshare;
use crate::sandbox::{self, SandboxConfig, SandboxError, UserSpec};
use crate::server::{Kept, Server, ServerError};
use crate::stats::TenantStats;

/// Descriptor of the tenant's listening socket in its process.
pub const LISTENER_FD: RawFd = 3;
/// Descriptor of the tenant's counters in its process.
pub const STATS_FD: RawFd = 4;
/// Descriptor of the tenant's device record in its process.
pub const RECORD_FD: RawFd = 5;
/// Largest configuration a tenant's process reads.
const MAX_CONFIG: u64 = 1 << 20;

/// What the supervisor tells a tenant's process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// Engine kind.
    pub engine: EngineKind,
    /// Worker threads of the software engine: the configured number, or
    /// this tenant's share of the host's CPUs ([`fairshare::engine_threads`]).
    pub engine_threads: usize,
    /// How many nice steps below the process the engine's workers run: as
    /// configured alone, none beside other tenants
    /// ([`fairshare::engine_nice`]).
    pub engine_nice: i32,
    /// The Vulkan engine's device, as configured.
    pub vulkan_device: Option<String>,
    /// Whether objects become host dma-bufs, as configured.
    pub dmabuf_objects: bool,
    /// The tenant; its socket is [`LISTENER_FD`].
    pub tenant: TenantConfig,
    /// How many processes of this tenant ran before this one.
    pub incarnation: u64,
    /// The user to switch to when started as root.
    pub user: Option<UserSpec>,
}

/// Errors of a tenant's process before it serves.
#[derive(Debug, Error)]
pub enum TenantProcessError {
    /// The configuration could not be read.
    #[error("cannot read the configuration from standard input")]
    Read(#[source] io::Error),
    /// The configuration is not valid TOML of a [`ProcessConfig`].
    #[error("invalid configuration from the supervisor")]
    Parse(#[source] toml::de::Error),
    /// The configuration could not be written.
    #[error("cannot encode the configuration of a tenant's process")]
    Encode(#[source] toml::ser::Error),
    /// A value of the configuration is out of range.
    #[error("invalid configuration from the supervisor")]
    Invalid(#[source] ConfigError),
    /// The command line names another tenant than the configuration.
    #[error("the command line names tenant {0:?}, the configuration another")]
    Name(String),
    /// An inherited descriptor is missing or of the wrong kind.
    #[error("descriptor {fd} ({what}) was not handed over")]
    Descriptor {
        /// Its number.
        fd: RawFd,
        /// What it should be.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The sandbox could not be put in force.
    #[error("cannot sandbox the process")]
    Sandbox(#[from] SandboxError),
    /// The server could not start or stopped.
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl ProcessConfig {
    /// The process configuration of `tenant` of `config`.
    pub fn new(config: &Config, tenant: &TenantConfig, incarnation: u64) -> Self {
        ProcessConfig {
            engine: config.engine,
            engine_threads: fairshare::engine_threads(config.engine_threads, config.tenants.len()),
            engine_nice: fairshare::engine_nice(config.engine_nice, config.tenants.len()),
            vulkan_device: config.vulkan_device.clone(),
            dmabuf_objects: config.dmabuf_objects,
            tenant: TenantConfig {
                socket: SocketSource::Fd(LISTENER_FD),
                ..tenant.clone()
            },
            incarnation,
            user: config.user.clone(),
        }
    }

    /// The text handed to the process.
    pub fn encode(&self) -> Result<String, TenantProcessError> {
        toml::to_string(self).map_err(TenantProcessError::Encode)
    }

    /// Reads and checks a configuration from `input`.
    pub fn decode(input: impl Read) -> Result<Self, TenantProcessError> {
        let mut text = String::new();
        input
            .take(MAX_CONFIG)
            .read_to_string(&mut text)
            .map_err(TenantProcessError::Read)?;
        let config: ProcessConfig = toml::from_str(&text).map_err(TenantProcessError::Parse)?;
        config
            .daemon_config()
            .validate()
            .map_err(TenantProcessError::Invalid)?;
        Ok(config)
    }

    /// The configuration of the process's [`Server`]: this one tenant, no
    /// metrics endpoint (the supervisor serves it).
    fn daemon_config(&self) -> Config {
        Config {
            engine: self.engine,
            engine_threads: self.engine_threads,
            engine_nice: self.engine_nice,
            vulkan_device: self.vulkan_device.clone(),
            dmabuf_objects: self.dmabuf_objects,
            metrics: None,
            tenants: vec![self.tenant.clone()],
            user: self.user.clone(),
            // The supervisor's: a tenant's process restarts nothing.
            max_restart_pause: crate::config::DEFAULT_MAX_RESTART_PAUSE,
            state_dir: None,
        }
    }
}

/// Runs the process of tenant `name`: reads its configuration from `input`,
/// takes the inherited descriptors and serves the tenant until the process
/// is killed. (The name on the command line is there for `ps`; it must be
/// the configuration's.)
pub fn run(name: &str, input: impl Read) -> Result<(), TenantProcessError> {
    abort_on_panic();
    let config = ProcessConfig::decode(input)?;
    if config.tenant.name != name {
        return Err(TenantProcessError::Name(name.to_owned()));
    }
    name_process(name);
    let listener_fd = check_socket_fd(LISTENER_FD).map_err(|e| TenantProcessError::Descriptor {
        fd: LISTENER_FD,
        what: "listening socket",
        source: io::Error::other(e),
    })?;
    // SAFETY: the supervisor put the tenant's listening socket at this
    // number (checked just now to be an open socket); nothing else in this
    // process refers to it.
    let listener = unsafe { Listener::from_raw_fd(listener_fd) };
    let stats = TenantStats::attach(config.tenant.name.clone(), take_fd(STATS_FD, "counters")?)
        .map_err(|source| TenantProcessError::Descriptor {
            fd: STATS_FD,
            what: "counters",
            source,
        })?;
    let record = DeviceRecord::attach(&config.tenant, take_fd(RECORD_FD, "device record")?)
        .map_err(|source| TenantProcessError::Descriptor {
            fd: RECORD_FD,
            what: "device record",
            source,
        })?;
    arm_fault(config.incarnation);
    info!(
        "tenant {}: process {} started (incarnation {})",
        config.tenant.name,
        std::process::id(),
        config.incarnation
    );
    let server = Server::bind_with(
        config.daemon_config(),
        vec![listener],
        vec![Kept {
            stats: Arc::new(stats),
            record: Arc::new(record),
        }],
        config.incarnation,
    )?;
    // Everything the process needs from the file system and the kernel's
    // wider interfaces it has by now: its engine runs, its socket listens.
    let sandbox = SandboxConfig {
        driver_calls: server.driver_calls(),
        ..SandboxConfig::new(config.user.clone())
    };
    sandbox::apply(&sandbox)?;
    Ok(server.serve_forever()?)
}

/// Names the process (and the threads it will start) `accel-NAME`, cut to
/// the kernel's 15 bytes, for `ps`, `top` and `/proc/PID/comm`, which would
/// otherwise say `exe` (the supervisor starts `/proc/self/exe`).
fn name_process(tenant: &str) {
    let mut comm = format!("accel-{tenant}").into_bytes();
    comm.truncate(15);
    comm.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes,
    // which `comm` is (tenant names are ASCII letters, digits and `-_.`,
    // `config::check_name`, so no NUL and no character cut in two); it
    // renames this thread only.
    if unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr(), 0, 0, 0) } != 0 {
        debug!("cannot name the process: {}", io::Error::last_os_error());
    }
}

/// Whether an injected fault waits on the request path (tests only).
static FAULT_ARMED: AtomicBool = AtomicBool::new(false);

/// Whether requests of [`POISON_BYTES`] end the process (tests only).
static POISON_ARMED: AtomicBool = AtomicBool::new(false);

/// The size (the sum of its buffers' lengths) of a request that ends every
/// process of a tenant when it runs, under `VHOST_USER_ACCEL_FAULT=poison`.
pub const POISON_BYTES: u64 = 4093;

/// Arms the faults of `VHOST_USER_ACCEL_FAULT` (built with the
/// `fault-injection` feature only): `panic`, a panic at the first kick in
/// the first process of a tenant (a restarted process must serve, or the
/// test could not see the restart work); `poison`, a panic in every process
/// of the tenant that starts a request of [`POISON_BYTES`].
fn arm_fault(incarnation: u64) {
    let fault =
        std::env::var_os("VHOST_USER_ACCEL_FAULT").filter(|_| cfg!(feature = "fault-injection"));
    let is = |name: &str| fault.as_deref().is_some_and(|fault| fault == name);
    FAULT_ARMED.store(is("panic") && incarnation == 0, Ordering::Relaxed);
    POISON_ARMED.store(is("poison"), Ordering::Relaxed);
}

/// Panics here, on the request path, if a fault is armed (tests only:
/// `VHOST_USER_ACCEL_FAULT=panic` with the `fault-injection` feature arms
/// one in the first process of each tenant); nothing at all otherwise.
pub fn fault_point() {
    if cfg!(feature = "fault-injection") && FAULT_ARMED.swap(false, Ordering::Relaxed) {
        panic!("fault injected on the request path (VHOST_USER_ACCEL_FAULT=panic)");
    }
}

/// Panics here, as the device hands a request of `bytes` to the engine, if
/// it is a poisoned one (tests only: `VHOST_USER_ACCEL_FAULT=poison` with
/// the `fault-injection` feature); nothing at all otherwise.
pub fn poison_point(bytes: u64) {
    if cfg!(feature = "fault-injection")
        && bytes == POISON_BYTES
        && POISON_ARMED.load(Ordering::Relaxed)
    {
        panic!("fault injected: a request of {POISON_BYTES} bytes (VHOST_USER_ACCEL_FAULT=poison)");
    }
}

/// Takes ownership of inherited descriptor `fd`, marking it close-on-exec.
fn take_fd(fd: RawFd, what: &'static str) -> Result<OwnedFd, TenantProcessError> {
    // SAFETY: F_SETFD on a number that may or may not be open; it changes
    // nothing but the flag of an open descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(TenantProcessError::Descriptor {
            fd,
            what,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: the descriptor is open (F_SETFD succeeded) and was handed to
    // this process for this purpose; nothing else refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A panic anywhere in the process ends it (after the usual report), so that
/// the supervisor starts a clean one: a thread that died half-way through a
/// request leaves the device in a state nothing should trust.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn configuration_round_trips_through_toml() {
        let mut tenant = TenantConfig::new("vm-1", SocketSource::Path("/run/a.sock".into()));
        tenant.quota.jobs_per_sec = Some(5000);
        tenant.weight = 3;
        let mut daemon = Config::with_tenants(vec![tenant.clone()]);
        daemon.engine_threads = 3;
        let config = ProcessConfig::new(&daemon, &tenant, 7);
        assert_eq!(config.tenant.socket, SocketSource::Fd(LISTENER_FD));
        let text = config.encode().unwrap();
        // Decoding validates the values, including the descriptor's.
        let decoded: ProcessConfig = toml::from_str(&text).unwrap();
        assert_eq!(decoded, config);
    }

    #[test]
    fn invalid_configurations_are_refused() {
        assert!(matches!(
            ProcessConfig::decode("incarnation = 1".as_bytes()),
            Err(TenantProcessError::Parse(_))
        ));
        let tenant = TenantConfig {
            request_queues: 0,
            ..TenantConfig::new("a", SocketSource::Fd(LISTENER_FD))
        };
        let config = ProcessConfig::new(&Config::with_tenants(vec![tenant.clone()]), &tenant, 0);
        let text = config.encode().unwrap();
        assert!(matches!(
            ProcessConfig::decode(text.as_bytes()),
            Err(TenantProcessError::Invalid(_))
        ));
    }
}
