//! Creating a run: snapshot the settings, plan the three-stage task graph in batches as users
//! stream in, then open the run for work.
//!
//! Graph: one item-profile task per item that appears in any window (profile window, history or
//! target); one user-profile task per user with a profile window (depends on its items'
//! profiles); one reasoning task per (user, split, target) (depends on the user's profile and the
//! profiles of its history and target items). Switched-off stages plan no tasks and no edges.

use crate::error::CoordinatorError;
use crate::plan::{PlanParams, Target, plan_user};
use futures::TryStreamExt;
use reasonrec_core::data::Interaction;
use reasonrec_core::inputs::{ItemProfileInput, ReasoningInput, UserProfileInput};
use reasonrec_core::settings::Settings;
use reasonrec_core::stage::Stage;
use reasonrec_store::Store;
use reasonrec_store::runs::NewTask;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// What `create_run` planned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunPlan {
    pub run_id: Uuid,
    pub dataset: String,
    pub dataset_version: i32,
    pub users_seen: u64,
    pub skipped_users: u64,
    pub tasks: u64,
    /// stage -> tasks planned
    pub by_stage: BTreeMap<String, u64>,
    /// split -> (likes, dislikes) among reasoning tasks
    pub labels: BTreeMap<String, (u64, u64)>,
}

struct Planner<'a> {
    params: PlanParams,
    settings: &'a Settings,
    item_tasks: HashMap<i32, Uuid>,
    batch: Vec<NewTask>,
    plan: RunPlan,
}

impl Planner<'_> {
    fn item_task(&mut self, item: i32) -> Option<Uuid> {
        if !self.settings.stages.item_profile {
            return None;
        }
        if let Some(&id) = self.item_tasks.get(&item) {
            return Some(id);
        }
        let id = Uuid::now_v7();
        self.item_tasks.insert(item, id);
        self.push(NewTask {
            id,
            stage: Stage::ItemProfile,
            subject: format!("i{item}"),
            user_id: None,
            item_id: Some(item),
            split: None,
            label: None,
            input: serde_json::to_value(ItemProfileInput { item }).unwrap_or_default(),
            deps: Vec::new(),
        });
        Some(id)
    }

    fn push(&mut self, task: NewTask) {
        *self.plan.by_stage.entry(task.stage.to_string()).or_default() += 1;
        self.batch.push(task);
    }

    fn user(&mut self, rows: &[Interaction]) {
        let Some(first) = rows.first() else { return };
        let user = first.user_id;
        self.plan.users_seen += 1;
        let Some(up) = plan_user(rows, &self.params) else {
            self.plan.skipped_users += 1;
            return;
        };
        let mut profile_task = None;
        if self.settings.stages.user_profile && !up.profile_window.is_empty() {
            let mut deps: Vec<Uuid> = up.profile_window.iter().filter_map(|h| self.item_task(h.item)).collect();
            dedup(&mut deps);
            let id = Uuid::now_v7();
            profile_task = Some(id);
            let input = UserProfileInput { user, window: up.profile_window.clone() };
            self.push(NewTask {
                id,
                stage: Stage::UserProfile,
                subject: format!("u{user}"),
                user_id: Some(user),
                item_id: None,
                split: None,
                label: None,
                input: serde_json::to_value(input).unwrap_or_default(),
                deps,
            });
        }
        for t in up.targets {
            self.reasoning(user, t, profile_task);
        }
    }

    fn reasoning(&mut self, user: i32, t: Target, profile_task: Option<Uuid>) {
        let mut deps: Vec<Uuid> = profile_task.into_iter().collect();
        for item in t.history.iter().map(|h| h.item).chain(std::iter::once(t.item)) {
            deps.extend(self.item_task(item));
        }
        dedup(&mut deps);
        let counts = self.plan.labels.entry(t.split.to_string()).or_default();
        if t.label {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
        let input = ReasoningInput { user, target: t.item, rating: t.rating, history: t.history };
        self.push(NewTask {
            id: Uuid::now_v7(),
            stage: Stage::Reasoning,
            subject: format!("u{user}:i{}:{}", t.item, t.split),
            user_id: Some(user),
            item_id: Some(t.item),
            split: Some(t.split.to_string()),
            label: Some(t.label),
            input: serde_json::to_value(input).unwrap_or_default(),
            deps,
        });
    }
}

fn dedup(ids: &mut Vec<Uuid>) {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.retain(|id| seen.insert(*id));
}

/// Plans a run of `dataset` (latest version). Tasks are written in batches as users stream in;
/// nothing is published here (see [`crate::Outbox`]): the run opens for publishing only once
/// every task and edge is written.
pub async fn create_run(store: &Store, settings: &Settings, dataset: &str) -> Result<RunPlan, CoordinatorError> {
    let ds = store.find_dataset(dataset, None).await?;
    let family = Store::parse_family(&ds.family)?;
    let history_len = settings.sampling.history_len_for(family);
    let snapshot = serde_json::json!({
        "sampling": settings.sampling,
        "history_len": history_len,
        "stages": settings.stages,
        "teacher": settings.teacher.endpoints.iter().map(|e| serde_json::json!({
            "name": e.name, "model": e.model, "params": e.params,
        })).collect::<Vec<_>>(),
        "dataset": {"name": ds.name, "version": ds.version, "content_hash": ds.content_hash, "family": ds.family},
    });
    let run_id = store.create_run(ds.id, &snapshot).await?;
    let batch_size = settings.coordinator.plan_batch.max(1);
    let mut planner = Planner {
        params: PlanParams::new(&settings.sampling, history_len, settings.stages.user_profile),
        settings,
        item_tasks: HashMap::new(),
        batch: Vec::with_capacity(batch_size + 64),
        plan: RunPlan {
            run_id,
            dataset: ds.name.clone(),
            dataset_version: ds.version,
            users_seen: 0,
            skipped_users: 0,
            tasks: 0,
            by_stage: BTreeMap::new(),
            labels: BTreeMap::new(),
        },
    };
    let max_users = settings.sampling.max_users as u64;
    let mut current: Vec<Interaction> = Vec::new();
    {
        let mut stream = std::pin::pin!(store.stream_interactions(ds.id));
        while let Some(row) = stream.try_next().await? {
            if current.first().is_some_and(|f| f.user_id != row.user_id) {
                planner.user(&current);
                current.clear();
                if planner.batch.len() >= batch_size {
                    planner.plan.tasks += store.insert_tasks(run_id, &planner.batch).await?;
                    planner.batch.clear();
                }
                if max_users > 0 && planner.plan.users_seen >= max_users {
                    break;
                }
            }
            current.push(row);
        }
    }
    if max_users == 0 || planner.plan.users_seen < max_users {
        planner.user(&current);
    }
    planner.plan.tasks += store.insert_tasks(run_id, &planner.batch).await?;
    store.start_run(run_id).await?;
    let plan = planner.plan;
    tracing::info!(%run_id, dataset = %ds.name, version = ds.version, tasks = plan.tasks, skipped_users = plan.skipped_users, "run planned");
    Ok(plan)
}
