//! How long a connection's worker polls its request rings before it sleeps.
//!
//! Waking a sleeping thread on another CPU is the largest part of a lone
//! request's latency on a virtual machine's host. So after an event, while
//! the device has nothing on the engine, the worker keeps looking at the
//! rings for a while (a *window*) instead of sleeping until the driver's
//! kick. The window adapts, as QEMU's polling of its event loops does: it
//! grows (doubling, from [`MIN_WINDOW`] up to the configured maximum) while
//! the driver's next request comes within the maximum after the device went
//! idle, and halves (down to nothing) once the driver pauses longer. A
//! device that gets no requests is never polled.
//!
//! Polling is bounded twice more: the worker polls at most [`BUDGET`] of
//! each [`PERIOD`] of wall time, and never while the device has work on the
//! engine ([`crate::device::Device::poll_requests`]), whose CPU it may
//! share.

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

    /// Whether polling is on at all.
    pub fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// How long to poll from `now`: the window, cut to what is left of the
    /// budget of the current period.
    pub fn window(&mut self, now: Instant) -> Duration {
        if now.saturating_duration_since(self.period_start) >= PERIOD {
            self.period_start = now;
            self.spent = Duration::ZERO;
        }
        self.current.min(BUDGET.saturating_sub(self.spent))
    }

    /// A poll took `spent` of the budget.
    pub fn polled(&mut self, spent: Duration) {
        self.spent = self.spent.saturating_add(spent);
    }

    /// The device was idle and the driver's next request or event came
    /// `pause` after the poll ended: grow the window if polling for the
    /// maximum would have caught it, halve it otherwise.
    pub fn paused(&mut self, pause: Duration) {
        self.current = if pause <= self.max {
            self.current.saturating_mul(2).max(MIN_WINDOW).min(self.max)
        } else {
            let half = self.current / 2;
            if half < MIN_WINDOW {
                Duration::ZERO
            } else {
                half
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    #[test]
    fn grows_while_requests_come_soon_and_closes_after_pauses() {
        let now = Instant::now();
        let mut window = PollWindow::new(MAX, now);
        assert_eq!(window.window(now), Duration::ZERO, "starts closed");
        let mut sizes = Vec::new();
        for _ in 0..6 {
            window.paused(Duration::from_micros(10));
            sizes.push(window.window(now).as_micros());
        }
        assert_eq!(sizes, [4, 8, 16, 32, 50, 50]);
        let mut sizes = Vec::new();
        for _ in 0..5 {
            window.paused(Duration::from_millis(1));
            sizes.push(window.window(now).as_micros());
        }
        assert_eq!(sizes, [25, 12, 6, 0, 0]);
    }

    #[test]
    fn a_zero_maximum_never_polls() {
        let now = Instant::now();
        let mut window = PollWindow::new(Duration::ZERO, now);
        window.paused(Duration::ZERO);
        assert!(!window.enabled());
        assert_eq!(window.window(now), Duration::ZERO);
    }

    #[test]
    fn the_budget_of_a_period_bounds_polling() {
        let start = Instant::now();
        let mut window = PollWindow::new(MAX, start);
        for _ in 0..5 {
            window.paused(Duration::ZERO);
        }
        assert_eq!(window.window(start), MAX);
        window.polled(BUDGET - Duration::from_micros(20));
        assert_eq!(window.window(start), Duration::from_micros(20));
        window.polled(Duration::from_micros(20));
        assert_eq!(window.window(start + PERIOD / 2), Duration::ZERO);
        assert_eq!(window.window(start + PERIOD), MAX, "a new period");
    }
}
