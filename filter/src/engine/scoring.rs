//! The ensemble: every detector's opinion, weighted by the configured
//! `ml_scoring_weights` and by how sure the detector is, into one risk score
//! with an interval that says how much evidence stood behind it. The formula
//! is documented in docs/scoring.md; keep the two in step.

use super::features::{Combine, Signal};

/// A risk score and the interval the missing or unsure evidence leaves open:
/// `low` is the risk if every unsure detector would have said 0, `high` if it
/// would have said 1. `low <= score <= high`; a narrow interval means the
/// detectors that spoke were sure and every configured one spoke.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Risk {
    pub score: f64,
    pub low: f64,
    pub high: f64,
}

impl Risk {
    pub const NONE: Risk = Risk { score: 0.0, low: 0.0, high: 0.0 };

    /// How much of the configured evidence was there, in [0, 1].
    pub fn evidence(&self) -> f64 {
        (1.0 - (self.high - self.low)).clamp(0.0, 1.0)
    }
}

/// The ensemble over `signals`. `missing_weight` is the weight of configured
/// detectors that had nothing to say about this request (a cold profile, a
/// model that has not answered): it widens the interval, never moves the score.
///
/// - A local rule (`Strongest`) is a floor under score and interval.
/// - A detector (`Weighted`) counts with weight `w * c` (its configured weight
///   times its confidence); below its gate it counts as 0.
/// - Context (`Context`, the route's traffic) counts like a detector, but only
///   from its gate up: quiet traffic must not dilute the identity's evidence.
///
/// score = max(floor, Σ w·c·s / Σ w·c), low = max(floor, Σ w·c·s / W),
/// high = max(floor, (Σ w·c·s + Σ w·(1 − c)) / W), with W = Σ w plus the
/// missing weight.
pub fn risk(signals: &[Signal], missing_weight: f64) -> Risk {
    ensemble(signals, missing_weight, true)
}

/// The same without context: the requester's own risk, which a refusal needs.
pub fn own_risk(signals: &[Signal]) -> f64 {
    ensemble(signals, 0.0, false).score
}

fn ensemble(signals: &[Signal], missing_weight: f64, with_context: bool) -> Risk {
    let mut floor = 0.0_f64;
    // Σ w·c·s, Σ w·c, Σ w.
    let (mut evidence, mut sure, mut total) = (0.0, 0.0, finite_or_zero(missing_weight).max(0.0));
    for s in signals.iter().filter(|s| s.score.is_finite()) {
        let score = s.score.clamp(0.0, 1.0);
        let (weight, counted) = match s.combine {
            Combine::Strongest => {
                floor = floor.max(score);
                continue;
            }
            Combine::Weighted { weight, gate } => (weight, if score >= gate { score } else { 0.0 }),
            Combine::Context { weight, gate } if with_context && score >= gate => (weight, score),
            Combine::Context { .. } => continue,
        };
        let weight = finite_or_zero(weight).max(0.0);
        let confidence = finite_or_zero(s.confidence).clamp(0.0, 1.0);
        evidence += weight * confidence * counted;
        sure += weight * confidence;
        total += weight;
    }
    let score = if sure > 0.0 { evidence / sure } else { 0.0 };
    let (low, high) = if total > 0.0 { (evidence / total, (evidence + (total - sure)) / total) } else { (score, score) };
    let clamp = |x: f64| x.max(floor).clamp(0.0, 1.0);
    Risk { score: clamp(score), low: clamp(low.min(score)), high: clamp(high.max(score)) }
}

fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// How sure a profile is: 1 − e^(−w / m), with `w` its decayed request count
/// and `m` the configured `min_observations`. At the cold-start line (w = m)
/// 0.63, at 3 m 0.95: a young profile's deviation counts less next to the
/// other detectors, and leaves the interval wide.
pub fn profile_confidence(weight: f64, min_observations: u32) -> f64 {
    let m = f64::from(min_observations.max(1));
    if weight.is_finite() && weight > 0.0 {
        1.0 - (-weight / m).exp()
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(score: f64, weight: f64, confidence: f64) -> Signal {
        Signal { name: "d", score, confidence, combine: Combine::Weighted { weight, gate: 0.5 } }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn sure_and_complete_evidence_gives_a_point() {
        let r = risk(&[detector(0.9, 0.4, 1.0), detector(0.6, 0.5, 1.0)], 0.0);
        assert!(close(r.score, (0.4 * 0.9 + 0.5 * 0.6) / 0.9));
        assert!(close(r.low, r.score) && close(r.high, r.score), "{r:?}");
        assert!(close(r.evidence(), 1.0));
    }

    #[test]
    fn confidence_weighs_each_detector_and_widens_the_interval() {
        // A sure quiet detector and an unsure alarmed one: the alarm counts less.
        let sure_quiet = detector(0.0, 0.5, 1.0);
        let r_unsure = risk(&[detector(0.9, 0.5, 0.2), sure_quiet], 0.0);
        let r_sure = risk(&[detector(0.9, 0.5, 1.0), sure_quiet], 0.0);
        assert!(r_unsure.score < r_sure.score, "{r_unsure:?} vs {r_sure:?}");
        assert!(close(r_unsure.score, 0.5 * 0.2 * 0.9 / (0.5 * 0.2 + 0.5)));
        assert!(r_unsure.high - r_unsure.low > r_sure.high - r_sure.low);
        assert!(r_unsure.low <= r_unsure.score && r_unsure.score <= r_unsure.high);
        // Alone, a detector's confidence does not move its score, only the interval.
        let alone = risk(&[detector(0.8, 0.4, 0.25)], 0.0);
        assert!(close(alone.score, 0.8));
        assert!(close(alone.low, 0.4 * 0.25 * 0.8 / 0.4) && close(alone.high, (0.08 + 0.3) / 0.4), "{alone:?}");
    }

    #[test]
    fn a_missing_detector_widens_the_interval_and_leaves_the_score() {
        let d = [detector(0.7, 0.4, 1.0)];
        let complete = risk(&d, 0.0);
        let missing = risk(&d, 0.5);
        assert!(close(complete.score, missing.score));
        assert!(close(missing.low, 0.28 / 0.9) && close(missing.high, (0.28 + 0.5) / 0.9), "{missing:?}");
        // Nothing at all said, and everything missing: we know nothing.
        let nothing = risk(&[], 0.9);
        assert_eq!((nothing.score, nothing.low, nothing.high), (0.0, 0.0, 1.0));
        assert_eq!(risk(&[], 0.0), Risk::NONE);
    }

    #[test]
    fn local_rules_floor_score_and_interval() {
        let r = risk(&[Signal::local("rate", 0.8), detector(0.2, 0.4, 0.5)], 0.4);
        assert!(close(r.score, 0.8) && close(r.low, 0.8));
        assert!(r.high >= 0.8 && r.high <= 1.0);
    }

    #[test]
    fn context_counts_only_past_its_gate_and_not_for_own_risk() {
        let traffic = |score| Signal { name: "traffic", score, confidence: 1.0, combine: Combine::Context { weight: 0.3, gate: 0.34 } };
        let r = risk(&[detector(0.9, 0.4, 1.0), traffic(0.1)], 0.0);
        assert!(close(r.score, 0.9), "quiet context does not dilute");
        let r = risk(&[detector(0.0, 0.4, 1.0), traffic(1.0)], 0.0);
        assert!(close(r.score, 0.3 / 0.7));
        assert!(close(own_risk(&[detector(0.0, 0.4, 1.0), traffic(1.0)]), 0.0));
    }

    #[test]
    fn hostile_numbers_stay_in_the_unit_interval() {
        let odd = [
            detector(f64::NAN, 0.4, 1.0),
            detector(7.0, f64::INFINITY, 1.0),
            detector(0.9, -1.0, 1.0),
            detector(0.9, 0.4, f64::NAN),
            Signal::local("x", -3.0),
        ];
        let r = risk(&odd, f64::NAN);
        for x in [r.score, r.low, r.high] {
            assert!((0.0..=1.0).contains(&x), "{r:?}");
        }
        assert!(r.low <= r.score && r.score <= r.high);
    }

    #[test]
    fn profile_confidence_grows_with_evidence() {
        assert_eq!(profile_confidence(0.0, 20), 0.0);
        assert!(close(profile_confidence(20.0, 20), 1.0 - (-1.0f64).exp()));
        assert!(profile_confidence(60.0, 20) > 0.95);
        assert_eq!(profile_confidence(f64::NAN, 20), 0.0);
        assert!(profile_confidence(5.0, 0) > 0.99);
    }
}
