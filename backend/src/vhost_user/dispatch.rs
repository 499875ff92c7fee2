// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The device's side of a connection: what the front-end's messages and the
//! worker's events ([`super::connection`]) turn into, as calls into
//! [`DeviceModel`].
//!
//! A device that resumes from the record of the tenant's previous process
//! (§11.3) waits for the front-end to start its rings again: a timer the
//! worker waits on polls it (every 5 ms) until it has resumed.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};
use std::time::Duration;

use thiserror::Error;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::VringRwLock;
use virtio_accel_spec::{VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::timerfd::TimerFd;

use crate::config::TenantConfig;
use crate::device::{DeviceError, DeviceModel, Polled, TenantState};
use crate::engine::Engine;

/// Size of the configuration window a VMM may read (virtio-pci maps device
/// configuration in a 4 KiB capability).
const CONFIG_WINDOW: usize = 4096;

/// The event id of the resume timer: past every virtqueue and completion
/// event id.
const RESUME_EVENT_ID: u16 = u16::MAX - 1;
/// The device's event id of the dma-buf waits' epoll set (§7.1.3).
const SYNC_EVENT_ID: u16 = u16::MAX - 2;
/// How often a device waiting to resume looks at its rings.
const RESUME_POLL: Duration = Duration::from_millis(5);

/// Errors of a connection's backend and daemon.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The device could not be created.
    #[error("cannot create the device")]
    Device(#[from] DeviceError),
    /// The resume timer could not be created or armed.
    #[error("cannot set up the resume timer")]
    ResumeTimer(#[source] vmm_sys_util::errno::Error),
}

/// The backend as a connection's threads share it.
pub type SharedBackend = Arc<RwLock<AccelBackend>>;

/// The backend, for one of a connection's threads (a thread that panicked
/// holding it leaves it as it was: the device's state is checked on use).
pub fn lock_backend(backend: &SharedBackend) -> RwLockWriteGuard<'_, AccelBackend> {
    backend.write().unwrap_or_else(PoisonError::into_inner)
}

/// The vhost-user backend of one connection.
pub struct AccelBackend {
    device: DeviceModel,
    num_queues: usize,
    queue_size: u16,
    /// The longest poll of the request rings after an event.
    poll_max: Duration,
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
        let queue_size = config.queue_size;
        let poll_max = Duration::from_micros(u64::from(config.poll_us));
        let device = DeviceModel::new(config, engine.as_ref(), tenant)?;
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
            poll_max,
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

    /// The event id of hardware queue `queue`'s completions (ids below
    /// `num_queues` are the virtqueues').
    fn completion_event_id(&self, queue: usize) -> u64 {
        (self.num_queues + 1 + queue) as u64
    }

    /// The descriptors the worker waits on for the device, with their event
    /// ids: the resume timer, the dma-buf waits' epoll set and every
    /// hardware queue's completions.
    pub fn event_sources(&self) -> Vec<(RawFd, u64)> {
        let timer = (self.resume_timer.as_raw_fd(), u64::from(RESUME_EVENT_ID));
        let sync = (self.device.sync_waits_fd(), u64::from(SYNC_EVENT_ID));
        let completions = self
            .device
            .hw_queues()
            .iter()
            .enumerate()
            .map(|(queue, hw_queue)| {
                (
                    hw_queue.completion_event().as_raw_fd(),
                    self.completion_event_id(queue),
                )
            });
        [timer, sync].into_iter().chain(completions).collect()
    }

    /// The connection is over (§11): see [`DeviceModel::disconnect`].
    pub fn disconnect(&mut self) {
        self.device.disconnect();
    }

    /// Virtqueues: the control queue and the request queues (§4).
    pub fn num_queues(&self) -> usize {
        self.num_queues
    }

    /// The largest queue size the device takes.
    pub fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    /// The virtio and vhost-user feature bits the device offers.
    pub fn features() -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_ACCEL_F_OBJECTS)
            | (1 << VIRTIO_ACCEL_F_FENCES)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// The vhost-user protocol features the device offers: INFLIGHT_SHMFD
    /// carries its record across a restart of the daemon (§11.3.3).
    pub fn protocol_features() -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    /// The features the driver accepted (`SET_FEATURES`).
    pub fn set_features(&mut self, features: u64) {
        self.device.set_features(features);
    }

    /// `RESET_DEVICE`.
    pub fn reset_device(&mut self) {
        self.device.reset();
    }

    /// Bytes `offset..offset + size` of the configuration window (§5): the
    /// structure, then zeros up to 4 KiB, so that every read a VMM forwards
    /// from a guest (any offset and size, aligned or not, inside its device
    /// configuration window, or the whole `config_size` it was configured
    /// with) is answered. vhost 0.18 answers a GET_CONFIG of size 0 or past
    /// 4 KiB itself, by closing the connection, before this is called; a
    /// range past the window here gets the empty reply of a failed read.
    pub fn config_window(&self, offset: u32, size: u32) -> Vec<u8> {
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

    /// A new memory table (SET_MEM_TABLE), already installed in `mem`: the
    /// device checks it before any use, and an error here becomes the VMM's
    /// error reply.
    pub fn set_memory(&mut self, mem: &GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.device.set_memory(mem).map_err(io::Error::other)
    }

    /// Virtqueue `queue_index` is about to stop or be disabled: the device
    /// turns its kicks back on ([`DeviceModel::release_kicks`]).
    pub fn release_kicks(&mut self, queue_index: u32) {
        if let Ok(vq) = u16::try_from(queue_index) {
            self.device.release_kicks(vq);
        }
    }

    /// `GET_VRING_BASE` of virtqueue `queue_index`.
    pub fn stop_vring(&mut self, queue_index: u32) -> io::Result<()> {
        let vq = u16::try_from(queue_index)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "no such virtqueue"))?;
        self.device.stop_ring(vq);
        Ok(())
    }

    /// The device's record as the front-end's inflight region
    /// (`GET_INFLIGHT_FD`, §11.3.3): its size in bytes and its memfd.
    pub fn record_region(&self) -> io::Result<(u64, File)> {
        self.device.record_region()
    }

    /// The front-end's inflight region (`SET_INFLIGHT_FD`, §11.3.3), of
    /// `size` bytes at `offset` of `file`; `started` if a ring of this
    /// connection has started. If the device adopts it and waits to resume
    /// from it, the resume timer runs.
    pub fn offer_record(&mut self, file: File, size: u64, offset: u64, started: bool) {
        self.device.offer_record(file, size, offset, started);
        if self.device.is_resuming() {
            if let Err(e) = self.resume_timer.reset(RESUME_POLL, Some(RESUME_POLL)) {
                // Cannot happen (the timer exists); the device then resumes
                // only on the events of its rings.
                log::error!("cannot start the resume timer: {e}");
            }
        }
    }

    /// The longest poll of the request rings after an event ([`crate::poll`]).
    pub fn poll_max(&self) -> Duration {
        self.poll_max
    }

    /// Chains taken from the request rings so far ([`DeviceModel::requests_taken`]).
    pub fn requests_taken(&self) -> u64 {
        self.device.requests_taken()
    }

    /// Polls the request rings ([`DeviceModel::poll_requests`]): the connection's
    /// worker does, for a while after an event, instead of sleeping.
    pub fn poll_requests(&mut self, vrings: &[VringRwLock]) -> Polled {
        self.device.attach_vrings(vrings);
        self.device.poll_requests(vrings)
    }

    /// An event of the connection's worker: a kick of virtqueue
    /// `device_event`, or an event of the device (completions, the resume
    /// timer).
    // The whole of the daemon's side in the instruction budget
    // (`accel-budget`): kept out of line so that callgrind counts it.
    #[inline(never)]
    pub fn handle_event(&mut self, device_event: u16, vrings: &[VringRwLock]) -> io::Result<()> {
        if device_event == RESUME_EVENT_ID {
            return self.poll_resume(vrings);
        }
        self.device.attach_vrings(vrings);
        if device_event == SYNC_EVENT_ID {
            self.device.handle_sync_waits(vrings);
            return Ok(());
        }
        let event = usize::from(device_event);
        if event < self.num_queues {
            crate::tenant_process::fault_point();
            // The device logs a ring it cannot update; an error returned to
            // the worker would be logged for every kick.
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
        let bytes = backend.config_window(0, at(size));
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
                let got = backend.config_window(at(offset), at(len));
                assert_eq!(got, window[offset..offset + len], "{len} bytes at {offset}");
            }
        }
        assert_eq!(backend.config_window(0, at(CONFIG_WINDOW)), window);
        assert!(backend.config_window(4090, 10).is_empty());
        assert!(backend.config_window(4096, 1).is_empty());
        assert!(backend.config_window(u32::MAX, 2).is_empty());
        assert_eq!(backend.num_queues(), 4);
    }
}
