//! Metrics of a student's predictions and explanations, as pure functions.
//!
//! - [`roc_auc`]: area under the ROC curve, ties handled like scikit-learn's `roc_auc_score`.
//! - [`classify`], [`accuracy`], [`f1`]: hard-label metrics, the positive class being "Yes" (liked).
//! - [`tokenize`]: the tokenisation every text-overlap metric below uses.
//! - [`rouge_l_f1`]: LCS-based ROUGE-L F-measure (beta = 1), like the `rougeL` F1 of Google's
//!   `rouge-score` package without stemming.
//! - [`bleu4`], [`corpus_bleu4`], [`BleuCounts`]: BLEU-4 with uniform weights, clipped n-gram
//!   precisions and the brevity penalty, without smoothing.

use std::collections::HashMap;

/// Area under the ROC curve of `scores` for the binary `labels` (`true` = positive).
///
/// Equal to the Mann-Whitney statistic: the share of (positive, negative) pairs in which the
/// positive scores higher, a tie counting 1/2. This is exactly what scikit-learn's
/// `roc_auc_score` computes (the trapezoid under the ROC curve built from distinct thresholds).
///
/// Returns `None` when only one class is present (sklearn raises there), when the slices differ in
/// length, or when a score is NaN.
pub fn roc_auc(labels: &[bool], scores: &[f64]) -> Option<f64> {
    if labels.len() != scores.len() || scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let positives = labels.iter().filter(|&&l| l).count() as u64;
    let negatives = labels.len() as u64 - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Walk groups of equal scores from the lowest up. Each positive beats every negative below its
    // group and ties with the negatives inside it. Counting in halves keeps it exact in integers.
    let mut half_wins: u64 = 0;
    let mut negatives_below: u64 = 0;
    let mut start = 0;
    while start < order.len() {
        let score = scores[order[start]];
        let mut end = start;
        let (mut group_pos, mut group_neg) = (0u64, 0u64);
        // -0.0 and 0.0 are one score for sklearn too, hence `==` rather than `total_cmp`.
        while end < order.len() && scores[order[end]] == score {
            if labels[order[end]] {
                group_pos += 1;
            } else {
                group_neg += 1;
            }
            end += 1;
        }
        half_wins += group_pos * (2 * negatives_below + group_neg);
        negatives_below += group_neg;
        start = end;
    }
    Some(half_wins as f64 / (2 * positives * negatives) as f64)
}

/// Hard-label metrics of a binary classifier; the positive class is "Yes" (liked).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Classification {
    pub true_positives: u64,
    pub false_positives: u64,
    pub true_negatives: u64,
    pub false_negatives: u64,
    /// Correct / all; 0 when there is nothing to classify.
    pub accuracy: f64,
    /// TP / (TP + FP); 0 when nothing was predicted positive.
    pub precision: f64,
    /// TP / (TP + FN); 0 when there is no positive example.
    pub recall: f64,
    /// 2 TP / (2 TP + FP + FN), the harmonic mean of precision and recall; 0 when precision and
    /// recall are both 0 (in particular when nothing was predicted positive), as in scikit-learn
    /// with `zero_division=0`.
    pub f1: f64,
}

/// Confusion counts and derived metrics of `predicted` against `labels`. Pairs beyond the shorter
/// slice are ignored.
pub fn classify(labels: &[bool], predicted: &[bool]) -> Classification {
    let (mut tp, mut fp, mut tn, mut fn_) = (0u64, 0u64, 0u64, 0u64);
    for (&label, &pred) in labels.iter().zip(predicted) {
        match (label, pred) {
            (true, true) => tp += 1,
            (false, true) => fp += 1,
            (false, false) => tn += 1,
            (true, false) => fn_ += 1,
        }
    }
    Classification {
        true_positives: tp,
        false_positives: fp,
        true_negatives: tn,
        false_negatives: fn_,
        accuracy: ratio(tp + tn, tp + fp + tn + fn_),
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, tp + fn_),
        f1: ratio(2 * tp, 2 * tp + fp + fn_),
    }
}

/// Share of correct predictions; 0 when the slices are empty.
pub fn accuracy(labels: &[bool], predicted: &[bool]) -> f64 {
    classify(labels, predicted).accuracy
}

/// F1 of the positive class (see [`Classification::f1`]).
pub fn f1(labels: &[bool], predicted: &[bool]) -> f64 {
    classify(labels, predicted).f1
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 { 0.0 } else { numerator as f64 / denominator as f64 }
}

/// Splits text into tokens for the overlap metrics: lowercase (Unicode), then split on every
/// character that is not alphanumeric in the Unicode sense (so punctuation, whitespace and `_`
/// separate tokens), dropping empty pieces.
///
/// On ASCII text this is the default tokenizer of Google's `rouge-score` (lowercase, replace
/// `[^a-z0-9]+` with a space, split) without stemming; unlike it, letters and digits of other
/// scripts are kept. BLEU uses the same tokens, so "Yes." and "yes" are the same word.
pub fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

/// ROUGE-L F-measure (beta = 1) of `candidate` against `reference`, over [`tokenize`] tokens:
/// with L the length of their longest common subsequence, precision = L / |candidate|,
/// recall = L / |reference|, F = 2PR / (P + R). 0 when either text has no token or when L = 0.
pub fn rouge_l_f1(candidate: &str, reference: &str) -> f64 {
    rouge_l_f1_tokens(&tokenize(candidate), &tokenize(reference))
}

/// [`rouge_l_f1`] on tokens already split.
pub fn rouge_l_f1_tokens<T: AsRef<str>>(candidate: &[T], reference: &[T]) -> f64 {
    if candidate.is_empty() || reference.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(candidate, reference);
    if lcs == 0 {
        return 0.0;
    }
    let precision = lcs as f64 / candidate.len() as f64;
    let recall = lcs as f64 / reference.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Length of the longest common subsequence, in O(|a| |b|) time and O(|b|) memory.
fn lcs_len<T: AsRef<str>>(a: &[T], b: &[T]) -> usize {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            current[j + 1] = if x.as_ref() == y.as_ref() { previous[j] + 1 } else { current[j].max(previous[j + 1]) };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The largest n-gram order of BLEU-4.
pub const BLEU_MAX_ORDER: usize = 4;

/// Sufficient statistics of BLEU-4 over one or many (candidate, reference) pairs with a single
/// reference each: clipped n-gram matches and candidate n-gram totals per order, and the summed
/// candidate and reference lengths. Adding pairs then calling [`BleuCounts::score`] is corpus BLEU
/// as in nltk's `corpus_bleu` (counts summed before dividing, not sentence scores averaged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BleuCounts {
    /// Clipped matches of 1- to 4-grams: each candidate n-gram counts at most as often as it
    /// occurs in the reference.
    pub matches: [u64; BLEU_MAX_ORDER],
    /// Number of 1- to 4-grams in the candidates.
    pub totals: [u64; BLEU_MAX_ORDER],
    pub candidate_len: u64,
    pub reference_len: u64,
}

impl BleuCounts {
    /// Adds one pair of tokenised texts.
    pub fn add<T: AsRef<str>>(&mut self, candidate: &[T], reference: &[T]) {
        self.candidate_len += candidate.len() as u64;
        self.reference_len += reference.len() as u64;
        for n in 1..=BLEU_MAX_ORDER {
            if candidate.len() < n {
                continue;
            }
            let reference_counts = ngram_counts(reference, n);
            let mut candidate_counts = ngram_counts(candidate, n);
            let mut clipped = 0u64;
            for (gram, count) in candidate_counts.drain() {
                clipped += count.min(reference_counts.get(&gram).copied().unwrap_or(0));
            }
            self.matches[n - 1] += clipped;
            self.totals[n - 1] += (candidate.len() + 1 - n) as u64;
        }
    }

    /// BLEU-4 = BP * exp(sum over n of 1/4 ln p_n), p_n = matches / totals, with the brevity
    /// penalty BP = 1 when c > r and exp(1 - r/c) otherwise (c, r: candidate and reference
    /// lengths). No smoothing: 0 when some order has no match (or no n-gram at all, as for a
    /// candidate under 4 tokens) and when c = 0. nltk without smoothing returns a number of the
    /// order of 1e-77 or less there, with a warning; we return exactly 0.
    pub fn score(&self) -> f64 {
        if self.candidate_len == 0 || self.matches.contains(&0) {
            return 0.0;
        }
        let log_precision: f64 = self
            .matches
            .iter()
            .zip(&self.totals)
            .map(|(&m, &t)| (m as f64 / t as f64).ln() / BLEU_MAX_ORDER as f64)
            .sum();
        let (c, r) = (self.candidate_len as f64, self.reference_len as f64);
        let brevity_penalty = if c > r { 1.0 } else { (1.0 - r / c).exp() };
        brevity_penalty * log_precision.exp()
    }
}

fn ngram_counts<T: AsRef<str>>(tokens: &[T], n: usize) -> HashMap<Vec<&str>, u64> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for window in tokens.windows(n) {
            *counts.entry(window.iter().map(AsRef::as_ref).collect()).or_insert(0) += 1;
        }
    }
    counts
}

/// Sentence BLEU-4 of `candidate` against one `reference`, over [`tokenize`] tokens (see
/// [`BleuCounts::score`] for the formula and the no-smoothing choice).
pub fn bleu4(candidate: &str, reference: &str) -> f64 {
    let mut counts = BleuCounts::default();
    counts.add(&tokenize(candidate), &tokenize(reference));
    counts.score()
}

/// Corpus BLEU-4 over (candidate, reference) pairs, over [`tokenize`] tokens: clipped matches,
/// n-gram totals and lengths are summed over the corpus before the precisions and the brevity
/// penalty are computed, as nltk's `corpus_bleu` does. 0 for an empty corpus.
pub fn corpus_bleu4<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> f64 {
    let mut counts = BleuCounts::default();
    for (candidate, reference) in pairs {
        counts.add(&tokenize(candidate), &tokenize(reference));
    }
    counts.score()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn auc_sklearn_doc_example() {
        // Sorted by score: 0.1 (neg), 0.35 (pos), 0.4 (neg), 0.8 (pos).
        // Positive at 0.35 beats 1 negative; positive at 0.8 beats 2. (1 + 2) / (2 * 2) = 0.75.
        let auc = roc_auc(&[false, false, true, true], &[0.1, 0.4, 0.35, 0.8]);
        assert_eq!(auc, Some(0.75));
    }

    #[test]
    fn auc_ties_count_half() {
        // Scores: 0.2 (neg), 0.5 (neg), 0.5 (pos), 0.9 (pos).
        // Positive at 0.5 beats the negative at 0.2 and ties the one at 0.5: 1 + 0.5 = 1.5.
        // Positive at 0.9 beats both: 2. (1.5 + 2) / (2 * 2) = 0.875.
        // sklearn's ROC points (0,0) (0,.5) (.5,1) (1,1): trapezoids 0 + .5*(.5+1)/2 + .5*1 = 0.875.
        let auc = roc_auc(&[false, true, false, true], &[0.5, 0.5, 0.2, 0.9]);
        assert_eq!(auc, Some(0.875));
    }

    #[test]
    fn auc_all_tied_is_half_and_perfect_is_one() {
        // Every pair ties: 2 * 2 pairs * 0.5 / 4 = 0.5.
        assert_eq!(roc_auc(&[true, false, true, false], &[0.3, 0.3, 0.3, 0.3]), Some(0.5));
        // Both positives above the single negative: 2 / (2 * 1) = 1.
        assert_eq!(roc_auc(&[true, false, true], &[0.9, 0.1, 0.6]), Some(1.0));
        // Reversed: no positive wins: 0 / 2 = 0.
        assert_eq!(roc_auc(&[false, true, true], &[0.9, 0.1, 0.6]), Some(0.0));
    }

    #[test]
    fn auc_hard_labels_as_scores() {
        // Scores 1/0 from hard predictions: labels [1,1,0,0,1], scores [1,0,0,1,1].
        // Positives at 1 (two of them): each beats the negative at 0 and ties the one at 1: 1.5 each.
        // Positive at 0: ties the negative at 0: 0.5. Total 3.5 / (3 * 2) = 0.58333...
        let auc = roc_auc(&[true, true, false, false, true], &[1.0, 0.0, 0.0, 1.0, 1.0]);
        assert!(close(auc.unwrap_or(f64::NAN), 3.5 / 6.0));
    }

    #[test]
    fn auc_undefined_cases() {
        assert_eq!(roc_auc(&[true, true], &[0.1, 0.2]), None);
        assert_eq!(roc_auc(&[false], &[0.1]), None);
        assert_eq!(roc_auc(&[], &[]), None);
        assert_eq!(roc_auc(&[true, false], &[0.1]), None);
        assert_eq!(roc_auc(&[true, false], &[0.1, f64::NAN]), None);
    }

    #[test]
    fn classification_counts_and_scores() {
        // labels    [1,1,1,0,0,0,0]
        // predicted [1,1,0,1,0,0,0]
        // TP = 2, FN = 1, FP = 1, TN = 3.
        // accuracy = 5/7; precision = 2/3; recall = 2/3; F1 = 4 / (4 + 1 + 1) = 2/3.
        let labels = [true, true, true, false, false, false, false];
        let predicted = [true, true, false, true, false, false, false];
        let c = classify(&labels, &predicted);
        assert_eq!((c.true_positives, c.false_negatives, c.false_positives, c.true_negatives), (2, 1, 1, 3));
        assert!(close(c.accuracy, 5.0 / 7.0));
        assert!(close(c.precision, 2.0 / 3.0));
        assert!(close(c.recall, 2.0 / 3.0));
        assert!(close(c.f1, 2.0 / 3.0));
        assert!(close(accuracy(&labels, &predicted), 5.0 / 7.0));
        assert!(close(f1(&labels, &predicted), 2.0 / 3.0));
    }

    #[test]
    fn f1_uneven_precision_recall() {
        // labels [1,1,1,1,0], predicted [1,0,0,0,0]: TP 1, FN 3, FP 0, TN 1.
        // precision = 1/1 = 1, recall = 1/4; F1 = 2 * 1 * .25 / 1.25 = 0.4 = 2 / (2 + 0 + 3).
        let c = classify(&[true, true, true, true, false], &[true, false, false, false, false]);
        assert!(close(c.precision, 1.0));
        assert!(close(c.recall, 0.25));
        assert!(close(c.f1, 0.4));
        assert!(close(c.accuracy, 2.0 / 5.0));
    }

    #[test]
    fn no_predicted_positive_gives_zero_precision_and_f1() {
        // Nothing predicted Yes: TP = FP = 0, precision defined 0, F1 = 0 / (0 + 0 + 2) = 0.
        // accuracy = 1 true negative out of 3.
        let c = classify(&[true, true, false], &[false, false, false]);
        assert_eq!(c.precision, 0.0);
        assert_eq!(c.recall, 0.0);
        assert_eq!(c.f1, 0.0);
        assert!(close(c.accuracy, 1.0 / 3.0));
        // Nothing at all.
        let empty = classify(&[], &[]);
        assert_eq!((empty.accuracy, empty.precision, empty.recall, empty.f1), (0.0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn tokenize_lowercases_and_splits_on_non_alphanumerics() {
        assert_eq!(tokenize("Hello, World! It's 4K_video."), ["hello", "world", "it", "s", "4k", "video"]);
        assert_eq!(tokenize("  Ça VA — très bien  "), ["ça", "va", "très", "bien"]);
        assert_eq!(tokenize("Prediction: Yes\nReasoning:"), ["prediction", "yes", "reasoning"]);
        assert!(tokenize(" .,;- ").is_empty());
    }

    #[test]
    fn rouge_l_hand_values() {
        // candidate: the cat sat on the mat (6); reference: the cat is on the mat (6).
        // LCS = "the cat on the mat" = 5; P = R = 5/6; F = 5/6.
        assert!(close(rouge_l_f1("The cat sat on the mat.", "the cat is on the mat"), 5.0 / 6.0));
        // candidate: a b c d e (5); reference: a c e (3). LCS = 3.
        // P = 3/5, R = 3/3 = 1; F = 2 * .6 * 1 / 1.6 = 0.75.
        assert!(close(rouge_l_f1("a b c d e", "a c e"), 0.75));
        // candidate: x y z; reference: z y x. LCS = 1 (any single token). P = R = 1/3, F = 1/3.
        assert!(close(rouge_l_f1("x y z", "z y x"), 1.0 / 3.0));
        // Same tokens after lowercasing and dropping punctuation: 1.
        assert!(close(rouge_l_f1("Hello, World!", "hello world"), 1.0));
        // No overlap, or an empty side: 0.
        assert_eq!(rouge_l_f1("alpha beta", "gamma"), 0.0);
        assert_eq!(rouge_l_f1("", "gamma"), 0.0);
        assert_eq!(rouge_l_f1("gamma", "..."), 0.0);
    }

    #[test]
    fn bleu4_sentence_hand_value() {
        // candidate (8): the quick brown fox jumps over the dog
        // reference (9): the quick brown fox jumps over the lazy dog
        // 1-grams: all 8 candidate unigrams occur in the reference (the x2 there too): 8/8.
        // 2-grams (7): only "the dog" is missing from the reference: 6/7.
        // 3-grams (6): only "over the dog" is missing: 5/6.
        // 4-grams (5): only "jumps over the dog" is missing: 4/5.
        // product of precisions = 1 * 6/7 * 5/6 * 4/5 = 4/7; geometric mean = (4/7)^(1/4).
        // c = 8 < r = 9: BP = exp(1 - 9/8) = exp(-0.125).
        // BLEU = exp(-0.125) * (4/7)^0.25 = 0.882497 * 0.869442 = 0.76728 (4 s.f.: 0.7673).
        let expected = (-0.125f64).exp() * (4.0f64 / 7.0).powf(0.25);
        let got = bleu4("The quick brown fox jumps over the dog", "the quick brown fox jumps over the lazy dog");
        assert!(close(got, expected));
        assert!((got - 0.7673).abs() < 1e-4);
    }

    #[test]
    fn bleu4_zero_without_a_four_gram_match() {
        // candidate: the cat sat on the mat; reference: the cat is on the mat.
        // 1-grams 5/6 (sat missing), 2-grams 3/5 (the cat, on the, the mat), 3-grams 1/4
        // (on the mat), 4-grams 0/3: no smoothing, so BLEU = 0.
        assert_eq!(bleu4("the cat sat on the mat", "the cat is on the mat"), 0.0);
        // Under 4 tokens there is no 4-gram at all: 0 even for an exact copy.
        assert_eq!(bleu4("yes it is", "yes it is"), 0.0);
        assert_eq!(bleu4("", "anything at all here"), 0.0);
    }

    #[test]
    fn bleu4_identical_and_clipping() {
        // Identical 5-token texts: every precision 1, c = r so BP = exp(0) = 1.
        assert!(close(bleu4("one two three four five", "one two three four five"), 1.0));
        // Clipping: candidate "the the the the the the the" (7) vs reference "the cat is on the mat"
        // has "the" twice in the reference, so 1-gram precision 2/7; the reference has no "the the"
        // bigram: 0/6, so BLEU = 0.
        let mut counts = BleuCounts::default();
        counts.add(&tokenize("the the the the the the the"), &tokenize("the cat is on the mat"));
        assert_eq!(counts.matches, [2, 0, 0, 0]);
        assert_eq!(counts.totals, [7, 6, 5, 4]);
        assert_eq!(counts.score(), 0.0);
        // Longer candidate than reference: BP = 1. candidate "a b c d e x" (6) vs "a b c d e" (5):
        // 1-grams 5/6, 2-grams 4/5, 3-grams 3/4, 4-grams 2/3; product = 5/6*4/5*3/4*2/3 = 1/3.
        // BLEU = (1/3)^(1/4) = 0.759836.
        assert!(close(bleu4("a b c d e x", "a b c d e"), (1.0f64 / 3.0).powf(0.25)));
    }

    #[test]
    fn corpus_bleu_sums_counts_before_dividing() {
        // Pair 1 (quick fox, above): matches 8,6,5,4 of totals 8,7,6,5; c = 8, r = 9.
        // Pair 2 (cat/mat, above):   matches 5,3,1,0 of totals 6,5,4,3; c = 6, r = 6.
        // Sums: 13/14, 9/12, 6/10, 4/8; c = 14, r = 15.
        // product = 13/14 * 3/4 * 3/5 * 1/2 = 117/560 = 0.2089286; BP = exp(1 - 15/14) = exp(-1/14).
        // BLEU = exp(-1/14) * (117/560)^(1/4) = 0.931063 * 0.676083 = 0.62947.
        let pairs = [
            ("the quick brown fox jumps over the dog", "the quick brown fox jumps over the lazy dog"),
            ("the cat sat on the mat", "the cat is on the mat"),
        ];
        let expected = (-1.0f64 / 14.0).exp() * (117.0f64 / 560.0).powf(0.25);
        let got = corpus_bleu4(pairs);
        assert!(close(got, expected));
        assert!((got - 0.6295).abs() < 1e-4);
        // The corpus score is not the mean of sentence scores (0.767 and 0).
        assert!(got > (bleu4(pairs[0].0, pairs[0].1) + bleu4(pairs[1].0, pairs[1].1)) / 2.0);
        assert_eq!(corpus_bleu4(std::iter::empty()), 0.0);
    }
}
