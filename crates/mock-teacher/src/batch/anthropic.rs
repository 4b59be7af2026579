//! Anthropic's Message Batches. Timestamps are RFC 3339.
//!
//! `custom_id`s are checked at creation (400); `params` only when the line runs, as Anthropic
//! does: a malformed request comes back `errored` with `invalid_request_error`. A batch is
//! `in_progress` for `batch_turnaround_ms`, then `ended`; after a cancel, `canceling` for
//! `batch_finalizing_ms`, then `ended` with the lines finished by the cancel `succeeded` (or
//! `errored`) and the rest `canceled`. `request_counts` other than `processing` stay 0 until the
//! batch has ended; results are then served, shuffled, until the batch is deleted.

use super::{Done, Phase, Plan, Shown, Store};
use super::{batch_seed, count_repeats, enter, list_limit, lose_create_response, new_id, overloaded, page, poisoned};
use crate::server::{AppState, Asked, Wire};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use reasonrec_teacher::anthropic::{MessagesRequest, error_body};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

const WIRE: Wire = Wire::Anthropic;
const MAX_REQUESTS: usize = 100_000;

/// One Anthropic batch.
pub(in crate::batch) struct Batch {
    id: String,
    plan: Plan,
    results: Option<Results>,
}

/// What an ended batch produced.
struct Results {
    jsonl: Bytes,
    succeeded: u64,
    errored: u64,
    canceled: u64,
    expired: u64,
}

fn bad(message: &str) -> Response {
    WIRE.error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

fn not_found(id: &str) -> Response {
    WIRE.error(StatusCode::NOT_FOUND, "not_found_error", &format!("No message batch with id '{id}'."))
}

fn rfc3339(t: DateTime<Utc>) -> Value {
    Value::from(t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// `^[a-zA-Z0-9_-]{1,64}$`
fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A request's `params` as the line runs them, or the `invalid_request_error` it gets.
fn params(params: &Value) -> Result<Asked, String> {
    if params.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err("stream: streaming is not supported in message batches".into());
    }
    let req = MessagesRequest::deserialize(params).map_err(|e| format!("params: {e}"))?;
    if req.max_tokens == 0 {
        return Err("max_tokens: must be greater than or equal to 1".into());
    }
    Asked::from_anthropic(&req)
}

/// Where results are served, on the host the client called.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string);
    format!("http://{}", host.unwrap_or_else(|| state.addr.to_string()))
}

/// `POST /v1/messages/batches` `{"requests":[{"custom_id","params"}]}`.
pub(in crate::batch) async fn create(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(resp) = enter(&state, WIRE, &headers) {
        return *resp;
    }
    let cfg = state.config();
    if let Some(resp) = overloaded(&state, WIRE, &cfg) {
        return resp;
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(&format!("invalid body: {e}")),
    };
    let Some(requests) = req.get("requests").and_then(Value::as_array) else {
        return bad("requests: Field required");
    };
    if requests.is_empty() || requests.len() > MAX_REQUESTS {
        let n = requests.len();
        return bad(&format!("requests: a batch holds between 1 and {MAX_REQUESTS} requests, not {n}"));
    }
    let mut seen = HashSet::new();
    let mut lines = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let Some(custom_id) = r.get("custom_id").and_then(Value::as_str) else {
            return bad(&format!("requests.{i}.custom_id: Field required"));
        };
        if !valid_custom_id(custom_id) {
            return bad(&format!("requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"));
        }
        if !seen.insert(custom_id) {
            return bad(&format!(
                "requests.{i}.custom_id: '{custom_id}' is used more than once; custom ids must be unique within a batch"
            ));
        }
        let Some(p) = r.get("params").filter(|p| p.is_object()) else {
            return bad(&format!("requests.{i}.params: Field required"));
        };
        lines.push((custom_id.to_string(), params(p)));
    }
    let accepted = lines.len() as u64;
    let batch = Batch { id: new_id("msgbatch_"), plan: Plan::new(cfg, WIRE, batch_seed(&state), lines), results: None };
    let object = batch.object(Utc::now(), "", Shown::Created);
    let Ok(mut store) = state.batches.lock() else {
        return poisoned(WIRE);
    };
    let repeated = store.note_custom_ids(batch.plan.lines.iter().map(|l| l.custom_id.as_str()));
    store.anthropic.push(batch);
    drop(store);
    state.stats(|s| {
        s.batches_created += 1;
        s.batch_lines += accepted;
    });
    count_repeats(&state, repeated);
    match lose_create_response(&state, WIRE) {
        Some(resp) => resp,
        None => axum::Json(object).into_response(),
    }
}

/// Looks up a batch, makes its results if it has ended, and answers with `f` of it.
fn with_batch(
    state: &AppState,
    id: &str,
    f: impl FnOnce(&mut Batch, DateTime<Utc>, &AppState) -> Response,
) -> Response {
    let Ok(mut store) = state.batches.lock() else {
        return poisoned(WIRE);
    };
    let Some(batch) = store.anthropic.iter_mut().find(|b| b.id == id) else {
        return not_found(id);
    };
    let now = Utc::now();
    batch.settle(state, now);
    f(batch, now, state)
}

/// `GET /v1/messages/batches/{id}`.
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
    let base = base_url(&state, &headers);
    with_batch(&state, &id, |batch, now, _| axum::Json(batch.object(now, &base, Shown::AsItStands)).into_response())
}

/// `POST /v1/messages/batches/{id}/cancel`: `canceling`; a batch already ended or canceling
/// is answered as it stands.
pub(in crate::batch) async fn cancel(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(resp) = enter(&state, WIRE, &headers) {
        return *resp;
    }
    let base = base_url(&state, &headers);
    with_batch(&state, &id, |batch, now, state| {
        let cancelled = batch.plan.cancel(now);
        if cancelled {
            state.stats(|s| s.batches_cancelled += 1);
            batch.settle(state, now);
        }
        let shown = if cancelled { Shown::Cancelling } else { Shown::AsItStands };
        axum::Json(batch.object(now, &base, shown)).into_response()
    })
}

/// `GET /v1/messages/batches/{id}/results`: JSONL, once the batch has ended.
pub(in crate::batch) async fn results(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(resp) = enter(&state, WIRE, &headers) {
        return *resp;
    }
    with_batch(&state, &id, |batch, _, _| match &batch.results {
        Some(r) => ([(header::CONTENT_TYPE, "application/x-jsonl")], r.jsonl.clone()).into_response(),
        None => bad(&format!("Message batch {id} is still processing; its results are available once it has ended.")),
    })
}

/// `DELETE /v1/messages/batches/{id}`: only once it has ended.
pub(in crate::batch) async fn delete(
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
    let Some(at) = store.anthropic.iter().position(|b| b.id == id) else {
        return not_found(&id);
    };
    if !matches!(store.anthropic[at].plan.phase(Utc::now()), Phase::Ended(..)) {
        return bad(&format!("Message batch {id} has not ended; cancel it before deleting it."));
    }
    store.anthropic.remove(at);
    axum::Json(json!({"id": id, "type": "message_batch_deleted"})).into_response()
}

/// `GET /v1/messages/batches?limit=&after_id=&before_id=`: newest first.
pub(in crate::batch) async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(resp) = enter(&state, WIRE, &headers) {
        return *resp;
    }
    let limit = match list_limit(&query, 1000) {
        Ok(n) => n,
        Err(e) => return bad(&e),
    };
    let base = base_url(&state, &headers);
    let Ok(mut store) = state.batches.lock() else {
        return poisoned(WIRE);
    };
    let Store { anthropic, .. } = &mut *store;
    let now = Utc::now();
    for batch in anthropic.iter_mut() {
        batch.settle(&state, now);
    }
    let ids: Vec<&str> = anthropic.iter().map(|b| b.id.as_str()).collect();
    let cursor = |name: &str| query.get(name).map(String::as_str);
    let (indices, has_more) = page(&ids, limit, cursor("after_id"), cursor("before_id"));
    let data: Vec<Value> = indices.iter().map(|&i| anthropic[i].object(now, &base, Shown::AsItStands)).collect();
    axum::Json(json!({
        "first_id": data.first().map(|b| b["id"].clone()),
        "last_id": data.last().map(|b| b["id"].clone()),
        "data": data,
        "has_more": has_more,
    }))
    .into_response()
}

impl Batch {
    /// Makes the results of a batch that has ended by `now` (once).
    fn settle(&mut self, state: &AppState, now: DateTime<Utc>) {
        if self.results.is_some() || !matches!(self.plan.phase(now), Phase::Ended(..)) {
            return;
        }
        let mut r = Results { jsonl: Bytes::new(), succeeded: 0, errored: 0, canceled: 0, expired: 0 };
        let mut jsonl = Vec::new();
        let cfg = &self.plan.cfg;
        for (line, done) in self.plan.finish(state) {
            let errored = |kind: &str, message: &str| json!({"type": "errored", "error": error_body(kind, message, &new_id("req_"))});
            let result = match done {
                Done::Answered(reply, asked) => {
                    r.succeeded += 1;
                    json!({"type": "succeeded", "message": reply.anthropic(cfg, asked)})
                }
                Done::Refused(message) => {
                    r.errored += 1;
                    errored("invalid_request_error", &message)
                }
                Done::Failed => {
                    r.errored += 1;
                    errored("api_error", "Internal server error")
                }
                Done::Expired => {
                    r.expired += 1;
                    json!({"type": "expired"})
                }
                Done::Cancelled => {
                    r.canceled += 1;
                    json!({"type": "canceled"})
                }
            };
            let out = json!({"custom_id": line.custom_id, "result": result});
            jsonl.extend_from_slice(out.to_string().as_bytes());
            jsonl.push(b'\n');
        }
        r.jsonl = Bytes::from(jsonl);
        self.results = Some(r);
    }

    fn object(&self, now: DateTime<Utc>, base_url: &str, shown: Shown) -> Value {
        let plan = &self.plan;
        let ended = match plan.phase(now) {
            Phase::Ended(at, _) if shown == Shown::AsItStands => Some(at),
            _ => None,
        };
        let status = match (ended, plan.cancel_at) {
            (Some(_), _) => "ended",
            (None, Some(_)) => "canceling",
            (None, None) => "in_progress",
        };
        let counts = match (&self.results, ended) {
            (Some(r), Some(_)) => {
                json!({"processing": 0, "succeeded": r.succeeded, "errored": r.errored, "canceled": r.canceled, "expired": r.expired})
            }
            _ => json!({"processing": plan.lines.len(), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}),
        };
        json!({
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": ended.map(rfc3339),
            "created_at": rfc3339(plan.created),
            "expires_at": rfc3339(plan.expires_at()),
            "archived_at": null,
            "cancel_initiated_at": plan.cancel_at.map(rfc3339),
            "results_url": ended.map(|_| format!("{base_url}/v1/messages/batches/{}/results", self.id)),
        })
    }
}
