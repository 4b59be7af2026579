//! JSON-lines sources: Amazon 2018 reviews (+ optional meta) and the generic `jsonl` format.
//!
//! Generic format (a directory):
//! - `items.jsonl` (required): `{"id": "i1", "title": "…", "attrs": {…}}` — `attrs` optional,
//!   free-form (e.g. `genres`, `brand`, `price`, `description`);
//! - `interactions.jsonl` (required): `{"user": "u1", "item": "i1", "rating": 4.5, "ts": 1700000000,
//!   "review": {"text": "…"}}` — `review` optional; users not declared are created;
//! - `users.jsonl` (optional): `{"id": "u1", "attrs": {…}}`.
//!
//! Ids may be strings or integers. Blank lines are skipped; exact repeats of
//! (user, item, ts) are dropped and counted.

use crate::builder::DatasetBuilder;
use crate::error::DatasetError;
use crate::text::{Encoding, SourceFile, read_source};
use reasonrec_core::data::{Family, NewDataset};
use serde_json::Value;
use std::path::{Path, PathBuf};

struct JsonLines<'a> {
    file: &'a SourceFile,
}

impl JsonLines<'_> {
    /// Calls `f` with each non-blank line as (line, JSON object), read one at a time.
    fn each(&self, mut f: impl FnMut(usize, Value) -> Result<(), DatasetError>) -> Result<(), DatasetError> {
        self.file.for_each_line(|line, l| {
            if l.trim().is_empty() {
                return Ok(());
            }
            let v: Value =
                serde_json::from_str(l).map_err(|e| self.err(line, "json", format!("not valid JSON: {e}")))?;
            if !v.is_object() {
                return Err(self.err(line, "json", "each line must be a JSON object".into()));
            }
            f(line, v)
        })
    }

    fn err(&self, line: usize, field: &'static str, message: String) -> DatasetError {
        DatasetError::Parse { path: self.file.path.clone(), line, field, message }
    }

    /// A required id: a non-empty string or an integer.
    fn id(&self, line: usize, v: &Value, field: &'static str) -> Result<String, DatasetError> {
        match v.get(field) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            Some(other) => {
                Err(self.err(line, field, format!("expected a non-empty string or integer id, got {other}")))
            }
            None => Err(self.err(line, field, "missing".into())),
        }
    }

    fn rating(&self, line: usize, v: &Value, field: &'static str) -> Result<f32, DatasetError> {
        v.get(field)
            .and_then(Value::as_f64)
            .filter(|r| (0.0..=10.0).contains(r))
            .map(|r| r as f32)
            .ok_or_else(|| self.err(line, field, format!("expected a rating number, got {}", show(v.get(field)))))
    }

    fn ts(&self, line: usize, v: &Value, field: &'static str) -> Result<i64, DatasetError> {
        v.get(field)
            .and_then(|t| t.as_i64().or_else(|| t.as_str().and_then(|s| s.trim().parse().ok())))
            .filter(|t| *t >= 0)
            .ok_or_else(|| self.err(line, field, format!("expected unix seconds, got {}", show(v.get(field)))))
    }
}

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "nothing".to_string(), Value::to_string)
}

/// First existing file among `names` in `dir`.
fn find(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

fn required(dir: &Path, names: &[&str]) -> Result<PathBuf, DatasetError> {
    find(dir, names)
        .ok_or_else(|| DatasetError::Invalid(format!("{}: none of {} found", dir.display(), names.join(", "))))
}

/// Text of a string or a list of strings (Amazon descriptions come both ways), trimmed.
fn text_or_list(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Value::Array(parts) => {
            let joined: Vec<&str> =
                parts.iter().filter_map(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).collect();
            (!joined.is_empty()).then(|| joined.join(" "))
        }
        _ => None,
    }
}

/// Categories as a flat list: `["A", "B"]` or `[["A", "B"], ["C"]]`.
fn categories(v: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(Value::Array(items)) = v {
        for it in items {
            match it {
                Value::String(s) if !s.trim().is_empty() => out.push(s.trim().to_string()),
                Value::Array(inner) => out.extend(inner.iter().filter_map(Value::as_str).map(|s| s.trim().to_string())),
                _ => {}
            }
        }
    }
    out.dedup();
    out
}

/// Amazon 2018: `reviews.jsonl` (or `.json`) and optional `meta.jsonl` in `dir`.
pub fn load_amazon(dir: &Path, name: &str, mut b: DatasetBuilder) -> Result<NewDataset, DatasetError> {
    let reviews_path = required(dir, &["reviews.jsonl", "reviews.json"])?;
    let meta_path = find(dir, &["meta.jsonl", "meta.json"]);
    let reviews_file = read_source(&reviews_path, Encoding::Utf8)?;
    let meta_file = meta_path.as_deref().map(|p| read_source(p, Encoding::Utf8)).transpose()?;
    let mut files = vec![&reviews_file];
    files.extend(meta_file.as_ref());
    b.start(name, "amazon", Family::Amazon, &files)?;

    if let Some(file) = &meta_file {
        let src = JsonLines { file };
        src.each(|line, v| {
            let asin = src.id(line, &v, "asin")?;
            let title = v.get("title").and_then(Value::as_str).map(str::trim).filter(|t| !t.is_empty());
            let price = match v.get("price") {
                Some(Value::String(s)) if !s.trim().is_empty() => Some(Value::String(s.trim().to_string())),
                Some(Value::Number(n)) => Some(Value::Number(n.clone())),
                _ => None,
            };
            let cats = categories(v.get("category").or_else(|| v.get("categories")));
            let attrs = serde_json::json!({
                "brand": v.get("brand").and_then(Value::as_str).map(str::trim),
                "price": price,
                "description": text_or_list(v.get("description")),
                "categories": cats,
                "meta": true,
            });
            b.declare_item(&asin, title.unwrap_or(&asin), attrs).map_err(|m| src.err(line, "asin", m))?;
            Ok(())
        })?;
    }

    let src = JsonLines { file: &reviews_file };
    src.each(|line, v| {
        let reviewer = src.id(line, &v, "reviewerID")?;
        let asin = src.id(line, &v, "asin")?;
        let rating = src.rating(line, &v, "overall")?;
        let ts = src.ts(line, &v, "unixReviewTime")?;
        let attrs = match v.get("reviewerName").and_then(Value::as_str) {
            Some(n) => serde_json::json!({"name": n}),
            None => serde_json::json!({}),
        };
        let user = b.user(&reviewer, attrs);
        // Items without meta keep what the reviews give: the asin as title.
        let item = b.item(&asin, &asin, serde_json::json!({"meta": false}));
        let review = serde_json::json!({
            "text": v.get("reviewText").and_then(Value::as_str),
            "summary": v.get("summary").and_then(Value::as_str),
            "verified": v.get("verified").and_then(Value::as_bool),
            "style": v.get("style"),
        });
        b.interaction(user, item, rating, ts, Some(review))
    })?;
    if b.interaction_count() == 0 {
        return Err(DatasetError::Invalid(format!("{}: no reviews", reviews_path.display())));
    }
    b.finish(name, "amazon", Family::Amazon, &files)
}

/// The generic format described at the top of this module.
pub fn load_generic(dir: &Path, name: &str, mut b: DatasetBuilder) -> Result<NewDataset, DatasetError> {
    let items_path = required(dir, &["items.jsonl"])?;
    let inter_path = required(dir, &["interactions.jsonl"])?;
    let users_path = find(dir, &["users.jsonl"]);
    let items_file = read_source(&items_path, Encoding::Utf8)?;
    let inter_file = read_source(&inter_path, Encoding::Utf8)?;
    let users_file = users_path.as_deref().map(|p| read_source(p, Encoding::Utf8)).transpose()?;
    let mut files = vec![&items_file, &inter_file];
    files.extend(users_file.as_ref());
    b.start(name, "jsonl", Family::Generic, &files)?;

    if let Some(file) = &users_file {
        let src = JsonLines { file };
        src.each(|line, v| {
            let id = src.id(line, &v, "id")?;
            let attrs = v.get("attrs").cloned().unwrap_or_else(|| serde_json::json!({}));
            b.declare_user(&id, attrs).map_err(|m| src.err(line, "id", m))?;
            Ok(())
        })?;
    }
    let src = JsonLines { file: &items_file };
    src.each(|line, v| {
        let id = src.id(line, &v, "id")?;
        let title =
            v.get("title").and_then(Value::as_str).map(str::trim).filter(|t| !t.is_empty()).ok_or_else(|| {
                src.err(line, "title", format!("expected a non-empty string, got {}", show(v.get("title"))))
            })?;
        let attrs = v.get("attrs").cloned().unwrap_or_else(|| serde_json::json!({}));
        if !attrs.is_object() {
            return Err(src.err(line, "attrs", "must be a JSON object".into()));
        }
        b.declare_item(&id, title, attrs).map_err(|m| src.err(line, "id", m))?;
        Ok(())
    })?;
    let src = JsonLines { file: &inter_file };
    src.each(|line, v| {
        let user_ext = src.id(line, &v, "user")?;
        let item_ext = src.id(line, &v, "item")?;
        let item = b
            .item_id(&item_ext)
            .ok_or_else(|| src.err(line, "item", format!("item {item_ext:?} is not in items.jsonl")))?;
        let rating = src.rating(line, &v, "rating")?;
        let ts = src.ts(line, &v, "ts")?;
        let user = b.user(&user_ext, serde_json::json!({}));
        b.interaction(user, item, rating, ts, v.get("review").cloned())
    })?;
    if b.interaction_count() == 0 {
        return Err(DatasetError::Invalid(format!("{}: no interactions", inter_path.display())));
    }
    b.finish(name, "jsonl", Family::Generic, &files)
}
