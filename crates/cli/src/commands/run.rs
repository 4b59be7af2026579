//! `run create` (plain, `--incremental`, `--dry-run`), `run status`, `run retry-failed`, `run cancel`,
//! `run prune`.
//!
//! Exit codes of `run create --wait`: 0 = completed (also: nothing to redo), 2 = completed with
//! failed tasks (not counting failures an incremental run carried over by configuration).

use super::{connect_broker, connect_store};
use crate::cli::{RetryFailedArgs, RunArg, RunCreateArgs, RunPruneArgs, RunStatusArgs};
use reasonrec_coordinator::status::run_status;
use reasonrec_coordinator::{Incremental, Outbox, PlanOptions, Target, create_incremental_run, plan_run, supervise};
use reasonrec_core::Settings;
use reasonrec_core::stage::RunState;
use std::process::ExitCode;

pub async fn create(settings: &Settings, a: RunCreateArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    store.ensure_migrated().await?;
    let mut settings = settings.clone();
    if let Some(d) = &a.deadline {
        settings.batch.deadline = Some(d.clone());
        settings.validate().map_err(|e| anyhow::anyhow!("--deadline: {e}"))?;
    }
    let settings = &settings;
    let plan = if a.incremental {
        match create_incremental_run(&store, settings, &a.dataset, a.dry_run).await? {
            Incremental::Planned(plan) => *plan,
            // A nightly job retried by its scheduler (or two overlapping crons) must not double
            // a run that is still going: refused, as the coordinator's scheduler skips its tick.
            Incremental::Unfinished(unfinished) => anyhow::bail!(
                "run {unfinished} of dataset {:?} is not finished; an incremental run now would double it \
                 (wait for it, or cancel it with `reasonrec run cancel {unfinished}`)",
                a.dataset
            ),
        }
    } else {
        plan_run(&store, settings, &a.dataset, PlanOptions { incremental: false, dry_run: a.dry_run }).await?
    };
    super::lifecycle::apply_create_options(&store, &plan, &a).await?;
    if a.dry_run {
        if a.json {
            println!("{}", serde_json::json!({ "plan": plan }));
        } else {
            println!(
                "would plan {} tasks from dataset {:?} v{} ({} users, {} skipped for short history), {} of them to work",
                plan.tasks,
                plan.dataset,
                plan.dataset_version,
                plan.users_seen,
                plan.skipped_users,
                plan.to_work()
            );
            print!("{}", plan.render_regeneration());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !a.json {
        println!(
            "run {} planned: {} tasks from dataset {:?} v{} ({} users, {} skipped for short history)",
            plan.run_id, plan.tasks, plan.dataset, plan.dataset_version, plan.users_seen, plan.skipped_users
        );
        print!("{}", plan.render_regeneration());
    }
    // Carried-over failures (`regenerate.redo_failed = false`) were decided, not suffered: they
    // do not make the exit code 2.
    let kept_failed = plan.regeneration.as_ref().map_or(0, |r| r.kept_failed.values().sum::<u64>()) as i64;
    let nothing_to_do = a.incremental && plan.to_work() == 0;
    if nothing_to_do && !a.json {
        println!("nothing to redo: every task was carried over; run {} is completed", plan.run_id);
    }
    let mut published = 0;
    let mut final_state = None;
    if !a.no_publish && !nothing_to_do {
        let broker = connect_broker(settings, "reasonrec-coordinator").await?;
        let outbox = Outbox::configured(store.clone(), &broker, &settings.coordinator).await?;
        published = outbox.pump(plan.run_id).await?.published;
        if !a.json {
            println!("published {published} tasks");
        }
        broker.close().await;
        if a.wait {
            let stop = crate::signals::shutdown_token();
            final_state = supervise(&store, settings, Target::Run(plan.run_id), stop).await?;
        }
    }
    let status = run_status(&store, plan.run_id).await?;
    if a.json {
        println!("{}", serde_json::json!({"plan": plan, "published": published, "status": status}));
    } else if final_state.is_some() {
        print!("{}", status.render());
    }
    Ok(if final_state.is_some() && status.failed > kept_failed { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

pub async fn status(settings: &Settings, a: RunStatusArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    let run_id = match a.run {
        Some(id) => id,
        None => store.runs().latest().await?,
    };
    if a.watch {
        return watch(&store, run_id).await;
    }
    let status = run_status(&store, run_id).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// `run status --watch`: redraws progress bars per stage every 2 s until the run is finished
/// (or Ctrl-C).
async fn watch(store: &reasonrec_store::Store, run_id: uuid::Uuid) -> anyhow::Result<ExitCode> {
    let stop = crate::signals::shutdown_token();
    loop {
        let status = run_status(store, run_id).await?;
        // Clear the screen and go home, then draw.
        print!("\x1b[2J\x1b[H{}", status.render_bars(40));
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if matches!(status.state, RunState::Completed | RunState::Cancelled) {
            return Ok(if status.failed > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS });
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}

pub async fn retry_failed(settings: &Settings, a: RetryFailedArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    super::lifecycle::refuse_if_snapshotted(&store, a.run, "reopened to retry failed tasks").await?;
    let n = store.runs().retry_failed(a.run).await?;
    println!("run {}: {n} failed tasks put back", a.run);
    if a.wait && n > 0 {
        let stop = crate::signals::shutdown_token();
        supervise(&store, settings, Target::Run(a.run), stop).await?;
        let status = run_status(&store, a.run).await?;
        print!("{}", status.render());
        return Ok(if status.failed > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS });
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(settings: &Settings, a: RunArg) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    super::lifecycle::refuse_if_snapshotted(&store, a.run, "cancelled").await?;
    let n = store.runs().cancel(a.run).await?;
    println!("run {} cancelled: {n} unfinished tasks cancelled", a.run);
    Ok(ExitCode::SUCCESS)
}

pub async fn prune(settings: &Settings, a: RunPruneArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    store.ensure_migrated().await?;
    let report = reasonrec_coordinator::prune(&store, &settings.retention, a.dry_run).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if a.dry_run { "would prune" } else { "pruned" };
    println!("{verb} {} runs", report.runs.len());
    for run in &report.runs {
        println!("  {run}");
    }
    if !a.dry_run {
        println!(
            "deleted {} task rows, {} edges, {} ledger outputs, {} interactions",
            report.tasks_deleted, report.edges_deleted, report.outputs_deleted, report.interactions_deleted
        );
        println!("corpus tables: {} MB -> {} MB", report.bytes_before / 1_000_000, report.bytes_after / 1_000_000);
    }
    for (name, version) in &report.dataset_versions {
        println!("  dataset {name:?} v{version}: rows {}", if a.dry_run { "would go" } else { "deleted" });
    }
    Ok(ExitCode::SUCCESS)
}
