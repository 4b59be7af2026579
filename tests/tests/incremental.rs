//! Incremental regeneration (issue 8): a run of the whole method completes, then something
//! changes (nothing, one rating, a template, the model, the clock, failures) and an incremental
//! run must find exactly the stale tasks, carry the rest over without a message, and make the
//! mock answer exactly the stale ones.

use reasonrec_coordinator::regenerate::Regeneration;
use reasonrec_coordinator::{PlanOptions, RunPlan, create_run, plan_run};
use reasonrec_mock_teacher::MockConfig;
use reasonrec_tests::{TestEnv, count, sample_copy};
use std::collections::BTreeMap;
use std::path::Path;
use uuid::Uuid;

const USERS: usize = 12;

async fn env_with(mock: MockConfig) -> anyhow::Result<TestEnv> {
    let mut env = TestEnv::with_mock(mock).await?;
    env.full_method();
    env.settings.sampling.max_users = USERS;
    env.ingest_sample().await?;
    Ok(env)
}

/// Publishes the run and works it with one in-process worker until it is completed.
async fn complete(env: &TestEnv, run: Uuid) -> anyhow::Result<()> {
    env.run_to_completion(run).await
}

async fn first_run(env: &TestEnv) -> anyhow::Result<RunPlan> {
    let plan = create_run(&env.store, &env.settings, "sample").await?;
    complete(env, plan.run_id).await?;
    Ok(plan)
}

async fn incremental(env: &TestEnv, dry_run: bool) -> anyhow::Result<RunPlan> {
    Ok(plan_run(&env.store, &env.settings, "sample", PlanOptions { incremental: true, dry_run }).await?)
}

fn regen(plan: &RunPlan) -> &Regeneration {
    match &plan.regeneration {
        Some(r) => r,
        None => panic!("an incremental or dry-run plan reports its regeneration"),
    }
}

/// stage -> reason -> stale tasks, as a plain map for assert_eq.
fn stale(plan: &RunPlan) -> BTreeMap<String, BTreeMap<String, u64>> {
    regen(plan).stale.clone()
}

fn reasons(entries: &[(&str, &str, u64)]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut m: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for &(stage, reason, n) in entries {
        m.entry(stage.into()).or_default().insert(reason.into(), n);
    }
    m
}

async fn tasks_of(env: &TestEnv, run: Uuid, sql_filter: &str) -> anyhow::Result<i64> {
    count(&env.store, &format!("SELECT count(*) FROM tasks WHERE run_id = $1 AND {sql_filter}"), run).await
}

async fn ingest_version(env: &TestEnv, dir: &Path) -> anyhow::Result<()> {
    let ds = reasonrec_dataset::load("ml-1m", dir, "sample")?;
    let _ = std::fs::remove_dir_all(dir);
    let out = env.store.datasets().ingest(&ds).await?;
    anyhow::ensure!(matches!(out, reasonrec_store::datasets::IngestOutcome::Created { version: 2, .. }), "{out:?}");
    Ok(())
}

/// (user, item, rating, ts) of ratings.dat lines.
fn fields(line: &str) -> (String, String, String, i64) {
    let f: Vec<&str> = line.split("::").collect();
    (f[0].into(), f[1].into(), f[2].into(), f[3].parse().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_data_plans_nothing_stale_and_the_teacher_is_not_called() -> anyhow::Result<()> {
    let env = env_with(MockConfig::default()).await?;
    let run1 = first_run(&env).await?;
    let s = &env.store;
    assert_eq!(tasks_of(&env, run1.run_id, "fingerprint IS NULL").await?, 0, "plain runs store fingerprints too");
    assert_eq!(tasks_of(&env, run1.run_id, "octet_length(fingerprint) = 32").await?, run1.tasks as i64);
    let requests = env.mock.stats().requests;

    let run2 = incremental(&env, false).await?;
    let r = regen(&run2);
    assert_eq!(r.previous_run, Some(run1.run_id));
    assert_eq!(run2.to_work(), 0, "{:?}", r.stale);
    assert_eq!(r.reused_total(), run1.tasks);
    assert_eq!((run2.tasks, &run2.by_stage), (run1.tasks, &run1.by_stage), "the same full graph");
    assert_eq!(s.runs().get(run2.run_id).await?.state, "completed", "nothing to work: complete at once");
    complete(&env, run2.run_id).await?;
    assert_eq!(env.mock.stats().requests, requests, "not a single teacher request");
    assert_eq!(tasks_of(&env, run2.run_id, "state = 'done'").await?, run1.tasks as i64);
    assert_eq!(tasks_of(&env, run2.run_id, "published_at IS NOT NULL").await?, 0, "no message was sent");
    // Every task carries the same output and fingerprint as its twin in run 1.
    let twins: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tasks a JOIN tasks b ON b.run_id = $2 AND b.stage = a.stage AND b.subject = a.subject
         WHERE a.run_id = $1 AND a.output_key = b.output_key AND a.fingerprint = b.fingerprint",
    )
    .bind(run1.run_id)
    .bind(run2.run_id)
    .fetch_one(s.pool())
    .await?;
    assert_eq!(twins, run1.tasks as i64);
    // The trainer exports one run: the carried-over run is a complete corpus.
    let status = reasonrec_coordinator::status::run_status(s, run2.run_id).await?;
    assert_eq!((status.done, status.failed, status.counts.teacher_calls), (run1.tasks as i64, 0, 0));
    assert_eq!(status.counts.carried_done, run1.tasks as i64);
    assert_eq!(
        tasks_of(&env, run2.run_id, &format!("carried_from = '{}' AND done_at IS NULL", run1.run_id)).await?,
        run1.tasks as i64
    );

    // Runs chain: the next incremental run compares with run 2 and still finds nothing.
    let run3 = incremental(&env, false).await?;
    assert_eq!(regen(&run3).previous_run, Some(run2.run_id));
    assert_eq!(run3.to_work(), 0);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_changed_rating_in_a_new_version_makes_only_that_users_tasks_stale() -> anyhow::Result<()> {
    let env = env_with(MockConfig::default()).await?;
    let run1 = first_run(&env).await?;
    // User "1" is the first user (dense id 0). Flip like/dislike of its earliest rating, which
    // is in its profile window: its user profile changes, and with it its three reasonings.
    let dir = sample_copy(|lines| {
        let earliest = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| fields(l).0 == "1")
            .min_by_key(|(_, l)| fields(l).3)
            .map(|(i, _)| i)
            .unwrap_or(0);
        let (u, i, r, ts) = fields(&lines[earliest]);
        let flipped = if r.parse::<f32>().unwrap_or(0.0) > 3.0 { "1" } else { "5" };
        lines[earliest] = format!("{u}::{i}::{flipped}::{ts}");
    })?;
    ingest_version(&env, &dir).await?;
    assert_eq!(tasks_of(&env, run1.run_id, "user_id = 0 AND stage = 'reasoning'").await?, 3);
    let before = env.mock.stats();

    let run2 = incremental(&env, false).await?;
    assert_eq!(run2.dataset_version, 2);
    assert_eq!(regen(&run2).previous_dataset_version, Some(1), "the previous run is found by dataset name");
    assert_eq!(stale(&run2), reasons(&[("user_profile", "input_changed", 1), ("reasoning", "input_changed", 3)]));
    assert_eq!(run2.to_work(), 4);
    assert_eq!(regen(&run2).reused_total(), run1.tasks - 4);
    // Only user 0's tasks are worked; the rest is carried over done.
    assert_eq!(tasks_of(&env, run2.run_id, "state <> 'done'").await?, 4);
    assert_eq!(tasks_of(&env, run2.run_id, "state <> 'done' AND user_id = 0").await?, 4);
    complete(&env, run2.run_id).await?;
    let after = env.mock.stats();
    assert_eq!(after.requests - before.requests, 4, "exactly the stale tasks were asked");
    let kind = |s: &reasonrec_mock_teacher::MockStats, k: &str| s.by_kind.get(k).copied().unwrap_or(0);
    assert_eq!(kind(&after, "user_profile") - kind(&before, "user_profile"), 1);
    let reasoning = |s: &reasonrec_mock_teacher::MockStats| kind(s, "reasoning_like") + kind(s, "reasoning_dislike");
    assert_eq!(reasoning(&after) - reasoning(&before), 3);
    assert_eq!(tasks_of(&env, run2.run_id, "state = 'done'").await?, run1.tasks as i64);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_latest_interaction_makes_new_targets() -> anyhow::Result<()> {
    let env = env_with(MockConfig::default()).await?;
    let run1 = first_run(&env).await?;
    // User "1" rates one more film, after everything else: its targets move by one.
    let dir = sample_copy(|lines| {
        let mine: Vec<(String, String, String, i64)> = lines.iter().map(|l| fields(l)).filter(|f| f.0 == "1").collect();
        let last = mine.iter().map(|f| f.3).max().unwrap_or(0);
        let item = (1..).find(|i: &i32| !mine.iter().any(|f| f.1 == i.to_string())).unwrap_or(1);
        lines.push(format!("1::{item}::5::{}", last + 60));
    })?;
    ingest_version(&env, &dir).await?;
    let run2 = incremental(&env, false).await?;
    let st = stale(&run2);
    assert_eq!(st.get("reasoning"), Some(&BTreeMap::from([("new".to_string(), 3)])), "(user, item, split) keys moved");
    assert!(regen(&run2).stale_in("user_profile") <= 1 && regen(&run2).stale_in("item_profile") <= 1, "{st:?}");
    assert!(run2.to_work() <= 5);
    assert_eq!(
        tasks_of(&env, run2.run_id, "state <> 'done' AND (user_id IS NULL OR user_id <> 0)").await?,
        i64::try_from(regen(&run2).stale_in("item_profile"))?
    );
    complete(&env, run2.run_id).await?;
    assert_eq!(tasks_of(&env, run2.run_id, "state = 'done'").await?, run2.tasks as i64);
    let _ = run1;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_reasoning_template_makes_every_reasoning_stale_and_no_profile() -> anyhow::Result<()> {
    let mut env = env_with(MockConfig::default()).await?;
    let run1 = first_run(&env).await?;
    let reasoning_tasks = run1.by_stage.get("reasoning").copied().unwrap_or(0);
    let prompts = tempfile::tempdir()?;
    for e in std::fs::read_dir(&env.settings.prompts.dir)? {
        let e = e?;
        std::fs::copy(e.path(), prompts.path().join(e.file_name()))?;
    }
    let t = prompts.path().join("reasoning.movielens.j2");
    let mut text = std::fs::read_to_string(&t)?;
    text.push_str("Keep it under 150 words.\n");
    std::fs::write(&t, text)?;
    env.settings.prompts.dir = prompts.path().to_path_buf();
    let before = env.mock.stats().requests;

    let run2 = incremental(&env, false).await?;
    assert_eq!(stale(&run2), reasons(&[("reasoning", "template_changed", reasoning_tasks)]));
    complete(&env, run2.run_id).await?;
    assert_eq!(env.mock.stats().requests - before, reasoning_tasks);
    let new_version: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT o.template_version) FROM tasks t JOIN outputs o ON o.key = t.output_key
         WHERE t.run_id = $1 AND t.stage = 'reasoning'",
    )
    .bind(run2.run_id)
    .fetch_one(env.store.pool())
    .await?;
    assert_eq!(new_version, 1, "every reasoning of run 2 was made from the new template");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_model_makes_everything_stale_unless_the_config_keeps_other_teachers() -> anyhow::Result<()> {
    let mut env = env_with(MockConfig::default()).await?;
    let run1 = first_run(&env).await?;
    env.settings.teacher.endpoints[0].model = "mock-teacher-2".into();
    let before = env.mock.stats().requests;

    // Kept: nothing is stale, everything is carried over, nothing is asked.
    env.settings.regenerate.redo_other_teacher = false;
    let kept = incremental(&env, false).await?;
    assert_eq!(kept.to_work(), 0, "{:?}", regen(&kept).stale);
    assert_eq!(regen(&kept).kept_other_teacher.values().sum::<u64>(), run1.tasks);
    complete(&env, kept.run_id).await?;
    assert_eq!(env.mock.stats().requests, before);

    // Redone: compared with the run that kept them, every output is still the old model's.
    env.settings.regenerate.redo_other_teacher = true;
    let redo = incremental(&env, false).await?;
    assert_eq!(regen(&redo).previous_run, Some(kept.run_id));
    let all: Vec<(&str, &str, u64)> =
        run1.by_stage.iter().map(|(stage, n)| (stage.as_str(), "teacher_changed", *n)).collect();
    assert_eq!(stale(&redo), reasons(&all));
    complete(&env, redo.run_id).await?;
    assert_eq!(env.mock.stats().requests - before, run1.tasks);
    let new_model: i64 = count(
        &env.store,
        "SELECT count(*) FROM tasks t JOIN outputs o ON o.key = t.output_key WHERE t.run_id = $1 AND o.model = 'mock-teacher-2'",
        redo.run_id,
    )
    .await?;
    assert_eq!(new_model, run1.tasks as i64);
    // And then nothing is stale any more.
    assert_eq!(incremental(&env, true).await?.to_work(), 0);
    env.cleanup().await
}

/// Run 1 completes; the reasoning outputs of users 0..3 are then made two days old, and an
/// incremental run with `ttl_days = 1` is planned. Returns (run 1, run 2).
async fn expire_three_users(env: &mut TestEnv) -> anyhow::Result<(RunPlan, RunPlan)> {
    let run1 = first_run(env).await?;
    sqlx::query(
        "UPDATE outputs SET created_at = now() - interval '2 days'
         WHERE key IN (SELECT output_key FROM tasks WHERE run_id = $1 AND stage = 'reasoning' AND user_id < 3)",
    )
    .bind(run1.run_id)
    .execute(env.store.pool())
    .await?;
    let old = tasks_of(
        env,
        run1.run_id,
        "output_key IN (SELECT key FROM outputs WHERE created_at < now() - interval '1 day')",
    )
    .await?;
    assert_eq!(old, 9, "three users, three splits");
    assert_eq!(incremental(env, true).await?.to_work(), 0, "ttl_days = 0: outputs never expire");
    env.settings.regenerate.ttl_days = 1;
    let run2 = incremental(env, false).await?;
    Ok((run1, run2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_older_than_the_ttl_expire() -> anyhow::Result<()> {
    let mut env = env_with(MockConfig::default()).await?;
    let (run1, run2) = expire_three_users(&mut env).await?;
    assert_eq!(stale(&run2), reasons(&[("reasoning", "expired", 9)]));
    // Salted, so the worker does not find the expired answer under the same content key.
    let salted = tasks_of(&env, run2.run_id, &format!("input->>'key_salt' = '{}'", run2.run_id)).await?;
    assert_eq!(salted, 9);
    assert_eq!(tasks_of(&env, run2.run_id, "state <> 'done' AND user_id < 3 AND stage = 'reasoning'").await?, 9);
    complete(&env, run2.run_id).await?;
    assert_eq!(tasks_of(&env, run2.run_id, "state = 'done'").await?, run1.tasks as i64);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_outputs_are_asked_again_and_then_fresh() -> anyhow::Result<()> {
    let mut env = env_with(MockConfig::default()).await?;
    let before = env.mock.stats().requests;
    let (_, run2) = expire_three_users(&mut env).await?;
    let before = env.mock.stats().requests.max(before);
    complete(&env, run2.run_id).await?;
    assert_eq!(env.mock.stats().requests - before, 9, "the teacher was asked again");
    let fresh = tasks_of(
        &env,
        run2.run_id,
        "stage = 'reasoning' AND user_id < 3 AND output_key IN (SELECT key FROM outputs WHERE created_at > now() - interval '1 hour')",
    )
    .await?;
    assert_eq!(fresh, 9, "new ledger rows");
    assert_eq!(incremental(&env, true).await?.to_work(), 0, "fresh now");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tasks_are_redone_unless_the_config_keeps_them() -> anyhow::Result<()> {
    // Half the reasoning answers contradict their label and are not re-asked: they fail.
    let mut env = env_with(MockConfig { rate_contradict: 0.5, seed: 11, ..MockConfig::default() }).await?;
    env.settings.stages.max_reasks = 0;
    let run1 = first_run(&env).await?;
    let failed = tasks_of(&env, run1.run_id, "state = 'failed'").await?;
    assert!(failed > 0, "the mock made some reasoning tasks fail");
    assert_eq!(tasks_of(&env, run1.run_id, "state = 'failed' AND stage = 'reasoning'").await?, failed);
    env.mock.set_config(MockConfig::default()).map_err(anyhow::Error::msg)?;
    env.settings.stages.max_reasks = 2;

    let before = env.mock.stats().requests;

    // Kept: the failures are carried over failed (nothing to work, the run completes at once).
    env.settings.regenerate.redo_failed = false;
    let kept = incremental(&env, false).await?;
    assert_eq!(kept.to_work(), 0, "{:?}", regen(&kept).stale);
    assert_eq!(regen(&kept).kept_failed.get("reasoning").copied(), Some(failed as u64));
    assert_eq!(env.store.runs().get(kept.run_id).await?.state, "completed");
    assert_eq!(tasks_of(&env, kept.run_id, "state = 'failed' AND last_error LIKE 'failed in run %'").await?, failed);
    let status = reasonrec_coordinator::status::run_status(&env.store, kept.run_id).await?;
    assert_eq!((status.counts.carried_failed, status.counts.carried_done), (failed, run1.tasks as i64 - failed));

    // Redone: compared with the run that kept them, they are still the failed ones.
    env.settings.regenerate.redo_failed = true;
    let run2 = incremental(&env, false).await?;
    assert_eq!(regen(&run2).previous_run, Some(kept.run_id));
    assert_eq!(stale(&run2), reasons(&[("reasoning", "failed", failed as u64)]));
    complete(&env, run2.run_id).await?;
    assert_eq!(env.mock.stats().requests - before, failed as u64);
    assert_eq!(tasks_of(&env, run2.run_id, "state = 'done'").await?, run1.tasks as i64, "the corpus is whole now");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_and_reports_what_the_real_run_plans() -> anyhow::Result<()> {
    let mut env = env_with(MockConfig::default()).await?;
    env.settings.teacher.endpoints[0].price_input_per_mtok = 2.0;
    env.settings.teacher.endpoints[0].price_output_per_mtok = 8.0;
    let run1 = first_run(&env).await?;
    let dir = sample_copy(|lines| {
        let i = lines.iter().position(|l| fields(l).0 == "2").unwrap_or(0);
        let (u, item, r, ts) = fields(&lines[i]);
        let flipped = if r.parse::<f32>().unwrap_or(0.0) > 3.0 { "1" } else { "5" };
        lines[i] = format!("{u}::{item}::{flipped}::{ts}");
    })?;
    ingest_version(&env, &dir).await?;
    let rows = |env: &TestEnv| {
        let pool = env.store.pool().clone();
        async move {
            let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs").fetch_one(&pool).await?;
            let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks").fetch_one(&pool).await?;
            let edges: i64 = sqlx::query_scalar("SELECT count(*) FROM task_deps").fetch_one(&pool).await?;
            anyhow::Ok((runs, tasks, edges))
        }
    };
    let before = rows(&env).await?;
    let dry = incremental(&env, true).await?;
    assert_eq!(rows(&env).await?, before, "a dry run writes nothing");
    assert!(dry.dry_run && dry.run_id.is_nil());
    assert!(dry.to_work() > 0);
    let Some(est) = dry.estimate.clone() else { panic!("a dry run estimates") };
    assert_eq!(est.tasks, dry.to_work());
    assert!(est.input_tokens > 0 && est.output_tokens > 0 && est.cost_usd > 0.0, "{est:?}");
    for s in est.by_stage.values() {
        assert!(s.basis.contains(&run1.run_id.to_string()), "averages of the previous run: {}", s.basis);
    }
    let text = dry.render_regeneration();
    assert!(text.starts_with("dry run: nothing was written\n"), "{text}");
    assert!(text.contains("input_changed"), "{text}");

    let real = incremental(&env, false).await?;
    assert_eq!(real.regeneration, dry.regeneration, "the dry run reported what is then planned");
    assert_eq!((real.tasks, &real.by_stage), (dry.tasks, &dry.by_stage));
    assert_eq!(tasks_of(&env, real.run_id, "state <> 'done'").await?, dry.to_work() as i64);
    // Without --incremental a dry run counts every task as new.
    let plain =
        plan_run(&env.store, &env.settings, "sample", PlanOptions { incremental: false, dry_run: true }).await?;
    assert_eq!(plain.to_work(), plain.tasks);
    let plain_reasons: Vec<&str> = regen(&plain).stale.values().flat_map(|m| m.keys()).map(String::as_str).collect();
    assert_eq!(plain_reasons, vec!["new"; 3]);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_review_makes_its_item_profile_and_everything_that_used_it_stale() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.full_method();
    env.settings.sampling.history_len = 0;
    env.settings.sampling.profile_window = 5;
    let dir = std::env::temp_dir().join(format!("rr-incr-amz-{}", Uuid::new_v4().simple()));
    let spec =
        reasonrec_dataset::generate::GenerateSpec { users: 15, items: 40, min_ratings: 8, max_ratings: 12, seed: 5 };
    reasonrec_dataset::generate::generate_amazon(&dir, spec)?;
    let ds = reasonrec_dataset::load("amazon", &dir, "amz")?;
    let _ = std::fs::remove_dir_all(&dir);
    let dataset_id = env.store.datasets().ingest(&ds).await?.dataset_id();
    let run1 = create_run(&env.store, &env.settings, "amz").await?;
    complete(&env, run1.run_id).await?;
    let amz = |incremental, dry_run| plan_run(&env.store, &env.settings, "amz", PlanOptions { incremental, dry_run });
    assert_eq!(amz(true, true).await?.to_work(), 0, "review digests are stable");

    // One review of an item that has a profile task is edited in place.
    let item: i32 = sqlx::query_scalar(
        "SELECT t.item_id FROM tasks t WHERE t.run_id = $1 AND t.stage = 'item_profile'
           AND EXISTS (SELECT 1 FROM interactions i WHERE i.dataset_id = $2 AND i.item_id = t.item_id AND i.review IS NOT NULL)
         ORDER BY t.item_id LIMIT 1",
    )
    .bind(run1.run_id)
    .bind(dataset_id)
    .fetch_one(env.store.pool())
    .await?;
    sqlx::query(
        "UPDATE interactions SET review = jsonb_set(review, '{text}', '\"Fell apart after a week.\"')
         WHERE ctid = (SELECT ctid FROM interactions WHERE dataset_id = $1 AND item_id = $2 AND review IS NOT NULL LIMIT 1)",
    )
    .bind(dataset_id)
    .bind(item)
    .execute(env.store.pool())
    .await?;
    // Stale: the item's profile, and every task that depends on it, directly or through a user profile.
    let dependents = |stage: &'static str| {
        let pool = env.store.pool().clone();
        let run = run1.run_id;
        async move {
            let n: i64 = sqlx::query_scalar(
                "WITH ip AS (SELECT id FROM tasks WHERE run_id = $1 AND stage = 'item_profile' AND item_id = $2),
                      up AS (SELECT d.task_id AS id FROM task_deps d JOIN tasks t ON t.id = d.task_id
                             WHERE d.depends_on IN (SELECT id FROM ip) AND t.stage = 'user_profile')
                 SELECT count(DISTINCT t.id) FROM tasks t JOIN task_deps d ON d.task_id = t.id
                 WHERE t.stage = $3 AND (d.depends_on IN (SELECT id FROM ip) OR d.depends_on IN (SELECT id FROM up))",
            )
            .bind(run)
            .bind(item)
            .bind(stage)
            .fetch_one(&pool)
            .await?;
            anyhow::Ok(n as u64)
        }
    };
    let (users, reasonings) = (dependents("user_profile").await?, dependents("reasoning").await?);
    assert!(reasonings > 0, "the item is used by some reasoning");
    let mut expected = vec![("item_profile", "input_changed", 1)];
    if users > 0 {
        expected.push(("user_profile", "input_changed", users));
    }
    expected.push(("reasoning", "input_changed", reasonings));
    let before = env.mock.stats().requests;
    let run2 = amz(true, false).await?;
    assert_eq!(stale(&run2), reasons(&expected));
    complete(&env, run2.run_id).await?;
    assert_eq!(env.mock.stats().requests - before, 1 + users + reasonings);
    env.cleanup().await
}
