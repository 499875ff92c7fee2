// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Completing requests: the completions of a hardware queue, reaped when
//! its completion event is raised, become responses (§6.4) and used
//! entries, recorded as complete (§11.3), and signal fences, which release
//! the jobs and FENCE_WAIT commands waiting on them (§6.2, §7.4).
//!
//! Completions come from the engine, of the jobs `schedule.rs` submitted;
//! a request that `accept.rs` failed, or that a resume answers
//! Interrupted (`resume.rs`), is finished here too. Used entries go on to
//! `publish.rs`, released jobs back to `schedule.rs`, and released
//! FENCE_WAIT commands are answered (`control.rs`).

use std::time::{Duration, Instant};

use log::debug;
use vhost_user_backend::VringRwLock;
use virtio_accel_spec::{Fence, Resp, Status};

use crate::command::FenceId;
use crate::engine::HwCompletion;
use crate::ops::Outcome;
use crate::ring_record::NO_RERUN;

use super::{DeviceModel, InFlight, Used, Waiter, RESP_SIZE};

impl DeviceModel {
    /// Takes the completions of hardware queue `queue`, and the chains of
    /// its ring if the device holds its kicks off (`take.rs`), then flushes.
    pub fn handle_completions(&mut self, queue: u16, vrings: &[VringRwLock]) {
        let Some(hw_queue) = self.hw_queues.get(usize::from(queue)) else {
            return;
        };
        self.clock = Instant::now();
        // Acknowledge the interrupt first, so a completion posted after the
        // reap below raises it again.
        if let Err(e) = hw_queue.completion_event().read() {
            debug!("hardware queue {queue}: completion event: {e}");
        }
        self.finish_reaped(queue);
        self.take_held(queue, vrings);
        self.flush(vrings);
    }

    /// Reaps the pending completions of hardware queue `queue` into the
    /// device's own buffer (no allocation once it has grown) and completes
    /// their requests.
    pub(super) fn finish_reaped(&mut self, queue: u16) {
        let mut completions = std::mem::take(&mut self.completions);
        if let Some(hw_queue) = self.hw_queues.get(usize::from(queue)) {
            hw_queue.reap(&mut completions);
        }
        self.finish_all(&mut completions);
        self.completions = completions;
    }

    /// The pending completions of hardware queue `queue`.
    pub(super) fn reap(&self, queue: u16) -> Vec<HwCompletion> {
        let mut completions = Vec::new();
        if let Some(hw_queue) = self.hw_queues.get(usize::from(queue)) {
            hw_queue.reap(&mut completions);
        }
        completions
    }

    /// Completes the requests of `completions`, reaped from the engine,
    /// leaving it empty.
    // A stage of the instruction budget (`accel-budget`): kept out of line
    // so that callgrind counts it.
    #[inline(never)]
    pub(super) fn finish_all(&mut self, completions: &mut Vec<HwCompletion>) {
        debug_assert!(
            completions.len() <= self.on_engine,
            "more completions than jobs"
        );
        self.on_engine = self.on_engine.saturating_sub(completions.len());
        self.alone_on_engine &= self.on_engine > 0;
        for completion in completions.drain(..) {
            if let Some(inflight) = self.inflight.remove(completion.cookie) {
                if completion.dma_buf_imports > 0 {
                    self.stats.dmabuf_imported(completion.dma_buf_imports);
                }
                self.finish(inflight, completion.outcome);
            }
        }
    }

    /// Completes a request: response, used entry, fence signal.
    pub(super) fn finish(&mut self, inflight: InFlight, outcome: Outcome) {
        self.alone = self.alone.saturating_sub(usize::from(inflight.alone));
        if inflight.no_rerun {
            // Its response may overwrite what a second run would read.
            if let Some(ring) = self.record.ring(inflight.vq) {
                ring.start(inflight.head, NO_RERUN);
            }
        }
        let resp = Resp {
            status: u32::from(outcome.status).into(),
            reserved: 0.into(),
            fence: Fence::new(inflight.fence.queue, inflight.fence.seqno),
            bytes_written: outcome.bytes_written.into(),
            result: outcome.result,
        };
        inflight.resp.write_obj(resp);
        let output = if inflight.direct_output && outcome.status.is_ok() {
            outcome.bytes_written
        } else {
            0
        };
        let len = u32::try_from(output.saturating_add(RESP_SIZE as u64)).unwrap_or(u32::MAX);
        self.stats.request_done(
            outcome.status,
            inflight.bytes,
            self.clock.saturating_duration_since(inflight.accepted),
        );
        self.push_used(inflight.vq, inflight.head, len);
        self.signal(inflight.fence);
    }

    /// Completes a request that has no room for a response.
    pub(super) fn finish_unanswered(&mut self, vq: u16, head: u16, fence: FenceId) {
        self.stats.request_done(Status::Invalid, 0, Duration::ZERO);
        self.push_used(vq, head, 0);
        self.signal(fence);
    }

    /// Signals a fence and releases what waited on it.
    pub(super) fn signal(&mut self, fence: FenceId) {
        for id in self.fences.signal(fence) {
            self.release(id);
        }
    }

    /// One of the things that wait `id` waited for is over: once none is
    /// left, its request is ready or its FENCE_WAIT answered. An id no
    /// longer waiting (the device was reset) is passed over.
    pub(super) fn release(&mut self, id: u64) {
        let Some(waiting) = self.waiting.get_mut(&id) else {
            return;
        };
        waiting.remaining = waiting.remaining.saturating_sub(1);
        if waiting.remaining > 0 {
            return;
        }
        let Some(done) = self.waiting.remove(&id) else {
            return;
        };
        match done.waiter {
            Waiter::Request { queue, job } => self.wait_for_host_fences(queue, *job),
            Waiter::HostFences { queue, job } => self.make_ready(queue, *job),
            Waiter::Control { head, resp } => self.answer_control(head, &resp, Status::Ok, 0),
        }
    }

    /// Releases the requests whose dma-buf waits ended (§7.1.3), then
    /// flushes.
    pub fn handle_sync_waits(&mut self, vrings: &[VringRwLock]) {
        self.clock = Instant::now();
        self.release_synced();
        self.flush(vrings);
    }

    /// `head` is complete, its output and response written, with used
    /// length `len`: recorded so, and its used entry queued; the head stays
    /// in flight until the entry is published.
    pub(super) fn push_used(&mut self, vq: u16, head: u16, len: u32) {
        if let Some(ring) = self.record.ring(vq) {
            ring.complete(head, len);
        }
        self.used.push(Used { vq, head, len });
    }
}
