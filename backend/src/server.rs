// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The listening sockets and the connection loops: one per tenant.
//!
//! The daemon binds every tenant's vhost-user socket at start and serves each
//! on its own thread, one VMM connection at a time with a fresh device; when
//! the VMM disconnects (a VM shut down, restarted or killed) the device is
//! drained and dropped, releasing the tenant's objects and fences once its
//! work on the engine has completed, and the thread waits for the next
//! connection on the same socket. A connection that fails (even for want of
//! a resource of the whole process, such as descriptors) is retried with a
//! growing pause: once its socket is bound, a tenant is never given up.
//! Tenants of one server share its engine and nothing else; the daemon runs
//! one server per tenant, each in a process of its own, and the test harness
//! runs several tenants in one.

use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::Level;
use thiserror::Error;
use vhost::vhost_user::Listener;

use crate::config::{Config, EngineKind, SocketSource, TenantConfig};
use crate::device::TenantState;
use crate::device_record::DeviceRecord;
use crate::dmabuf::DmaBufMaker;
use crate::engine::software::SoftwareEngine;
use crate::engine::vulkan::{VulkanEngine, VulkanError};
use crate::engine::{DriverCalls, Engine, EngineError};
use crate::log_limit::TenantLog;
use crate::metrics::MetricsServer;
use crate::quota::Admission;
use crate::stats::TenantStats;
use crate::vhost_user::{AccelBackend, BackendError};
use crate::vhost_user::{Connection, ConnectionError};

/// Errors of the server.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A tenant's socket could not be bound.
    #[error("tenant {tenant}: cannot listen on the vhost-user socket {socket}")]
    Listen {
        /// The tenant.
        tenant: String,
        /// Its socket.
        socket: String,
        /// The cause.
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// The metrics endpoint could not be bound.
    #[error("cannot listen for metrics")]
    Metrics(#[source] std::io::Error),
    /// The engine could not start.
    #[error("cannot start the engine")]
    Engine(#[from] EngineError),
    /// The Vulkan engine could not start.
    #[error("cannot start the Vulkan engine")]
    Vulkan(#[from] VulkanError),
    /// The backend of a connection could not be set up.
    #[error("cannot set up the device")]
    Backend(#[from] BackendError),
    /// A connection could not be set up or ended with an error.
    #[error("vhost-user connection")]
    Connection(#[from] ConnectionError),
    /// A thread could not be started.
    #[error("cannot start a thread")]
    Spawn(#[source] std::io::Error),
    /// A tenant's device record could not be made (a memfd, so that the
    /// VMM can keep it as its inflight region, §11.3.3).
    #[error("cannot make a device record")]
    Record(#[source] std::io::Error),
    /// A tenant's thread panicked.
    #[error("the thread of tenant {0} panicked")]
    Panicked(String),
}

/// Pause before accepting again after a connection failed; it doubles with
/// each failure in a row, up to [`MAX_RETRY_DELAY`].
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between failed connections.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// What a tenant keeps across its connections, and across its processes
/// where the supervisor holds it.
#[derive(Debug)]
pub struct Kept {
    /// Its counters.
    pub stats: Arc<TenantStats>,
    /// The record of its device (§11.3).
    pub record: Arc<DeviceRecord>,
}

/// One tenant: its socket, and what outlives its connections.
struct Tenant {
    config: TenantConfig,
    listener: Listener,
    engine: Arc<dyn Engine>,
    state: TenantState,
}

/// The bound sockets and the engine shared by all tenants.
pub struct Server {
    tenants: Vec<Tenant>,
    metrics: Option<MetricsServer>,
}

/// Starts the engine of `config`.
fn start_engine(config: &Config) -> Result<Arc<dyn Engine>, ServerError> {
    let software = SoftwareEngine::with_priority(config.engine_threads, config.engine_nice)?;
    Ok(match config.engine {
        EngineKind::Software => Arc::new(software),
        EngineKind::Vulkan => {
            let engine = VulkanEngine::with_software(config.vulkan_device.as_deref(), software)?;
            let dma_bufs = if engine.imports_dma_bufs() {
                "imports"
            } else {
                "does not import"
            };
            log::info!(
                "Vulkan engine on {}, which {dma_bufs} objects' dma-bufs",
                engine.device_name()
            );
            Arc::new(engine)
        }
    })
}

/// Starts the engine of `config` once and stops it: the supervisor checks
/// so that a configuration naming an engine that cannot run (no such
/// Vulkan device, one without what the engine needs) fails at start-up,
/// instead of every tenant's process failing in turn.
pub fn check_engine(config: &Config) -> Result<(), ServerError> {
    start_engine(config).map(drop)
}

impl Server {
    /// Starts the engine of `config` and binds every tenant's socket and the
    /// metrics endpoint; nothing is served until [`Server::serve_forever`].
    pub fn bind(config: Config) -> Result<Self, ServerError> {
        let listeners = config
            .tenants
            .iter()
            .map(listen)
            .collect::<Result<Vec<_>, _>>()?;
        let kept = config
            .tenants
            .iter()
            .map(|tenant| {
                Ok(Kept {
                    stats: Arc::new(TenantStats::new(tenant.name.clone())),
                    record: Arc::new(DeviceRecord::shared(tenant).map_err(ServerError::Record)?),
                })
            })
            .collect::<Result<_, ServerError>>()?;
        Server::bind_with(config, listeners, kept, 0)
    }

    /// Starts the engine of `config` and serves its tenants on `listeners`,
    /// with what each keeps in `kept` (both in the order of
    /// `config.tenants`): how a tenant's process serves the socket, the
    /// counters and the device record that the supervisor handed it.
    /// `incarnation` counts the processes that served these tenants before.
    pub fn bind_with(
        config: Config,
        listeners: Vec<Listener>,
        kept: Vec<Kept>,
        incarnation: u64,
    ) -> Result<Self, ServerError> {
        let engine = start_engine(&config)?;
        // Opened here, before a tenant's process is sandboxed.
        let dma_bufs = Arc::new(if config.dmabuf_objects {
            DmaBufMaker::open()
        } else {
            DmaBufMaker::none()
        });
        let tenants = (0u32..)
            .zip(config.tenants)
            .zip(listeners.into_iter().zip(kept))
            .map(|((index, config), (listener, kept))| Tenant {
                listener,
                engine: Arc::clone(&engine),
                state: TenantState {
                    index,
                    admission: Arc::new(Mutex::new(admission(&config, incarnation))),
                    log: Arc::new(TenantLog::new(&config.name)),
                    stats: kept.stats,
                    record: kept.record,
                    dma_bufs: Arc::clone(&dma_bufs),
                },
                config,
            })
            .collect();
        let metrics = config
            .metrics
            .as_ref()
            .map(MetricsServer::bind)
            .transpose()
            .map_err(ServerError::Metrics)?;
        Ok(Server { tenants, metrics })
    }

    /// What the engine's driver calls while it runs that the sandbox
    /// allows only for it ([`Engine::driver_calls`]).
    pub fn driver_calls(&self) -> DriverCalls {
        self.tenants
            .first()
            .map(|tenant| tenant.engine.driver_calls())
            .unwrap_or_default()
    }

    /// The counters of every tenant, in configuration order.
    pub fn stats(&self) -> Vec<Arc<TenantStats>> {
        self.tenants
            .iter()
            .map(|t| Arc::clone(&t.state.stats))
            .collect()
    }

    /// Serves every tenant on its own thread, and the metrics endpoint,
    /// forever: a VMM that goes away can come back (reconnect) on the same
    /// socket. Returns only if a thread cannot be started, or when a
    /// tenant's thread has panicked (within a second).
    pub fn serve_forever(self) -> Result<(), ServerError> {
        if let Some(metrics) = self.metrics {
            let stats = self
                .tenants
                .iter()
                .map(|t| Arc::clone(&t.state.stats))
                .collect();
            metrics.spawn(crate::metrics::roster(stats))?;
        }
        let threads = self
            .tenants
            .into_iter()
            .map(|tenant| {
                let name = tenant.config.name.clone();
                std::thread::Builder::new()
                    .name(format!("tenant-{name}"))
                    .spawn(move || tenant.serve_forever())
                    .map(|thread| (name, thread))
                    .map_err(ServerError::Spawn)
            })
            .collect::<Result<Vec<(String, JoinHandle<()>)>, _>>()?;
        // A tenant's thread never returns: one that has finished panicked.
        loop {
            if let Some((name, _)) = threads.iter().find(|(_, thread)| thread.is_finished()) {
                return Err(ServerError::Panicked(name.clone()));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The quota state a tenant starts with: full rate buckets in its first
/// process, empty ones in every later one, so that a guest or VMM that ends
/// the process gains no burst by it (§10.3.2).
fn admission(config: &TenantConfig, incarnation: u64) -> Admission {
    if incarnation > 0 {
        Admission::drained(config.quota, Instant::now())
    } else {
        Admission::new(config.quota, Instant::now())
    }
}

/// Binds the socket of tenant `config`, or takes its inherited one.
pub fn listen(config: &TenantConfig) -> Result<Listener, ServerError> {
    match &config.socket {
        SocketSource::Path(path) => {
            Listener::new(path, true).map_err(|source| ServerError::Listen {
                tenant: config.name.clone(),
                socket: config.socket.to_string(),
                source,
            })
        }
        SocketSource::Fd(fd) => {
            // Close-on-exec, so that it reaches no process started later
            // (no other tenant's process, above all).
            // SAFETY: sets a flag of a descriptor the configuration layer
            // checked to be an open socket.
            unsafe { libc::fcntl(*fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            // SAFETY: the configuration layer checked that the number names a
            // listening socket handed to us, which from now on only
            // `Listener` owns.
            Ok(unsafe { Listener::from_raw_fd(*fd) })
        }
    }
}

impl Tenant {
    /// Serves connections one after the other, forever.
    fn serve_forever(mut self) {
        let mut delay = RETRY_DELAY;
        loop {
            let started = Instant::now();
            let served = self.serve_one();
            if started.elapsed() >= MAX_RETRY_DELAY {
                // A connection that lasted is no failure loop.
                delay = RETRY_DELAY;
            }
            match served {
                Ok(()) => {
                    self.state.log.vmm(
                        Level::Info,
                        format_args!("VMM disconnected; waiting for the next connection"),
                    );
                    delay = RETRY_DELAY;
                }
                Err(e) => {
                    self.state.log.vmm(
                        Level::Warn,
                        format_args!(
                            "connection failed: {}; retrying in {delay:?}",
                            crate::error_chain(&e)
                        ),
                    );
                    // An error that repeats at once (say, out of descriptors
                    // at accept) must not turn into a busy loop.
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    /// Serves one VMM connection until it ends; then drains and resets the
    /// device, so nothing of the connection outlives it (§11).
    fn serve_one(&mut self) -> Result<(), ServerError> {
        let backend = Arc::new(RwLock::new(AccelBackend::new(
            self.config.clone(),
            &self.engine,
            self.state.clone(),
        )?));
        let result = self.run_connection(&backend);
        self.state.stats.set_connected(false);
        // The daemon is dropped by now (its worker threads joined).
        backend
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .disconnect();
        result
    }

    fn run_connection(&mut self, backend: &Arc<RwLock<AccelBackend>>) -> Result<(), ServerError> {
        let name = format!("vhost-user-accel-{}", self.config.name);
        let mut connection = Connection::new(name, backend)?;
        connection.start(&mut self.listener)?;
        self.state.stats.set_connected(true);
        self.state
            .log
            .vmm(Level::Info, format_args!("VMM connected"));
        Ok(connection.wait()?)
    }
}
