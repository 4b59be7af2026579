//! The worker: consumes task messages, asks a teacher, validates, stores, then acks.
//!
//! Layout:
//! - [`error`]: `WorkerError`, retryable when the store or broker error is.
//! - [`render`]: builds a task's prompt context from the store and renders its template.
//! - [`reviews`]: the reviews an item profile sees (verified, sampled by star share).
//! - [`process`]: one task from id to committed row: reuse by content key, or call the teacher
//!   with retries, validate, and complete or fail the task in one transaction.
//! - [`batcher`]: the one batcher loop: requests that arrive together are served by one call.
//! - [`commit`]: the commit batcher: tasks finished together share one transaction; each
//!   message is still acked only after its own task's commit.
//! - [`load`]: the read batcher: deliveries in flight are read in a few statements.
//! - [`lease`]: leases in Postgres through which workers split each endpoint's limits.
//! - [`batch`]: the batch submitter: runs routed to a provider's Batch API, from claimed tasks
//!   to a created batch, reconciled after a crash, polled, and its results finished.
//! - [`service`]: [`Worker`]: a worker process built from settings (templates, live teacher
//!   pool, batch submitters), as `reasonrec worker` runs it and the tests spawn it.
//! - [`consume`]: the consumer loop: prefetch = concurrency, manual ack after commit,
//!   reconnect on broker loss, graceful drain on shutdown.

pub mod batch;
pub mod batcher;
pub mod commit;
pub mod consume;
pub mod error;
pub mod lease;
pub mod load;
pub mod process;
pub mod render;
pub mod reviews;
pub mod service;

pub use consume::{WorkerConfig, WorkerCounters, run_worker};
pub use error::WorkerError;
pub use process::{Outcome, ProcessorOptions, TaskProcessor};
pub use service::Worker;
