//! The operational HTTP endpoint every long-running role serves:
//! - `GET /metrics`: Prometheus text (`reasonrec_core::metrics`);
//! - `GET /healthz`: the process is alive (200 always);
//! - `GET /readyz`: 200 when the role's dependencies answer (Postgres, RabbitMQ), else 503
//!   with the reason; the role passes the check in.
//!
//! A role can merge its own routes (the coordinator's status page). Bind failures are reported
//! to the caller, which decides whether running without the endpoint is acceptable.

mod guard;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A readiness check: Ok when the role can work, Err with the reason otherwise.
pub type ReadyCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

async fn metrics() -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], reasonrec_core::metrics::render())
}

/// The router with `/metrics`, `/healthz` and `/readyz`.
pub fn router(ready: ReadyCheck) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(|| async { "ok\n" })).route(
        "/readyz",
        get(move || {
            let ready = ready.clone();
            async move {
                match tokio::time::timeout(std::time::Duration::from_secs(3), ready()).await {
                    Ok(Ok(())) => (StatusCode::OK, "ready\n".to_string()),
                    Ok(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                    Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: check timed out\n".to_string()),
                }
            }
        }),
    )
}

/// How much of the process one client may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; the next ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection that sends nothing for this long (slow headers or body, a stalled client)
    /// is closed.
    pub idle: std::time::Duration,
    /// No connection lives longer than this, however it trickles (pages reconnect).
    pub max_age: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            idle: std::time::Duration::from_secs(30),
            max_age: std::time::Duration::from_secs(600),
        }
    }
}

/// Binds `bind` and serves `app` until `stop` is cancelled, under the default [`Limits`].
/// Returns the bound address.
pub async fn serve(bind: &str, app: Router, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    serve_with(bind, app, stop, Limits::default()).await
}

/// [`serve`] under `limits`.
pub async fn serve_with(
    bind: &str,
    app: Router,
    stop: CancellationToken,
    limits: Limits,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let listener = guard::Guarded::new(listener, limits.max_connections, limits.idle, limits.max_age);
    tokio::spawn(async move {
        let result = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "ops endpoint stopped");
        }
    });
    Ok(addr)
}
