//! Task fingerprints: SHA-256 over everything that determines a task's prompt, computed by the
//! planner from ids and content digests, without rendering (pure; a million tasks hash in
//! seconds).
//!
//! What goes in, per stage (each field length-prefixed or tagged, so no two inputs collide):
//! - every stage: [`FINGERPRINT_VERSION`], the stage, its template's name and version (the hash
//!   of the template file, [`PromptLibrary::version_of`]) and the prompt cap
//!   (`sampling.max_prompt_words`, `sampling.overlong`);
//! - item profile: the item's content digest ([`item_digest`]: title and attributes) and, when it
//!   has reviews, their digest and the item's id (the worker's review sample is seeded by it);
//! - user profile: per window entry, the item's digest, the like flag and the item profile's
//!   fingerprint (when that stage is on);
//! - reasoning: the label, the user profile's fingerprint, then history and target like a window;
//! - judge: its reasoning task's fingerprint (the judge's prompt shows what the reasoning prompt
//!   showed, plus the reasoning's answer, which changes only when the reasoning is redone).
//!
//! Not in it: the teacher. Which model and parameters made an output is read from the ledger row
//! (`outputs.model`, `outputs.params`) when an incremental run compares, so adding an endpoint or
//! keeping another teacher's answers (`regenerate.redo_other_teacher = false`) does not change
//! the fingerprints of the graph. Not in it either: raw ratings and user ids, which no prompt
//! shows (only like flags and the label are rendered).

use reasonrec_core::settings::{Overlong, SamplingSettings};
use reasonrec_core::stage::Stage;
use reasonrec_core::{CoreError, PromptLibrary};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub type Digest32 = [u8; 32];

/// Bump when the worker renders the same inputs differently (render code, `ItemView`, review
/// sampling): every fingerprint changes, so an incremental run redoes everything once.
pub const FINGERPRINT_VERSION: u64 = 1;

/// The template a stage renders with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateId {
    pub name: String,
    pub version: String,
}

/// Digest of an item as prompts see it: its title and its attributes (JSONB text, whose key
/// order Postgres fixes).
pub fn item_digest(title: &str, attrs_json: &str) -> Digest32 {
    let mut f = Feed(Sha256::new());
    f.str("item");
    f.str(title);
    f.str(attrs_json);
    f.finish()
}

/// One item of a window or history as a fingerprint sees it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub item: &'a Digest32,
    /// None for a reasoning target (its outcome is the task's label).
    pub liked: Option<bool>,
    /// The item profile's fingerprint, when the item-profile stage is on.
    pub profile: Option<&'a Digest32>,
}

struct Feed(Sha256);

impl Feed {
    fn u64(&mut self, v: u64) {
        self.0.update(v.to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.update(s.as_bytes());
    }

    fn opt(&mut self, d: Option<&Digest32>) {
        match d {
            None => self.0.update([0u8]),
            Some(d) => {
                self.0.update([1u8]);
                self.0.update(d);
            }
        }
    }

    fn flag(&mut self, b: Option<bool>) {
        self.0.update([match b {
            None => 0u8,
            Some(false) => 1,
            Some(true) => 2,
        }]);
    }

    fn entry(&mut self, e: &Entry<'_>) {
        self.0.update(e.item);
        self.flag(e.liked);
        self.opt(e.profile);
    }

    fn finish(self) -> Digest32 {
        self.0.finalize().into()
    }
}

/// Fingerprints of one run: the templates of its stages and its prompt cap are fixed.
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    templates: BTreeMap<Stage, TemplateId>,
    max_prompt_words: u64,
    overlong: Overlong,
}

impl Fingerprinter {
    /// The templates `stages` use for `family`; an error names a stage whose template is missing.
    pub fn new(
        prompts: &PromptLibrary,
        family: &str,
        stages: &[Stage],
        sampling: &SamplingSettings,
    ) -> Result<Self, CoreError> {
        let mut templates = BTreeMap::new();
        for &stage in stages {
            let name = prompts.template_name(stage, family)?;
            let version = prompts.version_of(&name).unwrap_or_default().to_string();
            templates.insert(stage, TemplateId { name, version });
        }
        Ok(Self { templates, max_prompt_words: sampling.max_prompt_words as u64, overlong: sampling.overlong })
    }

    /// Stage -> template, for the run's settings snapshot (the next incremental run compares).
    pub fn templates(&self) -> &BTreeMap<Stage, TemplateId> {
        &self.templates
    }

    fn begin(&self, stage: Stage) -> Feed {
        let mut f = Feed(Sha256::new());
        f.u64(FINGERPRINT_VERSION);
        f.str(stage.as_str());
        match self.templates.get(&stage) {
            Some(t) => {
                f.str(&t.name);
                f.str(&t.version);
            }
            None => f.str(""),
        }
        f.u64(self.max_prompt_words);
        f.str(match self.overlong {
            Overlong::Truncate => "truncate",
            Overlong::Drop => "drop",
        });
        f
    }

    /// `reviews`: the item's id and review digest, when it has reviews.
    pub fn item_profile(&self, item: &Digest32, reviews: Option<(i32, &Digest32)>) -> Digest32 {
        let mut f = self.begin(Stage::ItemProfile);
        f.0.update(item);
        match reviews {
            None => f.0.update([0u8]),
            Some((id, d)) => {
                f.0.update([1u8]);
                f.0.update(id.to_le_bytes());
                f.0.update(d);
            }
        }
        f.finish()
    }

    pub fn user_profile(&self, window: &[Entry<'_>]) -> Digest32 {
        let mut f = self.begin(Stage::UserProfile);
        f.u64(window.len() as u64);
        for e in window {
            f.entry(e);
        }
        f.finish()
    }

    pub fn reasoning(
        &self,
        label: bool,
        user_profile: Option<&Digest32>,
        history: &[Entry<'_>],
        target: &Entry<'_>,
    ) -> Digest32 {
        let mut f = self.begin(Stage::Reasoning);
        f.flag(Some(label));
        f.opt(user_profile);
        f.u64(history.len() as u64);
        for e in history {
            f.entry(e);
        }
        f.entry(target);
        f.finish()
    }

    pub fn judge(&self, reasoning: &Digest32) -> Digest32 {
        let mut f = self.begin(Stage::Judge);
        f.0.update(reasoning);
        f.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(version: &str, cap: usize) -> Fingerprinter {
        let t = |n: &str| TemplateId { name: n.into(), version: version.into() };
        Fingerprinter {
            templates: BTreeMap::from([
                (Stage::ItemProfile, t("item_profile.movielens")),
                (Stage::UserProfile, t("user_profile.movielens")),
                (Stage::Reasoning, t("reasoning.movielens")),
            ]),
            max_prompt_words: cap as u64,
            overlong: Overlong::Truncate,
        }
    }

    #[test]
    fn every_input_moves_the_fingerprint() {
        let (a, b) = (item_digest("Heat", r#"{"year": 1995}"#), item_digest("Heat", r#"{"year": 1996}"#));
        assert_ne!(a, b);
        assert_ne!(item_digest("ab", "c"), item_digest("a", "bc"), "fields are length-prefixed");
        let f = fp("v1", 0);
        let pa = f.item_profile(&a, None);
        assert_eq!(pa, f.item_profile(&a, None));
        assert_ne!(pa, f.item_profile(&b, None));
        assert_ne!(pa, f.item_profile(&a, Some((3, &b))), "reviews count");
        assert_ne!(pa, fp("v2", 0).item_profile(&a, None), "template version counts");
        assert_ne!(pa, fp("v1", 100).item_profile(&a, None), "the prompt cap counts");

        let e = |item, liked, profile| Entry { item, liked: Some(liked), profile };
        let base = f.reasoning(true, None, &[e(&a, true, Some(&pa))], &Entry { item: &b, liked: None, profile: None });
        let target = Entry { item: &b, liked: None, profile: None };
        assert_eq!(base, f.reasoning(true, None, &[e(&a, true, Some(&pa))], &target));
        assert_ne!(base, f.reasoning(false, None, &[e(&a, true, Some(&pa))], &target), "label");
        assert_ne!(base, f.reasoning(true, None, &[e(&a, false, Some(&pa))], &target), "like flag");
        assert_ne!(base, f.reasoning(true, Some(&pa), &[e(&a, true, Some(&pa))], &target), "user profile");
        assert_ne!(base, f.reasoning(true, None, &[e(&a, true, None)], &target), "upstream profile");
        assert_ne!(base, f.reasoning(true, None, &[], &target), "history");
        assert_ne!(f.user_profile(&[e(&a, true, None)]), f.user_profile(&[e(&b, true, None)]));
    }
}
