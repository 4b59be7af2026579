//! `reasonrec train launch`: the LoRA fine-tuning spec of the student, from the `[trainer]`
//! settings and an export folder, and the configured command that trains on it
//! (`scripts/train_student.py` by default, which reads exactly this spec).

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use reasonrec_core::settings::TrainerSettings;
use serde::Serialize;

use crate::TrainerError;
use crate::export::MANIFEST_FILE;

/// The spec file's name in the output folder.
pub const SPEC_FILE: &str = "train_spec.json";

/// The spec `scripts/train_student.py --spec` reads; every key is required there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainSpec {
    pub base_model: String,
    /// Absolute path of the export folder.
    pub data_dir: PathBuf,
    pub train_file: String,
    pub validation_file: String,
    pub test_file: String,
    /// Absolute path where the adapter, predictions and logs go.
    pub output_dir: PathBuf,
    pub lora: LoraSpec,
    pub learning_rate: f64,
    pub epochs: u32,
    pub batch_size: u32,
    pub gradient_accumulation_steps: u32,
    pub max_seq_length: u32,
    /// The loss covers the assistant turn only (the prompt tokens are masked).
    pub loss_on_answer_only: bool,
    pub early_stopping: EarlyStopping,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoraSpec {
    pub r: u32,
    pub alpha: u32,
    pub dropout: f64,
    pub target_modules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EarlyStopping {
    /// Validation AUC of P(yes), the paper's criterion.
    pub metric: String,
    pub patience: u32,
}

fn absolute(path: &Path) -> Result<PathBuf, TrainerError> {
    std::path::absolute(path).map_err(|e| TrainerError::io(path, e))
}

/// The data file of a split: `<split>.jsonl` when the manifest lists it, else `<split>.parquet`
/// (files in the folder that the manifest does not list are left from another export).
fn split_file(export: &Path, listed: &[String], split: &str) -> Result<String, TrainerError> {
    for ext in ["jsonl", "parquet"] {
        let name = format!("{split}.{ext}");
        if listed.contains(&name) {
            if !export.join(&name).is_file() {
                return Err(TrainerError::Invalid(format!("{}: {name} is missing", export.display())));
            }
            return Ok(name);
        }
    }
    Err(TrainerError::Invalid(format!("{}: the manifest lists no {split}.jsonl or {split}.parquet", export.display())))
}

/// The file names an export's manifest lists.
fn listed_files(export: &Path) -> Result<Vec<String>, TrainerError> {
    let path = export.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => TrainerError::Invalid(format!(
            "{}: no {MANIFEST_FILE}; run `reasonrec train export` into it first",
            export.display()
        )),
        _ => TrainerError::io(&path, e),
    })?;
    let manifest: serde_json::Value = serde_json::from_str(&text).map_err(|e| TrainerError::Input {
        path: path.clone(),
        line: e.line() as u64,
        message: e.to_string(),
    })?;
    let files = manifest["files"].as_array().ok_or_else(|| TrainerError::Input {
        path: path.clone(),
        line: 1,
        message: "field `files`: expected a list".into(),
    })?;
    Ok(files.iter().filter_map(|f| f["name"].as_str().map(str::to_string)).collect())
}

/// Builds the spec for the export folder `export`, training into `out`.
pub fn build_spec(settings: &TrainerSettings, export: &Path, out: &Path) -> Result<TrainSpec, TrainerError> {
    let listed = listed_files(export)?;
    Ok(TrainSpec {
        base_model: settings.base_model.clone(),
        data_dir: absolute(export)?,
        train_file: split_file(export, &listed, "train")?,
        validation_file: split_file(export, &listed, "validation")?,
        test_file: split_file(export, &listed, "test")?,
        output_dir: absolute(out)?,
        lora: LoraSpec {
            r: settings.lora_r,
            alpha: settings.lora_alpha,
            dropout: settings.lora_dropout,
            target_modules: settings.lora_target_modules.clone(),
        },
        learning_rate: settings.learning_rate,
        epochs: settings.epochs,
        batch_size: settings.batch_size,
        gradient_accumulation_steps: settings.gradient_accumulation_steps,
        max_seq_length: settings.max_seq_length,
        loss_on_answer_only: true,
        early_stopping: EarlyStopping { metric: "auc".into(), patience: settings.early_stopping_patience },
        seed: settings.seed,
    })
}

/// Writes `out/train_spec.json` (creating `out`); returns its absolute path.
pub fn write_spec(spec: &TrainSpec, out: &Path) -> Result<PathBuf, TrainerError> {
    std::fs::create_dir_all(out).map_err(|e| TrainerError::io(out, e))?;
    let path = absolute(&out.join(SPEC_FILE))?;
    let mut text = serde_json::to_string_pretty(spec)
        .map_err(|e| TrainerError::Invalid(format!("cannot serialise the spec: {e}")))?;
    text.push('\n');
    std::fs::write(&path, text).map_err(|e| TrainerError::io(&path, e))?;
    Ok(path)
}

/// The command line to run: the configured command with `{spec}` replaced, and `--dry-run`
/// appended when asked.
pub fn command_line(settings: &TrainerSettings, spec: &Path, dry_run: bool) -> Result<Vec<String>, TrainerError> {
    if settings.command.is_empty() {
        return Err(TrainerError::Invalid("trainer.command is empty".into()));
    }
    let spec = spec.display().to_string();
    let mut args: Vec<String> = settings.command.iter().map(|a| a.replace("{spec}", &spec)).collect();
    if dry_run {
        args.push("--dry-run".into());
    }
    Ok(args)
}

/// Runs the command with the caller's stdin, stdout and stderr; returns how it exited.
pub fn run_command(args: &[String]) -> Result<ExitStatus, TrainerError> {
    let Some((program, rest)) = args.split_first() else {
        return Err(TrainerError::Invalid("no command to run".into()));
    };
    std::process::Command::new(program).args(rest).status().map_err(|e| TrainerError::io(program, e))
}

/// A shell-like rendering of a command line, for printing.
pub fn display_command(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:{}@+,".contains(c));
            if plain { a.clone() } else { format!("'{}'", a.replace('\'', r"'\''")) }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spec_has_every_key_the_script_reads() {
        let dir = tempfile::tempdir().unwrap();
        let export = dir.path().join("export");
        std::fs::create_dir_all(&export).unwrap();
        assert!(build_spec(&TrainerSettings::default(), &export, &dir.path().join("out")).is_err(), "no manifest");
        let files = ["train.jsonl", "validation.parquet", "test.jsonl", "test.parquet"];
        for name in files {
            std::fs::write(export.join(name), "").unwrap();
        }
        // A file the manifest does not list (left by an earlier export) is not used.
        std::fs::write(export.join("validation.jsonl"), "").unwrap();
        let listed: Vec<serde_json::Value> = files.iter().map(|f| serde_json::json!({"name": f})).collect();
        std::fs::write(export.join(MANIFEST_FILE), serde_json::json!({"files": listed}).to_string()).unwrap();
        let spec = build_spec(&TrainerSettings::default(), &export, &dir.path().join("out")).unwrap();
        assert_eq!(spec.validation_file, "validation.parquet");
        assert_eq!(spec.test_file, "test.jsonl");
        let path = write_spec(&spec, &dir.path().join("out")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for key in [
            "base_model",
            "data_dir",
            "train_file",
            "validation_file",
            "test_file",
            "output_dir",
            "lora",
            "learning_rate",
            "epochs",
            "batch_size",
            "gradient_accumulation_steps",
            "max_seq_length",
            "loss_on_answer_only",
            "early_stopping",
            "seed",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert_eq!(
            v["lora"],
            serde_json::json!({"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]})
        );
        assert_eq!(v["early_stopping"], serde_json::json!({"metric": "auc", "patience": 2}));
        assert!(Path::new(v["data_dir"].as_str().unwrap()).is_absolute());
    }

    #[test]
    fn command_line_substitutes_the_spec() {
        let s = TrainerSettings::default();
        let args = command_line(&s, Path::new("/x/train_spec.json"), true).unwrap();
        assert_eq!(args, ["python3", "scripts/train_student.py", "--spec", "/x/train_spec.json", "--dry-run"]);
        assert_eq!(display_command(&["a b".into(), "it's".into(), "--x=1".into()]), r"'a b' 'it'\''s' --x=1");
    }
}
