//! The coordinator's HTTP endpoint: a read-only status page (`/`) and its data (`/api/runs`),
//! plus `/metrics`, `/healthz`, `/readyz` from `reasonrec-ops`.
//!
//! [`Access`] decides who reads runs. Bound beyond loopback, `/api/runs` needs the token: an
//! `Authorization: Bearer <token>` header, or the HttpOnly cookie that `POST /login` (the page's
//! form, the token in the body) sets; a token in the query string is never accepted (it would
//! land in proxy logs). Bound to loopback, no token is asked but the `Host` header must name
//! this machine (a DNS-rebinding page in a browser cannot read it). The page itself (`/`) holds
//! no data; the probes and `/metrics` stay open for the cluster's scrapers.

use crate::status::{RunStatus, run_status};
use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use reasonrec_core::net::is_loopback_host;
use reasonrec_store::Store;
use reasonrec_store::monitor::RunSummary;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGE: &str = include_str!("../assets/status.html");

#[derive(Clone)]
struct WebState {
    store: Store,
    access: Arc<Access>,
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

/// Who may read the runs.
#[derive(Clone)]
pub enum Access {
    /// Bound to loopback: no token, but only requests whose `Host` names this machine.
    Loopback,
    /// Bound beyond loopback: the token, as a bearer header or the login cookie.
    Token(String),
}

impl std::fmt::Debug for Access {
    // Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Loopback => "Access::Loopback",
            Access::Token(_) => "Access::Token(***)",
        })
    }
}

/// The login cookie's name; its value is [`cookie_value`] of the token, not the token.
const COOKIE: &str = "reasonrec_status";

/// What the login cookie holds for `token`: a digest, so the cookie store never holds the token.
fn cookie_value(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("reasonrec-status\0{token}").as_bytes()))
}

/// Equal lengths, then every byte: the comparison does not stop at the first difference.
fn same(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
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

/// Whether a request may read runs: see [`Access`].
fn authorized(state: &WebState, headers: &HeaderMap) -> bool {
    match state.access.as_ref() {
        Access::Loopback => headers.get(header::HOST).and_then(|v| v.to_str().ok()).is_some_and(is_loopback_host),
        Access::Token(expected) => {
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if bearer.is_some_and(|b| same(b, expected)) {
                return true;
            }
            let wanted = cookie_value(expected);
            headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .any(|(name, value)| name == COOKIE && same(value, &wanted))
        }
    }
}

fn refused(state: &WebState) -> Response {
    match state.access.as_ref() {
        Access::Loopback => {
            (StatusCode::MISDIRECTED_REQUEST, "this page answers only to a loopback Host\n").into_response()
        }
        Access::Token(_) => (StatusCode::UNAUTHORIZED, "token required\n").into_response(),
    }
}

/// The page holds no data (its script asks `/api/runs`), so it is served to anyone who may
/// reach it; in loopback mode only under a loopback `Host`.
async fn page(State(state): State<WebState>, headers: HeaderMap) -> Response {
    if matches!(state.access.as_ref(), Access::Loopback) && !authorized(&state, &headers) {
        return refused(&state);
    }
    Html(PAGE).into_response()
}

/// The page's login form: the token in the body; on success an HttpOnly, SameSite=Strict cookie
/// holding a digest of it, and back to the page.
async fn login(State(state): State<WebState>, Form(form): Form<LoginForm>) -> Response {
    let Access::Token(expected) = state.access.as_ref() else {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "./")]).into_response();
    };
    if !same(form.token.trim(), expected) {
        return (StatusCode::UNAUTHORIZED, Html("wrong token. <a href=\"./\">Back</a>\n")).into_response();
    }
    let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", cookie_value(expected));
    (StatusCode::SEE_OTHER, [(header::LOCATION, "./".to_string()), (header::SET_COOKIE, cookie)]).into_response()
}

async fn runs(State(state): State<WebState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return refused(&state);
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

/// The coordinator's router: status page, login and API (as `access` allows) merged with the
/// ops routes.
pub fn router(
    store: Store,
    access: Access,
    ready: reasonrec_ops::ReadyCheck,
    leading: Arc<std::sync::atomic::AtomicBool>,
) -> Router {
    let state =
        WebState { store, access: Arc::new(access), leading, runs_cache: Arc::new(Cached::new(RUNS_CACHE_FLOOR)) };
    Router::new()
        .route("/", get(page))
        .route("/login", post(login))
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
