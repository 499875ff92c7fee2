// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A whole device (`vhost_user_accel::device::DeviceModel`) with the software
//! engine (one thread) on rings that the input fills: chains on the control
//! queue and the request queues, kicks, completions, quiesces and resets, as
//! vhost-user-backend's worker would drive them. Checks: no panic, no access
//! outside the guest memory regions (guard pages), no hang (libFuzzer's
//! timeout), and each used ring returns only heads the driver made available,
//! no more often than it did.

#![no_main]

use std::os::fd::AsRawFd;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vhost_user_accel::config::{SocketSource, TenantConfig};
use vhost_user_accel::device::{DeviceModel, TenantState};
use vhost_user_accel::engine::software::SoftwareEngine;
use vhost_user_accel::engine::Engine;
use vhost_user_accel_fuzz::input::Reader;
use vhost_user_accel_fuzz::ring::{guest_memory, ChainSpec, DataArea, SplitRing};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_accel_spec::{VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

/// The driver's side: the rings of every queue, and the vrings the device
/// is handed, set up as a VMM's SET_VRING_* messages would.
struct Driver {
    rings: Vec<SplitRing>,
    vrings: Vec<VringRwLock>,
    data: DataArea,
}

impl Driver {
    fn new(
        shared: &GuestMemoryAtomic<GuestMemoryMmap>,
        queues: u16,
        size: u16,
        event_idx: bool,
    ) -> Self {
        let rings: Vec<SplitRing> = (0..queues)
            .map(|index| SplitRing::new(index, size))
            .collect();
        let vrings = rings
            .iter()
            .map(|ring| {
                let vring = VringRwLock::new(shared.clone(), size).expect("valid size");
                vring.set_queue_size(size);
                vring
                    .set_queue_info(ring.desc_table, ring.avail_ring, ring.used_ring)
                    .expect("aligned rings");
                vring.set_queue_event_idx(event_idx);
                vring.set_queue_ready(true);
                vring.set_enabled(true);
                vring
            })
            .collect();
        Driver {
            rings,
            vrings,
            data: DataArea::default(),
        }
    }

    /// Sets the rings up afresh after a reset, on the same vrings (as
    /// vhost-user-backend keeps its vrings and the VMM sets their bases
    /// again with SET_VRING_BASE).
    fn restart(&mut self, mem: &GuestMemoryMmap, size: u16) {
        for (index, (ring, vring)) in (0u16..).zip(self.rings.iter_mut().zip(&self.vrings)) {
            let _ = mem.write_slice(&[0u8; 0x2000], GuestAddress(ring.desc_table));
            *ring = SplitRing::new(index, size);
            vring.set_queue_next_avail(0);
            vring.set_queue_next_used(0);
        }
    }

    fn check(&self, mem: &GuestMemoryMmap) {
        for ring in &self.rings {
            ring.check_used(mem);
        }
    }
}

/// Whether hardware queue `queue` has raised its completion event.
fn completion_raised(device: &DeviceModel, queue: u16) -> bool {
    let Some(hw_queue) = device.hw_queues().get(usize::from(queue)) else {
        return false;
    };
    let mut poll = libc::pollfd {
        fd: hw_queue.completion_event().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on a descriptor the device owns while borrowed here.
    unsafe { libc::poll(&mut poll, 1, 0) == 1 }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let setup = r.u8();
    let request_queues = 1 + u16::from(setup % 3);
    let event_idx = setup & 0x04 != 0;
    // VERSION_1 (without it the device serves nothing, §3.2), and both
    // device features unless the input turns them off.
    let mut features =
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_ACCEL_F_OBJECTS) | (1 << VIRTIO_ACCEL_F_FENCES);
    features &= !u64::from((setup >> 3) & 3);
    if event_idx {
        features |= 1 << VIRTIO_RING_F_EVENT_IDX;
    }
    let size = 1u16 << (2 + (setup >> 5) % 5);
    let gap_pages = r.u8() % 2;

    let Ok(guarded) = guest_memory(gap_pages) else {
        return;
    };
    let mem = &guarded.mem;
    let shared = GuestMemoryAtomic::new(mem.clone());
    let engine: Arc<dyn Engine> = Arc::new(SoftwareEngine::new(1).expect("engine thread"));
    let mut config = TenantConfig::new("fuzz", SocketSource::Fd(-1));
    config.request_queues = request_queues;
    config.queue_size = size;
    let tenant = TenantState::new(0, &config);
    let mut device = DeviceModel::new(config, engine.as_ref(), tenant).expect("device");
    device.set_features(features);
    device.set_memory(&shared).expect("a valid table");
    let queues = request_queues + 1;
    let mut driver = Driver::new(&shared, queues, size, event_idx);
    device.attach_vrings(&driver.vrings);

    let mut actions = 0;
    while !r.is_empty() && actions < 64 {
        actions += 1;
        let action = r.u8();
        let vq = u16::from(r.u8()) % queues;
        match action % 16 {
            // Add a chain and kick (the common case), or add without a kick.
            0..=10 => {
                let chain = ChainSpec::read(&mut r);
                let ring = &mut driver.rings[usize::from(vq)];
                if ring.published.iter().sum::<u32>() >= u32::from(size) {
                    continue;
                }
                let (head, _) = ring.place(mem, &mut driver.data, &chain);
                ring.publish(mem, head);
                if action % 16 != 10 {
                    device.handle_queue(vq, &driver.vrings);
                }
            }
            11 => {
                device.handle_queue(vq, &driver.vrings);
            }
            12 | 13 => {
                for queue in 0..request_queues {
                    // As the worker's epoll does: only a queue whose
                    // completion event is raised (the device then reads it).
                    if completion_raised(&device, queue) {
                        device.handle_completions(queue, &driver.vrings);
                    }
                }
            }
            14 => device.stop_ring(vq),
            _ => {
                device.stop();
                driver.check(mem);
                // A reset: the device forgets everything, the driver sets
                // its rings up afresh and negotiates again.
                device.reset();
                driver.restart(mem, size);
                device.set_features(features);
            }
        }
    }
    device.stop();
    driver.check(mem);
    device.reset();
    drop(device);
});
