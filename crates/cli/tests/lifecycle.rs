//! `run list | pause | resume`, `run create --priority --budget-usd`, `corpus snapshot | snapshots
//! | diff` and `train export --snapshot` as operators run them: the real binary against the
//! test's private database.

use reasonrec_tests::TestEnv;
use reasonrec_tests::cli::{self, json, ok, refused};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_reasonrec");
const USERS: i64 = 6;

/// A config file for the test's database and broker names: one reasoning task per user.
fn write_config(env: &TestEnv, dir: &Path) -> anyhow::Result<PathBuf> {
    let extra = format!(
        "[sampling]\nmax_users = {USERS}\nhistory_len = 10\nsplits = [\"test\"]\n\
         [stages]\nitem_profile = false\nuser_profile = false\n{}",
        cli::mock_endpoint(env)
    );
    cli::write_config(env, dir, &extra)
}

fn reasonrec(config: &Path, args: &[&str]) -> anyhow::Result<Output> {
    cli::run(BIN, config, args)
}

fn listed(list: &Value, run: Uuid) -> Value {
    list["runs"].as_array().and_then(|r| r.iter().find(|x| x["run_id"] == run.to_string()).cloned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_paused_resumed_snapshotted_and_diffed_through_the_binary() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.ingest_sample().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(&env, dir.path())?;

    let created = json(&reasonrec(
        &config,
        &["run", "create", "--dataset", "sample", "--no-publish", "--priority", "5", "--budget-usd", "2.5", "--json"],
    )?)?;
    let run: Uuid = serde_json::from_value(created["plan"]["run_id"].clone())?;
    let row = listed(&json(&reasonrec(&config, &["run", "list", "--json"])?)?, run);
    assert_eq!(row["state"], "running");
    assert_eq!(row["priority"], 5);
    assert_eq!(row["budget"], serde_json::json!({"usd": 2.5, "tokens": null}));
    assert_eq!((row["total"].as_i64(), row["done"].as_i64()), (Some(USERS), Some(0)));
    assert_eq!((row["dataset"].as_str(), row["dataset_version"].as_i64()), (Some("sample"), Some(1)));

    ok(&reasonrec(&config, &["run", "pause", &run.to_string(), "--reason", "maintenance"])?);
    let text = ok(&reasonrec(&config, &["run", "list"])?);
    assert!(text.contains("paused: maintenance") && text.contains("sample v1"), "{text}");
    let status = ok(&reasonrec(&config, &["run", "status", &run.to_string()])?);
    assert!(status.contains("state: paused") && status.contains("paused: maintenance"), "{status}");
    assert!(status.contains("budget $2.5000"), "{status}");
    ok(&reasonrec(&config, &["run", "resume", &run.to_string()])?);
    refused(&reasonrec(&config, &["run", "resume", &run.to_string()])?, "is running, not paused");

    env.run_to_completion(run).await?;

    ok(&reasonrec(&config, &["corpus", "snapshot", &run.to_string(), "--name", "base", "--note", "first"])?);
    refused(&reasonrec(&config, &["corpus", "snapshot", &run.to_string(), "--name", "base"])?, "already exists");
    let snaps = json(&reasonrec(&config, &["corpus", "snapshots", "--json"])?)?;
    assert_eq!(snaps["snapshots"][0]["name"], "base");
    assert_eq!(snaps["snapshots"][0]["done"]["reasoning"].as_i64(), Some(USERS));

    // An incremental run is refused while the dataset has an unfinished run (here: a fresh plain
    // run left unpublished), so a retried nightly job never doubles a run.
    let pending = json(&reasonrec(&config, &["run", "create", "--dataset", "sample", "--no-publish", "--json"])?)?;
    let pending: Uuid = serde_json::from_value(pending["plan"]["run_id"].clone())?;
    refused(
        &reasonrec(&config, &["run", "create", "--dataset", "sample", "--incremental", "--no-publish"])?,
        "is not finished",
    );
    ok(&reasonrec(&config, &["run", "cancel", &pending.to_string()])?);

    // An incremental run: everything carried over; regeneration runs at priority -10.
    let again = json(&reasonrec(
        &config,
        &["run", "create", "--dataset", "sample", "--incremental", "--no-publish", "--json"],
    )?)?;
    let run2: Uuid = serde_json::from_value(again["plan"]["run_id"].clone())?;
    let row = listed(&json(&reasonrec(&config, &["run", "list", "--json", "--limit", "5"])?)?, run2);
    assert_eq!((row["priority"].as_i64(), row["state"].as_str()), (Some(-10), Some("completed")));

    let diff = json(&reasonrec(&config, &["corpus", "diff", "base", &run2.to_string(), "--json"])?)?;
    assert_eq!(diff["a"]["snapshot"], "base");
    assert_eq!(diff["a"]["run_id"], run.to_string());
    let t = &diff["diff"]["total"];
    assert_eq!(
        (t["added"].as_i64(), t["removed"].as_i64(), t["changed"].as_i64(), t["unchanged"].as_i64()),
        (Some(0), Some(0), Some(0), Some(USERS)),
        "{diff}"
    );
    let text = ok(&reasonrec(&config, &["corpus", "diff", "base", &run2.to_string()])?);
    assert!(text.contains("reasoning") && text.contains(&format!("{USERS:>10}")), "{text}");

    // The snapshotted run stays completed.
    refused(
        &reasonrec(&config, &["run", "cancel", &run.to_string()])?,
        "is snapshotted (base): its corpus is frozen, so it cannot be cancelled",
    );

    let out = dir.path().join("export");
    let manifest = json(&reasonrec(
        &config,
        &[
            "train",
            "export",
            "--snapshot",
            "base",
            "--out",
            out.to_str().unwrap_or_default(),
            "--format",
            "jsonl",
            "--few-shot",
            "0",
            "--json",
        ],
    )?)?;
    assert_eq!(
        (manifest["run"]["id"].as_str(), manifest["run"]["snapshot"].as_str()),
        (Some(run.to_string().as_str()), Some("base"))
    );
    assert_eq!(manifest["tasks"]["exported"].as_i64(), Some(USERS));
    refused(
        &reasonrec(&config, &["train", "export", "--snapshot", "nope", "--out", out.to_str().unwrap_or_default()])?,
        "snapshot \"nope\"",
    );
    env.cleanup().await
}

/// `corpus audit` for teams without a browser (issue 18): a seeded sample printed as JSON lines,
/// the same lines filled in by a reviewer read back as marks, and the per-stage error rate; a bad
/// line names file, line and field and marks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_audit_samples_reads_marks_back_and_estimates_the_error_rate() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.ingest_sample().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(&env, dir.path())?;
    let created = json(&reasonrec(&config, &["run", "create", "--dataset", "sample", "--no-publish", "--json"])?)?;
    let run: Uuid = serde_json::from_value(created["plan"]["run_id"].clone())?;
    env.run_to_completion(run).await?;
    let run_arg = run.to_string();

    let sample = ok(&reasonrec(&config, &["corpus", "audit", &run_arg, "--sample", "2", "--seed", "3", "--json"])?);
    let mut lines: Vec<Value> = sample.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert!(lines.len() >= 3 && lines.len() <= 4, "two per label: {sample}");
    assert!(lines.iter().all(|l| l["verdict"].is_null() && l["stage"] == "reasoning"), "{sample}");
    // The reviewer rejects the first, approves the next two and leaves the rest open.
    lines[0]["verdict"] = "rejected".into();
    lines[0]["reason"] = "cites a film not in the history".into();
    for l in &mut lines[1..3] {
        l["verdict"] = "approved".into();
    }
    let filled: Vec<String> = lines.iter().map(Value::to_string).collect();
    let marks = dir.path().join("marks.jsonl");
    std::fs::write(&marks, filled.join("\n\n") + "\n")?;

    // A bad verdict: named with file, line and field; nothing is marked.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{}\n{}\n", filled[1], filled[0].replace("\"rejected\"", "\"maybe\"")))?;
    refused(
        &reasonrec(&config, &["corpus", "audit", &run_arg, "--marks", bad.to_str().unwrap_or_default()])?,
        "bad.jsonl:2: field verdict",
    );
    let unknown = dir.path().join("unknown.jsonl");
    std::fs::write(
        &unknown,
        filled[1].replace(&lines[1]["task"].as_str().unwrap_or_default().to_string(), &Uuid::nil().to_string()),
    )?;
    refused(
        &reasonrec(&config, &["corpus", "audit", &run_arg, "--marks", unknown.to_str().unwrap_or_default()])?,
        "is not a done task",
    );
    let summary = json(&reasonrec(&config, &["corpus", "audit", &run_arg, "--json"])?)?;
    assert_eq!(summary["stages"][0]["counts"]["approved"], 0, "nothing marked by the refused files");

    let text = ok(&reasonrec(
        &config,
        &["corpus", "audit", &run_arg, "--marks", marks.to_str().unwrap_or_default(), "--reviewer", "ana"],
    )?);
    assert!(text.contains("3 outputs marked by ana"), "{text}");
    let summary = json(&reasonrec(&config, &["corpus", "audit", &run_arg, "--json"])?)?;
    let rate = &summary["stages"][0]["error_rate"];
    assert_eq!((rate["audited"].as_u64(), rate["rejected"].as_u64()), (Some(3), Some(1)));
    // Each label's rejected share, weighted by the label's share of the done outputs (the sample
    // drew as many of each): not 1 in 3 unless the labels are as balanced as the sample.
    let labels: Vec<(f64, f64, f64)> = summary["stages"][0]["counts"]["labels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let n = |k: &str| l[k].as_f64().unwrap_or(0.0);
            (n("done"), n("approved") + n("rejected"), n("rejected"))
        })
        .filter(|l| l.1 > 0.0)
        .collect();
    assert_eq!(labels.len(), 2, "both labels audited: {summary}");
    let done: f64 = labels.iter().map(|l| l.0).sum();
    let expected: f64 = labels.iter().map(|(d, a, r)| d / done * r / a).sum();
    let got = rate["rate"].as_f64().unwrap_or(-1.0);
    assert!((got - expected).abs() < 1e-9, "{got} vs {expected}: {summary}");
    assert!(rate["low"].as_f64() < Some(got) && rate["high"].as_f64() > Some(got), "{rate}");
    let line = format!("3 audited (2 approved, 1 rejected): error rate {:.1} %", expected * 100.0);
    assert!(text.contains(&line) && text.contains("each label weighted by its share"), "{text}");
    // The text sample shows the marks.
    let shown = ok(&reasonrec(&config, &["corpus", "audit", &run_arg, "--sample", "2", "--seed", "3"])?);
    assert!(shown.contains("[rejected: cites a film not in the history]") && shown.contains("[approved]"), "{shown}");
    env.cleanup().await
}

/// `corpus text-index`: builds the answers' trigram index (again: nothing to do) and drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_index_is_built_once_and_dropped_on_request() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(&env, dir.path())?;
    for _ in 0..2 {
        let out = ok(&reasonrec(&config, &["corpus", "text-index"])?);
        assert!(out.contains("trigram index present"), "{out}");
    }
    assert_eq!(env.store.browser().text_index().await?, Some(true));
    let out = ok(&reasonrec(&config, &["corpus", "text-index", "--drop"])?);
    assert!(out.contains("trigram index absent"), "{out}");
    assert_eq!(env.store.browser().text_index().await?, None);
    env.cleanup().await
}
