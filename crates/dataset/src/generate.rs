//! Seeded generators of synthetic datasets in MovieLens-1M and Amazon 2018 formats.
//!
//! Users get two or three favourite genres and rate movies of those genres higher, so like shares
//! and histories look like real ones (~55-65 % of ratings above 3). Same seed, same bytes.
//! `movies.dat` is written in Latin-1 like the original files, with a few accented titles.

use crate::error::DatasetError;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::Path;

/// The 18 MovieLens genres (the ml-100k flags without "unknown").
pub fn genres() -> &'static [&'static str] {
    &crate::movielens::ML100K_GENRES[1..]
}

const ADJECTIVES: &[&str] = &[
    "Silent",
    "Broken",
    "Golden",
    "Midnight",
    "Last",
    "Hidden",
    "Crimson",
    "Electric",
    "Lonely",
    "Wild",
    "Distant",
    "Secret",
    "Frozen",
    "Burning",
    "Forgotten",
    "Restless",
    "Bright",
    "Velvet",
    "Savage",
    "Gentle",
    "Iron",
    "Paper",
];
const NOUNS: &[&str] = &[
    "Harbor",
    "Promise",
    "Frontier",
    "Garden",
    "Empire",
    "Detective",
    "Summer",
    "River",
    "Machine",
    "Letter",
    "Highway",
    "Kingdom",
    "Stranger",
    "Orchard",
    "Signal",
    "Horizon",
    "Island",
    "Mirror",
    "Parade",
    "Witness",
    "Lantern",
    "Voyage",
    "Circus",
    "Heist",
    "Ballad",
    "Alibi",
];
const PLACES: &[&str] = &[
    "Paris",
    "Montréal",
    "Brooklyn",
    "Tangier",
    "Vienna",
    "Reno",
    "São Paulo",
    "Kyoto",
    "Dublin",
    "Zürich",
    "Memphis",
];

/// Sizes and seed of a generated dataset.
#[derive(Debug, Clone, Copy)]
pub struct GenerateSpec {
    pub users: usize,
    pub items: usize,
    pub min_ratings: usize,
    pub max_ratings: usize,
    pub seed: u64,
}

impl Default for GenerateSpec {
    fn default() -> Self {
        Self { users: 300, items: 400, min_ratings: 20, max_ratings: 60, seed: 7 }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generated {
    pub users: usize,
    pub items: usize,
    pub ratings: usize,
}

fn title(rng: &mut StdRng, year: i32) -> String {
    let adj = ADJECTIVES.choose(rng).copied().unwrap_or("Silent");
    let noun = NOUNS.choose(rng).copied().unwrap_or("Harbor");
    let noun2 = NOUNS.choose(rng).copied().unwrap_or("River");
    let place = PLACES.choose(rng).copied().unwrap_or("Paris");
    let base = match rng.random_range(0..6) {
        0 => format!("The {adj} {noun}"),
        1 => format!("{noun} of the {noun2}"),
        2 => format!("{adj} {noun}s"),
        3 => format!("A {noun} in {place}"),
        4 => format!("{noun}, The"),
        _ => format!("{adj} {noun} {}", ["II", "III", "Returns"][rng.random_range(0..3)]),
    };
    format!("{base} ({year})")
}

fn encode_latin1(text: &str) -> Vec<u8> {
    let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(text);
    bytes.into_owned()
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io { path: path.to_path_buf(), source }
}

/// Writes `users.dat`, `movies.dat` and `ratings.dat` into `dir`.
pub fn generate_ml1m(dir: &Path, spec: GenerateSpec) -> Result<Generated, DatasetError> {
    if spec.users == 0 || spec.items == 0 || spec.min_ratings == 0 || spec.max_ratings < spec.min_ratings {
        return Err(DatasetError::Invalid(
            "generate: users, items and ratings per user must be positive, min <= max".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut rng = StdRng::seed_from_u64(spec.seed);

    // Movies: 1-3 genres each.
    let mut movie_genres: Vec<Vec<usize>> = Vec::with_capacity(spec.items);
    let mut movies = String::new();
    for m in 0..spec.items {
        let year = rng.random_range(1950..=2000);
        let n = rng.random_range(1..=3);
        let mut g: Vec<usize> = (0..genres().len()).collect();
        g.shuffle(&mut rng);
        g.truncate(n);
        g.sort_unstable();
        let names: Vec<&str> = g.iter().map(|&i| genres()[i]).collect();
        movies.push_str(&format!("{}::{}::{}\n", m + 1, title(&mut rng, year), names.join("|")));
        movie_genres.push(g);
    }
    let path = dir.join("movies.dat");
    std::fs::write(&path, encode_latin1(&movies)).map_err(io_err(&path))?;

    let users_path = dir.join("users.dat");
    let ratings_path = dir.join("ratings.dat");
    let mut users = std::io::BufWriter::new(std::fs::File::create(&users_path).map_err(io_err(&users_path))?);
    let mut ratings = std::io::BufWriter::new(std::fs::File::create(&ratings_path).map_err(io_err(&ratings_path))?);
    let ages = [1, 18, 25, 35, 45, 50, 56];
    let max_ratings = spec.max_ratings.min(spec.items);
    let min_ratings = spec.min_ratings.min(max_ratings);
    let mut total = 0;
    let mut order: Vec<usize> = (0..spec.items).collect();
    for u in 0..spec.users {
        let gender = if rng.random_bool(0.5) { "F" } else { "M" };
        let age = ages[rng.random_range(0..ages.len())];
        writeln!(
            users,
            "{}::{gender}::{age}::{}::{:05}",
            u + 1,
            rng.random_range(0..21),
            rng.random_range(1000..99999)
        )
        .map_err(io_err(&users_path))?;
        let mut favourites: Vec<usize> = (0..genres().len()).collect();
        favourites.shuffle(&mut rng);
        favourites.truncate(rng.random_range(2..=3));
        let disliked = favourites.pop().map(|_| rng.random_range(0..genres().len())).unwrap_or(0);
        let n = rng.random_range(min_ratings..=max_ratings);
        order.shuffle(&mut rng);
        let mut ts: i64 = rng.random_range(956_703_932..1_010_000_000);
        for &m in order.iter().take(n) {
            let g = &movie_genres[m];
            let mut score: f64 = 3.4 + rng.random_range(-1.2..1.2);
            if g.iter().any(|x| favourites.contains(x)) {
                score += 1.1;
            }
            if g.contains(&disliked) {
                score -= 1.3;
            }
            let rating = (score.round() as i64).clamp(1, 5);
            ts += rng.random_range(30..259_200);
            writeln!(ratings, "{}::{}::{rating}::{ts}", u + 1, m + 1).map_err(io_err(&ratings_path))?;
            total += 1;
        }
    }
    users.flush().map_err(io_err(&users_path))?;
    ratings.flush().map_err(io_err(&ratings_path))?;
    Ok(Generated { users: spec.users, items: spec.items, ratings: total })
}

const PRODUCTS: &[&str] = &[
    "Ankle Boot",
    "Silk Scarf",
    "Leather Belt",
    "Wool Coat",
    "Denim Jacket",
    "Linen Shirt",
    "Canvas Tote",
    "Running Shoe",
    "Rain Jacket",
    "Knit Beanie",
];
const BRANDS: &[&str] = &["Northway", "Maison Lune", "Fieldcraft", "Urbane", "Kestrel & Co", "Tidewater", "Ondine"];
const PRAISE: &[&str] = &[
    "fits true to size",
    "the material feels sturdy",
    "looks even better in person",
    "very comfortable for long days",
    "great value for the price",
];
const COMPLAINTS: &[&str] = &[
    "the stitching came loose quickly",
    "runs small",
    "colour faded after washing",
    "feels cheaper than the photos",
    "uncomfortable after an hour",
];

/// Writes `reviews.jsonl` and `meta.jsonl` (Amazon 2018 layout) into `dir`. About one item in
/// ten has no meta line, descriptions alternate between a string and a list, a few reviews are
/// unverified: the awkward cases of the real files.
pub fn generate_amazon(dir: &Path, spec: GenerateSpec) -> Result<Generated, DatasetError> {
    if spec.users == 0 || spec.items == 0 || spec.min_ratings == 0 || spec.max_ratings < spec.min_ratings {
        return Err(DatasetError::Invalid(
            "generate: users, items and ratings per user must be positive, min <= max".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let meta_path = dir.join("meta.jsonl");
    let reviews_path = dir.join("reviews.jsonl");
    let mut meta = std::io::BufWriter::new(std::fs::File::create(&meta_path).map_err(io_err(&meta_path))?);
    let mut quality = Vec::with_capacity(spec.items);
    for i in 0..spec.items {
        let q: f64 = rng.random_range(-1.0..1.0);
        quality.push(q);
        if i % 10 == 9 {
            continue; // no meta for this one
        }
        let product = PRODUCTS.choose(&mut rng).copied().unwrap_or("Scarf");
        let brand = BRANDS.choose(&mut rng).copied().unwrap_or("Northway");
        let adj = ADJECTIVES.choose(&mut rng).copied().unwrap_or("Bright");
        let desc = format!("A {} {} by {brand}.", adj.to_lowercase(), product.to_lowercase());
        let description = if i % 2 == 0 { serde_json::json!(desc) } else { serde_json::json!([desc, "Imported."]) };
        let line = serde_json::json!({
            "asin": format!("B{:08}", i + 1),
            "title": format!("{brand} {adj} {product}"),
            "brand": brand,
            "price": format!("${}.{:02}", rng.random_range(9..200), rng.random_range(0..100)),
            "description": description,
            "category": ["Clothing, Shoes & Jewelry", product.split(' ').next_back().unwrap_or("Shoe")],
        });
        writeln!(meta, "{line}").map_err(io_err(&meta_path))?;
    }
    meta.flush().map_err(io_err(&meta_path))?;
    let mut reviews = std::io::BufWriter::new(std::fs::File::create(&reviews_path).map_err(io_err(&reviews_path))?);
    let max_ratings = spec.max_ratings.min(spec.items);
    let min_ratings = spec.min_ratings.min(max_ratings);
    let mut order: Vec<usize> = (0..spec.items).collect();
    let mut total = 0;
    for u in 0..spec.users {
        let n = rng.random_range(min_ratings..=max_ratings);
        order.shuffle(&mut rng);
        let mut ts: i64 = rng.random_range(1_400_000_000..1_500_000_000);
        for &i in order.iter().take(n) {
            let score: f64 = 3.9 + quality[i] + rng.random_range(-1.5..1.5);
            let rating = (score.round() as i64).clamp(1, 5);
            let text =
                if rating > 3 { PRAISE.choose(&mut rng) } else { COMPLAINTS.choose(&mut rng) }.copied().unwrap_or("ok");
            ts += rng.random_range(3_600..2_000_000);
            let line = serde_json::json!({
                "overall": rating as f64,
                "verified": rng.random_bool(0.9),
                "reviewerID": format!("A{:07}", u + 1),
                "asin": format!("B{:08}", i + 1),
                "reviewText": format!("{}; {}.", text, if rng.random_bool(0.5) { "would buy again" } else { "arrived on time" }),
                "summary": text,
                "unixReviewTime": ts,
            });
            writeln!(reviews, "{line}").map_err(io_err(&reviews_path))?;
            total += 1;
        }
    }
    reviews.flush().map_err(io_err(&reviews_path))?;
    Ok(Generated { users: spec.users, items: spec.items, ratings: total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_loadable_deterministic_data_with_a_plausible_like_share() {
        let a = std::env::temp_dir().join(format!("rr-gen-a-{}", std::process::id()));
        let b = std::env::temp_dir().join(format!("rr-gen-b-{}", std::process::id()));
        let spec = GenerateSpec { users: 50, items: 80, ..GenerateSpec::default() };
        let ga = generate_ml1m(&a, spec);
        let gb = generate_ml1m(&b, spec);
        assert!(matches!(ga, Ok(g) if g.users == 50 && g.ratings >= 50 * 20));
        assert_eq!(ga.ok(), gb.ok());
        for f in ["users.dat", "movies.dat", "ratings.dat"] {
            assert_eq!(std::fs::read(a.join(f)).ok(), std::fs::read(b.join(f)).ok(), "{f} differs");
        }
        let ds = crate::load("ml-1m", &a, "gen");
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
        let Ok(ds) = ds else { panic!("{ds:?}") };
        let likes = ds.interactions.iter().filter(|r| r.rating > 3.0).count() as f64;
        let share = likes / ds.interactions.len() as f64;
        assert!((0.35..0.75).contains(&share), "like share {share}");
    }

    #[test]
    fn generates_a_loadable_amazon_dataset() {
        let dir = std::env::temp_dir().join(format!("rr-gen-amz-{}", std::process::id()));
        let g = generate_amazon(&dir, GenerateSpec { users: 30, items: 40, min_ratings: 5, max_ratings: 10, seed: 3 });
        let ds = crate::load("amazon", &dir, "amz");
        let _ = std::fs::remove_dir_all(&dir);
        let (Ok(g), Ok(ds)) = (g, ds) else { panic!("generate or load failed") };
        assert_eq!(ds.interactions.len(), g.ratings);
        assert_eq!(ds.items.iter().filter(|i| i.attrs["meta"] == false).count(), 4, "every tenth item has no meta");
        let likes = ds.interactions.iter().filter(|r| r.rating > 3.0).count() as f64 / ds.interactions.len() as f64;
        assert!((0.5..0.95).contains(&likes), "Amazon-like skew to positive ratings: {likes}");
    }
}
