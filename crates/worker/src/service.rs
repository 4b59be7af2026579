//! A worker process, built from settings in one place: what `reasonrec worker` runs and what the
//! tests spawn. [`Worker::build`] loads the templates, the live teacher endpoints (the judge's
//! too) and a batch submitter per batch endpoint; [`Worker::run`] consumes the work queue (when
//! any endpoint is live) beside the submitters until stopped.

use crate::batch::BatchSubmitter;
use crate::consume::{WorkerConfig, WorkerCounters, run_worker};
use crate::error::WorkerError;
use crate::process::TaskProcessor;
use reasonrec_core::{PromptLibrary, Settings};
use reasonrec_store::Store;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A worker's parts, ready to run.
pub struct Worker {
    name: String,
    /// The consumer of the work queue; None when no endpoint is live (batch endpoints only:
    /// runs are routed to the Batch API and nothing is consumed).
    consumer: Option<WorkerConfig>,
    /// One per endpoint with `mode = "batch"` (one process per endpoint submits at a time; the
    /// others stand by).
    submitters: Vec<BatchSubmitter>,
}

impl Worker {
    /// Builds the worker `name` (it keys the worker's endpoint leases, so it must differ between
    /// workers). Must run inside a tokio runtime (the processor starts its batchers).
    pub fn build(store: Store, settings: &Settings, name: String) -> Result<Self, WorkerError> {
        let prompts = Arc::new(PromptLibrary::load(&settings.prompts.dir)?);
        let submitters = BatchSubmitter::from_settings(&store, prompts.clone(), settings)?;
        let processor = TaskProcessor::from_settings(store, prompts, settings)?;
        let consumer =
            (!processor.teacher().clients().is_empty()).then(|| WorkerConfig::new(processor, settings, name.clone()));
        Ok(Self { name, consumer, submitters })
    }

    /// Without the batch submitters: for a test that drives them itself.
    pub fn live_only(mut self) -> Self {
        self.submitters.clear();
        self
    }

    /// Whether it consumes the work queue (some endpoint is live); false: batches only.
    pub fn consumes(&self) -> bool {
        self.consumer.is_some()
    }

    /// Consumes the work queue beside the batch submitters until `stop` is cancelled (or the
    /// consumer fails for good: then the submitters are stopped too); waits for the submitters
    /// before returning.
    pub async fn run(self, stop: CancellationToken, counters: Arc<WorkerCounters>) -> Result<(), WorkerError> {
        let submitters: Vec<_> = self
            .submitters
            .into_iter()
            .map(|s| {
                tracing::info!(endpoint = %s.endpoint(), "batch submitter starting");
                tokio::spawn(s.run(stop.clone()))
            })
            .collect();
        let consumed = match self.consumer {
            Some(cfg) => run_worker(cfg, stop.clone(), counters).await,
            None => {
                tracing::info!(worker = %self.name, "no live endpoint: working batches only");
                stop.cancelled().await;
                Ok(())
            }
        };
        stop.cancel();
        for s in submitters {
            let _ = s.await;
        }
        consumed
    }
}
