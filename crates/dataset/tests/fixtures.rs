//! Every loader on its hand-written fixture (tests/fixtures/<format>), awkward cases included.

use reasonrec_core::data::{Family, NewDataset};
use std::path::PathBuf;

fn fixture(format: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(format)
}

fn load(format: &str) -> NewDataset {
    match reasonrec_dataset::load(format, &fixture(format), "fx") {
        Ok(ds) => ds,
        Err(e) => panic!("{format}: {e}"),
    }
}

fn title_of(ds: &NewDataset, ext: &str) -> String {
    ds.items.iter().find(|i| i.ext_id == ext).map(|i| i.title.clone()).unwrap_or_default()
}

#[test]
fn ml_1m() {
    let ds = load("ml-1m");
    assert_eq!((ds.users.len(), ds.items.len(), ds.interactions.len()), (3, 3, 6));
    assert_eq!(title_of(&ds, "2"), "Cité des enfants perdus, La (1995)", "Latin-1 decoded");
    assert_eq!(ds.family, Family::Movielens);
}

#[test]
fn ml_100k() {
    let ds = load("ml-100k");
    assert_eq!((ds.users.len(), ds.items.len(), ds.interactions.len()), (2, 2, 3));
    assert_eq!(title_of(&ds, "2"), "Cité des enfants perdus, La (1995)");
    assert_eq!(ds.items[1].attrs["genres"], serde_json::json!(["Adventure", "Sci-Fi"]));
    assert_eq!(ds.source["duplicates_dropped"], 1);
}

#[test]
fn ml_latest() {
    let ds = load("ml-latest");
    assert_eq!((ds.users.len(), ds.items.len(), ds.interactions.len()), (2, 3, 4));
    assert_eq!(title_of(&ds, "2"), "American President, The (1995)", "quoted comma");
    assert_eq!(title_of(&ds, "3"), "Film with \"quotes\" (2001)", "escaped quotes");
    assert_eq!(ds.items[2].attrs["genres"], serde_json::json!([]), "(no genres listed) is no genre");
    assert_eq!(ds.items[0].attrs["tags"], serde_json::json!(["pixar"]), "tags folded case-insensitively");
    assert_eq!(ds.items[1].attrs["tags"], serde_json::json!(["politics, romance"]));
    assert_eq!(ds.interactions.iter().find(|r| r.item_id == 2).map(|r| r.rating), Some(0.5));
    assert_eq!(ds.source["duplicates_dropped"], 1);
}

#[test]
fn amazon() {
    let ds = load("amazon");
    assert_eq!((ds.users.len(), ds.items.len(), ds.interactions.len()), (2, 3, 3));
    assert_eq!(ds.family, Family::Amazon);
    let boot = &ds.items[0];
    assert_eq!(boot.attrs["description"], "Full-grain leather. Rubber sole.", "description list joined");
    assert_eq!(boot.attrs["price"], "$49.99");
    assert_eq!(boot.attrs["categories"], serde_json::json!(["Clothing, Shoes & Jewelry", "Women", "Shoes"]));
    let scarf = &ds.items[1];
    assert_eq!(scarf.title, "Silk Scarf – Floral");
    assert_eq!(scarf.attrs["description"], "A light silk scarf with a floral print.");
    assert_eq!(
        scarf.attrs["categories"],
        serde_json::json!(["Clothing, Shoes & Jewelry", "Accessories"]),
        "nested categories"
    );
    assert_eq!(scarf.attrs["price"], serde_json::Value::Null, "empty price is no price");
    let belt = &ds.items[2];
    assert_eq!((belt.ext_id.as_str(), belt.title.as_str()), ("B003", "B003"), "no meta: the asin stands in");
    assert_eq!(belt.attrs["meta"], false);
    let first = &ds.interactions[0];
    assert_eq!(first.review.as_ref().map(|r| r["summary"].clone()), Some(serde_json::json!("Great boots")));
    assert_eq!(ds.source["duplicates_dropped"], 1);
}

#[test]
fn generic_jsonl() {
    let ds = load("jsonl");
    assert_eq!((ds.users.len(), ds.items.len(), ds.interactions.len()), (2, 2, 2));
    assert_eq!(ds.family, Family::Generic);
    assert_eq!(ds.users[0].attrs["country"], "DE");
    assert_eq!(ds.items[1].ext_id, "2", "integer ids become strings");
    assert_eq!(ds.interactions[1].ts, 1_700_000_100, "string timestamps parse");
}

#[test]
fn errors_name_file_line_and_field_in_every_format() {
    let dir = std::env::temp_dir().join(format!("rr-fx-{}", std::process::id()));
    let copy = |format: &str| {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        for e in std::fs::read_dir(fixture(format)).into_iter().flatten().flatten() {
            let _ = std::fs::copy(e.path(), dir.join(e.file_name()));
        }
    };
    let err =
        |format: &str| reasonrec_dataset::load(format, &dir, "x").err().map(|e| e.to_string()).unwrap_or_default();

    copy("ml-latest");
    let _ = std::fs::write(
        dir.join("ratings.csv"),
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,9,3.0,964982704\n",
    );
    assert!(
        err("ml-latest").ends_with("ratings.csv:3: field `movieId`: movie \"9\" is not in movies.csv"),
        "{}",
        err("ml-latest")
    );
    let _ = std::fs::write(dir.join("ratings.csv"), "user,movie,rating,timestamp\n");
    assert!(err("ml-latest").contains("ratings.csv:1: field `header`"), "{}", err("ml-latest"));

    copy("amazon");
    let _ = std::fs::write(
        dir.join("reviews.jsonl"),
        "{\"reviewerID\":\"A\",\"asin\":\"B001\",\"overall\":\"five\",\"unixReviewTime\":1}\n",
    );
    assert!(err("amazon").contains("reviews.jsonl:1: field `overall`"), "{}", err("amazon"));
    let _ = std::fs::write(dir.join("reviews.jsonl"), "\n{\"reviewerID\": \"A\", \n");
    assert!(err("amazon").contains("reviews.jsonl:2: field `json`"), "{}", err("amazon"));

    copy("jsonl");
    let _ = std::fs::write(dir.join("items.jsonl"), "{\"id\": \"p1\"}\n");
    assert!(err("jsonl").contains("items.jsonl:1: field `title`"), "{}", err("jsonl"));

    copy("ml-100k");
    let _ = std::fs::write(dir.join("u.data"), "1\t1\t5\n");
    assert!(err("ml-100k").contains("u.data:1: field `timestamp`"), "{}", err("ml-100k"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(reasonrec_dataset::load("csv", &dir, "x").is_err());
}

/// A copy of `format`'s fixture with `byte` put at the start of line 2 of `file`.
fn corrupted(format: &str, file: &str, byte: u8) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-fx-{}-{format}-{file}-{byte}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    for entry in std::fs::read_dir(fixture(format)).into_iter().flatten().flatten() {
        let _ = std::fs::copy(entry.path(), dir.join(entry.file_name()));
    }
    let path = dir.join(file);
    let mut bytes = std::fs::read(&path).unwrap_or_default();
    let line2 = bytes.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes.insert(line2, byte);
    let _ = std::fs::write(&path, bytes);
    dir
}

fn files_of(format: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(fixture(format))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

#[test]
fn a_nul_byte_in_any_file_of_any_format_is_named_by_file_line_and_column() {
    for format in reasonrec_dataset::FORMATS {
        for file in files_of(format) {
            let dir = corrupted(format, &file, 0);
            let err = reasonrec_dataset::load(format, &dir, "fx").err().map(|e| e.to_string()).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            assert!(err.contains(&format!("{file}:2:1: NUL character")), "{format}/{file}: {err:?}");
        }
    }
}

#[test]
fn an_invalid_utf8_byte_is_an_error_in_json_and_csv_and_latin1_only_in_movielens_text_files() {
    for format in reasonrec_dataset::FORMATS {
        for file in files_of(format) {
            let dir = corrupted(format, &file, 0xe9);
            let result = reasonrec_dataset::load(format, &dir, "fx");
            let _ = std::fs::remove_dir_all(&dir);
            let err = result.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
            if matches!(*format, "ml-1m" | "ml-100k") {
                assert!(!err.contains("invalid UTF-8"), "{format}/{file}: Latin-1 by origin: {err}");
                if let Ok(ds) = result {
                    let latin1 = ds.source["files"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|f| f["file"] == file.as_str() && f["latin1"] == true);
                    assert!(latin1, "{format}/{file}: the fallback is said in the dataset's source");
                }
            } else {
                assert!(err.contains(&format!("{file}:2:1: invalid UTF-8 (byte 0xe9)")), "{format}/{file}: {err:?}");
            }
        }
    }
}

/// A sink that keeps what it is given, to compare a streamed load with a kept one.
#[derive(Clone, Default)]
struct Collect(
    std::sync::Arc<
        std::sync::Mutex<(Option<reasonrec_core::data::DatasetHeader>, Vec<reasonrec_core::data::Interaction>)>,
    >,
);

impl reasonrec_dataset::InteractionSink for Collect {
    fn start(&mut self, header: reasonrec_core::data::DatasetHeader) -> Result<(), reasonrec_dataset::DatasetError> {
        if let Ok(mut s) = self.0.lock() {
            s.0 = Some(header);
        }
        Ok(())
    }
    fn rows(&mut self, rows: Vec<reasonrec_core::data::Interaction>) -> Result<(), reasonrec_dataset::DatasetError> {
        if let Ok(mut s) = self.0.lock() {
            s.1.extend(rows);
        }
        Ok(())
    }
}

#[test]
fn a_streamed_load_gives_what_a_kept_load_gives() {
    for format in reasonrec_dataset::FORMATS {
        let kept = load(format);
        let sink = Collect::default();
        let streamed = match reasonrec_dataset::load_streaming(format, &fixture(format), "fx", Box::new(sink.clone())) {
            Ok(ds) => ds,
            Err(e) => panic!("{format}: {e}"),
        };
        let Ok(got) = sink.0.lock() else { panic!("poisoned") };
        let header = got.0.clone().unwrap_or_else(|| panic!("{format}: no header before the rows"));
        assert_eq!((header.content_hash.as_str(), header.format.as_str()), (kept.content_hash.as_str(), *format));
        assert!(streamed.interactions.is_empty(), "{format}: streamed rows are not kept");
        assert_eq!(streamed.users, kept.users, "{format}");
        assert_eq!(streamed.items, kept.items, "{format}");
        // The writer drops exact repeats keeping the first: do the same to compare.
        let mut seen = std::collections::HashSet::new();
        let deduped: Vec<_> = got.1.iter().filter(|x| seen.insert((x.user_id, x.item_id, x.ts))).cloned().collect();
        assert_eq!(deduped, kept.interactions, "{format}");
    }
}
