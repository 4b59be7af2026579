//! Runs `scripts/train_student.py --dry-run` on the exported fixture under `tests/fixtures/export`
//! (6 train, 2 validation, 2 test examples, both labels in each) and checks its summary and its
//! errors. Needs `python3` on the PATH and nothing else (no torch).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/export")
}

fn write_spec(dir: &Path, data_dir: &Path, max_seq_length: u64) -> PathBuf {
    let spec = json!({
        "base_model": "meta-llama/Llama-2-7b-hf",
        "data_dir": data_dir,
        "train_file": "train.jsonl",
        "validation_file": "validation.jsonl",
        "test_file": "test.jsonl",
        "output_dir": dir.join("out"),
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
        "learning_rate": 0.0002,
        "epochs": 3,
        "batch_size": 4,
        "gradient_accumulation_steps": 4,
        "max_seq_length": max_seq_length,
        "loss_on_answer_only": true,
        "early_stopping": {"metric": "auc", "patience": 2},
        "seed": 42
    });
    let path = dir.join(format!("spec-{max_seq_length}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&spec).unwrap()).unwrap();
    path
}

fn dry_run(spec: &Path, summary: &Path) -> Output {
    let script = workspace_root().join("scripts/train_student.py");
    Command::new("python3")
        .arg(&script)
        .arg("--spec")
        .arg(spec)
        .arg("--dry-run")
        .arg("--summary")
        .arg(summary)
        .output()
        .expect("python3 must be installed to run scripts/train_student.py")
}

fn run_ok(spec: &Path, summary: &Path) -> Value {
    let out = dry_run(spec, summary);
    assert!(out.status.success(), "dry run failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let written: Value = serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(written, printed, "--summary writes what stdout shows");
    written
}

fn copy_fixture(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["train.jsonl", "validation.jsonl", "test.jsonl"] {
        std::fs::copy(fixture_dir().join(name), to.join(name)).unwrap();
    }
}

/// Replaces line `line` (1-based) of `path` with `text`.
fn replace_line(path: &Path, line: usize, text: &str) {
    let content = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = content.lines().map(str::to_owned).collect();
    lines[line - 1] = text.to_owned();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn dry_run_summarises_every_split() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &fixture_dir(), 2048);
    let summary = run_ok(&spec, &dir.path().join("summary.json"));

    assert_eq!(summary["mode"], "dry-run");
    assert_eq!(summary["tokenizer"]["kind"], "word-level (built-in)");
    for (split, examples, liked, disliked) in [("train", 6, 3, 3), ("validation", 2, 1, 1), ("test", 2, 1, 1)] {
        let s = &summary["splits"][split];
        assert_eq!(s["examples"], examples, "{split}");
        assert_eq!(s["labels"]["liked"], liked, "{split}");
        assert_eq!(s["labels"]["disliked"], disliked, "{split}");
        let tokens = s["tokens"].as_u64().unwrap();
        let answer = s["answer_tokens"].as_u64().unwrap();
        assert!(answer > 0 && answer < tokens, "{split}: answer {answer} of {tokens} tokens");
        // Loss on the answer only: exactly the answer tokens are supervised.
        assert_eq!(s["supervised_tokens"], answer, "{split}");
        assert_eq!(s["prompt_tokens"].as_u64().unwrap() + answer, tokens, "{split}");
        assert_eq!(s["truncated"], 0, "{split}");
    }
    // The training split builds the vocabulary, so it has no unknown word.
    assert_eq!(summary["splits"]["train"]["unknown_tokens"], 0);
    assert_eq!(summary["total"]["examples"], 10);
    assert_eq!(summary["total"]["labels"]["liked"], 5);
    let share = summary["total"]["answer_token_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0);
}

#[test]
fn dry_run_truncates_the_prompt_and_keeps_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let full = run_ok(&write_spec(dir.path(), &fixture_dir(), 2048), &dir.path().join("full.json"));
    // 128 tokens: shorter than every training example, longer than twice every answer.
    let cut = run_ok(&write_spec(dir.path(), &fixture_dir(), 128), &dir.path().join("cut.json"));
    let train = &cut["splits"]["train"];
    assert_eq!(train["truncated"], 6);
    assert_eq!(train["max_example_tokens"], 128);
    assert_eq!(train["tokens"], 6 * 128);
    for split in ["train", "validation", "test"] {
        assert_eq!(cut["splits"][split]["answer_tokens"], full["splits"][split]["answer_tokens"], "{split}");
        assert!(cut["splits"][split]["max_example_tokens"].as_u64().unwrap() <= 128);
    }
}

#[test]
fn broken_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("export");
    copy_fixture(&data);
    replace_line(&data.join("train.jsonl"), 3, r#"{"id": "train-broken", "label": 1,"#);
    let out = dry_run(&write_spec(dir.path(), &data, 2048), &dir.path().join("summary.json"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken line must fail the dry run");
    assert!(stderr.contains("train.jsonl:3: invalid JSON"), "{stderr}");
    assert!(!dir.path().join("summary.json").exists());
}

#[test]
fn missing_field_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("export");
    copy_fixture(&data);
    let path = data.join("validation.jsonl");
    let second = std::fs::read_to_string(&path).unwrap().lines().nth(1).unwrap().to_owned();
    let mut record: Value = serde_json::from_str(&second).unwrap();
    record.as_object_mut().unwrap().remove("messages");
    replace_line(&path, 2, &record.to_string());
    let out = dry_run(&write_spec(dir.path(), &data, 2048), &dir.path().join("summary.json"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("validation.jsonl:2: field `messages`: missing"), "{stderr}");

    // A label that contradicts the assistant turn is caught too.
    copy_fixture(&data);
    let first = std::fs::read_to_string(data.join("test.jsonl")).unwrap().lines().next().unwrap().to_owned();
    let mut record: Value = serde_json::from_str(&first).unwrap();
    record["label"] = json!(0);
    replace_line(&data.join("test.jsonl"), 1, &record.to_string());
    let out = dry_run(&write_spec(dir.path(), &data, 2048), &dir.path().join("summary.json"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("test.jsonl:1: field `label`"), "{stderr}");
}
