//! What the stale tasks of a planned (or dry-run) run will cost: teacher calls, tokens, dollars.
//!
//! Per stage, from the dataset's previous completed run when it has outputs of that stage:
//! average input and output tokens of those outputs, times the calls per task it asked (retries
//! and re-asks included; 1 when it asked none). Otherwise a heuristic: the template's size in
//! characters / 4 plus 40 tokens per item the prompt mentions, and `max_tokens` out (an upper
//! bound). Dollars: the endpoints' `price_*_per_mtok`, averaged by endpoint weight.

use crate::fingerprint::TemplateId;
use reasonrec_core::settings::Settings;
use reasonrec_core::stage::Stage;
use reasonrec_store::incremental::StageTokens;
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Tokens per item a prompt mentions, in the heuristic (a title, genres or a short profile).
pub const TOKENS_PER_ITEM: f64 = 40.0;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageEstimate {
    pub tasks: u64,
    pub calls: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// Where the per-task numbers come from.
    pub basis: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Estimate {
    pub by_stage: BTreeMap<String, StageEstimate>,
    pub tasks: u64,
    pub calls: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// Dollars per million input and output tokens used (weighted by endpoint weight).
    pub price_input_per_mtok: f64,
    pub price_output_per_mtok: f64,
}

/// What the stale tasks of one stage look like.
#[derive(Debug, Clone, Copy, Default)]
pub struct StaleStage {
    pub tasks: u64,
    /// Items their prompts mention, summed.
    pub items: u64,
}

pub fn estimate(
    stale: &BTreeMap<Stage, StaleStage>,
    previous: Option<(Uuid, &[StageTokens])>,
    templates: &BTreeMap<Stage, TemplateId>,
    settings: &Settings,
) -> Estimate {
    let eps = &settings.teacher.endpoints;
    let weight: f64 = eps.iter().map(|e| f64::from(e.weight)).sum::<f64>().max(1.0);
    let avg = |f: &dyn Fn(&reasonrec_core::settings::EndpointSettings) -> f64| {
        eps.iter().map(|e| f64::from(e.weight) * f(e)).sum::<f64>() / weight
    };
    let (p_in, p_out) = (avg(&|e| e.price_input_per_mtok), avg(&|e| e.price_output_per_mtok));
    let max_tokens = avg(&|e| f64::from(e.params.max_tokens));
    let mut out = Estimate { price_input_per_mtok: p_in, price_output_per_mtok: p_out, ..Estimate::default() };
    for (&stage, s) in stale {
        if s.tasks == 0 {
            continue;
        }
        let prev = previous
            .and_then(|(run, rows)| rows.iter().find(|r| r.stage == stage.as_str() && r.outputs > 0).map(|r| (run, r)));
        let n = s.tasks as f64;
        let (calls, tin, tout, basis) = match prev {
            Some((run, r)) => {
                let per = r.calls_per_task.unwrap_or(1.0).max(1.0);
                (
                    n * per,
                    n * per * r.avg_input_tokens,
                    n * per * r.avg_output_tokens,
                    format!(
                        "run {run}: {:.0} in / {:.0} out tokens per output ({} outputs), {per:.2} calls per task",
                        r.avg_input_tokens, r.avg_output_tokens, r.outputs
                    ),
                )
            }
            None => {
                let chars = templates
                    .get(&stage)
                    .and_then(|t| std::fs::metadata(settings.prompts.dir.join(format!("{}.j2", t.name))).ok())
                    .map_or(0, |m| m.len());
                let tin = n * chars as f64 / 4.0 + s.items as f64 * TOKENS_PER_ITEM;
                (
                    n,
                    tin,
                    n * max_tokens,
                    format!(
                        "heuristic: template chars / 4 + {TOKENS_PER_ITEM} tokens per item; max_tokens out (upper bound)"
                    ),
                )
            }
        };
        let cost = (tin * p_in + tout * p_out) / 1e6;
        out.tasks += s.tasks;
        out.calls += calls;
        out.input_tokens += tin.round() as u64;
        out.output_tokens += tout.round() as u64;
        out.cost_usd += cost;
        out.by_stage.insert(
            stage.as_str().to_string(),
            StageEstimate {
                tasks: s.tasks,
                calls,
                input_tokens: tin.round() as u64,
                output_tokens: tout.round() as u64,
                cost_usd: cost,
                basis,
            },
        );
    }
    out
}
