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
use std::time::{Duration, Instant};

const PAGE: &str = include_str!("../assets/status.html");

#[derive(Clone)]
struct WebState {
    store: Store,
    token: Option<Arc<str>>,
    /// Whether this coordinator holds leadership (shown on the page).
    leading: Arc<std::sync::atomic::AtomicBool>,
    /// The last `/api/runs` answer: each open page asks every 5 s, and counting a run's tasks
    /// scans them all, so at a million tasks a run a few open pages would keep Postgres busy.
    runs_cache: Arc<Cached<Vec<RunView>>>,
}

/// A value loaded again only after [`crate::status::count_interval`] of the last load's duration
/// (at least `floor`). Callers wait on the lock while one loads: one load at a time, however
/// many callers.
struct Cached<T> {
    slot: tokio::sync::Mutex<Option<(Instant, Arc<T>)>>,
    floor: Duration,
}

impl<T> Cached<T> {
    fn new(floor: Duration) -> Self {
        Self { slot: tokio::sync::Mutex::new(None), floor }
    }

    /// The cached value if it is still fresh at `now`, else what `load` gives (kept on success).
    async fn get_at<E>(
        &self,
        now: Instant,
        load: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<Arc<T>, E> {
        let mut slot = self.slot.lock().await;
        if let Some((until, value)) = slot.as_ref()
            && now < *until
        {
            return Ok(value.clone());
        }
        let started = Instant::now();
        let value = Arc::new(load.await?);
        let until = Instant::now() + crate::status::count_interval(started.elapsed(), self.floor);
        *slot = Some((until, value.clone()));
        Ok(value)
    }
}

/// The shortest time an `/api/runs` answer is served again.
pub const RUNS_CACHE_FLOOR: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct RunsResponse<'a> {
    leading: bool,
    runs: &'a [RunView],
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
    match cached_runs(&state).await {
        Ok(runs) => {
            let leading = state.leading.load(std::sync::atomic::Ordering::Relaxed);
            Json(RunsResponse { leading, runs: &runs }).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("cannot read runs: {e}\n")).into_response(),
    }
}

async fn cached_runs(state: &WebState) -> Result<Arc<Vec<RunView>>, crate::CoordinatorError> {
    state.runs_cache.get_at(Instant::now(), load_runs(&state.store)).await
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
    let state =
        WebState { store, token: token.map(Arc::from), leading, runs_cache: Arc::new(Cached::new(RUNS_CACHE_FLOOR)) };
    Router::new()
        .route("/", get(page))
        .route("/api/runs", get(runs))
        .with_state(state)
        .merge(reasonrec_ops::router(ready))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_cached_answer_is_served_until_it_is_stale_then_loaded_again() {
        let loads = AtomicUsize::new(0);
        let load = || async { Ok::<_, ()>(loads.fetch_add(1, Ordering::SeqCst) + 1) };
        let cache = Cached::new(Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(cache.get_at(now, load()).await.map(|v| *v), Ok(1));
        assert_eq!(cache.get_at(now, load()).await.map(|v| *v), Ok(1), "served from the cache");
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        let later = now + Duration::from_secs(3600);
        assert_eq!(cache.get_at(later, load()).await.map(|v| *v), Ok(2), "stale: loaded again");
        // A failed load keeps nothing and is tried again next time.
        let failing = Cached::<usize>::new(Duration::from_secs(60));
        assert_eq!(failing.get_at(now, async { Err::<usize, _>("down") }).await, Err("down"));
        assert_eq!(failing.get_at(now, load()).await.map(|v| *v), Ok(3));
    }
}
