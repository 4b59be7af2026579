//! Fleet-shared limits: each worker renews a lease per endpoint in Postgres and sets its
//! limiters to 1 / (live workers) of the endpoint's limits.
//!
//! Joining: a worker registers, then waits one interval before its first request, so the others
//! have shrunk their share by the time it takes its own. Leaving: a graceful stop deletes its
//! leases; a crashed worker's leases expire after three intervals (until then the others run
//! below the limit, never above it).

use reasonrec_store::Store;
use reasonrec_teacher::TeacherPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Leases {
    store: Store,
    pool: TeacherPool,
    worker: String,
    interval: Duration,
    endpoints: Vec<String>,
}

impl Leases {
    pub fn new(store: Store, pool: TeacherPool, worker: String, interval: Duration) -> Self {
        let endpoints = pool.clients().iter().map(|c| c.endpoint().name.clone()).collect();
        Self { store, pool, worker, interval, endpoints }
    }

    fn ttl(&self) -> Duration {
        self.interval * 3
    }

    /// Renews the leases and applies the shares; on a database error the last shares stay.
    pub async fn renew(&self) {
        match self.store.leases().renew(&self.worker, &self.endpoints, self.ttl()).await {
            Ok(counts) => {
                for c in self.pool.clients() {
                    let n = counts.get(&c.endpoint().name).copied().unwrap_or(1).max(1);
                    let share = 1.0 / n as f64;
                    if (c.limiter().share() - share).abs() > f64::EPSILON {
                        tracing::info!(endpoint = %c.endpoint().name, workers = n, share, "endpoint share changed");
                    }
                    c.limiter().set_share(share);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew endpoint leases; keeping the current shares"),
        }
    }

    /// Registers and waits one interval, so the workers already running see this one first.
    pub async fn join(&self) {
        self.renew().await;
        tokio::time::sleep(self.interval).await;
        self.renew().await;
    }

    /// Renews every interval until `stop`, then releases the leases.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => self.renew().await,
            }
        }
        if let Err(e) = self.store.leases().release(&self.worker).await {
            tracing::warn!(error = %e, "cannot release endpoint leases; they expire on their own");
        }
    }
}
