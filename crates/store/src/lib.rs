//! Postgres access for every role. Postgres is the source of truth: datasets, runs, tasks,
//! the content-keyed output ledger and the per-attempt cost rows live here.
//!
//! Layout:
//! - [`error`]: `StoreError`, with retryable (connection, serialization) vs permanent.
//! - [`pool`]: connecting and the one migration entry point (`Store::migrate`).
//! - [`datasets`]: all-or-nothing ingest by COPY, versions by content hash, interaction streams.
//! - [`runs`]: run rows, bulk task planning (UNNEST), the outbox, status counts.
//! - [`tasks`]: what a worker reads about a task.
//! - [`finish`]: the one transaction that finishes tasks (commit batches, dead letters), applying
//!   the state machine of `reasonrec_core::finishing`.
//! - [`batches`]: provider batches: claiming tasks into a batch row before anything is sent,
//!   reconciling, settling result lines, the submitter's endpoint lock.
//! - [`planning`]: the run's planning lock; plans that died are found and failed.
//! - [`retention`]: `run prune`: old runs' task rows, unused ledger outputs, old dataset versions.
//! - [`monitor`]: recent runs and completions per minute, for the status page.
//! - [`leases`]: worker leases on teacher endpoints (fleet-shared rate limits).
//! - [`locks`]: session advisory locks on a connection of their own (the acting coordinator, a
//!   batch endpoint's submitter).
//! - [`lifecycle`]: pause and resume, budgets, priorities, the run list, snapshots, corpus diffs.
//! - [`incremental`]: reads for incremental planning: the dataset's previous completed run and
//!   its tasks in one stream, item and review content for fingerprints, token averages.
//! - [`browse`]: the corpus browser's reads: a run's tasks in filtered keyset pages, one task
//!   with its output, mark, attempts and upstream tasks.
//! - [`audit`]: audit marks on ledger outputs (per output key), review samples, audited counts.
//! - [`export`]: the student export's reads: done reasoning tasks in keyset pages, with the items
//!   and profile outputs of each page.
//!
//! Each module above but `error` and `pool` holds one aggregate's queries as the methods of one
//! small `Copy` type borrowing the pool, handed out by the [`Store`] handle (`store.runs()`,
//! `store.tasks()`, `store.finishing()`, `store.batches()`, ...; `retention` is
//! `store.pruning()`); `Store` itself only connects, migrates and hands them out.
//!
//! Queries are checked at run time (`sqlx::query`, `query_as`), not with the compile-time
//! macros: building needs no database and no committed `.sqlx/` cache. Integration tests cover
//! every query. Rows map by name (`sqlx::FromRow`) or, for aggregates and hot streams, into
//! typed tuples; vocabulary columns decode straight into core's enums (`core::vocab`).

pub mod audit;
pub mod batches;
pub mod browse;
pub mod datasets;
pub mod error;
pub mod export;
pub mod finish;
pub mod incremental;
pub mod leases;
pub mod lifecycle;
pub mod locks;
pub mod monitor;
pub mod planning;
pub mod pool;
pub mod retention;
pub mod runs;
pub mod tasks;

pub use error::StoreError;
pub use pool::Store;
