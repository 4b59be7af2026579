//! `coordinator`: the long-running coordinator. One replica acts (leadership by advisory
//! lock); it serves every running run through the reconnecting outbox loop, fires the
//! scheduled incremental runs (`[[schedule.jobs]]`), and serves the status page with
//! `/metrics`, `/healthz` and `/readyz`.

use super::connect_store;
use anyhow::Context;
use reasonrec_coordinator::Lead;
use reasonrec_coordinator::web::Access;
use reasonrec_core::Settings;
use reasonrec_store::Store;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio_util::sync::CancellationToken;

pub async fn coordinator(settings: &Settings) -> anyhow::Result<ExitCode> {
    let access = status_access(settings)?;
    // A bad cron expression is refused before anything starts.
    let jobs = reasonrec_coordinator::schedule::parse_jobs(settings)?;
    let store = connect_store(settings).await?;
    store.migrate().await?;
    let stop = crate::signals::shutdown_token();
    let leading = Arc::new(AtomicBool::new(false));
    serve_http(settings, &store, access, leading.clone(), stop.clone()).await?;
    reasonrec_coordinator::serve(&store, settings, &jobs, Lead::default(), &leading, stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// Tokens of our own examples (compose file, Kubernetes secret): refused beyond loopback.
const EXAMPLE_TOKENS: &[&str] = &["dev-token", "change-me"];

/// The shortest status page token accepted beyond loopback.
const MIN_TOKEN_CHARS: usize = 16;

/// Who may read the status page: anyone on this machine when the endpoint is bound to loopback,
/// else the holder of the token in `coordinator.status_token_env` (trimmed; at least
/// [`MIN_TOKEN_CHARS`] characters; not one of our examples).
fn status_access(settings: &Settings) -> anyhow::Result<Access> {
    let c = &settings.coordinator;
    if c.http_bind.is_empty() || reasonrec_core::net::is_loopback_host(&c.http_bind) {
        return Ok(Access::Loopback);
    }
    let var = &c.status_token_env;
    let token = std::env::var(var).unwrap_or_default().trim().to_string();
    check_token(&token).with_context(|| {
        format!("coordinator.http_bind = {:?} is beyond loopback: ${var} (coordinator.status_token_env)", c.http_bind)
    })?;
    Ok(Access::Token(token))
}

fn check_token(token: &str) -> anyhow::Result<()> {
    if token.is_empty() {
        anyhow::bail!("set the status page token");
    }
    if EXAMPLE_TOKENS.iter().any(|e| token.eq_ignore_ascii_case(e)) {
        anyhow::bail!("the status page token is an example value; choose your own (e.g. `openssl rand -hex 24`)");
    }
    if token.chars().count() < MIN_TOKEN_CHARS {
        anyhow::bail!("the status page token has {} characters, fewer than {MIN_TOKEN_CHARS}", token.chars().count());
    }
    Ok(())
}

async fn serve_http(
    settings: &Settings,
    store: &Store,
    access: Access,
    leading: Arc<AtomicBool>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let bind = settings.coordinator.http_bind.clone();
    if bind.is_empty() {
        return Ok(());
    }
    let ready_store = store.clone();
    // Ready = Postgres answers; a standby is ready too (it is healthy, just not acting).
    let ready: reasonrec_ops::ReadyCheck = Arc::new(move || {
        let store = ready_store.clone();
        Box::pin(async move { store.ping().await.map_err(|e| format!("postgres: {e}")) })
    });
    let views = reasonrec_coordinator::web::TaskViews {
        prompt: Some(reasonrec_worker::render::prompt_checker(store.clone(), settings)?),
        student: Some(reasonrec_trainer::export::student_viewer(store.clone(), &settings.prompts.dir)?),
    };
    let app = reasonrec_coordinator::web::router_with_views(store.clone(), access, ready, leading, views);
    let addr = reasonrec_ops::serve(&bind, app, stop).await.with_context(|| format!("binding {bind}"))?;
    tracing::info!(%addr, "status page, corpus browser, /metrics, /healthz, /readyz");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_tokens_are_long_and_not_our_examples() {
        for bad in ["", "dev-token", "CHANGE-ME", "Change-Me", "short-token"] {
            assert!(check_token(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_token("9f2c4e1a7b3d5f608a1c2e3f4a5b6c7d").is_ok());
    }
}
