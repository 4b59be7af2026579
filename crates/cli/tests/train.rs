//! `reasonrec train export | launch | eval` as operators run them: the real binary against the
//! test's private database. A 200k-row corpus written by SQL exports with flat memory; a real
//! export feeds the Python training script's dry run and the evaluation.

use reasonrec_tests::cli::{self, ok};
use reasonrec_tests::{TestEnv, repo_root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_reasonrec");

/// A config file pointing the binary at the test's database, with small few-shot sets.
fn write_config(env: &TestEnv, dir: &Path) -> anyhow::Result<PathBuf> {
    cli::write_config(env, dir, "[trainer]\nfew_shot = [4, 8]\n")
}

fn reasonrec(config: &Path, args: &[&str]) -> anyhow::Result<Output> {
    cli::run(BIN, config, args)
}

/// A completed three-stage run of 12 sample users, exported by the binary into `dir/export`.
async fn exported_run(env: &mut TestEnv, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, Value)> {
    env.full_method();
    let plan = env.plan_sample_run(12).await?;
    env.run_to_completion(plan.run_id).await?;
    let config = write_config(env, dir)?;
    let export = dir.join("export");
    // By dataset name: its latest completed run.
    let out = reasonrec(
        &config,
        &["train", "export", "--dataset", "sample", "--out", export.to_str().unwrap_or_default(), "--json"],
    )?;
    let manifest: Value = serde_json::from_str(&ok(&out))?;
    assert_eq!(manifest["run"]["id"], Value::from(plan.run_id.to_string()));
    Ok((config, export, manifest))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_script_dry_runs_on_a_real_export_through_train_launch() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let tmp = tempfile::tempdir()?;
    let (config, export, manifest) = exported_run(&mut env, tmp.path()).await?;
    let train_out = tmp.path().join("train");
    let args = [
        "train",
        "launch",
        "--export",
        export.to_str().unwrap_or_default(),
        "--out",
        train_out.to_str().unwrap_or_default(),
    ];
    let mut print_only = args.to_vec();
    print_only.push("--print-only");
    let stdout = ok(&reasonrec(&config, &print_only)?);
    let spec_path = train_out.join("train_spec.json");
    assert!(stdout.contains(&format!("wrote {}", std::path::absolute(&spec_path)?.display())), "{stdout}");
    assert!(stdout.contains("python3 scripts/train_student.py --spec "), "{stdout}");
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(&spec_path)?)?;
    assert_eq!(spec["data_dir"], Value::from(std::path::absolute(&export)?.display().to_string()));
    assert_eq!(spec["train_file"], "train.jsonl");
    assert_eq!(spec["loss_on_answer_only"], true);
    assert_eq!(spec["lora"]["r"], 8);
    assert_eq!(spec["early_stopping"]["metric"], "auc");

    // The script's dry run on the spec as written.
    let summary = tmp.path().join("summary.json");
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/train_student.py"))
        .args(["--spec", spec_path.to_str().unwrap_or_default(), "--dry-run", "--summary"])
        .arg(&summary)
        .output()
        .map_err(|e| anyhow::anyhow!("python3 must be installed to run scripts/train_student.py: {e}"))?;
    assert!(out.status.success(), "dry run failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary)?)?;
    for split in ["train", "validation", "test"] {
        assert_eq!(s["splits"][split]["examples"], manifest["splits"][split]["rows"], "{split}");
        assert_eq!(s["splits"][split]["labels"]["liked"], manifest["splits"][split]["liked"], "{split}");
        assert!(s["splits"][split]["answer_tokens"].as_u64().unwrap_or(0) > 0, "{split}");
    }

    // And through `train launch --dry-run`, which runs the configured command and passes on its
    // exit code.
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let out = reasonrec(&config, &dry)?;
    let stdout = ok(&out);
    assert!(stdout.contains("\"mode\": \"dry-run\""), "{stdout}");
    std::fs::remove_file(export.join("train.jsonl"))?;
    std::fs::remove_file(export.join("train.parquet"))?;
    let out = reasonrec(&config, &dry)?;
    assert!(!out.status.success(), "an export without its training split is refused");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn train_eval_reports_the_hand_computed_auc_of_a_predictions_file() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let tmp = tempfile::tempdir()?;
    let (config, export, _) = exported_run(&mut env, tmp.path()).await?;
    let test_rows: Vec<Value> = std::fs::read_to_string(export.join("test.jsonl"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(test_rows.len(), 12);
    // Scores with ties, deliberately imperfect.
    let scores: Vec<f64> = (0..test_rows.len()).map(|i| [0.9, 0.2, 0.6, 0.6, 0.4, 0.75][i % 6]).collect();
    let mut lines = String::new();
    for (row, p) in test_rows.iter().zip(&scores) {
        lines += &serde_json::json!({"id": row["id"], "p_yes": p, "reasoning": row["reasoning"]}).to_string();
        lines.push('\n');
    }
    let predictions = tmp.path().join("predictions.jsonl");
    std::fs::write(&predictions, lines)?;
    // AUC by hand: the share of (liked, disliked) pairs ranked right, ties counting half.
    let labels: Vec<bool> = test_rows.iter().map(|r| r["label"] == 1).collect();
    let (mut right, mut pairs) = (0.0, 0.0);
    for (i, &li) in labels.iter().enumerate() {
        for (j, &lj) in labels.iter().enumerate() {
            if li && !lj {
                pairs += 1.0;
                right += if scores[i] > scores[j] {
                    1.0
                } else if scores[i] == scores[j] {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    assert!(pairs > 0.0, "the test split has both labels");
    let auc = right / pairs;

    let report_dir = tmp.path().join("report");
    let out = reasonrec(
        &config,
        &[
            "train",
            "eval",
            "--examples",
            export.join("test.jsonl").to_str().unwrap_or_default(),
            "--predictions",
            predictions.to_str().unwrap_or_default(),
            "--out",
            report_dir.to_str().unwrap_or_default(),
        ],
    )?;
    let stdout = ok(&out);
    assert!(stdout.contains(&format!("| AUC | {auc:.4} |")), "{stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(report_dir.join("eval.json"))?)?;
    assert!(report_dir.join("eval.md").is_file());
    let got = report["overall"]["auc"].as_f64().unwrap_or(-1.0);
    assert!((got - auc).abs() < 1e-12, "AUC {got}, by hand {auc}");
    assert_eq!(report["matched"], 12);
    // The student's reasoning is the teacher's here: the overlap is perfect.
    assert!((report["overall"]["rouge_l_f1"].as_f64().unwrap_or(0.0) - 1.0).abs() < 1e-12);
    env.cleanup().await
}

/// Writes a completed run of `n` done reasoning tasks (and a profile for each user and item) by
/// SQL, ids ordered like the planner's time-ordered ones. Returns the run id.
async fn synthetic_run(env: &TestEnv, dataset_id: i64, ordinal: i32, n: i64) -> anyhow::Result<Uuid> {
    let pool = env.store.pool();
    let run = Uuid::parse_str(&format!("{ordinal:08x}-0000-7000-8000-000000000000"))?;
    sqlx::query("INSERT INTO runs (id, dataset_id, state, settings) VALUES ($1, $2, 'completed', '{}')")
        .bind(run)
        .bind(dataset_id)
        .execute(pool)
        .await?;
    // Task id: <run ordinal>-<kind>-7000-8000-<n>; kind 1 reasoning, 2 user profile, 3 item profile.
    let id = |kind: &str| {
        format!("(lpad(to_hex($2::int), 8, '0') || '-000{kind}-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid")
    };
    let outputs = |kind: &str, stage: &str, text: &str, count: &str| {
        format!(
            "INSERT INTO outputs (key, stage, text, template, template_version, model, params, input_tokens, output_tokens, run_id, task_id)
             SELECT sha256(convert_to({id}::text, 'UTF8')), '{stage}', {text}, '{stage}.movielens', '0123456789abcdef',
                    'mock-teacher', '{{\"temperature\": 0.1}}', 100, 50, $1, {id}
             FROM generate_series(0, {count} - 1) g",
            id = id(kind)
        )
    };
    let reasoning_text = "'Summary: This viewer rated dramas ' || g || ' highly and avoided loud comedies.' || E'\\n' || \
         'Reasoning: «Synthetic Movie ' || (g % 5000) || '» ' || repeat('shares the tone and pacing of the titles they enjoyed, ', (1 + g % 5)::int) || \
         'so it is a strong match for this viewer.'";
    for sql in [
        outputs("1", "reasoning", reasoning_text, "$3"),
        format!(
            "INSERT INTO tasks (id, run_id, stage, subject, user_id, item_id, split, label, input, state, output_key)
             SELECT {id}, $1, 'reasoning', 'r' || g, g % 50000, g % 5000,
                    CASE WHEN g % 4 < 2 THEN 'train' WHEN g % 4 = 2 THEN 'validation' ELSE 'test' END, g % 3 <> 0,
                    jsonb_build_object('user', g % 50000, 'target', g % 5000, 'rating', 4.0, 'history',
                      (SELECT jsonb_agg(jsonb_build_object('item', (g * 7 + k) % 5000, 'liked', k % 2 = 0, 'rating', 4.0) ORDER BY k)
                       FROM generate_series(1, 10) k)),
                    'done', sha256(convert_to({id}::text, 'UTF8'))
             FROM generate_series(0, $3 - 1) g",
            id = id("1")
        ),
        outputs("2", "user_profile", "'This user enjoys quiet dramas and character studies (' || g || ') and avoids loud comedies.'", "50000"),
        format!(
            "INSERT INTO tasks (id, run_id, stage, subject, user_id, input, state, output_key)
             SELECT {id}, $1, 'user_profile', 'u' || g, g, '{{}}', 'done', sha256(convert_to({id}::text, 'UTF8'))
             FROM generate_series(0, 49999) g",
            id = id("2")
        ),
        outputs("3", "item_profile", "'«Synthetic Movie ' || g || '» is remembered for brisk pacing; its weak point is a predictable final act.'", "5000"),
        format!(
            "INSERT INTO tasks (id, run_id, stage, subject, item_id, input, state, output_key)
             SELECT {id}, $1, 'item_profile', 'i' || g, g, '{{}}', 'done', sha256(convert_to({id}::text, 'UTF8'))
             FROM generate_series(0, 4999) g",
            id = id("3")
        ),
    ] {
        sqlx::query(&sql).bind(run).bind(ordinal).bind(n).execute(pool).await?;
    }
    Ok(run)
}

/// Runs the binary; returns (output, peak RSS in bytes, seconds). Peak RSS from GNU time where it
/// is installed, else from the child's VmHWM polled while it runs.
fn measured(config: &Path, args: &[&str]) -> anyhow::Result<(Output, u64, f64)> {
    let mut all: Vec<String> = vec!["--config".into(), config.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let t0 = Instant::now();
    if Path::new("/usr/bin/time").exists() {
        let out = Command::new("/usr/bin/time").arg("-f").arg("%M").arg(BIN).args(&all).output()?;
        let secs = t0.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let kb: u64 = stderr.lines().rev().find_map(|l| l.trim().parse().ok()).unwrap_or(0);
        return Ok((out, kb * 1024, secs));
    }
    let mut child = Command::new(BIN).args(&all).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    while child.try_wait()?.is_none() {
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            let hwm = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            peak_kb = peak_kb.max(hwm.unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output()?;
    Ok((out, peak_kb * 1024, t0.elapsed().as_secs_f64()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200k_row_corpus_exports_with_flat_memory() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pool = env.store.pool();
    let dataset_id: i64 = sqlx::query_scalar(
        "INSERT INTO datasets (name, version, format, family, content_hash) VALUES ('big', 1, 'ml-1m', 'movielens', 'synthetic')
         RETURNING id",
    )
    .fetch_one(pool)
    .await?;
    sqlx::query(
        "INSERT INTO users (dataset_id, id, ext_id) SELECT $1, g, 'user' || g FROM generate_series(0, 49999) g",
    )
    .bind(dataset_id)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO items (dataset_id, id, ext_id, title, attrs)
         SELECT $1, g, 'item' || g, 'Synthetic Movie ' || g || ' (1999)', '{\"genres\": [\"Drama\", \"Comedy\"], \"year\": 1999}'
         FROM generate_series(0, 4999) g",
    )
    .bind(dataset_id)
    .execute(pool)
    .await?;
    let t0 = Instant::now();
    let small = synthetic_run(&env, dataset_id, 1, 20_000).await?;
    let big = synthetic_run(&env, dataset_id, 2, 200_000).await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    eprintln!("corpus written in {:.1} s", t0.elapsed().as_secs_f64());

    let tmp = tempfile::tempdir()?;
    let config = write_config(&env, tmp.path())?;
    let mut rss = Vec::new();
    for (run, rows) in [(small, 20_000u64), (big, 200_000)] {
        let dir = tmp.path().join(format!("export-{rows}"));
        let args = [
            "train",
            "export",
            "--run",
            &run.to_string(),
            "--out",
            dir.to_str().unwrap_or_default(),
            "--few-shot",
            "64,128,256",
            "--json",
        ];
        let (out, peak, secs) = measured(&config, &args)?;
        let manifest: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| anyhow::anyhow!("{e}: exit {} stderr {}", out.status, String::from_utf8_lossy(&out.stderr)))?;
        assert!(out.status.success());
        assert_eq!(manifest["tasks"]["exported"], Value::from(rows));
        let expect = |split: &str| match split {
            "train" => rows / 2,
            _ => rows / 4,
        };
        for split in ["train", "validation", "test"] {
            assert_eq!(manifest["splits"][split]["rows"], Value::from(expect(split)), "{split}");
            let lines = std::fs::read_to_string(dir.join(format!("{split}.jsonl")))?.lines().count() as u64;
            assert_eq!(lines, expect(split), "{split}.jsonl");
        }
        assert_eq!(manifest["few_shot"][2]["rows"], 256);
        let bytes: u64 = manifest["files"].as_array().map_or(0, |f| f.iter().filter_map(|f| f["bytes"].as_u64()).sum());
        eprintln!(
            "export of {rows} rows: {secs:.1} s, {:.0} rows/s, peak RSS {:.1} MB, {:.0} MB written",
            rows as f64 / secs,
            peak as f64 / 1e6,
            bytes as f64 / 1e6
        );
        rss.push(peak);
        std::fs::remove_dir_all(&dir)?;
    }
    assert!(rss[1] > 0, "peak RSS measured");
    assert!(rss[1] < 200_000_000, "200k rows exported with a peak RSS of {} bytes", rss[1]);
    // Flat: ten times the rows, not ten times the memory (a page, the item cache and one Parquet row
    // group per file; what grows is the 17-byte (id, label) list of train rows and glibc's heap).
    // Holding the rows would take over a gigabyte here.
    assert!(rss[1] < 2 * rss[0], "RSS grew from {} to {} bytes with 10x the rows", rss[0], rss[1]);
    env.cleanup().await
}
