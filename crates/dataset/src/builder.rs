//! Accumulates users, items and interactions with dense ids, shared by every loader.

use crate::text::{SourceFile, content_hash, describe};
use reasonrec_core::data::{Family, Interaction, Item, NewDataset, User};
use std::collections::{HashMap, HashSet};

#[derive(Default)]
pub struct DatasetBuilder {
    users: Vec<User>,
    user_ids: HashMap<String, i32>,
    items: Vec<Item>,
    item_ids: HashMap<String, i32>,
    interactions: Vec<Interaction>,
    seen: HashSet<(i32, i32, i64)>,
    duplicates: usize,
}

impl DatasetBuilder {
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

    /// Adds an interaction; an exact repeat of (user, item, time) is dropped and counted.
    pub fn interaction(&mut self, user_id: i32, item_id: i32, rating: f32, ts: i64, review: Option<serde_json::Value>) {
        if !self.seen.insert((user_id, item_id, ts)) {
            self.duplicates += 1;
            return;
        }
        self.interactions.push(Interaction { user_id, item_id, rating, ts, review });
    }

    pub fn interaction_count(&self) -> usize {
        self.interactions.len()
    }

    pub fn finish(self, name: &str, format: &str, family: Family, files: &[&SourceFile]) -> NewDataset {
        let mut source = serde_json::json!({"files": describe(files)});
        source["duplicates_dropped"] = serde_json::json!(self.duplicates);
        NewDataset {
            name: name.to_string(),
            format: format.to_string(),
            family,
            content_hash: content_hash(files),
            source,
            users: self.users,
            items: self.items,
            interactions: self.interactions,
        }
    }
}
