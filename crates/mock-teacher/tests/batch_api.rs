//! The mock's Batch APIs over real HTTP: OpenAI Files + Batch, Anthropic Message Batches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use reasonrec_mock_teacher::{MockConfig, MockHandle, spawn};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

async fn mock(cfg: MockConfig) -> MockHandle {
    spawn("127.0.0.1:0".parse().unwrap(), cfg).await.unwrap()
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A reasoning prompt of reasonrec's templates, different for each `i`.
fn prompt(i: usize) -> String {
    let outcome = if i.is_multiple_of(2) { "LIKE" } else { "DISLIKE" };
    format!(
        "## Recent history (oldest first)\n1. [Liked] «Heat (1995)» (Action)\n2. [Disliked] «Jumanji (1995)» (Comedy)\n\n\
         ## Target movie\n«Film number {i}» (Crime)\n\n## Known outcome\nThe viewer will {outcome} the target movie.\n"
    )
}

fn chat_body(i: usize, max_tokens: u32) -> Value {
    json!({
        "model": "mock-model",
        "messages": [{"role": "system", "content": "You explain tastes."}, {"role": "user", "content": prompt(i)}],
        "max_tokens": max_tokens,
    })
}

fn jsonl(lines: &[Value]) -> String {
    lines.iter().map(|l| l.to_string() + "\n").collect()
}

fn openai_line(custom_id: &str, body: Value) -> Value {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
}

/// `POST /v1/files` with a hand-made multipart body.
async fn upload(
    c: &reqwest::Client,
    m: &MockHandle,
    filename: &str,
    purpose: &str,
    content: &[u8],
) -> reqwest::Response {
    let boundary = "----mockBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n").as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    c.post(format!("{}/files", m.base_url()))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Uploads `lines` and creates a batch on them; the create call's answer.
async fn openai_batch(c: &reqwest::Client, m: &MockHandle, lines: &[Value]) -> Value {
    let file: Value = upload(c, m, "in.jsonl", "batch", jsonl(lines).as_bytes()).await.json().await.unwrap();
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let resp = c.post(format!("{}/batches", m.base_url())).json(&create).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn get_json(c: &reqwest::Client, url: &str) -> Value {
    let resp = c.get(url).header("x-api-key", "k").header("anthropic-version", "2023-06-01").send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    resp.json().await.unwrap()
}

/// Polls `url` until `done` holds of the answer (at most 10 s); every `field` value seen, in order.
async fn poll(c: &reqwest::Client, url: &str, field: &str, done: &[&str]) -> (Value, Vec<String>) {
    let start = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    loop {
        let b = get_json(c, url).await;
        let status = b[field].as_str().unwrap().to_string();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if done.contains(&status.as_str()) {
            return (b, seen);
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{url} stuck in {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn file_lines(c: &reqwest::Client, m: &MockHandle, id: &Value) -> Vec<Value> {
    let text = c.get(format!("{}/files/{}/content", m.base_url(), id.as_str().unwrap())).send().await.unwrap();
    assert_eq!(text.status(), 200);
    text.text().await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn live_chat(c: &reqwest::Client, m: &MockHandle, body: &Value) -> Value {
    c.post(format!("{}/chat/completions", m.base_url())).json(body).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn openai_batch_lines_are_answered_as_live_calls() {
    let m = mock(MockConfig { record_requests: 100, ..MockConfig::default() }).await;
    let c = client();
    let bodies = [chat_body(0, 1000), chat_body(1, 1000), chat_body(2, 10)];
    let lines: Vec<Value> =
        bodies.iter().enumerate().map(|(i, b)| openai_line(&format!("req-{i}"), b.clone())).collect();

    let file: Value = upload(&c, &m, "in.jsonl", "batch", jsonl(&lines).as_bytes()).await.json().await.unwrap();
    assert!(file["id"].as_str().unwrap().starts_with("file-"));
    assert_eq!((file["object"].as_str(), file["purpose"].as_str()), (Some("file"), Some("batch")));
    assert_eq!(file["bytes"].as_u64(), Some(jsonl(&lines).len() as u64));
    assert_eq!(file["filename"], "in.jsonl");
    let raw = c.get(format!("{}/files/{}/content", m.base_url(), file["id"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(raw.text().await.unwrap(), jsonl(&lines), "the upload comes back byte for byte");

    let create = json!({
        "input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h",
        "metadata": {"client_token": "t-1"},
    });
    let created: Value =
        c.post(format!("{}/batches", m.base_url())).json(&create).send().await.unwrap().json().await.unwrap();
    assert!(created["id"].as_str().unwrap().starts_with("batch_"));
    assert_eq!(created["status"], "validating");
    assert_eq!(created["metadata"], json!({"client_token": "t-1"}));
    let created_at = created["created_at"].as_i64().unwrap();
    assert_eq!(created["expires_at"].as_i64(), Some(created_at + 24 * 3600));

    let url = format!("{}/batches/{}", m.base_url(), created["id"].as_str().unwrap());
    let (batch, _) = poll(&c, &url, "status", &["completed"]).await;
    assert_eq!(batch["request_counts"], json!({"total": 3, "completed": 3, "failed": 0}));
    assert!(batch["error_file_id"].is_null() && batch["errors"].is_null());
    for f in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(batch[f].as_i64().is_some(), "{f}: {batch}");
    }
    assert!(batch["failed_at"].is_null() && batch["cancelled_at"].is_null());
    let out = file_lines(&c, &m, &batch["output_file_id"]).await;
    assert_eq!(out.len(), 3);

    let mut usage = (0, 0);
    for line in &out {
        assert!(line["id"].as_str().unwrap().starts_with("batch_req_"));
        assert!(line["error"].is_null());
        assert_eq!(line["response"]["status_code"], 200);
        assert!(line["response"]["request_id"].as_str().unwrap().starts_with("req_"));
        let i: usize = line["custom_id"].as_str().unwrap().trim_start_matches("req-").parse().unwrap();
        let body = &line["response"]["body"];
        let live = live_chat(&c, &m, &bodies[i]).await;
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "mock-model");
        assert_eq!(body["choices"][0]["message"], live["choices"][0]["message"], "line {i}");
        assert_eq!(body["choices"][0]["finish_reason"], live["choices"][0]["finish_reason"]);
        assert_eq!(body["usage"], live["usage"]);
        usage.0 += body["usage"]["prompt_tokens"].as_u64().unwrap();
        usage.1 += body["usage"]["completion_tokens"].as_u64().unwrap();
    }
    let cut = out.iter().find(|l| l["custom_id"] == "req-2").unwrap();
    assert_eq!(cut["response"]["body"]["choices"][0]["finish_reason"], "length", "max_tokens applies to lines");
    assert_eq!(batch["usage"]["input_tokens"].as_u64(), Some(usage.0));
    assert_eq!(batch["usage"]["output_tokens"].as_u64(), Some(usage.1));
    assert_eq!(batch["usage"]["total_tokens"].as_u64(), Some(usage.0 + usage.1));

    let stats = m.stats();
    assert_eq!((stats.batch_files, stats.batches_created, stats.batch_lines), (1, 1, 3));
    assert_eq!(stats.batch_lines_succeeded, 3);
    assert_eq!(stats.batch_by_kind.values().sum::<u64>(), 3);
    assert_eq!(stats.requests, 3, "batch calls are not live requests");
    let recorded = m.recorded();
    assert_eq!(recorded.len(), 6, "the batch's three lines, then the three live calls");
    let batch_prompts: HashSet<String> = recorded[..3].iter().map(|r| r[1].content.clone()).collect();
    assert_eq!(batch_prompts, (0..3).map(prompt).collect());
}

#[tokio::test]
async fn openai_uploads_must_be_jsonl_for_batch_and_may_be_large() {
    let m = mock(MockConfig::default()).await;
    let c = client();
    let bad = upload(&c, &m, "in.json", "batch", b"{}\n").await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Invalid file format for Batch API. Must be .jsonl");
    assert_eq!(upload(&c, &m, "in.jsonl", "fine-tune", b"{}\n").await.status(), 400);

    // 4,000 lines of ~1 KB: over axum's default 2 MB body limit.
    let pad = "x".repeat(700);
    let lines: Vec<Value> = (0..4000)
        .map(|i| {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": format!("{} {pad}", prompt(i))}]});
            openai_line(&format!("l{i}"), body)
        })
        .collect();
    let content = jsonl(&lines);
    assert!(content.len() > 3_000_000);
    let batch = openai_batch(&c, &m, &lines).await;
    let url = format!("{}/batches/{}", m.base_url(), batch["id"].as_str().unwrap());
    let (batch, _) = poll(&c, &url, "status", &["completed"]).await;
    assert_eq!(batch["request_counts"]["completed"], 4000);
    let out = file_lines(&c, &m, &batch["output_file_id"]).await;
    let ids: HashSet<&str> = out.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4000);
    let order: Vec<&str> = out.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    let input: Vec<String> = (0..4000).map(|i| format!("l{i}")).collect();
    assert_ne!(order, input, "output order is shuffled");
}

#[tokio::test]
async fn openai_lifecycle_runs_through_finalizing() {
    let cfg = MockConfig { batch_turnaround_ms: 600, batch_finalizing_ms: 300, ..MockConfig::default() };
    let m = mock(cfg).await;
    let c = client();
    let lines: Vec<Value> = (0..4).map(|i| openai_line(&format!("r{i}"), chat_body(i, 500))).collect();
    let batch = openai_batch(&c, &m, &lines).await;
    let url = format!("{}/batches/{}", m.base_url(), batch["id"].as_str().unwrap());
    let (batch, seen) = poll(&c, &url, "status", &["completed"]).await;
    assert_eq!(seen, ["in_progress", "finalizing", "completed"]);
    let (created, finalizing, completed) = (
        batch["created_at"].as_i64().unwrap(),
        batch["finalizing_at"].as_i64().unwrap(),
        batch["completed_at"].as_i64().unwrap(),
    );
    assert!(created <= finalizing && finalizing <= completed);
}

#[tokio::test]
async fn openai_expired_and_failed_lines_go_to_the_error_file() {
    let cfg = MockConfig { batch_expire_rate: 0.3, batch_line_error_rate: 0.3, seed: 5, ..MockConfig::default() };
    let m = mock(cfg).await;
    let c = client();
    let mut lines: Vec<Value> = (0..20).map(|i| openai_line(&format!("r{i}"), chat_body(i, 500))).collect();
    lines.push(openai_line("no-messages", json!({"model": "mock-model"})));
    let batch = openai_batch(&c, &m, &lines).await;
    let url = format!("{}/batches/{}", m.base_url(), batch["id"].as_str().unwrap());
    let (batch, _) = poll(&c, &url, "status", &["expired", "completed"]).await;
    assert_eq!(batch["status"], "expired");
    assert!(batch["expired_at"].as_i64().is_some() && batch["completed_at"].is_null());

    let out = file_lines(&c, &m, &batch["output_file_id"]).await;
    let errors = file_lines(&c, &m, &batch["error_file_id"]).await;
    assert_eq!(out.len() + errors.len(), 21);
    let expired = errors.iter().filter(|l| l["error"]["code"] == "batch_expired" && l["response"].is_null()).count();
    let failed = errors.iter().filter(|l| l["response"]["status_code"] == 500).count();
    let refused: Vec<&Value> = errors.iter().filter(|l| l["response"]["status_code"] == 400).collect();
    assert!(expired > 0 && failed > 0 && !out.is_empty(), "{expired} {failed} {}", out.len());
    for l in errors.iter().filter(|l| l["response"]["status_code"] == 500) {
        assert!(l["error"].is_null());
        assert_eq!(l["response"]["body"]["error"]["type"], "server_error");
    }
    let refused_lines = refused.len();
    assert_eq!(refused_lines, 1, "the line without messages (no expiry drawn under this seed)");
    assert_eq!(refused[0]["custom_id"], "no-messages");
    assert!(refused[0]["response"]["body"]["error"]["message"].as_str().unwrap().contains("messages"));
    assert_eq!(expired + failed + refused_lines, errors.len());
    // Lines that never ran are not counted as failed.
    assert_eq!(batch["request_counts"], json!({"total": 21, "completed": out.len(), "failed": failed + refused_lines}));
    let stats = m.stats();
    assert_eq!(stats.batch_lines_expired, expired as u64);
    assert_eq!(stats.batch_lines_errored, (failed + refused_lines) as u64);

    // Every line failing: completed, without an output file.
    let mut cfg = m.config();
    cfg.batch_expire_rate = 0.0;
    cfg.batch_line_error_rate = 1.0;
    m.set_config(cfg).unwrap();
    let batch = openai_batch(&c, &m, &lines[..3]).await;
    let url = format!("{}/batches/{}", m.base_url(), batch["id"].as_str().unwrap());
    let (batch, _) = poll(&c, &url, "status", &["completed"]).await;
    assert!(batch["output_file_id"].is_null());
    assert_eq!(file_lines(&c, &m, &batch["error_file_id"]).await.len(), 3);
    assert_eq!(batch["request_counts"], json!({"total": 3, "completed": 0, "failed": 3}));
}

#[tokio::test]
async fn openai_invalid_files_and_the_token_limit_fail_the_batch() {
    let m = mock(MockConfig::default()).await;
    let c = client();
    let good = openai_line("a", chat_body(0, 100));
    let mut wrong_url = openai_line("b", chat_body(1, 100));
    wrong_url["url"] = json!("/v1/embeddings");
    let content = format!("{good}\nnot json\n{wrong_url}\n{good}\n");
    let file: Value = upload(&c, &m, "in.jsonl", "batch", content.as_bytes()).await.json().await.unwrap();
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let batch: Value =
        c.post(format!("{}/batches", m.base_url())).json(&create).send().await.unwrap().json().await.unwrap();
    assert_eq!(batch["status"], "validating", "validation is reported asynchronously");
    let url = format!("{}/batches/{}", m.base_url(), batch["id"].as_str().unwrap());
    let batch = get_json(&c, &url).await;
    assert_eq!(batch["status"], "failed");
    assert!(batch["failed_at"].as_i64().is_some());
    let codes: Vec<(String, Value)> = batch["errors"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["code"].as_str().unwrap().to_string(), e["line"].clone()))
        .collect();
    assert_eq!(
        codes,
        [
            ("invalid_json_line".to_string(), json!(2)),
            ("url_mismatch".to_string(), json!(3)),
            ("duplicate_custom_id".to_string(), json!(4)),
        ]
    );
    assert!(batch["output_file_id"].is_null() && batch["error_file_id"].is_null());

    // Wrong endpoint or window: refused at once.
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"});
    assert_eq!(c.post(format!("{}/batches", m.base_url())).json(&create).send().await.unwrap().status(), 400);

    // A batch over the enqueued-token limit, while another is still running.
    let mut cfg = m.config();
    cfg.batch_turnaround_ms = 60_000;
    cfg.batch_enqueued_token_limit = 200;
    m.set_config(cfg).unwrap();
    let lines: Vec<Value> = (0..2).map(|i| openai_line(&format!("r{i}"), chat_body(i, 100))).collect();
    let first = openai_batch(&c, &m, &lines).await;
    let second = openai_batch(&c, &m, &lines).await;
    let first = get_json(&c, &format!("{}/batches/{}", m.base_url(), first["id"].as_str().unwrap())).await;
    assert_eq!(first["status"], "in_progress");
    let second = get_json(&c, &format!("{}/batches/{}", m.base_url(), second["id"].as_str().unwrap())).await;
    assert_eq!(second["status"], "failed");
    let error = &second["errors"]["data"][0];
    assert_eq!(error["code"], "token_limit_exceeded");
    assert!(error["line"].is_null());
    assert!(error["message"].as_str().unwrap().starts_with("Enqueued token limit reached for mock-model"));
    assert_eq!(m.stats().batches_failed, 2);
}

#[tokio::test]
async fn openai_cancel_keeps_what_finished_and_lists_newest_first() {
    let m = mock(MockConfig { batch_turnaround_ms: 5_000, ..MockConfig::default() }).await;
    let c = client();
    let lines: Vec<Value> = (0..10).map(|i| openai_line(&format!("r{i}"), chat_body(i, 500))).collect();
    let batch = openai_batch(&c, &m, &lines).await;
    let id = batch["id"].as_str().unwrap().to_string();
    let cancelled: Value =
        c.post(format!("{}/batches/{id}/cancel", m.base_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelling");
    assert!(cancelled["cancelling_at"].as_i64().is_some());
    let url = format!("{}/batches/{id}", m.base_url());
    let (batch, _) = poll(&c, &url, "status", &["cancelled"]).await;
    assert!(batch["cancelled_at"].as_i64().is_some());
    let errors = file_lines(&c, &m, &batch["error_file_id"]).await;
    let out = match batch["output_file_id"].is_null() {
        true => Vec::new(),
        false => file_lines(&c, &m, &batch["output_file_id"]).await,
    };
    assert_eq!(out.len() + errors.len(), 10);
    assert!(errors.iter().all(|l| l["error"]["code"] == "batch_cancelled" && l["response"].is_null()));
    assert!(!errors.is_empty());
    assert_eq!(batch["request_counts"]["completed"], out.len());
    // Cancelled once some lines have finished (request_counts show progress): those are in
    // the output file, the rest cancelled.
    let mut cfg = m.config();
    cfg.batch_turnaround_ms = 4_000;
    m.set_config(cfg).unwrap();
    let lines40: Vec<Value> = (0..40).map(|i| openai_line(&format!("m{i}"), chat_body(i, 500))).collect();
    let mid = openai_batch(&c, &m, &lines40).await;
    let mid_url = format!("{}/batches/{}", m.base_url(), mid["id"].as_str().unwrap());
    let start = Instant::now();
    while get_json(&c, &mid_url).await["request_counts"]["completed"] == 0 {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = c.post(format!("{mid_url}/cancel")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (mid, _) = poll(&c, &mid_url, "status", &["cancelled"]).await;
    let out = file_lines(&c, &m, &mid["output_file_id"]).await;
    let errors = file_lines(&c, &m, &mid["error_file_id"]).await;
    assert!(!out.is_empty() && !errors.is_empty(), "{} {}", out.len(), errors.len());
    assert_eq!(out.len() + errors.len(), 40);
    assert!(out.iter().all(|l| l["response"]["status_code"] == 200));
    assert_eq!(mid["request_counts"], json!({"total": 40, "completed": out.len(), "failed": 0}));

    // A second cancel changes nothing; a completed batch cannot be cancelled.
    let again: Value =
        c.post(format!("{}/batches/{id}/cancel", m.base_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["status"], "cancelled");
    assert_eq!(m.stats().batches_cancelled, 2);
    let mut cfg = m.config();
    cfg.batch_turnaround_ms = 0;
    m.set_config(cfg).unwrap();
    let done = openai_batch(&c, &m, &lines[..1]).await;
    let done_id = done["id"].as_str().unwrap().to_string();
    let resp = c.post(format!("{}/batches/{done_id}/cancel", m.base_url())).send().await.unwrap();
    assert_eq!(resp.status(), 409);

    let third = openai_batch(&c, &m, &lines[..1]).await;
    let third_id = third["id"].as_str().unwrap();
    let list = get_json(&c, &format!("{}/batches?limit=2", m.base_url())).await;
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [third_id, done_id.as_str()]);
    assert_eq!(list["object"], "list");
    assert_eq!((list["first_id"].as_str(), list["last_id"].as_str()), (Some(third_id), Some(done_id.as_str())));
    assert_eq!(list["has_more"], true);
    let rest = get_json(&c, &format!("{}/batches?limit=2&after={done_id}", m.base_url())).await;
    assert_eq!(rest["data"][0]["id"], mid["id"]);
    assert_eq!(rest["data"][1]["id"], id);
    assert_eq!(rest["has_more"], false);
}

#[tokio::test]
async fn openai_batch_routes_check_the_api_key() {
    let m = mock(MockConfig { api_key: Some("sk-right".into()), ..MockConfig::default() }).await;
    let c = client();
    let resp = c.get(format!("{}/batches", m.base_url())).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c.get(format!("{}/batches", m.base_url())).bearer_auth("sk-right").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(m.stats().unauthorized, 1);
}

// ---- Anthropic ----

fn messages_params(i: usize, max_tokens: u32) -> Value {
    json!({
        "model": "claude-mock",
        "max_tokens": max_tokens,
        "system": "You explain tastes.",
        "messages": [{"role": "user", "content": prompt(i)}],
    })
}

async fn anthropic(
    c: &reqwest::Client,
    m: &MockHandle,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> reqwest::Response {
    let mut req = c
        .request(method, format!("{}/messages/batches{path}", m.base_url()))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01");
    if let Some(b) = body {
        req = req.json(b);
    }
    req.send().await.unwrap()
}

async fn create_anthropic(c: &reqwest::Client, m: &MockHandle, requests: Vec<Value>) -> Value {
    let resp = anthropic(c, m, reqwest::Method::POST, "", Some(&json!({"requests": requests}))).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn get_results(c: &reqwest::Client, m: &MockHandle, id: &str) -> Vec<Value> {
    let resp = anthropic(c, m, reqwest::Method::GET, &format!("/{id}/results"), None).await;
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn anthropic_batch_results_have_every_result_type() {
    let cfg = MockConfig { batch_expire_rate: 0.25, batch_line_error_rate: 0.25, seed: 3, ..MockConfig::default() };
    let m = mock(cfg).await;
    let c = client();
    let mut requests: Vec<Value> =
        (0..16).map(|i| json!({"custom_id": format!("req_{i}"), "params": messages_params(i, 1000)})).collect();
    let mut no_max_tokens = messages_params(0, 10);
    no_max_tokens.as_object_mut().unwrap().remove("max_tokens");
    requests.push(json!({"custom_id": "no-max-tokens", "params": no_max_tokens}));
    let mut system_role = messages_params(1, 100);
    system_role["messages"] = json!([{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]);
    requests.push(json!({"custom_id": "system-role", "params": system_role}));

    let created = create_anthropic(&c, &m, requests).await;
    assert!(created["id"].as_str().unwrap().starts_with("msgbatch_"));
    assert_eq!(created["type"], "message_batch");
    assert_eq!(created["processing_status"], "in_progress");
    assert_eq!(
        created["request_counts"],
        json!({"processing": 18, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0})
    );
    assert!(created["results_url"].is_null() && created["ended_at"].is_null());
    let created_at = chrono::DateTime::parse_from_rfc3339(created["created_at"].as_str().unwrap()).unwrap();
    let expires_at = chrono::DateTime::parse_from_rfc3339(created["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires_at - created_at, chrono::TimeDelta::hours(24));

    let id = created["id"].as_str().unwrap();
    let url = format!("{}/messages/batches/{id}", m.base_url());
    let (batch, _) = poll(&c, &url, "processing_status", &["ended"]).await;
    assert!(batch["ended_at"].is_string());
    assert_eq!(batch["results_url"].as_str().unwrap(), format!("{url}/results"));
    let results = get_results(&c, &m, id).await;
    assert_eq!(results.len(), 18);
    let mut by_type: HashMap<String, usize> = HashMap::new();
    for r in &results {
        *by_type.entry(r["result"]["type"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let counts = &batch["request_counts"];
    for t in ["succeeded", "errored", "expired"] {
        assert!(by_type.get(t).copied().unwrap_or(0) > 0, "{t}: {by_type:?}");
        assert_eq!(counts[t].as_u64(), Some(by_type[t] as u64), "{t}");
    }
    assert_eq!((counts["processing"].as_u64(), counts["canceled"].as_u64()), (Some(0), Some(0)));

    let find = |id: &str| results.iter().find(|r| r["custom_id"] == id).unwrap();
    // Malformed params are accepted at creation and come back errored (these two did not
    // draw an expiry under this seed).
    for bad in ["no-max-tokens", "system-role"] {
        let r = &find(bad)["result"];
        assert_eq!(r["type"], "errored", "{bad}: {r}");
        assert_eq!(r["error"]["type"], "error");
        assert_eq!(r["error"]["error"]["type"], "invalid_request_error", "{bad}: {r}");
    }
    assert!(
        results.iter().any(|r| r["result"]["error"]["error"]["type"] == "api_error"),
        "injected line errors are api_error"
    );
    for r in results.iter().filter(|r| r["result"]["type"] == "succeeded") {
        let i: usize = r["custom_id"].as_str().unwrap().trim_start_matches("req_").parse().unwrap();
        let live: Value = c
            .post(format!("{}/messages", m.base_url()))
            .header("x-api-key", "k")
            .header("anthropic-version", "2023-06-01")
            .json(&messages_params(i, 1000))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let message = &r["result"]["message"];
        assert_eq!(message["type"], "message");
        assert_eq!(message["content"], live["content"], "req_{i}");
        assert_eq!(message["usage"], live["usage"]);
        assert_eq!(message["stop_reason"], live["stop_reason"]);
    }
    let order: Vec<&str> = results.iter().map(|r| r["custom_id"].as_str().unwrap()).collect();
    assert_ne!(order[..16], (0..16).map(|i| format!("req_{i}")).collect::<Vec<_>>()[..], "shuffled");

    // A cancelled batch: what finished by the cancel succeeded, the rest is canceled.
    let mut cfg = m.config();
    cfg.batch_expire_rate = 0.0;
    cfg.batch_line_error_rate = 0.0;
    cfg.batch_turnaround_ms = 5_000;
    m.set_config(cfg).unwrap();
    let requests = (0..6).map(|i| json!({"custom_id": format!("c{i}"), "params": messages_params(i, 100)})).collect();
    let created = create_anthropic(&c, &m, requests).await;
    let id = created["id"].as_str().unwrap();
    let resp = anthropic(&c, &m, reqwest::Method::GET, &format!("/{id}/results"), None).await;
    assert_eq!(resp.status(), 400, "no results before the batch ends");
    let cancel: Value =
        anthropic(&c, &m, reqwest::Method::POST, &format!("/{id}/cancel"), None).await.json().await.unwrap();
    assert_eq!(cancel["processing_status"], "canceling");
    assert!(cancel["cancel_initiated_at"].is_string());
    let url = format!("{}/messages/batches/{id}", m.base_url());
    let (batch, _) = poll(&c, &url, "processing_status", &["ended"]).await;
    let counts = &batch["request_counts"];
    let (succeeded, canceled) = (counts["succeeded"].as_u64().unwrap(), counts["canceled"].as_u64().unwrap());
    assert_eq!(succeeded + canceled, 6);
    assert!(canceled > 0);
    let results = get_results(&c, &m, id).await;
    assert_eq!(results.iter().filter(|r| r["result"] == json!({"type": "canceled"})).count() as u64, canceled);
    assert_eq!(m.stats().batches_cancelled, 1);
}

#[tokio::test]
async fn anthropic_custom_ids_are_checked_at_creation() {
    let m = mock(MockConfig::default()).await;
    let c = client();
    let params = messages_params(0, 100);
    for requests in [
        json!([{"custom_id": "has space", "params": params}]),
        json!([{"custom_id": "x".repeat(65), "params": params}]),
        json!([{"custom_id": "", "params": params}]),
        json!([{"custom_id": "a", "params": params}, {"custom_id": "a", "params": params}]),
        json!([]),
    ] {
        let resp = anthropic(&c, &m, reqwest::Method::POST, "", Some(&json!({"requests": requests}))).await;
        assert_eq!(resp.status(), 400, "{requests}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    let ok = json!([{"custom_id": format!("A-z_0{}", "9".repeat(59)), "params": params}]);
    assert_eq!(anthropic(&c, &m, reqwest::Method::POST, "", Some(&json!({"requests": ok}))).await.status(), 200);
    assert_eq!(m.stats().batches_created, 1);

    // Same credential and version checks as /v1/messages.
    let resp = c.get(format!("{}/messages/batches", m.base_url())).header("x-api-key", "k").send().await.unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn anthropic_lists_newest_first_and_a_lost_create_response_leaves_a_listed_batch() {
    let m = mock(MockConfig::default()).await;
    let c = client();
    let one = |id: &str| vec![json!({"custom_id": id, "params": messages_params(0, 100)})];
    let a = create_anthropic(&c, &m, one("a")).await["id"].as_str().unwrap().to_string();
    let b = create_anthropic(&c, &m, one("b")).await["id"].as_str().unwrap().to_string();

    // The next create's response is lost: 500, yet the batch exists.
    let resp = c
        .put(format!("http://{}/config", m.addr))
        .json(&MockConfig { batch_lose_create_response: 1, ..MockConfig::default() })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let lost = anthropic(&c, &m, reqwest::Method::POST, "", Some(&json!({"requests": one("lost")}))).await;
    assert_eq!(lost.status(), 500);
    let body: Value = lost.json().await.unwrap();
    assert_eq!(body["error"]["type"], "api_error");
    assert_eq!(m.config().batch_lose_create_response, 0, "counted down");
    let stats = m.stats();
    assert_eq!((stats.batches_created, stats.batch_create_responses_lost), (3, 1));

    let list = get_json(&c, &format!("{}/messages/batches?limit=2", m.base_url())).await;
    let ids: Vec<String> =
        list["data"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] != a && ids[0] != b, "the lost batch is listed first");
    assert_eq!(ids[1], b);
    assert_eq!(list["has_more"], true);
    assert_eq!(list["first_id"].as_str(), Some(ids[0].as_str()));
    assert_eq!(list["last_id"].as_str(), Some(b.as_str()));
    let lost_results = get_results(&c, &m, &ids[0]).await;
    assert_eq!(lost_results[0]["custom_id"], "lost", "the lost batch ran");
    let rest = get_json(&c, &format!("{}/messages/batches?limit=2&after_id={b}", m.base_url())).await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["id"].as_str(), Some(a.as_str()));
    assert_eq!(rest["has_more"], false);

    let again = anthropic(&c, &m, reqwest::Method::POST, "", Some(&json!({"requests": one("next")}))).await;
    assert_eq!(again.status(), 200, "only the next N responses are lost");

    // The OpenAI create loses its response the same way.
    m.set_config(MockConfig { batch_lose_create_response: 1, ..MockConfig::default() }).unwrap();
    let file: Value = upload(&c, &m, "in.jsonl", "batch", jsonl(&[openai_line("x", chat_body(0, 10))]).as_bytes())
        .await
        .json()
        .await
        .unwrap();
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let resp = c.post(format!("{}/batches", m.base_url())).json(&create).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    let list = get_json(&c, &format!("{}/batches", m.base_url())).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["input_file_id"], file["id"]);
}

#[tokio::test]
async fn overloaded_create_and_retrieve_create_nothing() {
    let m = mock(MockConfig { batch_overloaded_rate: 1.0, ..MockConfig::default() }).await;
    let c = client();
    let requests = json!({"requests": [{"custom_id": "a", "params": messages_params(0, 100)}]});
    let resp = anthropic(&c, &m, reqwest::Method::POST, "", Some(&requests)).await;
    assert_eq!(resp.status(), 529);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error");
    let file: Value = upload(&c, &m, "in.jsonl", "batch", jsonl(&[openai_line("x", chat_body(0, 10))]).as_bytes())
        .await
        .json()
        .await
        .unwrap();
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let resp = c.post(format!("{}/batches", m.base_url())).json(&create).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    let stats = m.stats();
    assert_eq!((stats.batches_created, stats.batch_overloaded), (0, 2));
    let list = get_json(&c, &format!("{}/messages/batches", m.base_url())).await;
    assert_eq!(list["data"], json!([]));
}
