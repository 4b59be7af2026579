//! `run create`, `run status`, `coordinator`.

use super::{connect_broker, connect_store};
use crate::cli::{RetryFailedArgs, RunArg, RunCreateArgs, RunStatusArgs};
use reasonrec_coordinator::status::run_status;
use reasonrec_coordinator::{Outbox, Target, create_run, supervise};
use reasonrec_core::Settings;
use std::process::ExitCode;

pub async fn create(settings: &Settings, a: RunCreateArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    store.ensure_migrated().await?;
    let plan = create_run(&store, settings, &a.dataset).await?;
    if !a.json {
        println!(
            "run {} planned: {} tasks from dataset {:?} v{} ({} users, {} skipped for short history)",
            plan.run_id, plan.tasks, plan.dataset, plan.dataset_version, plan.users_seen, plan.skipped_users
        );
    }
    let mut published = 0;
    let mut final_state = None;
    if !a.no_publish {
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
    Ok(if final_state.is_some() && status.failed > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

pub async fn status(settings: &Settings, a: RunStatusArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    let run_id = match a.run {
        Some(id) => id,
        None => store.latest_run().await?,
    };
    let status = run_status(&store, run_id).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn coordinator(settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    store.migrate().await?;
    let stop = crate::signals::shutdown_token();
    tracing::info!("coordinator serving running runs");
    supervise(&store, settings, Target::AllRuns, stop).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn retry_failed(settings: &Settings, a: RetryFailedArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    let n = store.retry_failed(a.run).await?;
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
    let n = store.cancel_run(a.run).await?;
    println!("run {} cancelled: {n} unfinished tasks cancelled", a.run);
    Ok(ExitCode::SUCCESS)
}
