//! Domain types shared by every reasonrec role.
//!
//! Layout:
//! - [`attempt`]: one teacher call as recorded in the cost ledger.
//! - [`batching`]: batch planning arithmetic (when a run's batch work would end).
//! - [`data`]: users, items and interactions as loaded from a dataset.
//! - [`error`]: the crate's error enum, with a retryable/permanent split.
//! - [`finishing`]: the finishing state machine (what a completion or failure does to a task).
//! - [`inputs`]: what a task is rendered from, as stored in `tasks.input`.
//! - [`settings`]: the configuration tree (TOML file + `REASONREC__SECTION__KEY` overrides).
//! - [`stage`]: the three generation stages of the method and task states.
//! - [`task_view`]: a view of one task made by one role and shown by another (the browser).
//! - [`terminal`]: outside text made safe to print on a terminal.
//! - [`net`]: whether an address names this machine (binds, `Host` headers, URLs).
//! - [`metrics`]: the process-wide Prometheus registry and the metric names dashboards use.
//! - [`message`]: the RabbitMQ message contract between coordinator and workers.
//! - [`prompt`]: versioned prompt templates (minijinja) and their rendering into chat messages.
//! - [`key`]: content keys of the output ledger (what makes a write idempotent and reusable).
//! - [`validate`]: checks applied to a teacher's answer before it is stored.
//! - [`view`]: items as prompt templates see them (shared by teacher and student prompts).
//! - [`vocab`]: how a word of the vocabulary (stage, state, split, family, verdict) is spelled
//!   and parsed; what the store's rows decode through.

pub mod attempt;
pub mod audit;
pub mod batching;
pub mod data;
pub mod error;
pub mod finishing;
pub mod inputs;
pub mod key;
pub mod message;
pub mod metrics;
pub mod net;
pub mod prompt;
pub mod settings;
pub mod stage;
pub mod task_view;
pub mod terminal;
pub mod validate;
pub mod view;
pub mod vocab;

pub use error::CoreError;
pub use key::OutputKey;
pub use message::TaskMessage;
pub use prompt::{ChatMessage, PromptLibrary, RenderedPrompt};
pub use settings::Settings;
pub use stage::{RunState, Split, Stage, TaskState};
