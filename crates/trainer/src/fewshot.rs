//! Few-shot training sets: from the kept training rows, `n` examples half liked and half disliked
//! (where a class has too few, the other fills the rest), drawn with a seed, each set inside the
//! next larger one (64 ⊂ 128 ⊂ 256).
//!
//! The draw shuffles the liked and the disliked ids (each list in id order first) with SplitMix64
//! seeded by the settings' seed, and every set takes a prefix of both: same rows and seed, same
//! sets, on any machine and with any crate versions (no external RNG whose stream may change).

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and fixed forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0), by rejection so no value is favoured.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// Fisher-Yates.
fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// One few-shot set as drawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FewShotSet {
    /// The size asked for.
    pub requested: usize,
    /// Rows in the set: `requested`, or fewer when the training split has fewer rows.
    pub rows: usize,
    pub liked: usize,
    pub disliked: usize,
}

/// The draw: the sets and, for every selected id, the smallest set that holds it (its index in
/// `sets`, which are ordered by size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FewShotDraw {
    pub sets: Vec<FewShotSet>,
    pub first_set: BTreeMap<Uuid, usize>,
}

impl FewShotDraw {
    /// The selected ids in id order.
    pub fn ids(&self) -> Vec<Uuid> {
        self.first_set.keys().copied().collect()
    }
}

/// Draws nested stratified sets of the `sizes` (deduplicated, ascending) from `candidates`
/// ((id, liked) of every kept training row).
pub fn draw(candidates: &[(Uuid, bool)], sizes: &[usize], seed: u64) -> FewShotDraw {
    let mut sizes: Vec<usize> = sizes.iter().copied().filter(|&n| n > 0).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut liked: Vec<Uuid> = candidates.iter().filter(|c| c.1).map(|c| c.0).collect();
    let mut disliked: Vec<Uuid> = candidates.iter().filter(|c| !c.1).map(|c| c.0).collect();
    liked.sort_unstable();
    disliked.sort_unstable();
    let mut rng = SplitMix64(seed);
    shuffle(&mut liked, &mut rng);
    shuffle(&mut disliked, &mut rng);

    let mut sets = Vec::with_capacity(sizes.len());
    let mut first_set = BTreeMap::new();
    for (index, &n) in sizes.iter().enumerate() {
        let n_total = n.min(liked.len() + disliked.len());
        // Half each; a class short of its half gives its place to the other. Both counts only
        // grow with n, so taking prefixes nests the sets.
        let take_liked = liked.len().min((n_total / 2).max(n_total.saturating_sub(disliked.len())));
        let take_disliked = disliked.len().min(n_total - take_liked);
        for id in liked[..take_liked].iter().chain(&disliked[..take_disliked]) {
            first_set.entry(*id).or_insert(index);
        }
        sets.push(FewShotSet {
            requested: n,
            rows: take_liked + take_disliked,
            liked: take_liked,
            disliked: take_disliked,
        });
    }
    FewShotDraw { sets, first_set }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(liked: usize, disliked: usize) -> Vec<(Uuid, bool)> {
        (0..liked + disliked).map(|i| (Uuid::from_u128(i as u128 + 1), i < liked)).collect()
    }

    fn members(d: &FewShotDraw, set: usize) -> Vec<Uuid> {
        d.first_set.iter().filter(|(_, s)| **s <= set).map(|(id, _)| *id).collect()
    }

    #[test]
    fn stratified_nested_and_seeded() {
        let c = candidates(300, 200);
        let d = draw(&c, &[256, 64, 128, 64], 42);
        let shape: Vec<(usize, usize, usize)> = d.sets.iter().map(|s| (s.requested, s.liked, s.disliked)).collect();
        assert_eq!(shape, [(64, 32, 32), (128, 64, 64), (256, 128, 128)]);
        let (a, b, c3) = (members(&d, 0), members(&d, 1), members(&d, 2));
        assert_eq!((a.len(), b.len(), c3.len()), (64, 128, 256));
        assert!(a.iter().all(|id| b.contains(id)) && b.iter().all(|id| c3.contains(id)), "nested");
        assert_eq!(draw(&c, &[64, 128, 256], 42), d, "same seed, same sets");
        assert_ne!(draw(&c, &[64, 128, 256], 7).ids(), d.ids(), "another seed, other sets");
        // The candidates' order does not matter.
        let mut reversed = c.clone();
        reversed.reverse();
        assert_eq!(draw(&reversed, &[64, 128, 256], 42), d);
    }

    #[test]
    fn a_short_class_is_filled_by_the_other_and_sizes_are_capped() {
        let d = draw(&candidates(10, 3), &[4, 8, 100], 1);
        let shape: Vec<(usize, usize, usize)> = d.sets.iter().map(|s| (s.rows, s.liked, s.disliked)).collect();
        assert_eq!(shape, [(4, 2, 2), (8, 5, 3), (13, 10, 3)]);
        assert_eq!(d.first_set.len(), 13);
        let empty = draw(&[], &[4], 1);
        assert_eq!(empty.sets[0].rows, 0);
    }

    #[test]
    fn splitmix_is_the_reference_stream() {
        // First outputs for seed 1234567 (the published reference values of SplitMix64).
        let mut r = SplitMix64(1_234_567);
        assert_eq!(r.next(), 6_457_827_717_110_365_317);
        assert_eq!(r.next(), 3_203_168_211_198_807_973);
    }
}
