//! `run list`, `run pause`, `run resume`, `run budget`, and what `run create` stores besides the
//! plan (priority, budget).

use super::connect_store;
use crate::cli::{RunArg, RunBudgetArgs, RunCreateArgs, RunListArgs, RunPauseArgs};
use reasonrec_coordinator::RunPlan;
use reasonrec_core::Settings;
use reasonrec_core::terminal::terminal_safe;
use reasonrec_store::Store;
use reasonrec_store::lifecycle::{Budget, PauseOutcome, ResumeOutcome, RunListing, dollars};
use std::process::ExitCode;

/// Stores `run create`'s priority and budget on the planned run, before anything is published
/// by this command. (A coordinator already serving may publish a first page in between; the
/// budget is checked before each later pass.) Incremental runs were planned at
/// [`reasonrec_coordinator::lifecycle::INCREMENTAL_PRIORITY`]; `--priority` overrides it.
pub async fn apply_create_options(store: &Store, plan: &RunPlan, a: &RunCreateArgs) -> anyhow::Result<()> {
    if plan.dry_run {
        return Ok(());
    }
    if let Some(priority) = a.priority {
        store.lifecycle().set_priority(plan.run_id, priority).await?;
    }
    let budget = Budget { usd: a.budget_usd, tokens: a.budget_tokens };
    if budget.is_set() {
        store.lifecycle().set_budget(plan.run_id, &budget).await?;
    }
    Ok(())
}

/// Refuses to change a snapshotted run's state (`run cancel`, `run retry-failed`), saying why.
/// The database refuses it anyway (migration 0010's trigger); this says it plainly first.
pub async fn refuse_if_snapshotted(store: &Store, run: uuid::Uuid, what: &str) -> anyhow::Result<()> {
    let names = store.lifecycle().snapshots_of_run(run).await?;
    if !names.is_empty() {
        anyhow::bail!("run {run} is snapshotted ({}): its corpus is frozen, so it cannot be {what}", names.join(", "));
    }
    Ok(())
}

pub async fn list(settings: &Settings, a: RunListArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    let runs = store.lifecycle().list_runs(a.limit.max(1)).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "runs": runs }))?);
    } else {
        print!("{}", render_list(&runs));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per run, then the pause reasons.
pub fn render_list(runs: &[RunListing]) -> String {
    if runs.is_empty() {
        return "no run yet (run `reasonrec run create`)\n".into();
    }
    let mut out = format!(
        "{:<36}  {:<20}  {:<9}  {:>4}  {:<16}  {:>19}  {:>10}  {}\n",
        "run", "dataset", "state", "prio", "created", "done/failed/total", "cost", "budget"
    );
    for r in runs {
        let dataset = format!("{} v{}", terminal_safe(&r.dataset), r.dataset_version);
        let progress = format!("{}/{}/{}", r.done, r.failed, r.total);
        out.push_str(&format!(
            "{:<36}  {:<20}  {:<9}  {:>4}  {:<16}  {:>19}  {:>10}  {}\n",
            r.run_id,
            dataset,
            r.state,
            r.priority,
            r.created_at.format("%Y-%m-%d %H:%M"),
            progress,
            dollars(r.spend.cost_usd),
            r.budget.render(),
        ));
        if let Some(reason) = &r.paused_reason {
            out.push_str(&format!("  └ paused: {}\n", terminal_safe(reason)));
        }
    }
    out
}

pub async fn pause(settings: &Settings, a: RunPauseArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    match store.lifecycle().pause(a.run, &a.reason).await? {
        PauseOutcome::Paused => {
            println!("run {} paused: nothing more is published; messages already queued are still worked", a.run)
        }
        PauseOutcome::AlreadyPaused => println!("run {} was already paused", a.run),
        PauseOutcome::NotRunning { state } => {
            anyhow::bail!("run {} is {state}: only a running run can be paused", a.run)
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn resume(settings: &Settings, a: RunArg) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    match store.lifecycle().resume(a.run).await? {
        ResumeOutcome::Resumed => {
            println!("run {} resumed: a running coordinator publishes its tasks again", a.run)
        }
        ResumeOutcome::NotPaused { state } => anyhow::bail!("run {} is {state}, not paused", a.run),
        ResumeOutcome::OverBudget { reason } => anyhow::bail!(
            "run {} stays paused: {reason}; raise the budget first (`reasonrec run budget {} --usd AMOUNT` \
             or `--tokens N`, or `--clear`)",
            a.run,
            a.run
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn budget(settings: &Settings, a: RunBudgetArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    let current = store.lifecycle().get(a.run).await?;
    let budget = if a.clear {
        Budget::default()
    } else {
        Budget { usd: a.usd.or(current.budget.usd), tokens: a.tokens.or(current.budget.tokens) }
    };
    store.lifecycle().set_budget(a.run, &budget).await?;
    let spend = store.lifecycle().spend(a.run).await?;
    println!("run {}: budget {} (spent {}, {} tokens)", a.run, budget.render(), dollars(spend.cost_usd), spend.tokens);
    if current.state == reasonrec_core::RunState::Paused {
        match budget.reached(&spend) {
            Some(reason) => println!("  still {reason}: `run resume` would be refused"),
            None => println!("  the run is paused: `reasonrec run resume {}` reopens it", a.run),
        }
    }
    Ok(ExitCode::SUCCESS)
}
