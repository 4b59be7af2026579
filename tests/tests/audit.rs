//! Audit marks (issue 18): a seeded review sample stratified by stage and label, verdicts per
//! output key (so a reused output carries its mark into later runs), and the export honouring
//! them: rejected outputs never written, `--approved-only` writing approved ones alone, the
//! manifest counting both.

use reasonrec_coordinator::create_run;
use reasonrec_core::PromptLibrary;
use reasonrec_core::audit::{AuditPolicy, Verdict};
use reasonrec_core::stage::TaskState;
use reasonrec_store::audit::{NewMark, SampleRow};
use reasonrec_tests::TestEnv;
use reasonrec_trainer::export::{ExportOptions, export_run};
use std::collections::HashSet;
use uuid::Uuid;

async fn completed_run(env: &TestEnv) -> anyhow::Result<Uuid> {
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    env.run_to_completion(run).await?;
    Ok(run)
}

fn mark(row: &SampleRow, verdict: Verdict, reason: Option<&str>) -> anyhow::Result<NewMark> {
    Ok(NewMark {
        output_key: hex::decode(&row.output_key)?,
        verdict,
        reason: reason.map(String::from),
        reviewer: "tester".into(),
    })
}

/// The exported examples' task ids (every split file's JSONL rows).
fn exported_tasks(dir: &std::path::Path) -> anyhow::Result<HashSet<String>> {
    let mut out = HashSet::new();
    for split in ["train", "validation", "test"] {
        let path = dir.join(format!("{split}.jsonl"));
        if !path.exists() {
            continue;
        }
        for line in std::fs::read_to_string(path)?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            out.insert(v["id"].as_str().unwrap_or_default().to_string());
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_follow_the_output_and_the_export_honours_them() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.sampling.max_users = 40;
    env.ingest_sample().await?;
    let run = completed_run(&env).await?;
    let s = &env.store;

    // A sample per (stage, label), the same for the same seed.
    let sample = s.audits().sample(run, 3, 7).await?;
    assert_eq!(sample, s.audits().sample(run, 3, 7).await?, "seeded");
    let liked: Vec<&SampleRow> = sample.iter().filter(|r| r.label == Some(true)).collect();
    let disliked: Vec<&SampleRow> = sample.iter().filter(|r| r.label == Some(false)).collect();
    assert_eq!((liked.len(), disliked.len()), (3, 3), "three of each label: {sample:?}");
    assert!(sample.iter().all(|r| r.verdict.is_none() && !r.text.is_empty()));

    // One rejected, two approved (the second time a mark replaces the first).
    let rejected = liked[0];
    s.audits().mark_outputs(&[mark(rejected, Verdict::Approved, None)?]).await?;
    let marked = s
        .audits()
        .mark_outputs(&[
            mark(rejected, Verdict::Rejected, Some("invents a genre"))?,
            mark(liked[1], Verdict::Approved, None)?,
            mark(disliked[0], Verdict::Approved, None)?,
        ])
        .await?;
    assert_eq!(marked, 3);
    let counts = s.audits().counts(run).await?;
    assert_eq!((counts[0].stage.as_str(), counts[0].approved, counts[0].rejected), ("reasoning", 2, 1));
    let again = s.audits().sample(run, 3, 7).await?;
    let row = again.iter().find(|r| r.task == rejected.task);
    assert_eq!(
        row.map(|r| (r.verdict, r.reason.as_deref())),
        Some((Some(Verdict::Rejected), Some("invents a genre"))),
        "the sample shows the current mark"
    );

    // The export leaves the rejected output out by default and counts it.
    let prompts = PromptLibrary::load(&env.settings.prompts.dir)?;
    let dir = tempfile::tempdir()?;
    let mut opts = ExportOptions::new(dir.path().join("all"));
    opts.format = reasonrec_trainer::files::Format::Jsonl;
    let m = export_run(s, &prompts, run, &opts, &mut |_| {}).await?;
    let done = env.tasks_in(run, TaskState::Done).await? as u64;
    assert_eq!(m.tasks.exported, done - 1);
    assert_eq!((m.audit.approved, m.audit.rejected_excluded, m.audit.unreviewed_excluded), (2, 1, 0));
    let written = exported_tasks(&opts.out)?;
    assert!(!written.contains(&rejected.task.to_string()) && written.len() as u64 == done - 1);

    // --approved-only: the two approved outputs alone.
    opts.out = dir.path().join("approved");
    opts.audit = AuditPolicy::ApprovedOnly;
    let m = export_run(s, &prompts, run, &opts, &mut |_| {}).await?;
    assert_eq!(m.tasks.exported, 2);
    assert_eq!(m.audit.unreviewed_excluded, done - 3);
    let written = exported_tasks(&opts.out)?;
    let approved: HashSet<String> = [liked[1].task, disliked[0].task].iter().map(Uuid::to_string).collect();
    assert_eq!(written, approved);
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(opts.out.join("manifest.json"))?)?;
    assert_eq!(manifest["audit"]["policy"], "approved_only");

    // A later run asks the same questions: the ledger hands back the same outputs, marks and all.
    let later = completed_run(&env).await?;
    let counts = s.audits().counts(later).await?;
    assert_eq!((counts[0].approved, counts[0].rejected), (2, 1), "marks are per output key");
    env.cleanup().await
}

/// A rejected user profile is never written either: the examples that embed it are written
/// without it (as with the profile stage off), and the manifest counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_profile_is_left_out_of_the_examples_that_embed_it() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.full_method();
    env.settings.sampling.max_users = 6;
    env.ingest_sample().await?;
    let run = completed_run(&env).await?;
    let s = &env.store;
    let (ext_id, key): (String, Vec<u8>) = sqlx::query_as(
        "SELECT u.ext_id, t.output_key FROM tasks t JOIN runs r ON r.id = t.run_id
         JOIN users u ON u.dataset_id = r.dataset_id AND u.id = t.user_id
         WHERE t.run_id = $1 AND t.stage = 'user_profile' ORDER BY t.id LIMIT 1",
    )
    .bind(run)
    .fetch_one(s.pool())
    .await?;
    let prompts = PromptLibrary::load(&env.settings.prompts.dir)?;
    let dir = tempfile::tempdir()?;
    // Per example row: (the user's own id, whether its prompt shows a viewer profile).
    let rows = |d: &std::path::Path| -> anyhow::Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        for split in ["train", "validation", "test"] {
            for line in std::fs::read_to_string(d.join(format!("{split}.jsonl"))).unwrap_or_default().lines() {
                let v: serde_json::Value = serde_json::from_str(line)?;
                let input = v["input"].as_str().unwrap_or_default();
                out.push((v["user_id"].as_str().unwrap_or_default().to_string(), input.contains("## Viewer profile")));
            }
        }
        Ok(out)
    };
    let mut opts = ExportOptions::new(dir.path().join("before"));
    opts.format = reasonrec_trainer::files::Format::Jsonl;
    let before = export_run(s, &prompts, run, &opts, &mut |_| {}).await?;
    let before_rows = rows(&opts.out)?;
    let theirs = before_rows.iter().filter(|(u, _)| *u == ext_id).count();
    assert!(theirs > 0 && before_rows.iter().all(|(_, shown)| *shown), "every example shows its profile first");
    assert_eq!(before.audit.profiles_left_out, 0);

    s.audits()
        .mark_outputs(&[NewMark { output_key: key, verdict: Verdict::Rejected, reason: None, reviewer: "t".into() }])
        .await?;
    opts.out = dir.path().join("after");
    let after = export_run(s, &prompts, run, &opts, &mut |_| {}).await?;
    let after_rows = rows(&opts.out)?;
    assert_eq!(after_rows.len(), before_rows.len(), "the examples stay");
    for (u, shown) in &after_rows {
        assert_eq!(*shown, *u != ext_id, "user {u}: the profile shown unless it is the rejected one");
    }
    assert!(after.audit.profiles_left_out >= 1);
    env.cleanup().await
}
