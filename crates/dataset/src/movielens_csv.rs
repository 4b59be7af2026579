//! MovieLens "latest" CSV layout: `movies.csv` (movieId,title,genres — quoted titles, `|`-joined
//! genres), `ratings.csv` (userId,movieId,rating,timestamp) and optional `tags.csv`
//! (userId,movieId,tag,timestamp), each with a header line.

use crate::builder::DatasetBuilder;
use crate::error::DatasetError;
use crate::movielens::{parse_rating, parse_ts, year_of};
use crate::text::{Encoding, SourceFile, read_source};
use reasonrec_core::data::{Family, NewDataset};
use std::collections::HashMap;
use std::path::Path;

struct Csv<'a> {
    file: &'a SourceFile,
}

impl Csv<'_> {
    fn err(&self, line: usize, field: &'static str, message: String) -> DatasetError {
        DatasetError::Parse { path: self.file.path.clone(), line, field, message }
    }

    /// Calls `f` with each non-blank record as (line, fields), read from disk one at a time,
    /// after checking the header names `fields`.
    fn each(
        &self,
        fields: &'static [&'static str],
        mut f: impl FnMut(usize, &csv::StringRecord) -> Result<(), DatasetError>,
    ) -> Result<(), DatasetError> {
        let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(self.file.reader()?);
        let header = rdr.headers().map_err(|e| self.err(1, "header", e.to_string()))?.clone();
        let got: Vec<&str> = header.iter().map(str::trim).collect();
        if got.len() < fields.len() || got[..fields.len()] != *fields {
            return Err(self.err(
                1,
                "header",
                format!("expected columns {}, found {}", fields.join(","), got.join(",")),
            ));
        }
        let mut rec = csv::StringRecord::new();
        loop {
            let more = rdr.read_record(&mut rec).map_err(|e| {
                let line = e.position().map_or(0, |p| p.line() as usize);
                self.err(line, "csv", e.to_string())
            })?;
            if !more {
                return Ok(());
            }
            let line = rec.position().map_or(0, |p| p.line() as usize);
            if rec.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            if rec.len() != fields.len() {
                let field = fields.get(rec.len().min(fields.len() - 1)).copied().unwrap_or("csv");
                return Err(self.err(line, field, format!("expected {} columns, found {}", fields.len(), rec.len())));
            }
            f(line, &rec)?;
        }
    }
}

pub fn load_ml_latest(dir: &Path, name: &str, mut b: DatasetBuilder) -> Result<NewDataset, DatasetError> {
    let movies_path = dir.join("movies.csv");
    let ratings_path = dir.join("ratings.csv");
    let tags_path = dir.join("tags.csv");
    let movies_file = read_source(&movies_path, Encoding::Utf8)?;
    let ratings_file = read_source(&ratings_path, Encoding::Utf8)?;
    let tags_file = tags_path.is_file().then(|| read_source(&tags_path, Encoding::Utf8)).transpose()?;
    let mut files = vec![&movies_file, &ratings_file];
    files.extend(tags_file.as_ref());
    b.start(name, "ml-latest", Family::Movielens, &files)?;

    let src = Csv { file: &movies_file };
    src.each(&["movieId", "title", "genres"], |line, r| {
        let id = r[0].trim();
        let title = r[1].trim();
        if id.is_empty() {
            return Err(src.err(line, "movieId", "empty value".into()));
        }
        if title.is_empty() {
            return Err(src.err(line, "title", "empty value".into()));
        }
        let genres: Vec<&str> =
            r[2].split('|').map(str::trim).filter(|g| !g.is_empty() && *g != "(no genres listed)").collect();
        let attrs = serde_json::json!({"genres": genres, "year": year_of(title)});
        b.declare_item(id, title, attrs).map_err(|m| src.err(line, "movieId", m))?;
        Ok(())
    })?;

    let src = Csv { file: &ratings_file };
    src.each(&["userId", "movieId", "rating", "timestamp"], |line, r| {
        let user_ext = r[0].trim();
        if user_ext.is_empty() {
            return Err(src.err(line, "userId", "empty value".into()));
        }
        let item = b
            .item_id(r[1].trim())
            .ok_or_else(|| src.err(line, "movieId", format!("movie {:?} is not in movies.csv", &r[1])))?;
        let rating = parse_rating(&r[2])
            .ok_or_else(|| src.err(line, "rating", format!("expected 0.5 to 5, got {:?}", &r[2])))?;
        let ts = parse_ts(&r[3])
            .ok_or_else(|| src.err(line, "timestamp", format!("expected unix seconds, got {:?}", &r[3])))?;
        let user = b.user(user_ext, serde_json::json!({}));
        b.interaction(user, item, rating, ts, None)
    })?;

    if let Some(file) = &tags_file {
        let src = Csv { file };
        let mut counts: HashMap<i32, HashMap<String, u32>> = HashMap::new();
        src.each(&["userId", "movieId", "tag", "timestamp"], |line, r| {
            let item = b
                .item_id(r[1].trim())
                .ok_or_else(|| src.err(line, "movieId", format!("movie {:?} is not in movies.csv", &r[1])))?;
            let tag = r[2].trim().to_lowercase();
            if !tag.is_empty() {
                *counts.entry(item).or_default().entry(tag).or_default() += 1;
            }
            Ok(())
        })?;
        for (item, tags) in counts {
            let mut tags: Vec<(String, u32)> = tags.into_iter().collect();
            tags.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let top: Vec<String> = tags.into_iter().take(10).map(|(t, _)| t).collect();
            if let Some(it) = b.item_mut(item) {
                it.attrs["tags"] = serde_json::json!(top);
            }
        }
    }
    if b.interaction_count() == 0 {
        return Err(DatasetError::Invalid(format!("{}: no ratings", dir.join("ratings.csv").display())));
    }
    b.finish(name, "ml-latest", Family::Movielens, &files)
}
