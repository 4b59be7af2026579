//! OpenAI's Files and Batch API for `/v1/chat/completions` lines. Timestamps are Unix seconds.
//!
//! A batch answers its create call `validating`; the input file is checked at creation and an
//! invalid one (bad JSON line, missing field, `url_mismatch`, `duplicate_custom_id`,
//! `model_mismatch`, `empty_file`, more than 50,000 lines) or one over
//! `batch_enqueued_token_limit` makes the batch `failed` from its next read on. A valid batch is
//! `in_progress` for `batch_turnaround_ms`, then `finalizing` for `batch_finalizing_ms`, then
//! `completed`; `expired` at the end of the turnaround if a line expired; after a cancel,
//! `cancelling` for `batch_finalizing_ms`, then `cancelled`.

use super::{Done, End, Phase, Plan, Shown, Store, WINDOW};
use super::{
    batch_seed, count_repeats, enter, list_limit, lose_create_response, multipart, new_id, overloaded, page, poisoned,
};
use crate::server::{AppState, Asked, Wire, openai_error_body};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use reasonrec_teacher::protocol::{ChatCompletionRequest, estimate_prompt_tokens};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

const WIRE: Wire = Wire::OpenAi;
/// The one endpoint the mock batches.
const ENDPOINT: &str = "/v1/chat/completions";
const MAX_LINES: usize = 50_000;
/// Validation errors kept of one input file.
const MAX_ERRORS: usize = 1000;

/// An uploaded file, or a batch's output or error file.
pub(in crate::batch) struct File {
    id: String,
    filename: String,
    purpose: &'static str,
    created_at: i64,
    data: Bytes,
}

impl File {
    fn new(filename: String, purpose: &'static str, data: Bytes) -> Self {
        Self { id: new_id("file-"), filename, purpose, created_at: Utc::now().timestamp(), data }
    }

    fn object(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.data.len(),
            "created_at": self.created_at,
            "expires_at": self.created_at + 30 * 24 * 3600,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": null,
        })
    }
}

/// One OpenAI batch.
pub(in crate::batch) struct Batch {
    id: String,
    input_file_id: String,
    completion_window: String,
    metadata: Value,
    model: String,
    /// `errors.data` of a batch that failed validation (empty: valid).
    errors: Vec<Value>,
    /// Estimated prompt tokens of its lines, against `batch_enqueued_token_limit`.
    enqueued_tokens: u64,
    plan: Plan,
    results: Option<Results>,
}

/// What an ended batch produced.
struct Results {
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    completed: u64,
    failed: u64,
    input_tokens: u64,
    output_tokens: u64,
}

fn not_found(what: &str, id: &str) -> Response {
    WIRE.error(StatusCode::NOT_FOUND, "invalid_request_error", &format!("No {what} found with id '{id}'."))
}

fn bad(message: &str) -> Response {
    WIRE.error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

fn ts(t: DateTime<Utc>) -> Value {
    Value::from(t.timestamp())
}

fn line_error(code: &str, message: &str, line: Option<usize>) -> Value {
    json!({"code": code, "message": message, "param": null, "line": line})
}

/// `POST /v1/files`: a `multipart/form-data` upload with `purpose=batch` and a `.jsonl` file.
pub(in crate::batch) async fn upload(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(resp) = enter(&state, WIRE, &headers) {
        return *resp;
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(boundary) = multipart::boundary(content_type) else {
        return bad("Content-Type must be multipart/form-data with a boundary.");
    };
    let parts = match multipart::parse(&body, &boundary) {
        Ok(p) => p,
        Err(e) => return bad(&e),
    };
    match parts.iter().find(|p| p.name == "purpose").map(|p| String::from_utf8_lossy(p.data)) {
        Some(p) if p.trim() == "batch" => {}
        Some(p) => return bad(&format!("Invalid value for 'purpose': '{}'; the mock accepts only 'batch'.", p.trim())),
        None => return bad("Missing required parameter: 'purpose'."),
    }
    let Some(part) = parts.iter().find(|p| p.name == "file") else {
        return bad("Missing required parameter: 'file'.");
    };
    let filename = part.filename.clone().unwrap_or_default();
    if !filename.ends_with(".jsonl") {
        return bad("Invalid file format for Batch API. Must be .jsonl");
    }
    let file = File::new(filename, "batch", body.slice_ref(part.data));
    let object = file.object();
    let Ok(mut store) = state.batches.lock() else {
        return poisoned(WIRE);
    };
    store.files.insert(file.id.clone(), file);
    drop(store);
    state.stats(|s| s.batch_files += 1);
    axum::Json(object).into_response()
}

/// The answer `f` gives about stored file `id`, after the request's checks (a 404 naming the
/// file when there is none).
fn with_file(state: &AppState, headers: &HeaderMap, id: &str, f: impl FnOnce(&File) -> Response) -> Response {
    if let Err(resp) = enter(state, WIRE, headers) {
        return *resp;
    }
    let Ok(store) = state.batches.lock() else {
        return poisoned(WIRE);
    };
    match store.files.get(id) {
        Some(file) => f(file),
        None => not_found("file", id),
    }
}

/// `GET /v1/files/{id}`.
pub(in crate::batch) async fn file(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    with_file(&state, &headers, &id, |f| axum::Json(f.object()).into_response())
}

/// `GET /v1/files/{id}/content`: the file's bytes.
pub(in crate::batch) async fn file_content(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    with_file(&state, &headers, &id, |f| {
        ([(header::CONTENT_TYPE, "application/octet-stream")], f.data.clone()).into_response()
    })
}

#[derive(Deserialize)]
struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, Value>>,
}

/// The lines of an input file, and what is wrong with it.
struct Checked {
    requests: Vec<(String, Result<Asked, String>)>,
    errors: Vec<Value>,
    model: Option<String>,
    tokens: u64,
}

/// Checks an input file's lines as OpenAI's validation step does; a line whose body is not a
/// chat-completions request is kept and answered 400 when it runs.
fn check_file(data: &[u8]) -> Checked {
    fn error(c: &mut Checked, code: &str, message: &str, line: Option<usize>) {
        if c.errors.len() < MAX_ERRORS {
            c.errors.push(line_error(code, message, line));
        }
    }
    let mut c = Checked { requests: Vec::new(), errors: Vec::new(), model: None, tokens: 0 };
    let Ok(text) = std::str::from_utf8(data) else {
        error(&mut c, "invalid_json_line", "The input file is not UTF-8 text.", None);
        return c;
    };
    let mut seen = HashSet::new();
    let mut count = 0usize;
    for (i, raw) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let n = Some(i + 1);
        count += 1;
        let line: Value = match serde_json::from_str(raw) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                error(&mut c, "invalid_json_line", &format!("Line {} is not a valid JSON object.", i + 1), n);
                continue;
            }
        };
        let Some(custom_id) = line.get("custom_id").and_then(Value::as_str) else {
            error(&mut c, "missing_required_parameter", "Missing required parameter: 'custom_id'.", n);
            continue;
        };
        if line.get("method").and_then(Value::as_str) != Some("POST") {
            error(&mut c, "invalid_method", "The method of a batch request must be 'POST'.", n);
        }
        if line.get("url").and_then(Value::as_str) != Some(ENDPOINT) {
            let message = "The URL provided for this request does not match the batch endpoint.";
            error(&mut c, "url_mismatch", message, n);
        }
        if !seen.insert(custom_id.to_string()) {
            let message = "The custom_id for this request is a duplicate of another request.";
            error(&mut c, "duplicate_custom_id", message, n);
        }
        let Some(body) = line.get("body").filter(|b| b.is_object()) else {
            error(&mut c, "missing_required_parameter", "Missing required parameter: 'body'.", n);
            continue;
        };
        let model = body.get("model").and_then(Value::as_str).unwrap_or_default();
        match &c.model {
            None => c.model = Some(model.to_string()),
            Some(first) if first != model => {
                let message = format!("The model '{model}' differs from '{first}'; a batch uses one model.");
                error(&mut c, "model_mismatch", &message, n);
            }
            Some(_) => {}
        }
        let request = ChatCompletionRequest::deserialize(body)
            .map_err(|e| format!("invalid body: {e}"))
            .and_then(Asked::from_openai);
        c.tokens += request.as_ref().map_or(0, |a| u64::from(estimate_prompt_tokens(&a.messages)));
        c.requests.push((custom_id.to_string(), request));
    }
    if count == 0 {
        error(&mut c, "empty_file", "The batch input file is empty.", None);
    }
    if count > MAX_LINES {
        let message = format!("The batch input file has {count} requests; a batch holds at most {MAX_LINES}.");
        error(&mut c, "too_many_tasks", &message, None);
    }
    c
}

/// `POST /v1/batches`.
pub(in crate::batch) async fn create(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(resp) = enter(&state, WIRE, &headers) {
        return *resp;
    }
    let cfg = state.config();
    if let Some(resp) = overloaded(&state, WIRE, &cfg) {
        return resp;
    }
    let req: CreateBatch = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(&format!("invalid body: {e}")),
    };
    if req.endpoint != ENDPOINT {
        return bad(&format!("Invalid value for 'endpoint': '{}'; the mock batches only '{ENDPOINT}'.", req.endpoint));
    }
    if req.completion_window != "24h" {
        return bad(&format!(
            "Invalid value for 'completion_window': '{}'; only '24h' is supported.",
            req.completion_window
        ));
    }
    let Ok(mut store) = state.batches.lock() else {
        return poisoned(WIRE);
    };
    let Some(file) = store.files.get(&req.input_file_id).filter(|f| f.purpose == "batch") else {
        return bad(&format!("Invalid 'input_file_id': no uploaded batch file with id '{}'.", req.input_file_id));
    };
    let mut checked = check_file(&file.data);
    let model = checked.model.clone().unwrap_or_else(|| cfg.model.clone());
    let now = Utc::now();
    let limit = cfg.batch_enqueued_token_limit;
    if checked.errors.is_empty() && limit > 0 {
        let enqueued: u64 = store
            .openai
            .iter()
            .filter(|b| b.errors.is_empty() && b.model == model && !matches!(b.plan.phase(now), Phase::Ended(..)))
            .map(|b| b.enqueued_tokens)
            .sum();
        if enqueued + checked.tokens > limit {
            let message = format!(
                "Enqueued token limit reached for {model} in organization org-mock. Limit: {limit} enqueued tokens. \
                 Please try again once some in_progress batches have been completed."
            );
            checked.errors.push(line_error("token_limit_exceeded", &message, None));
        }
    }
    let failed = !checked.errors.is_empty();
    let repeated = store.note_custom_ids(checked.requests.iter().map(|(c, _)| c.as_str()));
    let lines = if failed { Vec::new() } else { std::mem::take(&mut checked.requests) };
    let accepted = lines.len() as u64;
    let batch = Batch {
        id: new_id("batch_"),
        input_file_id: req.input_file_id,
        completion_window: req.completion_window,
        metadata: req.metadata.map_or(Value::Null, Value::Object),
        model,
        errors: checked.errors,
        enqueued_tokens: checked.tokens,
        plan: Plan::new(cfg, WIRE, batch_seed(&state), lines),
        results: None,
    };
    let object = batch.object(now, Shown::Created);
    store.openai.push(batch);
    drop(store);
    state.stats(|s| {
        s.batches_created += 1;
        s.batches_failed += u64::from(failed);
        s.batch_lines += accepted;
    });
    count_repeats(&state, repeated);
    match lose_create_response(&state, WIRE) {
        Some(resp) => resp,
        None => axum::Json(object).into_response(),
    }
}

/// `GET /v1/batches/{id}`.
pub(in crate::batch) async fn retrieve(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(resp) = enter(&state, WIRE, &headers) {
        return *resp;
    }
    if let Some(resp) = overloaded(&state, WIRE, &state.config()) {
        return resp;
    }
    let Ok(mut store) = state.batches.lock() else {
        return poisoned(WIRE);
    };
    let Store { files, openai, .. } = &mut *store;
    let Some(batch) = openai.iter_mut().find(|b| b.id == id) else {
        return not_found("batch", &id);
    };
    let now = Utc::now();
    batch.settle(files, &state, now);
    axum::Json(batch.object(now, Shown::AsItStands)).into_response()
}

/// `POST /v1/batches/{id}/cancel`: `cancelling`, then `cancelled` with the lines finished by
/// now in the output file and the others `batch_cancelled` in the error file. A batch already
/// completed, expired or failed answers 409.
pub(in crate::batch) async fn cancel(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(resp) = enter(&state, WIRE, &headers) {
        return *resp;
    }
    let Ok(mut store) = state.batches.lock() else {
        return poisoned(WIRE);
    };
    let Store { files, openai, .. } = &mut *store;
    let Some(batch) = openai.iter_mut().find(|b| b.id == id) else {
        return not_found("batch", &id);
    };
    let now = Utc::now();
    batch.settle(files, &state, now);
    let status = batch.status(now);
    if matches!(status, "failed" | "completed" | "expired") {
        let message = format!("Cannot cancel a batch with status '{status}'.");
        return WIRE.error(StatusCode::CONFLICT, "invalid_request_error", &message);
    }
    let cancelled = batch.plan.cancel(now);
    if cancelled {
        state.stats(|s| s.batches_cancelled += 1);
        batch.settle(files, &state, now);
    }
    let shown = if cancelled { Shown::Cancelling } else { Shown::AsItStands };
    axum::Json(batch.object(now, shown)).into_response()
}

/// `GET /v1/batches?limit=&after=`: newest first.
pub(in crate::batch) async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(resp) = enter(&state, WIRE, &headers) {
        return *resp;
    }
    let limit = match list_limit(&query, 100) {
        Ok(n) => n,
        Err(e) => return bad(&e),
    };
    let Ok(mut store) = state.batches.lock() else {
        return poisoned(WIRE);
    };
    let Store { files, openai, .. } = &mut *store;
    let now = Utc::now();
    for batch in openai.iter_mut() {
        batch.settle(files, &state, now);
    }
    let ids: Vec<&str> = openai.iter().map(|b| b.id.as_str()).collect();
    let (indices, has_more) = page(&ids, limit, query.get("after").map(String::as_str), None);
    let data: Vec<Value> = indices.iter().map(|&i| openai[i].object(now, Shown::AsItStands)).collect();
    axum::Json(json!({
        "object": "list",
        "first_id": data.first().map(|b| b["id"].clone()),
        "last_id": data.last().map(|b| b["id"].clone()),
        "data": data,
        "has_more": has_more,
    }))
    .into_response()
}

impl Batch {
    fn status(&self, now: DateTime<Utc>) -> &'static str {
        if !self.errors.is_empty() {
            return "failed";
        }
        match self.plan.phase(now) {
            Phase::Running => "in_progress",
            Phase::Finalizing(_) => "finalizing",
            Phase::Cancelling(_) => "cancelling",
            Phase::Ended(_, End::Completed) => "completed",
            Phase::Ended(_, End::Expired) => "expired",
            Phase::Ended(_, End::Cancelled) => "cancelled",
        }
    }

    /// Makes the results of a batch that has ended by `now` (once): output and error files,
    /// counts and usage.
    fn settle(&mut self, files: &mut HashMap<String, File>, state: &AppState, now: DateTime<Utc>) {
        if self.results.is_some() || !self.errors.is_empty() || !matches!(self.plan.phase(now), Phase::Ended(..)) {
            return;
        }
        let (mut output, mut errors) = (Vec::new(), Vec::new());
        let mut r = Results {
            output_file_id: None,
            error_file_id: None,
            completed: 0,
            failed: 0,
            input_tokens: 0,
            output_tokens: 0,
        };
        let cfg = &self.plan.cfg;
        for (line, done) in self.plan.finish(state) {
            let http = |status: StatusCode, body: Value| json!({"status_code": status.as_u16(), "request_id": new_id("req_"), "body": body});
            let (target, response, error) = match done {
                Done::Answered(reply, asked) => {
                    let body = reply.openai(cfg, asked);
                    if let Some(u) = &body.usage {
                        r.input_tokens += u64::from(u.prompt_tokens);
                        r.output_tokens += u64::from(u.completion_tokens);
                    }
                    r.completed += 1;
                    (&mut output, http(StatusCode::OK, json!(body)), Value::Null)
                }
                Done::Refused(message) => {
                    r.failed += 1;
                    let status = StatusCode::BAD_REQUEST;
                    (
                        &mut errors,
                        http(status, openai_error_body(status, "invalid_request_error", &message)),
                        Value::Null,
                    )
                }
                Done::Failed => {
                    r.failed += 1;
                    let status = StatusCode::INTERNAL_SERVER_ERROR;
                    let message = "The server had an error while processing your request.";
                    (&mut errors, http(status, openai_error_body(status, "server_error", message)), Value::Null)
                }
                Done::Expired => {
                    let message = "This request could not be executed before the completion window expired.";
                    (&mut errors, Value::Null, json!({"code": "batch_expired", "message": message}))
                }
                Done::Cancelled => {
                    let message = "This request was cancelled before it ran.";
                    (&mut errors, Value::Null, json!({"code": "batch_cancelled", "message": message}))
                }
            };
            let out =
                json!({"id": new_id("batch_req_"), "custom_id": line.custom_id, "response": response, "error": error});
            target.extend_from_slice(out.to_string().as_bytes());
            target.push(b'\n');
        }
        for (data, kind, slot) in [(output, "output", &mut r.output_file_id), (errors, "error", &mut r.error_file_id)] {
            if !data.is_empty() {
                let file = File::new(format!("{}_{kind}.jsonl", self.id), "batch_output", Bytes::from(data));
                *slot = Some(file.id.clone());
                files.insert(file.id.clone(), file);
            }
        }
        self.results = Some(r);
    }

    fn object(&self, now: DateTime<Utc>, shown: Shown) -> Value {
        let plan = &self.plan;
        let status = self.status(now);
        let mut o = json!({
            "id": self.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "model": self.model,
            "errors": null,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": status,
            "output_file_id": self.results.as_ref().and_then(|r| r.output_file_id.clone()),
            "error_file_id": self.results.as_ref().and_then(|r| r.error_file_id.clone()),
            "created_at": ts(plan.created),
            "in_progress_at": null,
            "expires_at": ts(plan.created + WINDOW),
            "finalizing_at": null,
            "completed_at": null,
            "failed_at": null,
            "expired_at": null,
            "cancelling_at": null,
            "cancelled_at": null,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": self.metadata,
            "usage": usage(self.results.as_ref()),
        });
        if shown == Shown::Created {
            o["status"] = "validating".into();
            return o;
        }
        if !self.errors.is_empty() {
            o["errors"] = json!({"object": "list", "data": self.errors});
            o["failed_at"] = ts(plan.created);
            return o;
        }
        o["in_progress_at"] = ts(plan.created);
        let (completed, failed) = match &self.results {
            Some(r) => (r.completed, r.failed),
            None => plan.progress(now),
        };
        o["request_counts"] = json!({"total": plan.lines.len(), "completed": completed, "failed": failed});
        let run_end = plan.run_end();
        if let Some(at) = plan.cancel_at {
            o["cancelling_at"] = ts(at);
        }
        if plan.cancel_at.is_none_or(|at| at >= run_end) && status != "expired" && now >= run_end {
            o["finalizing_at"] = ts(run_end);
        }
        match plan.phase(now) {
            Phase::Ended(at, End::Completed) => o["completed_at"] = ts(at),
            Phase::Ended(at, End::Expired) => o["expired_at"] = ts(at),
            Phase::Ended(at, End::Cancelled) => o["cancelled_at"] = ts(at),
            _ => {}
        }
        if shown == Shown::Cancelling {
            o["status"] = "cancelling".into();
            o["cancelled_at"] = Value::Null;
            o["output_file_id"] = Value::Null;
            o["error_file_id"] = Value::Null;
        }
        o
    }
}

/// A batch's `usage`: the sum of its answered lines (zero until it ends).
fn usage(results: Option<&Results>) -> Value {
    let (input, output) = results.map_or((0, 0), |r| (r.input_tokens, r.output_tokens));
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}
