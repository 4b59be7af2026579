//! Session advisory locks held on a connection of their own (detached from the pool): a lock
//! lives exactly as long as its connection, so a process that dies, or whose connection is cut,
//! lets go of it. The acting coordinator ([`Locks::try_lock`]) and a batch endpoint's submitter
//! ([`Locks::endpoint_lock`]) hold one each; a run's planning lock ([`crate::planning`]) is the
//! same kind, taken together with its run row.

use crate::error::StoreError;
use crate::pool::Store;
use sqlx::Connection;

/// First key of the endpoint advisory locks ("rrbt"); the second is `hashtext(endpoint)`.
const ENDPOINT_LOCK_CLASS: i32 = 0x7272_6274;

/// A held session advisory lock; released when dropped, released or its connection dies.
pub struct SessionLock {
    conn: sqlx::PgConnection,
}

impl std::fmt::Debug for SessionLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionLock")
    }
}

impl SessionLock {
    /// A lock already taken on `conn` (a connection detached from the pool).
    pub(crate) fn on(conn: sqlx::PgConnection) -> Self {
        Self { conn }
    }

    /// The connection that holds the lock, for statements that must run in its session.
    pub(crate) fn connection(&mut self) -> &mut sqlx::PgConnection {
        &mut self.conn
    }

    /// Lets go of the lock (closing its connection ends the session that holds it).
    pub async fn release(self) {
        let _ = self.conn.close().await;
    }

    /// Whether the lock's connection (so the lock) is still there.
    pub async fn alive(&mut self) -> bool {
        self.conn.ping().await.is_ok()
    }
}

/// Session advisory locks. Reached through [`Store::locks`].
#[derive(Debug, Clone, Copy)]
pub struct Locks<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Locks<'a> {
    /// The lock `key`, when no other session holds it (None: someone does).
    pub async fn try_lock(self, key: i64) -> Result<Option<SessionLock>, StoreError> {
        let mut conn = self.store.pool().acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut conn).await?;
        held(conn, got).await
    }

    /// The submitter lock of `endpoint`, when no other process holds it.
    pub async fn endpoint_lock(self, endpoint: &str) -> Result<Option<SessionLock>, StoreError> {
        let mut conn = self.store.pool().acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(ENDPOINT_LOCK_CLASS)
            .bind(endpoint)
            .fetch_one(&mut conn)
            .await?;
        held(conn, got).await
    }
}

/// The lock on `conn` when `got`, else the connection closed.
async fn held(conn: sqlx::PgConnection, got: bool) -> Result<Option<SessionLock>, StoreError> {
    if got {
        Ok(Some(SessionLock::on(conn)))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}
