//! Errors of the store.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// A commit batch this write was part of failed (the batch's error is in the message);
    /// nothing of it was committed.
    #[error("commit batch failed: {0}")]
    Batch(String),
    /// A streaming ingest's loader stopped before the end (its own error says why); nothing of
    /// the dataset was stored.
    #[error("ingest aborted: {0}")]
    Aborted(String),
    /// A provider batch row was taken over by another submitter (this one lost its endpoint
    /// lock meanwhile): this one must stop working it.
    #[error("batch {0} is now worked by another submitter ({1})")]
    Taken(uuid::Uuid, &'static str),
}

impl StoreError {
    /// A deadlock (40P01) or serialization failure (40001): the transaction was aborted to let
    /// another through, and running it again is the remedy.
    pub fn is_transaction_conflict(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(db)) if db.code().is_some_and(|c| c == "40P01" || c == "40001"))
    }

    /// A foreign key refused the write (23503): it named a row that does not exist (e.g. an
    /// audit mark for a key that is no output of the ledger).
    pub fn is_missing_reference(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23503"))
    }

    /// True when the same statement may succeed later: lost connections, pool exhaustion,
    /// serialization failures and deadlocks, a server shutting down.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_) => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                    c.starts_with("08") // connection exception
                        || c.starts_with("40") // serialization failure, deadlock
                        || c.starts_with("53") // insufficient resources
                        || c == "57P01" // admin shutdown
                        || c == "57P03" // cannot connect now
                }),
                _ => false,
            },
            StoreError::Batch(_) => true,
            StoreError::Migrate(_)
            | StoreError::NotFound(_)
            | StoreError::Corrupt(_)
            | StoreError::Aborted(_)
            | StoreError::Taken(..) => false,
        }
    }
}
