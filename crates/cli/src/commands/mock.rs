//! `mock-teacher`.

use crate::cli::MockTeacherArgs;
use anyhow::Context;
use reasonrec_mock_teacher::MockConfig;
use std::process::ExitCode;

pub async fn serve(a: MockTeacherArgs) -> anyhow::Result<ExitCode> {
    let mut cfg: MockConfig = match &a.config_json {
        Some(json) => serde_json::from_str(json).context("--config-json")?,
        None => MockConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $(if let Some(v) = a.$f { cfg.$f = v; })* };
    }
    set!(
        latency_ms,
        latency_jitter_ms,
        rate_429,
        rate_5xx,
        rate_hang,
        rate_malformed,
        rate_contradict,
        requests_per_minute,
        tokens_per_minute,
        seed
    );
    cfg.validate().map_err(anyhow::Error::msg)?;
    let handle = reasonrec_mock_teacher::spawn(a.bind, cfg).await?;
    println!("mock teacher listening on http://{}/v1", handle.addr);
    let stop = crate::signals::shutdown_token();
    stop.cancelled().await;
    let stats = handle.stats();
    tracing::info!(requests = stats.requests, ok = stats.ok, over_limit = stats.over_limit, "mock teacher stopped");
    Ok(ExitCode::SUCCESS)
}
