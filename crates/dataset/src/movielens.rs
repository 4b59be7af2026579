//! MovieLens in its two old text layouts:
//! - ml-1m: `users.dat`, `movies.dat`, `ratings.dat`, fields separated by `::`;
//! - ml-100k: `u.user`, `u.item` (`|`, 19 genre flags), `u.data` (tab-separated).
//!
//! Both may be Latin-1.

use crate::builder::DatasetBuilder;
use crate::error::DatasetError;
use crate::text::{Encoding, SourceFile, read_source};
use reasonrec_core::data::{Family, NewDataset};
use std::path::Path;

/// A delimited text file read line by line, with errors that name file, line and field.
pub(crate) struct Lines<'a> {
    pub(crate) file: &'a SourceFile,
    pub(crate) sep: &'static str,
}

impl Lines<'_> {
    /// Calls `f` with each non-blank line's (1-based line number, fields), checking the field
    /// count.
    fn each(
        &self,
        names: &'static [&'static str],
        mut f: impl FnMut(usize, &[&str]) -> Result<(), DatasetError>,
    ) -> Result<(), DatasetError> {
        self.file.for_each_line(|line, l| {
            if l.trim().is_empty() {
                return Ok(());
            }
            let fields: Vec<&str> = l.split(self.sep).collect();
            if fields.len() != names.len() {
                let field = names.get(fields.len().min(names.len() - 1)).copied().unwrap_or("line");
                return Err(self.err(
                    line,
                    field,
                    format!(
                        "expected {} `{}`-separated fields ({}), found {}",
                        names.len(),
                        self.sep.escape_default(),
                        names.join(self.sep),
                        fields.len()
                    ),
                ));
            }
            f(line, &fields)
        })
    }

    pub(crate) fn err(&self, line: usize, field: &'static str, message: String) -> DatasetError {
        DatasetError::Parse { path: self.file.path.clone(), line, field, message }
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

pub fn load_ml1m(dir: &Path, name: &str, mut b: DatasetBuilder) -> Result<NewDataset, DatasetError> {
    let users_path = dir.join("users.dat");
    let movies_path = dir.join("movies.dat");
    let ratings_path = dir.join("ratings.dat");
    let users_file = read_source(&users_path, Encoding::Utf8OrLatin1)?;
    let movies_file = read_source(&movies_path, Encoding::Utf8OrLatin1)?;
    let ratings_file = read_source(&ratings_path, Encoding::Utf8OrLatin1)?;
    let files = [&users_file, &movies_file, &ratings_file];
    b.start(name, "ml-1m", Family::Movielens, &files)?;

    let src = Lines { file: &users_file, sep: "::" };
    src.each(&["user_id", "gender", "age", "occupation", "zip"], |line, f| {
        let ext = non_empty(&src, line, "user_id", f[0])?;
        let age = parse_int(&src, line, "age", f[2])?;
        let occupation = parse_int(&src, line, "occupation", f[3])?;
        let attrs =
            serde_json::json!({"gender": f[1].trim(), "age": age, "occupation": occupation, "zip": f[4].trim()});
        b.declare_user(ext, attrs).map_err(|m| src.err(line, "user_id", m))?;
        Ok(())
    })?;

    let src = Lines { file: &movies_file, sep: "::" };
    src.each(&["movie_id", "title", "genres"], |line, f| {
        let ext = non_empty(&src, line, "movie_id", f[0])?;
        let title = non_empty(&src, line, "title", f[1])?;
        let genres: Vec<&str> = f[2].split('|').map(str::trim).filter(|g| !g.is_empty()).collect();
        let attrs = serde_json::json!({"genres": genres, "year": year_of(title)});
        b.declare_item(ext, title, attrs).map_err(|m| src.err(line, "movie_id", m))?;
        Ok(())
    })?;

    let src = Lines { file: &ratings_file, sep: "::" };
    src.each(&["user_id", "movie_id", "rating", "timestamp"], |line, f| {
        let (user, item, rating, ts) =
            rating_fields(&src, line, &b, [f[0], f[1], f[2], f[3]], ("users.dat", "movies.dat"))?;
        b.interaction(user, item, rating, ts, None)
    })?;
    if b.interaction_count() == 0 {
        return Err(DatasetError::Invalid(format!("{}: no ratings", src.file.path.display())));
    }
    b.finish(name, "ml-1m", Family::Movielens, &files)
}

/// The 19 genre flags of `u.item`, in file order.
pub const ML100K_GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

pub fn load_ml100k(dir: &Path, name: &str, mut b: DatasetBuilder) -> Result<NewDataset, DatasetError> {
    let users_path = dir.join("u.user");
    let items_path = dir.join("u.item");
    let data_path = dir.join("u.data");
    let users_file = read_source(&users_path, Encoding::Utf8OrLatin1)?;
    let items_file = read_source(&items_path, Encoding::Utf8OrLatin1)?;
    let data_file = read_source(&data_path, Encoding::Utf8OrLatin1)?;
    let files = [&users_file, &items_file, &data_file];
    b.start(name, "ml-100k", Family::Movielens, &files)?;

    let src = Lines { file: &users_file, sep: "|" };
    src.each(&["user_id", "age", "gender", "occupation", "zip"], |line, f| {
        let ext = non_empty(&src, line, "user_id", f[0])?;
        let age = parse_int(&src, line, "age", f[1])?;
        let attrs =
            serde_json::json!({"age": age, "gender": f[2].trim(), "occupation": f[3].trim(), "zip": f[4].trim()});
        b.declare_user(ext, attrs).map_err(|m| src.err(line, "user_id", m))?;
        Ok(())
    })?;

    const ITEM_FIELDS: [&str; 24] = [
        "movie_id",
        "title",
        "release_date",
        "video_release_date",
        "imdb_url",
        "genre_unknown",
        "genre_action",
        "genre_adventure",
        "genre_animation",
        "genre_childrens",
        "genre_comedy",
        "genre_crime",
        "genre_documentary",
        "genre_drama",
        "genre_fantasy",
        "genre_film_noir",
        "genre_horror",
        "genre_musical",
        "genre_mystery",
        "genre_romance",
        "genre_sci_fi",
        "genre_thriller",
        "genre_war",
        "genre_western",
    ];
    let src = Lines { file: &items_file, sep: "|" };
    src.each(&ITEM_FIELDS, |line, f| {
        let ext = non_empty(&src, line, "movie_id", f[0])?;
        let title = non_empty(&src, line, "title", f[1])?;
        let mut genres = Vec::new();
        for (i, flag) in f[5..].iter().enumerate() {
            match flag.trim() {
                "1" => genres.push(ML100K_GENRES[i]),
                "0" => {}
                other => {
                    return Err(src.err(line, ITEM_FIELDS[5 + i], format!("genre flag must be 0 or 1, got {other:?}")));
                }
            }
        }
        let attrs = serde_json::json!({"genres": genres, "year": year_of(title), "release_date": f[2].trim()});
        b.declare_item(ext, title, attrs).map_err(|m| src.err(line, "movie_id", m))?;
        Ok(())
    })?;

    let src = Lines { file: &data_file, sep: "\t" };
    src.each(&["user_id", "movie_id", "rating", "timestamp"], |line, f| {
        let (user, item, rating, ts) = rating_fields(&src, line, &b, [f[0], f[1], f[2], f[3]], ("u.user", "u.item"))?;
        b.interaction(user, item, rating, ts, None)
    })?;
    if b.interaction_count() == 0 {
        return Err(DatasetError::Invalid(format!("{}: no ratings", src.file.path.display())));
    }
    b.finish(name, "ml-100k", Family::Movielens, &files)
}

pub(crate) fn non_empty<'a>(
    src: &Lines<'_>,
    line: usize,
    field: &'static str,
    v: &'a str,
) -> Result<&'a str, DatasetError> {
    let v = v.trim();
    if v.is_empty() { Err(src.err(line, field, "empty value".into())) } else { Ok(v) }
}

pub(crate) fn parse_int(src: &Lines<'_>, line: usize, field: &'static str, v: &str) -> Result<i64, DatasetError> {
    v.trim().parse().map_err(|_| src.err(line, field, format!("not an integer: {v:?}")))
}

/// user, item, rating (0.5..=5), unix seconds; users and items must be declared already.
pub(crate) fn rating_fields(
    src: &Lines<'_>,
    line: usize,
    b: &DatasetBuilder,
    f: [&str; 4],
    (users_file, items_file): (&str, &str),
) -> Result<(i32, i32, f32, i64), DatasetError> {
    let user = b
        .user_id(f[0].trim())
        .ok_or_else(|| src.err(line, "user_id", format!("user {:?} is not in {users_file}", f[0])))?;
    let item = b
        .item_id(f[1].trim())
        .ok_or_else(|| src.err(line, "movie_id", format!("movie {:?} is not in {items_file}", f[1])))?;
    let rating = parse_rating(f[2])
        .ok_or_else(|| src.err(line, "rating", format!("expected a number from 1 to 5, got {:?}", f[2])))?;
    let ts =
        parse_ts(f[3]).ok_or_else(|| src.err(line, "timestamp", format!("expected unix seconds, got {:?}", f[3])))?;
    Ok((user, item, rating, ts))
}

pub(crate) fn parse_rating(v: &str) -> Option<f32> {
    v.trim().parse().ok().filter(|r: &f32| (0.5..=5.0).contains(r))
}

pub(crate) fn parse_ts(v: &str) -> Option<i64> {
    v.trim().parse().ok().filter(|t: &i64| *t >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
        let ds = load_ml1m(&dir, "t", DatasetBuilder::default());
        let _ = std::fs::remove_dir_all(&dir);
        let Ok(ds) = ds else { panic!("{ds:?}") };
        assert_eq!(ds.users.len(), 2);
        assert_eq!(ds.items[1].title, "Café Noir (1994)");
        assert_eq!(ds.items[0].attrs["genres"][1], "Children's");
        assert_eq!(ds.items[0].attrs["year"], 1995);
        assert_eq!(ds.interactions.len(), 3);
        assert_eq!(ds.interactions[2].user_id, 1);
        assert_eq!(ds.source["files"][1]["latin1"], true);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let dir = tmp("bad");
        write(&dir, "1::F::1::10::48067\n", b"1::Heat (1995)::Action\n", "1::1::5::978300760\n1::1::five::978300761\n");
        let err = load_ml1m(&dir, "t", DatasetBuilder::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.ends_with("ratings.dat:2: field `rating`: expected a number from 1 to 5, got \"five\""), "{err}");

        write(&dir, "1::F::1::10::48067\n", b"1::Heat (1995)::Action\n", "1::9::5::978300760\n");
        let err = load_ml1m(&dir, "t", DatasetBuilder::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("ratings.dat:1: field `movie_id`"), "{err}");

        write(&dir, "1::F::1::10::48067\n", b"1::Heat (1995)\n", "1::1::5::978300760\n");
        let err = load_ml1m(&dir, "t", DatasetBuilder::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("movies.dat:1: field `genres`"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn loads_ml100k_with_genre_flags_and_latin1() {
        let dir = tmp("100k");
        let _ = std::fs::create_dir_all(&dir);
        let flags =
            |set: &[usize]| (0..19).map(|i| if set.contains(&i) { "1" } else { "0" }).collect::<Vec<_>>().join("|");
        let items = format!(
            "1|Toy Story (1995)|01-Jan-1995||http://x|{}\n2|Cit\u{e9} (1996)|01-Jan-1996||http://y|{}\n",
            flags(&[3, 4, 5]),
            flags(&[8])
        );
        let (latin1, _, _) = encoding_rs::WINDOWS_1252.encode(&items);
        let _ = std::fs::write(dir.join("u.item"), latin1.as_ref());
        let _ = std::fs::write(dir.join("u.user"), "1|24|M|technician|85711\n2|53|F|other|94043\n");
        let _ = std::fs::write(dir.join("u.data"), "1\t1\t5\t874965758\n2\t2\t3\t876893171\n1\t1\t5\t874965758\n");
        let ds = load_ml100k(&dir, "t", DatasetBuilder::default());
        let Ok(ds) = ds else { panic!("{ds:?}") };
        assert_eq!(ds.items[0].attrs["genres"], serde_json::json!(["Animation", "Children's", "Comedy"]));
        assert_eq!(ds.items[1].title, "Cité (1996)");
        assert_eq!(ds.interactions.len(), 2, "the exact duplicate row is dropped");
        assert_eq!(ds.source["duplicates_dropped"], 1);

        let _ = std::fs::write(
            dir.join("u.item"),
            format!("1|Toy Story (1995)|01-Jan-1995||http://x|{}\n", flags(&[3]).replacen('0', "x", 1)),
        );
        let err = load_ml100k(&dir, "t", DatasetBuilder::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("u.item:1: field `genre_unknown`"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn year_parsing() {
        assert_eq!(year_of("Heat (1995)"), Some(1995));
        assert_eq!(year_of("City of Lost Children, The (Cité des enfants perdus, La) (1995)"), Some(1995));
        assert_eq!(year_of("No year"), None);
    }
}
