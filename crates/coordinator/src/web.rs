//! The coordinator's HTTP endpoint: a read-only status page (`/`) and its data (`/api/runs`),
//! the corpus browser (`/corpus`; its data: `/api/runs/{run}/tasks`, `/api/tasks/{id}`, and
//! `POST /api/outputs/{key}/mark` for audit marks), plus `/metrics`, `/healthz`, `/readyz` from
//! `reasonrec-ops`.
//!
//! Marking is the one write. It takes only `application/json` bodies: a page on another site
//! can post a form to a loopback server (whose `Host` is then loopback) but cannot send JSON
//! there without a CORS preflight, which this server never grants.
//!
//! [`Access`] decides who reads runs. Bound beyond loopback, `/api/runs` needs the token: an
//! `Authorization: Bearer <token>` header, or the HttpOnly cookie that `POST /login` (the page's
//! form, the token in the body) sets; a token in the query string is never accepted (it would
//! land in proxy logs). Bound to loopback, no token is asked but the `Host` header must name
//! this machine (a DNS-rebinding page in a browser cannot read it). The page itself (`/`) holds
//! no data; the probes and `/metrics` stay open for the cluster's scrapers.

use crate::status::{RunStatus, run_status};
use axum::Router;
use axum::extract::{Form, Path, Query, State};
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
const CORPUS_PAGE: &str = include_str!("../assets/corpus.html");

/// A view of a task the coordinator crate cannot make itself, given by the binary that can:
/// the prompt rendered again and checked against the output key (the worker's rendering), or
/// the student example as the export writes it (the trainer's).
pub use reasonrec_core::task_view::TaskView;

/// The task page's views beyond the store's rows; none: the page shows rows only.
#[derive(Clone, Default)]
pub struct TaskViews {
    /// `worker::render::prompt_checker`.
    pub prompt: Option<TaskView>,
    /// `trainer::export::student_viewer`.
    pub student: Option<TaskView>,
}

#[derive(Clone)]
struct WebState {
    store: Store,
    access: Arc<Access>,
    /// Whether this coordinator holds leadership (shown on the page).
    leading: Arc<std::sync::atomic::AtomicBool>,
    /// The last `/api/runs` answer: each open page asks every 5 s, and counting a run's tasks
    /// scans them all, so at a million tasks a run a few open pages would keep Postgres busy.
    runs_cache: Arc<Cached<Vec<RunView>>>,
    views: TaskViews,
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
/// The corpus browser (`CORPUS_PAGE`) is served the same way: it holds no data either.
fn serve_page(state: &WebState, headers: &HeaderMap, html: &'static str) -> Response {
    if matches!(state.access.as_ref(), Access::Loopback) && !authorized(state, headers) {
        return refused(state);
    }
    Html(html).into_response()
}

async fn page(State(state): State<WebState>, headers: HeaderMap) -> Response {
    serve_page(&state, &headers, PAGE)
}

async fn corpus_page(State(state): State<WebState>, headers: HeaderMap) -> Response {
    serve_page(&state, &headers, CORPUS_PAGE)
}

/// A page of the browser's task list as the query string gives it: the filters, `after` (the
/// last task id of the previous page) and `limit`. Read as text and parsed here, so a bad value
/// is a 400 naming its parameter.
#[derive(Deserialize, Default)]
#[serde(default)]
struct TasksQuery {
    stage: Option<String>,
    state: Option<String>,
    split: Option<String>,
    label: Option<String>,
    error_class: Option<String>,
    model: Option<String>,
    template_version: Option<String>,
    carried: Option<String>,
    text: Option<String>,
    min_words: Option<String>,
    max_words: Option<String>,
    min_score: Option<String>,
    max_score: Option<String>,
    mark: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// An empty parameter is no filter.
fn param<T: std::str::FromStr>(name: &str, v: &Option<String>) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    match v.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|e| format!("{name}: {v:?}: {e}")),
    }
}

impl TasksQuery {
    fn parse(&self) -> Result<(reasonrec_store::browse::TaskFilter, Option<uuid::Uuid>, i64), String> {
        use reasonrec_store::browse::MarkFilter;
        let text = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(String::from);
        let mark = match text(&self.mark).as_deref() {
            None => None,
            Some("approved") => Some(MarkFilter::Approved),
            Some("rejected") => Some(MarkFilter::Rejected),
            Some("unreviewed") => Some(MarkFilter::Unreviewed),
            Some(other) => return Err(format!("mark: {other:?} is not approved, rejected or unreviewed")),
        };
        let filter = reasonrec_store::browse::TaskFilter {
            stage: param("stage", &self.stage)?,
            state: param("state", &self.state)?,
            split: param("split", &self.split)?,
            label: param("label", &self.label)?,
            error_class: text(&self.error_class),
            model: text(&self.model),
            template_version: text(&self.template_version),
            carried: param("carried", &self.carried)?,
            text: text(&self.text),
            min_words: param("min_words", &self.min_words)?,
            max_words: param("max_words", &self.max_words)?,
            mark,
            min_score: param("min_score", &self.min_score)?,
            max_score: param("max_score", &self.max_score)?,
        };
        let limit: i64 = param("limit", &self.limit)?.unwrap_or(50);
        Ok((filter, param("after", &self.after)?, limit.clamp(1, 500)))
    }
}

#[derive(Serialize)]
struct TasksPage {
    tasks: Vec<reasonrec_store::browse::TaskListRow>,
    /// Where the next page starts; None on the last page.
    next: Option<uuid::Uuid>,
}

fn store_error(e: reasonrec_store::StoreError) -> Response {
    match e {
        reasonrec_store::StoreError::NotFound(what) => {
            (StatusCode::NOT_FOUND, format!("not found: {what}\n")).into_response()
        }
        other => (StatusCode::SERVICE_UNAVAILABLE, format!("cannot read: {other}\n")).into_response(),
    }
}

async fn tasks(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(run): Path<uuid::Uuid>,
    query: Result<Query<TasksQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !authorized(&state, &headers) {
        return refused(&state);
    }
    let parsed = match query {
        Ok(Query(q)) => q.parse(),
        Err(e) => Err(e.to_string()),
    };
    let (filter, after, limit) = match parsed {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match state.store.browser().tasks(run, &filter, after, limit).await {
        Ok(tasks) => {
            let next = (tasks.len() as i64 == limit).then(|| tasks.last().map(|t| t.id)).flatten();
            Json(TasksPage { tasks, next }).into_response()
        }
        Err(e) => store_error(e),
    }
}

#[derive(Serialize)]
struct TaskPage {
    #[serde(flatten)]
    detail: reasonrec_store::browse::TaskDetail,
    /// The prompt rendered again and checked against the output key; an error text when it
    /// cannot be rendered; absent when this server was started without prompts.
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<Result<serde_json::Value, String>>,
    /// The student example as `train export` writes it (reasoning tasks); an error text when
    /// there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    student: Option<Result<serde_json::Value, String>>,
}

async fn task(State(state): State<WebState>, headers: HeaderMap, Path(id): Path<uuid::Uuid>) -> Response {
    if !authorized(&state, &headers) {
        return refused(&state);
    }
    let detail = match state.store.browser().task_detail(id).await {
        Ok(d) => d,
        Err(e) => return store_error(e),
    };
    let prompt = match &state.views.prompt {
        Some(view) => Some(view(id).await),
        None => None,
    };
    let student = match (&state.views.student, detail.row.stage) {
        (Some(view), reasonrec_core::stage::Stage::Reasoning) => Some(view(id).await),
        _ => None,
    };
    Json(TaskPage { detail, prompt, student }).into_response()
}

#[derive(Deserialize)]
struct SampleQuery {
    n: Option<i64>,
    seed: Option<u64>,
}

/// A seeded review sample: up to `n` done outputs per (stage, label).
async fn sample(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(run): Path<uuid::Uuid>,
    query: Result<Query<SampleQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !authorized(&state, &headers) {
        return refused(&state);
    }
    let Ok(Query(q)) = query else {
        return (StatusCode::BAD_REQUEST, "n and seed are numbers\n").into_response();
    };
    match state.store.audits().sample(run, q.n.unwrap_or(5).clamp(1, 100), q.seed.unwrap_or(0)).await {
        Ok(rows) => Json(serde_json::json!({ "sample": rows })).into_response(),
        Err(e) => store_error(e),
    }
}

/// What was audited per stage, with the error rate it suggests.
async fn audit(State(state): State<WebState>, headers: HeaderMap, Path(run): Path<uuid::Uuid>) -> Response {
    if !authorized(&state, &headers) {
        return refused(&state);
    }
    match state.store.audits().counts(run).await {
        Ok(counts) => Json(reasonrec_store::audit::AuditSummary::new(run, counts)).into_response(),
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
struct QualityQuery {
    days: Option<i32>,
}

/// Validator rejections per hour, stage, template version, endpoint, model and reason, and
/// audit marks per template version, over the runs of this run's dataset within `days` days.
async fn quality(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(run): Path<uuid::Uuid>,
    query: Result<Query<QualityQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !authorized(&state, &headers) {
        return refused(&state);
    }
    let Ok(Query(q)) = query else {
        return (StatusCode::BAD_REQUEST, "days is a number\n").into_response();
    };
    match state.store.audits().quality(run, q.days.unwrap_or(14).clamp(0, 366)).await {
        Ok(quality) => Json(quality).into_response(),
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
struct MarkBody {
    verdict: reasonrec_core::audit::Verdict,
    reason: Option<String>,
    reviewer: String,
}

async fn mark(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&state, &headers) {
        return refused(&state);
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !json_body {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "marks are sent as application/json\n").into_response();
    }
    let Ok(output_key) = hex::decode(&key) else {
        return (StatusCode::BAD_REQUEST, "the output key is hex\n").into_response();
    };
    let m: MarkBody = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let reviewer = m.reviewer.trim();
    if reviewer.is_empty() || reviewer.chars().count() > 100 {
        return (StatusCode::BAD_REQUEST, "reviewer: 1 to 100 characters\n").into_response();
    }
    let reason = m.reason.map(|r| r.trim().chars().take(2_000).collect::<String>()).filter(|r| !r.is_empty());
    let new =
        reasonrec_store::audit::NewMark { output_key, verdict: m.verdict, reason, reviewer: reviewer.to_string() };
    match state.store.audits().mark_outputs(&[new]).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        // The key names no output of the ledger (the foreign key refused it).
        Err(e) if e.is_missing_reference() => (StatusCode::NOT_FOUND, "no such output\n").into_response(),
        Err(e) => store_error(e),
    }
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
    for summary in store.monitor().recent_runs(10).await? {
        let status = run_status(store, summary.run_id).await?;
        let per_minute = store.monitor().completions_per_minute(summary.run_id, 60).await?;
        out.push(RunView { summary, status, per_minute });
    }
    Ok(out)
}

/// The coordinator's router: status page, corpus browser, login and API (as `access` allows)
/// merged with the ops routes; the task page shows no re-rendered prompt.
pub fn router(
    store: Store,
    access: Access,
    ready: reasonrec_ops::ReadyCheck,
    leading: Arc<std::sync::atomic::AtomicBool>,
) -> Router {
    router_with_views(store, access, ready, leading, TaskViews::default())
}

/// [`router`] whose task page also shows `views` (the prompt as sent, the student example).
pub fn router_with_views(
    store: Store,
    access: Access,
    ready: reasonrec_ops::ReadyCheck,
    leading: Arc<std::sync::atomic::AtomicBool>,
    views: TaskViews,
) -> Router {
    let state = WebState {
        store,
        access: Arc::new(access),
        leading,
        runs_cache: Arc::new(Cached::new(RUNS_CACHE_FLOOR)),
        views,
    };
    Router::new()
        .route("/", get(page))
        .route("/corpus", get(corpus_page))
        .route("/login", post(login))
        .route("/api/runs", get(runs))
        .route("/api/runs/{run}/tasks", get(tasks))
        .route("/api/runs/{run}/sample", get(sample))
        .route("/api/runs/{run}/audit", get(audit))
        .route("/api/runs/{run}/quality", get(quality))
        .route("/api/tasks/{id}", get(task))
        .route("/api/outputs/{key}/mark", post(mark))
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
