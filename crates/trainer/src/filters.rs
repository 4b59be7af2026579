//! Optional quality filters of the export, applied to each done task's reasoning in this order
//! (a row is counted against the first filter that removes it):
//! 0. `min_judge_score`: the row's judge (`[stages] judge`) scored it at least this; a row its
//!    judge did not score (the judge failed, or the run planned none) is removed too.
//! 1. `min_words` / `max_words`: whitespace-separated words of the reasoning.
//! 2. `label_consistent`: the reasoning's conclusion must argue the example's label, as
//!    `core::validate::argued_outcome` reads it. The worker already rejected answers that argue
//!    the opposite; this also drops the ones that argue neither outcome (or both).
//! 3. `dedup`: a reasoning whose normalised text (lowercase, letters and digits only, whitespace
//!    runs collapsed) was already kept is dropped; the first one in id order stays. The set holds
//!    16 bytes of SHA-256 per kept row.

use std::collections::HashSet;

use reasonrec_core::validate::argued_outcome;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Which filters are on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FilterOptions {
    pub min_judge_score: Option<i16>,
    pub min_words: Option<usize>,
    pub max_words: Option<usize>,
    pub label_consistent: bool,
    pub dedup: bool,
}

/// A word bound and the rows it removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WordBound {
    pub words: usize,
    pub removed: u64,
}

/// The label-consistency filter's removals, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LabelFilter {
    pub removed: u64,
    /// The reasoning argues the opposite outcome.
    pub contradicting: u64,
    /// It argues neither outcome, or both.
    pub undecided: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Removed {
    pub removed: u64,
}

/// The judge-score filter's removals, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct JudgeFilter {
    pub min_score: i16,
    pub removed: u64,
    /// Scored below `min_score`.
    pub below: u64,
    /// No score: the judge failed or was not planned.
    pub unjudged: u64,
}

/// What the filters did, for the manifest. A filter that was off is `null`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FilterReport {
    /// Done reasoning tasks read that the audit marks admitted (see the manifest's `audit`).
    pub rows_read: u64,
    /// Rows written to the split files.
    pub rows_kept: u64,
    pub min_judge_score: Option<JudgeFilter>,
    pub min_words: Option<WordBound>,
    pub max_words: Option<WordBound>,
    pub label_consistent: Option<LabelFilter>,
    pub dedup: Option<Removed>,
}

/// The filters with their running counts.
#[derive(Debug)]
pub struct Filters {
    options: FilterOptions,
    seen: HashSet<u128>,
    report: FilterReport,
}

/// The dedup key of a text: lowercase, letters and digits only, whitespace collapsed.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for ch in text.chars() {
        if ch.is_alphanumeric() {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.extend(ch.to_lowercase());
        } else if ch.is_whitespace() {
            space = true;
        }
    }
    out
}

fn text_hash(text: &str) -> u128 {
    let digest = Sha256::digest(normalize(text).as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

impl Filters {
    pub fn new(options: FilterOptions) -> Self {
        let report = FilterReport {
            min_judge_score: options
                .min_judge_score
                .map(|min_score| JudgeFilter { min_score, ..JudgeFilter::default() }),
            min_words: options.min_words.map(|words| WordBound { words, removed: 0 }),
            max_words: options.max_words.map(|words| WordBound { words, removed: 0 }),
            label_consistent: options.label_consistent.then(LabelFilter::default),
            dedup: options.dedup.then(Removed::default),
            ..FilterReport::default()
        };
        Self { options, seen: HashSet::new(), report }
    }

    /// True when the row with this reasoning, label and judge score is kept.
    pub fn keep(&mut self, reasoning: &str, label: bool, judge_score: Option<i16>) -> bool {
        self.report.rows_read += 1;
        if let Some(j) = self.report.min_judge_score.as_mut() {
            match judge_score {
                Some(s) if s >= j.min_score => {}
                Some(_) => {
                    j.below += 1;
                    j.removed += 1;
                    return false;
                }
                None => {
                    j.unjudged += 1;
                    j.removed += 1;
                    return false;
                }
            }
        }
        let words = reasonrec_core::validate::word_count(reasoning);
        if let Some(b) = self.report.min_words.as_mut().filter(|b| words < b.words) {
            b.removed += 1;
            return false;
        }
        if let Some(b) = self.report.max_words.as_mut().filter(|b| words > b.words) {
            b.removed += 1;
            return false;
        }
        if let Some(f) = self.report.label_consistent.as_mut() {
            match argued_outcome(reasoning) {
                Some(argued) if argued == label => {}
                Some(_) => {
                    f.contradicting += 1;
                    f.removed += 1;
                    return false;
                }
                None => {
                    f.undecided += 1;
                    f.removed += 1;
                    return false;
                }
            }
        }
        if self.options.dedup && !self.seen.insert(text_hash(reasoning)) {
            if let Some(d) = self.report.dedup.as_mut() {
                d.removed += 1;
            }
            return false;
        }
        self.report.rows_kept += 1;
        true
    }

    pub fn report(&self) -> FilterReport {
        self.report.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_punctuation_and_spaces() {
        assert_eq!(normalize("  The «Heat», (1995)\n is  GREAT! "), "the heat 1995 is great");
        assert_eq!(normalize("a-b"), "ab");
    }

    #[test]
    fn each_filter_counts_what_it_removed() {
        let mut f = Filters::new(FilterOptions {
            min_judge_score: None,
            min_words: Some(3),
            max_words: Some(12),
            label_consistent: true,
            dedup: true,
        });
        let like = "It is a strong match for this viewer.";
        assert!(f.keep(like, true, None));
        assert!(!f.keep("too short", true, None), "min_words");
        assert!(!f.keep(&"word ".repeat(13), true, None), "max_words");
        assert!(!f.keep(like, false, None), "argues like, label dislike");
        assert!(!f.keep("Nothing in particular is said here.", true, None), "argues neither");
        assert!(!f.keep("it is a STRONG match for this viewer", true, None), "duplicate after normalising");
        assert!(f.keep("It is a poor match for this viewer.", false, None));
        let r = f.report();
        assert_eq!((r.rows_read, r.rows_kept), (7, 2));
        assert_eq!(r.min_words, Some(WordBound { words: 3, removed: 1 }));
        assert_eq!(r.max_words, Some(WordBound { words: 12, removed: 1 }));
        assert_eq!(r.label_consistent, Some(LabelFilter { removed: 2, contradicting: 1, undecided: 1 }));
        assert_eq!(r.dedup, Some(Removed { removed: 1 }));
    }

    #[test]
    fn the_judge_score_filter_removes_low_and_unscored_rows_first() {
        let mut f = Filters::new(FilterOptions { min_judge_score: Some(4), ..FilterOptions::default() });
        let like = "It is a strong match for this viewer.";
        assert!(f.keep(like, true, Some(4)));
        assert!(f.keep(like, true, Some(5)));
        assert!(!f.keep(like, true, Some(3)), "below");
        assert!(!f.keep(like, true, None), "unjudged");
        let r = f.report();
        assert_eq!((r.rows_read, r.rows_kept), (4, 2));
        assert_eq!(r.min_judge_score, Some(JudgeFilter { min_score: 4, removed: 2, below: 1, unjudged: 1 }));
    }

    #[test]
    fn no_filter_keeps_everything() {
        let mut f = Filters::new(FilterOptions::default());
        assert!(f.keep("x", true, None) && f.keep("x", false, None));
        let r = f.report();
        assert_eq!((r.rows_read, r.rows_kept, r.min_words, r.dedup), (2, 2, None, None));
    }
}
