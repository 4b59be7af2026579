//! Audit marks (issue 18): a reviewer's verdict on an output, what an export does with them, and
//! the error rate a stage's audited sample suggests.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A reviewer's verdict on an output (`audit_marks.verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approved,
    Rejected,
}

impl Verdict {
    pub const ALL: [Verdict; 2] = [Verdict::Approved, Verdict::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Rejected => "rejected",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verdict::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown verdict {s:?} (approved or rejected)"))
    }
}

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
}

impl ErrorRate {
    /// None when nothing was audited.
    pub fn estimate(rejected: u64, audited: u64) -> Option<Self> {
        if audited == 0 || rejected > audited {
            return None;
        }
        const Z: f64 = 1.959_963_984_540_054;
        let n = audited as f64;
        let p = rejected as f64 / n;
        let z2 = Z * Z;
        let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
        let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
        Some(Self { audited, rejected, rate: p, low: (centre - half).max(0.0), high: (centre + half).min(1.0) })
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
