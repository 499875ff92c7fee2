//! The `VhostUserBackend` glue: vhost-user messages and epoll events in, calls
//! into [`Device`] out; and [`Connection`], the vhost-user daemon of one
//! connection with the events of the backend registered.
//!
//! The worker thread of a connection (vhost-user-backend's event loop) is
//! stopped by an event the backend owns, not by vhost-user-backend's exit
//! event: `VhostUserBackend::exit_event` hands the library a descriptor that
//! it takes with `into_raw_fd` and never closes (0.24), one leaked per
//! connection, and the only way to close it would be by number. So
//! [`AccelBackend::exit_event`] offers none; the backend registers its own
//! stop event with the worker instead, and ends the event loop (by failing
//! the event) when it fires. [`Connection`] fires it when dropped, before the
//! daemon, whose drop waits for the worker.
//!
//! A device that resumes from the record of the tenant's previous process
//! (§11.3) waits for the front-end to start its rings again, which no
//! callback of vhost-user-backend reports: a timer registered with the
//! worker polls it (every 5 ms) until it has resumed.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use log::error;
use thiserror::Error;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringEpollHandler, VringRwLock};
use virtio_accel_spec::{VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::config::TenantConfig;
use crate::device::{Device, DeviceError, TenantState};
use crate::engine::Engine;

/// Size of the configuration window a VMM may read (virtio-pci maps device
/// configuration in a 4 KiB capability).
const CONFIG_WINDOW: usize = 4096;

/// The epoll event id of the worker's stop event: past every virtqueue and
/// completion event id (the event loop passes ids on as 16 bits).
const STOP_EVENT_ID: u16 = u16::MAX;
/// The epoll event id of the resume timer.
const RESUME_EVENT_ID: u16 = u16::MAX - 1;
/// How often a device waiting to resume looks at its rings.
const RESUME_POLL: Duration = Duration::from_millis(5);

/// Errors of a connection's backend and daemon.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The device could not be created.
    #[error("cannot create the device")]
    Device(#[from] DeviceError),
    /// The worker's stop event could not be created.
    #[error("cannot create the worker's stop event")]
    StopEvent(#[source] io::Error),
    /// The resume timer could not be created or armed.
    #[error("cannot set up the resume timer")]
    ResumeTimer(#[source] vmm_sys_util::errno::Error),
    /// The vhost-user daemon could not be created (its error type is no
    /// `std::error::Error`, hence no source).
    #[error("cannot create the vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    /// An event could not be registered with the worker.
    #[error("cannot register the {event} event with the worker")]
    Register {
        /// Which event.
        event: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// The backend as vhost-user-backend shares it between its threads.
pub type SharedBackend = Arc<RwLock<AccelBackend>>;

/// The vhost-user backend of one connection.
pub struct AccelBackend {
    device: Device,
    num_queues: usize,
    queue_size: usize,
    /// Ends the worker's event loop; registered as long as the worker holds
    /// this backend (see the module documentation).
    stop_event: EventFd,
    /// Armed while the device waits to resume (see the module
    /// documentation).
    resume_timer: TimerFd,
}

impl AccelBackend {
    /// A backend for `tenant`, configured by `config`, on `engine`.
    pub fn new(
        config: TenantConfig,
        engine: &Arc<dyn Engine>,
        tenant: TenantState,
    ) -> Result<Self, BackendError> {
        let num_queues = usize::from(config.request_queues) + 1;
        let queue_size = usize::from(config.queue_size);
        let device = Device::new(config, engine.as_ref(), tenant)?;
        let mut resume_timer = TimerFd::new().map_err(BackendError::ResumeTimer)?;
        if device.is_resuming() {
            resume_timer
                .reset(RESUME_POLL, Some(RESUME_POLL))
                .map_err(BackendError::ResumeTimer)?;
        }
        Ok(AccelBackend {
            device,
            num_queues,
            queue_size,
            stop_event: EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)
                .map_err(BackendError::StopEvent)?,
            resume_timer,
        })
    }

    /// A tick of the resume timer: the device tries to resume, and the
    /// timer stops once it no longer waits to.
    fn poll_resume(&mut self, vrings: &[VringRwLock]) -> io::Result<()> {
        self.resume_timer.wait().map_err(io::Error::from)?;
        self.device.resume(vrings);
        if !self.device.is_resuming() {
            self.resume_timer.clear().map_err(io::Error::from)?;
        }
        Ok(())
    }

    /// The epoll event id of hardware queue `queue`'s completions (ids up to
    /// `num_queues` belong to the virtqueues and to vhost-user-backend).
    fn completion_event_id(&self, queue: usize) -> u64 {
        (self.num_queues + 1 + queue) as u64
    }

    /// Registers the resume timer and the completion event of every
    /// hardware queue with the worker `handler`.
    fn register_events<T: vhost_user_backend::VhostUserBackend>(
        &self,
        handler: &VringEpollHandler<T>,
    ) -> Result<(), BackendError> {
        handler
            .register_listener(
                self.resume_timer.as_raw_fd(),
                EventSet::IN,
                u64::from(RESUME_EVENT_ID),
            )
            .map_err(|source| BackendError::Register {
                event: String::from("resume timer"),
                source,
            })?;
        for (queue, hw_queue) in self.device.hw_queues().iter().enumerate() {
            let fd = hw_queue.completion_event().as_raw_fd();
            handler
                .register_listener(fd, EventSet::IN, self.completion_event_id(queue))
                .map_err(|source| BackendError::Register {
                    event: format!("hardware queue {queue} completion"),
                    source,
                })?;
        }
        Ok(())
    }

    /// The connection is over (§11): see [`Device::disconnect`].
    pub fn disconnect(&mut self) {
        self.device.disconnect();
    }
}

fn read(backend: &SharedBackend) -> RwLockReadGuard<'_, AccelBackend> {
    backend.read().unwrap_or_else(PoisonError::into_inner)
}

/// The vhost-user daemon of one connection, with the backend's events
/// registered with its worker thread. Dropping it stops the worker, then
/// drops the daemon, which waits for the worker to end.
pub struct Connection {
    /// Its drop waits for the worker, which `Connection::drop` has told to
    /// end by then.
    daemon: VhostUserDaemon<SharedBackend>,
    /// A handle on the backend's stop event.
    stop: EventFd,
}

impl Connection {
    /// The daemon of `backend`, named `name`, ready to accept a connection.
    ///
    /// Should the worker's stop event not register (the kernel out of
    /// memory or of epoll watches), nothing could stop the worker and
    /// dropping the daemon would wait for it forever: the daemon is then
    /// left running, with the error returned.
    pub fn new(name: String, backend: &SharedBackend) -> Result<Self, BackendError> {
        let stop = read(backend)
            .stop_event
            .try_clone()
            .map_err(BackendError::StopEvent)?;
        let empty = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let daemon =
            VhostUserDaemon::new(name, Arc::clone(backend), empty).map_err(BackendError::Daemon)?;
        let handlers = daemon.get_epoll_handlers();
        let Some(handler) = handlers.first() else {
            // No worker thread, nothing to stop.
            return Ok(Connection { daemon, stop });
        };
        let registered =
            handler.register_listener(stop.as_raw_fd(), EventSet::IN, u64::from(STOP_EVENT_ID));
        if let Err(source) = registered {
            std::mem::forget(daemon);
            return Err(BackendError::Register {
                event: String::from("stop"),
                source,
            });
        }
        let connection = Connection { daemon, stop };
        read(backend).register_events(handler)?;
        Ok(connection)
    }

    /// Waits for a VMM on `listener` and serves it on a thread of its own.
    pub fn start(&mut self, listener: &mut Listener) -> Result<(), vhost_user_backend::Error> {
        self.daemon.start(listener)
    }

    /// Waits until the VMM's connection has ended.
    pub fn wait(&mut self) -> Result<(), vhost_user_backend::Error> {
        self.daemon.wait()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            // Cannot happen (the counter is far from overflowing); the drop
            // of the daemon would then wait for the worker forever.
            error!("cannot stop a connection's worker thread: {e}");
        }
    }
}

impl VhostUserBackendMut for AccelBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.num_queues
    }

    fn max_queue_size(&self) -> usize {
        self.queue_size
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_ACCEL_F_OBJECTS)
            | (1 << VIRTIO_ACCEL_F_FENCES)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        self.device.set_features(features);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn reset_device(&mut self) {
        self.device.reset();
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // The vrings apply VIRTIO_RING_F_EVENT_IDX themselves (the handler sets
        // it on each queue); the device only ever asks them.
    }

    /// Bytes `offset..offset + size` of the configuration window (§5): the
    /// structure, then zeros up to 4 KiB, so that every read a VMM forwards
    /// from a guest (any offset and size, aligned or not, inside its device
    /// configuration window, or the whole `config_size` it was configured
    /// with) is answered. vhost 0.18 answers a GET_CONFIG of size 0 or past
    /// 4 KiB itself, by closing the connection, before this is called; a
    /// range past the window here gets the empty reply of a failed read.
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let (offset, size) = (offset as usize, size as usize);
        if offset
            .checked_add(size)
            .is_none_or(|end| end > CONFIG_WINDOW)
        {
            return Vec::new();
        }
        let mut space = self.device.config_space();
        space.resize(CONFIG_WINDOW, 0);
        space[offset..offset + size].to_vec()
    }

    /// A new memory table (SET_MEM_TABLE), already installed in `mem` by
    /// vhost-user-backend: the device checks it before any use, and an
    /// error here becomes the VMM's error reply.
    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.device.set_memory(&mem).map_err(io::Error::other)
    }

    /// Every vring on the one worker thread (the default mask covers only 32).
    fn queues_per_thread(&self) -> Vec<u64> {
        let all = u64::MAX >> (64 - self.num_queues.clamp(1, 64));
        vec![all]
    }

    fn stop_vring(&mut self, queue_index: u32) -> io::Result<()> {
        let vq = u16::try_from(queue_index)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "no such virtqueue"))?;
        self.device.stop_ring(vq);
        Ok(())
    }

    /// None: the backend stops the worker with its own event (see the
    /// module documentation).
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        None
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        if device_event == STOP_EVENT_ID {
            // The one way to end vhost-user-backend's event loop without its
            // exit event.
            return Err(io::Error::other("the connection's worker stops"));
        }
        if device_event == RESUME_EVENT_ID {
            return self.poll_resume(vrings);
        }
        self.device.attach_vrings(vrings);
        let event = usize::from(device_event);
        if event < self.num_queues {
            crate::tenant_process::fault_point();
            // The device logs a ring it cannot update; an error returned to
            // the event loop would end it, and the other queues with it.
            self.device.handle_queue(device_event, vrings);
            return Ok(());
        }
        if let Some(queue) = event
            .checked_sub(self.num_queues + 1)
            .and_then(|queue| u16::try_from(queue).ok())
        {
            self.device.handle_completions(queue, vrings);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::SocketSource;
    use crate::engine::software::SoftwareEngine;
    use virtio_accel_spec::{Op, VirtioAccelConfig};
    use vm_memory::ByteValued;

    fn backend() -> AccelBackend {
        let engine: Arc<dyn Engine> = Arc::new(SoftwareEngine::new(1).unwrap());
        let mut config = TenantConfig::new("t", SocketSource::Fd(-1));
        config.request_queues = 3;
        let tenant = TenantState::new(0, &config);
        AccelBackend::new(config, &engine, tenant).unwrap()
    }

    #[test]
    fn config_space_reads_are_bounded_and_zero_padded() {
        let backend = backend();
        let at = |n: usize| u32::try_from(n).unwrap();
        let size = std::mem::size_of::<VirtioAccelConfig>();
        let bytes = backend.get_config(0, at(size));
        let mut config = VirtioAccelConfig::default();
        config.as_mut_slice().copy_from_slice(&bytes);
        assert_eq!(u32::from(config.num_request_queues), 3);
        assert_eq!(u32::from(config.ops), Op::all_capabilities());
        let mut window = bytes;
        window.resize(CONFIG_WINDOW, 0);
        for offset in 0..CONFIG_WINDOW {
            for len in [1, 2, 3, 4, 7, 8]
                .into_iter()
                .take_while(|len| offset + len <= CONFIG_WINDOW)
            {
                let got = backend.get_config(at(offset), at(len));
                assert_eq!(got, window[offset..offset + len], "{len} bytes at {offset}");
            }
        }
        assert_eq!(backend.get_config(0, at(CONFIG_WINDOW)), window);
        assert!(backend.get_config(4090, 10).is_empty());
        assert!(backend.get_config(4096, 1).is_empty());
        assert!(backend.get_config(u32::MAX, 2).is_empty());
        assert_eq!(backend.num_queues(), 4);
    }
}
