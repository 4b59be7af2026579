//! Every loader on mutated copies of its fixture (proptest): no panic, bounded memory, and every
//! error names the file (and the line, for a parse or encoding error); an accepted dataset is
//! consistent and storable (ids resolve, ratings finite, no NUL in text).
//!
//! `REASONREC_FUZZ_SECS` bounds the time per format (default 4 s, in `scripts/test.sh`);
//! `scripts/fuzz_ingest.sh` runs it longer (CI: 30 s per format).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reasonrec_dataset::DatasetError;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn fixture(format: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(format)
}

fn files_of(format: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(fixture(format))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default()))
        .collect();
    files.sort();
    files
}

/// One change to a file's bytes; positions are taken modulo the file's length.
#[derive(Debug, Clone)]
enum Edit {
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
    DuplicateLine { line: usize },
    Overwrite { at: usize, byte: u8 },
}

/// Bytes that matter to some format: separators, quotes, brackets, digits, signs, newlines,
/// NUL, invalid UTF-8, and anything else.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => prop::sample::select(b":|\t,\"'{}[]\n\r 0123456789-.eE\\".to_vec()),
        1 => prop::sample::select(vec![0u8, 0xe9, 0xff, 0xc3, 0x80]),
        1 => any::<u8>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), prop::collection::vec(byte(), 1..8)).prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        2 => (any::<usize>(), 1usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        1 => any::<usize>().prop_map(|at| Edit::Truncate { at }),
        1 => any::<usize>().prop_map(|line| Edit::DuplicateLine { line }),
        3 => (any::<usize>(), byte()).prop_map(|(at, byte)| Edit::Overwrite { at, byte }),
    ]
}

fn apply(bytes: &mut Vec<u8>, e: &Edit) {
    let n = bytes.len().max(1);
    match e {
        Edit::Insert { at, bytes: b } => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Edit::Delete { at, len } => {
            let at = at % n;
            let end = (at + len).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
        Edit::Truncate { at } => bytes.truncate(at % n),
        Edit::DuplicateLine { line } => {
            let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
            let chosen = lines[line % lines.len()].to_vec();
            let mut out = bytes.clone();
            out.push(b'\n');
            out.extend_from_slice(&chosen);
            *bytes = out;
        }
        Edit::Overwrite { at, byte } => {
            if !bytes.is_empty() {
                let at = at % bytes.len();
                bytes[at] = *byte;
            }
        }
    }
}

static CASE: AtomicU64 = AtomicU64::new(0);
/// Outcomes seen, to show the mutations reach every kind: accepted, parse, encoding, invalid.
static OUTCOMES: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Loads `format` with `edits` applied to its `file`-th file, and checks the outcome.
fn check(format: &str, originals: &[(String, Vec<u8>)], file: usize, edits: &[Edit]) -> Result<(), TestCaseError> {
    let dir = std::env::temp_dir().join(format!(
        "rr-fuzz-{}-{format}-{}",
        std::process::id(),
        CASE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let target = file % originals.len();
    for (i, (name, bytes)) in originals.iter().enumerate() {
        let mut bytes = bytes.clone();
        if i == target {
            for e in edits {
                apply(&mut bytes, e);
            }
        }
        std::fs::write(dir.join(name), bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    let result = reasonrec_dataset::load(format, &dir, "fuzz");
    let _ = std::fs::remove_dir_all(&dir);
    let names: Vec<&str> = originals.iter().map(|(n, _)| n.as_str()).collect();
    let kind = match &result {
        Ok(_) => 0,
        Err(DatasetError::Parse { .. }) => 1,
        Err(DatasetError::Encoding { .. }) => 2,
        Err(_) => 3,
    };
    OUTCOMES[kind].fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(ds) => {
            let users: HashSet<i32> = ds.users.iter().map(|u| u.id).collect();
            let items: HashSet<i32> = ds.items.iter().map(|i| i.id).collect();
            for x in &ds.interactions {
                prop_assert!(users.contains(&x.user_id) && items.contains(&x.item_id), "{format}: dangling id {x:?}");
                prop_assert!(x.rating.is_finite(), "{format}: rating {}", x.rating);
            }
            for i in &ds.items {
                prop_assert!(!i.title.contains('\0') && !i.ext_id.contains('\0'), "{format}: NUL in {i:?}");
            }
            for u in &ds.users {
                prop_assert!(!u.ext_id.contains('\0'), "{format}: NUL in {u:?}");
            }
        }
        Err(DatasetError::Parse { path, line, .. }) | Err(DatasetError::Encoding { path, line, .. }) => {
            prop_assert!(line >= 1, "{format}: line {line}");
            prop_assert!(names.iter().any(|n| path.ends_with(n)), "{format}: error names {}", path.display());
        }
        Err(DatasetError::Invalid(message)) => {
            prop_assert!(names.iter().any(|n| message.contains(n)), "{format}: error names no file: {message}");
        }
        Err(other) => prop_assert!(false, "{format}: unexpected error {other}"),
    }
    Ok(())
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn fuzz(format: &str) {
    let secs = std::env::var("REASONREC_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let originals = files_of(format);
    assert!(!originals.is_empty(), "no fixture for {format}");
    let strategy = (any::<usize>(), prop::collection::vec(edit(), 1..6));
    let mut rounds = 0;
    while rounds == 0 || Instant::now() < deadline {
        // A runner counts its successes for good: a fresh one (fresh random seed) per round.
        let mut runner = TestRunner::new(Config { cases: 64, failure_persistence: None, ..Config::default() });
        let outcome = runner.run(&strategy, |(file, edits)| check(format, &originals, file, &edits));
        if let Err(e) = outcome {
            panic!("{format}: {e}");
        }
        rounds += 1;
    }
    let peak = peak_rss_mib();
    assert!(peak < 512, "{format}: peak RSS {peak} MiB on fixtures of a few KB");
    let seen: Vec<u64> = OUTCOMES.iter().map(|o| o.load(Ordering::Relaxed)).collect();
    eprintln!(
        "{format}: {} mutated datasets, peak RSS {peak} MiB; so far in this process: {} accepted, {} parse errors, \
         {} encoding errors, {} invalid",
        rounds * 64,
        seen[0],
        seen[1],
        seen[2],
        seen[3]
    );
}

#[test]
fn ml_1m() {
    fuzz("ml-1m");
}

#[test]
fn ml_100k() {
    fuzz("ml-100k");
}

#[test]
fn ml_latest() {
    fuzz("ml-latest");
}

#[test]
fn amazon() {
    fuzz("amazon");
}

#[test]
fn jsonl() {
    fuzz("jsonl");
}

#[test]
fn the_mutations_do_what_they_say() {
    let mut b = b"ab\ncd".to_vec();
    apply(&mut b, &Edit::Insert { at: 1, bytes: vec![b'X'] });
    assert_eq!(b, b"aXb\ncd");
    apply(&mut b, &Edit::Delete { at: 0, len: 2 });
    assert_eq!(b, b"b\ncd");
    apply(&mut b, &Edit::DuplicateLine { line: 1 });
    assert_eq!(b, b"b\ncd\ncd");
    apply(&mut b, &Edit::Overwrite { at: 0, byte: b'Z' });
    apply(&mut b, &Edit::Truncate { at: 3 });
    assert_eq!(b, b"Z\nc");
    let _ = Path::new("");
}
