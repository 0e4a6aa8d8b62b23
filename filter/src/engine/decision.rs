//! From signals to one risk score and a decision.

use super::config::DecisionThresholds;
use super::features::Signal;

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

/// The risk score: for the local signals of the foundation slice, the
/// strongest one. (The ensemble of weighted detectors replaces this.)
pub fn risk(signals: &[Signal]) -> f64 {
    signals.iter().map(|s| s.score).filter(|s| s.is_finite()).fold(0.0, f64::max).clamp(0.0, 1.0)
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
        let s = |score| Signal { name: "x", score };
        assert_eq!(risk(&[]), 0.0);
        assert_eq!(risk(&[s(0.2), s(0.7)]), 0.7);
        assert_eq!(risk(&[s(f64::NAN), s(0.3)]), 0.3);
        assert_eq!(risk(&[s(7.0)]), 1.0);
    }
}
