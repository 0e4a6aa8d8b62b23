//! From signals to one risk score and a decision.

use super::config::DecisionThresholds;
use super::features::Signal;
use super::scoring;

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

/// The decision for a request whose `risk` came from `signals`. Context
/// (the traffic of its route) can flag a request, but a refusal needs the
/// requester's own risk to reach it: refusing everyone on a route because
/// the route is anomalous would turn a surge into an outage.
pub fn decide_for(risk: f64, signals: &[Signal], t: &DecisionThresholds) -> Decision {
    let decision = decide(risk, t);
    if decision > Decision::Flag {
        decide(scoring::own_risk(signals), t).max(Decision::Flag)
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
    use crate::engine::features::Combine;

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
    fn context_weighs_in_only_past_its_gate_and_alone_never_refuses() {
        let t = DecisionThresholds::default();
        let traffic = |score| Signal { name: "traffic", score, confidence: 1.0, combine: Combine::Context { weight: 0.3, gate: 0.34 } };
        let behaviour = |score| Signal { name: "behavior", score, confidence: 1.0, combine: Combine::Weighted { weight: 0.4, gate: 0.7 } };
        let risk = |s: &[Signal]| scoring::risk(s, 0.0).score;
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
