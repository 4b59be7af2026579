//! The coordinator: plans runs into Postgres and publishes ready tasks through the outbox.
//!
//! Layout:
//! - [`error`]: `CoordinatorError`, retryable when the store or broker error is.
//! - [`plan`]: the sampler (pure): per user, target, history window and label.
//! - [`run`]: `create_run` streams a dataset's interactions and writes the run's tasks in batches.
//! - [`outbox`]: publishes ready tasks with confirms and marks only confirmed ones published;
//!   `drive` loops outbox and completion until a run (or every run) is done; dead-lettered
//!   task messages are recorded as failed tasks.
//! - [`service`]: `supervise` wraps the outbox in reconnection (broker or Postgres lost).
//! - [`status`]: progress, rate and ETA of a run, for people and for machines.

pub mod error;
pub mod outbox;
pub mod plan;
pub mod run;
pub mod service;
pub mod status;

pub use error::CoordinatorError;
pub use outbox::{Outbox, PumpReport};
pub use run::{RunPlan, create_run};
pub use service::{Target, supervise};
