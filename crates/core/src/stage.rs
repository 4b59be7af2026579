//! Generation stages and task states.

use serde::{Deserialize, Serialize};

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

crate::vocabulary!(Stage, "stage", {
    ItemProfile => "item_profile",
    UserProfile => "user_profile",
    Reasoning => "reasoning",
    Judge => "judge",
});

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

crate::vocabulary!(TaskState, "task state", {
    Waiting => "waiting",
    Ready => "ready",
    Published => "published",
    Batched => "batched",
    Done => "done",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Done | TaskState::Failed | TaskState::Cancelled)
    }
}

/// Which part of a user's history a reasoning task's target comes from (`tasks.split`):
/// leave-last-out gives each user's last interaction to `test`, the one before to `validation`
/// and earlier ones to `train` ([`crate::settings::SamplingSettings::splits`] picks which are
/// planned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Validation,
    Test,
}

crate::vocabulary!(Split, "split", {
    Train => "train",
    Validation => "validation",
    Test => "test",
});

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

crate::vocabulary!(RunState, "run state", {
    Planning => "planning",
    Running => "running",
    Paused => "paused",
    Completed => "completed",
    Cancelled => "cancelled",
    Failed => "failed",
});

impl RunState {
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
    fn every_word_round_trips_through_its_stored_name() {
        for sp in Split::ALL {
            assert_eq!(Split::try_from(sp.as_str().to_string()), Ok(sp));
            assert_eq!(serde_json::to_value(sp).ok(), Some(serde_json::Value::from(sp.as_str())));
        }
        for st in TaskState::ALL {
            assert_eq!(TaskState::try_from(st.to_string()), Ok(st));
            assert_eq!(serde_json::to_value(st).ok(), Some(serde_json::Value::from(st.as_str())));
        }
        let e = Split::try_from("dev".to_string()).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("unknown split \"dev\" (one of: train, validation, test)"));
    }

    #[test]
    fn only_done_failed_cancelled_are_terminal() {
        let terminal: Vec<_> = TaskState::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, vec![TaskState::Done, TaskState::Failed, TaskState::Cancelled]);
    }
}
