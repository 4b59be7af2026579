//! The mock's own requests/min and tokens/min limit over a sliding 60 s window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Window {
    events: VecDeque<(Instant, u64)>,
    tokens: u64,
}

impl Window {
    fn expire(&mut self, now: Instant) {
        while let Some(&(t, n)) = self.events.front() {
            if now.duration_since(t) >= WINDOW {
                self.events.pop_front();
                self.tokens -= n;
            } else {
                break;
            }
        }
    }

    /// Admits a request of `tokens` if both limits allow it (0 = no limit) and records it;
    /// otherwise returns how long until the oldest event leaves the window.
    pub fn admit(&mut self, now: Instant, tokens: u64, rpm: u32, tpm: u32) -> Result<(), Duration> {
        self.expire(now);
        let over_requests = rpm > 0 && self.events.len() as u64 >= u64::from(rpm);
        let over_tokens = tpm > 0 && self.tokens + tokens > u64::from(tpm) && !self.events.is_empty();
        if over_requests || over_tokens {
            let wait = self
                .events
                .front()
                .map(|&(t, _)| WINDOW.saturating_sub(now.duration_since(t)))
                .unwrap_or(Duration::from_secs(1));
            return Err(wait);
        }
        self.events.push_back((now, tokens));
        self.tokens += tokens;
        Ok(())
    }

    /// Under a requests/min limit (None without one): the requests left in the window and when
    /// the oldest one leaves it, as rate-limit headers report them.
    pub fn requests_left(&mut self, rpm: u32, now: Instant) -> Option<(u32, Duration)> {
        if rpm == 0 {
            return None;
        }
        self.expire(now);
        let left = u64::from(rpm).saturating_sub(self.events.len() as u64) as u32;
        let reset = self.events.front().map_or(Duration::ZERO, |&(t, _)| WINDOW.saturating_sub(now.duration_since(t)));
        Some((left, reset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforces_requests_and_tokens_per_minute() {
        let t0 = Instant::now();
        let mut w = Window::default();
        assert!(w.admit(t0, 10, 2, 0).is_ok());
        assert!(w.admit(t0 + Duration::from_secs(1), 10, 2, 0).is_ok());
        let wait = w.admit(t0 + Duration::from_secs(2), 10, 2, 0);
        assert_eq!(wait, Err(Duration::from_secs(58)));
        assert!(w.admit(t0 + Duration::from_secs(60), 10, 2, 0).is_ok());

        let mut w = Window::default();
        assert!(w.admit(t0, 60, 0, 100).is_ok());
        assert!(w.admit(t0, 50, 0, 100).is_err());
        assert!(w.admit(t0, 40, 0, 100).is_ok());

        let mut w = Window::default();
        assert_eq!(w.requests_left(0, t0), None);
        assert_eq!(w.requests_left(2, t0), Some((2, Duration::ZERO)));
        assert!(w.admit(t0, 1, 2, 0).is_ok());
        assert_eq!(w.requests_left(2, t0 + Duration::from_secs(10)), Some((1, Duration::from_secs(50))));
    }
}
