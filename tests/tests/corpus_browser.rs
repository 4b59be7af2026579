//! The corpus browser (issue 18): a run's tasks in filtered keyset pages, a task's page with the
//! prompt rendered again and checked against what the teacher received and against the content
//! key, marks through the API, and the page itself in a real headless browser, with an answer
//! full of markup shown as text.

use reasonrec_coordinator::create_run;
use reasonrec_coordinator::web::Access;
use reasonrec_core::ChatMessage;
use reasonrec_core::stage::TaskState;
use reasonrec_core::validate::word_count;
use reasonrec_mock_teacher::MockConfig;
use reasonrec_tests::{TestEnv, count};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const XSS: &str = "<img src=x onerror=\"document.body.dataset.pwned=1\"><script>document.body.dataset.pwned=2</script> \
                   The viewer liked «Heat (1995)» for its crime plot and will like the target for the same reasons.";

/// Debian's chromium, headless, dumping the DOM of `url` once its scripts ran.
fn dump_dom(profile: &std::path::Path, url: &str) -> anyhow::Result<String> {
    let browser = std::env::var("REASONREC_BROWSER").unwrap_or_else(|_| "chromium".into());
    let out = std::process::Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=4000", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_browser_pages_filters_checks_prompts_and_takes_marks() -> anyhow::Result<()> {
    let mut env = TestEnv::with_mock(MockConfig { record_requests: 1_000, ..MockConfig::default() }).await?;
    env.settings.sampling.max_users = 30;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    env.run_to_completion(run).await?;
    let s = &env.store;
    let total = count(s, "SELECT count(*) FROM tasks WHERE run_id = $1", run).await?;

    let stop = CancellationToken::new();
    let views = reasonrec_coordinator::web::TaskViews {
        prompt: Some(reasonrec_worker::render::prompt_checker(s.clone(), &env.settings)?),
        student: Some(reasonrec_trainer::export::student_viewer(s.clone(), &env.settings.prompts.dir)?),
    };
    let ready: reasonrec_ops::ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
    let app = reasonrec_coordinator::web::router_with_views(
        s.clone(),
        Access::Loopback,
        ready,
        Arc::new(AtomicBool::new(true)),
        views,
    );
    let base = format!("http://{}", reasonrec_ops::serve("127.0.0.1:0", app, stop.clone()).await?);
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let r = http.get(&url).send().await?;
            anyhow::ensure!(r.status() == 200, "{url}: {} {}", r.status(), r.text().await?);
            Ok::<Value, anyhow::Error>(r.json().await?)
        }
    };

    // Pages of 7 cover the run once, in id order, without overlap.
    let mut seen: Vec<String> = Vec::new();
    let mut after = String::new();
    loop {
        let page = get(format!("/api/runs/{run}/tasks?limit=7&after={after}")).await?;
        let ids: Vec<String> =
            page["tasks"].as_array().into_iter().flatten().filter_map(|t| t["id"].as_str().map(String::from)).collect();
        seen.extend(ids);
        anyhow::ensure!(seen.len() as i64 <= total, "the pages go on past the run's {total} tasks");
        match page["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len() as i64, total);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "id order, no repeat");

    // Filters: label, and text in the answer.
    let liked = get(format!("/api/runs/{run}/tasks?label=true&limit=500")).await?;
    let liked_n = count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND label", run).await?;
    assert_eq!(liked["tasks"].as_array().map(Vec::len), Some(liked_n as usize));
    assert!(liked["tasks"].as_array().into_iter().flatten().all(|t| t["label"] == true));
    let bad = http.get(format!("{base}/api/runs/{run}/tasks?stage=nope")).send().await?;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await?.contains("stage"), "the bad parameter is named");
    // A split is a word of the vocabulary too: filtered exactly, and an unknown one refused by name.
    let tests = get(format!("/api/runs/{run}/tasks?split=test&limit=500")).await?;
    let tests_n = count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND split = 'test'", run).await?;
    assert!(tests_n > 0);
    assert_eq!(tests["tasks"].as_array().map(Vec::len), Some(tests_n as usize));
    assert!(tests["tasks"].as_array().into_iter().flatten().all(|t| t["split"] == "test"));
    let bad = http.get(format!("{base}/api/runs/{run}/tasks?split=dev")).send().await?;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await?.contains("unknown split \"dev\""), "the bad split is named");

    // Each answer's word count is stored with it as the validator counts it, and the range
    // filter reads it: the tasks of the median count, exactly.
    let rows: Vec<(Uuid, String, Option<i32>)> = sqlx::query_as(
        "SELECT t.id, o.text, o.words FROM tasks t JOIN outputs o ON o.key = t.output_key WHERE t.run_id = $1",
    )
    .bind(run)
    .fetch_all(s.pool())
    .await?;
    assert!(!rows.is_empty());
    for (id, text, words) in &rows {
        assert_eq!(*words, i32::try_from(word_count(text)).ok(), "task {id}");
    }
    let mut counts: Vec<i32> = rows.iter().filter_map(|r| r.2).collect();
    counts.sort_unstable();
    let median = counts[counts.len() / 2];
    let within = get(format!("/api/runs/{run}/tasks?min_words={median}&max_words={median}&limit=500")).await?;
    let within: HashSet<String> =
        within["tasks"].as_array().into_iter().flatten().filter_map(|t| t["id"].as_str().map(String::from)).collect();
    let expected: HashSet<String> = rows.iter().filter(|r| r.2 == Some(median)).map(|r| r.0.to_string()).collect();
    assert_eq!(within, expected);

    // One answer full of markup: found by a text search, shown as text.
    let xss_task = Uuid::parse_str(&seen[3])?;
    sqlx::query("UPDATE outputs SET text = $2 WHERE key = (SELECT output_key FROM tasks WHERE id = $1)")
        .bind(xss_task)
        .bind(XSS)
        .execute(s.pool())
        .await?;
    let found = get(format!("/api/runs/{run}/tasks?text=ONERROR")).await?;
    let found: HashSet<&str> =
        found["tasks"].as_array().into_iter().flatten().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(found, HashSet::from([seen[3].as_str()]));
    // The same through the answers' trigram index (`corpus text-index`), which the search uses
    // when it exists; a searched `%` is a percent sign, not LIKE's wildcard.
    assert_eq!(s.browser().text_index().await?, None, "opt-in");
    s.browser().set_text_index(true).await?;
    assert_eq!(s.browser().text_index().await?, Some(true));
    let indexed = get(format!("/api/runs/{run}/tasks?text=onError")).await?;
    let indexed: HashSet<&str> =
        indexed["tasks"].as_array().into_iter().flatten().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(indexed, found);
    let wild = get(format!("/api/runs/{run}/tasks?text=e%25e")).await?;
    assert_eq!(wild["tasks"].as_array().map(Vec::len), Some(0), "{wild}");
    s.browser().set_text_index(false).await?;
    assert_eq!(s.browser().text_index().await?, None);

    // The task page: the prompt rendered again is the one the teacher received, and its key is
    // the output's.
    let page = get(format!("/api/tasks/{xss_task}")).await?;
    assert_eq!(page["output"]["text"], XSS);
    assert!(page["attempts"].as_array().is_some_and(|a| !a.is_empty()));
    let prompt = &page["prompt"]["Ok"];
    assert_eq!(prompt["key_matches"], "mock", "{page}");
    let messages: Vec<ChatMessage> = serde_json::from_value(prompt["prompt"]["messages"].clone())?;
    assert!(env.mock.recorded().contains(&messages), "the page's prompt is what the teacher received");

    // The student example on the page is the export's row for that task, field for field.
    let dir0 = tempfile::tempdir()?;
    let mut opts = reasonrec_trainer::export::ExportOptions::new(dir0.path());
    opts.format = reasonrec_trainer::files::Format::Jsonl;
    let prompts = reasonrec_core::PromptLibrary::load(&env.settings.prompts.dir)?;
    reasonrec_trainer::export::export_run(s, &prompts, run, &opts, &mut |_| {}).await?;
    let exported: Value = std::fs::read_to_string(dir0.path().join("test.jsonl"))?
        .lines()
        .map(serde_json::from_str::<Value>)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .find(|row| row["id"] == xss_task.to_string())
        .unwrap_or_default();
    assert!(exported["output"].as_str().is_some_and(|o| o.contains("onerror")), "{exported}");
    assert_eq!(page["student"]["Ok"], exported, "the page shows what the export writes");

    // An input changed since the answer (an item's title): the page says the key differs.
    let changed = Uuid::parse_str(&seen[5])?;
    sqlx::query(
        "UPDATE items SET title = title || ' (restored)' WHERE (dataset_id, id) =
         (SELECT r.dataset_id, t.item_id FROM tasks t JOIN runs r ON r.id = t.run_id WHERE t.id = $1)",
    )
    .bind(changed)
    .execute(s.pool())
    .await?;
    let page = get(format!("/api/tasks/{changed}")).await?;
    assert!(page["prompt"]["Ok"]["key_matches"].is_null() && page["prompt"]["Ok"]["has_output"] == true, "{page}");

    // Marks: JSON only, a known output only; then the task shows it and the filter finds it.
    let key = get(format!("/api/tasks/{xss_task}")).await?["output"]["key"].as_str().unwrap_or_default().to_string();
    let mark = |body: String, content_type: &'static str, key: String| {
        http.post(format!("{base}/api/outputs/{key}/mark")).header("content-type", content_type).body(body).send()
    };
    let body = r#"{"verdict":"rejected","reason":"markup in the answer","reviewer":"ana"}"#.to_string();
    let form = mark(body.clone(), "application/x-www-form-urlencoded", key.clone()).await?;
    assert_eq!(form.status(), 415, "a cross-site form cannot mark");
    assert_eq!(mark(body.clone(), "application/json", "00".repeat(32)).await?.status(), 404);
    assert_eq!(mark(body, "application/json", key.clone()).await?.status(), 204);
    let rejected = get(format!("/api/runs/{run}/tasks?mark=rejected")).await?;
    assert_eq!(rejected["tasks"][0]["id"], xss_task.to_string());
    assert_eq!(get(format!("/api/tasks/{xss_task}")).await?["output"]["reviewer"], "ana");

    // The page in a real browser: the filtered list, the task opened from the fragment, the
    // markup shown as text and never run, the key check shown.
    let dir = tempfile::tempdir()?;
    let url = format!("{base}/corpus?run={run}&label=true#task={xss_task}");
    let profile = dir.path().join("p1");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&profile, &url)).await??;
    let rows = dom.matches("class=\"task\" data-task=").count();
    assert_eq!(rows as i64, liked_n.min(50), "the liked tasks listed:\n{dom}");
    assert!(
        dom.contains(&format!("data-task=\"{xss_task}\"")) && dom.contains("Prompt as sent"),
        "task opened:\n{dom}"
    );
    assert!(dom.contains("&lt;img src=x onerror="), "the markup is text:\n{dom}");
    assert!(!dom.contains("data-pwned") && !dom.contains("<img src=\"x\""), "no markup of the answer ran:\n{dom}");
    assert!(
        dom.contains("The content key matches (endpoint mock)")
            && dom.contains("Marked rejected: markup in the answer by ana")
    );
    assert!(
        dom.contains("is not exported: its output is rejected"),
        "a rejected answer has no student example:\n{dom}"
    );
    if let Ok(keep) = std::env::var("REASONREC_KEEP_CORPUS_SCREENSHOT") {
        // For a person to look at: the list and the opened task as a browser draws them.
        let browser = std::env::var("REASONREC_BROWSER").unwrap_or_else(|_| "chromium".into());
        let url = format!("{base}/corpus?run={run}&label=true&quality=1#task={xss_task}");
        let profile = dir.path().join("shot");
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(browser)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--virtual-time-budget=4000",
                    "--window-size=1280,2400",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg(format!("--screenshot={keep}"))
                .arg(url)
                .output()
        })
        .await??;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let url = format!("{base}/corpus?run={run}#task={changed}");
    let profile = dir.path().join("p2");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&profile, &url)).await??;
    assert!(dom.contains("Warning: this prompt, rendered again"), "the changed input is flagged:\n{dom}");
    assert!(dom.contains("Student example (as train export writes it)") && dom.contains("class=\"student\""), "{dom}");

    // The review sample (seeded, per stage and label) and the audit line with its error rate.
    let sample = get(format!("/api/runs/{run}/sample?n=2&seed=9")).await?;
    assert_eq!(sample, get(format!("/api/runs/{run}/sample?n=2&seed=9")).await?, "seeded");
    let drawn: Vec<&str> =
        sample["sample"].as_array().into_iter().flatten().filter_map(|r| r["task"].as_str()).collect();
    assert_eq!(drawn.len(), 4, "two per label: {sample}");
    let audit = get(format!("/api/runs/{run}/audit")).await?;
    assert_eq!(
        (audit["stages"][0]["counts"]["rejected"].as_i64(), audit["stages"][0]["error_rate"]["rate"].as_f64()),
        (Some(1), Some(1.0))
    );
    let url = format!("{base}/corpus?run={run}&sample=2&seed=9");
    let profile = dir.path().join("p3");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&profile, &url)).await??;
    assert_eq!(dom.matches("class=\"task sampled\"").count(), 4, "the sample listed:\n{dom}");
    assert!(dom.contains("4 outputs drawn (seed 9)") && dom.contains("reasoning: 1 of"), "{dom}");
    assert!(dom.contains("error rate 100.0 %"), "the audit line:\n{dom}");
    stop.cancel();
    env.cleanup().await
}

/// Quality analytics (issue 18): validator rejections per template version, model, stage and
/// reason over the dataset's recent runs, so a prompt edit shows the morning after; drawn on the
/// corpus page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_counted_per_template_version_and_reason() -> anyhow::Result<()> {
    let mut env = TestEnv::with_mock(MockConfig { rate_contradict: 0.3, seed: 5, ..MockConfig::default() }).await?;
    env.settings.sampling.max_users = 30;
    env.ingest_sample().await?;
    let before = create_run(&env.store, &env.settings, "sample").await?.run_id;
    env.run_to_completion(before).await?;
    // The night after, the reasoning template was edited: another version.
    let prompts = tempfile::tempdir()?;
    for f in std::fs::read_dir(&env.settings.prompts.dir)? {
        let f = f?;
        std::fs::copy(f.path(), prompts.path().join(f.file_name()))?;
    }
    let edited = prompts.path().join("reasoning.movielens.j2");
    let text = std::fs::read_to_string(&edited)?;
    std::fs::write(&edited, text.replacen("[user]", "Be concrete.\n[user]", 1))?;
    env.settings.prompts.dir = prompts.path().to_path_buf();
    let after = create_run(&env.store, &env.settings, "sample").await?.run_id;
    env.run_to_completion(after).await?;

    let s = &env.store;
    // A reviewer rejects one reasoning output of the second night.
    let key: Vec<u8> =
        sqlx::query_scalar("SELECT output_key FROM tasks WHERE run_id = $1 AND state = 'done' ORDER BY id LIMIT 1")
            .bind(after)
            .fetch_one(s.pool())
            .await?;
    s.audits()
        .mark_outputs(&[reasonrec_store::audit::NewMark {
            output_key: key,
            verdict: reasonrec_core::audit::Verdict::Rejected,
            reason: Some("vague".into()),
            reviewer: "ana".into(),
        }])
        .await?;
    let q = s.audits().quality(after, 14).await?;
    assert_eq!(q.audit.iter().map(|a| a.rejected).sum::<i64>(), 1);
    assert_eq!(q.audit_by_day.len(), 1, "{:?}", q.audit_by_day);
    assert_eq!(q.audit_by_day[0].marks, 1);
    assert_eq!(q.runs, vec![before, after]);
    let versions: HashSet<Option<String>> = q.rejections.iter().map(|r| r.template_version.clone()).collect();
    assert_eq!(versions.len(), 2, "one version per night: {versions:?}");
    let contradictions: i64 =
        q.rejections.iter().filter(|r| r.reason.as_deref() == Some("label_contradiction")).map(|r| r.attempts).sum();
    let expected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM attempts WHERE error_class = 'rejected' AND error LIKE 'label_contradiction:%'",
    )
    .fetch_one(s.pool())
    .await?;
    assert!(contradictions > 0 && contradictions == expected, "{contradictions} vs {expected}");
    let accepted: i64 = q.rejections.iter().filter(|r| r.reason.is_none()).map(|r| r.attempts).sum();
    let done = env.tasks_in(before, TaskState::Done).await? + env.tasks_in(after, TaskState::Done).await?;
    assert_eq!(accepted, done, "every done task was one accepted answer");

    let stop = CancellationToken::new();
    let ready: reasonrec_ops::ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
    let app = reasonrec_coordinator::web::router(s.clone(), Access::Loopback, ready, Arc::new(AtomicBool::new(true)));
    let base = format!("http://{}", reasonrec_ops::serve("127.0.0.1:0", app, stop.clone()).await?);
    let dir = tempfile::tempdir()?;
    let url = format!("{base}/corpus?run={after}&quality=1");
    let profile = dir.path().join("p");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&profile, &url)).await??;
    assert!(dom.contains("Quality — sample, 2 runs") && dom.contains("label_contradiction"), "{dom}");
    assert!(dom.contains("aria-label=\"rejection rate per hour\"") && dom.matches("<rect").count() >= 1, "{dom}");
    assert!(dom.contains("id=\"quality-audit-days\"") && dom.contains("rejected</td>"), "marks per day:\n{dom}");
    assert!(
        dom.contains("id=\"quality-audit-chart\"") && dom.contains("1 of 1 marks rejected"),
        "audit rejections per day drawn:\n{dom}"
    );
    stop.cancel();
    env.cleanup().await
}

/// A reviewer opens a task in the real browser, types a name and a reason and clicks Reject (a
/// page of the same origin drives the corpus page in a frame, as a person's clicks would): the
/// mark is stored with who and why, the page shows it, and `train export` leaves that answer out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_clicking_reject_in_the_browser_keeps_the_answer_out_of_the_export() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.sampling.max_users = 20;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    env.run_to_completion(run).await?;
    let s = &env.store;
    let done = reasonrec_store::browse::TaskFilter {
        stage: Some(reasonrec_core::Stage::Reasoning),
        state: Some(reasonrec_core::TaskState::Done),
        ..Default::default()
    };
    let tasks = s.browser().tasks(run, &done, None, 500).await?;
    let task = tasks.get(3).ok_or_else(|| anyhow::anyhow!("too few tasks: {}", tasks.len()))?.id;

    // The driver: waits for the task's Reject button in the frame, fills reviewer and reason,
    // clicks, and copies what the page then says of the mark into its own body.
    let driver = format!(
        r##"<!doctype html><iframe id="f" src="/corpus?run={run}#task={task}" width="1200" height="900"></iframe>
<div id="result">waiting</div>
<script>
const f = document.getElementById("f"), out = document.getElementById("result");
function waitFor(find, then, tries) {{
  const found = find();
  if (found) then(found); else if (tries > 0) setTimeout(() => waitFor(find, then, tries - 1), 50);
  else out.textContent = "gave up";
}}
f.addEventListener("load", () => waitFor(() => f.contentDocument.getElementById("reject"), button => {{
  const inputs = f.contentDocument.querySelectorAll("#task input");
  inputs[0].value = "bea"; inputs[1].value = "clicked: argues from a title not in the history";
  button.click();
  waitFor(() => {{ const m = f.contentDocument.getElementById("mark"); return m && m.textContent.startsWith("Marked") ? m : null; }},
          m => {{ out.textContent = "after the click: " + m.textContent; }}, 60);
}}, 60));
</script>"##
    );
    let stop = CancellationToken::new();
    let ready: reasonrec_ops::ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
    let app = reasonrec_coordinator::web::router(s.clone(), Access::Loopback, ready, Arc::new(AtomicBool::new(true)))
        .route("/test/review", axum::routing::get(move || async move { axum::response::Html(driver) }));
    let base = format!("http://{}", reasonrec_ops::serve("127.0.0.1:0", app, stop.clone()).await?);
    let dir = tempfile::tempdir()?;
    let (profile, url) = (dir.path().join("p"), format!("{base}/test/review"));
    let dom = tokio::task::spawn_blocking(move || dump_dom(&profile, &url)).await??;
    assert!(
        dom.contains("after the click: Marked rejected: clicked: argues from a title not in the history by bea"),
        "the page shows the mark it made:\n{dom}"
    );
    let (verdict, reviewer, reason): (String, String, String) = sqlx::query_as(
        "SELECT m.verdict, m.reviewer, m.reason FROM audit_marks m JOIN tasks t ON t.output_key = m.output_key
         WHERE t.id = $1",
    )
    .bind(task)
    .fetch_one(s.pool())
    .await?;
    assert_eq!(
        (verdict.as_str(), reviewer.as_str(), reason.as_str()),
        ("rejected", "bea", "clicked: argues from a title not in the history")
    );
    let prompts = reasonrec_core::PromptLibrary::load(&env.settings.prompts.dir)?;
    let out = tempfile::tempdir()?;
    let opts = reasonrec_trainer::export::ExportOptions::new(out.path());
    let manifest = reasonrec_trainer::export::export_run(s, &prompts, run, &opts, &mut |_| {}).await?;
    assert_eq!(manifest.audit.rejected_excluded, 1);
    let written = std::fs::read_to_string(out.path().join("test.jsonl"))?;
    assert_eq!(written.lines().count(), tasks.len() - 1, "every done reasoning answer but the rejected one");
    assert!(!written.contains(&task.to_string()), "the rejected answer is not exported");
    stop.cancel();
    env.cleanup().await
}
