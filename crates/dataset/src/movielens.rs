//! MovieLens-1M: `users.dat`, `movies.dat`, `ratings.dat`, fields separated by `::`.

use crate::error::DatasetError;
use crate::text::{SourceFile, content_hash, describe, read_source};
use reasonrec_core::data::{Family, Interaction, Item, NewDataset, User};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Lines<'a> {
    path: PathBuf,
    file: &'a SourceFile,
}

impl<'a> Lines<'a> {
    /// Non-blank lines as (1-based line number, fields), checking the field count.
    fn records(
        &self,
        names: &'static [&'static str],
    ) -> impl Iterator<Item = Result<(usize, Vec<&'a str>), DatasetError>> + '_ {
        self.file.text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(move |(i, l)| {
            let fields: Vec<&str> = l.trim_end_matches('\r').split("::").collect();
            if fields.len() != names.len() {
                let field = names.get(fields.len().min(names.len() - 1)).copied().unwrap_or("line");
                return Err(DatasetError::Parse {
                    path: self.path.clone(),
                    line: i + 1,
                    field,
                    message: format!(
                        "expected {} `::`-separated fields ({}), found {}",
                        names.len(),
                        names.join("::"),
                        fields.len()
                    ),
                });
            }
            Ok((i + 1, fields))
        })
    }

    fn err(&self, line: usize, field: &'static str, message: String) -> DatasetError {
        DatasetError::Parse { path: self.path.clone(), line, field, message }
    }
}

/// `Toy Story (1995)` -> Some(1995)
pub fn year_of(title: &str) -> Option<i32> {
    let t = title.trim_end();
    let inner = t.strip_suffix(')')?;
    let open = inner.rfind('(')?;
    let y = &inner[open + 1..];
    (y.len() == 4).then(|| y.parse().ok()).flatten()
}

pub fn load_ml1m(dir: &Path, name: &str) -> Result<NewDataset, DatasetError> {
    let users_path = dir.join("users.dat");
    let movies_path = dir.join("movies.dat");
    let ratings_path = dir.join("ratings.dat");
    let users_file = read_source(&users_path)?;
    let movies_file = read_source(&movies_path)?;
    let ratings_file = read_source(&ratings_path)?;

    let mut users = Vec::new();
    let mut user_ids: HashMap<String, i32> = HashMap::new();
    let src = Lines { path: users_path, file: &users_file };
    for rec in src.records(&["user_id", "gender", "age", "occupation", "zip"]) {
        let (line, f) = rec?;
        let ext = f[0].trim();
        if ext.is_empty() {
            return Err(src.err(line, "user_id", "empty id".into()));
        }
        let age: i32 = f[2].trim().parse().map_err(|_| src.err(line, "age", format!("not an integer: {:?}", f[2])))?;
        let occupation: i32 =
            f[3].trim().parse().map_err(|_| src.err(line, "occupation", format!("not an integer: {:?}", f[3])))?;
        let id = users.len() as i32;
        if user_ids.insert(ext.to_string(), id).is_some() {
            return Err(src.err(line, "user_id", format!("duplicate user id {ext:?}")));
        }
        users.push(User {
            id,
            ext_id: ext.to_string(),
            attrs: serde_json::json!({"gender": f[1].trim(), "age": age, "occupation": occupation, "zip": f[4].trim()}),
        });
    }

    let mut items = Vec::new();
    let mut item_ids: HashMap<String, i32> = HashMap::new();
    let src = Lines { path: movies_path, file: &movies_file };
    for rec in src.records(&["movie_id", "title", "genres"]) {
        let (line, f) = rec?;
        let ext = f[0].trim();
        if ext.is_empty() {
            return Err(src.err(line, "movie_id", "empty id".into()));
        }
        let title = f[1].trim();
        if title.is_empty() {
            return Err(src.err(line, "title", "empty title".into()));
        }
        let genres: Vec<&str> = f[2].split('|').map(str::trim).filter(|g| !g.is_empty()).collect();
        let id = items.len() as i32;
        if item_ids.insert(ext.to_string(), id).is_some() {
            return Err(src.err(line, "movie_id", format!("duplicate movie id {ext:?}")));
        }
        items.push(Item {
            id,
            ext_id: ext.to_string(),
            title: title.to_string(),
            attrs: serde_json::json!({"genres": genres, "year": year_of(title)}),
        });
    }

    let mut interactions = Vec::new();
    let src = Lines { path: ratings_path, file: &ratings_file };
    for rec in src.records(&["user_id", "movie_id", "rating", "timestamp"]) {
        let (line, f) = rec?;
        let user_id = *user_ids
            .get(f[0].trim())
            .ok_or_else(|| src.err(line, "user_id", format!("user {:?} is not in users.dat", f[0])))?;
        let item_id = *item_ids
            .get(f[1].trim())
            .ok_or_else(|| src.err(line, "movie_id", format!("movie {:?} is not in movies.dat", f[1])))?;
        let rating: f32 = f[2]
            .trim()
            .parse()
            .ok()
            .filter(|r: &f32| (0.5..=5.0).contains(r))
            .ok_or_else(|| src.err(line, "rating", format!("expected a number from 1 to 5, got {:?}", f[2])))?;
        let ts: i64 = f[3]
            .trim()
            .parse()
            .ok()
            .filter(|t: &i64| *t >= 0)
            .ok_or_else(|| src.err(line, "timestamp", format!("expected unix seconds, got {:?}", f[3])))?;
        interactions.push(Interaction { user_id, item_id, rating, ts, review: None });
    }
    if interactions.is_empty() {
        return Err(DatasetError::Invalid(format!("{}: no ratings", src.path.display())));
    }

    let files = [&users_file, &movies_file, &ratings_file];
    Ok(NewDataset {
        name: name.to_string(),
        format: "ml-1m".into(),
        family: Family::Movielens,
        content_hash: content_hash(&files),
        source: describe(&files),
        users,
        items,
        interactions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, users: &str, movies: &[u8], ratings: &str) {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(dir.join("users.dat"), users);
        let _ = std::fs::write(dir.join("movies.dat"), movies);
        let _ = std::fs::write(dir.join("ratings.dat"), ratings);
    }

    fn tmp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rr-ml1m-{tag}-{}", std::process::id()))
    }

    #[test]
    fn loads_latin1_titles_and_blank_lines() {
        let dir = tmp("ok");
        // "Café Noir (1994)" in Latin-1: é = 0xE9
        let movies = b"1::Toy Story (1995)::Animation|Children's|Comedy\n\n2::Caf\xe9 Noir (1994)::Drama\n";
        write(
            &dir,
            "1::F::1::10::48067\n2::M::56::16::70072\n",
            movies,
            "1::1::5::978300760\n1::2::3::978302109\n\n2::2::4::978300000\n",
        );
        let ds = load_ml1m(&dir, "t");
        let _ = std::fs::remove_dir_all(&dir);
        let Ok(ds) = ds else { panic!("{ds:?}") };
        assert_eq!(ds.users.len(), 2);
        assert_eq!(ds.items[1].title, "Café Noir (1994)");
        assert_eq!(ds.items[0].attrs["genres"][1], "Children's");
        assert_eq!(ds.items[0].attrs["year"], 1995);
        assert_eq!(ds.interactions.len(), 3);
        assert_eq!(ds.interactions[2].user_id, 1);
        assert_eq!(ds.source[1]["latin1"], true);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let dir = tmp("bad");
        write(&dir, "1::F::1::10::48067\n", b"1::Heat (1995)::Action\n", "1::1::5::978300760\n1::1::five::978300761\n");
        let err = load_ml1m(&dir, "t").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.ends_with("ratings.dat:2: field `rating`: expected a number from 1 to 5, got \"five\""), "{err}");

        write(&dir, "1::F::1::10::48067\n", b"1::Heat (1995)::Action\n", "1::9::5::978300760\n");
        let err = load_ml1m(&dir, "t").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("ratings.dat:1: field `movie_id`"), "{err}");

        write(&dir, "1::F::1::10::48067\n", b"1::Heat (1995)\n", "1::1::5::978300760\n");
        let err = load_ml1m(&dir, "t").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("movies.dat:1: field `genres`"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn year_parsing() {
        assert_eq!(year_of("Heat (1995)"), Some(1995));
        assert_eq!(year_of("City of Lost Children, The (Cité des enfants perdus, La) (1995)"), Some(1995));
        assert_eq!(year_of("No year"), None);
    }
}
