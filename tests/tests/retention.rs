//! Retention (`reasonrec run prune`): old finished runs lose their task rows, the ledger loses
//! outputs no task uses, old dataset versions lose their rows; snapshotted, exported, unfinished
//! and the newest completed runs stay whole, and the next incremental run still works.

use reasonrec_coordinator::{PlanOptions, create_run, plan_run, prune};
use reasonrec_core::settings::RetentionSettings;
use reasonrec_tests::{TestEnv, count, sample_copy};
use uuid::Uuid;

/// An incremental run of `sample`, worked to completion.
async fn night(env: &TestEnv) -> anyhow::Result<Uuid> {
    let plan = plan_run(&env.store, &env.settings, "sample", PlanOptions { incremental: true, dry_run: false }).await?;
    if env.store.runs().get(plan.run_id).await?.state != "completed" {
        env.run_to_completion(plan.run_id).await?;
    }
    Ok(plan.run_id)
}

/// A new version of `sample` with the `n`-th rating changed.
async fn new_version(env: &TestEnv, n: usize) -> anyhow::Result<()> {
    let dir = sample_copy(|lines| {
        if let Some(line) = lines.get_mut(n) {
            let f: Vec<String> = line.split("::").map(String::from).collect();
            let flipped = if f.get(2).is_some_and(|r| r.as_str() > "3") { "1" } else { "5" };
            *line = format!("{}::{}::{flipped}::{}", f[0], f[1], f[3]);
        }
    })?;
    let ds = reasonrec_dataset::load("ml-1m", &dir, "sample")?;
    let _ = std::fs::remove_dir_all(&dir);
    env.store.datasets().ingest(&ds).await?;
    Ok(())
}

async fn tasks(env: &TestEnv, run: Uuid) -> anyhow::Result<i64> {
    count(&env.store, "SELECT count(*) FROM tasks WHERE run_id = $1", run).await
}

async fn interactions(env: &TestEnv, version: i32) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM interactions i JOIN datasets d ON d.id = i.dataset_id
         WHERE d.name = 'sample' AND d.version = $1",
    )
    .bind(version)
    .fetch_one(env.store.pool())
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_old_runs_unused_outputs_and_old_versions_and_keeps_what_is_named() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.full_method();
    env.settings.sampling.max_users = 4;
    env.ingest_sample().await?;
    let s = &env.store;
    // Version 1: a full run, a night, a cancelled run.
    let run1 = create_run(s, &env.settings, "sample").await?.run_id;
    env.run_to_completion(run1).await?;
    let run2 = night(&env).await?;
    let run3 = create_run(s, &env.settings, "sample").await?.run_id;
    s.runs().cancel(run3).await?;
    // Version 2: two nights, one snapshotted, one exported. Version 3: the latest night.
    new_version(&env, 0).await?;
    let run4 = night(&env).await?;
    s.lifecycle().create_snapshot("kept", run4, None).await?;
    let run5 = night(&env).await?;
    s.pruning().record_export(run5, "/exports/night5").await?;
    new_version(&env, 1).await?;
    let run6 = night(&env).await?;
    // An answer no task uses (a superseded answer, written two hours ago).
    sqlx::query(
        "INSERT INTO outputs (key, stage, text, template, template_version, model, params, input_tokens,
                              output_tokens, run_id, task_id, created_at)
         VALUES ($1, 'reasoning', 'orphan', 't', '1', 'm', '{}', 1, 1, $2, $2, now() - interval '2 hours')",
    )
    .bind(vec![9u8; 32])
    .bind(run1)
    .execute(s.pool())
    .await?;
    let attempts1 = count(s, "SELECT count(*) FROM attempts WHERE run_id = $1", run1).await?;
    assert!(attempts1 > 0);
    let pruned_tasks = tasks(&env, run1).await? + tasks(&env, run2).await? + tasks(&env, run3).await?;
    let edges_sql = "SELECT count(*) FROM task_deps d JOIN tasks t ON t.id = d.task_id WHERE t.run_id = $1";
    let edges = count(s, edges_sql, run1).await? + count(s, edges_sql, run2).await? + count(s, edges_sql, run3).await?;
    assert!(edges > 0);
    let kept_before = [tasks(&env, run4).await?, tasks(&env, run5).await?, tasks(&env, run6).await?];
    let policy = RetentionSettings { keep_completed: 1, keep_days: 0, on_schedule: false };

    let dry = prune(s, &policy, true).await?;
    assert_eq!(dry.runs, vec![run1, run2, run3]);
    assert_eq!(dry.dataset_versions, vec![("sample".to_string(), 1)]);
    assert!(tasks(&env, run1).await? > 0, "a dry run deletes nothing");

    let report = prune(s, &policy, false).await?;
    assert_eq!(report.runs, vec![run1, run2, run3], "all but the snapshotted, exported and latest runs");
    for run in [run1, run2, run3] {
        assert_eq!(tasks(&env, run).await?, 0);
        assert!(s.runs().get(run).await?.pruned_at.is_some(), "the run row stays, marked");
    }
    assert_eq!((report.tasks_deleted, report.edges_deleted), (pruned_tasks, edges));
    let orphan_edges: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM task_deps d WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = d.task_id)",
    )
    .fetch_one(s.pool())
    .await?;
    assert_eq!(orphan_edges, 0, "no edge outlives its task");
    assert_eq!(
        [tasks(&env, run4).await?, tasks(&env, run5).await?, tasks(&env, run6).await?],
        kept_before,
        "kept runs are whole"
    );
    assert_eq!(count(s, "SELECT count(*) FROM attempts WHERE run_id = $1", run1).await?, attempts1, "spend stays");
    assert_eq!(report.outputs_deleted, 1, "only the orphan answer");
    assert_eq!(report.dataset_versions, vec![("sample".to_string(), 1)]);
    assert_eq!(interactions(&env, 1).await?, 0);
    assert!(interactions(&env, 2).await? > 0 && interactions(&env, 3).await? > 0);
    assert!(report.bytes_after <= report.bytes_before);

    // The next night still compares with the latest run and carries everything over.
    let run7 = night(&env).await?;
    assert_eq!(s.runs().get(run7).await?.state, "completed");
    assert_eq!(tasks(&env, run7).await?, kept_before[2]);
    let status = reasonrec_coordinator::status::run_status(s, run1).await?;
    assert!(status.render().contains("pruned at"), "{}", status.render());
    // Pruning again lets run 6 go (run 7 is now the latest); versions 2 and 3 stay in use.
    let again = prune(s, &policy, false).await?;
    assert_eq!(again.runs, vec![run6]);
    assert!(again.dataset_versions.is_empty());
    env.cleanup().await
}
