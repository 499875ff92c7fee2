// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Fence timelines and the requests waiting on fences (§6.2).
//!
//! Each request queue has a timeline: requests get sequence numbers 1, 2, 3…
//! in the order the device takes them, and each signals when its request
//! completes, in any order. A timeline stores only the fences issued and not
//! yet signalled, one per request in flight on its queue, each with what
//! waits on it; every other issued fence has signalled. A driver that holds
//! one fence open while it streams requests through the queue therefore
//! costs nothing per completion: a timeline never holds more entries than the
//! queue has requests in flight, at most its size (§12.7).

use std::cmp::Ordering;
use std::collections::VecDeque;

use thiserror::Error;

use crate::command::FenceId;

/// Errors of fence look-ups.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FenceError {
    /// The fence names no queue or a sequence number not issued yet.
    #[error("fence {0:?} was never issued")]
    NotIssued(FenceId),
}

/// A fence issued and not signalled, and what waits on it.
#[derive(Debug)]
struct Pending<W> {
    seqno: u64,
    waiters: Vec<W>,
}

#[derive(Debug)]
struct Timeline<W> {
    /// Sequence number of the next request.
    next: u64,
    /// The fences issued and not signalled, by increasing sequence number
    /// (fences are issued in that order and leave from anywhere).
    pending: VecDeque<Pending<W>>,
}

impl<W> Default for Timeline<W> {
    fn default() -> Self {
        Timeline {
            next: 1,
            pending: VecDeque::new(),
        }
    }
}

impl<W> Timeline<W> {
    /// Issues fence `seqno`, if it is the next one or past it (the fences
    /// between count as issued and signalled).
    fn issue(&mut self, seqno: u64) -> Option<u64> {
        if seqno < self.next {
            return None;
        }
        self.next = seqno.checked_add(1)?;
        self.pending.push_back(Pending {
            seqno,
            waiters: Vec::new(),
        });
        Some(seqno)
    }

    fn is_issued(&self, seqno: u64) -> bool {
        seqno != 0 && seqno < self.next
    }

    fn seqno_at(&self, index: usize) -> Option<u64> {
        self.pending.get(index).map(|pending| pending.seqno)
    }

    /// Where fence `seqno` is in `pending`, if it has not signalled.
    ///
    /// Sequence numbers increase strictly, so there are at most
    /// `seqno - first` entries before it and `last - seqno` after it. Those
    /// bounds name its index outright when the entries before it, or those
    /// after it, are consecutive numbers: requests completing in order,
    /// behind one held fence or not. Otherwise a binary search between them.
    fn index_of(&self, seqno: u64) -> Option<usize> {
        let first = self.pending.front()?.seqno;
        let last = self.pending.back()?.seqno;
        if seqno < first || seqno > last {
            return None;
        }
        let end = self.pending.len() - 1;
        let at_most = |gap: u64| usize::try_from(gap).map_or(end, |gap| gap.min(end));
        let (mut low, mut high) = (end - at_most(last - seqno), at_most(seqno - first));
        for guess in [low, high] {
            if self.seqno_at(guess) == Some(seqno) {
                return Some(guess);
            }
        }
        while low <= high {
            let middle = low + (high - low) / 2;
            match self.seqno_at(middle)?.cmp(&seqno) {
                Ordering::Equal => return Some(middle),
                Ordering::Less => low = middle + 1,
                Ordering::Greater => high = middle.checked_sub(1)?,
            }
        }
        None
    }

    /// Removes fence `seqno` and returns its waiters.
    fn signal(&mut self, seqno: u64) -> Vec<W> {
        self.index_of(seqno)
            .and_then(|index| self.pending.remove(index))
            .map(|pending| pending.waiters)
            .unwrap_or_default()
    }
}

/// The fences of one device, and who waits on which. Waiters are kept with
/// their fence and leave with it, so nothing here outlives the requests in
/// flight.
#[derive(Debug)]
pub struct Fences<W> {
    timelines: Vec<Timeline<W>>,
}

impl<W> Fences<W> {
    /// Timelines for `queues` request queues.
    pub fn new(queues: u16) -> Self {
        Fences {
            timelines: (0..queues).map(|_| Timeline::default()).collect(),
        }
    }

    /// Issues fence `seqno` of `queue`: the sequence number of the request
    /// the device just took there, one past the last issued (a number past
    /// that issues the fences between as signalled). `None` if there is no
    /// such queue or `seqno` was issued already.
    pub fn issue(&mut self, queue: u16, seqno: u64) -> Option<FenceId> {
        let timeline = self.timelines.get_mut(usize::from(queue))?;
        let seqno = timeline.issue(seqno)?;
        Some(FenceId { queue, seqno })
    }

    /// The timeline of `queue` as a device instance left it (§11.3): fences
    /// 1 to `issued` issued, those of `pending` not signalled (numbers past
    /// `issued`, or 0, are ignored), none waited on.
    pub fn restore(&mut self, queue: u16, issued: u64, pending: &[u64]) {
        let Some(timeline) = self.timelines.get_mut(usize::from(queue)) else {
            return;
        };
        let mut pending: Vec<u64> = pending
            .iter()
            .copied()
            .filter(|&seqno| seqno != 0 && seqno <= issued)
            .collect();
        pending.sort_unstable();
        pending.dedup();
        *timeline = Timeline {
            next: issued.saturating_add(1),
            pending: pending
                .into_iter()
                .map(|seqno| Pending {
                    seqno,
                    waiters: Vec::new(),
                })
                .collect(),
        };
    }

    /// Whether `fence` has signalled; an error if it was never issued.
    pub fn is_signalled(&self, fence: FenceId) -> Result<bool, FenceError> {
        match self.timelines.get(usize::from(fence.queue)) {
            Some(timeline) if timeline.is_issued(fence.seqno) => {
                Ok(timeline.index_of(fence.seqno).is_none())
            }
            _ => Err(FenceError::NotIssued(fence)),
        }
    }

    /// Registers `waiter` to be returned by [`Fences::signal`] of `fence`,
    /// which must be issued and not signalled ([`Fences::is_signalled`]
    /// answers `Ok(false)`): a waiter on any other fence would never be
    /// returned, and is dropped.
    pub fn wait(&mut self, fence: FenceId, waiter: W) {
        let Some(timeline) = self.timelines.get_mut(usize::from(fence.queue)) else {
            return;
        };
        if let Some(index) = timeline.index_of(fence.seqno) {
            if let Some(pending) = timeline.pending.get_mut(index) {
                pending.waiters.push(waiter);
            }
        }
    }

    /// Signals `fence` and returns its waiters; a fence signalled already
    /// or never issued has none.
    pub fn signal(&mut self, fence: FenceId) -> Vec<W> {
        self.timelines
            .get_mut(usize::from(fence.queue))
            .map(|timeline| timeline.signal(fence.seqno))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{HashMap, HashSet};

    use super::*;

    impl<W> Fences<W> {
        /// Issues the next fence of `queue`, as a device that takes one
        /// request there.
        fn issue_next(&mut self, queue: u16) -> Option<FenceId> {
            let next = self.timelines.get(usize::from(queue))?.next;
            self.issue(queue, next)
        }

        /// Every waiter held, on every fence.
        fn waiter_count(&self) -> usize {
            let pending = self.timelines.iter().flat_map(|t| &t.pending);
            pending.map(|pending| pending.waiters.len()).sum()
        }
    }

    #[test]
    fn out_of_order_signals_and_waiters() {
        let mut fences = Fences::<&str>::new(2);
        let a = fences.issue_next(0).unwrap();
        let b = fences.issue_next(0).unwrap();
        let c = fences.issue_next(1).unwrap();
        assert_eq!((a.seqno, b.seqno, c.seqno), (1, 2, 1));
        assert_eq!(fences.issue_next(2), None);
        assert_eq!(
            fences.is_signalled(FenceId { queue: 0, seqno: 3 }),
            Err(FenceError::NotIssued(FenceId { queue: 0, seqno: 3 }))
        );
        assert!(fences.is_signalled(FenceId { queue: 0, seqno: 0 }).is_err());
        assert!(fences.is_signalled(FenceId { queue: 5, seqno: 1 }).is_err());
        fences.wait(a, "x");
        fences.wait(a, "y");
        assert!(fences.signal(b).is_empty());
        assert!(fences.is_signalled(b).unwrap());
        assert!(!fences.is_signalled(a).unwrap());
        assert!(
            fences.signal(b).is_empty(),
            "a second signal changes nothing"
        );
        assert!(!fences.is_signalled(a).unwrap());
        assert_eq!(fences.signal(a), vec!["x", "y"]);
        assert!(fences.is_signalled(a).unwrap());
        assert!(!fences.is_signalled(c).unwrap());
        assert!(fences.timelines[0].pending.is_empty());
        assert_eq!(fences.timelines[1].pending.len(), 1);
    }

    /// A timeline restored after a back-end restart goes on where the last
    /// instance left it: the fences it had not signalled are pending, the
    /// others signalled, and no number is issued twice.
    #[test]
    fn a_restored_timeline_continues_the_numbering() {
        let mut fences = Fences::<u32>::new(2);
        fences.restore(1, 9, &[7, 3, 12, 0, 3]);
        let fence = |seqno| FenceId { queue: 1, seqno };
        assert_eq!(fences.is_signalled(fence(3)), Ok(false));
        assert_eq!(fences.is_signalled(fence(7)), Ok(false));
        assert_eq!(fences.is_signalled(fence(9)), Ok(true));
        assert!(fences.is_signalled(fence(10)).is_err());
        assert!(fences.issue(1, 9).is_none(), "issued already");
        assert_eq!(fences.issue_next(1), Some(fence(10)));
        fences.wait(fence(7), 1);
        assert_eq!(fences.signal(fence(7)), vec![1]);
        assert_eq!(fences.timelines[1].pending.len(), 2);
        // Past the next number: the fences between are signalled.
        assert_eq!(fences.issue(0, 4), Some(FenceId { queue: 0, seqno: 4 }));
        assert_eq!(
            fences.is_signalled(FenceId { queue: 0, seqno: 2 }),
            Ok(true)
        );
        assert_eq!(fences.issue(3, 1), None);
    }

    /// A held fence costs nothing per completion behind it: the timeline
    /// holds the requests in flight, not the fences signalled since.
    #[test]
    fn a_held_fence_keeps_the_timeline_at_the_requests_in_flight() {
        let mut fences = Fences::<u32>::new(2);
        let held = fences.issue_next(0).unwrap();
        fences.wait(held, 7);
        let mut window = VecDeque::new();
        for round in 0..1_000_000u64 {
            window.push_back(fences.issue_next(0).unwrap());
            if window.len() == 4 {
                // Completions behind the held fence, out of order half the time.
                let index = usize::from(round % 2 == 0);
                let done = window.remove(index).unwrap();
                assert!(fences.signal(done).is_empty());
            }
        }
        let timeline = &fences.timelines[0];
        assert_eq!(timeline.pending.len(), 1 + window.len());
        assert!(
            timeline.pending.capacity() <= 8,
            "capacity {}",
            timeline.pending.capacity()
        );
        assert_eq!(fences.waiter_count(), 1);
        assert!(!fences.is_signalled(held).unwrap());
        assert!(fences.is_signalled(FenceId { queue: 0, seqno: 2 }).unwrap());
        assert_eq!(fences.signal(held), vec![7]);
        assert_eq!(fences.waiter_count(), 0);
        for fence in window {
            fences.signal(fence);
        }
        assert!(fences.timelines[0].pending.is_empty());
    }

    /// xorshift64*: a reproducible sequence without a dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % n
        }

        fn index(&mut self, len: usize) -> usize {
            usize::try_from(self.below(u64::try_from(len).unwrap())).unwrap()
        }
    }

    /// The plain meaning of a device's fences: what was issued, what has not
    /// signalled, who waits on what.
    #[derive(Default)]
    struct Model {
        next: Vec<u64>,
        unsignalled: HashSet<FenceId>,
        waiters: HashMap<FenceId, Vec<u32>>,
    }

    impl Model {
        fn check(&self, fences: &Fences<u32>, rng: &mut Rng) {
            for (queue, &next) in (0u16..).zip(&self.next) {
                // The edges of the issued range, and a sample inside it.
                let mut probes = vec![0, 1, next - 1, next, next + 1];
                probes.extend((0..8).map(|_| 1 + rng.below(next)));
                for seqno in probes {
                    let fence = FenceId { queue, seqno };
                    let want = if seqno == 0 || seqno >= next {
                        Err(FenceError::NotIssued(fence))
                    } else {
                        Ok(!self.unsignalled.contains(&fence))
                    };
                    assert_eq!(fences.is_signalled(fence), want);
                }
                let in_flight = self.unsignalled.iter().filter(|f| f.queue == queue);
                let timeline = &fences.timelines[usize::from(queue)];
                assert_eq!(timeline.pending.len(), in_flight.count());
            }
            let waiters = self.waiters.values().map(Vec::len).sum::<usize>();
            assert_eq!(fences.waiter_count(), waiters);
        }
    }

    /// Random issue, signal and wait sequences, in and out of order, agree
    /// with the model at every step.
    #[test]
    fn random_sequences_agree_with_a_model() {
        const QUEUES: u16 = 3;
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut fences = Fences::<u32>::new(QUEUES);
            let mut model = Model {
                next: vec![1; usize::from(QUEUES)],
                ..Model::default()
            };
            // The fences in flight, oldest first per queue as issued.
            let mut in_flight: Vec<FenceId> = Vec::new();
            for step in 0..5_000u32 {
                match rng.below(8) {
                    0..=2 => {
                        let queue = u16::try_from(rng.below(u64::from(QUEUES))).unwrap();
                        let fence = fences.issue_next(queue).unwrap();
                        let next = &mut model.next[usize::from(queue)];
                        assert_eq!(fence.seqno, *next);
                        *next += 1;
                        model.unsignalled.insert(fence);
                        in_flight.push(fence);
                    }
                    3..=5 if !in_flight.is_empty() => {
                        // Mostly the oldest, as a busy queue completes.
                        let index = if rng.below(2) == 0 {
                            0
                        } else {
                            rng.index(in_flight.len())
                        };
                        let fence = in_flight.remove(index);
                        model.unsignalled.remove(&fence);
                        let mut got = fences.signal(fence);
                        let mut want = model.waiters.remove(&fence).unwrap_or_default();
                        got.sort_unstable();
                        want.sort_unstable();
                        assert_eq!(got, want, "seed {seed} step {step}");
                    }
                    6 if !in_flight.is_empty() => {
                        let fence = in_flight[rng.index(in_flight.len())];
                        fences.wait(fence, step);
                        model.waiters.entry(fence).or_default().push(step);
                    }
                    _ => {
                        // A signal of a fence signalled already, or never
                        // issued, changes nothing.
                        let queue = u16::try_from(rng.below(u64::from(QUEUES))).unwrap();
                        let next = model.next[usize::from(queue)];
                        let seqno = rng.below(next + 2);
                        let fence = FenceId { queue, seqno };
                        if !model.unsignalled.contains(&fence) {
                            assert!(fences.signal(fence).is_empty());
                            // Nor is there anything to wait for.
                            fences.wait(fence, step);
                        }
                    }
                }
                model.check(&fences, &mut rng);
            }
        }
    }
}
