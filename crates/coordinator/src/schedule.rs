//! Scheduled regeneration: cron jobs that create incremental runs. Only the leading
//! coordinator runs the scheduler (see [`crate::leader`]), so replicas never double a tick;
//! a job whose dataset still has an unfinished run skips the tick instead of piling up runs
//! (a run whose plan died is failed first: [`crate::run::unfinished_run`]).

use crate::error::CoordinatorError;
use crate::run::{Incremental, create_incremental_run};
use chrono::{DateTime, Utc};
use croner::Cron;
use reasonrec_core::Settings;
use reasonrec_store::Store;
use std::str::FromStr;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub dataset: String,
    pub cron: Cron,
}

/// What one tick of a job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    Created {
        run_id: uuid::Uuid,
        to_work: u64,
    },
    /// The dataset has a run that is not finished; nothing created.
    Skipped {
        unfinished: uuid::Uuid,
    },
}

/// Parses `schedule.jobs`; errors name the key (`schedule.jobs[1].cron: ...`).
pub fn parse_jobs(settings: &Settings) -> Result<Vec<Job>, CoordinatorError> {
    settings
        .schedule
        .jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let cron = Cron::from_str(&j.cron)
                .map_err(|e| CoordinatorError::Plan(format!("schedule.jobs[{i}].cron: {:?}: {e}", j.cron)))?;
            if j.dataset.is_empty() {
                return Err(CoordinatorError::Plan(format!("schedule.jobs[{i}].dataset: must not be empty")));
            }
            Ok(Job { name: j.name.clone(), dataset: j.dataset.clone(), cron })
        })
        .collect()
}

/// One tick of `job`: an incremental run of its dataset, unless one is unfinished.
pub async fn fire(store: &Store, settings: &Settings, job: &Job) -> Result<Fired, CoordinatorError> {
    let plan = match create_incremental_run(store, settings, &job.dataset, false).await? {
        Incremental::Planned(plan) => *plan,
        Incremental::Unfinished(unfinished) => {
            tracing::info!(job = %job.name, dataset = %job.dataset, %unfinished, "previous run still going; tick skipped");
            return Ok(Fired::Skipped { unfinished });
        }
    };
    tracing::info!(job = %job.name, dataset = %job.dataset, run_id = %plan.run_id, to_work = plan.to_work(), "scheduled incremental run created");
    if settings.retention.on_schedule {
        // The new run is unfinished, so it and the latest completed run are kept.
        crate::lifecycle::prune(store, &settings.retention, false).await?;
    }
    Ok(Fired::Created { run_id: plan.run_id, to_work: plan.to_work() })
}

fn next_after(job: &Job, t: &DateTime<Utc>) -> Option<DateTime<Utc>> {
    job.cron.find_next_occurrence(t, false).ok()
}

/// Fires `jobs` at their times until `stop`. A tick that fails (Postgres away) is logged and
/// the job waits for its next time; the loop itself never stops on a job's error.
pub async fn run_scheduler(store: &Store, settings: &Settings, jobs: &[Job], stop: CancellationToken) {
    if jobs.is_empty() {
        return;
    }
    let mut next: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| next_after(j, &Utc::now())).collect();
    loop {
        let Some(soonest) = next.iter().flatten().min().copied() else { return };
        let wait = (soonest - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = Utc::now();
        for (job, at) in jobs.iter().zip(next.iter_mut()) {
            if at.is_some_and(|t| t <= now) {
                if let Err(e) = fire(store, settings, job).await {
                    tracing::error!(job = %job.name, dataset = %job.dataset, error = %e, "scheduled run not created");
                }
                *at = next_after(job, &now);
            }
        }
    }
}
