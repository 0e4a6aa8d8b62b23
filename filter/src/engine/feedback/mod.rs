//! Operator feedback and the thresholds it moves.
//!
//! - `thresholds`: decision thresholds per route group, adapted toward a
//!   target false-positive rate and moved by feedback.
//! - `decisions`: the recent flagged or refused decisions, so feedback can
//!   name one by request id.
//! - `accuracy`: precision and recall per detector and model, from feedback.
//!
//! An identity's share (its offset, marked patterns, risk history) lives in
//! its profile (`profile::standing`). Everything here is in shared data, so
//! feedback given to one worker reaches requests on every worker.

pub mod accuracy;
pub mod decisions;
pub mod thresholds;

use super::config::{AdaptiveThresholds, DecisionThresholds};
use super::decision::Decision;
use super::features::{Combine, Signal};
use super::ml::Role;
use super::ports::{MetricsSink, SharedStore, StoreError};
use super::profile::standing::{Label, Pattern};
use super::profile::Profiler;
use decisions::{Decided, Decisions};
use thresholds::Thresholds;

/// Route groups besides `default`.
pub const MAX_GROUPS: usize = 16;
/// A false positive covers its pattern up to the marked risk plus this.
pub const FP_MARGIN: f64 = 0.1;

/// What weighs in on a decision, for masks, accuracy and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    Rate,
    Behavior,
    Traffic,
    Ml,
    MlUnavailable,
    BehavioralModel,
    AnomalyModel,
    /// A newcomer against its population (`profile::population`).
    Population,
}

pub const DETECTORS: [Detector; 8] = [
    Detector::Rate,
    Detector::Behavior,
    Detector::Traffic,
    Detector::Ml,
    Detector::MlUnavailable,
    Detector::BehavioralModel,
    Detector::AnomalyModel,
    Detector::Population,
];

impl Detector {
    pub fn bit(self) -> u16 {
        1 << (self as u16)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Rate => "rate",
            Detector::Behavior => "behavior",
            Detector::Traffic => "traffic",
            Detector::Ml => "ml",
            Detector::MlUnavailable => "ml_unavailable",
            Detector::BehavioralModel => "model_behavioral",
            Detector::AnomalyModel => "model_anomaly",
            Detector::Population => "population",
        }
    }

    /// A model behind the `ml` detector (its own bit besides `ml`'s).
    pub fn is_model(self) -> bool {
        matches!(self, Detector::BehavioralModel | Detector::AnomalyModel)
    }

    fn of_signal(name: &str) -> Option<Detector> {
        match name {
            super::rate::SIGNAL => Some(Detector::Rate),
            super::profile::SIGNAL => Some(Detector::Behavior),
            super::profile::population::SIGNAL => Some(Detector::Population),
            super::traffic::SIGNAL => Some(Detector::Traffic),
            super::ml::SIGNAL => Some(Detector::Ml),
            super::ml::FAILURE_SIGNAL => Some(Detector::MlUnavailable),
            _ => None,
        }
    }
}

/// The detectors that weighed in: a detector from half its gate, context from its gate, a local rule
/// from the flag threshold (below it, a rule says nothing about the request).
/// The model that answered counts too.
pub fn mask(signals: &[Signal], ml_model: Option<Role>, flag_at: f64) -> u16 {
    let mut m = 0;
    for s in signals {
        let weighed = match s.combine {
            Combine::Strongest => s.score >= flag_at,
            // Below its gate a detector still adds evidence (scoring's soft
            // gate): from half of it, it has weighed in.
            Combine::Weighted { gate, .. } | Combine::Support { gate, .. } => s.score >= gate / 2.0,
            Combine::Context { gate, .. } | Combine::Answer { gate, .. } => s.score >= gate,
        };
        if let (true, Some(d)) = (weighed, Detector::of_signal(s.name)) {
            m |= d.bit();
            if d == Detector::Ml {
                m |= match ml_model {
                    Some(Role::Behavioral) => Detector::BehavioralModel.bit(),
                    Some(Role::Anomaly) => Detector::AnomalyModel.bit(),
                    None => 0,
                };
            }
        }
    }
    m
}

/// Thresholds moved by `offset`, each kept within (0, 1].
pub fn shifted(t: &DecisionThresholds, offset: f64) -> DecisionThresholds {
    let at = |x: f64| (x + offset).clamp(0.01, 1.0);
    DecisionThresholds { flag: at(t.flag), throttle: at(t.throttle), block: at(t.block) }
}

/// What a marked pattern does to a decision: a false positive lets the
/// same pattern through up to its ceiling; a confirmed threat gets at least
/// the decision it had. Returns the decision and, if it changed, why.
pub fn apply_pattern(decision: Decision, risk: f64, pattern: Option<Pattern>) -> (Decision, Option<String>) {
    let Some(p) = pattern else { return (decision, None) };
    match p.label {
        Label::FalsePositive if decision > Decision::Allow && risk <= f64::from(p.ceiling) / 1000.0 => (
            Decision::Allow,
            Some(format!("an operator marked this pattern a false positive (allowed up to risk {:.3})", f64::from(p.ceiling) / 1000.0)),
        ),
        Label::ConfirmedThreat => {
            let floor = decision_of(p.decision);
            if floor > decision {
                (floor, Some(format!("an operator confirmed this pattern a threat ({})", floor.as_str())))
            } else {
                (decision, None)
            }
        }
        Label::FalsePositive => (decision, None),
    }
}

pub fn decision_code(d: Decision) -> u8 {
    match d {
        Decision::Allow => 0,
        Decision::Flag => 1,
        Decision::Throttle => 2,
        Decision::Block => 3,
    }
}

pub fn decision_of(code: u8) -> Decision {
    match code {
        0 => Decision::Allow,
        1 => Decision::Flag,
        2 => Decision::Throttle,
        _ => Decision::Block,
    }
}

/// What feedback is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A decision, by its request id (`x-request-id`).
    Request(String),
    /// An identity, by its keyed hash, with its display form.
    Identity(u64, String),
    /// A route template, and through it its group.
    Route(String),
}

/// Every `Target::kind`, for the metric labels.
pub const TARGET_KINDS: [&str; 3] = ["request", "identity", "route"];
/// Where a baseline can drift (`vigil_drift_total{scope}`).
pub const DRIFT_IDENTITY: &str = "identity";
pub const DRIFT_ROUTE: &str = "route";
pub const DRIFT_SCOPES: [&str; 2] = [DRIFT_IDENTITY, DRIFT_ROUTE];

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Request(_) => "request",
            Target::Identity(..) => "identity",
            Target::Route(_) => "route",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FeedbackError {
    /// Nothing to apply it to (HTTP 404).
    NotFound(String),
    /// The store failed (HTTP 503).
    Store(StoreError),
}

impl From<StoreError> for FeedbackError {
    fn from(e: StoreError) -> Self {
        FeedbackError::Store(e)
    }
}

/// What a feedback changed, for the reply, the event and the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub identity: Option<String>,
    pub route: Option<String>,
    pub group: Option<String>,
    pub group_offset: Option<f64>,
    pub identity_offset: Option<f64>,
    /// The decision's pattern was kept on the identity's profile.
    pub pattern_kept: bool,
    /// A confirmed threat on a request Vigil did not flag (or no longer keeps).
    pub missed: bool,
}

pub struct Feedback {
    cfg: AdaptiveThresholds,
    pub thresholds: Thresholds,
    /// Kept only when the admin API is on (nobody could ask otherwise).
    pub decisions: Option<Decisions>,
    /// This worker's decisions kept in the current second: (second, count).
    kept: std::cell::Cell<(u64, u32)>,
}

/// Decisions a worker keeps per second at most: under a flood of refusals
/// (thousands a second, mostly one pattern) the writes stay bounded, and one
/// kept example is enough to give feedback on.
pub const KEEP_PER_SECOND: u32 = 50;

impl Feedback {
    pub fn new(cfg: &AdaptiveThresholds, recent_decisions: Option<u32>) -> Self {
        Feedback {
            cfg: cfg.clone(),
            thresholds: Thresholds::new(cfg),
            decisions: recent_decisions.map(Decisions::new),
            kept: std::cell::Cell::new((0, 0)),
        }
    }

    pub fn start(&self, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<u32, StoreError> {
        match &self.decisions {
            Some(d) => d.start(store, metrics),
            None => Ok(0),
        }
    }

    /// Applies an operator's verdict. `accept_weight` is how many requests'
    /// worth of history a false positive gives its route in the identity's
    /// profile (the baseline moves toward it).
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        target: &Target,
        label: Label,
        now_ms: u64,
        request_hash: impl Fn(&str) -> u64,
        profiler: Option<&Profiler>,
        accept_weight: f32,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
    ) -> Result<Applied, FeedbackError> {
        let bounds = (self.cfg.min_offset, self.cfg.max_offset);
        let step = self.cfg.feedback_step;
        let mut applied = Applied {
            identity: None,
            route: None,
            group: None,
            group_offset: None,
            identity_offset: None,
            pattern_kept: false,
            missed: false,
        };
        match target {
            Target::Request(id) => {
                let found = match &self.decisions {
                    Some(d) => d.find(request_hash(id), store, metrics)?,
                    None => None,
                };
                let Some(d) = found else {
                    if label == Label::ConfirmedThreat {
                        // A threat Vigil let through: a miss for every detector.
                        accuracy::record(label, None, store, metrics)?;
                        applied.missed = true;
                        return Ok(applied);
                    }
                    return Err(FeedbackError::NotFound(format!(
                        "no decision kept for request id `{id}` (only flagged, throttled and blocked requests are, the newest first)"
                    )));
                };
                let group = usize::from(d.group);
                let state = self.thresholds.feedback(group, label, store, metrics)?;
                accuracy::record(label, Some(d.mask), store, metrics)?;
                applied.group = self.thresholds.names().get(group).cloned();
                applied.group_offset = Some(f64::from(state.offset));
                applied.route = Some(d.route.clone());
                applied.identity = Some(d.identity_display.clone());
                if let (false, Some(p)) = (d.anonymous, profiler) {
                    let risk = f64::from(d.risk_permille) / 1000.0;
                    let pattern = Pattern {
                        route: d.route_hash,
                        mask: d.mask,
                        label,
                        ceiling: (((risk + FP_MARGIN).min(1.0)) * 1000.0).round() as u16,
                        decision: d.decision,
                        at_s: (now_ms / 1000) as u32,
                    };
                    let stored = p.apply_feedback(d.identity, now_ms, store, metrics, |profile| {
                        profile.standing.learn_feedback(label, step, bounds, Some(pattern));
                        match label {
                            Label::FalsePositive => {
                                profile.accept_route(d.route_hash, accept_weight);
                                // The deviation is this identity's normal on purpose.
                                profile.standing.end_episode(now_ms);
                            }
                            Label::ConfirmedThreat => profile.doubt_route(d.route_hash),
                        }
                    })?;
                    applied.pattern_kept = stored.is_some();
                    applied.identity_offset = stored.map(|pr| f64::from(pr.standing.offset));
                }
            }
            Target::Identity(hash, display) => {
                let p = profiler.ok_or_else(|| FeedbackError::NotFound("behavioral profiling is off: there are no identity profiles".into()))?;
                let stored = p.apply_feedback(*hash, now_ms, store, metrics, |profile| {
                    profile.standing.learn_feedback(label, step, bounds, None);
                    if label == Label::FalsePositive {
                        profile.standing.end_episode(now_ms);
                    }
                })?;
                let Some(stored) = stored else {
                    return Err(FeedbackError::NotFound(format!("no profile for identity `{display}`")));
                };
                applied.identity = Some(display.clone());
                applied.identity_offset = Some(f64::from(stored.standing.offset));
            }
            Target::Route(route) => {
                let group = self.thresholds.group_of(route);
                let state = self.thresholds.feedback(group, label, store, metrics)?;
                applied.route = Some(route.clone());
                applied.group = self.thresholds.names().get(group).cloned();
                applied.group_offset = Some(f64::from(state.offset));
            }
        }
        Ok(applied)
    }

    /// Keeps a flagged or refused decision for feedback by request id.
    /// At most `KEEP_PER_SECOND` per worker; the others are not kept.
    pub fn keep(&self, request: u64, d: Decided, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<(), StoreError> {
        let Some(t) = &self.decisions else { return Ok(()) };
        let second = d.at_ms / 1000;
        let (at, n) = self.kept.get();
        let n = if at == second { n } else { 0 };
        if n >= KEEP_PER_SECOND {
            return Ok(());
        }
        self.kept.set((second, n + 1));
        t.keep(request, d, store, metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_name_the_detectors_that_weighed_in() {
        let behavior = Signal { name: "behavior", score: 0.8, confidence: 1.0, combine: Combine::Weighted { weight: 0.4, gate: 0.7 } };
        let quiet_ml = Signal { name: "ml", score: 0.2, confidence: 1.0, combine: Combine::Answer { weight: 0.5, gate: 0.5 } };
        let loud_ml = Signal { score: 0.9, ..quiet_ml };
        let rate = Signal::local("rate", 0.1);
        assert_eq!(mask(&[behavior, quiet_ml, rate], Some(Role::Anomaly), 0.5), Detector::Behavior.bit());
        assert_eq!(
            mask(&[loud_ml, Signal::local("rate", 0.9)], Some(Role::Anomaly), 0.5),
            Detector::Ml.bit() | Detector::AnomalyModel.bit() | Detector::Rate.bit()
        );
    }

    #[test]
    fn marked_patterns_change_only_what_they_cover() {
        let fp = Pattern { route: 1, mask: 2, label: Label::FalsePositive, ceiling: 650, decision: 1, at_s: 0 };
        assert_eq!(apply_pattern(Decision::Flag, 0.6, Some(fp)).0, Decision::Allow);
        assert_eq!(apply_pattern(Decision::Throttle, 0.8, Some(fp)).0, Decision::Throttle, "riskier than when marked");
        assert_eq!(apply_pattern(Decision::Allow, 0.1, Some(fp)), (Decision::Allow, None));
        let threat = Pattern { label: Label::ConfirmedThreat, decision: 3, ..fp };
        assert_eq!(apply_pattern(Decision::Flag, 0.6, Some(threat)).0, Decision::Block);
        assert_eq!(apply_pattern(Decision::Flag, 0.6, None), (Decision::Flag, None));
    }

    #[test]
    fn a_flood_of_refusals_keeps_a_bounded_number_of_decisions_per_second() {
        use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let f = Feedback::new(&AdaptiveThresholds::default(), Some(4096));
        f.start(&store, &metrics).unwrap();
        let d = |at_ms| Decided {
            identity: 3,
            identity_display: "user:3".into(),
            anonymous: false,
            route: "/x".into(),
            route_hash: 1,
            group: 0,
            mask: 1,
            risk_permille: 900,
            decision: 3,
            at_ms,
        };
        for i in 0..1000u64 {
            f.keep(100 + i, d(5_000 + i * 2), &store, &metrics).unwrap();
        }
        let kept = (0..1000u64).filter(|i| f.decisions.as_ref().unwrap().find(100 + i, &store, &metrics).unwrap().is_some()).count();
        assert_eq!(kept, 2 * KEEP_PER_SECOND as usize, "1000 refusals over two seconds");
    }

    #[test]
    fn shifted_thresholds_stay_in_the_unit_interval() {
        let t = DecisionThresholds::default();
        let up = shifted(&t, 0.2);
        assert!((up.flag - 0.7).abs() < 1e-9 && up.block == 1.0);
        let down = shifted(&t, -0.6);
        assert_eq!(down.flag, 0.01);
    }
}
