//! The ensemble: every detector's opinion, weighted by the configured
//! `ml_scoring_weights` and by how sure the detector is, into one risk score
//! with an interval that says how much evidence stood behind it. The formula
//! is documented in docs/scoring.md; keep the two in step.
//!
//! Why evidence accumulates instead of being averaged: an average never
//! exceeds its strongest input, so three moderate signals (a 0.65 behaviour,
//! a faster pace, new objects) could never flag together, and a quiet but
//! unsure detector (a young profile) diluted a real alarm. Here every
//! detector with something to say adds to the support, like independent
//! witnesses; a detector that is sure the request is ordinary can only damp
//! the support, never cancel it.

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

/// The most a sure, quiet detector takes off the support (half): it says
/// "this looks ordinary to me", which lowers the risk, but it cannot see
/// what the other detectors saw.
pub const OPPOSITION: f64 = 0.5;

/// Evidence under this is none: it neither supports nor sets the scale.
const MIN_EVIDENCE: f64 = 0.01;

/// A detector's score below its gate still counts, but fades fast: at the
/// gate it counts in full, at 0.93 of it (0.65 against 0.7) about 0.86 of
/// itself, at half of it an eighth. One weak oddity stays near 0; several
/// together add up.
pub fn soft_gate(score: f64, gate: f64) -> f64 {
    if score >= gate || gate <= 0.0 {
        score
    } else {
        let r = score / gate;
        score * r * r
    }
}

/// The ensemble over `signals`. `missing_weight` is the weight of configured
/// detectors that had nothing to say about this request (a cold profile, a
/// model that has not answered): it widens the interval, never moves the score.
///
/// - A local rule (`Strongest`) is a floor under score and interval.
/// - A detector (`Weighted`) with score s and gate g gives evidence
///   e = soft_gate(s, g); its say is v = w·c (weight times confidence),
///   relative to the strongest say among the detectors with evidence, v*.
/// - Support (`Support`, a newcomer against its population) counts like a
///   detector but never speaks for "ordinary".
/// - Context (`Context`, the route's traffic) counts like a detector, but only
///   from its gate up: quiet traffic says nothing about the requester.
///
/// support = 1 − Π (1 − e)^(v / v*)   (a noisy-OR: alone, a detector's
/// evidence is the support; two at 0.56 and 0.5 give 0.78);
/// quiet = Σ over detectors below half their gate of v·(1 − s/g);
/// score = max(floor, support · (1 − OPPOSITION · quiet / (quiet + Σ v of
/// those with evidence))). The interval: with E = Σ v / (Σ w + missing), the
/// share of the configured say that was there and sure, low = score·E and
/// high = score + (1 − score)·(1 − E), both floored.
pub fn risk(signals: &[Signal], missing_weight: f64) -> Risk {
    ensemble(signals, missing_weight, true)
}

/// The same without context: the requester's own risk, which a refusal needs.
pub fn own_risk(signals: &[Signal]) -> f64 {
    ensemble(signals, 0.0, false).score
}

/// The risk as the other detectors see it, without the signal `name`.
pub fn risk_without(signals: &[Signal], name: &str) -> f64 {
    ensemble_of(signals.iter().filter(|s| s.name != name), 0.0, true).score
}

/// One detector as the ensemble reads it.
struct Voice {
    evidence: f64,
    say: f64,
    quiet: f64,
}

fn voice(s: &Signal, with_context: bool) -> Option<(Voice, f64)> {
    let score = s.score.clamp(0.0, 1.0);
    // (weight, gate, gated softly, may speak for "ordinary")
    let (weight, gate, soft, opposes) = match s.combine {
        Combine::Strongest => return None,
        Combine::Weighted { weight, gate } => (weight, gate, true, true),
        Combine::Answer { weight, gate } => (weight, gate, false, true),
        Combine::Support { weight, gate } => (weight, gate, true, false),
        Combine::Context { weight, gate } if with_context && score >= gate => (weight, gate, false, false),
        Combine::Context { .. } => return None,
    };
    let gate = finite_or_zero(gate).clamp(0.0, 1.0);
    let weight = finite_or_zero(weight).max(0.0);
    let confidence = finite_or_zero(s.confidence).clamp(0.0, 1.0);
    let say = weight * confidence;
    let evidence = if soft {
        soft_gate(score, gate)
    } else if score >= gate {
        score
    } else {
        0.0
    };
    // Only a detector well below its gate speaks for "ordinary".
    let quiet = if opposes && gate > 0.0 && score < gate / 2.0 { say * (1.0 - score / gate) } else { 0.0 };
    Some((Voice { evidence, say, quiet }, weight))
}

fn ensemble(signals: &[Signal], missing_weight: f64, with_context: bool) -> Risk {
    ensemble_of(signals.iter(), missing_weight, with_context)
}

fn ensemble_of<'a>(signals: impl Iterator<Item = &'a Signal>, missing_weight: f64, with_context: bool) -> Risk {
    let mut floor = 0.0_f64;
    let mut total = finite_or_zero(missing_weight).max(0.0);
    let (mut sure, mut quiet, mut supporting, mut top) = (0.0_f64, 0.0_f64, 0.0_f64, 0.0_f64);
    // Fixed-size: no allocation on the request path (a handful of signals).
    let mut voices: [Option<Voice>; 8] = Default::default();
    let mut n = 0;
    for s in signals.filter(|s| s.score.is_finite()) {
        if let Combine::Strongest = s.combine {
            floor = floor.max(s.score.clamp(0.0, 1.0));
            continue;
        }
        let Some((v, weight)) = voice(s, with_context) else { continue };
        total += weight;
        sure += v.say;
        quiet += v.quiet;
        // Negligible evidence is no voice: a detector at 0.02 must not set the
        // scale (`top`) the others are measured against, nor count as support
        // against a quiet one.
        if v.evidence >= MIN_EVIDENCE && v.say > 0.0 && v.quiet == 0.0 {
            supporting += v.say;
            top = top.max(v.say);
        }
        if let Some(slot) = voices.get_mut(n) {
            *slot = Some(v);
            n += 1;
        }
    }
    let mut keep = 1.0_f64;
    if top > 0.0 {
        for v in voices.iter().flatten().filter(|v| v.evidence >= MIN_EVIDENCE && v.say > 0.0 && v.quiet == 0.0) {
            keep *= (1.0 - v.evidence).max(0.0).powf(v.say / top);
        }
    }
    let support = 1.0 - keep;
    let damp = if quiet > 0.0 { 1.0 - OPPOSITION * quiet / (quiet + supporting) } else { 1.0 };
    let score = (support * damp).clamp(0.0, 1.0);
    let share = if total > 0.0 { (sure / total).clamp(0.0, 1.0) } else { 1.0 };
    let (low, high) = (score * share, score + (1.0 - score) * (1.0 - share));
    let clamp = |x: f64| x.max(floor).clamp(0.0, 1.0);
    Risk { score: clamp(score), low: clamp(low), high: clamp(high) }
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
    fn a_model_answer_counts_from_its_gate_and_only_damps_below_it() {
        let answer = |score| Signal { name: "ml", score, confidence: 1.0, combine: Combine::Answer { weight: 0.5, gate: 0.5 } };
        let behaviour = Signal { name: "behavior", score: 0.55, confidence: 1.0, combine: Combine::Weighted { weight: 0.4, gate: 0.7 } };
        let alone = risk(std::slice::from_ref(&behaviour), 0.0).score;
        // Just under the gate, a model leans to "ordinary": no support (a
        // detector's deviation there would add about 0.8 of itself).
        let under = risk(&[behaviour, answer(0.45)], 0.0).score;
        assert!(close(under, alone), "{under} vs {alone}");
        let soft = risk(&[behaviour, Signal { combine: Combine::Weighted { weight: 0.5, gate: 0.5 }, ..answer(0.45) }], 0.0).score;
        assert!(soft > alone + 0.2, "the same number as a detector's deviation adds up: {soft}");
        // Well under: it speaks for "ordinary" and takes part of the risk away.
        let benign = risk(&[behaviour, answer(0.1)], 0.0).score;
        assert!(benign < alone * 0.8 && benign >= alone * 0.5, "{benign} vs {alone}");
        // From the gate, it counts in full with the others.
        let anomalous = risk(&[behaviour, answer(0.6)], 0.0).score;
        assert!(anomalous > 0.6, "{anomalous}");
    }

    #[test]
    fn a_lone_sure_detector_is_its_own_score_and_a_point() {
        let r = risk(&[detector(0.9, 0.4, 1.0)], 0.0);
        assert!(close(r.score, 0.9));
        assert!(close(r.low, r.score) && close(r.high, r.score), "{r:?}");
        assert!(close(r.evidence(), 1.0));
    }

    #[test]
    fn moderate_evidence_adds_up_past_the_flag_threshold() {
        // A behaviour of 0.65 under a 0.7 gate, alone: evidence, not zero.
        let behaviour = Signal { name: "behavior", score: 0.65, confidence: 1.0, combine: Combine::Weighted { weight: 0.4, gate: 0.7 } };
        let alone = risk(&[behaviour], 0.0).score;
        assert!(close(alone, soft_gate(0.65, 0.7)) && alone > 0.5, "{alone}");
        // Two moderate witnesses together say more than either.
        let objects = Signal { name: "objects", score: 0.5, confidence: 1.0, combine: Combine::Weighted { weight: 0.4, gate: 0.5 } };
        let both = risk(&[behaviour, objects], 0.0).score;
        assert!(close(both, 1.0 - (1.0 - alone) * 0.5), "{both}");
        assert!(both >= 0.75, "two moderate signals reach throttle: {both}");
        // Negligible support does not rescale a real alarm.
        let alarm = Signal { name: "behavior", score: 0.9, confidence: 0.25, combine: Combine::Weighted { weight: 0.4, gate: 0.7 } };
        let faint_support = Signal { name: "population", score: 0.02, confidence: 1.0, combine: Combine::Support { weight: 0.4, gate: 0.7 } };
        assert!(close(risk(&[alarm, faint_support], 0.0).score, 0.9));
        // A faint oddity stays faint.
        assert!(soft_gate(0.3, 0.7) < 0.06);
        let faint = Signal { score: 0.3, ..behaviour };
        assert!(risk(&[faint, Signal { score: 0.2, ..objects }], 0.0).score < 0.1);
    }

    #[test]
    fn a_sure_quiet_detector_damps_at_most_by_half() {
        let alarm = detector(0.9, 0.4, 1.0);
        let quiet = detector(0.0, 0.4, 1.0);
        let r = risk(&[alarm, quiet], 0.0).score;
        assert!(close(r, 0.9 * (1.0 - OPPOSITION * 0.4 / 0.8)), "{r}");
        // An unsure quiet one damps less; a quiet one with no confidence not at all.
        let unsure = risk(&[alarm, detector(0.0, 0.4, 0.2)], 0.0).score;
        // A nearly quiet one damps like a quiet one.
        let faint = risk(&[alarm, detector(0.001, 0.4, 1.0)], 0.0).score;
        assert!((faint - r).abs() < 0.01, "{faint} vs {r}");
        assert!(unsure > r);
        assert!(close(risk(&[alarm, detector(0.0, 0.4, 0.0)], 0.0).score, 0.9));
        // Whatever the quiet say, it never takes more than half.
        let many = [alarm, quiet, quiet, quiet, quiet, quiet];
        assert!(risk(&many, 0.0).score >= 0.45 - 1e-9);
    }

    #[test]
    fn confidence_weighs_each_detector_and_widens_the_interval() {
        // An unsure alarm next to a sure one counts for less.
        let sure = risk(&[detector(0.9, 0.5, 1.0), detector(0.6, 0.5, 1.0)], 0.0);
        let unsure = risk(&[detector(0.9, 0.5, 1.0), detector(0.6, 0.5, 0.2)], 0.0);
        assert!(unsure.score < sure.score && unsure.score > 0.9, "{unsure:?} vs {sure:?}");
        assert!(unsure.high - unsure.low > sure.high - sure.low);
        assert!(unsure.low <= unsure.score && unsure.score <= unsure.high);
        // Alone, a detector's confidence does not move its score, only the interval.
        let alone = risk(&[detector(0.8, 0.4, 0.25)], 0.0);
        assert!(close(alone.score, 0.8));
        assert!(close(alone.low, 0.8 * 0.25) && close(alone.high, 0.8 + 0.2 * 0.75), "{alone:?}");
    }

    #[test]
    fn a_missing_detector_widens_the_interval_and_leaves_the_score() {
        let d = [detector(0.7, 0.4, 1.0)];
        let complete = risk(&d, 0.0);
        let missing = risk(&d, 0.5);
        assert!(close(complete.score, missing.score));
        assert!(close(missing.low, 0.7 * 0.4 / 0.9) && close(missing.high, 0.7 + 0.3 * 0.5 / 0.9), "{missing:?}");
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
        // A route anomaly next to a profile that has no say (cold, or an
        // open episode with no confidence in ordinary): the anomaly stands.
        let r = risk(&[detector(0.0, 0.4, 0.0), traffic(1.0)], 0.0);
        assert!(close(r.score, 1.0), "{r:?}");
        // A sure quiet profile damps it, by half at most.
        let r = risk(&[detector(0.0, 0.4, 1.0), traffic(1.0)], 0.0);
        assert!(close(r.score, 1.0 - OPPOSITION * 0.4 / 0.7), "{r:?}");
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
