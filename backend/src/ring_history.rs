// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Whether each ring's history began with this device instance, and
//! whether rings a front-end stopped and started again show a driver's
//! reset (§11.2). The ring heads a device owns are in its record
//! ([`crate::ring_record`]).

/// Whether each virtqueue's history began with this device instance, and
/// whether the rings stopped and started again by a front-end were reset by
/// the driver (§11.2).
///
/// A ring first seen at a non-zero available index was used by an earlier
/// instance: the back-end restarted and the front-end reconnected (QEMU then
/// rewinds each ring to its used index, which with out-of-order completion
/// names requests already completed as well as some in flight), or the VM
/// migrated without device state. This instance has none of that instance's
/// objects, fences or requests, so the device takes nothing from any ring
/// until the driver starts over: a device reset, or every such ring stopped
/// and started again at index 0.
///
/// A front-end that does not send `VHOST_USER_RESET_DEVICE` (cloud-hypervisor,
/// QEMU's generic device) shows a driver's device reset only as every ring
/// stopped (`GET_VRING_BASE`) and started again at index 0. A ring's
/// available index only grows while the driver keeps its rings, so a ring
/// that stopped at a non-zero index and starts again at 0 is the trace of a
/// reset; a ring that starts again where it stopped is a pause.
#[derive(Debug, Default)]
pub struct RingHistory {
    /// Per virtqueue: unseen (`None`), foreign (`Some(true)`) or ours.
    foreign: Vec<Option<bool>>,
    /// Per virtqueue: the next available index when it last stopped, until
    /// the restart that follows is judged.
    stopped_at: Vec<Option<u16>>,
}

/// What the rings showed when they started again after stops (§11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// No sign of a reset: the rings resume (a pause), or none had moved.
    Resumed,
    /// Every ring that ran was stopped, and one that had moved started again
    /// at index 0 while none resumed elsewhere: the driver reset the device.
    Reset,
    /// Virtqueue `vq` started again at index 0 after it had stopped at
    /// `stopped_at`, but a ring that ran was never stopped, or another ring
    /// started again at a non-zero index: not a reset the device can tell.
    Unclear {
        /// The ring that started again at index 0.
        vq: u16,
        /// Where it had stopped.
        stopped_at: u16,
    },
}

impl RingHistory {
    /// Judges virtqueue `vq` at the first look since its start, which found
    /// `next_avail` as the next index to take: returns `Some(true)` if its
    /// history began with this instance, `Some(false)` if not, and `None` if
    /// it was judged already. A ring that began here keeps that standing
    /// across stops (a paused VM resumes where this instance left it).
    pub fn observe(&mut self, vq: u16, next_avail: u16) -> Option<bool> {
        let vq = usize::from(vq);
        if self.foreign.len() <= vq {
            self.foreign.resize(vq + 1, None);
        }
        let entry = &mut self.foreign[vq];
        if entry.is_some() {
            return None;
        }
        let foreign = next_avail != 0;
        *entry = Some(foreign);
        Some(!foreign)
    }

    /// Virtqueue `vq` resumes where an earlier instance left it, from the
    /// record it kept (§11.3): its history counts as this instance's.
    pub fn resumed(&mut self, vq: u16) {
        let vq = usize::from(vq);
        if self.foreign.len() <= vq {
            self.foreign.resize(vq + 1, None);
        }
        self.foreign[vq] = Some(false);
    }

    /// Whether any ring's history began before this instance.
    pub fn has_foreign(&self) -> bool {
        self.foreign.contains(&Some(true))
    }

    /// A ring stop at `next_avail`: a foreign ring is judged again when it
    /// next starts, and the restart is checked for a reset.
    pub fn stopped(&mut self, vq: u16, next_avail: u16) {
        let index = usize::from(vq);
        if let Some(entry) = self.foreign.get_mut(index) {
            if *entry == Some(true) {
                *entry = None;
            }
        }
        if self.stopped_at.len() <= index {
            self.stopped_at.resize(index + 1, None);
        }
        self.stopped_at[index] = Some(next_avail);
    }

    /// Whether `vq` stopped and its restart has not been judged yet: the
    /// first look at it since must call [`RingHistory::judge_restart`].
    pub fn restarting(&self, vq: u16) -> bool {
        self.stopped_at
            .get(usize::from(vq))
            .is_some_and(Option::is_some)
    }

    /// Judges the restart of the rings stopped since the last judgment, at
    /// the first look at one of them; `started(vq)` is the next available
    /// index of each virtqueue the front-end has started, `None` for one not
    /// started. A ring not started again by then stays stopped and is judged
    /// when it starts. On [`Restart::Reset`] every ring's history starts over.
    pub fn judge_restart(&mut self, started: impl Fn(u16) -> Option<u16>) -> Restart {
        // (virtqueue, where it stopped, where it started again)
        let stops: Vec<(u16, u16, Option<u16>)> = (0u16..)
            .zip(&self.stopped_at)
            .filter_map(|(vq, at)| Some((vq, (*at)?, started(vq))))
            .collect();
        let never_stopped = (0u16..)
            .zip(&self.foreign)
            .any(|(vq, judged)| judged.is_some() && !self.restarting(vq));
        for &(vq, _, now) in &stops {
            if now.is_some() {
                self.stopped_at[usize::from(vq)] = None;
            }
        }
        let rewound = stops
            .iter()
            .find(|&&(_, at, now)| at != 0 && now == Some(0));
        let Some(&(vq, stopped_at, _)) = rewound else {
            return Restart::Resumed;
        };
        let resumed = stops
            .iter()
            .any(|&(_, _, now)| now.is_some_and(|next| next != 0));
        if never_stopped || resumed {
            return Restart::Unclear { vq, stopped_at };
        }
        self.clear();
        Restart::Reset
    }

    /// A device reset: every ring is judged again.
    pub fn clear(&mut self) {
        self.foreign.clear();
        self.stopped_at.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rings_resumed_from_an_earlier_instance_are_foreign_until_restarted_at_zero() {
        let mut history = RingHistory::default();
        assert_eq!(history.observe(1, 0), Some(true));
        assert_eq!(history.observe(1, 40), None, "judged once per start");
        history.stopped(1, 40);
        assert_eq!(history.judge_restart(|_| Some(40)), Restart::Resumed);
        assert_eq!(
            history.observe(1, 40),
            None,
            "a paused ring resumes as ours"
        );
        assert!(!history.has_foreign());
        assert_eq!(history.observe(2, 7), Some(false));
        assert!(history.has_foreign());
        assert_eq!(history.observe(2, 0), None);
        assert!(history.has_foreign(), "still foreign until it restarts");
        history.stopped(2, 7);
        assert_eq!(history.observe(2, 0), Some(true));
        assert!(!history.has_foreign());
        assert_eq!(history.observe(0, 3), Some(false));
        history.clear();
        assert_eq!(history.observe(0, 0), Some(true));
        assert!(!history.has_foreign());
    }

    /// The rings of a three-queue device after a first driver used them:
    /// queue 0 to index 2, queue 1 to index 5, queue 2 never.
    fn used_rings() -> RingHistory {
        let mut history = RingHistory::default();
        for vq in 0..2 {
            assert_eq!(history.observe(vq, 0), Some(true));
        }
        history
    }

    #[test]
    fn every_ring_stopped_then_started_at_zero_is_a_reset() {
        let mut history = used_rings();
        history.stopped(0, 2);
        history.stopped(1, 5);
        history.stopped(2, 0);
        assert!(history.restarting(1) && !history.restarting(3));
        assert_eq!(history.judge_restart(|_| Some(0)), Restart::Reset);
        assert!(!history.restarting(0) && !history.restarting(1));
        // Everything is judged afresh, and the next stop starts a new round.
        assert_eq!(history.observe(1, 0), Some(true));
        history.stopped(1, 3);
        assert_eq!(history.judge_restart(|_| Some(0)), Restart::Reset);
    }

    #[test]
    fn rings_started_where_they_stopped_are_a_pause() {
        let mut history = used_rings();
        history.stopped(0, 2);
        history.stopped(1, 5);
        let at = |vq| [Some(2), Some(5), None][usize::from(vq)];
        assert_eq!(history.judge_restart(at), Restart::Resumed);
        assert_eq!(history.observe(1, 5), None, "still ours");
        assert!(!history.has_foreign());
    }

    #[test]
    fn a_ring_at_zero_before_and_after_tells_nothing() {
        // The limit of the rule (§11.2): a ring stopped at index 0, whether it
        // never moved or wrapped after 65536 chains, shows no reset.
        let mut history = used_rings();
        history.stopped(0, 0);
        history.stopped(1, 0);
        assert_eq!(history.judge_restart(|_| Some(0)), Restart::Resumed);
    }

    #[test]
    fn a_ring_rewound_while_another_runs_or_resumes_is_not_a_reset() {
        let mut history = used_rings();
        history.stopped(1, 5);
        assert_eq!(
            history.judge_restart(|_| Some(0)),
            Restart::Unclear {
                vq: 1,
                stopped_at: 5
            },
            "queue 0 was never stopped"
        );
        let mut history = used_rings();
        history.stopped(0, 2);
        history.stopped(1, 5);
        let at = |vq| [Some(2), Some(0), None][usize::from(vq)];
        assert!(matches!(
            history.judge_restart(at),
            Restart::Unclear { vq: 1, .. }
        ));
    }

    #[test]
    fn a_ring_not_started_again_waits_for_its_own_start() {
        let mut history = used_rings();
        history.stopped(0, 2);
        history.stopped(1, 5);
        // Queue 0 starts where it was; queue 1 is not started yet.
        let at = |vq| [Some(2), None, None][usize::from(vq)];
        assert_eq!(history.judge_restart(at), Restart::Resumed);
        assert!(history.restarting(1) && !history.restarting(0));
        // Queue 1 starts later at 0 while queue 0 runs: not a reset.
        assert!(matches!(
            history.judge_restart(|_| Some(0)),
            Restart::Unclear { vq: 1, .. }
        ));
    }

    #[test]
    fn a_foreign_ring_stopped_and_started_at_zero_resets_the_device() {
        let mut history = RingHistory::default();
        assert_eq!(history.observe(1, 9), Some(false));
        history.stopped(1, 9);
        assert_eq!(history.judge_restart(|_| Some(0)), Restart::Reset);
        assert_eq!(history.observe(1, 0), Some(true));
        assert!(!history.has_foreign());
    }

    #[test]
    fn a_ring_resumed_from_the_record_is_not_foreign() {
        let mut history = RingHistory::default();
        assert_eq!(history.observe(2, 40), Some(false));
        assert!(history.has_foreign());
        history.resumed(2);
        history.resumed(0);
        assert!(!history.has_foreign());
        assert_eq!(history.observe(0, 7), None, "judged already");
    }
}
