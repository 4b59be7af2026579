//! Creating a run: snapshot the settings, plan the three-stage task graph in batches as users
//! stream in, then open the run for work.
//!
//! Graph: one item-profile task per item that appears in any window (profile window, history or
//! target); one user-profile task per user with a profile window (depends on its items'
//! profiles); one reasoning task per (user, split, target) (depends on the user's profile and the
//! profiles of its history and target items). Switched-off stages plan no tasks and no edges.

use crate::error::CoordinatorError;
use crate::plan::{PlanParams, Target, plan_user};
use futures::Stream;
use futures::TryStreamExt;
use reasonrec_core::data::Interaction;
use reasonrec_core::inputs::{ItemProfileInput, ReasoningInput, UserProfileInput};
use reasonrec_core::settings::Settings;
use reasonrec_core::stage::Stage;
use reasonrec_store::Store;
use reasonrec_store::StoreError;
use reasonrec_store::runs::NewTask;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
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
    /// Reasoning targets left out to balance labels (`sampling.balance_labels`).
    pub dropped_for_balance: u64,
}

struct Planner<'a> {
    params: PlanParams,
    settings: &'a Settings,
    /// (user, split) targets left out by label balancing.
    dropped: HashSet<(i32, &'static str)>,
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
        let Some(mut up) = plan_user(rows, &self.params) else {
            self.plan.skipped_users += 1;
            return;
        };
        if !self.dropped.is_empty() {
            up.targets.retain(|t| !self.dropped.contains(&(user, t.split)));
            if up.targets.is_empty() {
                return;
            }
        }
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

/// A dataset's interactions, one user at a time (they stream ordered by user, time, item).
struct UserGroups<'a> {
    stream: Pin<Box<dyn Stream<Item = Result<Interaction, StoreError>> + Send + 'a>>,
    pending: Option<Interaction>,
    users: u64,
    max_users: u64,
}

impl<'a> UserGroups<'a> {
    fn new(store: &'a Store, dataset_id: i64, max_users: usize) -> Self {
        Self {
            stream: Box::pin(store.stream_interactions(dataset_id)),
            pending: None,
            users: 0,
            max_users: max_users as u64,
        }
    }

    async fn next_user(&mut self) -> Result<Option<Vec<Interaction>>, StoreError> {
        if self.max_users > 0 && self.users >= self.max_users {
            return Ok(None);
        }
        let mut rows: Vec<Interaction> = self.pending.take().into_iter().collect();
        while let Some(r) = self.stream.try_next().await? {
            if rows.first().is_some_and(|f| f.user_id != r.user_id) {
                self.pending = Some(r);
                break;
            }
            rows.push(r);
        }
        if rows.is_empty() {
            return Ok(None);
        }
        self.users += 1;
        Ok(Some(rows))
    }
}

/// Deterministic order for label balancing.
fn mix(seed: u64, user: i32, split: &str) -> u64 {
    let mut x = seed ^ (u64::from(user as u32) << 8) ^ split.len() as u64 ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// First pass for `balance_labels`: which (user, split) targets of the majority label to leave
/// out so each split has as many likes as dislikes.
async fn balance(
    store: &Store,
    dataset_id: i64,
    params: &PlanParams,
    s: &Settings,
) -> Result<HashSet<(i32, &'static str)>, CoordinatorError> {
    let mut by_split: HashMap<&'static str, (Vec<i32>, Vec<i32>)> = HashMap::new();
    let mut users = UserGroups::new(store, dataset_id, s.sampling.max_users);
    while let Some(rows) = users.next_user().await? {
        let user = rows[0].user_id;
        for t in plan_user(&rows, params).map(|u| u.targets).unwrap_or_default() {
            let e = by_split.entry(t.split).or_default();
            if t.label { e.0.push(user) } else { e.1.push(user) }
        }
    }
    let mut dropped = HashSet::new();
    for (split, (likes, dislikes)) in by_split {
        let keep = likes.len().min(dislikes.len());
        for mut group in [likes, dislikes] {
            group.sort_by_key(|&u| mix(s.sampling.seed, u, split));
            dropped.extend(group.into_iter().skip(keep).map(|u| (u, split)));
        }
    }
    Ok(dropped)
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
    let params = PlanParams::new(&settings.sampling, history_len, settings.stages.user_profile);
    let dropped =
        if settings.sampling.balance_labels { balance(store, ds.id, &params, settings).await? } else { HashSet::new() };
    let mut planner = Planner {
        params,
        settings,
        plan: RunPlan {
            run_id,
            dataset: ds.name.clone(),
            dataset_version: ds.version,
            users_seen: 0,
            skipped_users: 0,
            tasks: 0,
            by_stage: BTreeMap::new(),
            labels: BTreeMap::new(),
            dropped_for_balance: dropped.len() as u64,
        },
        dropped,
        item_tasks: HashMap::new(),
        batch: Vec::with_capacity(batch_size + 64),
    };
    let mut users = UserGroups::new(store, ds.id, settings.sampling.max_users);
    while let Some(rows) = users.next_user().await? {
        planner.user(&rows);
        if planner.batch.len() >= batch_size {
            planner.plan.tasks += store.insert_tasks(run_id, &planner.batch).await?;
            planner.batch.clear();
        }
    }
    planner.plan.tasks += store.insert_tasks(run_id, &planner.batch).await?;
    store.start_run(run_id).await?;
    let plan = planner.plan;
    tracing::info!(%run_id, dataset = %ds.name, version = ds.version, tasks = plan.tasks, skipped_users = plan.skipped_users, "run planned");
    Ok(plan)
}
