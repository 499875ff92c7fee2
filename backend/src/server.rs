//! The listening socket and the connection loop.
//!
//! The daemon listens on one vhost-user socket and serves one VMM connection
//! at a time with a fresh device; when the VMM disconnects (a VM shut down or
//! restarted) the device state is dropped and the daemon waits for the next
//! connection on the same socket.

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use log::{info, warn};
use thiserror::Error;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::backend::AccelBackend;
use crate::config::{Config, EngineKind, SocketSource};
use crate::device::DeviceError;
use crate::engine::software::SoftwareEngine;
use crate::engine::{Engine, EngineError};

/// Errors of the server.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The socket could not be bound.
    #[error("cannot listen on the vhost-user socket")]
    Listen(#[source] vhost::vhost_user::Error),
    /// The engine could not start.
    #[error("cannot start the engine")]
    Engine(#[from] EngineError),
    /// The device of a connection could not be built.
    #[error("cannot create the device")]
    Device(#[from] DeviceError),
    /// The vhost-user daemon failed.
    #[error("vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    /// A completion eventfd could not be registered.
    #[error("cannot register completion events")]
    Register(#[source] std::io::Error),
}

/// Pause before accepting again after a connection failed.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// A bound socket and the engine shared by all connections.
pub struct Server {
    config: Config,
    listener: Listener,
    engine: Arc<dyn Engine>,
}

impl Server {
    /// Binds the socket of `config` and starts its engine.
    pub fn bind(config: Config) -> Result<Self, ServerError> {
        let listener = match &config.socket {
            SocketSource::Path(path) => Listener::new(path, true).map_err(ServerError::Listen)?,
            // SAFETY: the configuration layer checked that the number names a
            // listening socket handed to us, which from now on only `Listener` owns.
            SocketSource::Fd(fd) => unsafe { Listener::from_raw_fd(*fd) },
        };
        let engine: Arc<dyn Engine> = match config.engine {
            EngineKind::Software => Arc::new(SoftwareEngine::new(config.engine_threads)?),
        };
        Ok(Server {
            config,
            listener,
            engine,
        })
    }

    /// Serves one VMM connection until it ends; then drains and resets the
    /// device, so nothing of the connection outlives it (§11).
    pub fn serve_one(&mut self) -> Result<(), ServerError> {
        let backend = Arc::new(RwLock::new(AccelBackend::new(
            self.config.clone(),
            &self.engine,
        )?));
        let result = self.run_connection(&backend);
        // The daemon is dropped by now (its worker threads joined).
        let mut backend = backend.write().unwrap_or_else(PoisonError::into_inner);
        backend.disconnect();
        backend.close_exit_events();
        result
    }

    fn run_connection(&mut self, backend: &Arc<RwLock<AccelBackend>>) -> Result<(), ServerError> {
        let completion_events: Vec<(RawFd, u64)> = {
            let backend = backend.read().unwrap_or_else(PoisonError::into_inner);
            let events = backend
                .device()
                .hw_queues()
                .iter()
                .map(|q| q.completion_event().as_raw_fd());
            events
                .zip((0..).map(|index| backend.completion_event_id(index)))
                .collect()
        };
        let mut daemon = VhostUserDaemon::new(
            String::from("vhost-user-accel"),
            Arc::clone(backend),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(ServerError::Daemon)?;
        let handlers = daemon.get_epoll_handlers();
        if let Some(handler) = handlers.first() {
            for (fd, id) in completion_events {
                handler
                    .register_listener(fd, EventSet::IN, id)
                    .map_err(ServerError::Register)?;
            }
        }
        daemon
            .start(&mut self.listener)
            .map_err(ServerError::Daemon)?;
        info!("VMM connected");
        let result = daemon.wait();
        for handler in &handlers {
            handler.send_exit_event();
        }
        match result {
            Ok(()) => Ok(()),
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => Ok(()),
            Err(e) => Err(ServerError::Daemon(e)),
        }
    }

    /// Serves connections one after the other, forever: a VMM that goes away
    /// can come back (reconnect) on the same socket.
    pub fn serve_forever(&mut self) -> Result<(), ServerError> {
        loop {
            match self.serve_one() {
                Ok(()) => info!("VMM disconnected; waiting for the next connection"),
                Err(ServerError::Daemon(e)) => {
                    warn!("connection ended with an error: {e}; waiting for the next connection");
                    // An error that repeats at once (say, out of descriptors
                    // at accept) must not turn into a busy loop.
                    std::thread::sleep(RETRY_DELAY);
                }
                Err(e) => return Err(e),
            }
        }
    }
}
