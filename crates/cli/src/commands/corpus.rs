//! `corpus snapshot`, `corpus snapshots`, `corpus diff`.

use super::connect_store;
use crate::cli::{CorpusDiffArgs, SnapshotArgs, SnapshotsArgs};
use reasonrec_core::Settings;
use reasonrec_core::terminal::terminal_safe as safe;
use reasonrec_store::lifecycle::{CorpusDiff, CorpusRef, Snapshot, SnapshotOutcome};
use std::process::ExitCode;

pub async fn snapshot(settings: &Settings, a: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let name = a.name.trim();
    if name.is_empty() || name.parse::<uuid::Uuid>().is_ok() {
        anyhow::bail!("a snapshot name is not empty and not a UUID (those name runs), got {:?}", a.name);
    }
    let store = connect_store(settings).await?;
    store.ensure_migrated().await?;
    match store.create_snapshot(name, a.run, a.note.as_deref()).await? {
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

pub async fn snapshots(settings: &Settings, a: SnapshotsArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    let list = store.snapshots().await?;
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
    let from = store.resolve_corpus(&a.a).await?;
    let to = store.resolve_corpus(&a.b).await?;
    let diff = store.corpus_diff(from.run_id, to.run_id, a.examples.max(0)).await?;
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
            state: "completed".into(),
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
