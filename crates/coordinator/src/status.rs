//! Run progress for people (`run status`) and machines (`run status --json`).

use crate::error::CoordinatorError;
use reasonrec_core::batching::{batch_work_ends, lines_per_round};
use reasonrec_core::settings::{BatchSettings, Protocol, RunRoute};
use reasonrec_core::stage::{RunState, TaskState};
use reasonrec_store::Store;
use reasonrec_store::lifecycle::{Budget, dollars};
use reasonrec_store::runs::RunCounts;
use serde::Serialize;
use std::time::Duration;
use uuid::Uuid;

/// How long after a count of a run's tasks that took `took` the next one may run: `floor`, or
/// rarer when counting is slow, so that repeating it takes at most a twentieth of the time.
/// Counts scan every task of a run: at a million tasks, seconds of a Postgres backend each.
pub fn count_interval(took: Duration, floor: Duration) -> Duration {
    (took * 20).max(floor)
}

#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    pub run_id: Uuid,
    pub state: RunState,
    /// Why the run is paused (by hand, or its budget was reached); None unless paused.
    pub paused_reason: Option<String>,
    /// Why the run's planning failed; None unless failed.
    pub failed_reason: Option<String>,
    /// When retention deleted the run's task rows (its counts are then empty).
    pub pruned_at: Option<chrono::DateTime<chrono::Utc>>,
    pub priority: i32,
    pub budget: Budget,
    pub planned: i64,
    pub waiting: i64,
    pub ready: i64,
    pub published: i64,
    pub done: i64,
    pub failed: i64,
    /// Completed tasks per second over the last minute (whole run when it is finished).
    pub rate_per_sec: f64,
    pub eta_secs: Option<f64>,
    /// Spend so far scaled to every planned task (from the finished ones), None before any.
    pub projected_cost_usd: Option<f64>,
    pub projected_tokens: Option<i64>,
    /// The run's provider batches (a run routed to a Batch API), None for a live run.
    pub batches: Option<BatchStatus>,
    pub counts: RunCounts,
}

/// A batch-routed run's batches: tasks in a batch now, tasks done by a batch answer, and the
/// batches by state with their lines and spend (reserved while open, paid once ended).
#[derive(Debug, Clone, Serialize)]
pub struct BatchStatus {
    pub batched_now: i64,
    pub done_by_batch: i64,
    /// Done by live calls (after a spill, or re-asked live), tasks carried over aside.
    pub done_live: i64,
    /// When the run must be finished (`run create --deadline`, `[batch] deadline`).
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// While the run is worked by batches: when its batch work is projected to end, at its
    /// batch endpoint's observed turnaround ([`reasonrec_core::batching::batch_work_ends`]).
    pub projected_finish: Option<chrono::DateTime<chrono::Utc>>,
    pub by_state: Vec<reasonrec_store::batches::BatchCount>,
}

/// When a running batch run's batch work is projected to end: open batches a
/// turnaround after they went, the tasks not yet sent in rounds of `max_open` batches, at the
/// mean turnaround of the run's batch endpoint (its configured `turnaround_secs` before any
/// batch ended). None for a run not worked by batches now (finished, or spilled to live).
async fn projected_batch_finish(
    store: &Store,
    run_id: Uuid,
    snapshot: &serde_json::Value,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, CoordinatorError> {
    let Some(work) = store.batches().work(run_id).await? else { return Ok(None) };
    // What the run was planned with: its batch settings and its batch endpoint.
    let batch: BatchSettings = serde_json::from_value(snapshot["batch"].clone()).unwrap_or_default();
    let endpoint = snapshot["teacher"].as_array().into_iter().flatten().find(|e| e["mode"] == "batch");
    let name = endpoint.and_then(|e| e["name"].as_str()).unwrap_or_default();
    let protocol: Protocol =
        endpoint.and_then(|e| serde_json::from_value(e["protocol"].clone()).ok()).unwrap_or_default();
    let secs = match store.batches().observed_turnaround(name).await? {
        Some(s) if s.is_finite() && s >= 0.0 => s,
        _ => batch.turnaround_secs as f64,
    };
    let turnaround = chrono::TimeDelta::milliseconds((secs * 1000.0) as i64);
    let per_round = lines_per_round(&batch, protocol);
    let ends =
        batch_work_ends(chrono::Utc::now(), turnaround, &work.open_submitted, work.unsent.max(0) as u64, per_round);
    Ok(Some(ends))
}

pub async fn run_status(store: &Store, run_id: Uuid) -> Result<RunStatus, CoordinatorError> {
    let state = store.runs().refresh_state(run_id).await?;
    let c = store.runs().counts(run_id).await?;
    let lifecycle = store.lifecycle().get(run_id).await?;
    let row = store.runs().get(run_id).await?;
    let (failed_reason, pruned_at) = (row.failed_reason, row.pruned_at);
    let remaining = c.total - c.done - c.failed - c.state(TaskState::Cancelled);
    let rate = if state == RunState::Completed || c.done_last_minute == 0 {
        // Tasks carried over from an earlier run were not done by this one.
        if c.elapsed_secs > 0.0 { (c.done - c.carried_done) as f64 / c.elapsed_secs } else { 0.0 }
    } else {
        c.done_last_minute as f64 / 60.0
    };
    let eta_secs = (remaining > 0 && rate > 0.0).then(|| remaining as f64 / rate);
    // Spend so far scaled to the tasks this run works (carried-over ones cost nothing).
    let carried = c.carried_done + c.carried_failed;
    let finished = c.done + c.failed - carried;
    let scale = (finished > 0).then(|| (c.total - carried) as f64 / finished as f64);
    let projected_cost_usd = scale.map(|k| c.cost_usd * k);
    let projected_tokens = scale.map(|k| ((c.input_tokens + c.output_tokens) as f64 * k).round() as i64);
    let by_state = store.batches().summary(run_id).await?;
    let batches = if row.route == RunRoute::Batch || !by_state.is_empty() {
        let projected = projected_batch_finish(store, run_id, &row.settings).await?;
        let done_by_batch = by_state.iter().map(|b| b.done_lines).sum();
        Some(BatchStatus {
            batched_now: c.state(TaskState::Batched),
            done_by_batch,
            done_live: (c.done - c.carried_done - done_by_batch).max(0),
            deadline: row.deadline,
            projected_finish: projected,
            by_state,
        })
    } else {
        None
    };
    Ok(RunStatus {
        run_id,
        state,
        paused_reason: lifecycle.paused_reason,
        failed_reason,
        pruned_at,
        priority: lifecycle.priority,
        budget: lifecycle.budget,
        planned: c.total,
        waiting: c.state(TaskState::Waiting),
        ready: c.state(TaskState::Ready),
        published: c.published_ever,
        done: c.done,
        failed: c.failed,
        rate_per_sec: rate,
        eta_secs,
        projected_cost_usd,
        projected_tokens,
        batches,
        counts: c,
    })
}

impl RunStatus {
    /// One progress bar per stage (`width` cells), then the summary of [`RunStatus::render`].
    pub fn render_bars(&self, width: usize) -> String {
        let mut out = String::new();
        for (stage, states) in &self.counts.by_stage {
            let total: i64 = states.values().sum();
            let get = |k: &str| states.get(k).copied().unwrap_or(0);
            let (done, failed) = (get("done"), get("failed"));
            let cells = |n: i64| if total > 0 { (n as usize * width).div_ceil(total as usize).min(width) } else { 0 };
            let (d, f) = (cells(done), cells(failed));
            let f = f.min(width - d.min(width));
            let bar = format!("{}{}{}", "█".repeat(d), "▒".repeat(f), "·".repeat(width.saturating_sub(d + f)));
            let pct = if total > 0 { 100 * (done + failed) / total } else { 0 };
            out.push_str(&format!("{stage:<13} {bar} {pct:>3}%  {done} done, {failed} failed of {total}\n"));
        }
        out.push_str(&self.render());
        out
    }

    /// The status as `run status` prints it: the run's lines, then its spend, then its tasks.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_run(&mut out);
        self.render_spend(&mut out);
        self.render_tasks(&mut out);
        out
    }

    /// State, counts, why it is paused, pruned or failed, re-publishing, priority, carry-over.
    fn render_run(&self, out: &mut String) {
        out.push_str(&format!(
            "run {}  state: {}\n  planned {}  published {}  done {}  failed {}  (waiting {}, ready {}, in a batch {})\n",
            self.run_id,
            self.state,
            self.planned,
            self.published,
            self.done,
            self.failed,
            self.waiting,
            self.ready,
            self.batches.as_ref().map_or(0, |b| b.batched_now)
        ));
        if let Some(reason) = &self.paused_reason {
            let reason = reasonrec_core::terminal::terminal_safe(reason);
            out.push_str(&format!("  paused: {reason} (`reasonrec run resume {}` reopens it)\n", self.run_id));
        }
        if let Some(at) = self.pruned_at {
            out.push_str(&format!("  pruned at {at}: its task rows were deleted by retention (`run prune`)\n"));
        }
        if let Some(reason) = &self.failed_reason {
            out.push_str(&format!("  failed: {}\n", reasonrec_core::terminal::terminal_safe(reason)));
        }
        let c = &self.counts;
        if c.messages_published > c.published_ever || c.replanned > 0 {
            out.push_str(&format!(
                "  messages published {} for {} tasks; re-planned after an upstream output arrived: {}\n",
                c.messages_published, c.published_ever, c.replanned
            ));
        }
        if self.priority != 0 {
            out.push_str(&format!("  priority {}\n", self.priority));
        }
        if self.budget.is_set() {
            out.push_str(&format!(
                "  budget {}: spent {}, {} tokens\n",
                self.budget.render(),
                dollars(c.cost_usd),
                c.input_tokens + c.output_tokens
            ));
        }
        if c.carried_done + c.carried_failed > 0 {
            out.push_str(&format!(
                "  carried over from an earlier run (no teacher call): {} done, {} failed\n",
                c.carried_done, c.carried_failed
            ));
        }
    }

    /// Rate and ETA, teacher calls, tokens and cost (with the projection), the batch API's share.
    fn render_spend(&self, out: &mut String) {
        out.push_str(&format!("  rate {:.1} tasks/s", self.rate_per_sec));
        match self.eta_secs {
            Some(eta) => out.push_str(&format!("  ETA {:.0} s\n", eta)),
            None => out.push('\n'),
        }
        let c = &self.counts;
        out.push_str(&format!(
            "  teacher calls {}  tokens in {} out {}  cost ${:.4}",
            c.teacher_calls, c.input_tokens, c.output_tokens, c.cost_usd
        ));
        match (self.projected_tokens, self.projected_cost_usd) {
            (Some(t), Some(cost)) if self.done + self.failed < self.planned => {
                out.push_str(&format!("  (projected at the end: {t} tokens, ${cost:.4})\n"))
            }
            _ => out.push('\n'),
        }
        if let Some(b) = &self.batches {
            let parts: Vec<String> = b
                .by_state
                .iter()
                .map(|s| format!("{} {} ({} lines, {})", s.state, s.batches, s.lines, dollars(s.usd)))
                .collect();
            out.push_str(&format!(
                "  batch API: {} tasks in a batch now, {} done by batch answers, {} by live calls; batches: {}\n",
                b.batched_now,
                b.done_by_batch,
                b.done_live,
                if parts.is_empty() { "none yet".to_string() } else { parts.join(", ") }
            ));
            if let Some(end) = b.projected_finish {
                let deadline = b.deadline.map(|d| format!(" (deadline {})", d.to_rfc3339())).unwrap_or_default();
                out.push_str(&format!("  batch work projected to end {}{deadline}\n", end.to_rfc3339()));
            }
        }
    }

    /// Per stage by state, over-long prompts, rejections by code, failed attempts by class.
    fn render_tasks(&self, out: &mut String) {
        let c = &self.counts;
        for (stage, states) in &c.by_stage {
            let parts: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
            out.push_str(&format!("  {stage}: {}\n", parts.join(", ")));
        }
        if c.truncated_prompts > 0 || c.dropped_overlong > 0 {
            out.push_str(&format!(
                "  prompts over the word cap: {} truncated, {} dropped\n",
                c.truncated_prompts, c.dropped_overlong
            ));
        }
        for (stage, codes) in &c.rejections {
            let parts: Vec<String> = codes.iter().map(|(k, n)| format!("{k} {n}")).collect();
            out.push_str(&format!("  rejected {stage} answers: {}\n", parts.join(", ")));
        }
        if !c.errors.is_empty() {
            let parts: Vec<String> = c.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            out.push_str(&format!("  failed attempts by class: {}\n", parts.join(", ")));
        }
    }
}
