//! ARCHITECTURE.md's crate table as a test: what each library crate may depend on, and which
//! crate alone may speak to each outside system (lapin: queue; sqlx: store, and core's optional
//! `sqlx` feature that only spells the vocabulary; reqwest: teacher). Read from each crate's
//! `[dependencies]` (dev-dependencies are the tests' business), so a crate that starts calling
//! RabbitMQ or Postgres itself fails here before review.

use anyhow::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The `[dependencies]` of one Cargo.toml: name -> the rest of its line.
fn dependencies(manifest: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(manifest).with_context(|| manifest.display().to_string())?;
    let mut section = String::new();
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_string();
        } else if section == "dependencies"
            && let Some((name, spec)) = line.split_once('=')
        {
            out.insert(name.trim().to_string(), spec.trim().to_string());
        }
    }
    Ok(out)
}

fn workspace_crates() -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut crates = BTreeMap::new();
    for entry in std::fs::read_dir(&root)? {
        let dir = entry?.path();
        let manifest = dir.join("Cargo.toml");
        if manifest.exists() {
            let name = dir.file_name().and_then(|n| n.to_str()).context("a crate directory's name")?;
            crates.insert(format!("reasonrec-{name}"), dependencies(&manifest)?);
        }
    }
    Ok(crates)
}

#[test]
fn each_crate_depends_only_on_what_the_architecture_allows() -> anyhow::Result<()> {
    let internal = |names: &[&str]| names.iter().map(|n| format!("reasonrec-{n}")).collect::<BTreeSet<_>>();
    let allowed: BTreeMap<&str, BTreeSet<String>> = [
        ("reasonrec-core", internal(&[])),
        ("reasonrec-dataset", internal(&["core"])),
        ("reasonrec-store", internal(&["core"])),
        ("reasonrec-queue", internal(&["core"])),
        ("reasonrec-teacher", internal(&["core"])),
        ("reasonrec-ops", internal(&["core"])),
        ("reasonrec-coordinator", internal(&["core", "store", "queue", "dataset", "ops"])),
        ("reasonrec-worker", internal(&["core", "store", "queue", "teacher"])),
        ("reasonrec-trainer", internal(&["core", "store"])),
        ("reasonrec-mock-teacher", internal(&["core", "teacher"])),
    ]
    .into_iter()
    .collect();
    let crates = workspace_crates()?;
    assert!(crates.len() > allowed.len(), "every crate found (cli too): {:?}", crates.keys());
    for (name, deps) in &crates {
        let used: BTreeSet<String> = deps.keys().filter(|d| d.starts_with("reasonrec-")).cloned().collect();
        if name == "reasonrec-cli" {
            continue; // the binary wires everything
        }
        let Some(may) = allowed.get(name.as_str()) else { panic!("{name} is not in ARCHITECTURE.md's crate table") };
        let extra: Vec<_> = used.difference(may).collect();
        assert!(extra.is_empty(), "{name} depends on {extra:?}, which ARCHITECTURE.md does not allow");
    }
    Ok(())
}

#[test]
fn one_crate_speaks_to_each_outside_system() -> anyhow::Result<()> {
    let owners: [(&str, &[&str]); 3] = [
        ("lapin", &["reasonrec-queue"]),
        ("sqlx", &["reasonrec-store", "reasonrec-core"]),
        ("reqwest", &["reasonrec-teacher"]),
    ];
    let crates = workspace_crates()?;
    for (system, may) in owners {
        let users: Vec<&String> = crates.iter().filter(|(_, d)| d.contains_key(system)).map(|(n, _)| n).collect();
        for user in &users {
            assert!(may.contains(&user.as_str()), "{user} depends on {system}; only {may:?} may");
        }
        assert!(!users.is_empty(), "someone uses {system}");
    }
    // core knows sqlx only as an optional feature: it never runs a query.
    let core_sqlx = crates.get("reasonrec-core").and_then(|d| d.get("sqlx")).context("core's sqlx dependency")?;
    assert!(core_sqlx.contains("optional = true"), "core's sqlx must stay optional: {core_sqlx}");
    Ok(())
}
