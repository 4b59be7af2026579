//! The consumer loop.
//!
//! Invariants:
//! - prefetch = `worker.concurrency`: the broker never hands this worker more unacked messages
//!   than it processes at once;
//! - a message is acked only after its task's transaction committed (or there was nothing to
//!   commit: already done, cancelled, unknown task), or after a confirmed copy of it sits in a
//!   retry tier (commit failed: Postgres down) or the dead-letter exchange (retries spent);
//!   when even that publish fails it is nacked back to the queue;
//! - a message whose run or stage differs from its task's row is parked, not worked; a handler
//!   that panics is treated as an uncommitted task (retry tier), never left unacked;
//! - on broker loss the session is rebuilt with backoff; deliveries that could not be acked are
//!   redelivered by the broker and absorbed by idempotent completion;
//! - on stop: cancel the consumer (no new deliveries), give in-flight tasks `shutdown_grace_secs`,
//!   then close the channel, which hands anything unfinished back to the queue.

use crate::error::WorkerError;
use crate::lease::Leases;
use crate::process::{Outcome, TaskProcessor};
use reasonrec_core::TaskMessage;
use reasonrec_core::settings::{BrokerSettings, WorkerSettings};
use reasonrec_queue::session::reconnecting;
use reasonrec_queue::{Broker, QueueError, Received, Redirected, Redirector};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a worker did, readable while it runs.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub completed: AtomicU64,
    pub reused: AtomicU64,
    pub already_done: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
    pub requeued: AtomicU64,
    pub bad_messages: AtomicU64,
    pub reconnects: AtomicU64,
    /// Consuming right now (a broker session is up): what `/readyz` reports.
    pub connected: std::sync::atomic::AtomicBool,
}

impl WorkerCounters {
    /// Counts a processed task's outcome; its name in the `tasks` metric.
    fn count(&self, outcome: &Outcome) -> &'static str {
        let (counter, name) = match outcome {
            Outcome::Completed { reused: false } => (&self.completed, "completed"),
            Outcome::Completed { reused: true } => (&self.reused, "reused"),
            Outcome::AlreadyDone => (&self.already_done, "already_done"),
            Outcome::Failed { .. } => (&self.failed, "failed"),
            Outcome::Skipped { .. } => (&self.skipped, "skipped"),
            Outcome::Mismatch { .. } => (&self.bad_messages, "mismatch"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        name
    }

    pub fn snapshot(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "completed": g(&self.completed), "reused": g(&self.reused), "already_done": g(&self.already_done),
            "failed": g(&self.failed), "skipped": g(&self.skipped), "requeued": g(&self.requeued),
            "bad_messages": g(&self.bad_messages), "reconnects": g(&self.reconnects),
        })
    }
}

/// Set when a task hits an error no task can get past (see [`WorkerError::is_fatal`]).
#[derive(Clone, Default)]
struct Fatal {
    token: CancellationToken,
    reason: Arc<std::sync::Mutex<Option<String>>>,
}

impl Fatal {
    fn raise(&self, reason: String) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert(reason);
        }
        self.token.cancel();
    }

    fn reason(&self) -> String {
        self.reason.lock().ok().and_then(|r| r.clone()).unwrap_or_default()
    }
}

async fn handle(
    processor: TaskProcessor,
    delivery: Received,
    counters: Arc<WorkerCounters>,
    fatal: Fatal,
    redirect: Arc<Redirector>,
    max_retries: u32,
) {
    let msg = match TaskMessage::decode(delivery.data()) {
        Ok(m) => m,
        Err(e) => {
            counters.bad_messages.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, bytes = delivery.data().len(), "undecodable message");
            park_or_reject(&redirect, delivery, &e.to_string()).await;
            return;
        }
    };
    let metrics = reasonrec_core::metrics::metrics();
    metrics.in_flight.inc();
    let result = guard_panics(processor.process(&msg)).await;
    metrics.in_flight.dec();
    match result {
        Ok(Outcome::Mismatch { reason }) => {
            counters.bad_messages.fetch_add(1, Ordering::Relaxed);
            tracing::error!(task_id = %msg.task_id, run_id = %msg.run_id, stage = %msg.stage, %reason, "message does not match its task; parked");
            park_or_reject(&redirect, delivery, &reason).await;
        }
        Ok(outcome) => {
            metrics.task(msg.stage.as_str(), counters.count(&outcome));
            tracing::debug!(task_id = %msg.task_id, run_id = %msg.run_id, stage = %msg.stage, ?outcome, "task processed");
            if let Err(e) = delivery.ack().await {
                // Committed but not acked: the broker redelivers and the redelivery is a no-op.
                tracing::warn!(task_id = %msg.task_id, error = %e, "ack failed after commit");
            }
        }
        Err(e) if e.is_fatal() => {
            counters.requeued.fetch_add(1, Ordering::Relaxed);
            tracing::error!(task_id = %msg.task_id, error = %e, "worker cannot go on; handing the task back and stopping");
            let _ = delivery.hand_back().await;
            fatal.raise(e.to_string());
        }
        Err(e) => {
            counters.requeued.fetch_add(1, Ordering::Relaxed);
            metrics.task(msg.stage.as_str(), "retried");
            if matches!(e, WorkerError::Panicked(_)) {
                tracing::error!(task_id = %msg.task_id, error = %e, "task handler panicked; nothing committed");
            }
            retry_later(&redirect, delivery, &msg, &e, max_retries).await;
        }
    }
}

/// A task that was not committed goes to a retry tier (or, retries spent, to the dead letters)
/// and its delivery is acked; with no tier reachable the delivery is handed back.
async fn retry_later(redirect: &Redirector, delivery: Received, msg: &TaskMessage, e: &WorkerError, max_retries: u32) {
    let retries = delivery.retries();
    match redirect.retry_or_dead(delivery.data(), retries, max_retries, &e.to_string()).await {
        Ok(to) => {
            match to {
                Redirected::Retry { delay_secs } => {
                    tracing::warn!(task_id = %msg.task_id, error = %e, retries, delay_secs, "task not committed; retrying after a delay")
                }
                Redirected::Dead => {
                    tracing::error!(task_id = %msg.task_id, error = %e, retries, "task not committed and retries spent; dead-lettered")
                }
            }
            if let Err(ae) = delivery.ack().await {
                // The copy is safe; a redelivery of the original is absorbed.
                tracing::warn!(task_id = %msg.task_id, error = %ae, "ack failed after redirect");
            }
        }
        Err(re) => {
            tracing::warn!(task_id = %msg.task_id, error = %e, redirect_error = %re, "task not committed and no retry tier reachable; handing it back");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery.hand_back().await;
        }
    }
}

/// Moves a message nobody should work to the parked queue (kept for people to read) and acks
/// it; rejects it without requeue when the parked queue refuses it.
async fn park_or_reject(redirect: &Redirector, delivery: Received, reason: &str) {
    match redirect.park(delivery.data(), reason).await {
        Ok(()) => {
            let _ = delivery.ack().await;
        }
        Err(pe) => {
            tracing::error!(%reason, park_error = %pe, "message dropped: the parked queue refused it");
            let _ = delivery.reject().await;
        }
    }
}

/// Runs a task's processing and turns a panic (a bug) into a retryable error, so the delivery
/// is redirected like any uncommitted task instead of staying unacked until the channel closes.
async fn guard_panics<F: std::future::Future<Output = Result<Outcome, WorkerError>>>(
    work: F,
) -> Result<Outcome, WorkerError> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text panic".into());
            Err(WorkerError::Panicked(what))
        }
    }
}

/// One connection's life: consume until stopped (Ok) or the broker fails (Err).
async fn session(
    cfg: &WorkerConfig,
    stop: &CancellationToken,
    counters: &Arc<WorkerCounters>,
    fatal: &Fatal,
) -> Result<(), WorkerError> {
    let (processor, ws, name) = (&cfg.processor, &cfg.worker, cfg.name.as_str());
    let broker = Broker::connect(&cfg.broker, name).await?;
    let redirect = Arc::new(Redirector::new(&broker).await?);
    let mut consumer = broker.consume(ws.concurrency, name).await?;
    tracing::info!(worker = name, queue = %broker.topology().work_queue, prefetch = ws.concurrency, "consuming");
    counters.connected.store(true, Ordering::Relaxed);
    let mut inflight = JoinSet::new();
    let result = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            _ = fatal.token.cancelled() => break Ok(()),
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    inflight.spawn(handle(processor.clone(), delivery, counters.clone(), fatal.clone(), redirect.clone(), cfg.broker.max_retries));
                }
                Some(Err(e)) => break Err(WorkerError::Queue(e)),
                None => break Err(WorkerError::Queue(QueueError::Timeout { what: "consumer stream (closed by broker)", secs: 0 })),
            }
        }
    };
    counters.connected.store(false, Ordering::Relaxed);
    if result.is_ok() {
        consumer.cancel().await;
        let grace = Duration::from_secs(ws.shutdown_grace_secs);
        let drained = tokio::time::timeout(grace, async { while inflight.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                worker = name,
                unfinished = inflight.len(),
                "grace period over; unfinished tasks go back to the queue"
            );
            inflight.abort_all();
        }
        consumer.close().await;
        broker.close().await;
    }
    result
}

/// What a worker runs with.
pub struct WorkerConfig {
    pub processor: TaskProcessor,
    pub broker: BrokerSettings,
    pub worker: WorkerSettings,
    /// Name in logs and on the broker.
    pub name: String,
    /// When set, the worker joins the fleet's endpoint leases (limits split between workers).
    pub lease_interval: Option<Duration>,
}

impl WorkerConfig {
    /// A worker named `name` (it keys the worker's endpoint leases: unique per process) that
    /// runs `processor` with the settings' broker, `[worker]` and lease interval.
    pub fn new(processor: TaskProcessor, settings: &reasonrec_core::Settings, name: String) -> Self {
        Self {
            processor,
            broker: settings.broker.clone(),
            worker: settings.worker.clone(),
            name,
            lease_interval: settings.teacher.lease_interval(),
        }
    }
}

/// Runs a worker until `stop` is cancelled, reconnecting to the broker with backoff.
pub async fn run_worker(
    cfg: WorkerConfig,
    stop: CancellationToken,
    counters: Arc<WorkerCounters>,
) -> Result<(), WorkerError> {
    let lease_stop = CancellationToken::new();
    let lease_task = match cfg.lease_interval {
        Some(interval) => {
            let id = format!("{}-{}", cfg.name, uuid::Uuid::new_v4().simple());
            let leases = Leases::new(cfg.processor.store().clone(), cfg.processor.teacher().clone(), id, interval);
            leases.join().await;
            Some(tokio::spawn(leases.run(lease_stop.clone())))
        }
        None => None,
    };
    let result = consume_loop(&cfg, &stop, &counters).await;
    lease_stop.cancel();
    if let Some(t) = lease_task {
        let _ = t.await;
    }
    result
}

async fn consume_loop(
    cfg: &WorkerConfig,
    stop: &CancellationToken,
    counters: &Arc<WorkerCounters>,
) -> Result<(), WorkerError> {
    let fatal = Fatal::default();
    let ended = |e: &WorkerError, wait: Duration| {
        counters.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(worker = %cfg.name, error = %e, retry_in_ms = wait.as_millis() as u64, "broker session ended; reconnecting");
    };
    let ran = reconnecting(stop, WorkerError::is_retryable, ended, || session(cfg, stop, counters, &fatal)).await?;
    if ran.is_some() && fatal.token.is_cancelled() {
        return Err(WorkerError::Teacher(reasonrec_teacher::TeacherError::NoEndpoint { reason: fatal.reason() }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_retryable_error() {
        let r = guard_panics(async { panic!("boom") }).await;
        match r {
            Err(e @ WorkerError::Panicked(_)) => {
                assert!(e.is_retryable());
                assert!(e.to_string().contains("boom"), "{e}");
            }
            other => panic!("expected a panic error, got {other:?}"),
        }
        let ok = guard_panics(async { Ok(Outcome::AlreadyDone) }).await;
        assert!(matches!(ok, Ok(Outcome::AlreadyDone)));
    }
}
