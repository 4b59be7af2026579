//! Batch planning arithmetic shared by the batch submitter (when to spill a run to live
//! endpoints) and `run status` (when a batch run is projected to finish): pure functions of
//! times and counts.

use crate::settings::{BatchSettings, Protocol};

/// The most requests the provider takes in one batch (OpenAI 50,000; Anthropic 100,000).
pub fn provider_max_lines(protocol: Protocol) -> u32 {
    match protocol {
        Protocol::OpenAi => 50_000,
        Protocol::Anthropic => 100_000,
    }
}

/// Lines an endpoint of `protocol` can have in flight at once under `batch`: `max_open` batches
/// of `max_lines` (cut to the provider's limit). One round of [`batch_work_ends`].
pub fn lines_per_round(batch: &BatchSettings, protocol: Protocol) -> u64 {
    u64::from(batch.max_open) * u64::from(batch.max_lines.min(provider_max_lines(protocol)))
}

/// When a run's batch work would end: each open batch a turnaround after it was submitted (a
/// late one, or one not yet submitted, a turnaround from now), and the `unsent` tasks in rounds
/// of `per_round` lines (`max_open` batches of `max_lines`), each round a turnaround, from now.
pub fn batch_work_ends(
    now: chrono::DateTime<chrono::Utc>,
    turnaround: chrono::TimeDelta,
    open_submitted: &[Option<chrono::DateTime<chrono::Utc>>],
    unsent: u64,
    per_round: u64,
) -> chrono::DateTime<chrono::Utc> {
    let open_end = open_submitted
        .iter()
        .map(|s| s.map(|t| t + turnaround).filter(|e| *e > now).unwrap_or(now + turnaround))
        .max()
        .unwrap_or(now);
    let rounds = if unsent == 0 { 0 } else { unsent.div_ceil(per_round.max(1)) };
    let feed_end = now + turnaround * i32::try_from(rounds).unwrap_or(i32::MAX);
    open_end.max(feed_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_work_ends_with_its_latest_open_batch_or_its_last_round() {
        let now = chrono::Utc::now();
        let t = chrono::TimeDelta::seconds(60);
        assert_eq!(batch_work_ends(now, t, &[], 0, 100), now, "nothing left");
        assert_eq!(batch_work_ends(now, t, &[], 250, 100), now + t * 3, "three rounds of 100");
        let early = now - chrono::TimeDelta::seconds(20);
        assert_eq!(
            batch_work_ends(now, t, &[Some(early)], 0, 100),
            early + t,
            "an open batch ends a turnaround after it went"
        );
        let late = now - chrono::TimeDelta::seconds(600);
        assert_eq!(batch_work_ends(now, t, &[Some(late), None], 0, 100), now + t, "a late one: a turnaround from now");
        assert_eq!(batch_work_ends(now, t, &[Some(early)], 100, 100), now + t, "the feed's round ends last");
    }
}
