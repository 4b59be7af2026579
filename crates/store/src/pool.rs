//! Connection pool and migrations.

use crate::error::StoreError;
use reasonrec_core::settings::DatabaseSettings;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// A transaction on the store's pool.
pub(crate) type Tx<'c> = sqlx::Transaction<'c, sqlx::Postgres>;

/// Handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql");

impl Store {
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        // sqlx logs statements over a second as WARN. Ours that take that long are the bulk
        // ones (run counts, ANALYZE, planning inserts over millions of rows) and are expected
        // there: at a million tasks they printed a WARN every few seconds. They log at DEBUG;
        // a WARN or ERROR line means something is wrong.
        let options = PgConnectOptions::from_str(&settings.url)?
            .application_name("reasonrec")
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// Creates the configured database when it does not exist yet (used by `reasonrec migrate`,
    /// so a fresh server needs no manual `CREATE DATABASE`).
    pub async fn create_database_if_missing(settings: &DatabaseSettings) -> Result<bool, StoreError> {
        use sqlx::migrate::MigrateDatabase;
        if sqlx::Postgres::database_exists(&settings.url).await? {
            return Ok(false);
        }
        match sqlx::Postgres::create_database(&settings.url).await {
            Ok(()) => Ok(true),
            // Another process created it between the check and the create.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations in `sql/`. Only `reasonrec migrate` and the coordinator call this;
    /// workers never do.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Fails unless every migration is applied: workers check this at start-up.
    pub async fn ensure_migrated(&self) -> Result<(), StoreError> {
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&self.pool)
            .await
            .map_err(|_| StoreError::NotFound("schema: run `reasonrec migrate` first".into()))?;
        for m in MIGRATOR.iter() {
            if !applied.contains(&m.version) {
                return Err(StoreError::NotFound(format!(
                    "migration {} ({}) is not applied: run `reasonrec migrate`",
                    m.version, m.description
                )));
            }
        }
        Ok(())
    }

    /// One round trip (`SELECT 1`): for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The store's parts, one per aggregate (a module of this crate each): every query is a method of
/// one of them, e.g. `store.runs().get(id)`.
impl Store {
    pub fn audits(&self) -> crate::audit::Audits<'_> {
        crate::audit::Audits { store: self }
    }
    pub fn batches(&self) -> crate::batches::Batches<'_> {
        crate::batches::Batches { store: self }
    }
    pub fn browser(&self) -> crate::browse::Browser<'_> {
        crate::browse::Browser { store: self }
    }
    pub fn datasets(&self) -> crate::datasets::Datasets<'_> {
        crate::datasets::Datasets { store: self }
    }
    pub fn exports(&self) -> crate::export::Exports<'_> {
        crate::export::Exports { store: self }
    }
    pub fn finishing(&self) -> crate::finish::Finishing<'_> {
        crate::finish::Finishing { store: self }
    }
    pub fn incremental(&self) -> crate::incremental::Incremental<'_> {
        crate::incremental::Incremental { store: self }
    }
    pub fn leases(&self) -> crate::leases::Leases<'_> {
        crate::leases::Leases { store: self }
    }
    pub fn lifecycle(&self) -> crate::lifecycle::Lifecycles<'_> {
        crate::lifecycle::Lifecycles { store: self }
    }
    pub fn locks(&self) -> crate::locks::Locks<'_> {
        crate::locks::Locks { store: self }
    }
    pub fn monitor(&self) -> crate::monitor::Monitor<'_> {
        crate::monitor::Monitor { store: self }
    }
    pub fn planning(&self) -> crate::planning::Planning<'_> {
        crate::planning::Planning { store: self }
    }
    pub fn pruning(&self) -> crate::retention::Pruning<'_> {
        crate::retention::Pruning { store: self }
    }
    pub fn runs(&self) -> crate::runs::Runs<'_> {
        crate::runs::Runs { store: self }
    }
    pub fn tasks(&self) -> crate::tasks::Tasks<'_> {
        crate::tasks::Tasks { store: self }
    }
}
