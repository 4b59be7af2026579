//! What a task's prompt is rendered from, as stored in `tasks.input` by the planner and read
//! back by the worker. Ids only: item text is read from the current rows at render time.

use serde::{Deserialize, Serialize};

/// One history entry of a reasoning task.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub item: i32,
    pub liked: bool,
    pub rating: f32,
}

/// Input of a reasoning task: the user's recent history before the target, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasoningInput {
    pub user: i32,
    pub target: i32,
    pub rating: f32,
    pub history: Vec<HistoryEntry>,
}

impl ReasoningInput {
    /// Every item the prompt mentions: history then target.
    pub fn item_ids(&self) -> Vec<i32> {
        let mut ids: Vec<i32> = self.history.iter().map(|h| h.item).collect();
        ids.push(self.target);
        ids
    }
}

/// Input of a user-profile task: the user's earliest interactions, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserProfileInput {
    pub user: i32,
    pub window: Vec<HistoryEntry>,
}

/// Input of an item-profile task.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ItemProfileInput {
    pub item: i32,
}

/// Every item a task's prompt mentions, read from its stored input (empty when the input does
/// not parse: the worker reports that when it renders).
pub fn item_ids(stage: crate::stage::Stage, input: &serde_json::Value) -> Vec<i32> {
    use crate::stage::Stage;
    match stage {
        Stage::ItemProfile => serde_json::from_value::<ItemProfileInput>(input.clone()).map(|i| vec![i.item]),
        Stage::UserProfile => {
            serde_json::from_value::<UserProfileInput>(input.clone()).map(|i| i.window.iter().map(|h| h.item).collect())
        }
        // A judge task shows its reasoning task's prompt again: it has the same input.
        Stage::Reasoning | Stage::Judge => {
            serde_json::from_value::<ReasoningInput>(input.clone()).map(|i| i.item_ids())
        }
    }
    .unwrap_or_default()
}
