//! The sampler: which (user, history, target) pairs a run asks the teacher about.
//!
//! Per user, interactions in time order (ties by item id). The target is the latest interaction;
//! the history is the `history_len` interactions just before it; the label is
//! `rating > like_threshold`. Pure functions: tested on hand-made histories.

use reasonrec_core::data::Interaction;
pub use reasonrec_core::inputs::{HistoryEntry, ReasoningInput};
use reasonrec_core::settings::SamplingSettings;
use reasonrec_core::stage::Stage;
use reasonrec_store::runs::NewTask;
use uuid::Uuid;

/// The test split's reasoning task of one user, or None when the user has too little history.
/// `interactions` must be the user's interactions in time order.
pub fn plan_user(user_id: i32, interactions: &[Interaction], s: &SamplingSettings) -> Option<NewTask> {
    let (target, before) = interactions.split_last()?;
    if before.len() < s.min_history.max(1) {
        return None;
    }
    let start = before.len().saturating_sub(s.history_len);
    let history: Vec<HistoryEntry> = before[start..]
        .iter()
        .map(|r| HistoryEntry { item: r.item_id, liked: r.rating > s.like_threshold, rating: r.rating })
        .collect();
    let label = target.rating > s.like_threshold;
    let input = ReasoningInput { user: user_id, target: target.item_id, rating: target.rating, history };
    let split = "test";
    Some(NewTask {
        id: Uuid::now_v7(),
        stage: Stage::Reasoning,
        subject: format!("u{user_id}:i{}:{split}", target.item_id),
        user_id: Some(user_id),
        item_id: Some(target.item_id),
        split: Some(split.into()),
        label: Some(label),
        input: serde_json::to_value(&input).unwrap_or_default(),
        pending_deps: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(item: i32, rating: f32, ts: i64) -> Interaction {
        Interaction { user_id: 1, item_id: item, rating, ts, review: None }
    }

    #[test]
    fn target_is_latest_history_is_the_k_before_and_label_uses_threshold() {
        let s = SamplingSettings { history_len: 2, like_threshold: 3.0, min_history: 1, max_users: 0 };
        let rows = vec![r(10, 5.0, 1), r(11, 2.0, 2), r(12, 4.0, 3), r(13, 3.0, 4)];
        let Some(t) = plan_user(1, &rows, &s) else { panic!("planned nothing") };
        assert_eq!(t.item_id, Some(13));
        assert_eq!(t.label, Some(false), "3.0 is not > 3.0");
        assert_eq!(t.subject, "u1:i13:test");
        let input: ReasoningInput = serde_json::from_value(t.input).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(input.history.iter().map(|h| (h.item, h.liked)).collect::<Vec<_>>(), vec![(11, false), (12, true)]);

        let liked = plan_user(1, &[r(1, 4.0, 1), r(2, 4.0, 2)], &s);
        assert_eq!(liked.and_then(|t| t.label), Some(true));
    }

    #[test]
    fn too_short_histories_are_skipped() {
        let s = SamplingSettings { min_history: 2, ..SamplingSettings::default() };
        assert!(plan_user(1, &[], &s).is_none());
        assert!(plan_user(1, &[r(1, 4.0, 1)], &s).is_none());
        assert!(plan_user(1, &[r(1, 4.0, 1), r(2, 4.0, 2)], &s).is_none());
        assert!(plan_user(1, &[r(1, 4.0, 1), r(2, 4.0, 2), r(3, 1.0, 3)], &s).is_some());
    }
}
