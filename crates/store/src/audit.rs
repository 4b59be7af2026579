//! Audit marks (issue 18): reviewers' verdicts on ledger outputs (per output key, so a reused
//! output carries its mark into later runs), a seeded sample of a run's done outputs stratified
//! by stage and label, and per-stage counts of what was audited.

use crate::error::StoreError;
use crate::pool::Store;
use reasonrec_core::audit::{ErrorRate, Stratum, Verdict};
use reasonrec_core::stage::{Split, Stage};
use serde::Serialize;
use std::collections::HashMap;
use uuid::Uuid;

/// A verdict to record on an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMark {
    pub output_key: Vec<u8>,
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub reviewer: String,
}

/// One output of a review sample.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct SampleRow {
    #[sqlx(rename = "id")]
    pub task: Uuid,
    pub stage: Stage,
    pub label: Option<bool>,
    pub split: Option<Split>,
    /// Hex of the output's content key.
    #[sqlx(rename = "key")]
    pub output_key: String,
    pub text: String,
    /// The output's current mark, if it has one.
    pub verdict: Option<Verdict>,
    pub reason: Option<String>,
}

/// What was audited of a run's done outputs, per stage: `done` counts tasks, `approved` and
/// `rejected` distinct outputs (an output several tasks share was one judgement); the same per
/// label in `labels` (the review sample's strata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageAudit {
    pub stage: Stage,
    pub done: i64,
    pub approved: i64,
    pub rejected: i64,
    pub labels: Vec<LabelAudit>,
}

/// One label's share of a stage's audit (profiles have none: one stratum).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LabelAudit {
    pub label: Option<bool>,
    pub done: i64,
    pub approved: i64,
    pub rejected: i64,
}

/// A run's audit as `corpus audit --json` and `/api/runs/{run}/audit` give it: per stage, the
/// counts and the error rate they suggest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditSummary {
    pub run: Uuid,
    pub stages: Vec<StageSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSummary {
    pub counts: StageAudit,
    pub error_rate: Option<ErrorRate>,
}

impl AuditSummary {
    pub fn new(run: Uuid, counts: Vec<StageAudit>) -> Self {
        let stages = counts.into_iter().map(|c| StageSummary { error_rate: c.error_rate(), counts: c }).collect();
        Self { run, stages }
    }
}

impl StageAudit {
    /// The stage's error rate as its audited outputs suggest (None: none audited yet), each
    /// label's rejected share weighted by its share of the done outputs
    /// ([`ErrorRate::stratified`]): the review sample draws as many of each label, so an
    /// unweighted share would over-count the rarer label.
    pub fn error_rate(&self) -> Option<ErrorRate> {
        let n = |v: i64| v.max(0) as u64;
        let strata: Vec<Stratum> = self
            .labels
            .iter()
            .map(|l| Stratum { done: n(l.done), audited: n(l.approved + l.rejected), rejected: n(l.rejected) })
            .collect();
        ErrorRate::stratified(&strata)
    }
}

/// Audit marks on ledger outputs, review samples and audited counts. Reached through [`Store::audits`].
#[derive(Debug, Clone, Copy)]
pub struct Audits<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Audits<'a> {
    /// The output keys of those of `tasks` that are done in `run`.
    pub async fn done_output_keys(self, run: Uuid, tasks: &[Uuid]) -> Result<HashMap<Uuid, Vec<u8>>, StoreError> {
        let rows = sqlx::query_as::<_, (Uuid, Vec<u8>)>(
            "SELECT id, output_key FROM tasks WHERE run_id = $1 AND id = ANY($2) AND state = 'done'",
        )
        .bind(run)
        .bind(tasks)
        .fetch_all(self.store.pool())
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Records `marks` in one statement; a later mark of the same output replaces the earlier one
    /// (within `marks` too: the last wins). Returns the outputs marked.
    pub async fn mark_outputs(self, marks: &[NewMark]) -> Result<u64, StoreError> {
        let mut last: HashMap<&[u8], &NewMark> = HashMap::with_capacity(marks.len());
        for m in marks {
            last.insert(&m.output_key, m);
        }
        let keys: Vec<&[u8]> = last.keys().copied().collect();
        let verdicts: Vec<&str> = keys.iter().map(|k| last[k].verdict.as_str()).collect();
        let reasons: Vec<Option<&str>> = keys.iter().map(|k| last[k].reason.as_deref()).collect();
        let reviewers: Vec<&str> = keys.iter().map(|k| last[k].reviewer.as_str()).collect();
        let done = sqlx::query(
            "INSERT INTO audit_marks (output_key, verdict, reason, reviewer)
             SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[])
             ON CONFLICT (output_key) DO UPDATE
             SET verdict = EXCLUDED.verdict, reason = EXCLUDED.reason, reviewer = EXCLUDED.reviewer, marked_at = now()",
        )
        .bind(&keys)
        .bind(&verdicts)
        .bind(&reasons)
        .bind(&reviewers)
        .execute(self.store.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Up to `per_stratum` done outputs of `run` for each (stage, label), chosen by `seed` (the
    /// same seed gives the same sample), in stage, label and draw order.
    pub async fn sample(self, run: Uuid, per_stratum: i64, seed: u64) -> Result<Vec<SampleRow>, StoreError> {
        Ok(sqlx::query_as::<_, SampleRow>(
            "WITH drawn AS (
                 SELECT t.id, t.stage, t.label, t.split, t.output_key,
                        row_number() OVER (PARTITION BY t.stage, t.label ORDER BY md5(t.id::text || $3)) AS draw
                 FROM tasks t WHERE t.run_id = $1 AND t.state = 'done')
             SELECT d.id, d.stage, d.label, d.split, encode(d.output_key, 'hex') AS key, o.text, a.verdict, a.reason
             FROM drawn d JOIN outputs o ON o.key = d.output_key
             LEFT JOIN audit_marks a ON a.output_key = d.output_key
             WHERE d.draw <= $2
             ORDER BY d.stage, d.label NULLS FIRST, d.draw",
        )
        .bind(run)
        .bind(per_stratum)
        .bind(seed.to_string())
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Per stage and label: the run's done tasks and how many of their outputs are approved
    /// and rejected.
    pub async fn counts(self, run: Uuid) -> Result<Vec<StageAudit>, StoreError> {
        let rows = sqlx::query_as::<_, (Stage, Option<bool>, i64, i64, i64)>(
            "SELECT t.stage, t.label, count(*) AS done,
                    count(DISTINCT a.output_key) FILTER (WHERE a.verdict = 'approved') AS approved,
                    count(DISTINCT a.output_key) FILTER (WHERE a.verdict = 'rejected') AS rejected
             FROM tasks t LEFT JOIN audit_marks a ON a.output_key = t.output_key
             WHERE t.run_id = $1 AND t.state = 'done' GROUP BY t.stage, t.label ORDER BY t.stage, t.label",
        )
        .bind(run)
        .fetch_all(self.store.pool())
        .await?;
        let mut stages: Vec<StageAudit> = Vec::new();
        for (stage, label, done, approved, rejected) in rows {
            let label = LabelAudit { label, done, approved, rejected };
            if stages.last().is_none_or(|s| s.stage != stage) {
                stages.push(StageAudit { stage, done: 0, approved: 0, rejected: 0, labels: Vec::new() });
            }
            if let Some(s) = stages.last_mut() {
                s.done += label.done;
                s.approved += label.approved;
                s.rejected += label.rejected;
                s.labels.push(label);
            }
        }
        Ok(stages)
    }
}

/// Validator rejections of one hour, for one (stage, template version, endpoint, model, reason)
/// of a run of the dataset: what makes a prompt edit's effect visible the morning after.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RejectionCount {
    /// The hour's start.
    pub hour: chrono::DateTime<chrono::Utc>,
    pub run_id: Uuid,
    /// None once retention pruned the run's tasks (its attempts stay).
    pub stage: Option<Stage>,
    /// The stage's template version in the run's settings snapshot.
    pub template_version: Option<String>,
    pub endpoint: String,
    pub model: String,
    /// The validator's code (`too_short`, `label_contradiction`, ...); None counts accepted
    /// answers, so each group's rate is rejections / (rejections + accepted).
    pub reason: Option<String>,
    pub attempts: i64,
}

/// Audit marks of the outputs made with one (stage, template version, model).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AuditByTemplate {
    pub stage: Stage,
    pub template_version: String,
    pub model: String,
    pub approved: i64,
    pub rejected: i64,
}

/// Quality over the runs of a dataset name created in the last days (see
/// [`Audits::quality`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Quality {
    pub dataset: String,
    pub runs: Vec<Uuid>,
    pub rejections: Vec<RejectionCount>,
    pub audit: Vec<AuditByTemplate>,
    /// Audit marks per day they were made, stage, template version and verdict.
    pub audit_by_day: Vec<AuditByDay>,
}

/// The marks made on one day on the outputs of one (stage, template version).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AuditByDay {
    pub day: chrono::DateTime<chrono::Utc>,
    pub stage: Stage,
    pub template_version: String,
    pub verdict: Verdict,
    pub marks: i64,
}

impl<'a> Audits<'a> {
    /// Validator rejections and accepted answers per hour, stage, template version, endpoint,
    /// model and reason, and audit marks per stage, template version and model, over the runs of
    /// `run`'s dataset name created within `days` days of it. Each run's attempts are read
    /// through their run index; the marks through the outputs those runs' tasks hold.
    pub async fn quality(self, run: Uuid, days: i32) -> Result<Quality, StoreError> {
        let (dataset, runs) = sqlx::query_as::<_, (String, Vec<Uuid>)>(
            "SELECT d.name, array_agg(r2.id ORDER BY r2.created_at) AS runs
             FROM runs r JOIN datasets d ON d.id = r.dataset_id
             JOIN datasets d2 ON d2.name = d.name JOIN runs r2 ON r2.dataset_id = d2.id
             WHERE r.id = $1 AND r2.created_at BETWEEN r.created_at - make_interval(days => $2) AND r.created_at + make_interval(days => $2)
             GROUP BY d.name",
        )
        .bind(run)
        .bind(days)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("run {run}")))?;
        let rejections = self.rejection_counts(&runs).await?;
        let audit = self.by_template(&runs).await?;
        let audit_by_day = self.by_day(&runs).await?;
        Ok(Quality { dataset, runs, rejections, audit, audit_by_day })
    }

    /// Accepted and rejected answers of `runs` per hour, stage, template version, endpoint,
    /// model and reason.
    async fn rejection_counts(self, runs: &[Uuid]) -> Result<Vec<RejectionCount>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT date_trunc('hour', a.started_at) AS hour, a.run_id, t.stage,
                    r.settings->'templates'->t.stage->>'version' AS template_version, a.endpoint, a.model,
                    CASE WHEN a.error_class = 'rejected' THEN split_part(a.error, ':', 1) END AS reason,
                    count(*) AS attempts
             FROM attempts a JOIN runs r ON r.id = a.run_id LEFT JOIN tasks t ON t.id = a.task_id
             WHERE a.run_id = ANY($1) AND (a.error_class IS NULL OR a.error_class = 'rejected')
             GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7",
        )
        .bind(runs)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Audit marks on the outputs `runs`' tasks hold, per stage, template version and model.
    async fn by_template(self, runs: &[Uuid]) -> Result<Vec<AuditByTemplate>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT o.stage, o.template_version, o.model,
                    count(*) FILTER (WHERE m.verdict = 'approved') AS approved,
                    count(*) FILTER (WHERE m.verdict = 'rejected') AS rejected
             FROM audit_marks m JOIN outputs o ON o.key = m.output_key
             WHERE m.output_key IN (SELECT output_key FROM tasks WHERE run_id = ANY($1) AND output_key IS NOT NULL)
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .bind(runs)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// The same marks per day they were made, stage, template version and verdict.
    async fn by_day(self, runs: &[Uuid]) -> Result<Vec<AuditByDay>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT date_trunc('day', m.marked_at) AS day, o.stage, o.template_version, m.verdict, count(*) AS marks
             FROM audit_marks m JOIN outputs o ON o.key = m.output_key
             WHERE m.output_key IN (SELECT output_key FROM tasks WHERE run_id = ANY($1) AND output_key IS NOT NULL)
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
        )
        .bind(runs)
        .fetch_all(self.store.pool())
        .await?)
    }
}
