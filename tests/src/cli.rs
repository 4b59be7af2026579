//! The CLI tests' helpers (`crates/cli/tests`): a config file that points the real binary at a
//! [`TestEnv`]'s database, broker names and prompts, and the binary's runs with their checks.

use crate::{TestEnv, repo_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Writes `dir/reasonrec.toml` for `env`: its database, broker prefix and prompts, warnings only
/// in the log, then `extra` (more sections, e.g. `[[teacher.endpoints]]`).
pub fn write_config(env: &TestEnv, dir: &Path, extra: &str) -> anyhow::Result<PathBuf> {
    let s = &env.settings;
    let text = format!(
        "[database]\nurl = {:?}\n[broker]\nurl = {:?}\nprefix = {:?}\n[prompts]\ndir = {:?}\n[log]\nfilter = \"warn\"\n{extra}",
        s.database.url,
        s.broker.url,
        s.broker.prefix,
        s.prompts.dir.display().to_string(),
    );
    let path = dir.join("reasonrec.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The `[[teacher.endpoints]]` section of `env`'s mock teacher.
pub fn mock_endpoint(env: &TestEnv) -> String {
    let url = env.settings.teacher.endpoints.first().map(|e| e.base_url.clone()).unwrap_or_default();
    format!("[[teacher.endpoints]]\nname = \"mock\"\nbase_url = {url:?}\n")
}

/// Runs the binary `bin` with `--config config` and `args`, in the repository's root.
pub fn run(bin: &str, config: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let mut all = vec!["--config", config.to_str().unwrap_or_default()];
    all.extend_from_slice(args);
    Ok(Command::new(bin).args(&all).current_dir(repo_root()).output()?)
}

/// Asserts the run succeeded (showing its output if not); its stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts the run failed and said `what` on stderr.
pub fn refused(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a refusal, got exit 0: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains(what), "stderr lacks {what:?}:\n{err}");
}

/// The successful run's stdout as JSON.
pub fn json(out: &Output) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&ok(out))?)
}
