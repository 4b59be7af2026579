//! The plan report for people (`run create`, `run create --dry-run`): tasks per stage, what an
//! incremental run carried over, why the rest is stale, and what the stale tasks will cost.

use crate::run::RunPlan;
use reasonrec_core::stage::Stage;
use std::fmt::Write;

impl RunPlan {
    /// Several lines, each ending in a newline; empty for a plain (not incremental, not dry) run.
    pub fn render_regeneration(&self) -> String {
        let mut out = String::new();
        let Some(r) = &self.regeneration else { return out };
        if self.dry_run {
            out.push_str("dry run: nothing was written\n");
        }
        match (r.previous_run, r.previous_dataset_version) {
            (Some(run), v) => {
                let v = v.map(|v| format!(" v{v}")).unwrap_or_default();
                let _ = writeln!(out, "compared with run {run} (dataset {:?}{v})", self.dataset);
            }
            (None, _) if r.incremental => {
                let _ = writeln!(out, "no completed run of dataset {:?} yet: every task is new", self.dataset);
            }
            (None, _) => {
                let _ = writeln!(out, "not incremental: every task is new");
            }
        }
        let _ = writeln!(out, "  {:<14}{:>9}{:>9}{:>9}  stale by reason", "stage", "planned", "reused", "stale");
        let stages = Stage::ALL.iter().filter_map(|s| self.by_stage.get_key_value(s.as_str()));
        for (stage, planned) in stages {
            let reasons =
                r.stale.get(stage).map(|m| m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "));
            let _ = writeln!(
                out,
                "  {:<14}{:>9}{:>9}{:>9}  {}",
                stage,
                planned,
                r.reused.get(stage).copied().unwrap_or(0),
                r.stale_in(stage),
                reasons.unwrap_or_default()
            );
        }
        let list = |m: &std::collections::BTreeMap<String, u64>| {
            m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
        };
        if !r.kept_failed.is_empty() {
            let _ = writeln!(out, "  kept failed (regenerate.redo_failed = false): {}", list(&r.kept_failed));
        }
        if !r.kept_other_teacher.is_empty() {
            let _ = writeln!(
                out,
                "  reused although made by another teacher (regenerate.redo_other_teacher = false): {}",
                list(&r.kept_other_teacher)
            );
        }
        if let Some(e) = self.estimate.as_ref().filter(|e| e.tasks > 0) {
            let _ = writeln!(
                out,
                "estimate for {} stale tasks: {:.0} teacher calls, {} input + {} output tokens, ${:.4} \
                 (at ${}/{} per million tokens in/out, endpoint prices weighted by weight)",
                e.tasks,
                e.calls,
                e.input_tokens,
                e.output_tokens,
                e.cost_usd,
                e.price_input_per_mtok,
                e.price_output_per_mtok
            );
            for (stage, s) in Stage::ALL.iter().filter_map(|s| e.by_stage.get_key_value(s.as_str())) {
                let _ = writeln!(
                    out,
                    "  {stage}: {} tasks, {} + {} tokens, ${:.4}; {}",
                    s.tasks, s.input_tokens, s.output_tokens, s.cost_usd, s.basis
                );
            }
        }
        out
    }
}
