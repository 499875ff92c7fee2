// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Taking requests: the chains the driver made available in a ring, on a
//! kick of the ring ([`DeviceModel::handle_queue`]) or a poll of the request
//! rings ([`DeviceModel::poll_requests`]), with kicks disabled meanwhile (2.7.10
//! of the virtio spec). While the engine has a backlog of a request queue's
//! jobs, the ring's kicks stay off after the pass, and the hardware queue's
//! next event takes its chains instead (§4.2). Each chain is recorded as
//! taken (§11.3) and, on a request queue, gets its fence (§6.2); an entry
//! that names no chain is consumed unanswered (§6.5), and no ring is taken
//! from while one's history began with an earlier device instance (§11.2).
//!
//! Requests come from the guest's available rings, through the backend's
//! kick and poll events (or from the record, `resume.rs`). A request chain
//! goes on to `accept.rs`, a control command to `control.rs`; each pass
//! ends with a flush (`schedule.rs`), which submits what is ready and
//! publishes what is complete (`publish.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use log::Level;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{QueueOwnedT, QueueT};

use crate::chain::{walk, ChainStart, Walk};
use crate::command::FenceId;
use crate::ring_record::Take;

use super::{binding_of, request_queue, DeviceError, DeviceModel, Polled, Snapshot};

/// How many jobs of a request queue must wait to start on the engine for
/// the device to leave its ring's kicks off ([`DeviceModel::hold_kicks`]):
/// about a batch of a driver that keeps the queue deep, so that a driver
/// sending a request or a few at a time keeps the kick's latency, and the
/// engine still has a backlog to run while the device takes more.
const KICK_HOLD_BACKLOG: usize = 8;

impl DeviceModel {
    /// Processes the available chains of virtqueue `vq` (a kick), then
    /// flushes. A ring the device cannot update (the guest placed it outside
    /// its memory) is logged, rate-limited; the other queues carry on.
    pub fn handle_queue(&mut self, vq: u16, vrings: &[VringRwLock]) {
        self.clock = Instant::now();
        let polled = self.poll_ring(vq, vrings);
        // Publish what was taken even if the ring then failed.
        self.flush(vrings);
        if let Err(e) = polled {
            self.guest_error(format_args!("{}", crate::error_chain(&e)));
        }
    }

    /// Takes the chains of a request ring that holds some, as a kick of it
    /// would, if the device may poll for them now; says what came of it.
    /// The device polls only while nothing of its own is on the engine or
    /// ready for it: the engine may share its CPU, and a poll would take
    /// that CPU from the engine's work.
    pub fn poll_requests(&mut self, vrings: &[VringRwLock]) -> Polled {
        if self.on_engine > 0 || self.ready.iter().any(|jobs| !jobs.is_empty()) {
            return Polled::EngineBusy;
        }
        let Some((vq, avail)) = self.ring_with_requests(vrings) else {
            return Polled::Nothing;
        };
        let before = self.requests_taken;
        self.handle_queue(vq, vrings);
        if self.requests_taken == before {
            self.stuck = Some((vq, avail));
            Polled::Stuck
        } else {
            self.stats.polled();
            Polled::Took
        }
    }

    /// Chains taken from the request rings since the device was made, by
    /// kicks and polls alike (wrapping).
    pub fn requests_taken(&self) -> u64 {
        self.requests_taken
    }

    /// A started and enabled request ring (a kick of a disabled one is
    /// ignored too) whose available index is ahead of the device's, with
    /// that index, if the device takes requests at all.
    fn ring_with_requests(&self, vrings: &[VringRwLock]) -> Option<(u16, u16)> {
        if self.legacy_driver || self.resuming.is_some() || self.history.has_foreign() {
            return None;
        }
        let mem = self.mem.as_deref()?;
        let first = virtio_accel_spec::FIRST_REQUEST_QUEUE;
        (first..)
            .zip(vrings.iter().skip(usize::from(first)))
            .find_map(|(vq, vring)| {
                let state = vring.get_ref();
                let queue = state.get_queue();
                // As a kick would find it: started (a kick descriptor, kept
                // only while the ring is served) and enabled.
                if state.get_kick().is_none() || !state.is_enabled() || !queue.ready() {
                    return None;
                }
                let avail = queue.avail_idx(mem, Ordering::Acquire).ok()?.0;
                let ahead = avail != queue.next_avail() && self.stuck != Some((vq, avail));
                ahead.then_some((vq, avail))
            })
    }

    /// Takes every available chain of virtqueue `vq`, with kicks disabled
    /// meanwhile; then re-enables them, unless it holds them off
    /// ([`DeviceModel::hold_kicks`]), and checks once more for chains added
    /// in between (the usual race-free pattern, 2.7.10 of the virtio spec):
    /// if some came, it goes round again. A pass that takes nothing although
    /// chains came may have raced with the driver (a chain added after it
    /// read the index, which sent no kick while kicks were off or held): it
    /// gets one more pass. A ring the device cannot read (a bad `idx` or
    /// entry, a queue not ready) is then left alone until the next kick
    /// instead of being polled in a loop.
    fn poll_ring(&mut self, vq: u16, vrings: &[VringRwLock]) -> Result<(), DeviceError> {
        let Some(vring) = vrings.get(usize::from(vq)) else {
            return Ok(());
        };
        let Some(mem) = self.mem.clone() else {
            return Ok(());
        };
        let vring_error = |source| DeviceError::Vring { index: vq, source };
        let mut empty_passes = 0;
        loop {
            // A ring the front-end has not started (again), or has stopped
            // meanwhile, holds nothing to take, its index tells nothing yet,
            // and it is not the device's to write, not even its notification
            // fields: the driver may have freed it (§11.2). A disabled one
            // is not taken from (§4); enabled, it is served at once.
            let served = {
                let state = vring.get_ref();
                state.get_queue().ready() && state.is_enabled()
            };
            if !served {
                return Ok(());
            }
            // Held kicks are off already: no write to a cache line the
            // driver reads on each chain it adds.
            if !self.kicks_held(vq) {
                vring
                    .get_mut()
                    .get_queue_mut()
                    .disable_notification(&*mem)
                    .map_err(vring_error)?;
            }
            let taken = self.drain_queue(vq, vring, &mem);
            if self.hold_kicks(vq) {
                return Ok(());
            }
            let more = vring
                .get_mut()
                .get_queue_mut()
                .enable_notification(&*mem)
                .map_err(vring_error)?;
            if taken == 0 {
                empty_passes += 1;
            }
            // An entry the device cannot read must not turn into a busy
            // loop.
            if !more || empty_passes > 1 {
                return Ok(());
            }
        }
    }

    /// Whether the kicks of virtqueue `vq`, off for the pass that took its
    /// chains, stay off: while its hardware queue has a backlog of at least
    /// [`KICK_HOLD_BACKLOG`] jobs waiting to start. The engine's next event
    /// on that queue (a completion, or the start of the backlog's last job,
    /// [`crate::engine::HwQueue::watch_backlog`]) then takes the ring's new
    /// chains ([`DeviceModel::take_held`]), and a kick would only wake the
    /// device once more, on a CPU the engine may share. (A worker may idle
    /// from the end of the backlog until the device has taken and submitted
    /// new chains, as it would until a kick's.) Never for the control queue.
    /// The ready jobs are submitted first, so that the backlog counts them.
    fn hold_kicks(&mut self, vq: u16) -> bool {
        let Some(queue) = request_queue(vq).map(usize::from) else {
            return false;
        };
        self.submit_ready();
        let held = self
            .hw_queues
            .get(queue)
            .is_some_and(|hw_queue| hw_queue.watch_backlog(KICK_HOLD_BACKLOG));
        if let Some(flag) = self.kicks_held.get_mut(queue) {
            *flag = held;
        }
        held
    }

    /// Whether the device holds the kicks of virtqueue `vq` off.
    fn kicks_held(&self, vq: u16) -> bool {
        request_queue(vq)
            .and_then(|queue| self.kicks_held.get(usize::from(queue)))
            .is_some_and(|held| *held)
    }

    /// Takes the chains of the ring of request queue `queue` if its kicks
    /// are held off ([`DeviceModel::hold_kicks`]): an event of its hardware
    /// queue stands for them. A ring the device cannot update is logged
    /// once and no longer held: the driver's next kick finds it.
    pub(super) fn take_held(&mut self, queue: u16, vrings: &[VringRwLock]) {
        let Some(vq) = queue.checked_add(virtio_accel_spec::FIRST_REQUEST_QUEUE) else {
            return;
        };
        if !self.kicks_held(vq) {
            return;
        }
        if let Err(e) = self.poll_ring(vq, vrings) {
            if let Some(held) = self.kicks_held.get_mut(usize::from(queue)) {
                *held = false;
            }
            self.guest_error(format_args!("{}", crate::error_chain(&e)));
        }
    }

    /// The front-end is about to stop or disable virtqueue `vq`
    /// (`GET_VRING_BASE`, `SET_VRING_ENABLE`): kicks the device held off
    /// are turned back on while the ring is still the device's to write
    /// (§4.2, §11.2). Chains the driver made available meanwhile stay in
    /// the ring for whoever serves it next, which takes them when it starts
    /// the ring, kick or not (§4.2; this device does so in
    /// `serve_started_rings`, and QEMU's kick eventfds come signalled).
    pub fn release_kicks(&mut self, vq: u16) {
        let Some(held) = request_queue(vq).and_then(|q| self.kicks_held.get_mut(usize::from(q)))
        else {
            return;
        };
        if !std::mem::take(held) {
            return;
        }
        let (Some(vring), Some(mem)) = (self.vrings.get(usize::from(vq)), self.mem.as_deref())
        else {
            return;
        };
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            return;
        }
        if let Err(e) = state.get_queue_mut().enable_notification(mem) {
            drop(state);
            self.guest_error(format_args!("virtqueue {vq}: {e}"));
        }
    }

    /// Takes the available chains of virtqueue `vq` from `mem`; returns how
    /// many (0 if the ring cannot be read). [`DeviceModel::poll_ring`] calls it
    /// on a started ring only.
    fn drain_queue(&mut self, vq: u16, vring: &VringRwLock, mem: &Snapshot) -> usize {
        if self.legacy_driver || self.resuming.is_some() {
            return 0;
        }
        if self.history.restarting(vq) {
            self.judge_restart();
        }
        let (table, size, binding) = {
            let mut state = vring.get_mut();
            let size = state.get_queue().size();
            let table = state.get_queue().desc_table();
            let binding = binding_of(state.get_queue());
            if !self.ring_began_here(vq, state.get_queue().next_avail()) {
                return 0;
            }
            self.heads.clear();
            // Chains made of a plain reference to the memory: no reference
            // count to change for each.
            match state.get_queue_mut().iter(&**mem) {
                Ok(iter) => self.heads.extend(iter.map(|chain| chain.head_index())),
                Err(e) => {
                    drop(state);
                    self.guest_error(format_args!("virtqueue {vq}: {e}"));
                    return 0;
                }
            }
            (table, size, binding)
        };
        let taken = self.heads.len();
        if request_queue(vq).is_some() {
            let count = u64::try_from(taken).unwrap_or(u64::MAX);
            self.requests_taken = self.requests_taken.wrapping_add(count);
        }
        let record = Arc::clone(&self.record);
        let Some(ring) = record.ring(vq) else {
            return 0;
        };
        ring.bind(binding);
        let heads = std::mem::take(&mut self.heads);
        for &head in &heads {
            // A head past the ring's own size (which may be below the
            // queue's) names no chain (§6.5).
            let take = if head < size {
                ring.take(head)
            } else {
                Take::Skipped(ring.skip())
            };
            match take {
                Take::Held(seqno) => {
                    // Fences are issued in step with the record: both count
                    // the entries taken since the reset (§6.2).
                    if let Some(queue) = request_queue(vq) {
                        self.fences.issue(queue, seqno);
                    }
                    self.accept_chain(vq, ChainStart { table, size, head }, mem, seqno);
                }
                Take::Skipped(seqno) => {
                    // §6.5: no chain, or one already in flight: it cannot be
                    // answered without corrupting the request that owns it.
                    self.guest_error(format_args!(
                        "virtqueue {vq}: head {head} is out of range or in flight"
                    ));
                    self.consume_unanswerable(vq, seqno);
                }
            }
        }
        self.heads = heads;
        taken
    }

    /// Walks the chain at `start` and takes it as a control command, or as
    /// request `seqno` of its queue, whose fence is issued.
    pub(super) fn accept_chain(&mut self, vq: u16, start: ChainStart, mem: &Snapshot, seqno: u64) {
        // The lists hold `mem`: whatever is made of them keeps it mapped.
        let mut walked = Walk::default();
        walk(start, mem, self.config.limits.max_segments, &mut walked);
        match request_queue(vq) {
            None => self.accept_control(start.head, &mut walked, mem, seqno),
            Some(queue) => {
                let fence = FenceId { queue, seqno };
                self.accept_request(vq, start.head, &mut walked, mem, fence);
            }
        }
    }

    /// Whether the device may take chains from `vq`, whose next index is
    /// `next_avail`: not while any ring's history began with an earlier
    /// device instance, whose requests this one can neither answer safely
    /// (some were completed already) nor run (their objects and fences are
    /// gone). They stay in the ring, unanswered, until the driver resets the
    /// device (§11).
    fn ring_began_here(&mut self, vq: u16, next_avail: u16) -> bool {
        if self.history.observe(vq, next_avail) == Some(false) {
            self.vmm_log(
                Level::Error,
                format_args!(
                    "virtqueue {vq} resumes at index {next_avail}, used by an earlier device \
                     instance (back-end restart or migration without device state): no \
                     request is taken until the driver resets the device"
                ),
            );
        }
        !self.history.has_foreign()
    }

    /// An available entry that names no chain the device may answer, taken
    /// as number `seqno`: on a request queue it still gets a fence, which
    /// signals at once (§6.5).
    fn consume_unanswerable(&mut self, vq: u16, seqno: u64) {
        if let Some(fence) = request_queue(vq).and_then(|queue| self.fences.issue(queue, seqno)) {
            self.signal(fence);
        }
    }
}
