// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Publishing used entries: those `complete.rs` and `control.rs` queued
//! are added to their used rings, one batch a ring (§6.4), recorded as
//! published as they go (§11.3), and the driver is notified once per ring
//! and batch, subject to `VIRTIO_RING_F_EVENT_IDX`. Here a request's path
//! ends: the driver takes its entry from the used ring.

use log::{error, Level};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_accel_spec::FIRST_REQUEST_QUEUE;
use virtio_queue::QueueT;

use crate::used;

use super::{DeviceModel, Snapshot};

impl DeviceModel {
    /// Adds the queued used entries to their rings (§6.4) and notifies each
    /// touched ring once, if the driver asked for it. A ring the guest broke
    /// (used ring outside its memory) costs only its own entries. Without a
    /// valid memory table the entries wait for one.
    // A stage of the instruction budget (`accel-budget`): kept out of line
    // so that callgrind counts it.
    #[inline(never)]
    pub(super) fn publish_used(&mut self, vrings: &[VringRwLock]) {
        let Some(mem) = self.mem.clone() else {
            return;
        };
        if self.used.is_empty() {
            return;
        }
        // Both lists keep their allocations from one flush to the next.
        let mut used = std::mem::take(&mut self.used);
        let mut batch = std::mem::take(&mut self.batch);
        for (index, vring) in (0u16..).zip(vrings) {
            batch.clear();
            batch.extend(
                used.iter()
                    .filter(|entry| entry.vq == index)
                    .map(|entry| (entry.head, entry.len)),
            );
            if batch.is_empty() {
                continue;
            }
            if self.publish_batch(index, vring, &mem, &batch) {
                self.notify(index, vring);
            }
        }
        used.clear();
        self.used = used;
        self.batch = batch;
    }

    /// Tells each hardware queue how many completions the driver of its
    /// ring waits for before it wants a notification (`used_event`, 2.7.7
    /// of the virtio spec): the engine may then hold its interrupt until
    /// that many are pending or it has run all it had, and the worker is
    /// not woken for completions it could only publish unannounced. Not
    /// while a request or a FENCE_WAIT waits on a fence (§6.2), or a
    /// request runs alone (§11.3): a completion may release them, and they
    /// wait for no driver. A count past the device's jobs on the engine is
    /// no count: the driver has interrupts off (Linux writes 0 then). The
    /// engine bounds the wait ([`crate::engine::software::COALESCE_DELAY`]):
    /// the driver may ask for an interrupt sooner without telling the
    /// device.
    pub(super) fn coalesce_completions(&self, vrings: &[VringRwLock]) {
        let mem = self.mem.as_deref();
        let others_wait = !self.waiting.is_empty() || self.alone > 0;
        let rings = vrings.iter().skip(usize::from(FIRST_REQUEST_QUEUE));
        for (hw_queue, vring) in self.hw_queues.iter().zip(rings) {
            let count = match mem {
                Some(mem) if !others_wait => {
                    let state = vring.get_ref();
                    let queue = state.get_queue();
                    queue
                        .ready()
                        .then(|| used::entries_until_notification(queue, mem))
                        .flatten()
                        .map_or(0, usize::from)
                }
                _ => 0,
            };
            hw_queue.coalesce(if count <= self.on_engine { count } else { 0 });
        }
    }

    /// Sends the driver a used-buffer notification for virtqueue `vq`.
    // A stage of the instruction budget (`accel-budget`): kept out of line
    // so that callgrind counts it.
    #[inline(never)]
    pub(super) fn notify(&self, vq: u16, vring: &VringRwLock) {
        if let Err(e) = vring.signal_used_queue() {
            self.vmm_log(
                Level::Warn,
                format_args!("virtqueue {vq}: cannot notify the driver: {e}"),
            );
        }
    }

    /// Publishes the used entries `batch` of virtqueue `vq` in its ring,
    /// recorded as they go (§11.3); returns whether the driver asked to be
    /// notified. An entry the ring cannot take (the guest moved its used ring
    /// out of its memory) is logged, and leaves the record at odds with the
    /// ring: it is marked so, and a process that would resume from it starts
    /// afresh instead.
    fn publish_batch(
        &self,
        vq: u16,
        vring: &VringRwLock,
        mem: &Snapshot,
        batch: &[(u16, u32)],
    ) -> bool {
        let record = self.record.ring(vq);
        if let Some(Err(e)) = record.as_ref().map(|ring| ring.begin_publish(batch)) {
            // Cannot happen: the heads are the record's own, each once. The
            // record no longer says what the ring holds.
            error!("virtqueue {vq}: {e}");
            self.record.poison();
        }
        let mut state = vring.get_mut();
        let notify = used::publish(state.get_queue_mut(), mem, batch, |head, e| {
            self.guest_error(format_args!(
                "virtqueue {vq}: cannot return head {head}: {e}"
            ));
            self.record.poison();
        });
        if let Some(ring) = record {
            ring.end_publish(batch);
        }
        notify
    }
}
