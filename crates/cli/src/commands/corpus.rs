//! `corpus snapshot`, `corpus snapshots`, `corpus diff`, `corpus audit`.

use super::connect_store;
use crate::cli::{CorpusAuditArgs, CorpusDiffArgs, SnapshotArgs, SnapshotsArgs, TextIndexArgs};
use reasonrec_core::Settings;
use reasonrec_core::audit::Verdict;
use reasonrec_core::terminal::terminal_safe as safe;
use reasonrec_store::Store;
use reasonrec_store::audit::{AuditSummary, NewMark, SampleRow, StageAudit};
use reasonrec_store::lifecycle::{CorpusDiff, CorpusRef, Snapshot, SnapshotOutcome};
use std::path::Path;
use std::process::ExitCode;

pub async fn snapshot(settings: &Settings, a: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let name = a.name.trim();
    if name.is_empty() || name.parse::<uuid::Uuid>().is_ok() {
        anyhow::bail!("a snapshot name is not empty and not a UUID (those name runs), got {:?}", a.name);
    }
    let store = connect_store(settings).await?;
    store.ensure_migrated().await?;
    match store.lifecycle().create_snapshot(name, a.run, a.note.as_deref()).await? {
        SnapshotOutcome::Created => println!(
            "snapshot {name:?} names the corpus of run {}; the run stays completed \
             (`reasonrec train export --snapshot {name}` exports it)",
            a.run
        ),
        SnapshotOutcome::NameTaken { run_id } => {
            anyhow::bail!("snapshot {name:?} already exists (run {run_id}); snapshot names are never reused")
        }
        SnapshotOutcome::RunNotCompleted { state } => {
            anyhow::bail!("run {} is {state}: only a completed run's corpus can be snapshotted", a.run)
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn text_index(settings: &Settings, a: TextIndexArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    let started = std::time::Instant::now();
    store.browser().set_text_index(!a.drop).await?;
    let state = match store.browser().text_index().await? {
        Some(true) => "present",
        Some(false) => "invalid (a build was interrupted: run the command again)",
        None => "absent",
    };
    println!("answers' trigram index {state} ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

pub async fn snapshots(settings: &Settings, a: SnapshotsArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    let list = store.lifecycle().snapshots().await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "snapshots": list }))?);
    } else {
        print!("{}", render_snapshots(&list));
    }
    Ok(ExitCode::SUCCESS)
}

fn render_snapshots(list: &[Snapshot]) -> String {
    if list.is_empty() {
        return "no snapshot yet (`reasonrec corpus snapshot RUN --name NAME`)\n".into();
    }
    let mut out = String::new();
    for s in list {
        let done: Vec<String> = s.done.iter().map(|(stage, n)| format!("{stage} {n}")).collect();
        out.push_str(&format!(
            "{}  run {}  {} v{}  {}  done: {}\n",
            safe(&s.name),
            s.run_id,
            safe(&s.dataset),
            s.dataset_version,
            s.created_at.format("%Y-%m-%d %H:%M"),
            done.join(", ")
        ));
        if let Some(note) = &s.note {
            out.push_str(&format!("  {}\n", safe(note)));
        }
    }
    out
}

pub async fn diff(settings: &Settings, a: CorpusDiffArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    let from = store.lifecycle().resolve_corpus(&a.a).await?;
    let to = store.lifecycle().resolve_corpus(&a.b).await?;
    let diff = store.lifecycle().corpus_diff(from.run_id, to.run_id, a.examples.max(0)).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "a": from, "b": to, "diff": diff }))?);
    } else {
        print!("{}", render_diff(&from, &to, &diff));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(c: &CorpusRef) -> String {
    let name = c.snapshot.as_ref().map(|n| format!("snapshot {n:?} = ")).unwrap_or_default();
    format!("{name}run {} ({} v{}, {})", c.run_id, safe(&c.dataset), c.dataset_version, c.state)
}

fn render_diff(from: &CorpusRef, to: &CorpusRef, d: &CorpusDiff) -> String {
    let mut out = format!("A: {}\nB: {}\n", describe(from), describe(to));
    out.push_str(&format!("{:<13} {:>8} {:>8} {:>8} {:>10}\n", "stage", "added", "removed", "changed", "unchanged"));
    let row = |stage: &str, c: &reasonrec_store::lifecycle::DiffCounts| {
        let labels =
            if c.label_changed > 0 { format!("  ({} with another label)", c.label_changed) } else { String::new() };
        format!("{stage:<13} {:>8} {:>8} {:>8} {:>10}{labels}\n", c.added, c.removed, c.changed, c.unchanged)
    };
    for (stage, c) in &d.by_stage {
        out.push_str(&row(stage, c));
    }
    out.push_str(&row("total", &d.total));
    for (category, list) in &d.examples {
        let shown: Vec<String> = list
            .iter()
            .map(|e| match (e.label_a, e.label_b) {
                (Some(x), Some(y)) if x != y => format!("{} {} (label {x} -> {y})", e.stage, safe(&e.subject)),
                _ => format!("{} {}", e.stage, safe(&e.subject)),
            })
            .collect();
        out.push_str(&format!("{category}: {}\n", shown.join(", ")));
    }
    out
}

pub async fn audit(settings: &Settings, a: CorpusAuditArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    store.ensure_migrated().await?;
    let run = store.lifecycle().resolve_corpus(&a.run).await?.run_id;
    if let Some(n) = a.sample {
        anyhow::ensure!(n > 0, "--sample must be at least 1, got {n}");
        let rows = store.audits().sample(run, n, a.seed).await?;
        if a.json {
            // One object per line, verdict and reason ready to fill in and read back by --marks.
            for r in &rows {
                println!("{}", serde_json::to_string(r)?);
            }
        } else {
            print!("{}", render_sample(&rows));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = &a.marks {
        let reviewer = a.reviewer.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".into());
        anyhow::ensure!(!reviewer.trim().is_empty(), "--reviewer must not be empty");
        let marked = apply_marks(&store, run, path, reviewer.trim()).await?;
        println!("{marked} outputs marked by {} in run {run}", safe(reviewer.trim()));
    }
    let counts = store.audits().counts(run).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&AuditSummary::new(run, counts))?);
    } else {
        print!("{}", render_audit(run, &counts));
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the marks file (every error names file:line) and records its verdicts, all or none.
async fn apply_marks(store: &Store, run: uuid::Uuid, path: &Path, reviewer: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let m: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        anyhow::ensure!(m.is_object(), "{at}: a line is one JSON object with task, verdict and reason");
        let verdict = match &m["verdict"] {
            serde_json::Value::Null => continue,
            serde_json::Value::String(v) => {
                v.parse::<Verdict>().map_err(|e| anyhow::anyhow!("{at}: field verdict: {e}"))?
            }
            other => anyhow::bail!("{at}: field verdict: {other} is not a string or null"),
        };
        let task: uuid::Uuid = m["task"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{at}: field task: {} is not a task id", m["task"]))?;
        let reason = match &m["reason"] {
            serde_json::Value::Null => None,
            serde_json::Value::String(r) if r.trim().is_empty() => None,
            serde_json::Value::String(r) => Some(r.trim().to_string()),
            other => anyhow::bail!("{at}: field reason: {other} is not a string or null"),
        };
        lines.push((at, task, verdict, reason));
    }
    let tasks: Vec<uuid::Uuid> = lines.iter().map(|l| l.1).collect();
    let keys = store.audits().done_output_keys(run, &tasks).await?;
    let mut marks = Vec::with_capacity(lines.len());
    for (at, task, verdict, reason) in lines {
        let Some(key) = keys.get(&task) else {
            anyhow::bail!("{at}: field task: {task} is not a done task of run {run}; nothing was marked");
        };
        marks.push(NewMark { output_key: key.clone(), verdict, reason, reviewer: reviewer.to_string() });
    }
    Ok(store.audits().mark_outputs(&marks).await?)
}

fn render_sample(rows: &[SampleRow]) -> String {
    if rows.is_empty() {
        return "no done output to sample\n".into();
    }
    let mut out = String::new();
    for r in rows {
        let label = match r.label {
            Some(true) => " liked",
            Some(false) => " disliked",
            None => "",
        };
        let mark = match (&r.verdict, &r.reason) {
            (Some(v), Some(why)) => format!("  [{v}: {}]", safe(why)),
            (Some(v), None) => format!("  [{v}]"),
            _ => String::new(),
        };
        out.push_str(&format!("── task {}  {}{label}{mark}\n{}\n\n", r.task, r.stage, safe(&r.text)));
    }
    out
}

fn render_audit(run: uuid::Uuid, counts: &[StageAudit]) -> String {
    let mut out = format!("audit of run {run}\n");
    for c in counts {
        let audited = (c.approved + c.rejected) as u64;
        let rate = match c.error_rate() {
            Some(e) => {
                let weighted = if c.labels.len() > 1 { ", each label weighted by its share" } else { "" };
                let uncovered = if e.unaudited_done > 0 {
                    format!("; {} done of labels nobody audited not covered", e.unaudited_done)
                } else {
                    String::new()
                };
                format!(
                    "error rate {:.1} % (95 % CI {:.1}-{:.1} %{weighted}){uncovered}",
                    e.rate * 100.0,
                    e.low * 100.0,
                    e.high * 100.0
                )
            }
            None => "not audited yet".into(),
        };
        out.push_str(&format!(
            "  {:<13} {} done, {} audited ({} approved, {} rejected): {rate}\n",
            c.stage, c.done, audited, c.approved, c.rejected
        ));
    }
    if counts.is_empty() {
        out.push_str("  no done task\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reasonrec_store::lifecycle::DiffExample;

    #[test]
    fn ids_from_a_dataset_reach_the_terminal_escaped() {
        let corpus = |dataset: &str| CorpusRef {
            run_id: uuid::Uuid::nil(),
            snapshot: Some("night\u{1b}[2J".into()),
            dataset: dataset.into(),
            dataset_version: 1,
            state: reasonrec_core::RunState::Completed,
        };
        let mut diff = CorpusDiff::default();
        let example =
            DiffExample { stage: "reasoning".into(), subject: "u1\rFAKE:i2:test".into(), label_a: None, label_b: None };
        diff.examples.insert("added".into(), vec![example]);
        let out = render_diff(&corpus("ml\u{1b}]0;owned\u{7}"), &corpus("ok"), &diff);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(out.contains("ml\\u{1b}]0;owned\\u{7}") && out.contains("u1\\u{d}FAKE"), "{out}");
    }
}
