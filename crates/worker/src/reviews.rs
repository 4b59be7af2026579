//! Which reviews an item profile sees (the paper's rule): verified reviews only; all of them when
//! there are 10 or fewer, each cut to its first 100 words; otherwise 10 sampled in proportion to
//! the star-rating distribution, each cut to 50 words. Deterministic per item.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;
use std::collections::BTreeMap;

pub const MAX_REVIEWS: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReviewView {
    pub rating: f32,
    pub text: String,
}

fn first_words(text: &str, n: usize) -> String {
    text.split_whitespace().take(n).collect::<Vec<_>>().join(" ")
}

/// `reviews`: (rating, stored review object with `text`, `summary`, `verified`).
pub fn sample_reviews(item_id: i32, reviews: &[(f32, serde_json::Value)]) -> Vec<ReviewView> {
    let usable: Vec<(f32, String)> = reviews
        .iter()
        .filter(|(_, r)| r["verified"].as_bool() != Some(false))
        .filter_map(|(rating, r)| {
            let text = r["text"].as_str().or_else(|| r["summary"].as_str())?.trim();
            (!text.is_empty()).then(|| (*rating, text.to_string()))
        })
        .collect();
    if usable.len() <= MAX_REVIEWS {
        return usable.into_iter().map(|(rating, t)| ReviewView { rating, text: first_words(&t, 100) }).collect();
    }
    // Group by star, give each group a share of the 10 slots by largest remainder.
    let mut groups: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (rating, t) in usable.iter() {
        groups.entry((rating * 2.0).round() as i64).or_default().push(t.clone());
    }
    let total = usable.len() as f64;
    let mut shares: Vec<(i64, usize, f64)> = groups
        .iter()
        .map(|(star, g)| {
            let exact = g.len() as f64 * MAX_REVIEWS as f64 / total;
            (*star, exact.floor() as usize, exact - exact.floor())
        })
        .collect();
    let mut left = MAX_REVIEWS - shares.iter().map(|s| s.1).sum::<usize>();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| shares[b].2.total_cmp(&shares[a].2).then(shares[b].0.cmp(&shares[a].0)));
    for i in order {
        if left == 0 {
            break;
        }
        shares[i].1 += 1;
        left -= 1;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(item_id as u64);
    let mut out = Vec::with_capacity(MAX_REVIEWS);
    for (star, n, _) in shares {
        if let Some(g) = groups.get_mut(&star) {
            g.shuffle(&mut rng);
            for t in g.iter().take(n) {
                out.push(ReviewView { rating: star as f32 / 2.0, text: first_words(t, 50) });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(rating: f32, text: &str, verified: bool) -> (f32, serde_json::Value) {
        (rating, serde_json::json!({"text": text, "verified": verified}))
    }

    #[test]
    fn few_reviews_are_all_kept_and_cut_to_100_words() {
        let long = "word ".repeat(150);
        let v = sample_reviews(1, &[r(5.0, &long, true), r(1.0, "bad", true), r(3.0, "unverified", false)]);
        assert_eq!(v.len(), 2, "unverified reviews are left out");
        assert_eq!(v[0].text.split_whitespace().count(), 100);
    }

    #[test]
    fn many_reviews_are_sampled_by_star_share_and_cut_to_50_words() {
        let long = "word ".repeat(80);
        let mut reviews = Vec::new();
        reviews.extend((0..30).map(|_| r(5.0, &long, true)));
        reviews.extend((0..10).map(|_| r(2.0, &long, true)));
        let v = sample_reviews(7, &reviews);
        assert_eq!(v.len(), 10);
        assert_eq!(v.iter().filter(|x| x.rating == 5.0).count(), 8, "75% of 10, rounded by largest remainder");
        assert_eq!(v.iter().filter(|x| x.rating == 2.0).count(), 2);
        assert!(v.iter().all(|x| x.text.split_whitespace().count() == 50));
        assert_eq!(v, sample_reviews(7, &reviews), "deterministic per item");
    }
}
