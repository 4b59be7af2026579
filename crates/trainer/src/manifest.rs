//! `manifest.json`, written beside the exported files: where the examples came from (run,
//! dataset version, templates, teacher models), what is in them (counts per split and label,
//! few-shot sets), what the filters removed, and each file's size and SHA-256. It holds no
//! timestamp and no absolute path, so exporting the same run twice gives the same manifest.

use std::collections::BTreeMap;

use reasonrec_core::audit::{AuditPolicy, Verdict};
use serde::Serialize;

use crate::fewshot::FewShotSet;
use crate::files::{FileEntry, Format};
use crate::filters::{FilterOptions, FilterReport};

/// Version of this manifest's layout.
/// 2: `audit` (the marks' counts); `filters.rows_read` counts the rows the marks admitted.
pub const MANIFEST_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    pub manifest_version: u32,
    pub run: RunInfo,
    pub dataset: DatasetInfo,
    pub tasks: TaskCounts,
    pub templates: Templates,
    /// Teacher model and sampling parameters of the exported answers, by model then parameters.
    pub teachers: Vec<TeacherCount>,
    pub splits: Splits,
    pub few_shot: Vec<FewShotSet>,
    pub filters: FilterReport,
    /// What the audit marks kept out (issue 18).
    pub audit: AuditCounts,
    pub options: ExportOptionsInfo,
    /// Every file written, with its rows, size and SHA-256 (the manifest itself excepted).
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunInfo {
    pub id: String,
    /// The run's state when the export read it.
    pub state: String,
    /// True when the run was completed: every task is done or failed. False for a `--partial`
    /// export of a run still going (or cancelled): only what was done is in the files.
    pub complete: bool,
    /// The snapshot name the export was asked for (`train export --snapshot`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatasetInfo {
    pub name: String,
    pub version: i32,
    pub family: String,
    pub content_hash: String,
}

/// Task counts of the run, read after the export's pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TaskCounts {
    pub total: i64,
    pub done: i64,
    pub reasoning: i64,
    pub reasoning_done: i64,
    pub reasoning_failed: i64,
    /// Rows in the split files (done reasoning tasks the filters kept).
    pub exported: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateCount {
    pub name: String,
    pub version: String,
    /// Exported rows whose teacher answer came from this template version.
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateInfo {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Templates {
    /// The teacher's reasoning templates seen in the exported answers, by name and version.
    pub teacher: Vec<TemplateCount>,
    /// The student prompt template the examples were rendered with.
    pub student: TemplateInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TeacherCount {
    pub model: String,
    pub params: serde_json::Value,
    pub rows: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LabelCounts {
    pub rows: u64,
    pub liked: u64,
    pub disliked: u64,
}

impl LabelCounts {
    pub fn add(&mut self, liked: bool) {
        self.rows += 1;
        if liked {
            self.liked += 1;
        } else {
            self.disliked += 1;
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Splits {
    pub train: LabelCounts,
    pub validation: LabelCounts,
    pub test: LabelCounts,
}

/// The audit marks of the done reasoning outputs read, and what the policy did with them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuditCounts {
    pub policy: AuditPolicy,
    /// Outputs a reviewer approved (written, unless a filter removed them).
    pub approved: u64,
    /// Outputs a reviewer rejected: never written.
    pub rejected_excluded: u64,
    /// Outputs nobody reviewed that `--approved-only` kept out.
    pub unreviewed_excluded: u64,
    /// User and item profiles the marks kept out of the examples that embed them (the example
    /// is written without that profile, as when the stage is off). Counted per profile read.
    pub profiles_left_out: u64,
}

impl AuditCounts {
    pub fn new(policy: AuditPolicy) -> Self {
        Self { policy, ..Self::default() }
    }

    /// Counts an output's mark; returns whether the policy admits it.
    pub fn admit(&mut self, mark: Option<Verdict>) -> bool {
        match mark {
            Some(Verdict::Approved) => self.approved += 1,
            Some(Verdict::Rejected) => self.rejected_excluded += 1,
            None if !self.policy.admits(None) => self.unreviewed_excluded += 1,
            None => {}
        }
        self.policy.admits(mark)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportOptionsInfo {
    pub format: Format,
    /// `--partial` was given (export without waiting for the run to complete).
    pub partial: bool,
    /// Seed of the few-shot draw.
    pub seed: u64,
    pub filters: FilterOptions,
}

/// Running tallies of the templates and teachers seen, for the manifest.
#[derive(Debug, Default)]
pub struct Provenance {
    templates: BTreeMap<(String, String), u64>,
    teachers: BTreeMap<(String, String), (serde_json::Value, u64)>,
}

impl Provenance {
    pub fn add(&mut self, template: &str, version: &str, model: &str, params: &serde_json::Value) {
        *self.templates.entry((template.to_string(), version.to_string())).or_default() += 1;
        let key = (model.to_string(), params.to_string());
        self.teachers.entry(key).or_insert_with(|| (params.clone(), 0)).1 += 1;
    }

    pub fn templates(&self) -> Vec<TemplateCount> {
        self.templates
            .iter()
            .map(|((name, version), rows)| TemplateCount { name: name.clone(), version: version.clone(), rows: *rows })
            .collect()
    }

    pub fn teachers(&self) -> Vec<TeacherCount> {
        self.teachers
            .iter()
            .map(|((model, _), (params, rows))| TeacherCount {
                model: model.clone(),
                params: params.clone(),
                rows: *rows,
            })
            .collect()
    }
}
