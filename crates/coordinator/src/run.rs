//! Creating a run: snapshot the settings, plan the three-stage task graph in batches as users
//! stream in, then open the run for work.
//!
//! Graph: one item-profile task per item that appears in any window (profile window, history or
//! target); one user-profile task per user with a profile window (depends on its items'
//! profiles); one reasoning task per (user, split, target) (depends on the user's profile and the
//! profiles of its history and target items). Switched-off stages plan no tasks and no edges.
//!
//! Every task gets a fingerprint ([`crate::fingerprint`]). An incremental run
//! ([`PlanOptions::incremental`]) plans the same full graph and carries over, done and without a
//! message, every task whose previous version is still good ([`crate::regenerate`]): the run is a
//! complete corpus and only stale tasks reach the queue. A dry run plans in memory only.

use crate::error::CoordinatorError;
use crate::estimate::{Estimate, StaleStage, estimate};
use crate::fingerprint::{Digest32, Entry, Fingerprinter, TemplateId, item_digest};
use crate::plan::{PlanParams, Target, plan_user};
use crate::regenerate::{Decision, Previous, Reason, Regeneration, TaskKey};
use futures::Stream;
use futures::TryStreamExt;
use reasonrec_core::PromptLibrary;
use reasonrec_core::data::{Family, Interaction};
use reasonrec_core::inputs::{HistoryEntry, ItemProfileInput, ReasoningInput, UserProfileInput};
use reasonrec_core::key::KEY_SALT_FIELD;
use reasonrec_core::settings::{RunRoute, Settings};
use reasonrec_core::stage::{Split, Stage};
use reasonrec_store::Store;
use reasonrec_store::StoreError;
use reasonrec_store::datasets::DatasetRow;
use reasonrec_store::planning::PlanningLock;
use reasonrec_store::runs::{Carried, NewTask};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use uuid::Uuid;

/// How `plan_run` plans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Compare with the dataset name's previous completed run (any version) and carry over the
    /// tasks that are not stale.
    pub incremental: bool,
    /// Plan in memory and report; write nothing (no run, no task).
    pub dry_run: bool,
}

/// What `create_run` / `plan_run` planned.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunPlan {
    /// Nil for a dry run.
    pub run_id: Uuid,
    pub dry_run: bool,
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
    /// Incremental and dry runs: what is carried over and why the rest is stale.
    pub regeneration: Option<Regeneration>,
    /// Incremental and dry runs: calls, tokens and dollars of the stale tasks.
    pub estimate: Option<Estimate>,
}

impl RunPlan {
    /// Tasks that go through the queue: the stale ones of an incremental run, else all.
    pub fn to_work(&self) -> u64 {
        self.regeneration.as_ref().map_or(self.tasks, Regeneration::stale_total)
    }
}

/// What fingerprints are computed from: the run's templates and the dataset's content digests.
struct Content {
    fp: Fingerprinter,
    /// By dense item id.
    items: Vec<Option<Digest32>>,
    /// Items with reviews (Amazon): digest of their reviews.
    reviews: HashMap<i32, Digest32>,
}

impl Content {
    async fn load(store: &Store, ds: &DatasetRow, fp: Fingerprinter, reviews: bool) -> Result<Self, CoordinatorError> {
        let mut items: Vec<Option<Digest32>> = vec![None; ds.n_items.max(0) as usize];
        let mut rows = std::pin::pin!(store.incremental().stream_item_contents(ds.id));
        while let Some((id, title, attrs)) = rows.try_next().await? {
            let Ok(i) = usize::try_from(id) else { continue };
            if i >= items.len() {
                items.resize(i + 1, None);
            }
            items[i] = Some(item_digest(&title, &attrs));
        }
        let reviews = if reviews {
            store
                .incremental()
                .review_digests(ds.id)
                .await?
                .into_iter()
                .filter_map(|(id, d)| Some((id, <[u8; 32]>::try_from(d.as_slice()).ok()?)))
                .collect()
        } else {
            HashMap::new()
        };
        Ok(Self { fp, items, reviews })
    }

    fn item(&self, id: i32) -> Option<&Digest32> {
        self.items.get(usize::try_from(id).ok()?)?.as_ref()
    }

    fn item_profile(&self, item: i32) -> Option<Digest32> {
        Some(self.fp.item_profile(self.item(item)?, self.reviews.get(&item).map(|r| (item, r))))
    }

    /// Fingerprint entries of (item, like flag) with the item-profile tasks of `refs` (same
    /// order); None when a digest is missing.
    fn entries<'a>(&'a self, items: &[(i32, Option<bool>)], refs: &'a [Option<TaskRef>]) -> Option<Vec<Entry<'a>>> {
        items
            .iter()
            .zip(refs)
            .map(|(&(item, liked), r)| {
                let profile = match r {
                    Some(r) => Some(r.fingerprint.as_ref()?),
                    None => None,
                };
                Some(Entry { item: self.item(item)?, liked, profile })
            })
            .collect()
    }
}

/// A planned task others may depend on.
#[derive(Debug, Clone, Copy)]
struct TaskRef {
    id: Uuid,
    fingerprint: Option<Digest32>,
    /// Goes through the queue in this run (not carried over).
    redone: bool,
}

/// Edges to the distinct tasks of `refs`, and how many of them are redone (not finished yet).
fn edges(refs: &[Option<TaskRef>]) -> (Vec<Uuid>, i32) {
    let mut seen = HashSet::with_capacity(refs.len());
    let mut deps = Vec::with_capacity(refs.len());
    let mut pending = 0;
    for r in refs.iter().flatten() {
        if seen.insert(r.id) {
            deps.push(r.id);
            pending += i32::from(r.redone);
        }
    }
    (deps, pending)
}

struct Planner<'a> {
    params: PlanParams,
    settings: &'a Settings,
    /// (user, split) targets left out by label balancing.
    dropped: HashSet<(i32, Split)>,
    item_tasks: HashMap<i32, TaskRef>,
    batch: Vec<NewTask>,
    plan: RunPlan,
    content: Option<Content>,
    previous: Option<Previous>,
    regen: Regeneration,
    stale: BTreeMap<Stage, StaleStage>,
    /// The previous run (carried tasks name it), and the error of a failure kept from it.
    from: Uuid,
    failed_note: String,
}

impl Planner<'_> {
    /// Carry over or redo, counted for the report. `items`: items the prompt mentions.
    fn decide(
        &mut self,
        stage: Stage,
        key: TaskKey,
        fp: Option<&Digest32>,
        upstream_redone: bool,
        items: usize,
    ) -> Decision {
        let d = match &self.previous {
            Some(p) => p.decide(&key, fp, upstream_redone),
            None => Decision::Redo(Reason::New),
        };
        self.regen.count(stage, &d);
        if matches!(d, Decision::Redo(_)) {
            let s = self.stale.entry(stage).or_default();
            s.tasks += 1;
            s.items += items as u64;
        }
        d
    }

    fn carried(&self, d: &Decision) -> Option<Carried> {
        match d {
            Decision::Redo(_) => None,
            Decision::Reuse { output_key, .. } => Some(Carried::Done { from: self.from, output_key: *output_key }),
            Decision::KeepFailed => Some(Carried::Failed { from: self.from, error: self.failed_note.clone() }),
        }
    }

    /// A task redone because its output expired gets a key salt (the new run's id): the same
    /// prompt to the same teacher would otherwise find the expired answer in the ledger.
    fn input(&self, d: &Decision, mut input: serde_json::Value) -> serde_json::Value {
        if *d == Decision::Redo(Reason::Expired)
            && let Some(o) = input.as_object_mut()
        {
            o.insert(KEY_SALT_FIELD.into(), self.plan.run_id.to_string().into());
        }
        input
    }

    fn item_task(&mut self, item: i32) -> Option<TaskRef> {
        if !self.settings.stages.item_profile {
            return None;
        }
        if let Some(&r) = self.item_tasks.get(&item) {
            return Some(r);
        }
        let fingerprint = self.content.as_ref().and_then(|c| c.item_profile(item));
        let d = self.decide(Stage::ItemProfile, TaskKey::item_profile(item), fingerprint.as_ref(), false, 1);
        let r = TaskRef { id: Uuid::now_v7(), fingerprint, redone: matches!(d, Decision::Redo(_)) };
        self.item_tasks.insert(item, r);
        let carried = self.carried(&d);
        self.push(NewTask {
            id: r.id,
            stage: Stage::ItemProfile,
            subject: format!("i{item}"),
            user_id: None,
            item_id: Some(item),
            split: None,
            label: None,
            input: self.input(&d, serde_json::to_value(ItemProfileInput { item }).unwrap_or_default()),
            deps: Vec::new(),
            pending_deps: 0,
            fingerprint,
            carried,
        });
        Some(r)
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
            let refs: Vec<Option<TaskRef>> = up.profile_window.iter().map(|h| self.item_task(h.item)).collect();
            let items: Vec<(i32, Option<bool>)> = up.profile_window.iter().map(|h| (h.item, Some(h.liked))).collect();
            let fingerprint = self.content.as_ref().and_then(|c| Some(c.fp.user_profile(&c.entries(&items, &refs)?)));
            let (deps, pending) = edges(&refs);
            let d = self.decide(
                Stage::UserProfile,
                TaskKey::user_profile(user),
                fingerprint.as_ref(),
                pending > 0,
                items.len(),
            );
            let r = TaskRef { id: Uuid::now_v7(), fingerprint, redone: matches!(d, Decision::Redo(_)) };
            profile_task = Some(r);
            let input = UserProfileInput { user, window: up.profile_window.clone() };
            let input = self.input(&d, serde_json::to_value(input).unwrap_or_default());
            let carried = self.carried(&d);
            self.push(NewTask {
                id: r.id,
                stage: Stage::UserProfile,
                subject: format!("u{user}"),
                user_id: Some(user),
                item_id: None,
                split: None,
                label: None,
                input,
                deps,
                pending_deps: if carried.is_some() { 0 } else { pending },
                fingerprint,
                carried,
            });
        }
        for t in up.targets {
            self.reasoning(user, t, profile_task);
        }
    }

    fn reasoning(&mut self, user: i32, t: Target, profile_task: Option<TaskRef>) {
        let mut items: Vec<(i32, Option<bool>)> =
            t.history.iter().map(|h: &HistoryEntry| (h.item, Some(h.liked))).collect();
        items.push((t.item, None));
        let refs: Vec<Option<TaskRef>> = items.iter().map(|&(item, _)| self.item_task(item)).collect();
        let fingerprint = self.content.as_ref().and_then(|c| {
            let entries = c.entries(&items, &refs)?;
            let (target, history) = entries.split_last()?;
            let profile = match &profile_task {
                Some(p) => Some(p.fingerprint.as_ref()?),
                None => None,
            };
            Some(c.fp.reasoning(t.label, profile, history, target))
        });
        let mut all = Vec::with_capacity(refs.len() + 1);
        all.push(profile_task);
        all.extend(refs);
        let (deps, pending) = edges(&all);
        let key = TaskKey::reasoning(user, t.item, t.split);
        let d = self.decide(Stage::Reasoning, key, fingerprint.as_ref(), pending > 0, items.len());
        let counts = self.plan.labels.entry(t.split.to_string()).or_default();
        if t.label {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
        let carried = self.carried(&d);
        let input = ReasoningInput { user, target: t.item, rating: t.rating, history: t.history };
        let input = serde_json::to_value(input).unwrap_or_default();
        let r = TaskRef { id: Uuid::now_v7(), fingerprint, redone: matches!(d, Decision::Redo(_)) };
        let subject = format!("u{user}:i{}:{}", t.item, t.split);
        let judge = self.settings.stages.judge.then(|| (input.clone(), all.clone()));
        self.push(NewTask {
            id: r.id,
            stage: Stage::Reasoning,
            subject: subject.clone(),
            user_id: Some(user),
            item_id: Some(t.item),
            split: Some(t.split),
            label: Some(t.label),
            input: self.input(&d, input),
            deps,
            pending_deps: if carried.is_some() { 0 } else { pending },
            fingerprint,
            carried,
        });
        if let Some((input, mut upstream)) = judge {
            upstream.push(Some(r));
            let key = TaskKey::judge(user, t.item, t.split);
            let task = NewTask {
                id: Uuid::now_v7(),
                stage: Stage::Judge,
                subject,
                user_id: Some(user),
                item_id: Some(t.item),
                split: Some(t.split),
                label: Some(t.label),
                input,
                deps: Vec::new(),
                pending_deps: 0,
                fingerprint: None,
                carried: None,
            };
            self.judge(key, task, &upstream, items.len());
        }
    }

    /// The judge of reasoning task `upstream.last()`: same subject and input, and the reasoning's
    /// dependencies besides (its prompt shows the same facts).
    /// `task`: the judge's row as far as the reasoning task decides it (subject, ids, input).
    fn judge(&mut self, key: TaskKey, mut task: NewTask, upstream: &[Option<TaskRef>], items: usize) {
        let reasoning_fp = upstream.last().copied().flatten().and_then(|r| r.fingerprint);
        task.fingerprint = match (&self.content, reasoning_fp) {
            (Some(c), Some(fp)) => Some(c.fp.judge(&fp)),
            _ => None,
        };
        let (deps, pending) = edges(upstream);
        let d = self.decide(Stage::Judge, key, task.fingerprint.as_ref(), pending > 0, items);
        task.carried = self.carried(&d);
        task.input = self.input(&d, std::mem::take(&mut task.input));
        task.pending_deps = if task.carried.is_some() { 0 } else { pending };
        task.deps = deps;
        self.push(task);
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
            stream: Box::pin(store.datasets().stream_interactions(dataset_id)),
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
fn mix(seed: u64, user: i32, split: Split) -> u64 {
    let mut x = seed ^ (u64::from(user as u32) << 8) ^ split.as_str().len() as u64 ^ 0x9E37_79B9_7F4A_7C15;
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
) -> Result<HashSet<(i32, Split)>, CoordinatorError> {
    let mut by_split: HashMap<Split, (Vec<i32>, Vec<i32>)> = HashMap::new();
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

/// Plans a run of `dataset` (latest version). Tasks are written in batches as users stream in;
/// nothing is published here (see [`crate::Outbox`]): the run opens for publishing only once
/// every task and edge is written.
pub async fn create_run(store: &Store, settings: &Settings, dataset: &str) -> Result<RunPlan, CoordinatorError> {
    plan_run(store, settings, dataset, PlanOptions::default()).await
}

/// The unfinished run of dataset name `dataset`, if any: what a scheduled tick and
/// `run create --incremental` check before planning, so they never double a run. A run whose
/// planner died (left `planning` with nobody holding its lock) is failed first, with the reason,
/// so it never blocks the dataset.
pub async fn unfinished_run(store: &Store, dataset: &str) -> Result<Option<Uuid>, CoordinatorError> {
    for run_id in store.planning().fail_abandoned_plans(dataset).await? {
        tracing::warn!(%run_id, dataset, "a run's planning died (no planner holds its lock); marked failed");
    }
    Ok(store.monitor().unfinished_run_of(dataset).await?)
}

/// What [`create_incremental_run`] did.
#[derive(Debug)]
pub enum Incremental {
    Planned(Box<RunPlan>),
    /// Not planned: this run of the dataset is not finished, and another would double it.
    Unfinished(Uuid),
}

/// An incremental run of dataset name `dataset`: the one use case behind a scheduled tick and
/// `run create --incremental`. Not planned while a run of the dataset is unfinished (a dry run
/// writes nothing, so it is never refused). A planned run gets
/// [`crate::lifecycle::INCREMENTAL_PRIORITY`]: regeneration yields to runs over new data.
pub async fn create_incremental_run(
    store: &Store,
    settings: &Settings,
    dataset: &str,
    dry_run: bool,
) -> Result<Incremental, CoordinatorError> {
    if !dry_run && let Some(unfinished) = unfinished_run(store, dataset).await? {
        return Ok(Incremental::Unfinished(unfinished));
    }
    let plan = plan_run(store, settings, dataset, PlanOptions { incremental: true, dry_run }).await?;
    if !dry_run {
        store.lifecycle().set_priority(plan.run_id, crate::lifecycle::INCREMENTAL_PRIORITY).await?;
    }
    Ok(Incremental::Planned(Box::new(plan)))
}

/// [`create_run`] with options: incremental (compare with the previous completed run of the
/// dataset name and carry over what is not stale) and dry run (write nothing, report).
pub async fn plan_run(
    store: &Store,
    settings: &Settings,
    dataset: &str,
    opts: PlanOptions,
) -> Result<RunPlan, CoordinatorError> {
    let ds = store.datasets().find(dataset, None).await?;
    let family = ds.family;
    let fingerprinter = load_fingerprinter(settings, family, opts)?;
    let previous_run =
        if opts.incremental || opts.dry_run { store.incremental().latest_completed_run(&ds.name).await? } else { None };
    let previous = match (&previous_run, &fingerprinter) {
        (Some(p), Some(f)) if opts.incremental => Some(Previous::load(store, p, &ds, f.templates(), settings).await?),
        _ => None,
    };
    let templates = fingerprinter.as_ref().map(|f| f.templates().clone()).unwrap_or_default();
    let content = match fingerprinter {
        Some(fp) => Some(Content::load(store, &ds, fp, settings.stages.item_profile).await?),
        None => None,
    };
    let snapshot = settings_snapshot(settings, &ds, family, &templates, opts, previous.as_ref());
    // The planning lock is held until the run is running (or failed): a planner that dies
    // releases it with its connection, and the run is then failed by the next
    // `unfinished_run` of its dataset instead of blocking it.
    let lock = if opts.dry_run { None } else { Some(open_run(store, settings, &ds, &snapshot).await?) };
    let run_id = lock.as_ref().map_or(Uuid::nil(), |l| l.run_id());
    let mut planner = Planner::new(store, settings, &ds, family, run_id, opts, content, previous).await?;
    let written = write_plan(store, &mut planner, ds.id, settings, run_id, opts).await;
    if let Some(lock) = lock {
        if let Err(e) = &written {
            tracing::error!(%run_id, error = %e, "planning failed; the run is marked failed");
            if let Err(fe) = store.planning().fail_plan(run_id, &format!("planning failed: {e}")).await {
                // The lock goes with the connection: the next look at the dataset fails the run.
                tracing::warn!(%run_id, error = %fe, "could not mark the run failed");
            }
        }
        lock.release().await;
    }
    written?;
    let mut plan = planner.plan;
    if opts.incremental || opts.dry_run {
        let tokens = match &previous_run {
            Some(p) => store.incremental().stage_tokens(p.id).await?,
            None => Vec::new(),
        };
        let prev = previous_run.as_ref().map(|p| (p.id, tokens.as_slice()));
        plan.estimate = Some(estimate(&planner.stale, prev, &templates, settings));
        plan.regeneration = Some(planner.regen);
    }
    tracing::info!(%run_id, dataset = %ds.name, version = ds.version, tasks = plan.tasks, to_work = plan.to_work(), dry_run = opts.dry_run, skipped_users = plan.skipped_users, "run planned");
    Ok(plan)
}

/// The stages the settings switch on, in the order their tasks depend on each other.
fn enabled_stages(settings: &Settings) -> Vec<Stage> {
    [
        (Stage::ItemProfile, settings.stages.item_profile),
        (Stage::UserProfile, settings.stages.user_profile),
        (Stage::Reasoning, true),
        (Stage::Judge, settings.stages.judge),
    ]
    .into_iter()
    .filter_map(|(s, on)| on.then_some(s))
    .collect()
}

/// The fingerprinter of the run's templates. Without templates a plain run goes on without
/// fingerprints (no later incremental run can reuse it); an incremental run cannot.
fn load_fingerprinter(
    settings: &Settings,
    family: Family,
    opts: PlanOptions,
) -> Result<Option<Fingerprinter>, CoordinatorError> {
    let loaded = PromptLibrary::load(&settings.prompts.dir)
        .and_then(|p| Fingerprinter::new(&p, family.as_str(), &enabled_stages(settings), &settings.sampling));
    match loaded {
        Ok(f) => Ok(Some(f)),
        Err(e) if opts.incremental => Err(CoordinatorError::Plan(format!(
            "incremental planning compares prompts, so it needs the templates (prompts.dir): {e}"
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "no prompt templates: tasks get no fingerprint, so no later incremental run can reuse this run");
            Ok(None)
        }
    }
}

/// What `runs.settings` records of the run: sampling, stages, teachers, the dataset version,
/// batching, the templates and, for an incremental run, what it was compared with.
fn settings_snapshot(
    settings: &Settings,
    ds: &DatasetRow,
    family: Family,
    templates: &BTreeMap<Stage, TemplateId>,
    opts: PlanOptions,
    previous: Option<&Previous>,
) -> serde_json::Value {
    let mut snapshot = serde_json::json!({
        "sampling": settings.sampling,
        "history_len": settings.sampling.history_len_for(family),
        "stages": settings.stages,
        "teacher": settings.teacher.endpoints.iter().map(|e| serde_json::json!({
            "name": e.name, "protocol": e.protocol, "mode": e.mode, "model": e.model, "params": e.params,
        })).collect::<Vec<_>>(),
        "dataset": {"name": ds.name, "version": ds.version, "content_hash": ds.content_hash, "family": ds.family},
        "batch": settings.batch,
    });
    if !templates.is_empty() {
        let t: BTreeMap<&str, _> = templates.iter().map(|(s, t)| (s.as_str(), t)).collect();
        snapshot["templates"] = serde_json::json!(t);
    }
    if opts.incremental {
        snapshot["incremental"] = serde_json::json!({
            "previous_run": previous.map(|p| p.run_id),
            "regenerate": settings.regenerate,
        });
    }
    snapshot
}

/// Creates the run row (`planning`, its lock held) with its batch deadline.
async fn open_run(
    store: &Store,
    settings: &Settings,
    ds: &DatasetRow,
    snapshot: &serde_json::Value,
) -> Result<PlanningLock, CoordinatorError> {
    let lock = store.planning().create_run(ds.id, snapshot, RunRoute::of(&settings.teacher)).await?;
    let deadline = settings.batch.deadline_from_now().map_err(CoordinatorError::Plan)?;
    if deadline.is_some() {
        store.batches().set_run_deadline(lock.run_id(), deadline).await?;
    }
    Ok(lock)
}

impl<'a> Planner<'a> {
    /// A planner for run `run_id` of `ds`, with label balancing's drops decided up front.
    #[allow(clippy::too_many_arguments)]
    async fn new(
        store: &Store,
        settings: &'a Settings,
        ds: &DatasetRow,
        family: Family,
        run_id: Uuid,
        opts: PlanOptions,
        content: Option<Content>,
        previous: Option<Previous>,
    ) -> Result<Self, CoordinatorError> {
        let params = PlanParams::new(
            &settings.sampling,
            settings.sampling.history_len_for(family),
            settings.stages.user_profile,
        );
        let dropped = if settings.sampling.balance_labels {
            balance(store, ds.id, &params, settings).await?
        } else {
            HashSet::new()
        };
        let regen = Regeneration {
            incremental: opts.incremental,
            previous_run: previous.as_ref().map(|p| p.run_id),
            previous_dataset_version: previous.as_ref().map(|p| p.dataset_version),
            ..Regeneration::default()
        };
        let failed_note = match &previous {
            Some(p) => format!("failed in run {}; not tried again (regenerate.redo_failed = false)", p.run_id),
            None => String::new(),
        };
        Ok(Planner {
            params,
            settings,
            plan: RunPlan {
                run_id,
                dry_run: opts.dry_run,
                dataset: ds.name.clone(),
                dataset_version: ds.version,
                users_seen: 0,
                skipped_users: 0,
                tasks: 0,
                by_stage: BTreeMap::new(),
                labels: BTreeMap::new(),
                dropped_for_balance: dropped.len() as u64,
                regeneration: None,
                estimate: None,
            },
            dropped,
            item_tasks: HashMap::new(),
            batch: Vec::with_capacity(settings.coordinator.plan_batch.max(1) + 64),
            content,
            from: previous.as_ref().map_or(Uuid::nil(), |p| p.run_id),
            previous,
            regen,
            stale: BTreeMap::new(),
            failed_note,
        })
    }
}

/// Streams the dataset's users through `planner` and writes the tasks (in the background, see
/// below), then opens the run for publishing.
async fn write_plan(
    store: &Store,
    planner: &mut Planner<'_>,
    dataset_id: i64,
    settings: &Settings,
    run_id: Uuid,
    opts: PlanOptions,
) -> Result<(), CoordinatorError> {
    let batch_size = settings.coordinator.plan_batch.max(1);
    let mut users = UserGroups::new(store, dataset_id, settings.sampling.max_users);
    // Inserts run in the background, up to PLAN_WRITERS at once on their own connections, while
    // the next batch is planned: one insert statement keeps a Postgres backend at 100 % of a
    // core and was the planning bound. Order between batches does not matter here: nothing of
    // the run is published or worked before `start_run`, and edges carry no foreign keys.
    let mut writing: std::collections::VecDeque<tokio::task::JoinHandle<Result<u64, CoordinatorError>>> =
        std::collections::VecDeque::new();
    while let Some(rows) = users.next_user().await? {
        planner.user(&rows);
        if planner.batch.len() >= batch_size {
            if writing.len() >= PLAN_WRITERS
                && let Some(w) = writing.pop_front()
            {
                planner.plan.tasks += finish_flush(w).await?;
            }
            let batch = std::mem::replace(&mut planner.batch, Vec::with_capacity(batch_size + 64));
            writing.push_back(tokio::spawn(flush(store.clone(), run_id, batch, opts.dry_run)));
        }
    }
    while let Some(w) = writing.pop_front() {
        planner.plan.tasks += finish_flush(w).await?;
    }
    planner.plan.tasks += flush(store.clone(), run_id, std::mem::take(&mut planner.batch), opts.dry_run).await?;
    if !opts.dry_run {
        store.runs().start(run_id).await?;
        if opts.incremental {
            // Nothing stale: every task is carried over and the run is complete already.
            store.runs().refresh_state(run_id).await?;
        }
    }
    Ok(())
}

/// Task inserts in flight at once while planning.
const PLAN_WRITERS: usize = 2;

async fn flush(store: Store, run_id: Uuid, batch: Vec<NewTask>, dry_run: bool) -> Result<u64, CoordinatorError> {
    if dry_run {
        return Ok(batch.len() as u64);
    }
    Ok(store.runs().insert_tasks(run_id, &batch).await?)
}

/// Waits for a background insert; how many tasks it wrote.
async fn finish_flush(handle: tokio::task::JoinHandle<Result<u64, CoordinatorError>>) -> Result<u64, CoordinatorError> {
    handle.await.map_err(|e| CoordinatorError::Plan(format!("the task insert stopped: {e}")))?
}
