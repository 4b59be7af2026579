//! A token bucket for tokens-per-minute budgets, with what governor lacks: refunds (a request
//! reserves prompt + max_tokens and gives back what the answer did not use) and a rate that can
//! change while it runs (a worker's share of a fleet-wide limit, AIMD after 429s).
//!
//! The bucket holds at most `burst` (1 % of a minute's budget, at least one unit) and refills at
//! `(0.98 x limit - burst) / 60` per second, so no 60-second window sees more than 98 % of
//! `limit` granted: servers count per minute at arrival, and the 2 % absorb the jitter between
//! our admission and their arrival (measured: without it, one 429 per two minutes at 150k
//! tokens/min, whose minute-long Retry-After then cost 6 % of the throughput). A request larger than the burst waits for a
//! full bucket and then borrows: the debt delays the requests after it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct State {
    per_sec: f64,
    burst: f64,
    level: f64,
    last: Instant,
}

impl State {
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * self.per_sec).min(self.burst);
        self.last = now;
    }
}

#[derive(Debug)]
pub struct TokenBucket {
    state: Mutex<State>,
}

/// (refill per second, burst) for a per-minute limit.
fn shape(per_minute: f64) -> (f64, f64) {
    let burst = (per_minute * 0.01).max(1.0).min(per_minute.max(1.0));
    (((0.98 * per_minute - burst).max(per_minute * 0.5)) / 60.0, burst)
}

impl TokenBucket {
    /// A bucket for `per_minute` units, starting full.
    pub fn per_minute(per_minute: f64) -> Self {
        let (per_sec, burst) = shape(per_minute);
        Self { state: Mutex::new(State { per_sec, burst, level: burst, last: Instant::now() }) }
    }

    /// Changes the limit (keeps the current level, clipped to the new burst).
    pub fn set_per_minute(&self, per_minute: f64) {
        if let Ok(mut s) = self.state.lock() {
            s.refill(Instant::now());
            let (per_sec, burst) = shape(per_minute);
            s.per_sec = per_sec;
            s.burst = burst;
            s.level = s.level.min(burst);
        }
    }

    /// Takes `n` units without waiting if possible; otherwise says how long to wait.
    fn try_take(&self, n: f64, now: Instant) -> Result<(), Duration> {
        let Ok(mut s) = self.state.lock() else { return Ok(()) };
        s.refill(now);
        let need = n.min(s.burst);
        if s.level >= need {
            s.level -= n;
            return Ok(());
        }
        let missing = need - s.level;
        Err(Duration::from_secs_f64(missing / s.per_sec.max(1e-9)).max(Duration::from_millis(1)))
    }

    /// Waits until `n` units can be taken, and takes them.
    pub async fn acquire(&self, n: f64) {
        loop {
            match self.try_take(n, Instant::now()) {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Gives back `n` reserved units that were not used (never beyond the burst).
    pub fn refund(&self, n: f64) {
        if let Ok(mut s) = self.state.lock() {
            s.refill(Instant::now());
            s.level = (s.level + n).min(s.burst);
        }
    }

    /// Charges `n` units used beyond the reservation (may go into debt).
    pub fn charge(&self, n: f64) {
        if let Ok(mut s) = self.state.lock() {
            s.level -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Units granted in the first `secs` seconds to a loop taking `n` at a time.
    fn granted(b: &TokenBucket, n: f64, secs: f64) -> f64 {
        let t0 = Instant::now();
        let mut now = t0;
        let mut total = 0.0;
        while now.duration_since(t0).as_secs_f64() < secs {
            match b.try_take(n, now) {
                Ok(()) => total += n,
                Err(wait) => now += wait,
            }
        }
        total
    }

    #[test]
    fn never_more_than_the_limit_per_minute_and_close_to_it() {
        for (limit, n) in [(600.0, 1.0), (100_000.0, 700.0), (10_000.0, 2_000.0)] {
            let b = TokenBucket::per_minute(limit);
            let got = granted(&b, n, 60.0);
            assert!(got <= limit + n, "limit {limit}, took {n} at a time: {got}");
            assert!(got >= 0.97 * limit - n, "limit {limit}, took {n} at a time: only {got}");
        }
    }

    #[test]
    fn refunds_and_rate_changes() {
        let b = TokenBucket::per_minute(6000.0); // burst 60
        let now = Instant::now();
        assert!(b.try_take(60.0, now).is_ok());
        assert!(b.try_take(10.0, now).is_err());
        b.refund(40.0);
        assert!(b.try_take(40.0, now + Duration::from_millis(1)).is_ok());
        b.set_per_minute(600.0); // burst 6, 9.7 per second
        let wait = b.try_take(6.0, Instant::now()).err().unwrap_or_default();
        assert!(wait > Duration::from_millis(100) && wait < Duration::from_millis(700), "{wait:?}");
    }
}
