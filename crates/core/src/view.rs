//! Items as prompt templates see them. The worker (teacher prompts) and the trainer (student
//! prompts) build the same view, so both prompts describe an item with the same words.

use serde::Serialize;

/// An item as templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct ItemView {
    pub title: String,
    pub genres: Vec<String>,
    pub year: Option<i64>,
    pub tags: Vec<String>,
    pub brand: Option<String>,
    pub price: Option<String>,
    pub description: Option<String>,
    pub categories: Vec<String>,
    /// The item's profile (item-profile stage output), when there is one.
    pub profile: Option<String>,
    pub liked: Option<bool>,
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|g| g.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl ItemView {
    /// From an item's title and stored attributes (`items.attrs`).
    pub fn new(title: &str, attrs: &serde_json::Value, profile: Option<String>, liked: Option<bool>) -> Self {
        let a = attrs;
        Self {
            title: title.to_string(),
            genres: strings(&a["genres"]),
            year: a["year"].as_i64(),
            tags: strings(&a["tags"]),
            brand: text(&a["brand"]),
            price: text(&a["price"]),
            description: text(&a["description"]),
            categories: strings(&a["categories"]),
            profile,
            liked,
        }
    }
}
