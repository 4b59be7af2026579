//! The vocabulary (`core::vocab`) against the real Postgres: every word goes into a TEXT value and
//! comes back as itself, a name the code does not know is a decode error that names the column
//! and the word, and every column Postgres constrains takes exactly the words the code knows
//! (ARCHITECTURE.md: "Postgres constrains each of these columns to the same names").

use reasonrec_core::audit::Verdict;
use reasonrec_core::data::Family;
use reasonrec_core::settings::RunRoute;
use reasonrec_core::stage::{RunState, Split, Stage, TaskState};
use reasonrec_store::batches::BatchState;
use reasonrec_tests::TestEnv;
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::fmt::Display;

/// Each word bound as a parameter reads back as the same word, spelled as `Display` spells it.
async fn round_trips<T>(pool: &PgPool, words: &[T]) -> anyhow::Result<()>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + for<'q> sqlx::Encode<'q, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
        + Copy
        + PartialEq
        + std::fmt::Debug
        + Display
        + Send
        + Unpin
        + 'static,
{
    for &word in words {
        let (back, spelled): (T, String) =
            sqlx::query_as("SELECT $1::text, $1::text").bind(word).bind(word).fetch_one(pool).await?;
        assert_eq!(back, word);
        assert_eq!(spelled, word.to_string());
    }
    Ok(())
}

/// The words the `column IN (...)` check of `table` allows, as Postgres states the constraint.
async fn allowed(pool: &PgPool, table: &str, column: &str) -> anyhow::Result<BTreeSet<String>> {
    let defs: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint
         WHERE conrelid = $1::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%(' || $2 || ' = ANY%'",
    )
    .bind(table)
    .bind(column)
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(defs.len() == 1, "{table}.{column}: one IN check expected, found {defs:?}");
    // CHECK ((state = ANY (ARRAY['waiting'::text, 'ready'::text, ...]))): the quoted words.
    Ok(defs[0].split('\'').skip(1).step_by(2).map(String::from).collect())
}

fn names<T: Display>(words: &[T]) -> BTreeSet<String> {
    words.iter().map(ToString::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_word_round_trips_and_postgres_allows_exactly_the_words_the_code_knows() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pool = env.store.pool();
    round_trips(pool, &Stage::ALL).await?;
    round_trips(pool, &TaskState::ALL).await?;
    round_trips(pool, &RunState::ALL).await?;
    round_trips(pool, &Split::ALL).await?;
    round_trips(pool, &Family::ALL).await?;
    round_trips(pool, &Verdict::ALL).await?;
    round_trips(pool, &RunRoute::ALL).await?;
    round_trips(pool, &BatchState::ALL).await?;

    assert_eq!(allowed(pool, "tasks", "stage").await?, names(&Stage::ALL));
    assert_eq!(allowed(pool, "tasks", "state").await?, names(&TaskState::ALL));
    assert_eq!(allowed(pool, "tasks", "split").await?, names(&Split::ALL));
    assert_eq!(allowed(pool, "runs", "state").await?, names(&RunState::ALL));
    assert_eq!(allowed(pool, "runs", "route").await?, names(&RunRoute::ALL));
    assert_eq!(allowed(pool, "datasets", "family").await?, names(&Family::ALL));
    assert_eq!(allowed(pool, "audit_marks", "verdict").await?, names(&Verdict::ALL));
    assert_eq!(allowed(pool, "batches", "state").await?, names(&BatchState::ALL));
    env.cleanup().await
}

#[derive(Debug, sqlx::FromRow)]
#[allow(dead_code)] // read only to be refused
struct SplitRow {
    split: Split,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_word_is_an_error_naming_its_column_and_the_known_words() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pool = env.store.pool();
    let err = match sqlx::query_as::<_, SplitRow>("SELECT 'dev'::text AS split").fetch_one(pool).await {
        Ok(row) => anyhow::bail!("an unknown split was read as {row:?}"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("\"split\""), "the column is named: {err}");
    assert!(err.contains("unknown split \"dev\" (one of: train, validation, test)"), "{err}");
    // NULL is no word at all: an optional column reads it as None, a required one refuses it.
    let none: Option<Split> = sqlx::query_scalar("SELECT NULL::text").fetch_one(pool).await?;
    assert_eq!(none, None);
    assert!(sqlx::query_scalar::<_, Split>("SELECT NULL::text").fetch_one(pool).await.is_err());
    // Nor does Postgres store one: the column's check refuses it.
    let stored = sqlx::query(
        "INSERT INTO datasets (name, version, format, family, content_hash) VALUES ('x', 1, 'f', 'films', 'h')",
    )
    .execute(pool)
    .await;
    assert!(stored.is_err_and(|e| e.to_string().contains("datasets_family_known")));
    env.cleanup().await
}
