//! When a periodic chore is next due.

use std::time::{Duration, Instant};

/// When a periodic chore is next due. [`Pace::due`] books the next time as it answers yes, so
/// two callers meanwhile do not both run it; [`Pace::not_before`] pushes it further out when the
/// chore turned out slow. A poisoned lock answers yes: the chores are idempotent.
pub(crate) struct Pace(std::sync::Mutex<Option<Instant>>);

impl Pace {
    /// Due at once.
    pub(crate) fn now() -> Self {
        Self(std::sync::Mutex::new(None))
    }

    /// First due after `wait`.
    pub(crate) fn after(wait: Duration) -> Self {
        Self(std::sync::Mutex::new(Some(Instant::now() + wait)))
    }

    /// True when the chore is due, and then not again for `every`.
    pub(crate) fn due(&self, every: Duration) -> bool {
        let now = Instant::now();
        match self.0.lock() {
            Ok(mut next) if next.is_none_or(|t| now >= t) => {
                *next = Some(now + every);
                true
            }
            Ok(_) => false,
            Err(_) => true,
        }
    }

    /// Not due again before `at`.
    pub(crate) fn not_before(&self, at: Instant) {
        if let Ok(mut next) = self.0.lock() {
            *next = Some(next.map_or(at, |t| t.max(at)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pace_is_due_once_per_interval_and_can_be_pushed_back() {
        let pace = Pace::now();
        assert!(pace.due(Duration::from_secs(3600)));
        assert!(!pace.due(Duration::from_secs(3600)), "booked an hour ahead");
        let soon = Pace::now();
        assert!(soon.due(Duration::ZERO));
        assert!(soon.due(Duration::ZERO), "nothing booked ahead");
        soon.not_before(Instant::now() + Duration::from_secs(3600));
        assert!(!soon.due(Duration::ZERO), "pushed back an hour");
        assert!(!Pace::after(Duration::from_secs(3600)).due(Duration::ZERO), "first due after the wait");
    }
}
