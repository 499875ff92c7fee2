//! Fence timelines and the requests waiting on fences (§6.2).
//!
//! Each request queue has a timeline: requests get sequence numbers 1, 2, 3…
//! in the order the device takes them, and each signals when its request
//! completes, in any order. A timeline stores everything below its low-water
//! mark as signalled plus the set of signalled fences above it, so its size is
//! bounded by the requests in flight.

use std::collections::{BTreeSet, HashMap};

use thiserror::Error;

use crate::command::FenceId;

/// Errors of fence look-ups.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FenceError {
    /// The fence names no queue or a sequence number not issued yet.
    #[error("fence {0:?} was never issued")]
    NotIssued(FenceId),
}

#[derive(Debug)]
struct Timeline {
    /// Sequence number of the next request.
    next: u64,
    /// Every fence below this has signalled.
    signalled_below: u64,
    /// Signalled fences at or above `signalled_below`.
    signalled_above: BTreeSet<u64>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            next: 1,
            signalled_below: 1,
            signalled_above: BTreeSet::new(),
        }
    }
}

impl Timeline {
    fn is_issued(&self, seqno: u64) -> bool {
        seqno != 0 && seqno < self.next
    }

    fn is_signalled(&self, seqno: u64) -> bool {
        seqno < self.signalled_below || self.signalled_above.contains(&seqno)
    }

    fn signal(&mut self, seqno: u64) {
        if seqno != self.signalled_below {
            self.signalled_above.insert(seqno);
            return;
        }
        // In-order completion, the common case, touches no set node.
        self.signalled_below += 1;
        while self.signalled_above.remove(&self.signalled_below) {
            self.signalled_below += 1;
        }
    }
}

/// The fences of one device, and who waits on which.
#[derive(Debug)]
pub struct Fences<W> {
    timelines: Vec<Timeline>,
    waiters: HashMap<FenceId, Vec<W>>,
}

impl<W> Fences<W> {
    /// Timelines for `queues` request queues.
    pub fn new(queues: u16) -> Self {
        Fences {
            timelines: (0..queues).map(|_| Timeline::default()).collect(),
            waiters: HashMap::new(),
        }
    }

    /// Issues the next fence of `queue`; `None` if there is no such queue.
    pub fn issue(&mut self, queue: u16) -> Option<FenceId> {
        let timeline = self.timelines.get_mut(usize::from(queue))?;
        let seqno = timeline.next;
        timeline.next += 1;
        Some(FenceId { queue, seqno })
    }

    /// Whether `fence` has signalled; an error if it was never issued.
    pub fn is_signalled(&self, fence: FenceId) -> Result<bool, FenceError> {
        match self.timelines.get(usize::from(fence.queue)) {
            Some(timeline) if timeline.is_issued(fence.seqno) => {
                Ok(timeline.is_signalled(fence.seqno))
            }
            _ => Err(FenceError::NotIssued(fence)),
        }
    }

    /// Registers `waiter` to be returned by [`Fences::signal`] of `fence`.
    pub fn wait(&mut self, fence: FenceId, waiter: W) {
        self.waiters.entry(fence).or_default().push(waiter);
    }

    /// Signals `fence` and returns its waiters.
    pub fn signal(&mut self, fence: FenceId) -> Vec<W> {
        if let Some(timeline) = self.timelines.get_mut(usize::from(fence.queue)) {
            timeline.signal(fence.seqno);
        }
        if self.waiters.is_empty() {
            return Vec::new();
        }
        self.waiters.remove(&fence).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn out_of_order_signals_and_waiters() {
        let mut fences = Fences::<&str>::new(2);
        let a = fences.issue(0).unwrap();
        let b = fences.issue(0).unwrap();
        let c = fences.issue(1).unwrap();
        assert_eq!((a.seqno, b.seqno, c.seqno), (1, 2, 1));
        assert_eq!(fences.issue(2), None);
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
        assert_eq!(fences.signal(a), vec!["x", "y"]);
        assert!(fences.is_signalled(a).unwrap());
        assert!(!fences.is_signalled(c).unwrap());
        assert!(
            fences.timelines[0].signalled_above.is_empty(),
            "low-water mark advanced past 2"
        );
    }
}
