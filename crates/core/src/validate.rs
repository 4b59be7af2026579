//! Checks on a teacher's answer before it is accepted into the ledger.

use crate::stage::Stage;
use serde::Serialize;

/// Why an answer was rejected; the code is what `run status` counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

/// Word bounds per stage: (min, max).
pub fn word_bounds(stage: Stage) -> (usize, usize) {
    match stage {
        Stage::ItemProfile => (5, 120),
        Stage::UserProfile => (10, 300),
        Stage::Reasoning => (15, 400),
        Stage::Judge => (3, 200),
    }
}

/// The best and worst score a judge gives.
pub const JUDGE_SCORES: std::ops::RangeInclusive<i16> = 1..=5;

/// The score of a judge's answer: the first line that starts with `Score:` (any case, markdown
/// emphasis ignored) followed by a whole number in [`JUDGE_SCORES`]. None when there is none.
pub fn judge_score(text: &str) -> Option<i16> {
    text.lines().find_map(|line| {
        let line = line.trim().trim_start_matches(['*', '#', ' ']);
        let head = line.get(..6)?;
        if !head.eq_ignore_ascii_case("score:") {
            return None;
        }
        let rest = line[6..].trim().trim_start_matches('*').trim();
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let after = rest[digits.len()..].trim_start_matches('*').trim_start();
        // "4/5" and "4 out of 5" name the same score; "4.5" is not a whole score.
        if after.starts_with('.') && after[1..].starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        digits.parse::<i16>().ok().filter(|n| JUDGE_SCORES.contains(n))
    })
}

const REFUSALS: &[&str] =
    &["as an ai language model", "i cannot help with", "i can't help with", "i'm sorry, but i can", "i am unable to"];

const LEAKAGE: &[&str] = &["ground truth", "we know that the user will", "the label says", "we are told that"];

/// Phrases that conclude the user will not like the target. Checked first and blanked out, so
/// "unlikely to enjoy" never counts as "likely to enjoy".
const NEGATIVE_OUTCOME: &[&str] = &[
    "will not like",
    "won't like",
    "will dislike",
    "would dislike",
    "will not enjoy",
    "won't enjoy",
    "would not enjoy",
    "wouldn't enjoy",
    "unlikely to enjoy",
    "unlikely to like",
    "unlikely to appeal",
    "poor match",
    "poor fit",
    "not a good match",
    "not a good fit",
    "will not appeal",
    "won't appeal",
    "fail to appeal",
    "fails to appeal",
    "will be disappointed",
    "not for this",
];
/// Phrases that conclude the user will like the target.
const POSITIVE_OUTCOME: &[&str] = &[
    "will like",
    "will enjoy",
    "would enjoy",
    "will love",
    "will appreciate",
    "likely to enjoy",
    "likely to like",
    "strong match",
    "good match",
    "great match",
    "good fit",
    "great fit",
    "will appeal",
    "appeals to",
];

/// Which outcome the conclusion of a reasoning argues: Some(true) like, Some(false) dislike,
/// None when it argues neither or both. A lexical check: it reads the part after the last
/// "Reasoning:" (or the whole answer) and looks for outcome phrases.
pub fn argued_outcome(text: &str) -> Option<bool> {
    let lower = text.to_lowercase();
    let conclusion = match lower.rfind("reasoning:") {
        Some(i) => &lower[i..],
        None => lower.as_str(),
    };
    let mut rest = conclusion.to_string();
    let mut negative = 0;
    for p in NEGATIVE_OUTCOME {
        negative += rest.matches(p).count();
        rest = rest.replace(p, " ");
    }
    let positive: usize = POSITIVE_OUTCOME.iter().map(|p| rest.matches(p).count()).sum();
    match (positive > 0, negative > 0) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

/// Whitespace-separated words: the one count the validator's bounds, the stored `outputs.words`
/// (the corpus browser's filter), the export's word filter and the prompt cap
/// (`sampling.max_prompt_words`) use.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Validates an answer of `stage`. `finish_reason` is in OpenAI's words (the Anthropic client
/// translates): `length` means it was cut off, `refusal`/`content_filter` a safety stop. For a
/// reasoning, `label` is the outcome the prompt stated: an answer that argues the opposite is
/// rejected.
pub fn validate_answer(
    stage: Stage,
    text: &str,
    finish_reason: Option<&str>,
    label: Option<bool>,
) -> Result<(), Rejection> {
    let reject = |code, message: String| Err(Rejection { code, message });
    let trimmed = text.trim();
    // The server's stop reason first: it says why an answer is cut or empty.
    if finish_reason == Some("length") {
        return reject("truncated", "the answer was cut off at max_tokens (finish_reason=length)".into());
    }
    // Anthropic's `refusal` stop reason and OpenAI's `content_filter`: a safety system stopped it.
    if let Some(r @ ("refusal" | "content_filter")) = finish_reason {
        return reject("refusal", format!("the server stopped the answer (finish_reason={r})"));
    }
    if trimmed.is_empty() {
        return reject("empty", "the answer is empty".into());
    }
    let words = word_count(trimmed);
    let (min, max) = word_bounds(stage);
    if words < min {
        return reject("too_short", format!("{words} words, at least {min} expected"));
    }
    if words > max {
        return reject("too_long", format!("{words} words, at most {max} expected"));
    }
    let lower = trimmed.to_lowercase();
    if let Some(p) = REFUSALS.iter().find(|p| lower.contains(*p)) {
        return reject("refusal", format!("the answer contains refusal boilerplate ({p:?})"));
    }
    if stage == Stage::Judge {
        // A judge is asked about the given outcome: leakage phrases are its subject, not a fault.
        return match judge_score(trimmed) {
            Some(_) => Ok(()),
            None => reject(
                "no_score",
                format!(
                    "the answer has no line \"Score: N\" with N a whole number from {} to {}",
                    JUDGE_SCORES.start(),
                    JUDGE_SCORES.end()
                ),
            ),
        };
    }
    if let Some(p) = LEAKAGE.iter().find(|p| lower.contains(*p)) {
        return reject("leakage", format!("the answer refers to the given outcome ({p:?})"));
    }
    if let (Stage::Reasoning, Some(label)) = (stage, label)
        && argued_outcome(trimmed) == Some(!label)
    {
        let (said, argued) = if label { ("like", "dislike") } else { ("dislike", "like") };
        return reject(
            "label_contradiction",
            format!("the user will {said} the target, but the answer argues they will {argued} it"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_judge_answer_needs_a_whole_score_in_range() {
        assert_eq!(judge_score("Faithful: yes\nScore: 4\nReason: grounded."), Some(4));
        assert_eq!(judge_score("**Score:** 2/5"), Some(2));
        assert_eq!(judge_score("score: 5 out of 5"), Some(5));
        assert_eq!(judge_score("Score: 4.5"), None);
        assert_eq!(judge_score("Score: 0"), None);
        assert_eq!(judge_score("Score: 9"), None);
        assert_eq!(judge_score("Score: high"), None);
        assert_eq!(judge_score("The score is 4"), None);
        assert_eq!(judge_score("Scores: 4"), None);
        let first = "Score: 3\nScore: 5";
        assert_eq!(judge_score(first), Some(3), "the first score line counts");
        let ok = "Faithful: yes. Label agreement: yes.\nScore: 5\nReason: the label says like and it argues like.";
        assert_eq!(
            validate_answer(Stage::Judge, ok, Some("stop"), Some(true)),
            Ok(()),
            "leakage words are a judge's subject"
        );
        let code =
            validate_answer(Stage::Judge, "Faithful: yes, fully grounded.", None, Some(true)).err().map(|r| r.code);
        assert_eq!(code, Some("no_score"));
        let code = validate_answer(Stage::Judge, "Score: 4", Some("length"), None).err().map(|r| r.code);
        assert_eq!(code, Some("truncated"), "a cut-off judge is re-asked like any answer");
    }

    const GOOD: &str = "The user enjoys tense crime dramas and ensemble thrillers, and tends to dislike \
                        broad comedies; the target is a slow-burning heist film with strong leads.";

    #[test]
    fn accepts_a_plain_answer() {
        assert_eq!(validate_answer(Stage::Reasoning, GOOD, Some("stop"), None), Ok(()));
    }

    #[test]
    fn rejects_each_failure_with_its_code() {
        let code = |t: &str, f: Option<&str>| validate_answer(Stage::Reasoning, t, f, None).err().map(|r| r.code);
        assert_eq!(code("   ", None), Some("empty"));
        assert_eq!(code(GOOD, Some("length")), Some("truncated"));
        assert_eq!(code(GOOD, Some("refusal")), Some("refusal"));
        assert_eq!(code(GOOD, Some("content_filter")), Some("refusal"));
        assert_eq!(code("too short", None), Some("too_short"));
        assert_eq!(code(&"word ".repeat(500), None), Some("too_long"));
        assert_eq!(code(&format!("As an AI language model, {GOOD}"), None), Some("refusal"));
        assert_eq!(code(&format!("{GOOD} The ground truth says so."), None), Some("leakage"));
    }

    #[test]
    fn a_reasoning_that_argues_the_opposite_label_is_rejected() {
        let like = "Summary: The viewer enjoys heist films and sharp dialogue across many titles they rated.                     Reasoning: The target is a tense heist film, so it is a strong match and they will enjoy it.";
        let dislike = "Summary: The viewer enjoys heist films and sharp dialogue across many titles they rated.                        Reasoning: The target is a slapstick comedy, so it is unlikely to enjoy success with them; a poor match.";
        assert_eq!(argued_outcome(like), Some(true));
        assert_eq!(argued_outcome(dislike), Some(false), "'unlikely to enjoy' is not 'likely to enjoy'");
        assert_eq!(argued_outcome("Reasoning: it has elements of both."), None);
        let code = |t: &str, l: bool| validate_answer(Stage::Reasoning, t, None, Some(l)).err().map(|r| r.code);
        assert_eq!(code(like, true), None);
        assert_eq!(code(like, false), Some("label_contradiction"));
        assert_eq!(code(dislike, false), None);
        assert_eq!(code(dislike, true), Some("label_contradiction"));
        // Profiles are not checked for a label.
        assert_eq!(validate_answer(Stage::UserProfile, like, None, Some(false)), Ok(()));
    }
}
