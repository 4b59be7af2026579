//! Creating a run: snapshot the settings, plan tasks in batches, then open it for work.

use crate::error::CoordinatorError;
use crate::plan::plan_user;
use futures::TryStreamExt;
use reasonrec_core::data::Interaction;
use reasonrec_core::settings::Settings;
use reasonrec_store::Store;
use reasonrec_store::runs::NewTask;
use uuid::Uuid;

/// What `create_run` planned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunPlan {
    pub run_id: Uuid,
    pub dataset: String,
    pub dataset_version: i32,
    pub users_seen: u64,
    pub tasks: u64,
    pub skipped_users: u64,
}

/// Plans a run of `dataset` (latest version). Tasks are written in batches as users stream in;
/// nothing is published here (see [`crate::Outbox`]).
pub async fn create_run(store: &Store, settings: &Settings, dataset: &str) -> Result<RunPlan, CoordinatorError> {
    let ds = store.find_dataset(dataset, None).await?;
    let snapshot = serde_json::json!({
        "sampling": settings.sampling,
        "teacher": settings.teacher.endpoints.iter().map(|e| serde_json::json!({
            "name": e.name, "model": e.model, "params": e.params,
        })).collect::<Vec<_>>(),
        "dataset": {"name": ds.name, "version": ds.version, "content_hash": ds.content_hash},
    });
    let run_id = store.create_run(ds.id, &snapshot).await?;
    let s = &settings.sampling;
    let batch_size = settings.coordinator.plan_batch.max(1);
    let mut plan = RunPlan {
        run_id,
        dataset: ds.name.clone(),
        dataset_version: ds.version,
        users_seen: 0,
        tasks: 0,
        skipped_users: 0,
    };
    let mut batch: Vec<NewTask> = Vec::with_capacity(batch_size);
    let mut current: Vec<Interaction> = Vec::new();
    let flush_user = |rows: &mut Vec<Interaction>, batch: &mut Vec<NewTask>, plan: &mut RunPlan| {
        if let Some(first) = rows.first() {
            plan.users_seen += 1;
            match plan_user(first.user_id, rows, s) {
                Some(t) => batch.push(t),
                None => plan.skipped_users += 1,
            }
        }
        rows.clear();
    };
    {
        let mut stream = std::pin::pin!(store.stream_interactions(ds.id));
        while let Some(row) = stream.try_next().await? {
            if current.first().is_some_and(|f| f.user_id != row.user_id) {
                if s.max_users > 0 && plan.users_seen as usize >= s.max_users {
                    current.clear();
                    break;
                }
                flush_user(&mut current, &mut batch, &mut plan);
                if batch.len() >= batch_size {
                    plan.tasks += store.insert_tasks(run_id, &batch).await?;
                    batch.clear();
                }
            }
            current.push(row);
        }
    }
    if !(s.max_users > 0 && plan.users_seen as usize >= s.max_users) {
        flush_user(&mut current, &mut batch, &mut plan);
    }
    plan.tasks += store.insert_tasks(run_id, &batch).await?;
    store.start_run(run_id).await?;
    tracing::info!(%run_id, dataset = %ds.name, version = ds.version, tasks = plan.tasks, skipped_users = plan.skipped_users, "run planned");
    Ok(plan)
}
