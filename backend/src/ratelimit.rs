//! Rate-limited logging of guest errors: a guest that floods bad requests
//! must not flood the host's logs.

use std::time::{Duration, Instant};

/// Allows `burst` messages per `window`, then counts what it suppressed.
#[derive(Debug)]
pub struct RateLimit {
    window: Duration,
    burst: u32,
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

impl RateLimit {
    /// A limiter of `burst` messages per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        RateLimit {
            window,
            burst,
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether a message may be logged now; when a new window opens, also the
    /// number of messages suppressed in the previous ones.
    pub fn allow(&mut self) -> (bool, u64) {
        let now = Instant::now();
        let mut reported = 0;
        if now.duration_since(self.window_start) >= self.window {
            self.window_start = now;
            self.in_window = 0;
            reported = std::mem::take(&mut self.suppressed);
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            (true, reported)
        } else {
            self.suppressed += 1;
            (false, reported)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppresses_past_the_burst_and_reports_later() {
        let mut limit = RateLimit::new(2, Duration::from_millis(30));
        assert_eq!(limit.allow(), (true, 0));
        assert_eq!(limit.allow(), (true, 0));
        assert_eq!(limit.allow(), (false, 0));
        assert_eq!(limit.allow(), (false, 0));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(limit.allow(), (true, 2));
    }
}
