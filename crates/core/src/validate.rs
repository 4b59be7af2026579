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
    }
}

const REFUSALS: &[&str] =
    &["as an ai language model", "i cannot help with", "i can't help with", "i'm sorry, but i can", "i am unable to"];

const LEAKAGE: &[&str] = &["ground truth", "we know that the user will", "the label says", "we are told that"];

/// Validates an answer of `stage`. `finish_reason == "length"` means it was cut off.
pub fn validate_answer(stage: Stage, text: &str, finish_reason: Option<&str>) -> Result<(), Rejection> {
    let reject = |code, message: String| Err(Rejection { code, message });
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return reject("empty", "the answer is empty".into());
    }
    if finish_reason == Some("length") {
        return reject("truncated", "the answer was cut off at max_tokens (finish_reason=length)".into());
    }
    let words = trimmed.split_whitespace().count();
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
    if let Some(p) = LEAKAGE.iter().find(|p| lower.contains(*p)) {
        return reject("leakage", format!("the answer refers to the given outcome ({p:?})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "The user enjoys tense crime dramas and ensemble thrillers, and tends to dislike \
                        broad comedies; the target is a slow-burning heist film with strong leads.";

    #[test]
    fn accepts_a_plain_answer() {
        assert_eq!(validate_answer(Stage::Reasoning, GOOD, Some("stop")), Ok(()));
    }

    #[test]
    fn rejects_each_failure_with_its_code() {
        let code = |t: &str, f: Option<&str>| validate_answer(Stage::Reasoning, t, f).err().map(|r| r.code);
        assert_eq!(code("   ", None), Some("empty"));
        assert_eq!(code(GOOD, Some("length")), Some("truncated"));
        assert_eq!(code("too short", None), Some("too_short"));
        assert_eq!(code(&"word ".repeat(500), None), Some("too_long"));
        assert_eq!(code(&format!("As an AI language model, {GOOD}"), None), Some("refusal"));
        assert_eq!(code(&format!("{GOOD} The ground truth says so."), None), Some("leakage"));
    }
}
