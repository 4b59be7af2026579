//! An endpoint's context window (issue 17): a server with a small window refuses the longest
//! prompts with a 400 (as a llama.cpp server with a 512-token window did with Amazon prompts).
//! Configured as `context_tokens`, the worker trims the oldest history to fit before sending, so
//! no request overflows and no task fails for it; the trims are counted per task.

use reasonrec_coordinator::create_run;
use reasonrec_core::settings::Protocol;
use reasonrec_core::stage::TaskState;
use reasonrec_mock_teacher::MockConfig;
use reasonrec_tests::{TestEnv, count};

/// The mock's window: over the shortest reasoning prompts of the sample with max_tokens 256 and
/// a 10-item history, under the longest.
const WINDOW: u32 = 585;

/// A run against the mock's window; `chars_per_token`: the endpoint's configured window and
/// estimate, None: not configured.
async fn run_with_window(protocol: Protocol, chars_per_token: Option<f32>) -> anyhow::Result<(TestEnv, uuid::Uuid)> {
    let mut env = TestEnv::with_mock(MockConfig { context_tokens: WINDOW, ..MockConfig::default() }).await?;
    let ep = &mut env.settings.teacher.endpoints[0];
    ep.protocol = protocol;
    if let Some(c) = chars_per_token {
        ep.context_tokens = WINDOW;
        ep.chars_per_token = c;
    }
    env.settings.teacher.max_attempts = 2;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    env.run_to_completion(run).await?;
    Ok((env, run))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_are_trimmed_to_the_context_window_instead_of_drawing_a_400() -> anyhow::Result<()> {
    // Not configured: the server refuses the long prompts and their tasks fail, permanently.
    let (env, run) = run_with_window(Protocol::OpenAi, None).await?;
    let overflows = env.mock.stats().context_overflows;
    let failed = count(
        &env.store,
        "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'failed' AND last_error LIKE '%context%'",
        run,
    )
    .await?;
    let tasks = count(&env.store, "SELECT count(*) FROM tasks WHERE run_id = $1", run).await?;
    assert!(
        overflows > 0 && failed as u64 == overflows && failed < tasks,
        "{overflows} overflows, {failed} of {tasks} failed"
    );
    env.cleanup().await?;

    // Configured, in both protocols: nothing overflows, every task is done, the trimmed ones
    // say how many history entries were cut. With the server's own estimate (4 characters a
    // token, as the mock counts) exactly the overflowing prompts are trimmed; the cautious
    // default (3) trims more of them.
    for (protocol, chars_per_token) in [(Protocol::OpenAi, 4.0), (Protocol::Anthropic, 3.0)] {
        let (env, run) = run_with_window(protocol, Some(chars_per_token)).await?;
        assert_eq!(env.mock.stats().context_overflows, 0, "{protocol}: {:?}", env.mock.stats());
        let done = env.tasks_in(run, TaskState::Done).await?;
        assert_eq!(done, tasks, "{protocol}");
        let trimmed =
            count(&env.store, "SELECT count(*) FROM tasks WHERE run_id = $1 AND history_truncated > 0", run).await?;
        if chars_per_token == 4.0 {
            assert_eq!(trimmed, failed, "{protocol}: the prompts that overflowed, and only they, were trimmed");
        } else {
            assert!(trimmed > failed, "{protocol}: a cautious estimate trims more ({trimmed} > {failed})");
        }
        env.cleanup().await?;
    }
    Ok(())
}
