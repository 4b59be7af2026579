//! The coordinator: plans runs into Postgres and publishes ready tasks through the outbox.
//!
//! Layout:
//! - [`error`]: `CoordinatorError`, retryable when the store or broker error is.
//! - [`departures`]: evidence that a published message left the work queue (pure); only then
//!   is a still unfinished task republished.
//! - [`plan`]: the sampler (pure): per user, target, history window and label.
//! - [`run`]: `create_run` / `plan_run` stream a dataset's interactions and write the run's tasks
//!   in batches, each with its fingerprint; incremental runs carry unchanged tasks over.
//! - [`fingerprint`]: what determines a task's prompt, hashed at planning time (pure).
//! - [`regenerate`]: the previous completed run, indexed; why a task is stale or carried over.
//! - [`estimate`]: calls, tokens and dollars of the stale tasks (dry run and plan report).
//! - [`report`]: the plan report for people (stages, carried over, stale by reason, estimate).
//! - [`outbox`]: the loop over the coordinator's chores, one type each in `outbox/`: publish
//!   ready tasks with confirms (only confirmed ones are marked published), republish lost
//!   messages on evidence, record dead letters as failed tasks, update the gauges, refresh
//!   statistics; `drive` runs them until a run is done, `serve` for every running run.
//! - [`schedule`]: cron jobs that create incremental runs (run by the leader only).
//! - [`service`]: `serve`, the long-running coordinator (leadership, scheduler, outbox), used by
//!   the binary and the tests; `supervise` wraps the outbox in reconnection.
//! - [`leader`]: one acting coordinator: a Postgres advisory lock on a dedicated connection.
//! - [`lifecycle`]: what the outbox may publish: paused runs, budgets (a run pauses itself),
//!   priorities.
//! - [`web`]: the status page and its JSON, merged with `/metrics`, `/healthz`, `/readyz`.
//! - [`status`]: progress, rate and ETA of a run, for people and for machines.

pub mod departures;
pub mod error;
pub mod estimate;
pub mod fingerprint;
pub mod leader;
pub mod lifecycle;
pub mod outbox;
pub mod plan;
pub mod regenerate;
pub mod report;
pub mod run;
pub mod schedule;
pub mod service;
pub mod status;
pub mod web;

pub use error::CoordinatorError;
pub use lifecycle::prune;
pub use outbox::{Outbox, PumpReport};
pub use run::{Incremental, PlanOptions, RunPlan, create_incremental_run, create_run, plan_run, unfinished_run};
pub use service::{Lead, Target, serve, supervise};
