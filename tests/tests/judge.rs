//! The optional judge stage (issue 18, `[stages] judge`): a task per reasoning task, asked of its
//! own (cheaper) endpoint after the reasoning is done, whose "Score: N" is stored on the output;
//! the corpus browser filters by it and `train export --min-judge-score` keeps the well-scored
//! rows. A judge whose reasoning failed fails without a call, and is judged once a retried
//! reasoning succeeds. An incremental run carries judges over, and an edited judge template
//! redoes the judges alone.

use reasonrec_coordinator::run::{PlanOptions, plan_run};
use reasonrec_core::PromptLibrary;
use reasonrec_core::settings::EndpointSettings;
use reasonrec_mock_teacher::MockConfig;
use reasonrec_store::browse::TaskFilter;
use reasonrec_tests::{TestEnv, count, repo_root};
use reasonrec_trainer::export::{ExportOptions, export_run};
use reasonrec_trainer::filters::FilterOptions;
use std::collections::{BTreeMap, HashSet};
use uuid::Uuid;

const MAIN_MODEL: &str = "teacher-large";
const JUDGE_MODEL: &str = "judge-small";

/// Reasoning on endpoint "main", judges on endpoint "cheap" (same mock, another model name).
fn judged(env: &mut TestEnv) {
    let base = env.settings.teacher.endpoints[0].clone();
    env.settings.teacher.endpoints = vec![
        EndpointSettings { name: "main".into(), model: MAIN_MODEL.into(), ..base.clone() },
        EndpointSettings { name: "cheap".into(), model: JUDGE_MODEL.into(), ..base },
    ];
    env.settings.stages.judge = true;
    env.settings.stages.judge_endpoints = vec!["cheap".into()];
}

/// (reasoning subject -> judge score) of a run's done judges.
async fn judge_scores(env: &TestEnv, run: Uuid) -> anyhow::Result<BTreeMap<String, Option<i16>>> {
    Ok(sqlx::query_as(
        "SELECT t.subject, o.score FROM tasks t JOIN outputs o ON o.key = t.output_key
         WHERE t.run_id = $1 AND t.stage = 'judge' AND t.state = 'done'",
    )
    .bind(run)
    .fetch_all(env.store.pool())
    .await?
    .into_iter()
    .collect())
}

/// The exported examples' task ids (every split file's JSONL rows).
fn exported(dir: &std::path::Path) -> anyhow::Result<HashSet<Uuid>> {
    let mut out = HashSet::new();
    for split in ["train", "validation", "test"] {
        let path = dir.join(format!("{split}.jsonl"));
        if path.exists() {
            for line in std::fs::read_to_string(path)?.lines() {
                let v: serde_json::Value = serde_json::from_str(line)?;
                out.insert(v["id"].as_str().unwrap_or_default().parse()?);
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_scores_every_reasoning_answer_on_its_own_endpoint_and_the_export_keeps_the_well_scored()
-> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.sampling.max_users = 40;
    judged(&mut env);
    env.ingest_sample().await?;
    let run = plan_run(&env.store, &env.settings, "sample", PlanOptions::default()).await?;
    assert_eq!(run.by_stage.get("judge"), run.by_stage.get("reasoning"), "{:?}", run.by_stage);
    let run = run.run_id;
    env.run_to_completion(run).await?;
    let s = &env.store;
    let reasoning =
        count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND stage = 'reasoning' AND state = 'done'", run)
            .await?;
    assert!(reasoning >= 30, "{reasoning} reasoning tasks done");

    // Every reasoning answer judged once, by the judge endpoint's model, after it was written.
    let scores = judge_scores(&env, run).await?;
    assert_eq!(scores.len() as i64, reasoning);
    assert!(scores.values().all(|s| s.is_some_and(|s| (1..=5).contains(&s))), "{scores:?}");
    let models = |stage: &str| {
        let sql = format!(
            "SELECT DISTINCT o.model FROM tasks t JOIN outputs o ON o.key = t.output_key
             WHERE t.run_id = $1 AND t.stage = '{stage}'"
        );
        async move { anyhow::Ok(sqlx::query_scalar::<_, String>(&sql).bind(run).fetch_all(s.pool()).await?) }
    };
    assert_eq!(models("judge").await?, [JUDGE_MODEL]);
    assert_eq!(models("reasoning").await?, [MAIN_MODEL]);
    let early = count(
        s,
        "SELECT count(*) FROM tasks j JOIN tasks r ON r.run_id = j.run_id AND r.stage = 'reasoning' AND r.subject = j.subject
         WHERE j.run_id = $1 AND j.stage = 'judge' AND (j.published_at IS NULL OR j.published_at < r.done_at
               OR NOT EXISTS (SELECT 1 FROM task_deps d WHERE d.task_id = j.id AND d.depends_on = r.id))",
        run,
    )
    .await?;
    assert_eq!(early, 0, "a judge depends on its reasoning and is published after it is done");
    let stats = env.mock.stats();
    assert_eq!(stats.by_kind.get("judge").copied().unwrap_or(0) as i64, reasoning, "{stats:?}");
    let spread: HashSet<i16> = scores.values().flatten().copied().collect();
    assert!(spread.len() >= 3, "the mock's scores vary: {spread:?}");

    // The browser: a reasoning row shows its judge's score, and the score filters.
    let low = TaskFilter { stage: Some(reasonrec_core::Stage::Reasoning), max_score: Some(3), ..TaskFilter::default() };
    let page = s.browser().tasks(run, &low, None, 500).await?;
    let expected_low = scores.values().filter(|s| s.is_some_and(|s| s <= 3)).count();
    assert_eq!(page.len(), expected_low);
    assert!(page.iter().all(|r| r.score.is_some_and(|s| s <= 3) && scores.get(&r.subject) == Some(&r.score)));
    let judges = TaskFilter { stage: Some(reasonrec_core::Stage::Judge), min_score: Some(4), ..TaskFilter::default() };
    let page = s.browser().tasks(run, &judges, None, 500).await?;
    assert_eq!(page.len(), scores.values().filter(|s| s.is_some_and(|s| s >= 4)).count());
    let detail = s.browser().task_detail(page[0].id).await?;
    assert_eq!(detail.row.score, page[0].score);
    assert!(detail.upstream.iter().any(|u| u.stage == reasonrec_core::Stage::Reasoning), "{:?}", detail.upstream);

    // The export: --min-judge-score 4 keeps exactly the reasoning rows their judge scored 4 or 5.
    let prompts = PromptLibrary::load(&env.settings.prompts.dir)?;
    let dir = tempfile::tempdir()?;
    let mut opts = ExportOptions::new(dir.path());
    opts.filters = FilterOptions { min_judge_score: Some(4), ..FilterOptions::default() };
    let manifest = export_run(s, &prompts, run, &opts, &mut |_| {}).await?;
    let high: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT r.id, r.subject FROM tasks r WHERE r.run_id = $1 AND r.stage = 'reasoning' AND r.state = 'done'",
    )
    .bind(run)
    .fetch_all(s.pool())
    .await?;
    let keep: HashSet<Uuid> = high
        .iter()
        .filter(|(_, subj)| scores.get(subj).copied().flatten().is_some_and(|s| s >= 4))
        .map(|(id, _)| *id)
        .collect();
    assert!(!keep.is_empty() && keep.len() < high.len(), "{} of {}", keep.len(), high.len());
    assert_eq!(exported(dir.path())?, keep);
    let j = manifest.filters.min_judge_score.ok_or_else(|| anyhow::anyhow!("no judge filter in the manifest"))?;
    assert_eq!((j.min_score, j.below, j.unjudged), (4, (high.len() - keep.len()) as u64, 0));
    assert_eq!(manifest.tasks.exported, keep.len() as u64);
    // Without the filter every reasoning row is written, and judges are never examples.
    let all = tempfile::tempdir()?;
    export_run(s, &prompts, run, &ExportOptions::new(all.path()), &mut |_| {}).await?;
    assert_eq!(exported(all.path())?.len(), high.len());

    // Nothing changed: an incremental run carries every judge over. An edited judge template
    // makes the judges stale, and only them.
    let again =
        plan_run(&env.store, &env.settings, "sample", PlanOptions { incremental: true, dry_run: false }).await?;
    let regen = again.regeneration.clone().unwrap_or_default();
    assert_eq!(regen.stale_total(), 0, "{regen:?}");
    assert_eq!(regen.reused.get("judge").copied(), Some(reasoning as u64));
    let prompts_dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(repo_root().join("prompts"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), prompts_dir.path().join(entry.file_name()))?;
    }
    let judge_template = prompts_dir.path().join("judge.default.j2");
    let text = std::fs::read_to_string(&judge_template)?;
    std::fs::write(&judge_template, text.replace("You review explanations", "You carefully review explanations"))?;
    env.settings.prompts.dir = prompts_dir.path().to_path_buf();
    let edited =
        plan_run(&env.store, &env.settings, "sample", PlanOptions { incremental: true, dry_run: false }).await?;
    let regen = edited.regeneration.clone().unwrap_or_default();
    assert_eq!(regen.stale.keys().collect::<Vec<_>>(), ["judge"], "{regen:?}");
    assert_eq!(regen.stale_in("judge"), reasoning as u64);
    assert_eq!(regen.stale["judge"].get("template_changed").copied(), Some(reasoning as u64), "{regen:?}");
    env.mock.reset_stats();
    env.run_to_completion(edited.run_id).await?;
    let stats = env.mock.stats();
    assert_eq!(stats.by_kind.get("judge").copied().unwrap_or(0) as i64, reasoning, "{stats:?}");
    assert_eq!(stats.ok as i64, reasoning, "only the judges were asked again: {stats:?}");
    assert_eq!(judge_scores(&env, edited.run_id).await?.len() as i64, reasoning);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_whose_reasoning_failed_fails_without_a_call_and_is_judged_once_a_retry_succeeds() -> anyhow::Result<()>
{
    let mut env = TestEnv::with_mock(MockConfig { rate_contradict: 1.0, ..MockConfig::default() }).await?;
    env.settings.sampling.max_users = 12;
    env.settings.stages.max_reasks = 0;
    judged(&mut env);
    env.ingest_sample().await?;
    let run = plan_run(&env.store, &env.settings, "sample", PlanOptions::default()).await?.run_id;
    env.run_to_completion(run).await?;
    let s = &env.store;
    let n = count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND stage = 'reasoning'", run).await?;
    let failed = |stage: &'static str| {
        let sql = format!("SELECT count(*) FROM tasks WHERE run_id = $1 AND stage = '{stage}' AND state = 'failed'");
        async move { count(s, &sql, run).await }
    };
    assert_eq!(failed("reasoning").await?, n, "every answer contradicted its label");
    assert_eq!(failed("judge").await?, n);
    let nothing = count(
        s,
        "SELECT count(*) FROM tasks WHERE run_id = $1 AND stage = 'judge' AND last_error LIKE '%no answer to judge%'",
        run,
    )
    .await?;
    assert_eq!(nothing, n, "a judge without a reasoning answer says so");
    assert_eq!(env.mock.stats().by_kind.get("judge"), None, "and costs no call");
    let judge_attempts = count(
        s,
        "SELECT count(*) FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE a.run_id = $1 AND t.stage = 'judge'",
        run,
    )
    .await?;
    assert_eq!(judge_attempts, 0);

    // The teacher behaves again; retry-failed puts both back. However the judges and their
    // reasoning interleave, each judge ends done with a score of the reasoning's answer.
    let mut cfg = env.mock.config();
    cfg.rate_contradict = 0.0;
    env.mock.set_config(cfg).map_err(anyhow::Error::msg)?;
    assert_eq!(s.runs().retry_failed(run).await? as i64, 2 * n);
    env.run_to_completion(run).await?;
    let scores = judge_scores(&env, run).await?;
    assert_eq!(scores.len() as i64, n);
    assert!(scores.values().all(Option::is_some));
    let judged_before_answer = count(
        s,
        "SELECT count(*) FROM tasks j JOIN tasks r ON r.run_id = j.run_id AND r.stage = 'reasoning' AND r.subject = j.subject
         JOIN outputs o ON o.key = j.output_key
         WHERE j.run_id = $1 AND j.stage = 'judge' AND o.created_at < r.done_at",
        run,
    )
    .await?;
    assert_eq!(judged_before_answer, 0, "no judge output predates its reasoning's answer");
    env.cleanup().await
}
