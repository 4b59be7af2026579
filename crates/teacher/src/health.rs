//! A circuit breaker per endpoint: after `threshold` transient failures in a row it opens for a
//! cooldown (doubling up to 60 s while probes keep failing); then one probe request may go
//! (half-open); its success closes the circuit. Rejected credentials disable the endpoint for
//! the life of the process.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

const MAX_COOLDOWN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Closed { failures: u32 },
    Open { until: Instant, cooldown: Duration },
    HalfOpen { probing: bool, cooldown: Duration },
    Disabled { reason: String },
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
}

/// Whether a request may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Available,
    /// Open: try again at this instant.
    WaitUntil(Instant),
    Disabled,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { state: Mutex::new(State::Closed { failures: 0 }), threshold: threshold.max(1), cooldown }
    }

    pub fn state(&self) -> State {
        self.state.lock().map(|s| s.clone()).unwrap_or(State::Closed { failures: 0 })
    }

    /// Asks to send one request; in half-open state only one probe at a time is let through.
    pub fn try_acquire(&self) -> Availability {
        let Ok(mut s) = self.state.lock() else { return Availability::Available };
        let now = Instant::now();
        match &mut *s {
            State::Closed { .. } => Availability::Available,
            State::Open { until, cooldown } => {
                if now >= *until {
                    *s = State::HalfOpen { probing: true, cooldown: *cooldown };
                    Availability::Available
                } else {
                    Availability::WaitUntil(*until)
                }
            }
            State::HalfOpen { probing, .. } => {
                if *probing {
                    Availability::WaitUntil(now + Duration::from_millis(100))
                } else {
                    *probing = true;
                    Availability::Available
                }
            }
            State::Disabled { .. } => Availability::Disabled,
        }
    }

    pub fn on_success(&self) {
        if let Ok(mut s) = self.state.lock()
            && !matches!(*s, State::Disabled { .. })
        {
            *s = State::Closed { failures: 0 };
        }
    }

    /// A transient failure (5xx, timeout, connection, malformed body). Returns true when this
    /// failure opened the circuit.
    pub fn on_failure(&self) -> bool {
        let Ok(mut s) = self.state.lock() else { return false };
        let now = Instant::now();
        match &mut *s {
            State::Closed { failures } => {
                *failures += 1;
                if *failures >= self.threshold {
                    *s = State::Open { until: now + self.cooldown, cooldown: self.cooldown };
                    return true;
                }
                false
            }
            State::HalfOpen { cooldown, .. } => {
                let next = (*cooldown * 2).min(MAX_COOLDOWN);
                *s = State::Open { until: now + next, cooldown: next };
                true
            }
            State::Open { .. } | State::Disabled { .. } => false,
        }
    }

    /// A request ended without telling anything about health (429, permanent errors): frees a
    /// half-open probe slot.
    pub fn on_neutral(&self) {
        if let Ok(mut s) = self.state.lock()
            && let State::HalfOpen { probing, .. } = &mut *s
        {
            *probing = false;
        }
    }

    pub fn disable(&self, reason: String) {
        if let Ok(mut s) = self.state.lock() {
            *s = State::Disabled { reason };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_probes_then_closes() {
        let b = Breaker::new(3, Duration::from_secs(5));
        assert!(!b.on_failure() && !b.on_failure());
        assert!(b.on_failure(), "third failure opens");
        assert!(matches!(b.try_acquire(), Availability::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.try_acquire(), Availability::Available, "one probe");
        assert!(matches!(b.try_acquire(), Availability::WaitUntil(_)), "only one probe at a time");
        assert!(b.on_failure(), "failed probe reopens");
        assert!(matches!(b.state(), State::Open { cooldown, .. } if cooldown == Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.try_acquire(), Availability::Available);
        b.on_success();
        assert_eq!(b.state(), State::Closed { failures: 0 });
        b.disable("401".into());
        assert_eq!(b.try_acquire(), Availability::Disabled);
        b.on_success();
        assert_eq!(b.try_acquire(), Availability::Disabled, "disabled stays disabled");
    }
}
