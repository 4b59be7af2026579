//! Audit marks (issue 18): a reviewer's verdict on an output, what an export does with them, and
//! the error rate a stage's audited sample suggests.

use serde::{Deserialize, Serialize};

/// A reviewer's verdict on an output (`audit_marks.verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approved,
    Rejected,
}

crate::vocabulary!(Verdict, "verdict", {
    Approved => "approved",
    Rejected => "rejected",
});

/// Which outputs `train export` writes, by their marks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditPolicy {
    /// Everything but rejected outputs (the default).
    #[default]
    ExcludeRejected,
    /// Approved outputs only (`--approved-only`).
    ApprovedOnly,
}

impl AuditPolicy {
    /// Whether an output with `mark` goes into the export.
    pub fn admits(self, mark: Option<Verdict>) -> bool {
        match (self, mark) {
            (_, Some(Verdict::Rejected)) => false,
            (AuditPolicy::ExcludeRejected, _) => true,
            (AuditPolicy::ApprovedOnly, mark) => mark == Some(Verdict::Approved),
        }
    }
}

/// The share of bad outputs an audited sample suggests: `rejected` of `audited`, with the Wilson
/// score interval at 95 % (sound for small samples and for 0 or all rejected, where the normal
/// approximation gives an interval of width 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ErrorRate {
    pub audited: u64,
    pub rejected: u64,
    pub rate: f64,
    pub low: f64,
    pub high: f64,
    /// Done outputs of strata nobody audited: the estimate says nothing of them.
    pub unaudited_done: u64,
}

/// One stratum of a stage's done outputs (one label): how many, and how many of them were
/// audited and rejected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stratum {
    pub done: u64,
    pub audited: u64,
    pub rejected: u64,
}

/// z of a two-sided 95 % interval.
const Z: f64 = 1.959_963_984_540_054;

impl ErrorRate {
    /// `rejected` of `audited` drawn from one population. None when nothing was audited.
    pub fn estimate(rejected: u64, audited: u64) -> Option<Self> {
        Self::stratified(&[Stratum { done: audited, audited, rejected }])
    }

    /// The stage's error rate from a sample drawn per stratum (the review sample draws as many
    /// of each label): each stratum's rejected share weighted by its share of the done outputs,
    /// so that a label the sample over-represents does not pull the rate its way. The interval
    /// is Wilson's at the effective sample size `p (1 - p) / variance` (the stratified
    /// variance, `sum W_h^2 p_h (1 - p_h) / n_h`), or at the audited count when `p` is 0 or 1;
    /// with one stratum, exactly the plain Wilson interval. Strata nobody audited are left out
    /// (counted in `unaudited_done`). None when nothing was audited.
    pub fn stratified(strata: &[Stratum]) -> Option<Self> {
        if strata.iter().any(|s| s.rejected > s.audited) {
            return None;
        }
        let covered: Vec<&Stratum> = strata.iter().filter(|s| s.audited > 0).collect();
        let audited: u64 = covered.iter().map(|s| s.audited).sum();
        if audited == 0 {
            return None;
        }
        let rejected = covered.iter().map(|s| s.rejected).sum();
        let unaudited_done = strata.iter().filter(|s| s.audited == 0).map(|s| s.done).sum();
        // A stratum's weight is its done outputs (at least its audited ones: marks may outlive
        // a count taken a moment earlier).
        let size = |s: &Stratum| s.done.max(s.audited) as f64;
        let total: f64 = covered.iter().map(|s| size(s)).sum();
        let (mut p, mut variance) = (0.0, 0.0);
        for s in &covered {
            let (w, n) = (size(s) / total, s.audited as f64);
            let ph = s.rejected as f64 / n;
            p += w * ph;
            variance += w * w * ph * (1.0 - ph) / n;
        }
        let p = p.clamp(0.0, 1.0);
        // A stratum whose few marks are all alike has a plug-in variance of 0: the effective size
        // is never taken above the marks there are.
        let n = if variance > 0.0 { (p * (1.0 - p) / variance).clamp(1.0, audited as f64) } else { audited as f64 };
        let z2 = Z * Z;
        let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
        let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
        Some(Self {
            audited,
            rejected,
            rate: p,
            low: (centre - half).max(0.0),
            high: (centre + half).min(1.0),
            unaudited_done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_round_trip_and_policies_admit() {
        for v in Verdict::ALL {
            assert_eq!(v.as_str().parse::<Verdict>(), Ok(v));
        }
        assert!("ok".parse::<Verdict>().is_err());
        use AuditPolicy::*;
        assert!(ExcludeRejected.admits(None) && ExcludeRejected.admits(Some(Verdict::Approved)));
        assert!(!ExcludeRejected.admits(Some(Verdict::Rejected)));
        assert!(ApprovedOnly.admits(Some(Verdict::Approved)));
        assert!(!ApprovedOnly.admits(None) && !ApprovedOnly.admits(Some(Verdict::Rejected)));
    }

    #[test]
    fn a_sample_drawn_per_label_is_weighted_by_the_labels_shares() {
        // 900 liked, 100 disliked; 50 of each audited, 5 and 25 rejected: the unweighted share
        // (30 %) would count the rare label nine times over.
        let strata =
            [Stratum { done: 900, audited: 50, rejected: 5 }, Stratum { done: 100, audited: 50, rejected: 25 }];
        let e = ErrorRate::stratified(&strata).unwrap_or_else(|| panic!("an estimate"));
        assert!((e.rate - (0.9 * 0.1 + 0.1 * 0.5)).abs() < 1e-12, "{e:?}");
        assert_eq!((e.audited, e.rejected, e.unaudited_done), (100, 30, 0));
        assert!(e.low < e.rate && e.rate < e.high && e.high < 0.30, "{e:?}");
        // One stratum: the plain Wilson interval.
        assert_eq!(
            ErrorRate::stratified(&[Stratum { done: 7, audited: 100, rejected: 10 }]),
            ErrorRate::estimate(10, 100)
        );
        // A stratum nobody audited is left out and said.
        let e = ErrorRate::stratified(&[
            Stratum { done: 10, audited: 4, rejected: 1 },
            Stratum { done: 30, audited: 0, rejected: 0 },
        ]);
        assert_eq!(e.map(|e| (e.rate, e.unaudited_done)), Some((0.25, 30)));
        assert_eq!(ErrorRate::stratified(&[Stratum { done: 10, audited: 0, rejected: 0 }]), None);
        // None rejected: an interval from 0, not of width 0.
        let e = ErrorRate::stratified(&strata.map(|s| Stratum { rejected: 0, ..s }));
        assert!(e.is_some_and(|e| e.rate == 0.0 && e.high > 0.0), "{e:?}");
    }

    #[test]
    fn wilson_interval() {
        assert_eq!(ErrorRate::estimate(0, 0), None);
        assert_eq!(ErrorRate::estimate(3, 2), None);
        // 10 of 100: 0.0552-0.1744 (the Wilson interval's textbook value).
        let e = ErrorRate::estimate(10, 100).unwrap_or_else(|| unreachable!());
        assert!((e.rate - 0.1).abs() < 1e-12);
        assert!((e.low - 0.0552).abs() < 1e-3 && (e.high - 0.1744).abs() < 1e-3, "{e:?}");
        // None rejected of 20: the interval still says up to ~16 % may be bad.
        let e = ErrorRate::estimate(0, 20).unwrap_or_else(|| unreachable!());
        assert!(e.low == 0.0 && (e.high - 0.1611).abs() < 1e-3, "{e:?}");
        let e = ErrorRate::estimate(20, 20).unwrap_or_else(|| unreachable!());
        assert!(e.high == 1.0 && (e.low - 0.8389).abs() < 1e-3, "{e:?}");
    }
}
