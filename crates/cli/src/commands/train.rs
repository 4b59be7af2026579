//! `train export`, `train launch`, `train eval`.

use super::connect_store;
use crate::cli::{ExportFormatArg, TrainEvalArgs, TrainExportArgs, TrainLaunchArgs};
use anyhow::Context;
use reasonrec_core::{PromptLibrary, Settings};
use reasonrec_trainer::export::{ExportOptions, Progress, Source, export_run, resolve};
use reasonrec_trainer::files::Format;
use reasonrec_trainer::filters::FilterOptions;
use reasonrec_trainer::launch::{build_spec, command_line, display_command, run_command, write_spec};
use reasonrec_trainer::manifest::{LabelCounts, Manifest};
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub async fn export(settings: &Settings, a: TrainExportArgs) -> anyhow::Result<ExitCode> {
    let prompts = PromptLibrary::load(&settings.prompts.dir)
        .with_context(|| format!("loading prompt templates from {}", settings.prompts.dir.display()))?;
    let store = connect_store(settings).await?;
    store.ensure_migrated().await?;
    let source = match (a.run, a.dataset, a.snapshot.clone()) {
        (Some(run), _, _) => Source::Run(run),
        (None, Some(name), _) => Source::Dataset(name),
        (None, None, Some(name)) => Source::Snapshot(name),
        (None, None, None) => anyhow::bail!("give --run, --dataset or --snapshot"),
    };
    let run_id = resolve(&store, &source).await?;
    let mut opts = ExportOptions::new(&a.out);
    opts.format = match a.format {
        ExportFormatArg::Jsonl => Format::Jsonl,
        ExportFormatArg::Parquet => Format::Parquet,
        ExportFormatArg::Both => Format::Both,
    };
    opts.partial = a.partial;
    opts.snapshot = a.snapshot;
    opts.filters = FilterOptions {
        min_judge_score: a.min_judge_score,
        min_words: a.min_words,
        max_words: a.max_words,
        label_consistent: a.label_consistent,
        dedup: a.dedup,
    };
    if a.approved_only {
        opts.audit = reasonrec_core::audit::AuditPolicy::ApprovedOnly;
    }
    opts.few_shot = a.few_shot.unwrap_or_else(|| settings.trainer.few_shot.clone());
    opts.few_shot.retain(|&n| n > 0);
    opts.seed = settings.trainer.seed;
    opts.poll = Duration::try_from_secs_f64(a.poll_secs.max(0.01)).unwrap_or(Duration::from_secs(2));

    let t0 = Instant::now();
    let spinner = indicatif::ProgressBar::new_spinner();
    let mut last_wait = None;
    let mut on_progress = |p: Progress| match p {
        Progress::Waiting { state, counts } => {
            let now = (state, counts.done);
            if last_wait.as_ref() != Some(&now) {
                eprintln!(
                    "run {run_id} is {state}: {}/{} tasks done ({}/{} reasoning); waiting for it to complete \
                     (--partial exports what is done now)",
                    counts.done, counts.tasks, counts.reasoning_done, counts.reasoning
                );
                last_wait = Some(now);
            }
        }
        Progress::Exported { read, kept } => spinner.set_message(format!("exported {kept} of {read} rows read")),
    };
    let manifest = export_run(&store, &prompts, run_id, &opts, &mut on_progress).await;
    spinner.finish_and_clear();
    let manifest = manifest.with_context(|| format!("exporting run {run_id} to {}", a.out.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
    } else {
        print!("{}", render(&manifest, &a.out, secs));
    }
    Ok(ExitCode::SUCCESS)
}

fn render(m: &Manifest, out: &std::path::Path, secs: f64) -> String {
    let split = |name: &str, c: &LabelCounts| {
        format!("  {name:<10} {:>8} rows ({} liked, {} disliked)\n", c.rows, c.liked, c.disliked)
    };
    let mut s = format!(
        "run {} ({}, {}) of dataset {:?} v{}: {} of {} done reasoning tasks exported to {} in {secs:.1} s\n",
        m.run.id,
        m.run.state,
        if m.run.complete { "complete" } else { "partial" },
        m.dataset.name,
        m.dataset.version,
        m.tasks.exported,
        m.tasks.reasoning_done,
        out.display(),
    );
    s += &split("train", &m.splits.train);
    s += &split("validation", &m.splits.validation);
    s += &split("test", &m.splits.test);
    for f in &m.few_shot {
        s += &format!("  few-shot {:>4}: {} rows ({} liked, {} disliked)\n", f.requested, f.rows, f.liked, f.disliked);
    }
    let r = &m.filters;
    let mut removed = Vec::new();
    if let Some(j) = r.min_judge_score {
        removed.push(format!(
            "min_judge_score {}: {} ({} below, {} unjudged)",
            j.min_score, j.removed, j.below, j.unjudged
        ));
    }
    if let Some(b) = r.min_words {
        removed.push(format!("min_words {}: {}", b.words, b.removed));
    }
    if let Some(b) = r.max_words {
        removed.push(format!("max_words {}: {}", b.words, b.removed));
    }
    if let Some(l) = r.label_consistent {
        removed.push(format!(
            "label_consistent: {} ({} contradicting, {} undecided)",
            l.removed, l.contradicting, l.undecided
        ));
    }
    if let Some(d) = r.dedup {
        removed.push(format!("dedup: {}", d.removed));
    }
    if !removed.is_empty() {
        s += &format!("  removed by filters: {}\n", removed.join(", "));
    }
    let audit = &m.audit;
    if audit.approved + audit.rejected_excluded + audit.unreviewed_excluded > 0 {
        s += &format!(
            "  audit marks: {} approved, {} rejected (left out){}\n",
            audit.approved,
            audit.rejected_excluded,
            match audit.unreviewed_excluded {
                0 => String::new(),
                n => format!(", {n} unreviewed (left out: --approved-only)"),
            }
        );
    }
    s += &format!("  student template {} ({})\n", m.templates.student.name, m.templates.student.version);
    s += &format!("  {} files and manifest.json\n", m.files.len());
    s
}

pub async fn launch(settings: &Settings, a: TrainLaunchArgs) -> anyhow::Result<ExitCode> {
    let spec = build_spec(&settings.trainer, &a.export, &a.out)?;
    let path = write_spec(&spec, &a.out)?;
    let args = command_line(&settings.trainer, &path, a.dry_run)?;
    println!("wrote {}", path.display());
    if a.print_only {
        println!("{}", display_command(&args));
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("running {}", display_command(&args));
    let status = tokio::task::spawn_blocking(move || run_command(&args)).await.context("launch task")??;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // Killed by a signal: the shell's convention, 128 + signal number.
        None => ExitCode::from(exit_signal(&status)),
    })
}

#[cfg(unix)]
fn exit_signal(status: &std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    status.signal().and_then(|s| u8::try_from(128 + s).ok()).unwrap_or(1)
}

#[cfg(not(unix))]
fn exit_signal(_: &std::process::ExitStatus) -> u8 {
    1
}

pub fn eval(a: TrainEvalArgs) -> anyhow::Result<ExitCode> {
    let report = reasonrec_trainer::eval::evaluate(&a.examples, &a.predictions)?;
    let (json, md) = reasonrec_trainer::eval::write_report(&report, &a.out)?;
    print!("{}", reasonrec_trainer::eval::render_markdown(&report));
    eprintln!("wrote {} and {}", json.display(), md.display());
    Ok(ExitCode::SUCCESS)
}
