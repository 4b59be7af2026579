//! Run progress for people (`run status`) and machines (`run status --json`).

use crate::error::CoordinatorError;
use reasonrec_core::stage::TaskState;
use reasonrec_store::Store;
use reasonrec_store::runs::RunCounts;
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    pub run_id: Uuid,
    pub state: String,
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
    pub counts: RunCounts,
}

pub async fn run_status(store: &Store, run_id: Uuid) -> Result<RunStatus, CoordinatorError> {
    let state = store.refresh_run_state(run_id).await?;
    let c = store.run_counts(run_id).await?;
    let remaining = c.total - c.done - c.failed - c.state(TaskState::Cancelled);
    let rate = if state == "completed" || c.done_last_minute == 0 {
        if c.elapsed_secs > 0.0 { c.done as f64 / c.elapsed_secs } else { 0.0 }
    } else {
        c.done_last_minute as f64 / 60.0
    };
    let eta_secs = (remaining > 0 && rate > 0.0).then(|| remaining as f64 / rate);
    let finished = c.done + c.failed;
    let scale = (finished > 0).then(|| c.total as f64 / finished as f64);
    let projected_cost_usd = scale.map(|k| c.cost_usd * k);
    let projected_tokens = scale.map(|k| ((c.input_tokens + c.output_tokens) as f64 * k).round() as i64);
    Ok(RunStatus {
        run_id,
        state,
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
        counts: c,
    })
}

impl RunStatus {
    pub fn render(&self) -> String {
        let mut out = format!(
            "run {}  state: {}\n  planned {}  published {}  done {}  failed {}  (waiting {}, ready {})\n",
            self.run_id, self.state, self.planned, self.published, self.done, self.failed, self.waiting, self.ready
        );
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
        out
    }
}
