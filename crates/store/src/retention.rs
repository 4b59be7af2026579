//! Retention: what `reasonrec run prune` deletes (policy in `[retention]`).
//!
//! In order, each step in its own short transactions: (1) the task rows and edges of every
//! finished run outside the policy (the run row and its attempts stay: they are the cost
//! ledger; `runs.pruned_at` is set); (2) ledger outputs that no remaining task uses; (3) users,
//! items and interactions of dataset versions that no unpruned run uses and that are not the
//! latest version of their name (the dataset row stays, `datasets.pruned_at` set).
//!
//! Kept always: unfinished runs (planning, running, paused), snapshotted runs, runs an export
//! recorded (`exports`), the newest `keep_completed` completed runs of each dataset name, and runs
//! created within `keep_days`. The latest completed run (which the next incremental run compares
//! with) is therefore always kept.

use crate::error::StoreError;
use crate::pool::Store;
use uuid::Uuid;

/// Which runs to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Newest completed runs kept per dataset name (at least 1).
    pub keep_completed: u32,
    /// Runs younger than this many days are kept; 0 = no age rule.
    pub keep_days: u32,
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub runs: Vec<Uuid>,
    pub tasks_deleted: i64,
    pub edges_deleted: i64,
    pub outputs_deleted: i64,
    pub dataset_versions: Vec<(String, i32)>,
    pub interactions_deleted: i64,
    /// Bytes of the task, edge, ledger and interaction tables (with indexes) before and after.
    pub bytes_before: i64,
    pub bytes_after: i64,
}

/// Retention: pruning old runs, unused outputs and dataset versions. Reached through [`Store::pruning`].
#[derive(Debug, Clone, Copy)]
pub struct Pruning<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Pruning<'a> {
    /// Finished, unpruned runs outside `policy`, oldest first.
    pub async fn prunable_runs(self, policy: Retention) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "WITH ranked AS (
                 SELECT r.id, r.state, r.created_at, r.pruned_at,
                        row_number() OVER (PARTITION BY d.name, r.state = 'completed'
                                           ORDER BY r.created_at DESC, r.id DESC) AS newest
                 FROM runs r JOIN datasets d ON d.id = r.dataset_id
             )
             SELECT id FROM ranked
             WHERE pruned_at IS NULL
               AND state IN ('completed', 'cancelled', 'failed')
               AND NOT (state = 'completed' AND newest <= $1)
               AND ($2 = 0 OR created_at < now() - make_interval(days => $2))
               AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.run_id = ranked.id)
               AND NOT EXISTS (SELECT 1 FROM exports e WHERE e.run_id = ranked.id)
               -- a batch still open at the provider is read into its run's rows when it ends
               AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.run_id = ranked.id
                                 AND b.state IN ('building', 'submitting', 'submitted'))
             ORDER BY created_at, id",
        )
        .bind(i64::from(policy.keep_completed.max(1)))
        .bind(policy.keep_days as i32)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Applies `policy` (see the module). `dry_run` only lists the runs and dataset versions.
    pub async fn prune(self, policy: Retention, dry_run: bool) -> Result<PruneReport, StoreError> {
        let mut report = PruneReport { dry_run, bytes_before: self.corpus_bytes().await?, ..PruneReport::default() };
        report.runs = self.prunable_runs(policy).await?;
        if dry_run {
            report.dataset_versions =
                self.prunable_versions(&report.runs).await?.into_iter().map(|v| (v.1, v.2)).collect();
            report.bytes_after = report.bytes_before;
            return Ok(report);
        }
        for run in &report.runs {
            let (tasks, edges) = self.prune_run(*run).await?;
            report.tasks_deleted += tasks;
            report.edges_deleted += edges;
        }
        report.outputs_deleted = self.collect_ledger().await?;
        for (id, name, version) in self.prunable_versions(&[]).await? {
            report.interactions_deleted += self.prune_dataset_version(id).await?;
            report.dataset_versions.push((name, version));
        }
        report.bytes_after = self.corpus_bytes().await?;
        tracing::info!(
            runs = report.runs.len(),
            tasks = report.tasks_deleted,
            outputs = report.outputs_deleted,
            versions = report.dataset_versions.len(),
            "pruned"
        );
        Ok(report)
    }

    /// Deletes a run's task rows and edges and marks it pruned; returns (tasks, edges) deleted.
    async fn prune_run(self, run_id: Uuid) -> Result<(i64, i64), StoreError> {
        let mut tx = self.store.pool().begin().await?;
        // Only a finished run: one reopened meanwhile (`run retry-failed`) is left alone.
        let finished: Option<String> = sqlx::query_scalar(
            "SELECT state FROM runs WHERE id = $1 AND state IN ('completed', 'cancelled', 'failed')
               AND NOT EXISTS (SELECT 1 FROM snapshots WHERE run_id = $1) FOR UPDATE",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?;
        if finished.is_none() {
            return Ok((0, 0));
        }
        // Edges carry no foreign keys (sql/0005): delete them explicitly.
        let edges = sqlx::query("DELETE FROM task_deps WHERE task_id IN (SELECT id FROM tasks WHERE run_id = $1)")
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let tasks =
            sqlx::query("DELETE FROM tasks WHERE run_id = $1").bind(run_id).execute(&mut *tx).await?.rows_affected();
        sqlx::query("UPDATE runs SET pruned_at = now() WHERE id = $1").bind(run_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok((tasks as i64, edges as i64))
    }

    /// Deletes ledger outputs no task uses, older than an hour (a worker that found an output
    /// by key commits it within that time). Returns how many.
    async fn collect_ledger(self) -> Result<i64, StoreError> {
        let n = sqlx::query(
            "DELETE FROM outputs o WHERE o.created_at < now() - interval '1 hour'
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.output_key = o.key)",
        )
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(n as i64)
    }

    /// Dataset versions (id, name, version) whose rows may go: not pruned, not the latest
    /// version of their name, and no run outside `pruning` (runs about to be pruned) that is
    /// not pruned uses them.
    async fn prunable_versions(self, pruning: &[Uuid]) -> Result<Vec<(i64, String, i32)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT d.id, d.name, d.version FROM datasets d
             WHERE d.pruned_at IS NULL
               AND d.version < (SELECT max(version) FROM datasets l WHERE l.name = d.name)
               AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.dataset_id = d.id AND r.pruned_at IS NULL
                                                      AND NOT r.id = ANY($1))
             ORDER BY d.name, d.version",
        )
        .bind(pruning)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Deletes a dataset version's interactions, users and items; its row stays, marked.
    async fn prune_dataset_version(self, dataset_id: i64) -> Result<i64, StoreError> {
        let mut tx = self.store.pool().begin().await?;
        let n = sqlx::query("DELETE FROM interactions WHERE dataset_id = $1")
            .bind(dataset_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM users WHERE dataset_id = $1").bind(dataset_id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM items WHERE dataset_id = $1").bind(dataset_id).execute(&mut *tx).await?;
        sqlx::query("UPDATE datasets SET pruned_at = now() WHERE id = $1").bind(dataset_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(n as i64)
    }

    /// Bytes (tables with their indexes) of tasks, task_deps, outputs and interactions.
    pub async fn corpus_bytes(self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT (pg_total_relation_size('tasks') + pg_total_relation_size('task_deps')
                     + pg_total_relation_size('outputs') + pg_total_relation_size('interactions'))::int8",
        )
        .fetch_one(self.store.pool())
        .await?)
    }

    /// Records that `train export` wrote run `run_id` to `path` (retention keeps the run).
    pub async fn record_export(self, run_id: Uuid, path: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO exports (run_id, path) VALUES ($1, $2)")
            .bind(run_id)
            .bind(path)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }
}
