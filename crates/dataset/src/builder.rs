//! Accumulates users, items and interactions with dense ids, shared by every loader.
//!
//! Interactions are kept (for [`crate::load`]) or handed on in batches as they are parsed (for
//! [`crate::load_streaming`]): then memory holds users and items only, and exact repeats are
//! dropped by the writer.

use crate::error::DatasetError;
use crate::text::{SourceFile, content_hash, describe};
use reasonrec_core::data::{DatasetHeader, Family, Interaction, Item, NewDataset, User};
use std::collections::{HashMap, HashSet};

/// Where a streaming load sends what it parses.
pub trait InteractionSink: Send {
    /// The dataset's identity (every file checked and hashed), before the first interaction.
    fn start(&mut self, header: DatasetHeader) -> Result<(), DatasetError>;
    /// The next interactions, in file order.
    fn rows(&mut self, rows: Vec<Interaction>) -> Result<(), DatasetError>;
}

/// Interactions handed to a sink at a time.
pub const STREAM_BATCH: usize = 20_000;

#[derive(Default)]
pub struct DatasetBuilder {
    users: Vec<User>,
    user_ids: HashMap<String, i32>,
    items: Vec<Item>,
    item_ids: HashMap<String, i32>,
    interactions: Vec<Interaction>,
    seen: HashSet<(i32, i32, i64)>,
    duplicates: usize,
    sink: Option<Box<dyn InteractionSink>>,
    count: usize,
}

impl DatasetBuilder {
    /// A builder that hands interactions to `sink` instead of keeping them.
    pub fn streaming(sink: Box<dyn InteractionSink>) -> Self {
        Self { sink: Some(sink), ..Self::default() }
    }

    /// Called by a loader once every file is checked, before the first interaction: a streaming
    /// builder tells its sink what dataset follows.
    pub fn start(
        &mut self,
        name: &str,
        format: &str,
        family: Family,
        files: &[&SourceFile],
    ) -> Result<(), DatasetError> {
        match &mut self.sink {
            Some(sink) => sink.start(header(name, format, family, files)),
            None => Ok(()),
        }
    }

    /// Adds a user declared by the source; `Err` when the id was declared before.
    pub fn declare_user(&mut self, ext_id: &str, attrs: serde_json::Value) -> Result<i32, String> {
        if self.user_ids.contains_key(ext_id) {
            return Err(format!("duplicate user id {ext_id:?}"));
        }
        Ok(self.user(ext_id, attrs))
    }

    /// The user's id, adding it (with `attrs`) the first time it is seen.
    pub fn user(&mut self, ext_id: &str, attrs: serde_json::Value) -> i32 {
        if let Some(&id) = self.user_ids.get(ext_id) {
            return id;
        }
        let id = self.users.len() as i32;
        self.users.push(User { id, ext_id: ext_id.to_string(), attrs });
        self.user_ids.insert(ext_id.to_string(), id);
        id
    }

    pub fn user_id(&self, ext_id: &str) -> Option<i32> {
        self.user_ids.get(ext_id).copied()
    }

    /// Adds an item declared by the source; `Err` when the id was declared before.
    pub fn declare_item(&mut self, ext_id: &str, title: &str, attrs: serde_json::Value) -> Result<i32, String> {
        if self.item_ids.contains_key(ext_id) {
            return Err(format!("duplicate item id {ext_id:?}"));
        }
        Ok(self.item(ext_id, title, attrs))
    }

    /// The item's id, adding it the first time it is seen.
    pub fn item(&mut self, ext_id: &str, title: &str, attrs: serde_json::Value) -> i32 {
        if let Some(&id) = self.item_ids.get(ext_id) {
            return id;
        }
        let id = self.items.len() as i32;
        self.items.push(Item { id, ext_id: ext_id.to_string(), title: title.to_string(), attrs });
        self.item_ids.insert(ext_id.to_string(), id);
        id
    }

    pub fn item_id(&self, ext_id: &str) -> Option<i32> {
        self.item_ids.get(ext_id).copied()
    }

    pub fn item_mut(&mut self, id: i32) -> Option<&mut Item> {
        self.items.get_mut(id as usize)
    }

    /// Adds an interaction. Kept: an exact repeat of (user, item, time) is dropped and counted
    /// here. Streamed: it goes to the sink in batches, and the writer drops repeats.
    pub fn interaction(
        &mut self,
        user_id: i32,
        item_id: i32,
        rating: f32,
        ts: i64,
        review: Option<serde_json::Value>,
    ) -> Result<(), DatasetError> {
        if self.sink.is_none() && !self.seen.insert((user_id, item_id, ts)) {
            self.duplicates += 1;
            return Ok(());
        }
        self.count += 1;
        self.interactions.push(Interaction { user_id, item_id, rating, ts, review });
        if let Some(sink) = &mut self.sink
            && self.interactions.len() >= STREAM_BATCH
        {
            sink.rows(std::mem::take(&mut self.interactions))?;
        }
        Ok(())
    }

    /// Interactions added so far (repeats dropped here not counted).
    pub fn interaction_count(&self) -> usize {
        self.count
    }

    /// Users, items and the dataset's identity; the interactions too unless they were streamed
    /// (then the last batch goes to the sink now, and `interactions` is empty).
    pub fn finish(
        mut self,
        name: &str,
        format: &str,
        family: Family,
        files: &[&SourceFile],
    ) -> Result<NewDataset, DatasetError> {
        if let Some(sink) = &mut self.sink
            && !self.interactions.is_empty()
        {
            sink.rows(std::mem::take(&mut self.interactions))?;
        }
        let h = header(name, format, family, files);
        let mut source = h.source;
        source["duplicates_dropped"] = serde_json::json!(self.duplicates);
        Ok(NewDataset {
            name: h.name,
            format: h.format,
            family,
            content_hash: h.content_hash,
            source,
            users: self.users,
            items: self.items,
            interactions: self.interactions,
        })
    }
}

fn header(name: &str, format: &str, family: Family, files: &[&SourceFile]) -> DatasetHeader {
    DatasetHeader {
        name: name.to_string(),
        format: format.to_string(),
        family,
        content_hash: content_hash(files),
        source: serde_json::json!({"files": describe(files)}),
    }
}
