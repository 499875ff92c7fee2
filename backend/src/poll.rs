// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! How long a connection's worker polls its request rings before it sleeps.
//!
//! Waking a sleeping thread on another CPU is the largest part of a lone
//! request's latency on a virtual machine's host. So after an event, while
//! the device has nothing on the engine, the worker keeps looking at the
//! rings for a while (a *window*) instead of sleeping until the driver's
//! kick. The window adapts, as QEMU's polling of its event loops does. It
//! starts closed (one look), and it is measured against the *pause*: the
//! time from the start of a poll that found nothing to the driver's next
//! request. A pause within the window leaves it as it is. A pause up to the
//! configured maximum doubles it (from [`MIN_WINDOW`], up to that maximum).
//! A longer pause, or a wake-up that brings no request, halves it, down to
//! nothing. A device that gets no requests is never polled.
//!
//! Polling is bounded twice more: once a worker has polled [`BUDGET`] of a
//! [`PERIOD`] of wall time it does not even look until the next period, and
//! it never polls while the device has work on the engine
//! ([`crate::device::DeviceModel::poll_requests`]), whose CPU it may share.

use std::time::{Duration, Instant};

/// The smallest window that polling starts from.
pub const MIN_WINDOW: Duration = Duration::from_micros(4);
/// The span of wall time over which [`BUDGET`] applies.
pub const PERIOD: Duration = Duration::from_millis(100);
/// The most a worker polls in a [`PERIOD`]: a quarter of a CPU.
pub const BUDGET: Duration = Duration::from_millis(25);

/// The polling window of one worker.
#[derive(Debug, Clone)]
pub struct PollWindow {
    max: Duration,
    current: Duration,
    period_start: Instant,
    /// Time polled since `period_start`.
    spent: Duration,
}

impl PollWindow {
    /// A window that grows up to `max` (zero: never poll), starting closed.
    pub fn new(max: Duration, now: Instant) -> Self {
        PollWindow {
            max,
            current: Duration::ZERO,
            period_start: now,
            spent: Duration::ZERO,
        }
    }

    /// How long to poll from `now` (zero: look once), cut to what is left of
    /// the budget of the current period; `None` once that budget is spent
    /// or polling is off: do not look at all.
    pub fn window(&mut self, now: Instant) -> Option<Duration> {
        if now.saturating_duration_since(self.period_start) >= PERIOD {
            self.period_start = now;
            self.spent = Duration::ZERO;
        }
        let left = BUDGET.saturating_sub(self.spent);
        (!self.max.is_zero() && !left.is_zero()).then(|| self.current.min(left))
    }

    /// A poll took `spent` of the budget.
    pub fn polled(&mut self, spent: Duration) {
        self.spent = self.spent.saturating_add(spent);
    }

    /// A poll found nothing, and the driver's next request came `pause`
    /// after it began: nothing changes if the window caught it or could
    /// have (a pause within the window); the window grows if polling for
    /// the maximum would have caught it, and halves otherwise.
    pub fn paused(&mut self, pause: Duration) {
        if pause <= self.current {
            return;
        }
        if pause <= self.max {
            self.current = self.current.saturating_mul(2).max(MIN_WINDOW).min(self.max);
        } else {
            self.missed();
        }
    }

    /// A poll found nothing, and what woke the worker next was no request
    /// (a completion, a kick of an empty ring): the window halves.
    pub fn missed(&mut self) {
        let half = self.current / 2;
        self.current = if half < MIN_WINDOW {
            Duration::ZERO
        } else {
            half
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    /// A window grown to [`MAX`] by pauses within it.
    fn opened(now: Instant) -> PollWindow {
        let mut window = PollWindow::new(MAX, now);
        for _ in 0..5 {
            window.paused(Duration::from_micros(40));
        }
        assert_eq!(window.window(now), Some(MAX));
        window
    }

    #[test]
    fn grows_while_requests_come_soon_and_closes_after_pauses() {
        let now = Instant::now();
        let mut window = PollWindow::new(MAX, now);
        assert_eq!(window.window(now), Some(Duration::ZERO), "starts closed");
        let mut sizes = Vec::new();
        for _ in 0..6 {
            window.paused(Duration::from_micros(40));
            sizes.push(window.window(now).unwrap().as_micros());
        }
        assert_eq!(sizes, [4, 8, 16, 32, 50, 50]);
        let mut sizes = Vec::new();
        for _ in 0..5 {
            window.paused(Duration::from_millis(1));
            sizes.push(window.window(now).unwrap().as_micros());
        }
        assert_eq!(sizes, [25, 12, 6, 0, 0]);
    }

    /// A driver that sends every 60 µs, once the window is at its 50 µs
    /// maximum: each poll misses, and the pause counted from the poll's
    /// start (60 µs, past the maximum) closes the window instead of keeping
    /// it open for nothing.
    #[test]
    fn a_driver_just_slower_than_the_maximum_closes_the_window() {
        let now = Instant::now();
        let mut window = opened(now);
        for _ in 0..4 {
            window.paused(Duration::from_micros(60));
        }
        assert_eq!(window.window(now), Some(Duration::ZERO));
    }

    #[test]
    fn wake_ups_that_bring_no_request_close_the_window() {
        let now = Instant::now();
        let mut window = opened(now);
        window.paused(Duration::from_micros(30));
        assert_eq!(window.window(now), Some(MAX), "caught within the window");
        for _ in 0..4 {
            window.missed();
        }
        assert_eq!(window.window(now), Some(Duration::ZERO));
    }

    #[test]
    fn a_zero_maximum_never_looks() {
        let now = Instant::now();
        let mut window = PollWindow::new(Duration::ZERO, now);
        window.paused(Duration::ZERO);
        assert_eq!(window.window(now), None);
    }

    #[test]
    fn the_budget_of_a_period_bounds_polling() {
        let start = Instant::now();
        let mut window = opened(start);
        window.polled(BUDGET - Duration::from_micros(20));
        assert_eq!(window.window(start), Some(Duration::from_micros(20)));
        window.polled(Duration::from_micros(20));
        assert_eq!(window.window(start + PERIOD / 2), None, "not even a look");
        assert_eq!(window.window(start + PERIOD), Some(MAX), "a new period");
    }
}
