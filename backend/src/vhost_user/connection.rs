// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One VMM connection: the daemon's own vhost-user request handler on the
//! `vhost` crate, and the worker thread that serves the rings.
//!
//! vhost-user-backend 0.24's handler is private to its daemon and refuses
//! `GET_INFLIGHT_FD`/`SET_INFLIGHT_FD`, which the device needs (§11.3.3:
//! the front-end's inflight region carries the device's record across a
//! restart of the whole daemon). So the daemon answers the front-end's
//! messages itself ([`Handler`], a `VhostUserBackendReqHandlerMut` that
//! `vhost`'s `BackendReqHandler` drives), and keeps from
//! vhost-user-backend only its vrings ([`VringRwLock`]), whose queues the
//! device reads and writes:
//!
//! - the memory table is mapped as given (`vm-memory`), with the front-end's
//!   own addresses of each region kept to translate ring addresses; the
//!   device checks the table before any use ([`AccelBackend::set_memory`]);
//! - a ring starts when it has a kick descriptor (and, once the front-end
//!   negotiated `VHOST_USER_F_PROTOCOL_FEATURES`, is enabled), and stops at
//!   `GET_VRING_BASE`, as the vhost-user specification has it;
//! - the worker ([`Connection`]) waits on the kicks of started rings, the
//!   device's events (its hardware queues' completions, its resume timer)
//!   and its own stop event; a ring that starts is served at once, so that
//!   requests made available before its kick descriptor came are not left
//!   waiting for a kick; after each event, while the device has nothing on
//!   the engine, it polls the request rings for an adaptive window
//!   ([`crate::poll`]) before it sleeps again.
//!
//! The request thread and the worker share the backend behind a lock, as
//! they did under vhost-user-backend; so does a memory table change, which
//! waits for the work in flight (`DeviceModel::set_memory`) with it held.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, error};
use thiserror::Error;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    BackendReqHandler, Error as VhostUserError, GpuBackend, Listener, Result as VhostUserResult,
    VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use super::dispatch::{lock_backend, AccelBackend, BackendError, SharedBackend};
use crate::device::Polled;
use crate::poll::PollWindow;

/// The worker's event id of its stop event.
const STOP_EVENT_ID: u64 = u64::MAX;
/// The worker's event id of the event that says rings started.
const STARTED_EVENT_ID: u64 = u64::MAX - 1;
/// Events the worker takes from one `epoll_wait`.
const EVENTS_PER_WAIT: usize = 64;

/// Errors of a connection.
#[derive(Debug, Error)]
pub enum ConnectionError {
    /// The worker's events could not be set up.
    #[error("cannot set up the connection's worker")]
    Worker(#[source] io::Error),
    /// A thread could not be started.
    #[error("cannot start the connection's {0} thread")]
    Spawn(&'static str, #[source] io::Error),
    /// The backend's events could not be registered with the worker.
    #[error("cannot register the device's events")]
    Backend(#[from] BackendError),
    /// No VMM could be accepted.
    #[error("cannot accept a VMM connection")]
    Accept(#[source] VhostUserError),
    /// The VMM's messages ended the connection with an error.
    #[error("the VMM's messages ended the connection")]
    Requests(#[source] VhostUserError),
    /// The thread of the VMM's messages panicked.
    #[error("the thread of the VMM's messages panicked")]
    Panicked,
}

/// A region of the memory table: where the front-end has it mapped.
#[derive(Debug, Clone, Copy)]
struct VmmMapping {
    vmm_addr: u64,
    size: u64,
    gpa: u64,
}

/// The worker's epoll set and the rings that started since it last looked.
#[derive(Debug)]
struct WorkerEvents {
    epoll: Epoll,
    started: EventFd,
    started_rings: Mutex<Vec<u16>>,
    /// The request thread waits for the backend's lock: the worker stops
    /// polling, so that it gets it.
    frontend_waiting: AtomicBool,
}

impl WorkerEvents {
    fn add(&self, fd: RawFd, id: u64) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, id))
    }

    /// Serves ring `vq` on its kick descriptor `fd`, and at once.
    fn start_ring(&self, vq: u16, fd: RawFd) -> io::Result<()> {
        match self.add(fd, u64::from(vq)) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            result => result?,
        }
        lock(&self.started_rings).push(vq);
        self.started.write(1)
    }

    /// Stops serving ring `vq`, whose kick descriptor is `fd`.
    fn stop_ring(&self, vq: u16, fd: RawFd) {
        lock(&self.started_rings).retain(|&started| started != vq);
        // Fails only for a descriptor not in the set: nothing to stop.
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            fd,
            EpollEvent::new(EventSet::IN, u64::from(vq)),
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The answers to the front-end's messages (see the module documentation).
pub struct Handler {
    backend: SharedBackend,
    vrings: Vec<VringRwLock>,
    memory: GuestMemoryAtomic<GuestMemoryMmap>,
    mappings: Vec<VmmMapping>,
    events: Arc<WorkerEvents>,
    owned: bool,
    acked_features: u64,
    max_queue_size: u16,
    /// Whether a ring of this connection ever started (the device may have
    /// worked, even if every ring has stopped since).
    ring_started: bool,
}

fn handler_error(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> VhostUserError {
    VhostUserError::ReqHandlerError(io::Error::other(error))
}

impl Handler {
    fn backend(&self) -> std::sync::RwLockWriteGuard<'_, AccelBackend> {
        // Ends a poll of the worker, which takes the lock again and again.
        self.events.frontend_waiting.store(true, Ordering::Relaxed);
        let backend = lock_backend(&self.backend);
        self.events.frontend_waiting.store(false, Ordering::Relaxed);
        backend
    }

    fn vring(&self, index: u32) -> VhostUserResult<&VringRwLock> {
        self.vrings
            .get(index as usize)
            .ok_or(VhostUserError::InvalidParam)
    }

    /// The guest-physical address of `vmm_addr`, an address of the
    /// front-end's mapping of the memory table.
    fn vmm_to_gpa(&self, vmm_addr: u64) -> VhostUserResult<u64> {
        self.mappings
            .iter()
            .find_map(|m| {
                let offset = vmm_addr.checked_sub(m.vmm_addr)?;
                (offset < m.size)
                    .then(|| m.gpa.checked_add(offset))
                    .flatten()
            })
            .ok_or_else(|| handler_error("ring address outside the memory table"))
    }

    /// Serves ring `index` if it is started and enabled, else stops serving
    /// it.
    fn update_ring(&self, index: u32) -> VhostUserResult<()> {
        let vring = self.vring(index)?;
        let vq = u16::try_from(index).map_err(|_| VhostUserError::InvalidParam)?;
        let state = vring.get_ref();
        let Some(kick) = state.get_kick() else {
            return Ok(());
        };
        if state.get_queue().ready() && state.is_enabled() {
            self.events
                .start_ring(vq, kick.as_raw_fd())
                .map_err(VhostUserError::ReqHandlerError)
        } else {
            self.events.stop_ring(vq, kick.as_raw_fd());
            Ok(())
        }
    }

    /// A ring with a kick descriptor that is not started yet starts.
    fn start_if_complete(&mut self, index: u32) -> VhostUserResult<()> {
        let vring = self.vring(index)?;
        let complete = {
            let state = vring.get_ref();
            !state.get_queue().ready() && state.get_kick().is_some()
        };
        if complete {
            vring.set_queue_ready(true);
            self.ring_started = true;
            self.update_ring(index)?;
        }
        Ok(())
    }
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> VhostUserResult<()> {
        if self.owned {
            return Err(VhostUserError::InvalidOperation("already claimed"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostUserResult<()> {
        self.owned = false;
        self.acked_features = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> VhostUserResult<()> {
        for (index, vring) in (0u32..).zip(&self.vrings) {
            vring.set_enabled(false);
            self.update_ring(index)?;
        }
        self.acked_features = 0;
        self.backend().reset_device();
        Ok(())
    }

    fn get_features(&mut self) -> VhostUserResult<u64> {
        Ok(AccelBackend::features())
    }

    fn set_features(&mut self, features: u64) -> VhostUserResult<()> {
        if features & !AccelBackend::features() != 0 {
            return Err(VhostUserError::InvalidParam);
        }
        self.acked_features = features;
        // Without VHOST_USER_F_PROTOCOL_FEATURES every ring is enabled at
        // once; with it they stay as SET_VRING_ENABLE left them.
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for (index, vring) in (0u32..).zip(&self.vrings) {
                vring.set_enabled(true);
                self.update_ring(index)?;
            }
        }
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for vring in &self.vrings {
            vring.set_queue_event_idx(event_idx);
        }
        self.backend().set_features(features);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy_listening.is_some() {
            return Err(VhostUserError::InvalidOperation("postcopy not offered"));
        }
        let mut regions = Vec::with_capacity(ctx.len());
        let mut mappings = Vec::with_capacity(ctx.len());
        for (region, file) in ctx.iter().zip(files) {
            let mapped = region.mmap_region::<()>(file)?;
            let guest = GuestRegionMmap::new(mapped, GuestAddress(region.guest_phys_addr))
                .ok_or_else(|| handler_error("memory region past the end of the address space"))?;
            regions.push(guest);
            mappings.push(VmmMapping {
                vmm_addr: region.user_addr,
                size: region.memory_size,
                gpa: region.guest_phys_addr,
            });
        }
        let table = GuestMemoryMmap::from_regions(regions).map_err(handler_error)?;
        self.memory
            .lock()
            .map_err(|_| VhostUserError::BackendInternalError)?
            .replace(table);
        self.mappings = mappings;
        self.backend()
            .set_memory(&self.memory)
            .map_err(VhostUserError::ReqHandlerError)?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostUserResult<()> {
        let vring = self.vring(index)?;
        match u16::try_from(num) {
            Ok(num) if num != 0 && num <= self.max_queue_size => {
                debug!("virtqueue {index}: size {num}");
                vring.set_queue_size(num);
                Ok(())
            }
            _ => Err(VhostUserError::InvalidParam),
        }
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostUserResult<()> {
        let vring = self.vring(index)?;
        let desc = self.vmm_to_gpa(descriptor)?;
        let avail = self.vmm_to_gpa(available)?;
        let used = self.vmm_to_gpa(used)?;
        vring
            .set_queue_info(desc, avail, used)
            .map_err(|_| VhostUserError::InvalidParam)?;
        // The device goes on from the used index the driver has seen (the
        // ring may be one a driver used before).
        let used_idx = vring
            .queue_used_idx()
            .map_err(|_| VhostUserError::BackendInternalError)?;
        vring.set_queue_next_used(used_idx);
        debug!(
            "virtqueue {index}: descriptors at {desc:#x}, available ring at {avail:#x}, \
             used ring at {used:#x} (guest addresses), used index {used_idx}"
        );
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostUserResult<()> {
        let base = u16::try_from(base).map_err(|_| VhostUserError::InvalidParam)?;
        debug!("virtqueue {index}: base {base}");
        self.vring(index)?.set_queue_next_avail(base);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostUserResult<VhostUserVringState> {
        let vring = self.vring(index)?;
        {
            // Under one lock, so that the worker cannot hold the kicks off
            // again in between.
            let mut backend = self.backend();
            backend.release_kicks(index);
            vring.set_queue_ready(false);
        }
        self.update_ring(index)?;
        self.backend()
            .stop_vring(index)
            .map_err(VhostUserError::ReqHandlerError)?;
        let vring = self.vring(index)?;
        let next_avail = vring.queue_next_avail();
        debug!("virtqueue {index}: stopped at {next_avail}");
        vring.set_kick(None);
        vring.set_call(None);
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        let index = u32::from(index);
        let vring = self.vring(index)?;
        // A kick descriptor replaced while the ring runs leaves the set
        // with the old one.
        if let Some(old) = vring.get_ref().get_kick() {
            let vq = u16::try_from(index).map_err(|_| VhostUserError::InvalidParam)?;
            self.events.stop_ring(vq, old.as_raw_fd());
        }
        vring.set_kick(fd);
        self.start_if_complete(index)?;
        self.update_ring(index)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        let index = u32::from(index);
        self.vring(index)?.set_call(fd);
        self.start_if_complete(index)
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_err(fd);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VhostUserResult<VhostUserProtocolFeatures> {
        Ok(AccelBackend::protocol_features())
    }

    /// The `vhost` crate keeps the acknowledged protocol features and
    /// checks each message against them.
    fn set_protocol_features(&mut self, _features: u64) -> VhostUserResult<()> {
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostUserResult<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostUserResult<()> {
        if self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(VhostUserError::InactiveFeature(
                VhostUserVirtioFeatures::PROTOCOL_FEATURES,
            ));
        }
        debug!("virtqueue {index}: enabled {enable}");
        let vring = self.vring(index)?;
        if enable {
            vring.set_enabled(true);
        } else {
            // Under one lock, so that the worker cannot hold the kicks off
            // again in between.
            let mut backend = self.backend();
            backend.release_kicks(index);
            vring.set_enabled(false);
        }
        self.update_ring(index)
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<Vec<u8>> {
        Ok(self.backend().config_window(offset, size))
    }

    /// The configuration space has no field a driver may write (§5): a
    /// write changes nothing.
    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<()> {
        Ok(())
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation("not a GPU device"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostUserResult<File> {
        Err(VhostUserError::InvalidOperation("no shared objects"))
    }

    /// The device's record as the front-end's inflight region (§11.3.3):
    /// the front-end keeps it and hands it back with `SET_INFLIGHT_FD` on
    /// each connection. The record covers every virtqueue at the largest
    /// size: a request for fewer (cloud-hypervisor asks for the queues the
    /// driver set up) gets it too; one for none, more, or a larger queue
    /// than the device takes is refused.
    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VhostUserResult<(VhostUserInflight, File)> {
        if inflight.num_queues == 0
            || usize::from(inflight.num_queues) > self.vrings.len()
            || inflight.queue_size > self.max_queue_size
        {
            return Err(VhostUserError::InvalidParam);
        }
        let (size, file) = self
            .backend()
            .record_region()
            .map_err(VhostUserError::ReqHandlerError)?;
        let reply = VhostUserInflight::new(size, 0, inflight.num_queues, inflight.queue_size);
        Ok((reply, file))
    }

    /// The front-end's inflight region (§11.3.3): offered to the device,
    /// which adopts it as its record if it is one and nothing ran on this
    /// connection yet, and otherwise logs why not. Never refused: the
    /// region is the front-end's to keep whatever the device thinks of it.
    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VhostUserResult<()> {
        let started = self.ring_started;
        debug!(
            "inflight region offered: {} bytes at offset {}, {} queues of {}",
            inflight.mmap_size, inflight.mmap_offset, inflight.num_queues, inflight.queue_size
        );
        self.backend()
            .offer_record(file, inflight.mmap_size, inflight.mmap_offset, started);
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VhostUserResult<u64> {
        Err(VhostUserError::InvalidOperation("memory slots not offered"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<VhostUserMemoryRegionBase>> {
        Err(VhostUserError::InvalidOperation("memory slots not offered"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation("memory slots not offered"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostUserResult<Option<File>> {
        Err(VhostUserError::InvalidOperation("device state not offered"))
    }

    fn check_device_state(&mut self) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation("device state not offered"))
    }

    fn get_shmem_config(&mut self) -> VhostUserResult<VhostUserShMemConfig> {
        Err(VhostUserError::InvalidOperation(
            "shared memory regions not offered",
        ))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation(
            "dirty logging not offered",
        ))
    }
}

/// The request handler of one VMM connection and the worker that serves its
/// rings. Dropping it stops the worker and waits for it.
pub struct Connection {
    name: String,
    handler: Arc<Mutex<Handler>>,
    stop: EventFd,
    worker: Option<JoinHandle<()>>,
    requests: Option<JoinHandle<Result<(), VhostUserError>>>,
}

impl Connection {
    /// The connection of `backend`, named `name` (its threads' names), its
    /// worker running, ready to accept a VMM.
    pub fn new(name: String, backend: &SharedBackend) -> Result<Self, ConnectionError> {
        let (num_queues, max_queue_size, poll_max) = {
            let backend = lock_backend(backend);
            (
                backend.num_queues(),
                backend.max_queue_size(),
                backend.poll_max(),
            )
        };
        let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let vrings = (0..num_queues)
            .map(|_| VringRwLock::new(memory.clone(), max_queue_size))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConnectionError::Worker(io::Error::other(e)))?;
        let events = Arc::new(WorkerEvents {
            epoll: Epoll::new().map_err(ConnectionError::Worker)?,
            started: EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(ConnectionError::Worker)?,
            started_rings: Mutex::new(Vec::new()),
            frontend_waiting: AtomicBool::new(false),
        });
        let stop = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(ConnectionError::Worker)?;
        events
            .add(stop.as_raw_fd(), STOP_EVENT_ID)
            .and_then(|()| events.add(events.started.as_raw_fd(), STARTED_EVENT_ID))
            .map_err(ConnectionError::Worker)?;
        for (fd, id) in lock_backend(backend).event_sources() {
            events.add(fd, id).map_err(ConnectionError::Worker)?;
        }
        let worker = Worker {
            backend: Arc::clone(backend),
            vrings: vrings.clone(),
            events: Arc::clone(&events),
            poll_max,
        };
        let worker = std::thread::Builder::new()
            .name(String::from("vring_worker"))
            .spawn(move || worker.run())
            .map_err(|e| ConnectionError::Spawn("worker", e))?;
        let handler = Handler {
            backend: Arc::clone(backend),
            vrings,
            memory,
            mappings: Vec::new(),
            events,
            owned: false,
            acked_features: 0,
            max_queue_size,
            ring_started: false,
        };
        Ok(Connection {
            name,
            handler: Arc::new(Mutex::new(handler)),
            stop,
            worker: Some(worker),
            requests: None,
        })
    }

    /// Waits for a VMM on `listener` and serves its messages on a thread of
    /// their own.
    pub fn start(&mut self, listener: &mut Listener) -> Result<(), ConnectionError> {
        let stream = loop {
            if let Some(stream) = listener.accept().map_err(ConnectionError::Accept)? {
                break stream;
            }
        };
        let mut requests = BackendReqHandler::from_stream(stream, Arc::clone(&self.handler));
        let thread = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || loop {
                requests.handle_request()?;
            })
            .map_err(|e| ConnectionError::Spawn("request", e))?;
        self.requests = Some(thread);
        Ok(())
    }

    /// Waits until the VMM's connection has ended: `Ok` when the VMM
    /// closed it, the error that ended it otherwise.
    pub fn wait(&mut self) -> Result<(), ConnectionError> {
        let Some(thread) = self.requests.take() else {
            return Ok(());
        };
        match thread.join() {
            Err(_) => Err(ConnectionError::Panicked),
            Ok(Ok(())) => Ok(()),
            Ok(Err(
                VhostUserError::Disconnected
                | VhostUserError::PartialMessage
                | VhostUserError::SocketBroken(_),
            )) => Ok(()),
            Ok(Err(e)) => Err(ConnectionError::Requests(e)),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            // Cannot happen (the counter is far from overflowing); joining
            // the worker would then wait forever, so it is left running.
            error!("cannot stop a connection's worker thread: {e}");
            return;
        }
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                error!("the worker thread of a connection panicked");
            }
        }
    }
}

/// The worker thread of a connection.
struct Worker {
    backend: SharedBackend,
    vrings: Vec<VringRwLock>,
    events: Arc<WorkerEvents>,
    /// The longest poll of the rings after an event ([`crate::poll`]).
    poll_max: Duration,
}

impl Worker {
    fn run(self) {
        let mut events = [EpollEvent::default(); EVENTS_PER_WAIT];
        let mut window = PollWindow::new(self.poll_max, Instant::now());
        loop {
            let (polled, idle_since) = self.poll(&mut window);
            // After a poll that took requests, the events that came
            // meanwhile (their kicks among them) are handled without a sleep.
            let timeout = if polled == Polled::Took { 0 } else { -1 };
            let count = match self.events.epoll.wait(timeout, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("a connection's worker cannot wait for events: {e}");
                    return;
                }
            };
            let woke = Instant::now();
            let mut took = false;
            for event in &events[..count] {
                took |= match event.data() {
                    STOP_EVENT_ID => return,
                    STARTED_EVENT_ID => self.serve_started_rings(),
                    id => self.handle(id),
                };
            }
            // Only a request after an idle poll tells how long the driver
            // paused; anything else that woke the worker is a miss.
            if polled == Polled::Nothing {
                if took {
                    window.paused(woke.saturating_duration_since(idle_since));
                } else {
                    window.missed();
                }
            }
        }
    }

    /// Polls the request rings for at most the window ([`crate::poll`]),
    /// looking once even when it is closed (so that it can open), not at
    /// all once the budget is spent or the front-end waits for the backend;
    /// says what the last look found, and when the poll began.
    fn poll(&self, window: &mut PollWindow) -> (Polled, Instant) {
        let start = Instant::now();
        let Some(length) = window.window(start) else {
            return (Polled::Off, start);
        };
        let deadline = start + length;
        let polled = loop {
            if self.events.frontend_waiting.load(Ordering::Relaxed) {
                // The lock does not hand itself over: let the front-end in.
                break Polled::Off;
            }
            let polled = lock_backend(&self.backend).poll_requests(&self.vrings);
            if polled != Polled::Nothing || Instant::now() >= deadline {
                break polled;
            }
            std::hint::spin_loop();
        };
        window.polled(start.elapsed());
        (polled, start)
    }

    /// Serves each ring that started since the last look (requests made
    /// available before its kick descriptor came get no kick).
    /// Returns whether requests were taken.
    fn serve_started_rings(&self) -> bool {
        // Nonblocking: a count already read by an earlier wake-up is no
        // error, and the list below says what started.
        let _ = self.events.started.read();
        let started = std::mem::take(&mut *lock(&self.events.started_rings));
        let mut took = false;
        for vq in started {
            took |= self.backend_event(vq);
        }
        took
    }

    /// A kick of ring `id`, or an event of the device; returns whether
    /// requests were taken.
    fn handle(&self, id: u64) -> bool {
        let Ok(id) = u16::try_from(id) else {
            return false;
        };
        match self.vrings.get(usize::from(id)) {
            Some(vring) => match vring.read_kick() {
                Ok(true) => self.backend_event(id),
                Ok(false) => {
                    debug!("kick of virtqueue {id}, which is disabled");
                    false
                }
                Err(e) => {
                    error!("cannot read the kick of virtqueue {id}: {e}");
                    false
                }
            },
            None => self.backend_event(id),
        }
    }

    /// Hands event `id` to the backend; returns whether requests were taken.
    fn backend_event(&self, id: u16) -> bool {
        let mut backend = lock_backend(&self.backend);
        let before = backend.requests_taken();
        if let Err(e) = backend.handle_event(id, &self.vrings) {
            error!("the device's event {id} failed: {e}");
        }
        backend.requests_taken() != before
    }
}
