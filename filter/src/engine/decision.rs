//! From signals to one risk score and a decision.

use super::config::DecisionThresholds;
use super::features::{Combine, Signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    Allow,
    /// Forwarded, but marked for attention.
    Flag,
    /// Refused with 429 in enforce mode.
    Throttle,
    /// Refused with 403 in enforce mode.
    Block,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Flag => "flag",
            Decision::Throttle => "throttle",
            Decision::Block => "block",
        }
    }

    /// The status of the local reply that enforces it, if any.
    pub fn status(self) -> Option<u16> {
        match self {
            Decision::Throttle => Some(429),
            Decision::Block => Some(403),
            Decision::Allow | Decision::Flag => None,
        }
    }
}

/// The risk score: the strongest local signal, or the weighted mean of the
/// detectors that have an opinion (a per-identity detector below its gate
/// adds 0 but its weight still counts; a context signal below its gate is
/// left out), whichever is higher. With one detector alone its
/// score is the risk. (Confidence weighting comes with the ensemble issue.)
pub fn risk(signals: &[Signal]) -> f64 {
    weighted_risk(signals, true)
}

fn weighted_risk(signals: &[Signal], with_context: bool) -> f64 {
    let finite = |s: &&Signal| s.score.is_finite();
    let strongest = signals
        .iter()
        .filter(finite)
        .filter(|s| s.combine == Combine::Strongest)
        .map(|s| s.score)
        .fold(0.0, f64::max);
    let (mut sum, mut weights) = (0.0, 0.0);
    for s in signals.iter().filter(finite) {
        match s.combine {
            Combine::Weighted { weight, gate } => {
                weights += weight;
                if s.score >= gate {
                    sum += weight * s.score.clamp(0.0, 1.0);
                }
            }
            // Context weighs in only when it has something to say: quiet
            // traffic must not dilute what the identity's detectors found.
            Combine::Context { weight, gate } if with_context && s.score >= gate => {
                weights += weight;
                sum += weight * s.score.clamp(0.0, 1.0);
            }
            Combine::Context { .. } | Combine::Strongest => {}
        }
    }
    let ensemble = if weights > 0.0 { sum / weights } else { 0.0 };
    strongest.max(ensemble).clamp(0.0, 1.0)
}

/// The decision for a request whose `risk` came from `signals`. Context
/// (the traffic of its route) can flag a request, but a refusal needs the
/// requester's own risk to reach it: refusing everyone on a route because
/// the route is anomalous would turn a surge into an outage.
pub fn decide_for(risk: f64, signals: &[Signal], t: &DecisionThresholds) -> Decision {
    let decision = decide(risk, t);
    if decision > Decision::Flag {
        decide(weighted_risk(signals, false), t).max(Decision::Flag)
    } else {
        decision
    }
}

pub fn decide(risk: f64, t: &DecisionThresholds) -> Decision {
    if risk >= t.block {
        Decision::Block
    } else if risk >= t.throttle {
        Decision::Throttle
    } else if risk >= t.flag {
        Decision::Flag
    } else {
        Decision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_partition_the_unit_interval() {
        let t = DecisionThresholds::default();
        assert_eq!(decide(0.0, &t), Decision::Allow);
        assert_eq!(decide(0.49, &t), Decision::Allow);
        assert_eq!(decide(0.5, &t), Decision::Flag);
        assert_eq!(decide(0.75, &t), Decision::Throttle);
        assert_eq!(decide(0.95, &t), Decision::Block);
        assert_eq!(decide(1.0, &t), Decision::Block);
    }

    #[test]
    fn risk_is_the_strongest_finite_signal() {
        let s = |score| Signal::local("x", score);
        assert_eq!(risk(&[]), 0.0);
        assert_eq!(risk(&[s(0.2), s(0.7)]), 0.7);
        assert_eq!(risk(&[s(f64::NAN), s(0.3)]), 0.3);
        assert_eq!(risk(&[s(7.0)]), 1.0);
    }

    #[test]
    fn weighted_detectors_count_from_their_gate_as_a_weighted_mean() {
        let d = |score, weight| Signal { name: "d", score, combine: Combine::Weighted { weight, gate: 0.7 } };
        assert_eq!(risk(&[d(0.69, 0.4)]), 0.0, "below its gate a detector adds nothing");
        assert!((risk(&[d(0.9, 0.4)]) - 0.9).abs() < 1e-12, "alone, its score is the risk");
        // Two detectors, one quiet: the deviation is diluted by the other's weight.
        assert!((risk(&[d(0.9, 0.4), d(0.1, 0.4)]) - 0.45).abs() < 1e-12);
        // A local rule still sets a floor.
        assert_eq!(risk(&[d(0.9, 0.4), d(0.0, 0.4), Signal::local("rate", 0.8)]), 0.8);
    }

    #[test]
    fn context_weighs_in_only_past_its_gate_and_alone_never_refuses() {
        let t = DecisionThresholds::default();
        let traffic = |score| Signal { name: "traffic", score, combine: Combine::Context { weight: 0.3, gate: 0.34 } };
        let behaviour = |score| Signal { name: "behavior", score, combine: Combine::Weighted { weight: 0.4, gate: 0.7 } };
        // Quiet context does not dilute the identity's deviation.
        assert!((risk(&[behaviour(0.9), traffic(0.1)]) - 0.9).abs() < 1e-12);
        // Context alone: the risk says so, the decision stops at flag.
        let alone = [traffic(1.0)];
        assert_eq!(risk(&alone), 1.0);
        assert_eq!(decide_for(1.0, &alone, &t), Decision::Flag);
        // With the requester's own evidence, a refusal stands.
        let both = [traffic(1.0), behaviour(0.99)];
        assert_eq!(decide_for(risk(&both), &both, &t), Decision::Block);
        let rate = [traffic(1.0), Signal::local("rate", 0.8)];
        assert_eq!(decide_for(risk(&rate), &rate, &t), Decision::Throttle);
    }
}
