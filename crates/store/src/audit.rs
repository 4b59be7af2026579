//! Audit marks (issue 18): reviewers' verdicts on ledger outputs (per output key, so a reused
//! output carries its mark into later runs), a seeded sample of a run's done outputs stratified
//! by stage and label, and per-stage counts of what was audited.

use crate::error::StoreError;
use crate::pool::Store;
use reasonrec_core::audit::{ErrorRate, Verdict};
use reasonrec_core::stage::Stage;
use serde::Serialize;
use sqlx::Row;
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleRow {
    pub task: Uuid,
    pub stage: Stage,
    pub label: Option<bool>,
    pub split: Option<String>,
    /// Hex of the output's content key.
    pub output_key: String,
    pub text: String,
    /// The output's current mark, if it has one.
    pub verdict: Option<Verdict>,
    pub reason: Option<String>,
}

/// What was audited of a run's done outputs, per stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StageAudit {
    pub stage: String,
    pub done: i64,
    pub approved: i64,
    pub rejected: i64,
}

impl StageAudit {
    /// The stage's error rate as its audited outputs suggest (None: none audited yet).
    pub fn error_rate(&self) -> Option<ErrorRate> {
        let audited = (self.approved + self.rejected).max(0) as u64;
        ErrorRate::estimate(self.rejected.max(0) as u64, audited)
    }
}

fn verdict(v: Option<String>) -> Result<Option<Verdict>, StoreError> {
    v.map(|v| v.parse().map_err(StoreError::Corrupt)).transpose()
}

impl Store {
    /// The output keys of those of `tasks` that are done in `run`.
    pub async fn done_output_keys(&self, run: Uuid, tasks: &[Uuid]) -> Result<HashMap<Uuid, Vec<u8>>, StoreError> {
        let rows =
            sqlx::query("SELECT id, output_key FROM tasks WHERE run_id = $1 AND id = ANY($2) AND state = 'done'")
                .bind(run)
                .bind(tasks)
                .fetch_all(self.pool())
                .await?;
        rows.into_iter().map(|r| Ok((r.try_get("id")?, r.try_get("output_key")?))).collect()
    }

    /// Records `marks` in one statement; a later mark of the same output replaces the earlier one
    /// (within `marks` too: the last wins). Returns the outputs marked.
    pub async fn mark_outputs(&self, marks: &[NewMark]) -> Result<u64, StoreError> {
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
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Up to `per_stratum` done outputs of `run` for each (stage, label), chosen by `seed` (the
    /// same seed gives the same sample), in stage, label and draw order.
    pub async fn audit_sample(&self, run: Uuid, per_stratum: i64, seed: u64) -> Result<Vec<SampleRow>, StoreError> {
        let rows = sqlx::query(
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
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| {
                let stage: String = r.try_get("stage")?;
                Ok(SampleRow {
                    task: r.try_get("id")?,
                    stage: stage.parse().map_err(StoreError::Corrupt)?,
                    label: r.try_get("label")?,
                    split: r.try_get("split")?,
                    output_key: r.try_get("key")?,
                    text: r.try_get("text")?,
                    verdict: verdict(r.try_get("verdict")?)?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }

    /// Per stage: the run's done tasks and how many of their outputs are approved and rejected.
    pub async fn audit_counts(&self, run: Uuid) -> Result<Vec<StageAudit>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.stage, count(*) AS done,
                    count(*) FILTER (WHERE a.verdict = 'approved') AS approved,
                    count(*) FILTER (WHERE a.verdict = 'rejected') AS rejected
             FROM tasks t LEFT JOIN audit_marks a ON a.output_key = t.output_key
             WHERE t.run_id = $1 AND t.state = 'done' GROUP BY t.stage ORDER BY t.stage",
        )
        .bind(run)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(StageAudit {
                    stage: r.try_get("stage")?,
                    done: r.try_get("done")?,
                    approved: r.try_get("approved")?,
                    rejected: r.try_get("rejected")?,
                })
            })
            .collect()
    }
}
