//! `browse_bench`: the corpus browser's page cost on a large run (issue 18), for
//! `scripts/bench_browse.sh`. Plans a real run of the bundled sample (a real run row and
//! dataset), adds `--tasks` synthetic done reasoning tasks to it by SQL (ids in UUIDv7 order as
//! the planner makes them, one ledger output each, 1 in 1,000 rejected by a reviewer, 1 in 100
//! with a validator rejection among its attempts, 1 in 10 judged), then times each kind of page through
//! `Browser::tasks` / `Browser::task_detail`: the median of `--repeat` reads, in ms.

use clap::Parser;
use reasonrec_coordinator::create_run;
use reasonrec_core::stage::Stage;
use reasonrec_store::browse::{MarkFilter, TaskFilter};
use reasonrec_tests::TestEnv;
use std::time::Instant;
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    tasks: i64,
    #[arg(long, default_value_t = 7)]
    repeat: usize,
    #[arg(long, default_value_t = 50)]
    page: i64,
    /// Build the answers' trigram index (`reasonrec corpus text-index`) before the reads.
    #[arg(long)]
    text_index: bool,
    /// Leave the database behind (its URL is printed) to look at the plans with psql.
    #[arg(long)]
    keep: bool,
    /// Time the pages on a database an earlier `--keep` left (its URL): no setup.
    #[arg(long)]
    reuse: Option<String>,
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Done tasks of `stage` of run $2, one per `i` in `generate_series(step, $1, step)`: UUIDv7-shaped
/// ids (48-bit ms from `base_ms`, then a counter) in insertion order, as the planner makes them;
/// output key `sha256(int8send(key))`.
fn tasks_sql(stage: &str, base_ms: i64, step: i64, key: &str) -> String {
    format!(
        "INSERT INTO tasks (id, run_id, stage, subject, user_id, item_id, split, label, input, state, output_key, done_at)
         SELECT (lpad(to_hex({base_ms} + i / 4096), 12, '0') || '7' || lpad(to_hex(i % 4096), 3, '0') || '8'
                 || substr(md5(i::text), 1, 15))::uuid,
                $2, '{stage}', 'u' || i || ':i1:test', 1, 1, 'test', i % 2 = 0,
                '{{\"history\": [], \"target\": 1}}'::jsonb, 'done', sha256(int8send({key})), now()
         FROM generate_series({step}, $1::bigint, {step}) i"
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if let Some(url) = &a.reuse {
        let db = reasonrec_core::settings::DatabaseSettings { url: url.clone(), ..Default::default() };
        let s = reasonrec_store::Store::connect(&db).await?;
        let run: Uuid = sqlx::query_scalar("SELECT run_id FROM tasks GROUP BY run_id ORDER BY count(*) DESC LIMIT 1")
            .fetch_one(s.pool())
            .await?;
        return measure(&s, run, &a).await;
    }
    let env = TestEnv::new().await?;
    let (run, setup, index_build) = setup(&env, &a).await?;
    measure(&env.store, run, &a).await?;
    println!("\nsetup (synthetic rows by SQL): {setup:.1} s");
    if a.text_index {
        println!("the answers' trigram index built in {index_build:.1} s");
    }
    if a.keep {
        println!("database kept: {}", env.settings.database.url);
        // Not dropped: the drop would remove the database.
        std::mem::forget(env);
        return Ok(());
    }
    env.cleanup().await
}

/// The run with its synthetic tasks; seconds of setup and of the text index's build.
async fn setup(env: &TestEnv, a: &Args) -> anyhow::Result<(Uuid, f64, f64)> {
    let mut settings = env.settings.clone();
    settings.sampling.max_users = 1;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &settings, "sample").await?.run_id;
    let s = env.store.clone();
    let t0 = Instant::now();
    // The synthetic tasks and their answers; a judge (`[stages] judge`) for 1 in 10 reasoning
    // tasks, scores 1-5 in turn, its ids after the reasoning tasks', its subject the judged one's.
    let statements = [
        "INSERT INTO outputs (key, stage, text, template, template_version, model, params, input_tokens, output_tokens,
                              run_id, task_id, words)
         SELECT sha256(int8send(i)), 'reasoning',
                'Prediction: ' || CASE WHEN i % 2 = 0 THEN 'Yes' ELSE 'No' END || E'\\nReasoning: ' ||
                repeat('The viewer favours tense crime dramas with strong leads ', (3 + i % 7)::int) ||
                CASE WHEN i % 100000 = 7 THEN ' zanzibar' ELSE '' END,
                'reasoning.movielens', 'v1', 'bench-model', '{}'::jsonb, 300, 80, $2, $2,
                3 + 9 * (3 + i % 7)::int + CASE WHEN i % 100000 = 7 THEN 1 ELSE 0 END
         FROM generate_series(1, $1::bigint) i"
            .to_string(),
        tasks_sql("reasoning", 1_700_000_000_000, 1, "i"),
        "INSERT INTO outputs (key, stage, text, template, template_version, model, params, input_tokens, output_tokens,
                              run_id, task_id, words, score)
         SELECT sha256(int8send(-i)), 'judge', 'Score: ' || (1 + (i / 10) % 5) || E'\\nFaithful.', 'judge.default',
                'v1', 'bench-judge', '{}'::jsonb, 200, 10, $2, $2, 3, (1 + (i / 10) % 5)::smallint
         FROM generate_series(10, $1::bigint, 10) i"
            .to_string(),
        tasks_sql("judge", 1_800_000_000_000, 10, "-i"),
    ];
    for sql in &statements {
        sqlx::query(sql).bind(a.tasks).bind(run).execute(s.pool()).await?;
    }
    sqlx::query(
        "INSERT INTO audit_marks (output_key, verdict, reason, reviewer)
         SELECT sha256(int8send(i)), 'rejected', 'bench', 'bench' FROM generate_series(1, $1::bigint, 1000) i",
    )
    .bind(a.tasks)
    .execute(s.pool())
    .await?;
    sqlx::query(
        "INSERT INTO attempts (task_id, run_id, endpoint, model, started_at, duration_ms, http_status, error_class, error)
         SELECT t.id, t.run_id, 'bench', 'bench-model', now(), 100, 200, 'rejected', 'too_short: bench'
         FROM tasks t WHERE t.run_id = $1 AND t.subject LIKE 'u%00:i1:test'",
    )
    .bind(run)
    .execute(s.pool())
    .await?;
    sqlx::query("ANALYZE").execute(s.pool()).await?;
    let setup = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    if a.text_index {
        s.browser().set_text_index(true).await?;
        sqlx::query("ANALYZE outputs").execute(s.pool()).await?;
    }
    let index_build = t1.elapsed().as_secs_f64();
    Ok((run, setup, index_build))
}

/// Times each kind of page on `run` and prints the table.
async fn measure(s: &reasonrec_store::Store, run: Uuid, a: &Args) -> anyhow::Result<()> {
    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE run_id = $1 AND stage = 'reasoning'")
        .bind(run)
        .fetch_one(s.pool())
        .await?;

    let middle: Uuid = sqlx::query_scalar("SELECT id FROM tasks WHERE run_id = $1 ORDER BY id OFFSET $2 LIMIT 1")
        .bind(run)
        .bind(tasks / 2)
        .fetch_one(s.pool())
        .await?;

    let cases: Vec<(&str, TaskFilter, Option<Uuid>)> = vec![
        ("first page, no filter", TaskFilter::default(), None),
        ("middle page, no filter", TaskFilter::default(), Some(middle)),
        ("label = liked", TaskFilter { label: Some(true), ..TaskFilter::default() }, Some(middle)),
        ("words 30-40", TaskFilter { min_words: Some(30), max_words: Some(40), ..TaskFilter::default() }, None),
        (
            "mark = rejected (1 in 1,000)",
            TaskFilter { mark: Some(MarkFilter::Rejected), ..TaskFilter::default() },
            None,
        ),
        (
            "reasoning judged 5 (1 in 50)",
            TaskFilter { stage: Some(Stage::Reasoning), min_score: Some(5), ..TaskFilter::default() },
            None,
        ),
        (
            "error class rejected (1 in 100)",
            TaskFilter { error_class: Some("rejected".into()), ..TaskFilter::default() },
            None,
        ),
        (
            "text search, rare word (1 in 100,000)",
            TaskFilter { text: Some("zanzibar".into()), ..TaskFilter::default() },
            None,
        ),
        (
            "text search, common word (every answer)",
            TaskFilter { text: Some("Crime".into()), ..TaskFilter::default() },
            Some(middle),
        ),
    ];
    println!("| page ({tasks} reasoning tasks, {} per page) | rows | median ms | max ms |", a.page);
    println!("|---|---|---|---|");
    for (name, filter, after) in cases {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..a.repeat {
            let t = Instant::now();
            rows = s.browser().tasks(run, &filter, after, a.page).await?.len();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let max = times.iter().copied().fold(0.0, f64::max);
        println!("| {name} | {rows} | {:.1} | {max:.1} |", median_ms(times));
    }
    let mut times = Vec::new();
    for _ in 0..a.repeat {
        let t = Instant::now();
        s.browser().task_detail(middle).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    println!("| task page (detail, attempts, upstream) | 1 | {:.1} | {max:.1} |", median_ms(times));
    Ok(())
}
