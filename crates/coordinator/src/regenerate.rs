//! Incremental regeneration (issue 8): which tasks of a new run are carried over from the
//! dataset's previous completed run, and why the others are stale.
//!
//! The previous run's tasks are read once into memory, keyed by (stage, user, item, split) in
//! the new dataset version's ids (versions are matched by the source's ids, so a re-numbered
//! version still lines up). About 100 bytes per task: a few million tasks fit comfortably.
//!
//! A task is carried over done, with the previous output, when the previous task with the same
//! key is done with the same fingerprint, its output is not expired and was made by a configured
//! teacher (or `redo_other_teacher` is off), and none of the tasks it depends on is redone: a
//! redone upstream makes a new output, which changes this task's prompt.

use crate::error::CoordinatorError;
use crate::fingerprint::{Digest32, TemplateId};
use futures::TryStreamExt;
use reasonrec_core::settings::{RegenerateSettings, SamplingParams, Settings};
use reasonrec_core::stage::{Split, Stage, TaskState};
use reasonrec_store::Store;
use reasonrec_store::datasets::DatasetRow;
use reasonrec_store::incremental::PreviousRun;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// Why a task is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No previous task for it: new users, items or interactions (or no previous run).
    New,
    /// Its inputs differ: a rating or interaction, an item's text or reviews, an upstream output.
    InputChanged,
    /// Its stage's template changed (it may have other changes too).
    TemplateChanged,
    /// Its output was made by a model or parameters no configured endpoint has.
    TeacherChanged,
    /// Its output is older than `regenerate.ttl_days`.
    Expired,
    /// It failed in the previous run.
    Failed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::InputChanged => "input_changed",
            Reason::TemplateChanged => "template_changed",
            Reason::TeacherChanged => "teacher_changed",
            Reason::Expired => "expired",
            Reason::Failed => "failed",
        }
    }
}

/// What the planner does with one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Planned normally, through the queue.
    Redo(Reason),
    /// Carried over done with the previous output. `despite`: the staleness the configuration
    /// chose to keep (`teacher_changed` with `redo_other_teacher = false`).
    Reuse { output_key: Digest32, despite: Option<Reason> },
    /// Failed before and carried over failed (`redo_failed = false`).
    KeepFailed,
}

/// A task's natural key across runs, in the new dataset version's ids (-1: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskKey {
    stage: Stage,
    user: i32,
    item: i32,
    split: Option<Split>,
}

impl TaskKey {
    pub fn item_profile(item: i32) -> Self {
        Self { stage: Stage::ItemProfile, user: -1, item, split: None }
    }

    pub fn user_profile(user: i32) -> Self {
        Self { stage: Stage::UserProfile, user, item: -1, split: None }
    }

    pub fn reasoning(user: i32, item: i32, split: Split) -> Self {
        Self { stage: Stage::Reasoning, user, item, split: Some(split) }
    }

    pub fn judge(user: i32, item: i32, split: Split) -> Self {
        Self { stage: Stage::Judge, user, item, split: Some(split) }
    }
}

#[derive(Debug, Clone)]
struct PrevTask {
    fingerprint: Option<Digest32>,
    state: TaskState,
    output_key: Option<Digest32>,
    /// Unix seconds of the output's creation.
    created_at: i64,
    /// Index into `Previous::teacher_ok`; `u32::MAX`: no output.
    teacher: u32,
}

/// The previous completed run of the dataset name, indexed for the planner.
#[derive(Debug)]
pub struct Previous {
    pub run_id: Uuid,
    pub dataset_version: i32,
    tasks: HashMap<TaskKey, PrevTask>,
    /// Per distinct (model, params) of the previous outputs: is it a configured endpoint's?
    teacher_ok: Vec<bool>,
    template_changed: Vec<Stage>,
    expire_before: Option<i64>,
    rules: RegenerateSettings,
}

fn digest(bytes: Option<Vec<u8>>) -> Option<Digest32> {
    bytes.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
}

/// Maps the previous version's dense ids to the current version's through the source ids.
fn id_map(prev: Vec<(i32, String)>, current: Vec<(i32, String)>) -> HashMap<i32, i32> {
    let by_ext: HashMap<String, i32> = current.into_iter().map(|(id, ext)| (ext, id)).collect();
    prev.into_iter().filter_map(|(id, ext)| by_ext.get(&ext).map(|&cur| (id, cur))).collect()
}

/// For each (model, params JSON) numbered in `teachers`: is it a configured endpoint's?
fn configured_teachers(teachers: HashMap<(String, String), u32>, settings: &Settings) -> Vec<bool> {
    let mut ok = vec![false; teachers.len()];
    for ((model, params), i) in teachers {
        // Stored as `serde_json::to_value(&endpoint.params)`; parsed back, floats compare equal.
        let params: Option<SamplingParams> = serde_json::from_str(&params).ok();
        ok[i as usize] = settings
            .teacher
            .endpoints
            .iter()
            .any(|e| e.model == model && params.as_ref().is_some_and(|p| *p == e.params));
    }
    ok
}

/// The stages whose template changed: the previous run's settings snapshot names another one.
fn changed_templates(templates: &BTreeMap<Stage, TemplateId>, prev_settings: &serde_json::Value) -> Vec<Stage> {
    templates
        .iter()
        .filter(|(stage, now)| {
            let was = &prev_settings["templates"][stage.as_str()];
            was.is_object()
                && (was["name"].as_str() != Some(now.name.as_str())
                    || was["version"].as_str() != Some(now.version.as_str()))
        })
        .map(|(stage, _)| *stage)
        .collect()
}

impl Previous {
    /// Reads `prev`'s tasks. `templates`: the templates the new run renders with, per stage.
    pub async fn load(
        store: &Store,
        prev: &PreviousRun,
        current: &DatasetRow,
        templates: &BTreeMap<Stage, TemplateId>,
        settings: &Settings,
    ) -> Result<Self, CoordinatorError> {
        // Another version of the dataset: translate its ids through the source ids.
        let maps = if prev.dataset_id == current.id {
            None
        } else {
            let users = id_map(
                store.incremental().user_ext_ids(prev.dataset_id).await?,
                store.incremental().user_ext_ids(current.id).await?,
            );
            let items = id_map(
                store.incremental().item_ext_ids(prev.dataset_id).await?,
                store.incremental().item_ext_ids(current.id).await?,
            );
            Some((users, items))
        };
        let translate = |id: Option<i32>, users: bool| -> Option<i32> {
            match (id, &maps) {
                (None, _) => Some(-1),
                (Some(id), None) => Some(id),
                (Some(id), Some((u, i))) => (if users { u } else { i }).get(&id).copied(),
            }
        };
        let mut teachers: HashMap<(String, String), u32> = HashMap::new();
        let mut tasks = HashMap::new();
        let mut stream = std::pin::pin!(store.incremental().stream_previous_tasks(prev.id));
        while let Some(t) = stream.try_next().await? {
            // A user or item the new version no longer has: nothing to carry over.
            let (Some(user), Some(item)) = (translate(t.user_id, true), translate(t.item_id, false)) else {
                continue;
            };
            let key = TaskKey { stage: t.stage, user, item, split: t.split };
            let teacher = match (t.model, t.params) {
                (Some(model), Some(params)) => {
                    let n = teachers.len() as u32;
                    *teachers.entry((model, params)).or_insert(n)
                }
                _ => u32::MAX,
            };
            tasks.insert(
                key,
                PrevTask {
                    fingerprint: digest(t.fingerprint),
                    state: t.state,
                    output_key: digest(t.output_key),
                    created_at: t.output_created_at.map_or(0, |c| c.timestamp()),
                    teacher,
                },
            );
        }
        let teacher_ok = configured_teachers(teachers, settings);
        let template_changed = changed_templates(templates, &prev.settings);
        let ttl = settings.regenerate.ttl_days;
        let expire_before = (ttl > 0).then(|| chrono::Utc::now().timestamp() - i64::from(ttl) * 86_400);
        Ok(Self {
            run_id: prev.id,
            dataset_version: prev.dataset_version,
            tasks,
            teacher_ok,
            template_changed,
            expire_before,
            rules: settings.regenerate.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The decision for a task with `fingerprint`; `upstream_redone`: a task it depends on is
    /// redone in the new run.
    pub fn decide(&self, key: &TaskKey, fingerprint: Option<&Digest32>, upstream_redone: bool) -> Decision {
        let own = self.own(key, fingerprint);
        match own {
            Decision::Redo(_) => own,
            _ if upstream_redone => Decision::Redo(Reason::InputChanged),
            _ => own,
        }
    }

    fn own(&self, key: &TaskKey, fingerprint: Option<&Digest32>) -> Decision {
        let Some(p) = self.tasks.get(key) else { return Decision::Redo(Reason::New) };
        if fingerprint.is_none() || p.fingerprint.as_ref() != fingerprint {
            return Decision::Redo(if self.template_changed.contains(&key.stage) {
                Reason::TemplateChanged
            } else {
                Reason::InputChanged
            });
        }
        match (p.state, p.output_key) {
            (TaskState::Failed, _) if self.rules.redo_failed => Decision::Redo(Reason::Failed),
            (TaskState::Failed, _) => Decision::KeepFailed,
            (TaskState::Done, Some(output_key)) => {
                let teacher_ok = self.teacher_ok.get(p.teacher as usize).copied().unwrap_or(false);
                if !teacher_ok && self.rules.redo_other_teacher {
                    return Decision::Redo(Reason::TeacherChanged);
                }
                if self.expire_before.is_some_and(|t| p.created_at < t) {
                    return Decision::Redo(Reason::Expired);
                }
                Decision::Reuse { output_key, despite: (!teacher_ok).then_some(Reason::TeacherChanged) }
            }
            // Cancelled (or, in a completed run, impossible states): nothing to carry over.
            _ => Decision::Redo(Reason::New),
        }
    }
}

/// What an incremental run carried over and why the rest is stale, per stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Regeneration {
    /// Planned with `--incremental` (a plain dry run reports every task as new).
    pub incremental: bool,
    /// The run compared with; None when the dataset has no completed run (everything is new).
    pub previous_run: Option<Uuid>,
    pub previous_dataset_version: Option<i32>,
    /// stage -> reason -> tasks planned to be worked (through the queue).
    pub stale: BTreeMap<String, BTreeMap<String, u64>>,
    /// stage -> tasks carried over done with the previous output (no message, no teacher call).
    pub reused: BTreeMap<String, u64>,
    /// stage -> tasks carried over failed (`regenerate.redo_failed = false`).
    pub kept_failed: BTreeMap<String, u64>,
    /// stage -> reused tasks whose output another teacher made (`redo_other_teacher = false`).
    pub kept_other_teacher: BTreeMap<String, u64>,
}

impl Regeneration {
    pub fn count(&mut self, stage: Stage, d: &Decision) {
        let stage = stage.as_str().to_string();
        match d {
            Decision::Redo(r) => *self.stale.entry(stage).or_default().entry(r.as_str().to_string()).or_default() += 1,
            Decision::Reuse { despite, .. } => {
                if despite.is_some() {
                    *self.kept_other_teacher.entry(stage.clone()).or_default() += 1;
                }
                *self.reused.entry(stage).or_default() += 1;
            }
            Decision::KeepFailed => *self.kept_failed.entry(stage).or_default() += 1,
        }
    }

    /// Tasks to be worked.
    pub fn stale_total(&self) -> u64 {
        self.stale.values().flat_map(|m| m.values()).sum()
    }

    pub fn stale_in(&self, stage: &str) -> u64 {
        self.stale.get(stage).map_or(0, |m| m.values().sum())
    }

    pub fn reused_total(&self) -> u64 {
        self.reused.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reasonrec_core::settings::EndpointSettings;

    const FP: Digest32 = [1; 32];
    const OTHER_FP: Digest32 = [2; 32];
    const OUT: Digest32 = [9; 32];

    /// A previous run holding `tasks` (teacher 0 is configured, teacher 1 is not).
    fn previous(tasks: Vec<(TaskKey, PrevTask)>, rules: RegenerateSettings, template_changed: Vec<Stage>) -> Previous {
        Previous {
            run_id: Uuid::nil(),
            dataset_version: 1,
            tasks: tasks.into_iter().collect(),
            teacher_ok: vec![true, false],
            template_changed,
            expire_before: None,
            rules,
        }
    }

    fn done(teacher: u32, created_at: i64) -> PrevTask {
        PrevTask { fingerprint: Some(FP), state: TaskState::Done, output_key: Some(OUT), created_at, teacher }
    }

    fn failed() -> PrevTask {
        PrevTask { fingerprint: Some(FP), state: TaskState::Failed, output_key: None, created_at: 0, teacher: u32::MAX }
    }

    #[test]
    fn an_unchanged_done_task_is_reused_and_any_difference_redoes_it_with_its_reason() {
        let key = TaskKey::reasoning(1, 2, Split::Test);
        let p = previous(vec![(key, done(0, 100))], RegenerateSettings::default(), vec![]);
        assert_eq!(p.decide(&key, Some(&FP), false), Decision::Reuse { output_key: OUT, despite: None });
        assert_eq!(p.decide(&TaskKey::reasoning(1, 3, Split::Test), Some(&FP), false), Decision::Redo(Reason::New));
        assert_eq!(p.decide(&key, Some(&OTHER_FP), false), Decision::Redo(Reason::InputChanged));
        assert_eq!(p.decide(&key, None, false), Decision::Redo(Reason::InputChanged), "no fingerprint: never reused");
        assert_eq!(
            p.decide(&key, Some(&FP), true),
            Decision::Redo(Reason::InputChanged),
            "a redone upstream task makes a new output, so this prompt changes"
        );
        let p = previous(vec![(key, done(0, 100))], RegenerateSettings::default(), vec![Stage::Reasoning]);
        assert_eq!(p.decide(&key, Some(&OTHER_FP), false), Decision::Redo(Reason::TemplateChanged));
    }

    #[test]
    fn failures_other_teachers_and_expiry_follow_the_regenerate_rules() {
        let (ok, other, fail) = (TaskKey::item_profile(1), TaskKey::item_profile(2), TaskKey::user_profile(3));
        let tasks = vec![(ok, done(0, 100)), (other, done(1, 100)), (fail, failed())];
        let p = previous(tasks.clone(), RegenerateSettings::default(), vec![]);
        assert_eq!(p.decide(&fail, Some(&FP), false), Decision::Redo(Reason::Failed));
        assert_eq!(p.decide(&other, Some(&FP), false), Decision::Redo(Reason::TeacherChanged));

        let keep = RegenerateSettings { ttl_days: 0, redo_failed: false, redo_other_teacher: false };
        let p = previous(tasks.clone(), keep, vec![]);
        assert_eq!(p.decide(&fail, Some(&FP), false), Decision::KeepFailed);
        assert_eq!(
            p.decide(&other, Some(&FP), false),
            Decision::Reuse { output_key: OUT, despite: Some(Reason::TeacherChanged) }
        );

        let mut p = previous(tasks, RegenerateSettings::default(), vec![]);
        p.expire_before = Some(101);
        assert_eq!(p.decide(&ok, Some(&FP), false), Decision::Redo(Reason::Expired));
        p.expire_before = Some(100);
        assert!(matches!(p.decide(&ok, Some(&FP), false), Decision::Reuse { .. }), "made at the limit: kept");
    }

    #[test]
    fn a_teacher_is_configured_only_with_the_same_model_and_parameters() {
        let mut settings = Settings::default();
        let ep = EndpointSettings { model: "m".into(), ..EndpointSettings::default() };
        let params = serde_json::to_value(&ep.params).map(|v| v.to_string()).unwrap_or_default();
        settings.teacher.endpoints = vec![ep];
        let teachers: HashMap<(String, String), u32> = [
            (("m".to_string(), params.clone()), 0),
            (("other".to_string(), params), 1),
            (("m".to_string(), "{\"temperature\": 2.0}".to_string()), 2),
        ]
        .into_iter()
        .collect();
        assert_eq!(configured_teachers(teachers, &settings), vec![true, false, false]);
    }

    #[test]
    fn a_template_changed_when_the_previous_snapshot_names_another_version() {
        let id = |v: &str| TemplateId { name: "reasoning.movielens".into(), version: v.into() };
        let now: BTreeMap<Stage, TemplateId> = [(Stage::Reasoning, id("v2")), (Stage::UserProfile, id("v1"))].into();
        let was = serde_json::json!({"templates": {
            "reasoning": {"name": "reasoning.movielens", "version": "v1"},
            "user_profile": {"name": "reasoning.movielens", "version": "v1"},
        }});
        assert_eq!(changed_templates(&now, &was), vec![Stage::Reasoning]);
        assert!(changed_templates(&now, &serde_json::json!({})).is_empty(), "no snapshot of templates: none changed");
    }
}
