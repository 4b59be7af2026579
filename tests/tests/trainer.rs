//! `train export` against real runs: the three-stage method on the bundled sample with the mock
//! teacher, exported through the trainer library.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use reasonrec_coordinator::create_run;
use reasonrec_core::PromptLibrary;
use reasonrec_core::prompt::clean_data;
use reasonrec_tests::{TestEnv, count};
use reasonrec_trainer::TrainerError;
use reasonrec_trainer::export::{ExportOptions, Progress, export_run};
use reasonrec_trainer::filters::FilterOptions;
use reasonrec_trainer::manifest::Manifest;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

const FIELDS: [&str; 10] =
    ["id", "split", "user_id", "item_id", "label", "instruction", "input", "output", "messages", "reasoning"];

/// A test env with the whole method on `users` users of the sample, and a completed run.
async fn completed_run(users: usize) -> anyhow::Result<(TestEnv, Uuid)> {
    let mut env = TestEnv::new().await?;
    env.full_method();
    let plan = env.plan_sample_run(users).await?;
    env.run_to_completion(plan.run_id).await?;
    Ok((env, plan.run_id))
}

fn prompts(env: &TestEnv) -> anyhow::Result<PromptLibrary> {
    Ok(PromptLibrary::load(&env.settings.prompts.dir)?)
}

fn options(dir: &Path) -> ExportOptions {
    let mut o = ExportOptions::new(dir);
    o.few_shot = vec![4, 8];
    o.seed = 42;
    o.poll = Duration::from_millis(50);
    o
}

async fn export(env: &TestEnv, run: Uuid, opts: &ExportOptions) -> Result<Manifest, TrainerError> {
    export_run(&env.store, &prompts(env).map_err(|e| TrainerError::Invalid(e.to_string()))?, run, opts, &mut |_| {})
        .await
}

fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?)
}

fn manifest_json(dir: &Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json"))?)?)
}

fn all_rows(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    for split in ["train", "validation", "test"] {
        rows.extend(read_jsonl(&dir.join(format!("{split}.jsonl")))?);
    }
    Ok(rows)
}

fn files_of(dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path: PathBuf = entry?.path();
        out.insert(path.file_name().unwrap_or_default().to_string_lossy().into_owned(), std::fs::read(&path)?);
    }
    Ok(out)
}

fn read_parquet(path: &Path) -> anyhow::Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_export_is_deterministic_and_its_rows_are_student_examples() -> anyhow::Result<()> {
    let (env, run) = completed_run(12).await?;
    let tmp = tempfile::tempdir()?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    export(&env, run, &options(&a)).await?;
    export(&env, run, &options(&b)).await?;
    let (fa, fb) = (files_of(&a)?, files_of(&b)?);
    let names: Vec<&str> = fa.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "fewshot_4.jsonl",
            "fewshot_4.parquet",
            "fewshot_8.jsonl",
            "fewshot_8.parquet",
            "manifest.json",
            "test.jsonl",
            "test.parquet",
            "train.jsonl",
            "train.parquet",
            "validation.jsonl",
            "validation.parquet"
        ]
    );
    assert_eq!(fa, fb, "the same run exported twice gives byte-identical files");

    let s = &env.store;
    let rows = all_rows(&a)?;
    assert_eq!(
        rows.len() as i64,
        count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND stage = 'reasoning' AND state = 'done'", run)
            .await?
    );
    assert_eq!(rows.len(), 36, "train, validation and test for 12 users");
    for row in &rows {
        let keys: Vec<&str> = row.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        // serde_json without preserve_order sorts keys: compare as sets here, the order on disk below.
        assert_eq!(keys.iter().copied().collect::<BTreeSet<_>>(), FIELDS.iter().copied().collect::<BTreeSet<_>>());
        let id: Uuid = row["id"].as_str().unwrap_or_default().parse()?;
        let label = row["label"].as_i64().unwrap_or(-1);
        let r = sqlx::query(
            "SELECT t.split, t.label, t.user_id, t.input, t.history_truncated, u.ext_id AS u_ext, i.ext_id AS i_ext,
                    o.text, up.text AS profile
             FROM tasks t JOIN outputs o ON o.key = t.output_key JOIN runs r ON r.id = t.run_id
               JOIN users u ON u.dataset_id = r.dataset_id AND u.id = t.user_id
               JOIN items i ON i.dataset_id = r.dataset_id AND i.id = t.item_id
               LEFT JOIN tasks ut ON ut.run_id = t.run_id AND ut.stage = 'user_profile' AND ut.subject = 'u' || t.user_id
               LEFT JOIN outputs up ON up.key = ut.output_key
             WHERE t.id = $1",
        )
        .bind(id)
        .fetch_one(s.pool())
        .await?;
        assert_eq!(row["split"], Value::from(r.try_get::<String, _>("split")?));
        assert_eq!(label, i64::from(r.try_get::<bool, _>("label")?));
        assert_eq!(row["user_id"], Value::from(r.try_get::<String, _>("u_ext")?));
        assert_eq!(row["item_id"], Value::from(r.try_get::<String, _>("i_ext")?));
        let teacher: String = r.try_get("text")?;
        let reasoning = row["reasoning"].as_str().unwrap_or_default();
        let after = teacher.rsplit_once("Reasoning:").map(|(_, t)| t.trim()).unwrap_or_default();
        assert_eq!(reasoning, after, "the reasoning is the teacher's Reasoning paragraph");
        let prediction = if label == 1 { "Yes" } else { "No" };
        assert_eq!(row["output"], Value::from(format!("Prediction: {prediction}\nReasoning: {reasoning}")));
        let messages = row["messages"].as_array().cloned().unwrap_or_default();
        let roles: Vec<&str> = messages.iter().filter_map(|m| m["role"].as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
        assert_eq!(messages[0]["content"], row["instruction"]);
        assert_eq!(messages[1]["content"], row["input"]);
        assert_eq!(messages[2]["content"], row["output"]);

        let input = row["input"].as_str().unwrap_or_default();
        let profile: String = r.try_get("profile")?;
        assert!(input.contains(&clean_data(&profile, 1500)), "the student sees the user profile: {input}");
        let task_input: reasonrec_core::inputs::ReasoningInput = serde_json::from_value(r.try_get("input")?)?;
        let cut = r.try_get::<i32, _>("history_truncated")? as usize;
        let ids: Vec<i32> = task_input.history.iter().skip(cut).map(|h| h.item).collect();
        let titles: Vec<String> = sqlx::query_scalar(
            "SELECT title FROM items i JOIN runs r ON r.dataset_id = i.dataset_id WHERE r.id = $1 AND i.id = ANY($2)",
        )
        .bind(run)
        .bind(&ids)
        .fetch_all(s.pool())
        .await?;
        assert_eq!(titles.len(), ids.len());
        for t in &titles {
            assert!(input.contains(&format!("«{}»", clean_data(t, 150))), "history title {t} in {input}");
        }
        let history_lines = input.lines().filter(|l| l.contains("[Liked]") || l.contains("[Disliked]")).count();
        assert_eq!(history_lines, ids.len(), "exactly the history the teacher saw");
        // No label leakage: the teacher prompt's outcome section never reaches the student.
        for leak in ["Known outcome", "LIKE", "DISLIKE", "will like the target", "will dislike"] {
            assert!(!input.contains(leak) && !row["instruction"].as_str().unwrap_or_default().contains(leak), "{leak}");
        }
        assert!(input.contains("\"Prediction: Yes\" or\n\"Prediction: No\""), "{input}");
    }
    // Field order on disk is the documented one.
    let first_line = std::fs::read_to_string(a.join("train.jsonl"))?.lines().next().unwrap_or_default().to_string();
    let positions: Vec<usize> = FIELDS.iter().filter_map(|f| first_line.find(&format!("\"{f}\":"))).collect();
    assert_eq!(positions.len(), FIELDS.len());
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "fields in order: {first_line}");
    // Rows are in id order within each file.
    for split in ["train", "validation", "test"] {
        let ids: Vec<String> = read_jsonl(&a.join(format!("{split}.jsonl")))?
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "{split}");
    }

    // The Parquet files hold the same records.
    for split in ["train", "validation", "test", "fewshot_8"] {
        let json = read_jsonl(&a.join(format!("{split}.jsonl")))?;
        let batches = read_parquet(&a.join(format!("{split}.parquet")))?;
        let mut n = 0;
        for batch in &batches {
            let text = |name: &str| batch.column_by_name(name).map(|c| c.as_string::<i32>().clone());
            let (ids, outputs, inputs) = (text("id"), text("output"), text("input"));
            let labels = batch.column_by_name("label").map(|c| c.as_primitive::<Int64Type>().clone());
            let messages = batch.column_by_name("messages").map(|c| c.as_list::<i32>().clone());
            let (Some(ids), Some(outputs), Some(inputs), Some(labels), Some(messages)) =
                (ids, outputs, inputs, labels, messages)
            else {
                panic!("{split}.parquet lacks a column: {:?}", batch.schema());
            };
            for i in 0..batch.num_rows() {
                let row = &json[n];
                assert_eq!(Value::from(ids.value(i)), row["id"]);
                assert_eq!(Value::from(outputs.value(i)), row["output"]);
                assert_eq!(Value::from(inputs.value(i)), row["input"]);
                assert_eq!(Value::from(labels.value(i)), row["label"]);
                let turns = messages.value(i);
                let turns = turns.as_struct();
                assert_eq!(turns.len(), 3);
                let contents = turns.column_by_name("content").map(|c| c.as_string::<i32>().clone());
                assert_eq!(contents.map(|c| Value::from(c.value(2))), Some(row["output"].clone()));
                n += 1;
            }
        }
        assert_eq!(n, json.len(), "{split}: same row count in both formats");
    }
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_counts_match_the_database_and_few_shot_sets_are_stratified_nested_and_seeded() -> anyhow::Result<()> {
    let (env, run) = completed_run(24).await?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("x");
    let m = export(&env, run, &options(&dir)).await?;
    let mf = manifest_json(&dir)?;
    let rows: Vec<(String, bool, i64)> = sqlx::query_as(
        "SELECT split, label, count(*) FROM tasks WHERE run_id = $1 AND stage = 'reasoning' AND state = 'done' GROUP BY 1, 2",
    )
    .bind(run)
    .fetch_all(env.store.pool())
    .await?;
    for (split, label, n) in &rows {
        let key = if *label { "liked" } else { "disliked" };
        assert_eq!(mf["splits"][split][key], Value::from(*n), "{split} {key}");
    }
    for split in ["train", "validation", "test"] {
        let total: i64 = rows.iter().filter(|r| r.0 == split).map(|r| r.2).sum();
        assert_eq!(mf["splits"][split]["rows"], Value::from(total));
        assert_eq!(read_jsonl(&dir.join(format!("{split}.jsonl")))?.len() as i64, total);
    }
    let train_liked = m.splits.train.liked;
    let train_disliked = m.splits.train.disliked;
    assert!(train_liked >= 4 && train_disliked >= 4, "the sample gives both labels: {train_liked}/{train_disliked}");

    let train: BTreeMap<String, String> = std::fs::read_to_string(dir.join("train.jsonl"))?
        .lines()
        .map(|l| Ok((serde_json::from_str::<Value>(l)?["id"].as_str().unwrap_or_default().to_string(), l.to_string())))
        .collect::<anyhow::Result<_>>()?;
    let mut previous: BTreeSet<String> = BTreeSet::new();
    for (n, set) in [4usize, 8].iter().zip(&m.few_shot) {
        let text = std::fs::read_to_string(dir.join(format!("fewshot_{n}.jsonl")))?;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), *n);
        assert_eq!((set.requested, set.rows, set.liked, set.disliked), (*n, *n, n / 2, n / 2));
        let mut ids = BTreeSet::new();
        let mut liked = 0;
        let mut order = Vec::new();
        for line in &lines {
            let row: Value = serde_json::from_str(line)?;
            let id = row["id"].as_str().unwrap_or_default().to_string();
            assert_eq!(
                train.get(&id).map(String::as_str),
                Some(*line),
                "a few-shot row is its train row, byte for byte"
            );
            liked += row["label"].as_i64().unwrap_or(0);
            order.push(id.clone());
            ids.insert(id);
        }
        assert_eq!(liked as usize, n / 2, "half like, half dislike");
        assert!(order.windows(2).all(|w| w[0] < w[1]), "id order");
        assert!(previous.is_subset(&ids), "fewshot_{n} holds the smaller set");
        previous = ids;
    }
    assert_eq!(mf["few_shot"][0], serde_json::json!({"requested": 4, "rows": 4, "liked": 2, "disliked": 2}));

    // Same seed: same sets. Another seed: another draw.
    let again = tmp.path().join("again");
    export(&env, run, &options(&again)).await?;
    let other = tmp.path().join("other");
    let mut o = options(&other);
    o.seed = 43;
    export(&env, run, &o).await?;
    let ids = |dir: &Path, n: usize| -> anyhow::Result<Vec<Value>> {
        Ok(read_jsonl(&dir.join(format!("fewshot_{n}.jsonl")))?.iter().map(|r| r["id"].clone()).collect())
    };
    for n in [4, 8] {
        assert_eq!(ids(&again, n)?, ids(&dir, n)?);
    }
    assert_ne!(ids(&other, 8)?, ids(&dir, 8)?, "seed 43 draws other rows");
    // Asking for more than the training split has gives all of it, still balanced as far as it goes.
    let big = tmp.path().join("big");
    let mut o = options(&big);
    o.few_shot = vec![1000];
    let mb = export(&env, run, &o).await?;
    assert_eq!(mb.few_shot[0].rows as u64, mb.splits.train.rows);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_manifest_names_sources_checksums_and_what_each_filter_removed() -> anyhow::Result<()> {
    let (env, run) = completed_run(12).await?;
    let tmp = tempfile::tempdir()?;
    let plain = tmp.path().join("plain");
    export(&env, run, &options(&plain)).await?;
    let mf = manifest_json(&plain)?;

    // Checksums, sizes and rows of every file.
    let files = mf["files"].as_array().cloned().unwrap_or_default();
    assert_eq!(files.len(), 10);
    for f in &files {
        let name = f["name"].as_str().unwrap_or_default();
        let bytes = std::fs::read(plain.join(name))?;
        assert_eq!(f["sha256"], Value::from(hex::encode(Sha256::digest(&bytes))), "{name}");
        assert_eq!(f["bytes"], Value::from(bytes.len()), "{name}");
        if let Some(stem) = name.strip_suffix(".jsonl") {
            assert_eq!(f["rows"], Value::from(read_jsonl(&plain.join(name))?.len()), "{name}");
            let parquet = files.iter().find(|g| g["name"] == format!("{stem}.parquet")).cloned().unwrap_or_default();
            assert_eq!(parquet["rows"], f["rows"]);
        }
    }

    // Where the rows came from.
    let ds: (String, i32, String) = sqlx::query_as(
        "SELECT d.name, d.version, d.content_hash FROM datasets d JOIN runs r ON r.dataset_id = d.id WHERE r.id = $1",
    )
    .bind(run)
    .fetch_one(env.store.pool())
    .await?;
    assert_eq!(mf["run"], serde_json::json!({"id": run.to_string(), "state": "completed", "complete": true}));
    assert_eq!(mf["dataset"]["name"], Value::from(ds.0));
    assert_eq!(mf["dataset"]["version"], Value::from(ds.1));
    assert_eq!(mf["dataset"]["content_hash"], Value::from(ds.2));
    assert_eq!(mf["dataset"]["family"], "movielens");
    let lib = prompts(&env)?;
    assert_eq!(
        mf["templates"]["teacher"],
        serde_json::json!([{"name": "reasoning.movielens", "version": lib.version_of("reasoning.movielens"), "rows": 36}])
    );
    assert_eq!(
        mf["templates"]["student"],
        serde_json::json!({"name": "student.movielens", "version": lib.version_of("student.movielens")})
    );
    let params = serde_json::to_value(&env.settings.teacher.endpoints[0].params)?;
    assert_eq!(mf["teachers"], serde_json::json!([{"model": "mock-teacher", "params": params, "rows": 36}]));
    assert_eq!(mf["tasks"]["reasoning"], 36);
    assert_eq!(mf["tasks"]["reasoning_done"], 36);
    assert_eq!(mf["tasks"]["exported"], 36);
    assert_eq!(
        mf["tasks"]["total"],
        Value::from(count(&env.store, "SELECT count(*) FROM tasks WHERE run_id = $1", run).await?)
    );
    assert_eq!(mf["options"]["seed"], 42);
    assert_eq!(mf["filters"]["rows_read"], 36);
    assert_eq!(mf["filters"]["max_words"], Value::Null, "a filter that is off is null");

    // A word cap in the middle of the reasonings' lengths removes exactly the longer ones.
    let rows = all_rows(&plain)?;
    let mut words: Vec<usize> =
        rows.iter().map(|r| r["reasoning"].as_str().unwrap_or_default().split_whitespace().count()).collect();
    words.sort_unstable();
    let cap = words[words.len() / 2];
    let longer = words.iter().filter(|&&w| w > cap).count();
    assert!(longer > 0 && longer < rows.len(), "cap {cap} splits the rows: {words:?}");
    let capped = tmp.path().join("capped");
    let mut o = options(&capped);
    o.filters = FilterOptions { max_words: Some(cap), ..FilterOptions::default() };
    export(&env, run, &o).await?;
    let mc = manifest_json(&capped)?;
    assert_eq!(mc["filters"]["max_words"], serde_json::json!({"words": cap, "removed": longer}));
    assert_eq!(mc["filters"]["rows_kept"], Value::from(rows.len() - longer));
    assert_eq!(all_rows(&capped)?.len(), rows.len() - longer);
    assert!(
        all_rows(&capped)?
            .iter()
            .all(|r| r["reasoning"].as_str().unwrap_or_default().split_whitespace().count() <= cap)
    );

    // Label consistency and duplicates: make one answer argue nothing and one repeat another
    // answer of the same label (after the worker accepted them, as an older validator might have).
    let done: Vec<(Uuid, bool, Vec<u8>)> = sqlx::query_as(
        "SELECT id, label, output_key FROM tasks WHERE run_id = $1 AND stage = 'reasoning' AND state = 'done' ORDER BY id",
    )
    .bind(run)
    .fetch_all(env.store.pool())
    .await?;
    let (vague, source, copy) = {
        let first = &done[0];
        let same: Vec<&(Uuid, bool, Vec<u8>)> = done.iter().skip(1).filter(|d| d.1 == first.1).collect();
        (&done[done.len() - 1], same[0], same[1])
    };
    assert!(vague.0 != source.0 && vague.0 != copy.0);
    let set_text = |key: &Vec<u8>, text: String| {
        sqlx::query("UPDATE outputs SET text = $2 WHERE key = $1")
            .bind(key.clone())
            .bind(text)
            .execute(env.store.pool())
    };
    set_text(&vague.2, "Summary: a viewer.\nReasoning: The film has elements of several genres they rated.".into())
        .await?;
    let source_text: String = sqlx::query_scalar("SELECT text FROM outputs WHERE key = $1")
        .bind(&source.2)
        .fetch_one(env.store.pool())
        .await?;
    // The same reasoning up to case, punctuation and spacing.
    let reasoning = source_text.rsplit_once("Reasoning:").map(|(_, r)| r).unwrap_or_default();
    set_text(&copy.2, format!("Summary: x\nReasoning:  {}", reasoning.to_uppercase().replace('.', " ."))).await?;
    let filtered = tmp.path().join("filtered");
    let mut o = options(&filtered);
    o.filters = FilterOptions { label_consistent: true, dedup: true, ..FilterOptions::default() };
    let m = export(&env, run, &o).await?;
    let mf = manifest_json(&filtered)?;
    assert_eq!(
        mf["filters"]["label_consistent"],
        serde_json::json!({"removed": 1, "contradicting": 0, "undecided": 1})
    );
    assert_eq!(mf["filters"]["dedup"], serde_json::json!({"removed": 1}));
    assert_eq!((m.filters.rows_read, m.filters.rows_kept, m.tasks.exported), (36, 34, 34));
    let kept: BTreeSet<String> =
        all_rows(&filtered)?.iter().map(|r| r["id"].as_str().unwrap_or_default().into()).collect();
    assert!(!kept.contains(&vague.0.to_string()) && !kept.contains(&copy.0.to_string()));
    assert!(kept.contains(&source.0.to_string()), "the first of two duplicates stays");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_exports_say_so_waiting_exports_wait_and_a_cancelled_run_is_an_error() -> anyhow::Result<()> {
    let mut env =
        TestEnv::with_mock(reasonrec_mock_teacher::MockConfig { latency_ms: 20, ..Default::default() }).await?;
    env.full_method();
    let plan = env.plan_sample_run(12).await?;
    let run = plan.run_id;
    let tmp = tempfile::tempdir()?;

    // Nothing done yet.
    let mut o = options(&tmp.path().join("empty"));
    o.partial = true;
    let m = export(&env, run, &o).await?;
    assert_eq!((m.run.state.as_str(), m.run.complete), ("running", false));
    assert_eq!((m.tasks.reasoning_done, m.tasks.exported, m.tasks.reasoning), (0, 0, 36));
    assert_eq!(std::fs::read(tmp.path().join("empty/train.jsonl"))?.len(), 0);
    assert_eq!(manifest_json(&tmp.path().join("empty"))?["run"]["complete"], false);
    assert_eq!(m.few_shot[0].rows, 0);

    // A few reasoning tasks done, then the worker stops.
    let (broker, outbox) = env.outbox().await?;
    let w = env.spawn_worker("w")?;
    let done_sql = "SELECT count(*) FROM tasks WHERE run_id = $1 AND stage = 'reasoning' AND state = 'done'";
    let some_done = reasonrec_tests::wait_until("3 reasoning tasks done", Duration::from_secs(60), || async {
        Ok(count(&env.store, done_sql, run).await? >= 3)
    });
    tokio::time::timeout(Duration::from_secs(60), async {
        tokio::select! {
            r = outbox.drive(run, Duration::from_millis(50)) => anyhow::bail!("the run ended early: {r:?}"),
            r = some_done => r,
        }
    })
    .await??;
    w.shutdown().await?;
    let done = count(&env.store, done_sql, run).await?;
    assert!((3..36).contains(&done), "{done} done");
    let m = export(&env, run, &o).await?;
    assert_eq!((m.run.state.as_str(), m.run.complete), ("running", false));
    assert_eq!((m.tasks.reasoning_done, m.tasks.exported as i64), (done, done));
    assert_eq!(all_rows(&tmp.path().join("empty"))?.len() as i64, done);

    // Without --partial the export waits for the run to complete.
    let w = env.spawn_worker("w2")?;
    let waiting_dir = tmp.path().join("waited");
    let lib = prompts(&env)?;
    let mut waits = 0;
    let waiting_opts = options(&waiting_dir);
    let mut on_progress = |p: Progress| {
        if matches!(p, Progress::Waiting { .. }) {
            waits += 1;
        }
    };
    let (exported, driven) = tokio::join!(
        export_run(&env.store, &lib, run, &waiting_opts, &mut on_progress),
        reasonrec_tests::drive_to_completion(&outbox, run, 120)
    );
    driven?;
    let m = exported?;
    w.shutdown().await?;
    assert!(waits > 0, "it reported that it was waiting");
    assert_eq!((m.run.state.as_str(), m.run.complete, m.tasks.exported), ("completed", true, 36));

    // A cancelled run: an error without --partial, what it finished with.
    let second = create_run(&env.store, &env.settings, "sample").await?.run_id;
    env.store.runs().cancel(second).await?;
    let err = export(&env, second, &options(&tmp.path().join("cancelled"))).await;
    assert!(matches!(err, Err(TrainerError::RunCancelled(id)) if id == second), "{err:?}");
    let mut o = options(&tmp.path().join("cancelled"));
    o.partial = true;
    let m = export(&env, second, &o).await?;
    assert_eq!((m.run.state.as_str(), m.run.complete, m.tasks.exported), ("cancelled", false, 0));

    // A stored input that no longer parses stops the export with the task's id and the field.
    let bad: Uuid = sqlx::query_scalar(
        "UPDATE tasks SET input = '{\"user\": 1, \"target\": 2, \"rating\": 4}'
         WHERE id = (SELECT id FROM tasks WHERE run_id = $1 AND stage = 'reasoning' ORDER BY id LIMIT 1) RETURNING id",
    )
    .bind(run)
    .fetch_one(env.store.pool())
    .await?;
    let err = export(&env, run, &options(&tmp.path().join("corrupt"))).await;
    let msg = err.as_ref().err().map(ToString::to_string).unwrap_or_default();
    assert!(msg.contains(&bad.to_string()) && msg.contains("malformed input") && msg.contains("history"), "{err:?}");
    broker.close().await;
    env.cleanup().await
}
