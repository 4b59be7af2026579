//! The one reconnect loop of every broker client (the coordinator's outbox service, the
//! worker's consumer): a session runs until it ends; a retryable end starts a new session
//! after a backoff of 200 ms doubling to 10 s, back to 200 ms after a session that lasted 30 s.

use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const FIRST_WAIT: Duration = Duration::from_millis(200);
const LONGEST_WAIT: Duration = Duration::from_secs(10);
/// A session that lasted this long was healthy: the next wait starts from the first again.
const HEALTHY: Duration = Duration::from_secs(30);

/// Runs `session` again after each end `retryable` accepts, until it returns Ok (Some of its
/// value), ends with another error, or `stop` is cancelled while waiting (None). `ended` hears
/// of each retryable end with the wait before the next session (for the log and counters).
pub async fn reconnecting<T, E, F, Fut>(
    stop: &CancellationToken,
    retryable: impl Fn(&E) -> bool,
    mut ended: impl FnMut(&E, Duration),
    mut session: F,
) -> Result<Option<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut wait = FIRST_WAIT;
    loop {
        let started = Instant::now();
        match session().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if !retryable(&e) => return Err(e),
            Err(e) => {
                if started.elapsed() > HEALTHY {
                    wait = FIRST_WAIT;
                }
                ended(&e, wait);
                tokio::select! {
                    _ = stop.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(LONGEST_WAIT);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retryable_ends_wait_longer_each_time_and_other_errors_end_the_loop() {
        let stop = CancellationToken::new();
        let mut waits = Vec::new();
        let mut sessions = 0;
        let r: Result<Option<u32>, &str> = reconnecting(
            &stop,
            |e: &&str| *e == "lost",
            |_, w| waits.push(w),
            || {
                sessions += 1;
                let n = sessions;
                async move {
                    match n {
                        1..=6 => Err("lost"),
                        _ => Ok(n),
                    }
                }
            },
        )
        .await;
        assert_eq!(r, Ok(Some(7)));
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 6400]);

        let r: Result<Option<u32>, &str> =
            reconnecting(&stop, |e: &&str| *e == "lost", |_, _| {}, || async { Err("refused") }).await;
        assert_eq!(r, Err("refused"), "not retryable: returned at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_while_waiting_ends_the_loop_without_a_value() {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let r: Result<Option<()>, &str> =
            reconnecting(&stop, |_| true, |_, _| s.cancel(), || async { Err("lost") }).await;
        assert_eq!(r, Ok(None));
    }
}
