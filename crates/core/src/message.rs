//! The message contract on the task queue.
//!
//! A message carries ids and what a worker needs to route the work, never the inputs themselves:
//! Postgres is the source of truth and the worker loads the task row (inputs may have been written
//! by an upstream stage after the task was planned).

use crate::error::CoreError;
use crate::stage::Stage;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Current version of the wire format. A worker rejects versions it does not know.
pub const MESSAGE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMessage {
    pub v: u32,
    pub task_id: Uuid,
    pub run_id: Uuid,
    pub stage: Stage,
}

impl TaskMessage {
    pub fn new(task_id: Uuid, run_id: Uuid, stage: Stage) -> Self {
        Self { v: MESSAGE_VERSION, task_id, run_id, stage }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising a struct of plain fields cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CoreError> {
        let msg: TaskMessage = serde_json::from_slice(bytes).map_err(|e| CoreError::BadMessage(e.to_string()))?;
        if msg.v != MESSAGE_VERSION {
            return Err(CoreError::BadMessage(format!(
                "unsupported message version {} (this worker speaks {MESSAGE_VERSION})",
                msg.v
            )));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = TaskMessage::new(Uuid::now_v7(), Uuid::now_v7(), Stage::Reasoning);
        assert_eq!(TaskMessage::decode(&m.encode()).ok(), Some(m));
    }

    #[test]
    fn rejects_garbage_and_unknown_versions() {
        assert!(TaskMessage::decode(b"not json").is_err());
        let m = TaskMessage { v: 99, ..TaskMessage::new(Uuid::nil(), Uuid::nil(), Stage::Reasoning) };
        let err = TaskMessage::decode(&m.encode()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("unsupported message version 99"), "{err}");
    }
}
