//! Versioned prompt templates.
//!
//! A template is a file `prompts/<stage>.<family>.j2` (minijinja). Its rendered text is split into
//! chat messages by marker lines `[system]` and `[user]`. The template's version is a hash of its
//! bytes, so editing a prompt changes the content key of everything rendered from it.
//!
//! Text from the data (titles, reviews) goes through the `data(n)` filter: control characters
//! and the «» delimiters are removed, whitespace collapsed, and the text cut to `n` characters.
//! Templates put it between « and », so a title can never pose as an instruction line.

use crate::error::CoreError;
use crate::stage::Stage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A prompt ready to send, with what identifies the template it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderedPrompt {
    pub template: String,
    pub version: String,
    pub messages: Vec<ChatMessage>,
}

#[derive(Debug, Clone)]
struct Template {
    path: PathBuf,
    version: String,
}

/// All templates of a prompt directory, loaded and parsed once at start-up.
#[derive(Debug, Clone)]
pub struct PromptLibrary {
    dir: PathBuf,
    templates: BTreeMap<String, Template>,
    env: minijinja::Environment<'static>,
}

/// Hex of the first 8 bytes of SHA-256 of the template bytes.
pub fn template_version(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..8])
}

/// The `data(n)` filter: make a piece of data safe to embed between « and ».
pub fn clean_data(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut last_space = true;
    let mut count = 0;
    for ch in text.chars() {
        let ch = if ch.is_control() || ch.is_whitespace() { ' ' } else { ch };
        if ch == '«' || ch == '»' {
            continue;
        }
        if ch == ' ' {
            if last_space {
                continue;
            }
            last_space = true;
        } else {
            last_space = false;
        }
        if count == max_chars {
            out.truncate(out.trim_end().len());
            out.push('…');
            return out;
        }
        out.push(ch);
        count += 1;
    }
    out.trim_end().to_string()
}

impl PromptLibrary {
    pub fn load(dir: &Path) -> Result<Self, CoreError> {
        let io = |source| CoreError::Io { path: dir.to_path_buf(), source };
        let mut templates = BTreeMap::new();
        let mut env = Self::environment();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("j2") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
                continue;
            };
            let bytes = std::fs::read(&path).map_err(|source| CoreError::Io { path: path.clone(), source })?;
            let version = template_version(&bytes);
            let source = String::from_utf8(bytes)
                .map_err(|e| CoreError::Template { path: path.clone(), message: format!("not UTF-8: {e}") })?;
            // Fail at load time, not at the first task, on a syntax error.
            env.add_template_owned(name.clone(), source)
                .map_err(|e| CoreError::Template { path: path.clone(), message: e.to_string() })?;
            templates.insert(name, Template { path, version });
        }
        Ok(Self { dir: dir.to_path_buf(), templates, env })
    }

    fn environment() -> minijinja::Environment<'static> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_filter("data", |value: String, n: usize| clean_data(&value, n));
        env
    }

    /// Template name for a stage and dataset family, falling back to `<stage>.default`.
    pub fn template_name(&self, stage: Stage, family: &str) -> Result<String, CoreError> {
        self.kind_template_name(stage.as_str(), family)
    }

    /// Template name for a kind of prompt (a stage, or `student`) and a dataset family, falling
    /// back to `<kind>.default`.
    pub fn kind_template_name(&self, kind: &str, family: &str) -> Result<String, CoreError> {
        let specific = format!("{kind}.{family}");
        if self.templates.contains_key(&specific) {
            return Ok(specific);
        }
        let fallback = format!("{kind}.default");
        if self.templates.contains_key(&fallback) {
            return Ok(fallback);
        }
        Err(CoreError::TemplateMissing { stage: kind.to_string(), family: family.to_string(), dir: self.dir.clone() })
    }

    /// The version (content hash) of a template by name.
    pub fn version_of(&self, name: &str) -> Option<&str> {
        self.templates.get(name).map(|t| t.version.as_str())
    }

    pub fn render<C: Serialize>(&self, stage: Stage, family: &str, ctx: &C) -> Result<RenderedPrompt, CoreError> {
        self.render_kind(stage.as_str(), family, ctx)
    }

    /// Renders the template of `kind` (a stage name, or `student`) for `family`.
    pub fn render_kind<C: Serialize>(&self, kind: &str, family: &str, ctx: &C) -> Result<RenderedPrompt, CoreError> {
        let name = self.kind_template_name(kind, family)?;
        let Some(t) = self.templates.get(&name) else {
            return Err(CoreError::TemplateMissing {
                stage: kind.to_string(),
                family: family.to_string(),
                dir: self.dir.clone(),
            });
        };
        let terr = |e: minijinja::Error| CoreError::Template { path: t.path.clone(), message: e.to_string() };
        let tmpl = self.env.get_template(&name).map_err(terr)?;
        let text = tmpl.render(ctx).map_err(terr)?;
        let messages =
            split_messages(&text).map_err(|message| CoreError::Template { path: t.path.clone(), message })?;
        Ok(RenderedPrompt { template: name, version: t.version.clone(), messages })
    }
}

/// Splits rendered text on `[system]` / `[user]` / `[assistant]` marker lines.
fn split_messages(text: &str) -> Result<Vec<ChatMessage>, String> {
    let mut messages: Vec<ChatMessage> = Vec::new();
    for line in text.lines() {
        let marker = match line.trim() {
            "[system]" => Some("system"),
            "[user]" => Some("user"),
            "[assistant]" => Some("assistant"),
            _ => None,
        };
        match (marker, messages.last_mut()) {
            (Some(role), _) => messages.push(ChatMessage { role: role.into(), content: String::new() }),
            (None, Some(m)) => {
                m.content.push_str(line);
                m.content.push('\n');
            }
            (None, None) if line.trim().is_empty() => {}
            (None, None) => return Err("text before the first [system]/[user] marker".into()),
        }
    }
    for m in &mut messages {
        m.content = m.content.trim().to_string();
    }
    if !messages.iter().any(|m| m.role == "user" && !m.content.is_empty()) {
        return Err("rendered prompt has no non-empty [user] message".into());
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_filter_strips_delimiters_controls_and_caps() {
        assert_eq!(clean_data("  Heat\n(1995) «x»\t ", 100), "Heat (1995) x");
        assert_eq!(clean_data("abcdefgh", 4), "abcd…");
        assert_eq!(clean_data("ab", 2), "ab");
    }

    #[test]
    fn splits_messages_and_requires_user() {
        let msgs = split_messages("[system]\nbe brief\n[user]\nhello\nworld\n").unwrap_or_default();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[1].content, "hello\nworld");
        assert!(split_messages("[system]\nonly system").is_err());
        assert!(split_messages("stray\n[user]\nx").is_err());
    }

    #[test]
    fn renders_with_version_and_fallback() {
        let dir = std::env::temp_dir().join(format!("rr-prompts-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("reasoning.default.j2"), "[user]\nItem «{{ title | data(5) }}»\n");
        let lib = PromptLibrary::load(&dir);
        assert!(lib.is_ok(), "{lib:?}");
        let Ok(lib) = lib else { return };
        let r = lib.render(Stage::Reasoning, "movielens", &serde_json::json!({"title": "Toy Story"}));
        let Ok(r) = r else { panic!("{r:?}") };
        assert_eq!(r.template, "reasoning.default");
        assert_eq!(r.messages[0].content, "Item «Toy S…»");
        assert_eq!(r.version, template_version(b"[user]\nItem \xc2\xab{{ title | data(5) }}\xc2\xbb\n"));
        assert!(lib.render(Stage::ItemProfile, "movielens", &serde_json::json!({})).is_err());
        // Undefined variables are errors, not empty strings.
        assert!(lib.render(Stage::Reasoning, "x", &serde_json::json!({})).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
