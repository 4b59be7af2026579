//! What the teacher-client tests send: a reasoning prompt in the templates' shape, and a mock on a
//! free port.

use reasonrec_core::ChatMessage;
use reasonrec_core::settings::{EndpointSettings, TeacherSettings};
use reasonrec_mock_teacher::{MockConfig, MockHandle};
use reasonrec_teacher::TeacherPool;

/// A short reasoning prompt with the sections the mock recognises.
pub const PROMPT: &str = "## Recent history (oldest first)\n1. [Liked] «Heat (1995)» (Action)\n\n\
                          ## Target movie\n«Casino (1995)» (Crime)\n\n## Known outcome\nThe viewer will LIKE the target movie.";

/// [`PROMPT`] as the one user message of a call.
pub fn messages() -> Vec<ChatMessage> {
    vec![ChatMessage { role: "user".into(), content: PROMPT.into() }]
}

/// A mock teacher on a free loopback port (and the process's TLS provider, for tests that start
/// no [`crate::TestEnv`]).
pub async fn mock(cfg: MockConfig) -> anyhow::Result<MockHandle> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reasonrec_mock_teacher::spawn("127.0.0.1:0".parse()?, cfg).await?)
}

/// A pool over `endpoints` that retries fast (5-20 ms backoff) up to `max_attempts` and never
/// opens its circuit breaker, so every fault a test injects reaches the retry loop.
pub fn pool(endpoints: Vec<EndpointSettings>, max_attempts: u32) -> anyhow::Result<TeacherPool> {
    let settings = TeacherSettings {
        endpoints,
        max_attempts,
        backoff_min_ms: 5,
        backoff_max_ms: 20,
        breaker_failures: 1_000,
        ..TeacherSettings::default()
    };
    Ok(TeacherPool::new(&settings)?)
}
