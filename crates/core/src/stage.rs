//! Generation stages and task states.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The three teacher stages of ReasoningRec. Item profiles feed user profiles, both feed reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    ItemProfile,
    UserProfile,
    Reasoning,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::ItemProfile, Stage::UserProfile, Stage::Reasoning];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::ItemProfile => "item_profile",
            Stage::UserProfile => "user_profile",
            Stage::Reasoning => "reasoning",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown stage {s:?}"))
    }
}

/// Life of a task row. `waiting` -> `ready` (inputs exist) -> `published` (broker confirmed)
/// -> `done` | `failed`. `cancelled` when its run is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Waiting,
    Ready,
    Published,
    Done,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Waiting,
        TaskState::Ready,
        TaskState::Published,
        TaskState::Done,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Ready => "ready",
            TaskState::Published => "published",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Done | TaskState::Failed | TaskState::Cancelled)
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown task state {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_round_trip() {
        for st in Stage::ALL {
            assert_eq!(st.as_str().parse::<Stage>(), Ok(st));
        }
        assert!("nope".parse::<Stage>().is_err());
    }

    #[test]
    fn only_done_failed_cancelled_are_terminal() {
        let terminal: Vec<_> = TaskState::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, vec![TaskState::Done, TaskState::Failed, TaskState::Cancelled]);
    }
}
