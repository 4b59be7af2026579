//! `reasonrec train eval`: joins a student's predictions file with the exported examples, computes
//! the prediction and explanation metrics overall and per split, and writes `eval.json` and
//! `eval.md`.
//!
//! Inputs are JSONL, read line by line; blank lines are skipped and unknown fields ignored.
//! - Examples (the export): `id`, `split`, `label` (1 = liked, 0 = disliked) are required;
//!   `reasoning` (the teacher's reasoning) is optional. Other fields (`messages`, ...) are ignored.
//! - Predictions: `id` and a score, given by `p_yes` (a number in [0, 1]) and/or `prediction`
//!   ("yes"/"no" in any case, or a JSON bool); optional `reasoning` (the student's explanation).
//!   `p_yes` is the AUC score when present, else the hard prediction as 1/0; the hard label is
//!   `prediction` when present, else `p_yes >= 0.5`.
//!
//! The predictions file is held in memory (one entry per id) and the examples are streamed past it,
//! so only the predictions' side costs memory.

use std::collections::{BTreeMap, HashMap, hash_map::Entry};
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::TrainerError;
use crate::metrics::{self, BleuCounts};

/// What the report says about BERTScore, which this crate does not compute.
pub const BERTSCORE_NOTE: &str = "BERTScore not computed here: it needs a model. Run \
     scripts/train_student.py --bertscore (after a run) or --bertscore-only PREDICTIONS to get it.";

/// The threshold on `p_yes` above which (inclusive) a prediction without `prediction` is "Yes".
pub const YES_THRESHOLD: f64 = 0.5;

/// The evaluation report, serialised as `eval.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The examples files read, in the order given.
    pub examples_files: Vec<String>,
    pub predictions_file: String,
    /// Example records read (all splits).
    pub examples: u64,
    /// Prediction records read.
    pub predictions: u64,
    /// Examples that had a prediction; only these enter the metrics.
    pub matched: u64,
    /// Examples without a prediction.
    pub missing_predictions: u64,
    /// Predictions whose id is in no examples file.
    pub unmatched_predictions: u64,
    /// Every matched example, all splits together (`split` is "all").
    pub overall: SplitReport,
    /// One entry per split that has examples: train, validation, test, then others alphabetically.
    pub splits: Vec<SplitReport>,
    /// Says that BERTScore is not computed and how to get it.
    pub note: String,
}

/// Metrics of one split (or of all of them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitReport {
    pub split: String,
    /// Examples of this split in the examples files.
    pub examples: u64,
    /// Of those, the ones without a prediction (left out of every metric below).
    pub missing_predictions: u64,
    /// Examples evaluated: those with a prediction.
    pub n: u64,
    /// Evaluated examples whose label is 1 (liked) / 0 (disliked).
    pub liked: u64,
    pub disliked: u64,
    /// Evaluated examples predicted "Yes".
    pub predicted_yes: u64,
    /// ROC AUC of the scores; `None` when `n` is 0 or only one label is present.
    pub auc: Option<f64>,
    /// Hard-label metrics, positive class "Yes"; `None` when `n` is 0. Precision (and so F1) is 0
    /// when nothing is predicted "Yes".
    pub accuracy: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    /// Evaluated examples where both the prediction and the example carry a reasoning.
    pub with_reasoning: u64,
    /// Mean over those of the ROUGE-L F1 of the student's reasoning against the teacher's.
    pub rouge_l_f1: Option<f64>,
    /// Corpus BLEU-4 of the student's reasonings against the teacher's (counts summed over them).
    pub bleu4: Option<f64>,
}

/// One parsed prediction line.
struct Prediction {
    line: u64,
    score: f64,
    yes: bool,
    reasoning: Option<String>,
}

/// Running sums of one split.
#[derive(Default)]
struct Accumulator {
    examples: u64,
    labels: Vec<bool>,
    scores: Vec<f64>,
    predicted: Vec<bool>,
    with_reasoning: u64,
    rouge_sum: f64,
    bleu: BleuCounts,
}

impl Accumulator {
    fn add(&mut self, label: bool, prediction: &Prediction, text: Option<(&[String], &[String], f64)>) {
        self.labels.push(label);
        self.scores.push(prediction.score);
        self.predicted.push(prediction.yes);
        if let Some((candidate, reference, rouge)) = text {
            self.with_reasoning += 1;
            self.rouge_sum += rouge;
            self.bleu.add(candidate, reference);
        }
    }

    fn finish(&self, split: &str) -> SplitReport {
        let n = self.labels.len() as u64;
        let liked = self.labels.iter().filter(|&&l| l).count() as u64;
        let classification = (n > 0).then(|| metrics::classify(&self.labels, &self.predicted));
        SplitReport {
            split: split.to_owned(),
            examples: self.examples,
            missing_predictions: self.examples - n,
            n,
            liked,
            disliked: n - liked,
            predicted_yes: self.predicted.iter().filter(|&&p| p).count() as u64,
            auc: metrics::roc_auc(&self.labels, &self.scores),
            accuracy: classification.map(|c| c.accuracy),
            precision: classification.map(|c| c.precision),
            recall: classification.map(|c| c.recall),
            f1: classification.map(|c| c.f1),
            with_reasoning: self.with_reasoning,
            rouge_l_f1: (self.with_reasoning > 0).then(|| self.rouge_sum / self.with_reasoning as f64),
            bleu4: (self.with_reasoning > 0).then(|| self.bleu.score()),
        }
    }
}

/// Sort key of a split: train, validation, test, then the others by name.
fn split_key(name: &str) -> (u8, String) {
    match name {
        "train" => (0, String::new()),
        "validation" => (1, String::new()),
        "test" => (2, String::new()),
        other => (3, other.to_owned()),
    }
}

/// Evaluates the predictions file against the examples files (see the module doc for formats).
///
/// Errors name the file, the line and the field ([`TrainerError::Input`]): unreadable or invalid
/// JSON lines, missing or ill-typed fields, a `p_yes` outside [0, 1], a duplicate prediction id,
/// a duplicate example id. A prediction whose id is in no examples file is counted in
/// `unmatched_predictions`; an example without a prediction in `missing_predictions`.
pub fn evaluate(examples: &[PathBuf], predictions: &Path) -> Result<Report, TrainerError> {
    if examples.is_empty() {
        return Err(TrainerError::Invalid("no examples file given".to_owned()));
    }
    let mut preds = read_predictions(predictions)?;
    let prediction_count = preds.len() as u64;

    let mut overall = Accumulator::default();
    let mut splits: BTreeMap<(u8, String), (String, Accumulator)> = BTreeMap::new();
    // Where each example id was first seen: (index of the file, line).
    let mut seen: HashMap<String, (usize, u64)> = HashMap::new();
    let mut example_count = 0u64;
    for (file_index, path) in examples.iter().enumerate() {
        for_each_record(path, |line, record| {
            let id = required_str(path, line, record, "id")?;
            let split = required_str(path, line, record, "split")?;
            if split.is_empty() {
                return Err(input(path, line, "field `split`: expected a non-empty string"));
            }
            let label = parse_label(path, line, record)?;
            let reference = optional_str(path, line, record, "reasoning")?;
            match seen.entry(id.to_owned()) {
                Entry::Occupied(first) => {
                    let (first_file, first_line) = *first.get();
                    let first_path = examples.get(first_file).map(|p| p.display().to_string()).unwrap_or_default();
                    return Err(input(
                        path,
                        line,
                        format!("field `id`: duplicate example id {} (first at {first_path}:{first_line})", quote(id)),
                    ));
                }
                Entry::Vacant(slot) => {
                    slot.insert((file_index, line));
                }
            }
            example_count += 1;
            let (_, split_acc) =
                splits.entry(split_key(split)).or_insert_with(|| (split.to_owned(), Accumulator::default()));
            split_acc.examples += 1;
            overall.examples += 1;
            let Some(prediction) = preds.remove(id) else {
                return Ok(());
            };
            let tokens = match (&prediction.reasoning, reference) {
                (Some(candidate), Some(reference)) => {
                    let candidate = metrics::tokenize(candidate);
                    let reference = metrics::tokenize(reference);
                    let rouge = metrics::rouge_l_f1_tokens(&candidate, &reference);
                    Some((candidate, reference, rouge))
                }
                _ => None,
            };
            let text = tokens.as_ref().map(|(c, r, rouge)| (c.as_slice(), r.as_slice(), *rouge));
            split_acc.add(label, &prediction, text);
            overall.add(label, &prediction, text);
            Ok(())
        })?;
    }

    let matched = overall.labels.len() as u64;
    Ok(Report {
        examples_files: examples.iter().map(|p| p.display().to_string()).collect(),
        predictions_file: predictions.display().to_string(),
        examples: example_count,
        predictions: prediction_count,
        matched,
        missing_predictions: example_count - matched,
        unmatched_predictions: preds.len() as u64,
        overall: overall.finish("all"),
        splits: splits.values().map(|(name, acc)| acc.finish(name)).collect(),
        note: BERTSCORE_NOTE.to_owned(),
    })
}

/// Reads the predictions file into a map by id; a repeated id is an error.
fn read_predictions(path: &Path) -> Result<HashMap<String, Prediction>, TrainerError> {
    let mut preds: HashMap<String, Prediction> = HashMap::new();
    for_each_record(path, |line, record| {
        let id = required_str(path, line, record, "id")?;
        let p_yes = match record.get("p_yes") {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_f64() {
                Some(p) if (0.0..=1.0).contains(&p) => Some(p),
                _ => {
                    return Err(input(
                        path,
                        line,
                        format!("field `p_yes`: expected a number in [0,1], got {}", show(value)),
                    ));
                }
            },
        };
        let hard = match record.get("prediction") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("yes") => Some(true),
            Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("no") => Some(false),
            Some(value) => {
                return Err(input(
                    path,
                    line,
                    format!("field `prediction`: expected \"yes\", \"no\" or a boolean, got {}", show(value)),
                ));
            }
        };
        let (score, yes) = match (p_yes, hard) {
            (Some(p), Some(yes)) => (p, yes),
            (Some(p), None) => (p, p >= YES_THRESHOLD),
            (None, Some(yes)) => (if yes { 1.0 } else { 0.0 }, yes),
            (None, None) => return Err(input(path, line, "no score: expected field `p_yes` or `prediction`")),
        };
        let reasoning = optional_str(path, line, record, "reasoning")?.map(str::to_owned);
        match preds.entry(id.to_owned()) {
            Entry::Occupied(first) => Err(input(
                path,
                line,
                format!("field `id`: duplicate prediction id {} (first on line {})", quote(id), first.get().line),
            )),
            Entry::Vacant(slot) => {
                slot.insert(Prediction { line, score, yes, reasoning });
                Ok(())
            }
        }
    })?;
    Ok(preds)
}

/// Calls `f` with the 1-based line number and the JSON object of every non-blank line of `path`.
fn for_each_record(
    path: &Path,
    mut f: impl FnMut(u64, &Map<String, Value>) -> Result<(), TrainerError>,
) -> Result<(), TrainerError> {
    let file = File::open(path).map_err(|e| TrainerError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut buffer = String::new();
    let mut line = 0u64;
    loop {
        buffer.clear();
        line += 1;
        match reader.read_line(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::InvalidData => return Err(input(path, line, "not valid UTF-8")),
            Err(e) => return Err(TrainerError::io(path, e)),
        }
        let text = (if line == 1 { buffer.trim_start_matches('\u{feff}') } else { buffer.as_str() }).trim();
        if text.is_empty() {
            continue;
        }
        let record = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(record)) => record,
            Ok(other) => return Err(input(path, line, format!("expected a JSON object, got {}", show(&other)))),
            Err(e) => return Err(input(path, line, format!("invalid JSON: {e}"))),
        };
        f(line, &record)?;
    }
}

fn required_str<'a>(
    path: &Path,
    line: u64,
    record: &'a Map<String, Value>,
    field: &str,
) -> Result<&'a str, TrainerError> {
    match record.get(field) {
        None | Some(Value::Null) => Err(input(path, line, format!("field `{field}`: missing"))),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(input(path, line, format!("field `{field}`: expected a string, got {}", show(other)))),
    }
}

fn optional_str<'a>(
    path: &Path,
    line: u64,
    record: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, TrainerError> {
    match record.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(input(path, line, format!("field `{field}`: expected a string, got {}", show(other)))),
    }
}

fn parse_label(path: &Path, line: u64, record: &Map<String, Value>) -> Result<bool, TrainerError> {
    match record.get("label") {
        None | Some(Value::Null) => Err(input(path, line, "field `label`: missing")),
        Some(value) => match value.as_u64() {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            _ => Err(input(
                path,
                line,
                format!("field `label`: expected 1 (liked) or 0 (disliked), got {}", show(value)),
            )),
        },
    }
}

fn input(path: &Path, line: u64, message: impl Into<String>) -> TrainerError {
    TrainerError::Input { path: path.to_path_buf(), line, message: message.into() }
}

/// A JSON value as it appears in a message, cut to 60 characters.
fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 60 { text } else { format!("{}...", text.chars().take(60).collect::<String>()) }
}

fn quote(id: &str) -> String {
    show(&Value::String(id.to_owned()))
}

/// Writes `eval.json` (pretty JSON) and `eval.md` (a markdown table per split) into `dir`,
/// creating it if needed; returns their paths. The output depends only on the report.
pub fn write_report(report: &Report, dir: &Path) -> Result<(PathBuf, PathBuf), TrainerError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
    let json_path = dir.join("eval.json");
    let mut json = serde_json::to_string_pretty(report)
        .map_err(|e| TrainerError::Invalid(format!("cannot serialise the report: {e}")))?;
    json.push('\n');
    std::fs::write(&json_path, json).map_err(|e| TrainerError::io(&json_path, e))?;
    let md_path = dir.join("eval.md");
    std::fs::write(&md_path, render_markdown(report)).map_err(|e| TrainerError::io(&md_path, e))?;
    Ok((json_path, md_path))
}

/// The markdown form of the report.
pub fn render_markdown(report: &Report) -> String {
    let files = report.examples_files.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
    let mut out = format!(
        "# Student evaluation\n\n\
         Predictions: `{}`  \nExamples: {files}\n\n\
         | records | count |\n|---|---:|\n\
         | examples | {} |\n| predictions | {} |\n| matched | {} |\n\
         | examples without a prediction | {} |\n| predictions matching no example | {} |\n",
        report.predictions_file,
        report.examples,
        report.predictions,
        report.matched,
        report.missing_predictions,
        report.unmatched_predictions,
    );
    for split in std::iter::once(&report.overall).chain(&report.splits) {
        out.push_str(&render_split(split));
    }
    out.push_str(&format!("\nNote: {}\n", report.note));
    out
}

fn render_split(s: &SplitReport) -> String {
    let rows: [(&str, String); 14] = [
        ("examples", s.examples.to_string()),
        ("without a prediction", s.missing_predictions.to_string()),
        ("evaluated (n)", s.n.to_string()),
        ("liked / disliked", format!("{} / {}", s.liked, s.disliked)),
        ("predicted Yes", s.predicted_yes.to_string()),
        ("AUC", number(s.auc)),
        ("accuracy", number(s.accuracy)),
        ("precision", number(s.precision)),
        ("recall", number(s.recall)),
        ("F1", number(s.f1)),
        ("with reasoning", s.with_reasoning.to_string()),
        ("ROUGE-L F1 (mean)", number(s.rouge_l_f1)),
        ("BLEU-4 (corpus)", number(s.bleu4)),
        ("BERTScore F1", "not computed".to_owned()),
    ];
    let mut out = format!("\n## {}\n\n| metric | value |\n|---|---:|\n", s.split);
    for (name, value) in rows {
        out.push_str(&format!("| {name} | {value} |\n"));
    }
    out
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.4}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    const FOX: &str = "The quick brown fox jumps over the lazy dog";
    const CAT_REF: &str = "the cat is on the mat";
    const CAT_CAND: &str = "the cat sat on the mat";

    /// Examples: test t1..t5 (labels 1,1,0,0,1), validation v1 (1, no reasoning), v2 (0).
    /// Predictions for all but t5, plus x9 which matches no example.
    fn fixture(dir: &Path) -> (Vec<PathBuf>, PathBuf) {
        let examples = write(
            dir,
            "examples.jsonl",
            &[
                &format!(
                    r#"{{"id":"t1","split":"test","user_id":"u1","item_id":"i1","label":1,"instruction":"x","input":"y","output":"Prediction: Yes\nReasoning: r","messages":[{{"role":"user","content":"hi"}}],"reasoning":"{FOX}"}}"#
                ),
                &format!(r#"{{"id":"t2","split":"test","label":1,"reasoning":"{CAT_REF}"}}"#),
                r#"{"id":"t3","split":"test","label":0,"reasoning":"whatever"}"#,
                "",
                r#"{"id":"t4","split":"test","label":0}"#,
                r#"{"id":"t5","split":"test","label":1,"reasoning":"never predicted"}"#,
            ],
        );
        let validation = write(
            dir,
            "validation.jsonl",
            &[
                r#"{"id":"v1","split":"validation","label":1}"#,
                r#"{"id":"v2","split":"validation","label":0,"reasoning":"r"}"#,
            ],
        );
        let preds = write(
            dir,
            "preds.jsonl",
            &[
                &format!(r#"{{"id":"t1","p_yes":0.9,"reasoning":"{FOX}","extra":[1,2]}}"#),
                &format!(r#"{{"id":"t2","p_yes":0.4,"reasoning":"{CAT_CAND}"}}"#),
                r#"{"id":"t3","p_yes":0.4,"prediction":"YES"}"#,
                r#"{"id":"t4","prediction":false}"#,
                r#"{"id":"v1","prediction":" yes ","reasoning":"no reference for this one"}"#,
                r#"{"id":"v2","p_yes":0.2,"reasoning":null}"#,
                r#"{"id":"x9","p_yes":0.5}"#,
            ],
        );
        (vec![examples, validation], preds)
    }

    #[test]
    fn hand_computed_report() {
        let dir = tempfile::tempdir().unwrap();
        let (examples, preds) = fixture(dir.path());
        let report = evaluate(&examples, &preds).unwrap();

        assert_eq!(report.examples, 7);
        assert_eq!(report.predictions, 7);
        assert_eq!(report.matched, 6);
        assert_eq!(report.missing_predictions, 1); // t5
        assert_eq!(report.unmatched_predictions, 1); // x9
        assert_eq!(report.splits.iter().map(|s| s.split.as_str()).collect::<Vec<_>>(), ["validation", "test"]);

        // test split: labels t1..t4 = [1, 1, 0, 0], scores [0.9, 0.4, 0.4 (p_yes wins), 0.0 (false)],
        // hard labels [Yes (0.9 >= .5), No (0.4 < .5), Yes ("YES" wins over p_yes), No].
        // AUC: t1 (0.9) beats t3 and t4: 2; t2 (0.4) ties t3 (0.5) and beats t4 (1): 1.5.
        //      (2 + 1.5) / (2 * 2) = 0.875.
        // TP = t1, FN = t2, FP = t3, TN = t4: accuracy 2/4, precision 1/2, recall 1/2,
        // F1 = 2 / (2 + 1 + 1) = 0.5.
        let test = &report.splits[1];
        assert_eq!((test.examples, test.missing_predictions, test.n), (5, 1, 4));
        assert_eq!((test.liked, test.disliked, test.predicted_yes), (2, 2, 2));
        assert_eq!(test.auc, Some(0.875));
        assert_eq!((test.accuracy, test.precision, test.recall, test.f1), (Some(0.5), Some(0.5), Some(0.5), Some(0.5)));
        // Reasoning on both sides: t1 (identical, ROUGE-L 1) and t2 (cat/mat, LCS 5 of 6 and 6: 5/6).
        // Mean ROUGE-L = (1 + 5/6) / 2 = 11/12.
        // Corpus BLEU: t1 has 9 tokens: matches = totals = 9, 8, 7, 6; t2: matches 5, 3, 1, 0 of
        // totals 6, 5, 4, 3. Sums 14/15, 11/13, 8/11, 6/9; c = r = 15 so BP = 1.
        // BLEU = (14*11*8*6 / (15*13*11*9))^(1/4) = (672/1755)^(1/4) = 0.78663.
        assert_eq!(test.with_reasoning, 2);
        assert!(close(test.rouge_l_f1, 11.0 / 12.0));
        assert!(close(test.bleu4, (672.0f64 / 1755.0).powf(0.25)));

        // validation: v1 ("yes" -> score 1, Yes), v2 (0.2, No): AUC 1; all four metrics 1.
        // v1's reasoning has no reference and v2's is null: no text metrics.
        let validation = &report.splits[0];
        assert_eq!((validation.n, validation.liked, validation.disliked), (2, 1, 1));
        assert_eq!(validation.auc, Some(1.0));
        assert_eq!(validation.f1, Some(1.0));
        assert_eq!(validation.accuracy, Some(1.0));
        assert_eq!((validation.with_reasoning, validation.rouge_l_f1, validation.bleu4), (0, None, None));

        // overall: labels [1,1,0,0,1,0], scores [0.9,0.4,0.4,0.0,1.0,0.2].
        // AUC: 0.9 beats the 3 negatives (0.4, 0.0, 0.2): 3; 0.4 beats 0.0 and 0.2, ties 0.4: 2.5;
        //      1.0 beats all 3: 3. (3 + 2.5 + 3) / (3 * 3) = 8.5/9.
        // TP = t1, v1; FN = t2; FP = t3; TN = t4, v2: accuracy 4/6, precision 2/3, recall 2/3,
        // F1 = 4 / (4 + 1 + 1) = 2/3.
        let all = &report.overall;
        assert_eq!((all.split.as_str(), all.n, all.examples, all.missing_predictions), ("all", 6, 7, 1));
        assert!(close(all.auc, 8.5 / 9.0));
        assert!(close(all.accuracy, 4.0 / 6.0));
        assert!(close(all.precision, 2.0 / 3.0));
        assert!(close(all.recall, 2.0 / 3.0));
        assert!(close(all.f1, 2.0 / 3.0));
        assert_eq!(all.with_reasoning, 2);
        assert!(report.note.contains("BERTScore"));
    }

    #[test]
    fn bad_p_yes_names_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let (examples, _) = fixture(dir.path());
        let preds = write(dir.path(), "bad.jsonl", &[r#"{"id":"t1","p_yes":0.3}"#, r#"{"id":"t2","p_yes":1.7}"#]);
        let err = evaluate(&examples, &preds).unwrap_err();
        assert!(matches!(err, TrainerError::Input { line: 2, .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.ends_with("bad.jsonl:2: field `p_yes`: expected a number in [0,1], got 1.7"), "{message}");
    }

    #[test]
    fn other_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (examples, good_preds) = fixture(dir.path());
        let cases: [(&[&str], &str); 6] = [
            (&["{\"id\":\"t1\",\"p_yes\":0.3}", "{not json"], "p.jsonl:2: invalid JSON"),
            (&[r#"{"p_yes":0.3}"#], "p.jsonl:1: field `id`: missing"),
            (&[r#"{"id":7,"p_yes":0.3}"#], "p.jsonl:1: field `id`: expected a string, got 7"),
            (&["", r#"{"id":"a"}"#], "p.jsonl:2: no score: expected field `p_yes` or `prediction`"),
            (&[r#"{"id":"a","prediction":"maybe"}"#], "p.jsonl:1: field `prediction`: expected \"yes\""),
            (&["[1,2]"], "p.jsonl:1: expected a JSON object, got [1,2]"),
        ];
        for (lines, expected) in cases {
            let preds = write(dir.path(), "p.jsonl", lines);
            let message = evaluate(&examples, &preds).unwrap_err().to_string();
            assert!(message.contains(expected), "{message} should contain {expected}");
        }
        // A bad example line names the examples file.
        let bad_examples = write(
            dir.path(),
            "ex.jsonl",
            &[r#"{"id":"a","split":"test","label":1}"#, r#"{"id":"b","split":"test","label":"yes"}"#],
        );
        let message = evaluate(&[bad_examples], &good_preds).unwrap_err().to_string();
        assert!(
            message.contains("ex.jsonl:2: field `label`: expected 1 (liked) or 0 (disliked), got \"yes\""),
            "{message}"
        );
        let missing = write(dir.path(), "ex2.jsonl", &[r#"{"id":"a","label":1}"#]);
        let message = evaluate(&[missing], &good_preds).unwrap_err().to_string();
        assert!(message.contains("ex2.jsonl:1: field `split`: missing"), "{message}");
        // An absent file is an Io error naming it.
        let err = evaluate(&[dir.path().join("nope.jsonl")], &good_preds).unwrap_err();
        assert!(matches!(err, TrainerError::Io { .. }) && err.to_string().contains("nope.jsonl"));
        assert!(matches!(evaluate(&[], &good_preds), Err(TrainerError::Invalid(_))));
    }

    #[test]
    fn duplicate_ids_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (examples, _) = fixture(dir.path());
        let preds = write(
            dir.path(),
            "dup.jsonl",
            &[r#"{"id":"t1","p_yes":0.3}"#, r#"{"id":"t2","p_yes":0.3}"#, r#"{"id":"t1","prediction":"no"}"#],
        );
        let err = evaluate(&examples, &preds).unwrap_err();
        assert!(matches!(err, TrainerError::Input { line: 3, .. }));
        assert!(err.to_string().contains("dup.jsonl:3: field `id`: duplicate prediction id \"t1\" (first on line 1)"));
        // An unmatched id repeated is still a duplicate.
        let preds = write(dir.path(), "dup2.jsonl", &[r#"{"id":"zz","p_yes":0.3}"#, r#"{"id":"zz","p_yes":0.3}"#]);
        assert!(evaluate(&examples, &preds).unwrap_err().to_string().contains("dup2.jsonl:2"));
        // The same example id in two files.
        let again = write(dir.path(), "again.jsonl", &[r#"{"id":"v2","split":"test","label":0}"#]);
        let (_, good_preds) = fixture(dir.path());
        let message = evaluate(&[examples[1].clone(), again], &good_preds).unwrap_err().to_string();
        assert!(message.contains("again.jsonl:1: field `id`: duplicate example id \"v2\""), "{message}");
        assert!(message.contains("validation.jsonl:2)"), "{message}");
    }

    #[test]
    fn missing_and_unmatched_counts() {
        let dir = tempfile::tempdir().unwrap();
        let examples = write(
            dir.path(),
            "e.jsonl",
            &[
                r#"{"id":"a","split":"train","label":1}"#,
                r#"{"id":"b","split":"train","label":0}"#,
                r#"{"id":"c","split":"test","label":1}"#,
            ],
        );
        let preds = write(
            dir.path(),
            "p.jsonl",
            &[r#"{"id":"c","p_yes":0.7}"#, r#"{"id":"q","p_yes":0.1}"#, r#"{"id":"r","prediction":true}"#],
        );
        let report = evaluate(&[examples], &preds).unwrap();
        assert_eq!((report.matched, report.missing_predictions, report.unmatched_predictions), (1, 2, 2));
        let train = &report.splits[0];
        assert_eq!((train.split.as_str(), train.examples, train.missing_predictions, train.n), ("train", 2, 2, 0));
        // Nothing evaluated: no metric at all rather than zeros.
        assert_eq!((train.auc, train.accuracy, train.f1), (None, None, None));
        let test = &report.splits[1];
        // One example, one class: AUC undefined; the single Yes is right.
        assert_eq!((test.n, test.auc, test.accuracy, test.precision), (1, None, Some(1.0), Some(1.0)));
    }

    #[test]
    fn report_files_are_sorted_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let splits = ["test", "zeta", "validation", "alpha", "train"];
        let lines: Vec<String> = splits
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                [
                    format!(r#"{{"id":"{s}-1","split":"{s}","label":1,"reasoning":"good fit {i}"}}"#),
                    format!(r#"{{"id":"{s}-0","split":"{s}","label":0}}"#),
                ]
            })
            .collect();
        let examples = write(dir.path(), "e.jsonl", &lines.iter().map(String::as_str).collect::<Vec<_>>());
        let preds: Vec<String> = splits
            .iter()
            .flat_map(|s| {
                [
                    format!(r#"{{"id":"{s}-1","p_yes":0.8,"reasoning":"a good fit"}}"#),
                    format!(r#"{{"id":"{s}-0","p_yes":0.3}}"#),
                ]
            })
            .collect();
        let preds = write(dir.path(), "p.jsonl", &preds.iter().map(String::as_str).collect::<Vec<_>>());
        let report = evaluate(&[examples], &preds).unwrap();
        let order: Vec<&str> = report.splits.iter().map(|s| s.split.as_str()).collect();
        assert_eq!(order, ["train", "validation", "test", "alpha", "zeta"]);

        let out = dir.path().join("out");
        let (json_path, md_path) = write_report(&report, &out).unwrap();
        let json = std::fs::read_to_string(&json_path).unwrap();
        let md = std::fs::read_to_string(&md_path).unwrap();
        let parsed: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["overall"]["auc"], 1.0);
        assert_eq!(parsed["splits"][0]["split"], "train");
        assert_eq!(parsed["splits"][0]["rouge_l_f1"], Value::from(report.splits[0].rouge_l_f1.unwrap()));
        assert!(parsed["note"].as_str().unwrap().contains("--bertscore"));
        assert!(md.contains("| AUC | 1.0000 |"), "{md}");
        let headings: Vec<&str> = md.lines().filter(|l| l.starts_with("## ")).collect();
        assert_eq!(headings, ["## all", "## train", "## validation", "## test", "## alpha", "## zeta"]);

        // Same inputs, same bytes.
        let again = evaluate(&[dir.path().join("e.jsonl")], &dir.path().join("p.jsonl")).unwrap();
        let out2 = dir.path().join("out2");
        let (json2, md2) = write_report(&again, &out2).unwrap();
        assert_eq!(std::fs::read_to_string(json2).unwrap(), json);
        assert_eq!(std::fs::read_to_string(md2).unwrap(), md);
    }
}
