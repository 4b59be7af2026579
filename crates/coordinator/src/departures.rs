//! Evidence that a published message has left the work queue (pure; the outbox feeds it).
//!
//! `republish_after_secs` once counted from publish, so at 5-50 tasks/s a message still waiting
//! in a long queue was published again (and asked twice). Now a published task counts as lost
//! only when the evidence says its message left the queue `republish_after` ago and the task is
//! still unfinished: a worker holds a delivery for at most the broker's consumer timeout, so by
//! then it was finished, handed back (and is in the queue again: counted), or lost.
//!
//! The evidence is a count. The outbox logs every mark (the database time of the mark and the
//! running total of messages it has published) and, from time to time, the work queue's depth.
//! The queue is first in, first out, so with `published` messages sent and `depth` still
//! waiting, at least the first `published - depth` have left: every message marked at or before
//! the last mark within that count has left the queue. Anything else in the queue (other
//! publishers, retry tiers flowing back, redelivered messages) only makes the depth larger, so
//! the estimate errs on the side of "still queued". Messages already queued when the outbox
//! started count as published at its start.
//!
//! A last resort covers a queue that never drains far enough (a backlog of other runs): a task
//! published longer ago than `republish_after` plus twice the time the largest backlog seen
//! takes to drain at the observed departure rate is republished too. Without any departures
//! observed there is no last resort: nobody consumes, and a copy would wait like the original.

use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::time::Duration;

/// The outbox's log of marks and queue depths.
#[derive(Debug, Clone)]
pub struct Departures {
    republish_after: chrono::Duration,
    /// Messages published so far, counting those queued at the start.
    published: u64,
    /// (time of a mark, `published` after it), oldest first; those before the last answer of
    /// [`Departures::lost_before`] are let go.
    marks: VecDeque<(DateTime<Utc>, u64)>,
    /// (observed at, every message marked at or before this time had left the queue), oldest first.
    departed: VecDeque<(DateTime<Utc>, DateTime<Utc>)>,
    /// The first observation (time, messages left): the departure rate is measured from it.
    first: Option<(DateTime<Utc>, u64)>,
    /// The last observation (time, messages left).
    last: Option<(DateTime<Utc>, u64)>,
    max_depth: u64,
}

impl Departures {
    /// A log started at `now` (database clock) with `queued` messages already in the queue.
    pub fn new(now: DateTime<Utc>, queued: u64, republish_after: Duration) -> Self {
        Self {
            republish_after: chrono::Duration::from_std(republish_after).unwrap_or(chrono::Duration::MAX),
            published: queued,
            marks: if queued > 0 { VecDeque::from([(now, queued)]) } else { VecDeque::new() },
            departed: VecDeque::new(),
            first: None,
            last: None,
            max_depth: queued,
        }
    }

    /// Changes the timeout (the outbox's builder sets it after creating the log).
    pub fn set_republish_after(&mut self, after: Duration) {
        self.republish_after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
    }

    /// `n` more messages were marked published at `at`.
    pub fn published(&mut self, at: DateTime<Utc>, n: u64) {
        if n == 0 {
            return;
        }
        self.published += n;
        self.marks.push_back((at, self.published));
    }

    /// The work queue held `depth` messages at `at`.
    pub fn observe(&mut self, at: DateTime<Utc>, depth: u64) {
        let left = self.published.saturating_sub(depth);
        self.max_depth = self.max_depth.max(depth);
        self.first.get_or_insert((at, left));
        let fewer = self.last.is_some_and(|(_, prev)| left < prev);
        self.last = Some((at, left));
        // The last mark whose messages all left.
        let time = self.marks.iter().rposition(|&(_, total)| total <= left).map(|i| self.marks[i].0);
        if fewer {
            // Messages came back (a consumer died and its deliveries were requeued, or others
            // joined the queue): the newest departures may have been those. Evidence is cut back
            // to what still holds (an earlier observation that marks up to `t` had left still
            // proves it for marks up to `time`); the rest is seen leaving again, with a new time.
            let mut kept: VecDeque<(DateTime<Utc>, DateTime<Utc>)> = VecDeque::new();
            for (observed, t) in self.departed.drain(..) {
                let Some(t) = time.map(|time| t.min(time)) else { break };
                if kept.back().is_none_or(|&(_, last)| t > last) {
                    kept.push_back((observed, t));
                }
            }
            self.departed = kept;
        }
        if let Some(time) = time
            && self.departed.back().is_none_or(|&(_, t)| time > t)
        {
            self.departed.push_back((at, time));
        }
    }

    /// Messages per second leaving the queue since the first observation, if any left.
    pub fn departure_rate(&self) -> Option<f64> {
        let ((t0, n0), (t1, n1)) = (self.first?, self.last?);
        let secs = (t1 - t0).num_milliseconds() as f64 / 1000.0;
        (secs > 0.0 && n1 > n0).then(|| (n1 - n0) as f64 / secs)
    }

    /// The age after which a published task is republished without evidence of departure.
    pub fn last_resort_age(&self) -> Option<Duration> {
        let rate = self.departure_rate()?;
        let drain = Duration::try_from_secs_f64(2.0 * self.max_depth as f64 / rate).ok()?;
        self.republish_after.to_std().ok()?.checked_add(drain)
    }

    /// Tasks still published whose `published_at` is at or before the answer are lost: their
    /// message left the queue at least `republish_after` before `now` (or they passed the last
    /// resort age). None: none known lost.
    pub fn lost_before(&mut self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let horizon = now.checked_sub_signed(self.republish_after).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut evidence = None;
        while let Some(&(observed, time)) = self.departed.front() {
            if observed > horizon {
                break;
            }
            evidence = Some(time);
            self.departed.pop_front();
        }
        // Keep the newest answer: the next call starts from it. Marks before it are no longer
        // needed (their tasks, if unfinished, are published again and marked anew).
        if let Some(time) = evidence {
            self.departed.push_front((horizon, time));
            let keep = self.marks.iter().rposition(|&(t, _)| t <= time).unwrap_or(0);
            self.marks.drain(..keep);
        }
        let last_resort = self
            .last_resort_age()
            .and_then(|age| chrono::Duration::from_std(age).ok())
            .and_then(|age| now.checked_sub_signed(age));
        evidence.max(last_resort)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    const AFTER: Duration = Duration::from_secs(100);

    /// Whether a task published at `published` and still unfinished counts as lost at `now`.
    fn lost(d: &mut Departures, now: i64, published: i64) -> bool {
        d.lost_before(t(now)).is_some_and(|cut| t(published) <= cut)
    }

    #[test]
    fn a_message_still_queued_is_never_lost_however_old() {
        // 2,000 published at once, consumed at 1/s: the last ones wait ~2,000 s, 20x the timeout.
        let mut d = Departures::new(t(0), 0, AFTER);
        d.published(t(0), 2000);
        for s in (10..1990).step_by(10) {
            d.observe(t(s), 2000 - s as u64);
            assert!(!lost(&mut d, s, 0), "at {s} s the page has not left the queue as a whole");
        }
    }

    #[test]
    fn a_page_that_left_is_lost_after_the_timeout_counted_from_its_departure() {
        let mut d = Departures::new(t(0), 0, AFTER);
        d.published(t(0), 10);
        d.published(t(5), 10);
        d.observe(t(50), 10); // the first page left by t=50
        assert!(!lost(&mut d, 100, 0), "left 50 s ago: a worker may still hold it");
        assert!(lost(&mut d, 150, 0), "left 100 s ago: lost if still unfinished");
        assert!(!lost(&mut d, 150, 5), "the second page is still queued");
        d.observe(t(160), 0);
        assert!(lost(&mut d, 200, 0));
        assert!(!lost(&mut d, 200, 5));
        assert!(lost(&mut d, 260, 5));
    }

    #[test]
    fn a_page_that_left_only_in_part_is_not_lost() {
        let mut d = Departures::new(t(0), 0, AFTER);
        d.published(t(0), 10);
        d.observe(t(1), 10);
        d.observe(t(10), 3);
        // 7 left in 9 s; the largest backlog 10: the last resort is 100 + 2 * 10 / (7/9) s.
        assert!(!lost(&mut d, 120, 0));
        let age = d.last_resort_age().map(|a| a.as_secs()).unwrap_or_default();
        assert_eq!(age, 125);
        assert!(lost(&mut d, 126, 0), "past the last resort");
    }

    #[test]
    fn messages_queued_before_the_start_count_as_published_then() {
        let mut d = Departures::new(t(0), 50, AFTER);
        d.observe(t(10), 20);
        assert!(!lost(&mut d, 105, 0), "30 of 50 left: the old queue has not left as a whole");
        d.observe(t(20), 0);
        assert!(lost(&mut d, 120, 0), "all of the old queue left at 20 s");
    }

    #[test]
    fn other_messages_in_the_queue_only_delay_the_evidence() {
        let mut d = Departures::new(t(0), 0, AFTER);
        d.published(t(0), 10);
        // Ours left, but 15 others (retry tiers, another publisher) sit in the queue.
        d.observe(t(10), 15);
        assert!(!lost(&mut d, 200, 0));
    }

    #[test]
    fn messages_handed_back_by_a_dead_consumer_are_not_counted_as_departed() {
        let mut d = Departures::new(t(0), 0, AFTER);
        d.published(t(0), 10);
        d.published(t(1), 10);
        d.observe(t(10), 0); // both pages left: delivered to a consumer
        // The consumer dies; the broker requeues its 5 unacked deliveries (the newest).
        d.observe(t(20), 5);
        assert!(lost(&mut d, 110, 0), "the first page's departure still holds");
        assert!(!lost(&mut d, 115, 1), "the second page came back: its first departure does not count");
        d.observe(t(30), 0); // it left again
        assert!(!lost(&mut d, 125, 1), "timed from the second departure");
        assert!(lost(&mut d, 130, 1));
    }

    #[test]
    fn the_last_resort_follows_the_backlog_and_the_departure_rate() {
        let mut d = Departures::new(t(0), 0, AFTER);
        assert_eq!(d.last_resort_age(), None, "no departures seen: no last resort");
        d.published(t(0), 1000);
        d.observe(t(0), 1000);
        assert_eq!(d.last_resort_age(), None, "nothing left yet: nobody consumes");
        d.observe(t(100), 900); // 1 message/s; backlog 1,000 -> 2,000 s to drain twice
        assert_eq!(d.departure_rate(), Some(1.0));
        assert_eq!(d.last_resort_age(), Some(Duration::from_secs(2100)));
        assert!(!lost(&mut d, 2000, 0));
        assert!(lost(&mut d, 2100, 0));
    }
}
