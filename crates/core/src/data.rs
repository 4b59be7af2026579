//! A dataset as the loaders produce it and the store writes it.
//!
//! Ids are dense (`0..n`) inside one dataset version; the source's own ids are kept as `ext_id`.

use serde::{Deserialize, Serialize};

/// Which prompt templates and sampling defaults fit a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Movielens,
    Amazon,
    Generic,
}

crate::vocabulary!(Family, "dataset family", {
    Movielens => "movielens",
    Amazon => "amazon",
    Generic => "generic",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: i32,
    pub ext_id: String,
    pub attrs: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: i32,
    pub ext_id: String,
    pub title: String,
    /// genres (list), year, and whatever else the source knows.
    pub attrs: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    pub user_id: i32,
    pub item_id: i32,
    pub rating: f32,
    pub ts: i64,
    pub review: Option<serde_json::Value>,
}

/// What identifies a dataset being ingested, known before its rows: a streaming ingest checks
/// it (an unchanged content hash writes nothing) before the first interaction arrives.
#[derive(Debug, Clone)]
pub struct DatasetHeader {
    pub name: String,
    pub format: String,
    pub family: Family,
    pub content_hash: String,
    pub source: serde_json::Value,
}

/// Everything one ingest writes, in one transaction.
#[derive(Debug, Clone)]
pub struct NewDataset {
    pub name: String,
    pub format: String,
    pub family: Family,
    pub content_hash: String,
    pub source: serde_json::Value,
    pub users: Vec<User>,
    pub items: Vec<Item>,
    pub interactions: Vec<Interaction>,
}

impl NewDataset {
    /// Its identity, as a streaming ingest announces it.
    pub fn header(&self) -> DatasetHeader {
        DatasetHeader {
            name: self.name.clone(),
            format: self.format.clone(),
            family: self.family,
            content_hash: self.content_hash.clone(),
            source: self.source.clone(),
        }
    }
}
