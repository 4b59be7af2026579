//! The coordinator's HTTP endpoint: a read-only status page (`/`) and its data (`/api/runs`),
//! plus `/metrics`, `/healthz`, `/readyz` from `reasonrec-ops`.
//!
//! Bound beyond loopback, `/` and `/api/runs` need the token (`Authorization: Bearer <token>`
//! or `?token=<token>`); the probes and `/metrics` stay open for the cluster's scrapers.

use crate::status::{RunStatus, run_status};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use reasonrec_store::Store;
use reasonrec_store::monitor::RunSummary;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

const PAGE: &str = include_str!("../assets/status.html");

#[derive(Clone)]
struct WebState {
    store: Store,
    token: Option<Arc<str>>,
    /// Whether this coordinator holds leadership (shown on the page).
    leading: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Serialize)]
struct RunsResponse {
    leading: bool,
    runs: Vec<RunView>,
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// One run as the page shows it.
#[derive(Serialize)]
struct RunView {
    #[serde(flatten)]
    summary: RunSummary,
    status: RunStatus,
    /// (minute as unix seconds, done, failed) over the run's last hour of activity.
    per_minute: Vec<(i64, i64, i64)>,
}

fn authorized(state: &WebState, headers: &HeaderMap, q: &TokenQuery) -> bool {
    let Some(expected) = &state.token else { return true };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let given = bearer.or(q.token.as_deref());
    // Length first, then every byte, so the comparison does not stop at the first difference.
    given.is_some_and(|g| {
        g.len() == expected.len() && g.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    })
}

async fn page(State(state): State<WebState>, headers: HeaderMap, Query(q): Query<TokenQuery>) -> Response {
    if !authorized(&state, &headers, &q) {
        return (StatusCode::UNAUTHORIZED, "token required\n").into_response();
    }
    Html(PAGE).into_response()
}

async fn runs(State(state): State<WebState>, headers: HeaderMap, Query(q): Query<TokenQuery>) -> Response {
    if !authorized(&state, &headers, &q) {
        return (StatusCode::UNAUTHORIZED, "token required\n").into_response();
    }
    match load_runs(&state.store).await {
        Ok(runs) => {
            let leading = state.leading.load(std::sync::atomic::Ordering::Relaxed);
            Json(RunsResponse { leading, runs }).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("cannot read runs: {e}\n")).into_response(),
    }
}

async fn load_runs(store: &Store) -> Result<Vec<RunView>, crate::CoordinatorError> {
    let mut out = Vec::new();
    for summary in store.recent_runs(10).await? {
        let status = run_status(store, summary.run_id).await?;
        let per_minute = store.completions_per_minute(summary.run_id, 60).await?;
        out.push(RunView { summary, status, per_minute });
    }
    Ok(out)
}

/// The coordinator's router: status page and API (behind `token` when given) merged with the
/// ops routes.
pub fn router(
    store: Store,
    token: Option<String>,
    ready: reasonrec_ops::ReadyCheck,
    leading: Arc<std::sync::atomic::AtomicBool>,
) -> Router {
    let state = WebState { store, token: token.map(Arc::from), leading };
    Router::new()
        .route("/", get(page))
        .route("/api/runs", get(runs))
        .with_state(state)
        .merge(reasonrec_ops::router(ready))
}
