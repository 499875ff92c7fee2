//! The `VhostUserBackend` glue: vhost-user messages and epoll events in, calls
//! into [`Device`] out.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use log::error;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock};
use virtio_accel_spec::{VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::config::TenantConfig;
use crate::device::{Device, DeviceError, TenantState};
use crate::engine::Engine;

/// Size of the configuration window a VMM may read (virtio-pci maps device
/// configuration in a 4 KiB capability).
const CONFIG_WINDOW: usize = 4096;

/// The vhost-user backend of one connection.
pub struct AccelBackend {
    device: Device,
    num_queues: usize,
    queue_size: usize,
    /// Exit-event descriptors handed to vhost-user-backend, which takes them
    /// with `into_raw_fd` and never closes them (0.24): see
    /// [`AccelBackend::close_exit_events`].
    exit_events: Mutex<Vec<RawFd>>,
}

impl AccelBackend {
    /// A backend for `tenant`, configured by `config`, on `engine`.
    pub fn new(
        config: TenantConfig,
        engine: &Arc<dyn Engine>,
        tenant: TenantState,
    ) -> Result<Self, DeviceError> {
        let num_queues = usize::from(config.request_queues) + 1;
        let queue_size = usize::from(config.queue_size);
        Ok(AccelBackend {
            device: Device::new(config, engine.as_ref(), tenant)?,
            num_queues,
            queue_size,
            exit_events: Mutex::new(Vec::new()),
        })
    }

    /// The epoll event id of hardware queue `queue`'s completions (ids up to
    /// `num_queues` belong to the virtqueues and the exit event).
    pub fn completion_event_id(&self, queue: usize) -> u64 {
        (self.num_queues + 1 + queue) as u64
    }

    /// The device model.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The connection is over (§11): drains the device and forgets its state.
    pub fn disconnect(&mut self) {
        self.device.reset();
    }

    /// Closes the exit-event descriptors that vhost-user-backend 0.24 leaks,
    /// one per connection otherwise. Call only once the daemon of this
    /// backend is dropped (its worker threads joined, its epoll closed).
    pub fn close_exit_events(&self) {
        for fd in lock(&self.exit_events).drain(..) {
            // Only a descriptor that is still an eventfd is ours to close.
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}"));
            if !target.is_ok_and(|t| t.as_os_str() == "anon_inode:[eventfd]") {
                continue;
            }
            // SAFETY: vhost-user-backend took this descriptor with
            // `into_raw_fd` for an epoll that is now closed and never closes
            // it; nothing else refers to it, so this is its only owner.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// Bytes `offset..offset + size` of the configuration space (§5); bytes
    /// past the structure read as zero, as a VMM configured with a larger
    /// `config_size` expects. A range past the 4 KiB window gets an empty
    /// reply, which vhost-user reports to the VMM as an error.
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

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK)
            .map_err(|e| error!("cannot create exit event: {e}"))
            .ok()?;
        lock(&self.exit_events).push(consumer.as_raw_fd());
        Some((consumer, notifier))
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
        let bytes = backend.get_config(0, 40);
        let mut config = VirtioAccelConfig::default();
        config.as_mut_slice().copy_from_slice(&bytes);
        assert_eq!(u32::from(config.num_request_queues), 3);
        assert_eq!(u32::from(config.ops), Op::all_capabilities());
        assert_eq!(backend.get_config(36, 8)[..4], bytes[36..]);
        assert_eq!(backend.get_config(36, 8)[4..], [0; 4]);
        assert!(backend.get_config(4090, 10).is_empty());
        assert!(backend.get_config(u32::MAX, 2).is_empty());
        assert_eq!(backend.num_queues(), 4);
    }
}
