//! The sampler: which windows and targets a user contributes (pure; tested on hand-made histories).
//!
//! Per user, interactions in time order (ties by item id), n of them:
//! - users with fewer than `min_interactions` are skipped;
//! - the profile window is the earliest `P = min(profile_window, n - 2 - min_history)`
//!   interactions (0 when user profiles are off): the user profile is written from them and no
//!   history window reaches into them;
//! - leave-last-out targets: test = position n-1, validation = n-2, train = n-3 downwards (at most
//!   `train_targets_per_user`, latest first; 0 = all) as long as a history fits;
//! - the history of a target at position t is positions `max(P, t-k) .. t`;
//! - a label is `rating > like_threshold`.

use reasonrec_core::data::Interaction;
use reasonrec_core::inputs::HistoryEntry;
use reasonrec_core::settings::SamplingSettings;
use reasonrec_core::stage::Split;

pub use reasonrec_core::inputs::ReasoningInput;

/// The sampler's knobs with the family's k resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanParams {
    pub like_threshold: f32,
    pub history_len: usize,
    pub min_interactions: usize,
    pub min_history: usize,
    /// 0 when user profiles are off.
    pub profile_window: usize,
    pub train: bool,
    pub validation: bool,
    pub test: bool,
    pub train_targets_per_user: usize,
}

impl PlanParams {
    pub fn new(s: &SamplingSettings, history_len: usize, user_profiles: bool) -> Self {
        let has = |split: Split| s.splits.contains(&split);
        Self {
            like_threshold: s.like_threshold,
            history_len: history_len.max(1),
            min_interactions: s.min_interactions,
            min_history: s.min_history.max(1),
            profile_window: if user_profiles { s.profile_window } else { 0 },
            train: has(Split::Train),
            validation: has(Split::Validation),
            test: has(Split::Test),
            train_targets_per_user: s.train_targets_per_user,
        }
    }
}

/// One reasoning target of a user.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub split: Split,
    pub item: i32,
    pub rating: f32,
    pub label: bool,
    pub history: Vec<HistoryEntry>,
}

/// What a user contributes to a run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserPlan {
    pub profile_window: Vec<HistoryEntry>,
    pub targets: Vec<Target>,
}

fn entry(r: &Interaction, like_threshold: f32) -> HistoryEntry {
    HistoryEntry { item: r.item_id, liked: r.rating > like_threshold, rating: r.rating }
}

/// `rows` must be one user's interactions in time order. None when the user is skipped.
pub fn plan_user(rows: &[Interaction], p: &PlanParams) -> Option<UserPlan> {
    let n = rows.len();
    if n < p.min_interactions.max(p.min_history + 1) {
        return None;
    }
    let window = p.profile_window.min(n.saturating_sub(2 + p.min_history));
    let target_at = |t: usize, split: Split| -> Option<Target> {
        let start = window.max(t.saturating_sub(p.history_len));
        if t < start + p.min_history {
            return None;
        }
        let r = &rows[t];
        Some(Target {
            split,
            item: r.item_id,
            rating: r.rating,
            label: r.rating > p.like_threshold,
            history: rows[start..t].iter().map(|h| entry(h, p.like_threshold)).collect(),
        })
    };
    let mut targets = Vec::new();
    if p.train && n >= 3 {
        let mut taken = 0;
        for t in (0..n - 2).rev() {
            if p.train_targets_per_user > 0 && taken == p.train_targets_per_user {
                break;
            }
            match target_at(t, Split::Train) {
                Some(target) => {
                    targets.push(target);
                    taken += 1;
                }
                None => break,
            }
        }
        targets.reverse();
    }
    if p.validation && n >= 2 {
        targets.extend(target_at(n - 2, Split::Validation));
    }
    if p.test {
        targets.extend(target_at(n - 1, Split::Test));
    }
    if targets.is_empty() {
        return None;
    }
    let profile_window = rows[..window].iter().map(|r| entry(r, p.like_threshold)).collect();
    Some(UserPlan { profile_window, targets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(ratings: &[f32]) -> Vec<Interaction> {
        ratings
            .iter()
            .enumerate()
            .map(|(i, &r)| Interaction { user_id: 1, item_id: 100 + i as i32, rating: r, ts: i as i64, review: None })
            .collect()
    }

    fn params() -> PlanParams {
        let s = SamplingSettings { profile_window: 3, min_interactions: 3, ..SamplingSettings::default() };
        PlanParams::new(&s, 2, true)
    }

    fn items(h: &[HistoryEntry]) -> Vec<i32> {
        h.iter().map(|e| e.item).collect()
    }

    #[test]
    fn leave_last_out_with_disjoint_windows() {
        // 8 interactions: profile = 100..102, train = 105, validation = 106, test = 107.
        let plan = plan_user(&rows(&[5.0, 1.0, 4.0, 2.0, 5.0, 3.0, 4.0, 1.0]), &params()).unwrap_or_default();
        assert_eq!(items(&plan.profile_window), vec![100, 101, 102]);
        let t: Vec<(&str, i32, Vec<i32>, bool)> =
            plan.targets.iter().map(|t| (t.split.as_str(), t.item, items(&t.history), t.label)).collect();
        assert_eq!(
            t,
            vec![
                ("train", 105, vec![103, 104], false),
                ("validation", 106, vec![104, 105], true),
                ("test", 107, vec![105, 106], false),
            ]
        );
        let window_items = items(&plan.profile_window);
        assert!(plan.targets.iter().all(|t| t.history.iter().all(|h| !window_items.contains(&h.item))));
        assert!(plan.profile_window[0].liked && !plan.profile_window[1].liked, "liked = rating > 3");
    }

    #[test]
    fn short_histories_shrink_the_profile_window_first() {
        // n = 4, min_history 1: P = min(3, 4 - 2 - 1) = 1.
        let plan = plan_user(&rows(&[4.0, 4.0, 2.0, 5.0]), &params()).unwrap_or_default();
        assert_eq!(items(&plan.profile_window), vec![100]);
        let t: Vec<(&str, Vec<i32>)> = plan.targets.iter().map(|t| (t.split.as_str(), items(&t.history))).collect();
        assert_eq!(t, vec![("validation", vec![101]), ("test", vec![101, 102])], "no train target fits");
    }

    #[test]
    fn all_train_targets_and_split_selection() {
        let s = SamplingSettings {
            profile_window: 0,
            train_targets_per_user: 0,
            splits: vec![Split::Train],
            ..SamplingSettings::default()
        };
        let p = PlanParams::new(&s, 20, true);
        let plan = plan_user(&rows(&[4.0; 6]), &p).unwrap_or_default();
        assert!(plan.profile_window.is_empty());
        assert_eq!(plan.targets.iter().map(|t| t.item).collect::<Vec<_>>(), vec![101, 102, 103]);
        assert!(plan.targets.iter().all(|t| t.split == Split::Train));
    }

    #[test]
    fn user_profiles_off_means_no_window_and_longer_histories() {
        let s = SamplingSettings { splits: vec![Split::Test], ..SamplingSettings::default() };
        let plan = plan_user(&rows(&[4.0; 10]), &PlanParams::new(&s, 20, false)).unwrap_or_default();
        assert!(plan.profile_window.is_empty());
        assert_eq!(plan.targets[0].history.len(), 9);
    }

    #[test]
    fn too_few_interactions_are_skipped() {
        assert!(plan_user(&rows(&[4.0, 4.0]), &params()).is_none());
        assert!(plan_user(&[], &params()).is_none());
    }

    #[test]
    fn label_shares_follow_the_threshold() {
        let s = SamplingSettings { like_threshold: 2.0, splits: vec![Split::Test], ..SamplingSettings::default() };
        let p = PlanParams::new(&s, 4, true);
        let like = plan_user(&rows(&[1.0, 1.0, 1.0, 3.0]), &p).map(|u| u.targets[0].label);
        let dislike = plan_user(&rows(&[5.0, 5.0, 5.0, 2.0]), &p).map(|u| u.targets[0].label);
        assert_eq!((like, dislike), (Some(true), Some(false)));
    }
}
