//! Leases through which worker processes share teacher endpoints' limits.

use crate::error::StoreError;
use crate::pool::Store;
use std::collections::HashMap;
use std::time::Duration;

/// Worker leases on teacher endpoints. Reached through [`Store::leases`].
#[derive(Debug, Clone, Copy)]
pub struct Leases<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Leases<'a> {
    /// Renews `worker`'s lease on each endpoint, drops leases older than `ttl`, and returns the
    /// number of live leases per endpoint (this worker included).
    pub async fn renew(
        self,
        worker: &str,
        endpoints: &[String],
        ttl: Duration,
    ) -> Result<HashMap<String, i64>, StoreError> {
        let ttl_ms = ttl.as_millis() as i64;
        let mut tx = self.store.pool().begin().await?;
        sqlx::query(
            "INSERT INTO endpoint_leases (endpoint, worker, heartbeat_at)
             SELECT e, $2, now() FROM UNNEST($1::text[]) e
             ON CONFLICT (endpoint, worker) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(endpoints)
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM endpoint_leases WHERE heartbeat_at < now() - make_interval(secs => $1::float8 / 1000)",
        )
        .bind(ttl_ms)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query_as("SELECT endpoint, count(*) FROM endpoint_leases WHERE endpoint = ANY($1) GROUP BY 1")
            .bind(endpoints)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.into_iter().collect())
    }

    /// Gives up `worker`'s leases (graceful stop): the others take its share at their next renewal.
    pub async fn release(self, worker: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM endpoint_leases WHERE worker = $1").bind(worker).execute(self.store.pool()).await?;
        Ok(())
    }
}
