//! Deterministic, prompt-aware answers.
//!
//! The mock recognises the section headings of reasonrec's own templates (`## Target`,
//! `## Known outcome`, `## Item`, `## Profile window`, and the judge's `## Stated outcome` and
//! `## Explanation to judge`) and the «…» delimiters around data. For any other prompt it answers
//! with a generic paragraph that still quotes what it found between « ».

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reasoning {
        like: bool,
    },
    /// A judge prompt: the stated outcome and the outcome the explanation argues (if any).
    Judge {
        like: bool,
        argued: Option<bool>,
    },
    ItemProfile,
    UserProfile,
    Other,
}

/// What the mock understood of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub kind: Kind,
    pub liked: Vec<String>,
    pub disliked: Vec<String>,
    pub target: Option<String>,
    pub titles: Vec<String>,
}

fn quoted(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find('«') {
        let after = &rest[start + '«'.len_utf8()..];
        match after.find('»') {
            Some(end) => {
                out.push(after[..end].to_string());
                rest = &after[end + '»'.len_utf8()..];
            }
            None => break,
        }
    }
    out
}

pub fn parse(prompt: &str) -> Parsed {
    let mut p = Parsed { kind: Kind::Other, liked: vec![], disliked: vec![], target: None, titles: vec![] };
    let mut section = String::new();
    let mut outcome: Option<bool> = None;
    let mut stated: Option<bool> = None;
    let mut explanation = String::new();
    for line in prompt.lines() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix("## ") {
            section = h.to_lowercase();
            continue;
        }
        if section.starts_with("stated outcome") && stated.is_none() {
            let upper = t.to_uppercase();
            if upper.contains("DISLIKED") {
                stated = Some(false);
            } else if upper.contains("LIKED") {
                stated = Some(true);
            }
        }
        if section.starts_with("explanation to judge") {
            explanation.push_str(t);
            explanation.push('\n');
            continue;
        }
        let q = quoted(t);
        if section.starts_with("target") && p.target.is_none() {
            p.target = q.first().cloned();
        }
        // The first outcome line counts: a re-ask appends the validator's message, which also
        // says "will like" / "will dislike".
        if section.starts_with("known outcome") && outcome.is_none() {
            let upper = t.to_uppercase();
            if upper.contains("WILL DISLIKE") {
                outcome = Some(false);
            } else if upper.contains("WILL LIKE") {
                outcome = Some(true);
            }
        }
        if t.contains("[Liked]") {
            p.liked.extend(q.iter().cloned());
        } else if t.contains("[Disliked]") {
            p.disliked.extend(q.iter().cloned());
        }
        p.titles.extend(q);
        if section.starts_with("item") && p.kind == Kind::Other {
            p.kind = Kind::ItemProfile;
        }
        if section.starts_with("profile window") {
            p.kind = Kind::UserProfile;
        }
    }
    for list in [&mut p.liked, &mut p.disliked] {
        let mut seen = std::collections::HashSet::new();
        list.retain(|t| seen.insert(t.clone()));
    }
    if let Some(like) = outcome {
        p.kind = Kind::Reasoning { like };
    }
    if let (Some(like), false) = (stated, explanation.is_empty()) {
        p.kind = Kind::Judge { like, argued: reasonrec_core::validate::argued_outcome(&explanation) };
    }
    p
}

fn pick<'a>(seed: &[u8], salt: u8, options: &[&'a str]) -> &'a str {
    let h = Sha256::digest([seed, &[salt]].concat());
    options[usize::from(h[0]) % options.len()]
}

fn list(titles: &[String], n: usize) -> String {
    let shown: Vec<String> = titles.iter().take(n).map(|t| format!("«{t}»")).collect();
    match shown.len() {
        0 => String::new(),
        1 => shown[0].clone(),
        _ => format!("{} and {}", shown[..shown.len() - 1].join(", "), shown[shown.len() - 1]),
    }
}

/// The answer text for a prompt; same prompt, same text.
pub fn answer(prompt: &str) -> String {
    answer_with(prompt, false)
}

/// Like [`answer`]; with `contradict`, a reasoning argues the opposite of the stated outcome
/// (what a careless teacher does), for testing the validator and re-asks.
pub fn answer_with(prompt: &str, contradict: bool) -> String {
    let seed = Sha256::digest(prompt.as_bytes());
    let p = parse(prompt);
    match p.kind {
        Kind::Reasoning { like } => reasoning_answer(&p, &seed, like ^ contradict),
        Kind::Judge { like, argued } => {
            if argued == Some(!like) {
                return "Faithful: no, it argues against the stated outcome.\nAgrees with the outcome: no.\nScore: 1"
                    .into();
            }
            // A spread of scores (same prompt, same score), so a score filter has work to do.
            let score = pick(&seed, 6, &["2", "3", "4", "5", "5"]);
            let faithful = if score == "2" { "no, it adds a claim the facts do not support" } else { "yes" };
            format!("Faithful: {faithful}.\nAgrees with the outcome: yes.\nScore: {score}")
        }
        Kind::ItemProfile => {
            let title = p.titles.first().cloned().unwrap_or_else(|| "This item".into());
            let strong =
                pick(&seed, 4, &["a confident central performance", "brisk pacing", "a distinctive visual style"]);
            let weak =
                pick(&seed, 5, &["a predictable final act", "thin supporting characters", "an uneven middle stretch"]);
            format!(
                "«{title}» is remembered for {strong}; its weak point is {weak}, which some viewers find hard to overlook."
            )
        }
        Kind::UserProfile => {
            let liked = if p.liked.is_empty() { "a handful of titles".to_string() } else { list(&p.liked, 4) };
            let disliked = if p.disliked.is_empty() { "little so far".to_string() } else { list(&p.disliked, 3) };
            format!(
                "This user enjoys {liked}, which suggests a preference for engaging, well-crafted stories. \
                 They disliked {disliked}, pointing to impatience with weak writing or slow pacing."
            )
        }
        Kind::Other => {
            let titles = if p.titles.is_empty() { "the items mentioned".to_string() } else { list(&p.titles, 3) };
            format!(
                "Based on {titles}, the request can be answered from the information given; nothing further can be inferred from it."
            )
        }
    }
}

/// A reasoning for (`like`) or against the target, naming the history's titles.
fn reasoning_answer(p: &Parsed, seed: &[u8], like: bool) -> String {
    let target = p.target.clone().unwrap_or_else(|| "the target".into());
    let liked = if p.liked.is_empty() { "few titles so far".to_string() } else { list(&p.liked, 3) };
    let disliked = if p.disliked.is_empty() { "hardly anything".to_string() } else { list(&p.disliked, 2) };
    let taste = pick(
        seed,
        1,
        &[
            "character-driven stories with a clear emotional arc",
            "tightly plotted films that reward attention",
            "warm, well-paced stories with memorable leads",
        ],
    );
    let summary = format!(
        "Summary: This viewer rated {liked} highly and was let down by {disliked}. \
         Their choices point to a taste for {taste}, and a low tolerance for films that feel padded or derivative."
    );
    let reasoning = if like {
        let why = pick(
            seed,
            2,
            &[
                "shares the tone and pacing of the titles they enjoyed",
                "offers the kind of story their favourites are built on",
                "sits close to the genres they keep coming back to",
            ],
        );
        format!(
            "Reasoning: «{target}» {why}, and it avoids the weaknesses that sank {disliked}. \
             Given how consistently they reward such films, «{target}» is a strong match for this viewer."
        )
    } else {
        let why = pick(
            seed,
            3,
            &[
                "leans on elements this viewer has rejected before",
                "has little in common with the films they rated highly",
                "resembles the titles that disappointed them",
            ],
        );
        format!(
            "Reasoning: «{target}» {why}, much like {disliked}, while offering little of what made {liked} work for them. \
             It is therefore a poor match for this viewer's taste."
        )
    };
    format!("{summary}\n{reasoning}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: &str = "## Recent history (oldest first)\n1. [Liked] «Heat (1995)» (Action)\n\
                          2. [Disliked] «Jumanji (1995)» (Comedy)\n\n## Target movie\n«Casino (1995)» (Crime)\n\n\
                          ## Known outcome\nThe viewer will DISLIKE the target movie.\n";

    #[test]
    fn reasoning_agrees_with_stated_outcome_and_quotes_titles() {
        let p = parse(PROMPT);
        assert_eq!(p.kind, Kind::Reasoning { like: false });
        assert_eq!(p.liked, vec!["Heat (1995)".to_string()]);
        assert_eq!(p.disliked, vec!["Jumanji (1995)".to_string()]);
        assert_eq!(p.target.as_deref(), Some("Casino (1995)"));
        let a = answer(PROMPT);
        assert!(a.contains("«Casino (1995)»") && a.contains("«Heat (1995)»"), "{a}");
        assert!(a.contains("poor match"), "{a}");
        assert_eq!(a, answer(PROMPT), "deterministic");
        let liked = answer(&PROMPT.replace("will DISLIKE", "will LIKE"));
        assert!(liked.contains("strong match"), "{liked}");
    }

    #[test]
    fn a_judge_prompt_gets_a_score_and_a_contradicting_explanation_the_lowest() {
        let judge = |outcome: &str, explanation: &str| {
            format!(
                "## Recent history (oldest first)\n1. [Liked] «Heat (1995)»\n\n## Target item\n«Casino (1995)»\n\n\
                 ## Stated outcome\nThe user {outcome} the target item.\n\n## Explanation to judge\n«{explanation}»\n"
            )
        };
        let agreeing = judge("liked", "Reasoning: it is a strong match for this viewer.");
        assert_eq!(parse(&agreeing).kind, Kind::Judge { like: true, argued: Some(true) });
        let a = answer(&agreeing);
        let score = reasonrec_core::validate::judge_score(&a);
        assert!(score.is_some_and(|s| s >= 2), "{a}");
        let r = reasonrec_core::validate::validate_answer(reasonrec_core::Stage::Judge, &a, Some("stop"), Some(true));
        assert_eq!(r, Ok(()), "{a}");
        let contradicting = judge("disliked", "Reasoning: it is a strong match for this viewer.");
        assert_eq!(parse(&contradicting).kind, Kind::Judge { like: false, argued: Some(true) });
        assert_eq!(reasonrec_core::validate::judge_score(&answer(&contradicting)), Some(1));
    }

    #[test]
    fn answers_pass_the_reasoning_validator() {
        for p in [PROMPT.to_string(), PROMPT.replace("will DISLIKE", "will LIKE")] {
            let a = answer(&p);
            let label = parse(&p).kind == Kind::Reasoning { like: true };
            let r = reasonrec_core::validate::validate_answer(
                reasonrec_core::Stage::Reasoning,
                &a,
                Some("stop"),
                Some(label),
            );
            assert_eq!(r, Ok(()), "{a}");
            let flipped = answer_with(&p, true);
            let r = reasonrec_core::validate::validate_answer(
                reasonrec_core::Stage::Reasoning,
                &flipped,
                None,
                Some(label),
            );
            assert_eq!(r.map_err(|e| e.code), Err("label_contradiction"), "{flipped}");
        }
    }
}
