//! Ingest against the real database: all or nothing, idempotent, versioned by content.

use reasonrec_dataset::generate::{GenerateSpec, generate_ml1m};
use reasonrec_store::datasets::IngestOutcome;
use reasonrec_tests::{TestEnv, sample_dir};
use std::path::PathBuf;

fn tmp_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rr-ingest-{tag}-{}", uuid::Uuid::new_v4().simple()))
}

async fn datasets(env: &TestEnv) -> anyhow::Result<(i64, i64)> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM datasets").fetch_one(env.store.pool()).await?;
    let r: i64 = sqlx::query_scalar("SELECT count(*) FROM interactions").fetch_one(env.store.pool()).await?;
    Ok((n, r))
}

#[tokio::test]
async fn the_sample_loads_once_and_reingesting_is_a_no_op() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let ds = reasonrec_dataset::load("ml-1m", &sample_dir(), "sample")?;
    let first = env.store.datasets().ingest(&ds).await?;
    assert!(matches!(first, IngestOutcome::Created { version: 1, .. }), "{first:?}");
    let again = env.store.datasets().ingest(&ds).await?;
    assert_eq!(again, IngestOutcome::Unchanged { dataset_id: first.dataset_id(), version: 1 });
    let row = env.store.datasets().find("sample", None).await?;
    assert_eq!((row.n_users, row.n_items, row.n_interactions), (300, 400, ds.interactions.len() as i64));
    assert_eq!(datasets(&env).await?, (1, ds.interactions.len() as i64));
    // Latin-1 titles arrive as proper text.
    let accented: i64 =
        sqlx::query_scalar("SELECT count(*) FROM items WHERE title ~ '[éüã]'").fetch_one(env.store.pool()).await?;
    assert!(accented > 0, "the sample has accented titles, decoded from Latin-1");
    env.cleanup().await
}

#[tokio::test]
async fn changed_files_make_a_new_version() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let dir = tmp_dir("v");
    generate_ml1m(&dir, GenerateSpec { users: 20, items: 30, ..GenerateSpec::default() })?;
    let v1 = env.store.datasets().ingest(&reasonrec_dataset::load("ml-1m", &dir, "d")?).await?;
    let mut ratings = std::fs::read_to_string(dir.join("ratings.dat"))?;
    ratings.push_str("1::1::5::1100000000\n");
    std::fs::write(dir.join("ratings.dat"), ratings)?;
    let v2 = env.store.datasets().ingest(&reasonrec_dataset::load("ml-1m", &dir, "d")?).await?;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(v1, IngestOutcome::Created { version: 1, .. }));
    assert!(matches!(v2, IngestOutcome::Created { version: 2, .. }), "{v2:?}");
    assert_eq!(env.store.datasets().find("d", None).await?.version, 2);
    assert_eq!(env.store.datasets().find("d", Some(1)).await?.version, 1);
    env.cleanup().await
}

#[tokio::test]
async fn a_bad_line_names_file_line_and_field_and_writes_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.ingest_sample().await?;
    let before = datasets(&env).await?;
    let dir = tmp_dir("bad");
    generate_ml1m(&dir, GenerateSpec { users: 20, items: 30, ..GenerateSpec::default() })?;
    let mut lines: Vec<String> = std::fs::read_to_string(dir.join("ratings.dat"))?.lines().map(String::from).collect();
    lines[41] = "3::7::9::978300760".into();
    std::fs::write(dir.join("ratings.dat"), lines.join("\n"))?;
    let err = reasonrec_dataset::load("ml-1m", &dir, "bad").err().map(|e| e.to_string()).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(err.contains("ratings.dat:42: field `rating`"), "{err}");
    assert_eq!(datasets(&env).await?, before, "nothing of the bad dataset was stored");

    // A failure inside the database transaction (a duplicate user id slipped past the parser)
    // also leaves nothing behind.
    let mut ds = reasonrec_dataset::load("ml-1m", &sample_dir(), "broken")?;
    ds.users[1].id = ds.users[0].id;
    assert!(env.store.datasets().ingest(&ds).await.is_err());
    assert_eq!(datasets(&env).await?, before);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(env.store.pool()).await?;
    assert_eq!(n, 300);
    env.cleanup().await
}

#[tokio::test]
async fn deleting_a_version_removes_its_rows_and_is_refused_while_a_run_uses_it() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let id = env.ingest_sample().await?;
    let dir = tmp_dir("del");
    generate_ml1m(&dir, GenerateSpec { users: 10, items: 20, ..GenerateSpec::default() })?;
    let other = env.store.datasets().ingest(&reasonrec_dataset::load("ml-1m", &dir, "other")?).await?.dataset_id();
    let _ = std::fs::remove_dir_all(&dir);
    env.store.datasets().delete(other).await?;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM interactions WHERE dataset_id = $1")
        .bind(other)
        .fetch_one(env.store.pool())
        .await?;
    assert_eq!(left, 0);
    let sample_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM interactions WHERE dataset_id = $1")
        .bind(id)
        .fetch_one(env.store.pool())
        .await?;
    assert!(sample_rows > 0, "the other dataset is untouched");
    reasonrec_coordinator::create_run(&env.store, &env.settings, "sample").await?;
    assert!(env.store.datasets().delete(id).await.is_err(), "a run still refers to it");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM interactions WHERE dataset_id = $1")
        .bind(id)
        .fetch_one(env.store.pool())
        .await?;
    assert_eq!(kept, sample_rows, "the refused delete rolled back whole");
    env.cleanup().await
}
