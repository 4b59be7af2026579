//! The ReasoningRec method end to end: item profiles -> user profiles -> reasoning, with the
//! answers validated against the stated label and re-asked when they contradict it.

use reasonrec_coordinator::{Outbox, create_run};
use reasonrec_core::stage::TaskState;
use reasonrec_core::validate::argued_outcome;
use reasonrec_core::{OutputKey, prompt::clean_data};
use reasonrec_mock_teacher::MockConfig;
use reasonrec_tests::{TestEnv, count};
use sqlx::Row;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_stages_every_reasoning_saw_its_user_profile_and_item_profiles() -> anyhow::Result<()> {
    let mut env = TestEnv::with_mock(MockConfig { latency_ms: 30, ..MockConfig::default() }).await?;
    env.full_method();
    let plan = env.plan_sample_run(60).await?;
    assert_eq!(plan.by_stage.get("user_profile"), Some(&60));
    assert_eq!(plan.by_stage.get("reasoning"), Some(&180), "train, validation and test per user");
    let run = plan.run_id;
    let s = &env.store;
    // One item profile per distinct item in any window.
    let windows_items: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT i) FROM (
            SELECT (h->>'item')::int AS i FROM tasks, jsonb_array_elements(input->'window') h WHERE run_id = $1 AND stage = 'user_profile'
            UNION ALL SELECT (h->>'item')::int FROM tasks, jsonb_array_elements(input->'history') h WHERE run_id = $1 AND stage = 'reasoning'
            UNION ALL SELECT item_id FROM tasks WHERE run_id = $1 AND stage = 'reasoning') x",
    )
    .bind(run)
    .fetch_one(s.pool())
    .await?;
    assert_eq!(plan.by_stage.get("item_profile").copied(), Some(windows_items as u64));
    assert_eq!(
        count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'ready' AND stage <> 'item_profile'", run)
            .await?,
        0
    );

    let broker = env.broker().await?;
    // A small backlog cap so the run behaves like a large one: ready tasks go out user by user.
    let outbox = Outbox::new(env.store.clone(), &broker).await?.with_max_outstanding(64);
    let (w1, w2) = (env.spawn_worker("w1")?, env.spawn_worker("w2")?);
    reasonrec_tests::drive_to_completion(&outbox, run, 120).await?;
    let (c1, c2) = (w1.shutdown().await?, w2.shutdown().await?);
    assert_eq!(count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND state <> 'done'", run).await?, 0);
    // Item profiles finishing at once share dependents: no commit was lost to a deadlock and no
    // answer was paid for twice.
    let requeued =
        c1.requeued.load(std::sync::atomic::Ordering::Relaxed) + c2.requeued.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(requeued, 0);
    assert_eq!(env.mock.stats().ok as i64, count(s, "SELECT count(*) FROM tasks WHERE run_id = $1", run).await?);

    // Dependencies were respected, and there was no barrier between stages: reasoning started
    // while item profiles were still being written.
    assert_eq!(
        count(
            s,
            "SELECT count(*) FROM task_deps d JOIN tasks a ON a.id = d.task_id JOIN tasks b ON b.id = d.depends_on
                  WHERE a.run_id = $1 AND a.published_at < b.done_at",
            run
        )
        .await?,
        0,
        "no task was published before everything it depends on was done"
    );
    let overlap: bool = sqlx::query_scalar(
        "SELECT (SELECT min(published_at) FROM tasks WHERE run_id = $1 AND stage = 'reasoning')
              < (SELECT max(done_at) FROM tasks WHERE run_id = $1 AND stage = 'item_profile')",
    )
    .bind(run)
    .fetch_one(s.pool())
    .await?;
    assert!(overlap, "the first reasoning tasks ran before the last item profile was written");

    // Re-render every reasoning prompt: it contains the user's profile and the profile of every
    // item it mentions, and its content key is the stored one (the answer was made from it).
    let processor = env.processor()?;
    let ep = &env.settings.teacher.endpoints[0];
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM tasks WHERE run_id = $1 AND stage = 'reasoning'")
        .bind(run)
        .fetch_all(s.pool())
        .await?;
    for id in ids {
        let task = s.tasks().load(id).await?;
        let prompt = reasonrec_worker::render::render_task(s, processor.prompts(), &task).await?;
        let key = OutputKey::compute(task.stage, &prompt, &ep.model, &ep.params);
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT output_key FROM tasks WHERE id = $1").bind(id).fetch_one(s.pool()).await?;
        assert_eq!(key.as_bytes(), stored.as_slice(), "task {id}: stored answer was made from this prompt");
        let text = prompt.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n");
        let deps = sqlx::query(
            "SELECT t.stage, o.text FROM task_deps d JOIN tasks t ON t.id = d.depends_on JOIN outputs o ON o.key = t.output_key
             WHERE d.task_id = $1",
        )
        .bind(id)
        .fetch_all(s.pool())
        .await?;
        let history_len = task.input["history"].as_array().map_or(0, Vec::len);
        let mut items = 0;
        for d in &deps {
            let (stage, out): (String, String) = (d.try_get(0)?, d.try_get(1)?);
            let cap = if stage == "user_profile" { 1500 } else { 400 };
            assert!(text.contains(&clean_data(&out, cap)), "task {id}: {stage} output missing from the prompt");
            items += usize::from(stage == "item_profile");
        }
        assert!(deps.iter().any(|d| d.try_get::<String, _>(0).is_ok_and(|s| s == "user_profile")));
        assert!(items >= 1 && items <= history_len + 1);
    }
    assert_eq!(env.mock.stats().by_kind.get("user_profile"), Some(&60));
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_contradict_the_label_are_re_asked_and_never_stored() -> anyhow::Result<()> {
    let mut env = TestEnv::with_mock(MockConfig { rate_contradict: 0.3, seed: 5, ..MockConfig::default() }).await?;
    env.settings.stages.max_reasks = 3;
    let plan = env.plan_sample_run(40).await?;
    let (broker, outbox) = env.outbox().await?;
    let w = env.spawn_worker("w")?;
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    w.shutdown().await?;
    let s = &env.store;
    let contradictions = env.mock.stats().contradictions;
    assert!(contradictions > 0, "the mock contradicted some answers");
    let status = reasonrec_coordinator::status::run_status(s, plan.run_id).await?;
    let rejected = status.counts.rejections.get("reasoning").and_then(|m| m.get("label_contradiction")).copied();
    assert_eq!(rejected, Some(contradictions as i64), "every contradiction was caught and counted");
    // What was stored argues for the true label.
    let rows =
        sqlx::query("SELECT t.label, o.text FROM tasks t JOIN outputs o ON o.key = t.output_key WHERE t.run_id = $1")
            .bind(plan.run_id)
            .fetch_all(s.pool())
            .await?;
    assert!(!rows.is_empty());
    for r in &rows {
        let (label, text): (bool, String) = (r.try_get(0)?, r.try_get(1)?);
        assert_eq!(argued_outcome(&text), Some(label), "{text}");
    }
    // A task fails only after 1 + 3 rejected answers, with the raw answer kept.
    let failed = env.tasks_in(plan.run_id, TaskState::Failed).await?;
    assert_eq!(
        count(
            s,
            "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'failed' AND attempts = 4
                  AND last_error LIKE 'answer rejected (label_contradiction)%raw answer: Summary:%'",
            plan.run_id
        )
        .await?,
        failed
    );
    assert_eq!(rows.len() as i64 + failed, 40);
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_profile_stages_off_reasoning_sees_raw_item_text() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.full_method();
    env.settings.stages.item_profile = false;
    env.settings.stages.user_profile = false;
    let plan = env.plan_sample_run(10).await?;
    assert_eq!(plan.by_stage.keys().collect::<Vec<_>>(), vec!["reasoning"]);
    assert_eq!(plan.tasks, 30);
    assert_eq!(
        count(
            &env.store,
            "SELECT count(*) FROM task_deps d JOIN tasks t ON t.id = d.task_id WHERE t.run_id = $1",
            plan.run_id
        )
        .await?,
        0
    );
    let (broker, outbox) = env.outbox().await?;
    let w = env.spawn_worker("w")?;
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    w.shutdown().await?;
    assert_eq!(env.tasks_in(plan.run_id, TaskState::Done).await?, 30);
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amazon_items_are_profiled_from_their_reviews_and_reasoning_uses_k_4() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.full_method();
    env.settings.sampling.history_len = 0; // the family default: 4 for Amazon
    env.settings.sampling.profile_window = 5;
    let dir = std::env::temp_dir().join(format!("rr-amz-{}", uuid::Uuid::new_v4().simple()));
    let spec =
        reasonrec_dataset::generate::GenerateSpec { users: 25, items: 60, min_ratings: 8, max_ratings: 14, seed: 9 };
    reasonrec_dataset::generate::generate_amazon(&dir, spec)?;
    let ds = reasonrec_dataset::load("amazon", &dir, "amz")?;
    let _ = std::fs::remove_dir_all(&dir);
    env.store.datasets().ingest(&ds).await?;
    let plan = create_run(&env.store, &env.settings, "amz").await?;
    let s = &env.store;
    assert_eq!(
        count(s, "SELECT max(jsonb_array_length(input->'history'))::int8 FROM tasks WHERE run_id = $1 AND stage = 'reasoning'", plan.run_id).await?,
        4
    );
    let (broker, outbox) = env.outbox().await?;
    let w = env.spawn_worker("w")?;
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 90).await?;
    w.shutdown().await?;
    assert_eq!(count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND state <> 'done'", plan.run_id).await?, 0);
    // An item profile prompt carries the item's sampled reviews.
    let processor = env.processor()?;
    let id: uuid::Uuid = sqlx::query_scalar(
        "SELECT t.id FROM tasks t JOIN runs r ON r.id = t.run_id JOIN items i ON i.dataset_id = r.dataset_id AND i.id = t.item_id
         WHERE t.run_id = $1 AND t.stage = 'item_profile' AND i.attrs->>'meta' = 'true' LIMIT 1",
    )
    .bind(plan.run_id)
    .fetch_one(s.pool())
    .await?;
    let task = s.tasks().load(id).await?;
    let prompt = reasonrec_worker::render::render_task(s, processor.prompts(), &task).await?;
    assert_eq!(prompt.template, "item_profile.amazon");
    let text = &prompt.messages[1].content;
    assert!(text.contains("## Reviews") && text.contains("stars: «") && text.contains("Brand: "), "{text}");
    broker.close().await;
    env.cleanup().await
}

#[tokio::test]
async fn balanced_labels_give_each_split_as_many_likes_as_dislikes() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.full_method();
    env.settings.stages.item_profile = false;
    env.settings.stages.user_profile = false;
    env.settings.sampling.balance_labels = true;
    env.settings.sampling.seed = 3;
    env.ingest_sample().await?;
    let plan = create_run(&env.store, &env.settings, "sample").await?;
    assert!(plan.dropped_for_balance > 0, "the sample is not balanced by itself");
    for split in ["train", "validation", "test"] {
        let (likes, dislikes) = plan.labels.get(split).copied().unwrap_or_default();
        assert_eq!(likes, dislikes, "{split}");
        assert!(likes > 50, "{split}: {likes}");
        let db: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE label) - count(*) FILTER (WHERE NOT label) FROM tasks WHERE run_id = $1 AND split = $2",
        )
        .bind(plan.run_id)
        .bind(split)
        .fetch_one(env.store.pool())
        .await?;
        assert_eq!(db, 0, "{split} in the database");
    }
    // Same seed, same selection.
    let again = create_run(&env.store, &env.settings, "sample").await?;
    let subjects = |run: uuid::Uuid| {
        sqlx::query_scalar::<_, String>("SELECT subject FROM tasks WHERE run_id = $1 ORDER BY subject")
            .bind(run)
            .fetch_all(env.store.pool())
    };
    assert_eq!(subjects(plan.run_id).await?, subjects(again.run_id).await?);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_over_the_word_cap_are_truncated_or_dropped_and_counted() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.sampling.max_prompt_words = 170;
    let plan = env.plan_sample_run(20).await?;
    let (broker, outbox) = env.outbox().await?;
    let w = env.spawn_worker("w")?;
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    w.shutdown().await?;
    let status = reasonrec_coordinator::status::run_status(&env.store, plan.run_id).await?;
    assert_eq!(status.done, 20);
    assert!(status.counts.truncated_prompts > 0, "10-item histories do not fit 170 words");
    assert_eq!(
        count(&env.store, "SELECT count(*) FROM tasks WHERE run_id = $1 AND history_truncated > 0", plan.run_id)
            .await?,
        status.counts.truncated_prompts
    );

    // Drop: a cap below the fixed instructions leaves nothing to send; no teacher call is made.
    env.settings.sampling.max_prompt_words = 40;
    env.settings.sampling.overlong = reasonrec_core::settings::Overlong::Drop;
    let before = env.mock.stats().requests;
    let plan = create_run(&env.store, &env.settings, "sample").await?;
    let w = env.spawn_worker("w2")?;
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    w.shutdown().await?;
    let status = reasonrec_coordinator::status::run_status(&env.store, plan.run_id).await?;
    assert_eq!((status.failed, status.counts.dropped_overlong), (20, 20));
    assert_eq!(env.mock.stats().requests, before, "dropped prompts never reach the teacher");
    broker.close().await;
    env.cleanup().await
}
