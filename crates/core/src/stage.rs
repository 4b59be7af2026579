//! Generation stages and task states.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The teacher stages of ReasoningRec. Item profiles feed user profiles, both feed reasoning. The
/// optional judge (`[stages] judge`) scores each reasoning answer against the facts of its prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    ItemProfile,
    UserProfile,
    Reasoning,
    Judge,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::ItemProfile, Stage::UserProfile, Stage::Reasoning, Stage::Judge];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::ItemProfile => "item_profile",
            Stage::UserProfile => "user_profile",
            Stage::Reasoning => "reasoning",
            Stage::Judge => "judge",
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
/// -> `done` | `failed`. `cancelled` when its run is cancelled. A run routed to a provider's
/// Batch API moves `ready` -> `batched` (claimed into a batch row) instead of `published`; a
/// line that errored, expired or must be re-asked puts it back to `ready` (a re-ask the endpoint
/// sends live is marked `live_reask` and goes `ready` -> `published` like a live run's task).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Waiting,
    Ready,
    Published,
    Batched,
    Done,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Waiting,
        TaskState::Ready,
        TaskState::Published,
        TaskState::Batched,
        TaskState::Done,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Ready => "ready",
            TaskState::Published => "published",
            TaskState::Batched => "batched",
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

/// Life of a run row (`runs.state`). `planning` -> `running` <-> `paused` -> `completed` |
/// `cancelled`; `planning` -> `failed` when the plan errored or died. `run retry-failed` moves
/// `completed` back to `running` (never for a snapshotted run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Planning,
    Running,
    Paused,
    Completed,
    Cancelled,
    Failed,
}

impl RunState {
    pub const ALL: [RunState; 6] = [
        RunState::Planning,
        RunState::Running,
        RunState::Paused,
        RunState::Completed,
        RunState::Cancelled,
        RunState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Planning => "planning",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Completed => "completed",
            RunState::Cancelled => "cancelled",
            RunState::Failed => "failed",
        }
    }

    /// Its tasks may still finish (`running` or `paused`): the finishing state machine's
    /// "open run".
    pub fn is_open(self) -> bool {
        matches!(self, RunState::Running | RunState::Paused)
    }

    /// Nothing of it will change any more (unless `run retry-failed` reopens a completed run).
    pub fn is_finished(self) -> bool {
        matches!(self, RunState::Completed | RunState::Cancelled | RunState::Failed)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown run state {s:?}"))
    }
}

/// Lets callers (and tests) compare with the name Postgres stores.
impl PartialEq<&str> for RunState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
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
    fn run_states_round_trip_and_only_running_and_paused_are_open() {
        for st in RunState::ALL {
            assert_eq!(st.as_str().parse::<RunState>(), Ok(st));
            assert_eq!(st, st.as_str());
        }
        let open: Vec<_> = RunState::ALL.into_iter().filter(|s| s.is_open()).collect();
        assert_eq!(open, vec![RunState::Running, RunState::Paused]);
        assert!("done".parse::<RunState>().is_err());
    }

    #[test]
    fn only_done_failed_cancelled_are_terminal() {
        let terminal: Vec<_> = TaskState::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, vec![TaskState::Done, TaskState::Failed, TaskState::Cancelled]);
    }
}
