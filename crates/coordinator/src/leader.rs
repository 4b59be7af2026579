//! One coordinator acts at a time: leadership is a Postgres session advisory lock held on a
//! connection of its own (`store::locks`; not a pooled one, which could hand the session to
//! someone else). Replicas that do not get it wait; when the leader's connection dies its lock
//! goes with it, and a standby takes over within one retry interval.

use crate::error::CoordinatorError;
use reasonrec_store::Store;
use reasonrec_store::locks::SessionLock;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The advisory lock key of the coordinator role ("rrcoord" in ASCII).
pub const COORDINATOR_LOCK: i64 = 0x0072_7263_6f6f_7264;

pub struct Leadership {
    lock: SessionLock,
}

/// Waits until this process holds the lock (None when `stop` fires first). Connection errors
/// are retried every `retry`.
pub async fn acquire(
    store: &Store,
    key: i64,
    retry: Duration,
    stop: &CancellationToken,
) -> Result<Option<Leadership>, CoordinatorError> {
    let mut announced = false;
    loop {
        match store.locks().try_lock(key).await {
            Ok(Some(lock)) => {
                tracing::info!(key, "leadership acquired");
                return Ok(Some(Leadership { lock }));
            }
            Ok(None) if !announced => {
                tracing::info!(key, "another coordinator leads; standing by");
                announced = true;
            }
            Ok(None) => {}
            Err(e) => {
                if !e.is_retryable() {
                    return Err(e.into());
                }
                tracing::warn!(error = %e, "cannot reach Postgres for leadership; retrying");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

impl Leadership {
    /// Checks the lock's connection every `every`; cancels `lost` when it fails (the lock is
    /// gone with it) or when `stop` fires (then the lock is released).
    pub async fn hold(mut self, every: Duration, lost: CancellationToken, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    self.lock.release().await;
                    lost.cancel();
                    return;
                }
                _ = tokio::time::sleep(every) => {}
            }
            let alive = tokio::time::timeout(every.max(Duration::from_secs(1)), self.lock.alive()).await;
            if !matches!(alive, Ok(true)) {
                tracing::warn!("leadership connection lost; stepping down");
                lost.cancel();
                return;
            }
        }
    }
}
