//! The request pipeline: small steps in a fixed order, each with an explicit
//! outcome. A failed step goes through its failure mode (open: note it, count
//! it, carry on) instead of failing the request.

use super::alerts::{self, Alerts};
use super::config::{Config, EventFormat, Mode};
use super::decision::{self, Decision};
use super::events::{self, Event};
use super::features::{Combine, Features, Method, ObjectRef, Signal, ThreatDetail};
use super::feedback::{self, decisions::Decided, Feedback};
use super::hash::HashKey;
use super::identity::{self, IdentityKind};
use super::keys::{self, Keys};
use super::ml::{self, vector, Exchange, Ml};
use super::ports::{Callouts, Metric, MetricsSink, SharedStore, StoreError};
use super::profile::{self, model, population, Assessment, Profiler};
use super::rate;
use super::slots::Hints;
use super::scoring;
use super::request::RequestView;
use super::route;
use super::traffic::{self, Traffic};

/// The engine, built once per configuration and shared by every request.
pub struct Engine {
    pub config: Config,
    hash_key: HashKey,
    rate_prefix: String,
    /// Where this worker last found identities in the rate table (none
    /// when the rate signal is off: nothing to remember).
    rate_hints: Option<Hints>,
    profiler: Option<Profiler>,
    traffic: Option<Traffic>,
    ml: Option<Ml>,
    alerts: Option<Alerts>,
    collector: Option<events::collector::Collector>,
    feedback: Feedback,
    /// Secondary keys and route-anomaly attribution (`secondary_keys`).
    keys: Option<Keys>,
}

/// What periodic work has to say: problems (logged at warn) and security
/// events (info, for the SIEM).
#[derive(Debug, Default)]
pub struct TickLog {
    pub warn: Vec<String>,
    pub events: Vec<String>,
}

/// Where the identity's profile stands, for headers and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileState {
    /// Still learning: `observations` of `min_observations`.
    Cold { observations: u32 },
    Warm { observations: u32 },
}

/// What the pipeline concluded about one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub features: Features,
    pub signals: Vec<Signal>,
    pub threat_details: Vec<ThreatDetail>,
    pub risk: f64,
    /// The risk's interval: what the missing and unsure evidence leaves open.
    pub interval: (f64, f64),
    pub decision: Decision,
    /// The decision is acted on (enforce mode and a refusing decision).
    pub enforced: bool,
    /// The request's route group (`adaptive_thresholds.route_groups`, 0 = default).
    pub group: u8,
    /// Detectors that weighed in (`feedback::mask`).
    pub mask: u16,
    /// Exact count of this identity's requests in its current rate window.
    pub rate_count: Option<u32>,
    /// Seconds until the identity is back within its ceiling, for `retry-after`.
    pub retry_after_s: Option<u64>,
    pub profile: Option<ProfileState>,
    /// The request's own behavioural deviation, before any episode it
    /// continues raised it (what its learning weight follows).
    pub own_deviation: Option<f64>,
    /// The same without where and when it comes from (`score::conduct`).
    pub own_conduct: Option<f64>,
    /// What the profile needs to learn the request once decided.
    pub learning: Option<profile::Pending>,
    /// What a model is (or would be) sent; kept when a model is configured or
    /// `export_features` is on.
    pub ml_vector: Option<vector::Vector>,
    /// The identity's last minute, as the profile saw it (the model reads it).
    pub activity: Option<profile::activity::Summary>,
}

/// The outcome of a step.
enum Outcome {
    Done,
    /// The step could not run; its failure mode decides what happens.
    Failed { step: &'static str, error: StoreError },
}

impl Engine {
    pub fn new(config: Config) -> Self {
        let hash_key = HashKey::from_secret(config.identity.hash_secret.as_bytes());
        let rate_prefix = rate::key_prefix(&config.rate_limit);
        let profiler = config.behavioral_profiling.enable_user_profiling.then(|| Profiler::new(&config.behavioral_profiling));
        let traffic = config.time_series_analysis.enable_traffic_analysis.then(|| Traffic::new(&config.time_series_analysis));
        let ml = Ml::new(&config);
        let alerts = Alerts::new(&config.alerts);
        let syslog_host = config.siem.syslog.then(|| config.siem.syslog_hostname.clone());
        let collector = config.siem.collector.as_ref().and_then(|c| events::collector::Collector::new(c, syslog_host));
        let feedback = Feedback::new(&config.adaptive_thresholds, config.admin.enabled().then_some(config.admin.recent_decisions));
        let rate_hints = config.rate_limit.enabled.then(|| Hints::for_slots(config.rate_limit.max_identities));
        let keys = config.secondary_keys.enabled.then(|| Keys::new(&config, hash_key));
        Self { config, hash_key, rate_prefix, rate_hints, profiler, traffic, ml, alerts, collector, feedback, keys }
    }

    /// Start-up work: creates the shared tables. Idempotent across workers.
    /// Returns how many slots this call created.
    pub fn start(&self, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<u32, StoreError> {
        let mut created = 0;
        if self.config.rate_limit.enabled {
            created += rate::initialize(&self.config.rate_limit, store, metrics, &self.rate_prefix)?;
        }
        if let Some(p) = &self.profiler {
            created += p.start(store, metrics)?;
        }
        if let Some(t) = &self.traffic {
            t.start(store, metrics)?;
        }
        if let Some(m) = &self.ml {
            created += m.start(store, metrics)?;
        }
        if let Some(a) = &self.alerts {
            created += a.start(store, metrics)?;
        }
        created += self.feedback.start(store, metrics)?;
        if let Some(k) = &self.keys {
            created += k.start(store, metrics)?;
        }
        Ok(created)
    }

    pub fn profiler(&self) -> Option<&Profiler> {
        self.profiler.as_ref()
    }

    /// Periodic work (every worker, once a tick): sync profiles, hand in
    /// traffic counts, and the elected cleanup and traffic analysis. `instance`
    /// tells this VM apart from the others. Returns lines worth logging.
    pub fn on_tick(
        &self,
        now_ms: u64,
        instance: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
        callouts: &dyn Callouts,
    ) -> TickLog {
        let mut log = TickLog::default();
        if let Some(p) = &self.profiler {
            p.on_tick(now_ms, instance, store, metrics);
            if let Err(e) = p.population.on_tick(now_ms, store, metrics) {
                metrics.add(Metric::StoreErrors, 1);
                log.warn.push(format!("population: cannot fold newcomer samples into shared data ({e:?}), kept for the next tick"));
            }
            if let Err(e) = p.adoption.on_tick(now_ms, store, metrics) {
                metrics.add(Metric::StoreErrors, 1);
                log.warn.push(format!("adoption: cannot fold new routes' adopters into shared data ({e:?}), kept for the next tick"));
            }
            if let Err(e) = p.breadth.on_tick(now_ms, store, metrics) {
                metrics.add(Metric::StoreErrors, 1);
                log.warn.push(format!("breadth: cannot fold the routes' callers into shared data ({e:?}), kept for the next tick"));
            }
        }
        if let Some(m) = &self.ml {
            m.on_tick(now_ms, callouts, metrics);
            if let Err(e) = m.flush_latency(now_ms, store, metrics) {
                log.warn.push(format!("ml: cannot hand latencies to shared data ({e:?})"));
            }
            if let Some(a) = &self.alerts {
                for role in m.take_opened() {
                    let fired = a.check_breaker(role.as_str(), now_ms, store, metrics);
                    self.raise(&fired, now_ms, metrics, &mut log.events);
                }
            }
        }
        if let Some(t) = &self.traffic {
            let report = t.on_tick(now_ms, instance, store, metrics);
            for onset in report.onsets {
                metrics.add(Metric::Events(events::Kind::Anomaly), 1);
                self.emit(&Event::of_anomaly(now_ms, &onset), now_ms, metrics, &mut log.events);
                log.warn.push(onset);
            }
            for drift in report.drifts {
                metrics.add(Metric::Drift(feedback::DRIFT_ROUTE), 1);
                metrics.add(Metric::Events(events::Kind::Drift), 1);
                self.emit(&Event::notice(events::Kind::Drift, "baseline drift", 4, now_ms, "drift", drift.clone()), now_ms, metrics, &mut log.events);
                log.events.push(format!("vigil-{drift}"));
            }
            log.warn.extend(report.problems);
        }
        match self.feedback.thresholds.on_tick(now_ms, store, metrics) {
            Ok(changes) => {
                metrics.add(Metric::ThresholdAdjustments, changes.len() as u64);
                log.events.extend(changes.into_iter().map(|c| format!("vigil-{c}")));
            }
            Err(e) => log.warn.push(format!("thresholds: cannot hand counts to shared data ({e:?}), kept for the next tick")),
        }
        if let Some(a) = &self.alerts {
            log.warn.extend(a.outbox.on_tick(now_ms, callouts, metrics).into_iter().map(|l| format!("alerts: {l}")));
        }
        if let Some(k) = &self.keys {
            log.warn.extend(k.on_tick(now_ms, store, metrics));
        }
        if let Some(c) = &self.collector {
            log.warn.extend(c.on_tick(now_ms, callouts, metrics).into_iter().map(|l| format!("siem: {l}")));
        }
        log
    }

    /// Security events and alerts for a decided request: the lines to log
    /// (empty for a plain `allow` that fires no alert). Alerts are queued
    /// for the webhooks; nothing here waits.
    pub fn after_decision(&self, v: &Verdict, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Vec<String> {
        let mut lines = Vec::new();
        self.remember(v, now_ms, store, metrics, &mut lines);
        if self.config.debug.log_decisions {
            lines.push(self.explain(v));
        }
        if v.decision != Decision::Allow {
            // The detectors that weighed in, as feedback's mask has them (the
            // models are counted under `ml`).
            for d in feedback::DETECTORS.iter().filter(|d| !d.is_model() && v.mask & d.bit() != 0) {
                metrics.add(Metric::DecisionReasons(d.as_str()), 1);
            }
            if v.signals.iter().any(|s| s.name == keys::SIGNAL && matches!(s.combine, Combine::Weighted { gate, .. } | Combine::Support { gate, .. } if s.score >= gate)) {
                metrics.add(Metric::DecisionReasons(keys::SIGNAL), 1);
            }
        }
        if let Some(e) = Event::of_decision(v) {
            metrics.add(Metric::Events(events::Kind::Decision), 1);
            self.emit(&e, now_ms, metrics, &mut lines);
        }
        if let Some(a) = &self.alerts {
            let fired = a.check_request(v, now_ms, store, metrics);
            self.raise(&fired, now_ms, metrics, &mut lines);
        }
        lines
    }

    /// What the adaptive thresholds, feedback and risk history keep of a
    /// decided request: the group's counts (local), the identity's risk
    /// (its cached profile), and a flagged or refused decision (shared data,
    /// for feedback by request id: the only host call, and only for those).
    fn remember(&self, v: &Verdict, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink, lines: &mut Vec<String>) {
        let flagged = v.decision > Decision::Allow;
        self.feedback.thresholds.count(usize::from(v.group), flagged);
        let anonymous = v.features.identity.kind == IdentityKind::Anonymous;
        if let (Some(p), false) = (&self.profiler, anonymous) {
            let gate = self.config.behavioral_profiling.deviation_threshold;
            // A drift is a shift the decisions let through (an operator's
            // feedback can raise an identity's thresholds): what was flagged
            // or refused never becomes the identity's normal by repetition.
            let deviated = v.features.behavioral_score.is_some_and(|s| s >= gate) && v.decision == Decision::Allow;
            let weight = v.features.learn_weight;
            let drift_ms = u64::from(self.config.behavioral_profiling.drift_minutes) * 60_000;
            let Some(pending) = &v.learning else { return };
            // A young identity's closed minute joins its population when its
            // decisions let it teach (a flagged newcomer is no sample). An
            // identity served by several workers may be sampled by each.
            if let Some((minute, _)) = pending.present.closed.filter(|(_, taught)| *taught >= 0.5 && weight >= 0.5) {
                if p.activity(v.features.identity.hash, v.features.time_ms).is_some_and(|now| now.age_ms < population::YOUNG_MS + 60_000) {
                    p.population.sample(v.features.identity.kind, &minute);
                }
            }
            if p.record_decision(v.features.identity.hash, pending, now_ms, v.risk, deviated, weight, drift_ms, store, metrics) {
                metrics.add(Metric::Drift(feedback::DRIFT_IDENTITY), 1);
                let message = format!(
                    "identity {} deviated from its profile for {} min on end: its normal has shifted; profile rebased (old history keeps {:.0}%)",
                    v.features.identity.display(),
                    self.config.behavioral_profiling.drift_minutes,
                    profile::REBASE_KEEP * 100.0
                );
                let mut e = Event::notice(events::Kind::Drift, "baseline drift", 4, now_ms, "drift", message);
                e.identity = Some(v.features.identity.display());
                metrics.add(Metric::Events(events::Kind::Drift), 1);
                self.emit(&e, now_ms, metrics, lines);
            }
        }
        if flagged && self.feedback.decisions.is_some() {
            let d = Decided {
                identity: v.features.identity.hash,
                identity_display: v.features.identity.display(),
                anonymous,
                route: v.features.route.clone(),
                route_hash: self.hash_key.hash(&[v.features.route.as_bytes()]) as u32,
                group: v.group,
                mask: v.mask,
                risk_permille: (v.risk.clamp(0.0, 1.0) * 1000.0).round() as u16,
                decision: feedback::decision_code(v.decision),
                at_ms: now_ms,
            };
            if self.feedback.keep(self.request_hash(&v.features.request_id), d, store, metrics).is_err() {
                // Feedback on this one will say "unknown": the request itself is unaffected.
                metrics.add(Metric::StoreErrors, 1);
            }
        }
    }

    /// An identity's keyed hash, as requests would resolve it (admin API).
    pub fn identity_hash(&self, kind: IdentityKind, value: &[u8]) -> u64 {
        identity::hash_identity(&self.hash_key, kind, value)
    }

    /// Applies an operator's verdict (admin API): see `feedback::Feedback::apply`.
    /// A false positive gives its route half the cold-start count of history
    /// in the identity's profile.
    pub fn apply_feedback(
        &self,
        target: &feedback::Target,
        label: crate::engine::profile::standing::Label,
        now_ms: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
    ) -> Result<feedback::Applied, feedback::FeedbackError> {
        let accept = (self.config.behavioral_profiling.min_observations as f32 / 2.0).max(1.0);
        self.feedback.apply(target, label, now_ms, |id| self.request_hash(id), self.profiler.as_ref(), accept, store, metrics)
    }

    /// The log lines for an event, and the collector's copy (see `emit`).
    pub fn emit_event(&self, e: &Event, now_ms: u64, metrics: &dyn MetricsSink) -> Vec<String> {
        let mut lines = Vec::new();
        self.emit(e, now_ms, metrics, &mut lines);
        lines
    }

    /// The key a decision is kept under: a keyed hash of its request id.
    pub fn request_hash(&self, request_id: &str) -> u64 {
        self.hash_key.hash(&[b"request\x00", request_id.as_bytes()]) | 1
    }

    pub fn feedback(&self) -> &Feedback {
        &self.feedback
    }

    /// Why this score: every signal with its weight and gate, and whether it
    /// counted (`debug.log_decisions`).
    fn explain(&self, v: &Verdict) -> String {
        use std::fmt::Write;
        let who = if self.config.debug.log_identities { v.features.identity.display() } else { "redacted".to_string() };
        let mut out = format!(
            "vigil-decision request_id={} identity={who} route={} risk={:.3} decision={}{}:",
            v.features.request_id,
            v.features.route,
            v.risk,
            v.decision.as_str(),
            if v.enforced { " (enforced)" } else { "" }
        );
        for s in &v.signals {
            let _ = match s.combine {
                Combine::Strongest => write!(out, " {}={:.3} [floor]", s.name, s.score),
                Combine::Weighted { weight, gate } | Combine::Support { weight, gate } => write!(
                    out,
                    " {}={:.3} [weight {weight:.2}, gate {gate:.2}, {}]",
                    s.name,
                    s.score,
                    if s.score >= gate { "counted" } else { "below gate: counts faded" }
                ),
                Combine::Answer { weight, gate } => write!(
                    out,
                    " {}={:.3} [answer weight {weight:.2}, gate {gate:.2}, {}]",
                    s.name,
                    s.score,
                    if s.score >= gate { "counted" } else { "below gate: counts 0" }
                ),
                Combine::Context { weight, gate } => write!(
                    out,
                    " {}={:.3} [context weight {weight:.2}, gate {gate:.2}, {}]",
                    s.name,
                    s.score,
                    if s.score >= gate { "counted" } else { "left out" }
                ),
            };
        }
        if v.signals.is_empty() {
            out.push_str(" no signal");
        }
        out
    }

    /// A reply to an alert webhook or a SIEM batch (root context). `None`
    /// if the token is neither's.
    pub fn notification_reply(&self, token: u32, status: Option<u16>, now_ms: u64, metrics: &dyn MetricsSink) -> Option<Vec<String>> {
        let alerts = self.alerts.as_ref().and_then(|a| a.outbox.on_reply(token, status, now_ms, metrics));
        let alerts = alerts.map(|lines| lines.into_iter().map(|l| format!("alerts: {l}")).collect());
        alerts.or_else(|| {
            let lines = self.collector.as_ref()?.outbox.on_reply(token, status, now_ms, metrics)?;
            Some(lines.into_iter().map(|l| format!("siem: {l}")).collect())
        })
    }

    fn raise(&self, fired: &[alerts::Alert], now_ms: u64, metrics: &dyn MetricsSink, lines: &mut Vec<String>) {
        let Some(a) = &self.alerts else { return };
        for alert in fired {
            a.notify(alert, now_ms, metrics);
            metrics.add(Metric::Events(events::Kind::Alert), 1);
            self.emit(&alerts::event(alert), now_ms, metrics, lines);
        }
    }

    /// Sends an event where the SIEM configuration says: the collector's
    /// batch, and the log lines (`vigil-event ` + CEF and/or JSON, framed as
    /// syslog when configured).
    fn emit(&self, e: &Event, now_ms: u64, metrics: &dyn MetricsSink, out: &mut Vec<String>) {
        if let Some(c) = &self.collector {
            c.push(e, now_ms, metrics);
        }
        let siem = &self.config.siem;
        if !siem.log {
            return;
        }
        let bodies = match siem.format {
            EventFormat::Cef => vec![e.cef()],
            EventFormat::Json => vec![e.json()],
            EventFormat::Both => vec![e.cef(), e.json()],
        };
        for body in bodies {
            let line = if siem.syslog { events::syslog::frame(e, &siem.syslog_hostname, &body) } else { body };
            out.push(format!("vigil-event {line}"));
        }
    }

    /// Runs the request-side pipeline: identify, extract, count, score,
    /// decide, and what the decision teaches (`after_decision`, its log
    /// lines dropped). For a request that does not wait for a model.
    pub fn on_request(
        &self,
        req: &dyn RequestView,
        now_ms: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
    ) -> Verdict {
        self.on_request_logged(req, now_ms, store, metrics).0
    }

    /// `on_request`, with the lines `after_decision` had to log.
    pub fn on_request_logged(
        &self,
        req: &dyn RequestView,
        now_ms: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
    ) -> (Verdict, Vec<String>) {
        let mut v = self.assess(req, now_ms, store, metrics, &mut Vec::new());
        self.decide(&mut v, metrics);
        let lines = self.after_decision(&v, now_ms, store, metrics);
        (v, lines)
    }

    /// The local steps: everything but the decision. `async` model calls are
    /// queued here; `log` collects model payload lines when configured.
    pub fn assess(
        &self,
        req: &dyn RequestView,
        now_ms: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
        log: &mut Vec<String>,
    ) -> Verdict {
        metrics.add(Metric::Requests, 1);
        let features = self.extract(req, now_ms);
        let mut v = Verdict {
            features,
            signals: Vec::with_capacity(4),
            threat_details: Vec::new(),
            risk: 0.0,
            interval: (0.0, 0.0),
            decision: Decision::Allow,
            enforced: false,
            group: 0,
            mask: 0,
            rate_count: None,
            retry_after_s: None,
            profile: None,
            own_deviation: None,
            own_conduct: None,
            learning: None,
            ml_vector: None,
            activity: None,
        };

        self.traffic_step(&mut v, now_ms);
        let local_steps = [self.rate_step(&mut v, now_ms, store, metrics), self.profile_step(&mut v, store, metrics)];
        self.keys_step(req, &mut v, metrics);
        // The local risk, before the model's own earlier verdict joins it: an
        // identity the model flagged is not asked about on every request.
        let local_risk = scoring::risk(&v.signals, 0.0).score;
        let model_step = self.stored_answer_step(&mut v, now_ms, store, metrics);
        for outcome in local_steps.into_iter().chain([model_step]) {
            if let Outcome::Failed { step, error } = outcome {
                // Fail open: a store problem must not take the API down with it.
                metrics.add(Metric::StoreErrors, 1);
                v.threat_details
                    .push(ThreatDetail { signal: step, reason: format!("unavailable ({error:?}), failing open") });
            }
        }
        // The vector costs a few hundred ns: built only when something uses it.
        let asks_async = self.ml.as_ref().is_some_and(|m| m.mode() == crate::engine::config::MlMode::Async);
        if asks_async || self.config.ml_model_config.export_features {
            v.ml_vector = Some(self.vector(&v));
        }
        if let (true, Some(m), Some(vec)) = (asks_async, &self.ml, &v.ml_vector) {
            m.enqueue(&v.features, vec, local_risk, now_ms, metrics, log);
        }
        v
    }

    /// Turns the signals into the risk score and the decision.
    pub fn decide(&self, v: &mut Verdict, metrics: &dyn MetricsSink) {
        let risk = scoring::risk(&v.signals, self.missing_weight(v));
        v.risk = risk.score;
        v.interval = (risk.low, risk.high);
        let base = &self.config.decision_thresholds;
        let thresholds = &self.feedback.thresholds;
        let group = thresholds.group_of(&v.features.route);
        v.group = group as u8;
        v.mask = feedback::mask(&v.signals, v.features.ml_model, base.flag);
        // What operators said about this identity, from its cached profile.
        let (identity_offset, pattern) = match (&self.profiler, v.features.identity.kind) {
            (Some(p), kind) if kind != IdentityKind::Anonymous => {
                let route = self.hash_key.hash(&[v.features.route.as_bytes()]) as u32;
                p.standing_for(v.features.identity.hash, route, v.mask)
            }
            _ => (0.0, None),
        };
        let offset = thresholds.bounded(thresholds.offset(group) + identity_offset);
        let decided = decision::decide_for(v.risk, &v.signals, &feedback::shifted(base, offset));
        let (decided, why) = feedback::apply_pattern(decided, v.risk, pattern);
        if let Some(reason) = why {
            v.threat_details.push(ThreatDetail { signal: "feedback", reason });
        }
        v.decision = decided;
        v.enforced = self.config.mode == Mode::Enforce && v.decision.status().is_some();
        v.features.refused = v.enforced;
        // A flag the identity's own moderate deviation earned alone (a
        // traveller's new country) still teaches at the deviation's weight, so
        // a plausible change becomes normal; a flag the other detectors earn,
        // or anything above a flag, teaches a trace.
        let gate = self.config.behavioral_profiling.deviation_threshold;
        let by_others = v.decision > Decision::Flag
            || (v.decision == Decision::Flag && scoring::risk_without(&v.signals, profile::SIGNAL) >= base.flag + offset);
        v.features.learn_weight = profile::score::learning_weight(v.own_deviation.unwrap_or(0.0), gate, by_others, v.enforced);
        metrics.add(
            match v.decision {
                Decision::Allow => Metric::DecisionAllow,
                Decision::Flag => Metric::DecisionFlag,
                Decision::Throttle => Metric::DecisionThrottle,
                Decision::Block => Metric::DecisionBlock,
            },
            1,
        );
        if v.enforced {
            metrics.add(Metric::Enforced, 1);
        }
    }

    /// The weight of configured detectors with nothing to say about this
    /// request: a profile still cold (or none: anonymous), no model answer,
    /// no secondary key scored.
    fn missing_weight(&self, v: &Verdict) -> f64 {
        let w = &self.config.ml_scoring_weights;
        let mut missing = 0.0;
        // A cold profile is missing, unless the population stood in for it.
        let population = v.signals.iter().any(|s| s.name == population::SIGNAL);
        if self.profiler.is_some() && v.features.behavioral_score.is_none() && !population {
            missing += w.behavioral_deviation;
        }
        if self.ml.is_some() && v.features.user_deviation_score.is_none() {
            missing += w.user_anomaly;
        }
        // Secondary keys configured, but none scored this request (no key
        // value, or its population is still too small to say what is usual).
        if self.keys.is_some() && !v.signals.iter().any(|s| s.name == keys::SIGNAL) {
            missing += w.secondary_keys;
        }
        missing
    }

    /// For a request that waits for the models (`inline`, or `cascade` in the
    /// grey zone): sends the calls. `None` when it does not wait after all
    /// (no call could be sent: the failure modes are applied already).
    pub fn ask_models(
        &self,
        v: &mut Verdict,
        now_ms: u64,
        callouts: &dyn Callouts,
        metrics: &dyn MetricsSink,
        log: &mut Vec<String>,
    ) -> Option<Exchange> {
        let m = self.ml.as_ref()?;
        if !m.waits_for(scoring::risk(&v.signals, 0.0).score) {
            return None;
        }
        let vec = match v.ml_vector {
            Some(vec) => vec,
            None => self.vector(v),
        };
        v.ml_vector = Some(vec);
        let ex = m.ask(&v.features, &vec, now_ms, callouts, metrics, log);
        if ex.settled() {
            self.conclude_models(&ex, v, metrics);
            return None;
        }
        Some(ex)
    }

    /// A reply to one of a waiting request's calls. Returns whether the
    /// token was the exchange's.
    #[allow(clippy::too_many_arguments)]
    pub fn model_reply(
        &self,
        ex: &mut Exchange,
        token: u32,
        reply: Option<(u16, &[u8])>,
        now_ms: u64,
        callouts: &dyn Callouts,
        metrics: &dyn MetricsSink,
        log: &mut Vec<String>,
    ) -> bool {
        self.ml.as_ref().is_some_and(|m| m.on_reply(ex, token, reply, now_ms, callouts, metrics, log))
    }

    /// Every model has answered or failed: their verdict joins the signals.
    /// The caller then `decide`s.
    pub fn conclude_models(&self, ex: &Exchange, v: &mut Verdict, metrics: &dyn MetricsSink) {
        if let Some(m) = &self.ml {
            m.conclude(ex, &mut v.features, &mut v.signals, &mut v.threat_details, metrics);
        }
    }

    /// The request ended while waiting for the models.
    pub fn abandon_models(&self, ex: &Exchange, metrics: &dyn MetricsSink) {
        if let Some(m) = &self.ml {
            m.abandon(ex, metrics);
        }
    }

    /// A reply to an `async` call, in the context that sent it (the root).
    pub fn async_model_reply(
        &self,
        token: u32,
        reply: Option<(u16, &[u8])>,
        now_ms: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
        log: &mut Vec<String>,
    ) -> bool {
        let Some(m) = &self.ml else { return false };
        match m.on_async_reply(token, reply, now_ms, store, metrics, log) {
            Ok(known) => known,
            Err(e) => {
                metrics.add(Metric::StoreErrors, 1);
                log.push(format!("ml: could not keep a model answer ({e:?})"));
                true
            }
        }
    }

    pub fn ml(&self) -> Option<&Ml> {
        self.ml.as_ref()
    }

    /// Whether any detector reads response features (status, latency). Reading
    /// them costs host calls on every response, so the host asks only then.
    pub fn wants_response_features(&self) -> bool {
        self.config.behavioral_profiling.enable_user_profiling
            || self.config.time_series_analysis.enable_traffic_analysis
            || self.keys.is_some()
    }

    /// Completes the features with what the response tells.
    pub fn on_response(&self, features: &mut Features, status: Option<u16>, latency_us: u64) {
        features.status = status;
        features.latency_us = Some(latency_us);
    }

    /// The stream is over (answered, refused or reset): detectors learn what
    /// the response told.
    pub fn on_complete(&self, features: &Features, now_ms: u64) {
        if let Some(t) = &self.traffic {
            t.record(&features.route, features.status, features.latency_us, now_ms);
        }
        // Vigil's own 429/403 must not teach a profile that the identity collects failures.
        if let (Some(p), Some(status), false) = (&self.profiler, features.status, features.refused) {
            p.observe_status(features.identity.hash, status, features.learn_weight);
        }
        if let Some(k) = &self.keys {
            k.learn(features, now_ms);
        }
    }

    pub fn traffic(&self) -> Option<&Traffic> {
        self.traffic.as_ref()
    }

    fn extract(&self, req: &dyn RequestView, now_ms: u64) -> Features {
        let identity = identity::resolve(&self.config.identity.sources, &self.hash_key, req);
        let request_id = req.header("x-request-id").and_then(sanitize_request_id).unwrap_or_else(|| {
            format!("vigil-{:016x}", self.hash_key.hash(&[&now_ms.to_le_bytes(), &identity.hash.to_le_bytes()]))
        });
        let (mut session, mut country, mut asn, mut device) = (None, None, None, None);
        if self.profiler.is_some() {
            let p = &self.config.behavioral_profiling;
            let token = p.session.header.as_deref().and_then(|h| req.header(h)).or_else(|| {
                let c = p.session.cookie.as_deref()?;
                req.header("cookie").and_then(|v| cookie_value(v, c.as_bytes()))
            });
            session = token.filter(|t| !t.is_empty()).map(|t| self.hash_key.hash(&[b"session", t]) as u32);
            country = p.geo.country_header.as_deref().and_then(|h| req.header(h)).and_then(|v| model::country_code(v.trim_ascii()));
            asn = p.geo.asn_header.as_deref().and_then(|h| req.header(h)).and_then(parse_asn);
            // A missing header is a device too ("none"): leaving it out must
            // not hide a stolen session.
            device = p.device_header.as_deref().map(|h| {
                let v = req.header(h).unwrap_or(b"");
                if h == "user-agent" {
                    let mut buf = [0u8; DEVICE_BYTES];
                    let kind = agent_without_versions(v, &mut buf);
                    self.hash_key.hash(&[b"device\x00", kind]) as u32
                } else {
                    self.hash_key.hash(&[b"device\x00", v]) as u32
                }
            });
        }
        let method = req.header(":method").map_or(Method::Other, Method::parse);
        let (route, object) = route::template_and_object(req.header(":path").unwrap_or(b"/"));
        // Only the profile reads objects: no keyed hash otherwise.
        let object = object
            .filter(|_| self.profiler.is_some())
            .map(|o| ObjectRef { hash: self.hash_key.hash(&[b"object\x00", o.raw]) as u32, number: o.number });
        Features {
            object,
            request_bytes: req
                .header("content-length")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
            session,
            country,
            asn,
            device,
            ..Features::new(request_id, identity, method, route, now_ms)
        }
    }

    /// Reads the route's traffic score from this worker's snapshot (no host call).
    fn traffic_step(&self, v: &mut Verdict, now_ms: u64) {
        let Some(t) = &self.traffic else { return };
        let Some(a) = t.read(&v.features.route, now_ms) else { return };
        v.features.traffic_anomaly_score = Some(a.score);
        // The whole listener's anomaly says nothing about a request on a
        // route that is itself quiet: visible, not counted (a stuffing run on
        // /login must not flag the shoppers on /products).
        let combine = if a.elsewhere {
            Combine::Context { weight: 0.0, gate: f64::INFINITY }
        } else {
            Combine::Context { weight: self.config.ml_scoring_weights.traffic_anomaly, gate: t.threshold() }
        };
        v.signals.push(Signal { name: traffic::SIGNAL, score: a.score, confidence: 1.0, combine });
        if let Some(mut reason) = a.detail {
            if a.elsewhere {
                reason.push_str(" (elsewhere on the listener: not counted for this route)");
            }
            v.threat_details.push(ThreatDetail { signal: traffic::SIGNAL, reason });
        }
    }

    /// Secondary keys (`secondary_keys`): the `keys` signal, and the traffic
    /// signal attributed to the route anomaly's contributors. No host call.
    fn keys_step(&self, req: &dyn RequestView, v: &mut Verdict, metrics: &dyn MetricsSink) {
        let Some(k) = &self.keys else { return };
        let fresh = match v.profile {
            Some(ProfileState::Cold { observations }) if observations <= keys::FRESH_OBSERVATIONS => keys::Freshness::Fresh,
            Some(_) => keys::Freshness::Established,
            None => keys::Freshness::Unknown,
        };
        let gate = self.config.behavioral_profiling.deviation_threshold;
        // Routine: an established identity doing what it usually does, from
        // wherever it is (a traveller's routine abroad is hers).
        let ordinary = matches!(v.profile, Some(ProfileState::Warm { .. })) && v.own_conduct.is_some_and(|d| d < gate / 2.0);
        // A newcomer with a few requests its population finds ordinary: a
        // crowd's user agent or network surging beside it is not its doing
        // (a stuffing run's identities make one to three requests each).
        let population = v.signals.iter().find(|s| s.name == population::SIGNAL).map(|s| s.score);
        let vouched = matches!(v.profile, Some(ProfileState::Cold { observations }) if observations >= keys::VOUCHED_OBSERVATIONS)
            && population.is_some_and(|p| p < gate / 2.0);
        let routine = ordinary || vouched;
        k.assess(req, &mut v.features, fresh, routine, &mut v.signals, &mut v.threat_details, metrics);
    }

    pub fn keys(&self) -> Option<&Keys> {
        self.keys.as_ref()
    }

    /// The model's view of the request, from the features and what the steps found.
    fn vector(&self, v: &Verdict) -> vector::Vector {
        let ctx = vector::Context {
            rate: v.rate_count.map(|n| (n, self.config.rate_limit.requests_per_window)),
            profile_observations: match v.profile {
                Some(ProfileState::Cold { observations } | ProfileState::Warm { observations }) => Some(observations),
                None => None,
            },
            activity: v.activity,
        };
        vector::build(self.config.ml_model_config.feature_version, &v.features, &ctx)
    }

    /// `async`: the identity's recent model answer, from shared data.
    fn stored_answer_step(&self, v: &mut Verdict, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Outcome {
        let Some(m) = &self.ml else { return Outcome::Done };
        match m.apply_stored(&mut v.features, &mut v.signals, &mut v.threat_details, now_ms, store, metrics) {
            Ok(()) => Outcome::Done,
            Err(error) => Outcome::Failed { step: ml::SIGNAL, error },
        }
    }

    fn profile_step(&self, v: &mut Verdict, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Outcome {
        let Some(profiler) = &self.profiler else {
            return Outcome::Done;
        };
        if v.features.identity.kind == IdentityKind::Anonymous {
            // Everyone without an identity would share one meaningless profile.
            return Outcome::Done;
        }
        let assessment = match profiler.observe(&v.features, &self.hash_key, store, metrics) {
            Ok((a, pending)) => {
                v.learning = Some(pending);
                a
            }
            Err(error) => return Outcome::Failed { step: profile::SIGNAL, error },
        };
        let gate = self.config.behavioral_profiling.deviation_threshold;
        let weight = self.config.ml_scoring_weights.behavioral_deviation;
        let cold = matches!(assessment, Assessment::Cold { .. });
        match assessment {
            Assessment::Cold { observations } => {
                metrics.add(Metric::ProfileCold, 1);
                v.profile = Some(ProfileState::Cold { observations });
            }
            Assessment::Scored(d) => {
                v.profile = Some(ProfileState::Warm { observations: d.observations });
                v.features.behavioral_score = Some(d.score);
                v.own_deviation = Some(d.own);
                v.own_conduct = Some(d.conduct);
                v.signals.push(Signal {
                    name: profile::SIGNAL,
                    score: d.score,
                    confidence: scoring::profile_confidence(d.weight, self.config.behavioral_profiling.min_observations),
                    combine: Combine::Weighted { weight, gate },
                });
                if d.opened {
                    metrics.add(Metric::ProfileEpisodes, 1);
                }
                if d.score >= gate {
                    metrics.add(Metric::ProfileDeviations, 1);
                    v.threat_details.extend(d.reasons.into_iter().map(|reason| ThreatDetail { signal: profile::SIGNAL, reason }));
                }
            }
        }
        // A newcomer is judged against what newcomers of its kind do: its own
        // profile cannot judge it yet (cold), or cannot judge its objects yet
        // (young, with fewer than two active minutes learned).
        if let Some(now) = profiler.activity(v.features.identity.hash, v.features.time_ms) {
            v.activity = Some(now);
            if cold || (now.age_ms < population::YOUNG_MS && !now.objects_known) {
                if let Some(j) = profiler.population.judge(v.features.identity.kind, &now) {
                    if j.score >= gate {
                        metrics.add(Metric::PopulationDeviations, 1);
                    }
                    let combine = Combine::Support { weight, gate };
                    v.signals.push(Signal { name: population::SIGNAL, score: j.score, confidence: j.confidence, combine });
                    if j.score >= gate {
                        v.threat_details.extend(j.reasons.into_iter().map(|reason| ThreatDetail { signal: population::SIGNAL, reason }));
                    }
                }
            }
        }
        Outcome::Done
    }

    fn rate_step(&self, v: &mut Verdict, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Outcome {
        let cfg = &self.config.rate_limit;
        if !cfg.enabled {
            return Outcome::Done;
        }
        match rate::observe(cfg, store, metrics, &self.rate_prefix, self.rate_hints.as_ref(), v.features.identity.hash, now_ms) {
            Ok(obs) => {
                v.rate_count = Some(obs.record.current);
                let window_ms = u64::from(cfg.window_seconds) * 1000;
                let wait_ms = obs.record.ms_until_within(now_ms, window_ms, f64::from(cfg.requests_per_window));
                v.retry_after_s = Some(wait_ms.div_ceil(1000).max(1));
                v.signals.push(obs.signal);
                v.threat_details.extend(obs.detail);
                Outcome::Done
            }
            Err(error) => Outcome::Failed { step: rate::SIGNAL, error },
        }
    }
}

/// What of a user agent tells a device: its first `DEVICE_BYTES` bytes.
const DEVICE_BYTES: usize = 256;

/// A user agent without its version numbers (digits, dots, underscores), into
/// `buf`: a browser or app updating itself (`ShopApp/5.2.1` to
/// `ShopApp/6.0.0`, `Chrome/131` to `Chrome/132`) stays the same device, while
/// another browser or operating system is another. No allocation.
fn agent_without_versions<'a>(agent: &[u8], buf: &'a mut [u8; DEVICE_BYTES]) -> &'a [u8] {
    let mut n = 0;
    // Bounded work for hostile lengths.
    for &b in agent.iter().take(4 * DEVICE_BYTES).filter(|b| !(b.is_ascii_digit() || **b == b'.' || **b == b'_')) {
        let Some(slot) = buf.get_mut(n) else { break };
        *slot = b;
        n += 1;
    }
    buf.get(..n).unwrap_or(&[])
}

/// The value of cookie `name` in a `cookie` header.
fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        let (k, v) = (pair.get(..eq)?, pair.get(eq + 1..)?);
        (k == name).then_some(v)
    })
}

/// An ASN as a number, with or without the `AS` prefix.
fn parse_asn(raw: &[u8]) -> Option<u32> {
    let raw = raw.trim_ascii();
    let digits = raw.strip_prefix(b"AS").or_else(|| raw.strip_prefix(b"as")).unwrap_or(raw);
    std::str::from_utf8(digits).ok()?.parse().ok().filter(|n| *n > 0)
}

/// Keeps a request id safe to echo in headers, JSON and CEF.
fn sanitize_request_id(raw: &[u8]) -> Option<String> {
    let id: String = raw
        .iter()
        .take(128)
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        .map(|&b| char::from(b))
        .collect();
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config;
    use crate::engine::ml::protocol::Failure;
    use crate::engine::ml::Role;
    use crate::engine::ports::memory::{MemoryCallouts, MemoryMetrics, MemoryStore};
    use crate::engine::report;
    use crate::engine::request::HeaderList;

    fn engine(json: &str) -> (Engine, MemoryStore, MemoryMetrics) {
        let e = Engine::new(config::parse(json.as_bytes()).unwrap());
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        e.start(&store, &metrics).unwrap();
        (e, store, metrics)
    }

    fn get(user: &str) -> HeaderList {
        HeaderList::from_pairs(&[(":method", "GET"), (":path", "/users/42?x=1"), ("x-user-id", user), ("x-request-id", "abc-1")])
    }

    #[test]
    fn a_benign_request_is_allowed_with_its_features() {
        let (e, store, metrics) = engine(r#"{"mode": "enforce"}"#);
        let v = e.on_request(&get("alice"), 1_000, &store, &metrics);
        assert_eq!(v.decision, Decision::Allow);
        assert!(!v.enforced);
        assert_eq!(v.features.route, "/users/{id}");
        assert_eq!(v.features.method, Method::Get);
        assert_eq!(v.features.request_id, "abc-1");
        assert_eq!(v.rate_count, Some(1));
        assert_eq!(metrics.get(Metric::Requests), 1);
        assert_eq!(metrics.get(Metric::DecisionAllow), 1);
        assert!(report::signals(&v).starts_with("rate=0.000;risk_interval=0.000..0.000;rate_count=1;identity=user:"), "{}", report::signals(&v));
    }

    #[test]
    fn enforce_mode_throttles_then_blocks_past_the_ceiling() {
        let (e, store, metrics) =
            engine(r#"{"mode": "enforce", "rate_limit": {"requests_per_window": 10, "window_seconds": 60}}"#);
        let decisions: Vec<Decision> = (0..20).map(|i| e.on_request(&get("bob"), 1_000 + i, &store, &metrics).decision).collect();
        assert_eq!(decisions[9], Decision::Flag, "at the ceiling: flagged, not refused");
        assert_eq!(decisions[10], Decision::Throttle);
        assert_eq!(decisions[19], Decision::Block);
        let v = e.on_request(&get("bob"), 2_000, &store, &metrics);
        assert!(v.enforced);
        assert_eq!(v.decision.status(), Some(403));
        // 21 requests against a ceiling of 10 in a 60 s window: back within it ~31 s after the window ends.
        let retry = v.retry_after_s.unwrap();
        assert!((88..=92).contains(&retry), "{retry}");
        assert!(report::reply_body(&v).contains("\"request_id\":\"abc-1\""));
        // Other identities are unaffected.
        assert_eq!(e.on_request(&get("carol"), 2_000, &store, &metrics).decision, Decision::Allow);
    }

    #[test]
    fn monitor_mode_decides_but_never_enforces() {
        let (e, store, metrics) = engine(r#"{"mode": "monitor", "rate_limit": {"requests_per_window": 2}}"#);
        let v = (0..10).map(|i| e.on_request(&get("eve"), i, &store, &metrics)).last().unwrap();
        assert_eq!(v.decision, Decision::Block);
        assert!(!v.enforced);
        assert_eq!(metrics.get(Metric::Enforced), 0);
    }

    #[test]
    fn a_broken_store_fails_open_and_is_counted() {
        let (e, store, metrics) = engine(r#"{"mode": "enforce", "rate_limit": {"requests_per_window": 1}}"#);
        // Every compare-and-swap loses, as if other workers always wrote first.
        store.inject_conflicts.set(u32::MAX);
        let v = e.on_request(&get("x"), 1, &store, &metrics);
        assert_eq!(v.decision, Decision::Allow);
        assert!(v.threat_details.iter().any(|d| d.reason.contains("failing open")));
        assert!(metrics.get(Metric::StoreErrors) >= 1);
    }

    #[test]
    fn response_features_complete_the_table_only_when_a_detector_wants_them() {
        let (e, store, metrics) = engine("{}");
        assert!(!e.wants_response_features());
        let mut v = e.on_request(&get("r"), 10_000, &store, &metrics);
        e.on_response(&mut v.features, Some(503), 42_000);
        assert_eq!((v.features.status, v.features.latency_us), (Some(503), Some(42_000)));
        let (e, _, _) = engine(r#"{"time_series_analysis": {"enable_traffic_analysis": true}}"#);
        assert!(e.wants_response_features());
    }

    #[test]
    fn a_deviation_raises_the_risk_and_says_why() {
        let (e, store, metrics) = engine(
            r#"{"mode": "enforce", "rate_limit": {"enabled": false},
                "behavioral_profiling": {"enable_user_profiling": true, "min_observations": 20,
                  "geo": {"country_header": "x-geo-country"}}}"#,
        );
        let req = |path: &str, country: &str| {
            HeaderList::from_pairs(&[(":method", "GET"), (":path", path), ("x-user-id", "mallory"), ("x-geo-country", country)])
        };
        let mut t = 1_000_000;
        for i in 0..200u64 {
            t += 1_500 + (i * 7919) % 1_000;
            let v = e.on_request(&req(["/orders", "/cart", "/orders/12"][(i % 3) as usize], "DE"), t, &store, &metrics);
            if i < 20 {
                assert_eq!(v.profile, Some(ProfileState::Cold { observations: i as u32 + 1 }));
                assert!(report::signals(&v).contains("profile=cold:"));
            } else {
                assert!(v.features.behavioral_score.unwrap() < 0.7, "routine request {i}");
                assert_eq!(v.decision, Decision::Allow);
            }
        }
        let mut verdicts = Vec::new();
        for _ in 0..5 {
            t += 10;
            verdicts.push(e.on_request(&req("/admin/export", "KP"), t, &store, &metrics));
        }
        for v in &verdicts {
            let score = v.features.behavioral_score.unwrap();
            assert!(score > 0.85, "{score}");
            assert!(v.risk >= score - 1e-9, "the risk is at least the behavioural detector's score");
            assert!(v.decision >= Decision::Throttle && v.enforced);
            assert!(v.features.refused, "Vigil's own refusal teaches no status");
        }
        let v = &verdicts[0];
        assert!(v.features.behavioral_score.unwrap() > 0.95);
        assert!(v.threat_details.iter().any(|d| d.signal == "behavior" && d.reason.contains("new country KP")));
        assert!(report::signals(v).starts_with("behavior=0.9"));
        assert!(report::log_record(v, false).contains("\"behavioral_score\":0.9"));
        assert_eq!(metrics.get(Metric::ProfileDeviations), 5);
        assert_eq!(metrics.get(Metric::ProfileCold), 20);
    }

    /// A profiling engine in monitor mode (everything decided, nothing refused).
    fn profiling(geo: bool) -> (Engine, MemoryStore, MemoryMetrics) {
        let geo = if geo { r#", "geo": {"country_header": "x-geo-country"}"# } else { "" };
        engine(&format!(
            r#"{{"mode": "monitor", "rate_limit": {{"enabled": false}},
                "behavioral_profiling": {{"enable_user_profiling": true, "min_observations": 20{geo}}}}}"#
        ))
    }

    fn as_user(user: &str, path: &str, country: &str) -> HeaderList {
        HeaderList::from_pairs(&[(":method", "GET"), (":path", path), ("x-user-id", user), ("x-geo-country", country)])
    }

    /// dana's routine: three endpoints from Germany, a request every 1.5-2.5 s.
    fn routine(e: &Engine, store: &MemoryStore, metrics: &MemoryMetrics, t: &mut u64, n: u64) {
        for i in 0..n {
            *t += 1_500 + (i * 7919) % 1_000;
            let v = e.on_request(&as_user("dana", ["/orders", "/cart", "/orders/12"][(i % 3) as usize], "DE"), *t, store, metrics);
            assert_eq!(v.decision, Decision::Allow, "routine request {i}: {:?}", v.threat_details);
        }
    }

    #[test]
    fn a_takeover_stays_flagged_while_it_lasts_and_the_victims_routine_does_not_wash_it_out() {
        let (e, store, metrics) = profiling(true);
        let mut t = 1_000_000;
        routine(&e, &store, &metrics, &mut t, 200);
        // The attacker walks sensitive endpoints from a new country, fast, for
        // two minutes, while dana's own routine goes on beside it.
        let attack = ["/admin/export", "/admin/users", "/api/users/7", "/orders"];
        let mut scores = Vec::new();
        for i in 0..240u64 {
            t += 500;
            let v = e.on_request(&as_user("dana", attack[(i % 4) as usize], "KP"), t, &store, &metrics);
            assert!(v.decision >= Decision::Flag, "attack request {i} at {:?}: {:?}", v.features.behavioral_score, v.threat_details);
            scores.push(v.features.behavioral_score.unwrap_or(0.0));
            if i % 4 == 3 {
                // dana's own routine (her account's pace is the attacker's too,
                // so it may be flagged: the account is compromised).
                e.on_request(&as_user("dana", "/orders", "DE"), t + 1, &store, &metrics);
            }
        }
        // Repeating the attack never taught the profile that it is normal.
        let (first, last) = (scores[..20].iter().sum::<f64>() / 20.0, scores[220..].iter().sum::<f64>() / 20.0);
        assert!(last >= first * 0.95, "the attack's score fell as it went on: {first:.3} -> {last:.3}");
        // Even a request on dana's usual endpoint, from the attacker's country, continues the episode.
        t += 500;
        let v = e.on_request(&as_user("dana", "/cart", "KP"), t, &store, &metrics);
        assert!(v.threat_details.iter().any(|d| d.reason.starts_with("episode ")), "{:?}", v.threat_details);
        assert!(v.decision >= Decision::Flag);
    }

    #[test]
    fn a_traveller_back_to_her_routine_ends_the_episode_her_arrival_opened() {
        let (e, store, metrics) = profiling(true);
        let mut t = 1_000_000;
        routine(&e, &store, &metrics, &mut t, 200);
        // She lands in Spain and, first thing, tries something new: ambiguous, flagged.
        t += 3 * 3_600_000;
        let v = e.on_request(&as_user("dana", "/search", "ES"), t, &store, &metrics);
        assert!(v.decision >= Decision::Flag, "{:?} {:?}", v.features.behavioral_score, v.threat_details);
        // Then her usual routine, from Spain: the episode holds a few requests, then it is over.
        let mut flagged = Vec::new();
        for i in 0..30u64 {
            t += 1_500 + (i * 7919) % 1_000;
            let v = e.on_request(&as_user("dana", ["/orders", "/cart", "/orders/12"][(i % 3) as usize], "ES"), t, &store, &metrics);
            flagged.push(v.decision >= Decision::Flag);
        }
        // (30 requests at about 2 s: the episode settles after 30 s of calm.)
        assert!(flagged[0], "the episode holds her first requests abroad");
        let late = flagged[20..].iter().filter(|f| **f).count();
        assert_eq!(late, 0, "her routine abroad stays flagged: {flagged:?}");
        // The new country is still noticed; a takeover from there would still open one.
        let mut walked = 0;
        for i in 0..20u64 {
            t += 400;
            let v = e.on_request(&as_user("dana", ["/admin/export", "/admin/users"][(i % 2) as usize], "ES"), t, &store, &metrics);
            walked += usize::from(v.decision >= Decision::Flag);
        }
        assert!(walked >= 18, "{walked} of 20");
    }

    #[test]
    fn a_traveller_trying_what_everyone_uses_is_not_held_and_a_walk_to_rare_routes_is() {
        let (e, store, metrics) = profiling(true);
        let mut t = 1_000_000;
        // dana's routine beside 20 others whose routine includes the search she never used.
        let crowd: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
        let others = |i: u64, t: u64| {
            for (k, u) in crowd.iter().enumerate().filter(|(k, _)| (i as usize + k) % 4 == 0) {
                let path = ["/search", "/orders", "/cart", "/search"][((i / 4) as usize + k) % 4];
                e.on_request(&as_user(u, path, "DE"), t + k as u64, &store, &metrics);
            }
            e.on_tick(t + 100, 1, &store, &metrics, &NoCallouts);
        };
        for i in 0..200u64 {
            t += 1_500 + (i * 7919) % 1_000;
            let v = e.on_request(&as_user("dana", ["/orders", "/cart", "/orders/12"][(i % 3) as usize], "DE"), t, &store, &metrics);
            assert_eq!(v.decision, Decision::Allow, "routine request {i}: {:?}", v.threat_details);
            others(i, t);
        }
        // The next day, abroad, she starts using the search everyone uses, beside her routine.
        t += 24 * 3_600_000 - 60_000;
        for i in 0..30u64 {
            t += 2_000;
            others(i, t);
        }
        // Not held: no episode holds her, her own routine is never flagged,
        // and nothing is refused. (Her search requests themselves may reach the
        // flag line: a new country and a recent mix that is half a route she
        // never used add up to about 0.63 on their own, under the threshold.)
        let mut held = Vec::new();
        for i in 0..40u64 {
            t += 1_500 + (i * 7919) % 1_000;
            let path = ["/search", "/orders", "/search", "/cart"][(i % 4) as usize];
            let v = e.on_request(&as_user("dana", path, "ES"), t, &store, &metrics);
            let episode = v.threat_details.iter().any(|d| d.reason.starts_with("episode "));
            if i >= 10 && (episode || v.decision >= Decision::Throttle || (path != "/search" && v.decision >= Decision::Flag)) {
                held.push((i, path, v.decision, v.risk));
            }
            others(i, t);
        }
        assert!(held.is_empty(), "a new country and a popular endpoint held her: {held:?}");
        // A walk to routes nobody uses, from the same country, is still a takeover.
        let mut walked = 0;
        for i in 0..20u64 {
            t += 400;
            let v = e.on_request(&as_user("dana", ["/admin/export", "/admin/users"][(i % 2) as usize], "ES"), t, &store, &metrics);
            walked += usize::from(v.decision >= Decision::Flag);
        }
        assert!(walked >= 18, "{walked} of 20");
    }

    #[test]
    fn without_geo_a_takeover_is_still_flagged_on_combined_moderate_evidence() {
        let (e, store, metrics) = profiling(false);
        let mut t = 1_000_000;
        routine(&e, &store, &metrics, &mut t, 200);
        let attack = ["/admin/export", "/admin/users", "/api/users/7", "/api/users/8"];
        let mut flagged = 0;
        for i in 0..120u64 {
            t += 400;
            let v = e.on_request(&as_user("dana", attack[(i % 4) as usize], "DE"), t, &store, &metrics);
            flagged += usize::from(v.decision >= Decision::Flag);
        }
        assert!(flagged >= 110, "{flagged} of 120 attack requests flagged");
    }

    /// A profiling engine that reads sessions from the `session` cookie.
    fn with_sessions() -> (Engine, MemoryStore, MemoryMetrics) {
        engine(
            r#"{"mode": "monitor", "rate_limit": {"enabled": false},
                "behavioral_profiling": {"enable_user_profiling": true, "min_observations": 20,
                  "session": {"cookie": "session"}}}"#,
        )
    }

    fn on_device(user: &str, path: &str, session: &str, agent: &str) -> HeaderList {
        let cookie = format!("theme=dark; session={session}");
        HeaderList::from_pairs(&[(":method", "GET"), (":path", path), ("x-user-id", user), ("cookie", &cookie), ("user-agent", agent)])
    }

    const LAPTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0";
    const PHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) Mobile/15E148";
    const STOLEN: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) Chrome/131.0";

    /// erin's routine: sessions of 30 requests on her laptop, then her phone.
    fn sessions(e: &Engine, store: &MemoryStore, metrics: &MemoryMetrics, t: &mut u64, n: u64) {
        for i in 0..n {
            *t += 1_500 + (i * 7919) % 1_000;
            let (session, agent) = (format!("s{}", i / 30), if (i / 30) % 3 == 2 { PHONE } else { LAPTOP });
            let path = ["/orders", "/cart", "/orders/12"][(i % 3) as usize];
            let v = e.on_request(&on_device("erin", path, &session, agent), *t, store, metrics);
            assert_eq!(v.decision, Decision::Allow, "routine request {i}: {:?}", v.threat_details);
        }
    }

    #[test]
    fn a_stolen_session_replayed_from_another_device_is_flagged_and_the_owner_is_not() {
        let (e, store, metrics) = with_sessions();
        let mut t = 1_000_000;
        sessions(&e, &store, &metrics, &mut t, 200);
        // Her current session started on the laptop; the thief replays its
        // cookie from another machine, on her usual endpoints, at her pace,
        // while she goes on in the same session.
        let live = format!("s{}", 199 / 30);
        for i in 0..60u64 {
            t += 1_200;
            let v = e.on_request(&on_device("erin", ["/orders", "/cart", "/orders/12"][(i % 3) as usize], &live, STOLEN), t, &store, &metrics);
            assert!(v.decision >= Decision::Flag, "stolen-session request {i}: {:?} {:?}", v.features.behavioral_score, v.threat_details);
            if i == 0 {
                assert!(v.threat_details.iter().any(|d| d.reason.contains("another device")), "{:?}", v.threat_details);
            }
            if i % 3 == 0 {
                let own = e.on_request(&on_device("erin", "/orders", &live, LAPTOP), t + 600, &store, &metrics);
                assert_eq!(own.decision, Decision::Allow, "the owner on her own device: {:?}", own.threat_details);
            }
        }
        // A new session on a device she has not used before is a new phone, not a theft.
        t += 60_000;
        let v = e.on_request(&on_device("erin", "/orders", "s-new", STOLEN), t, &store, &metrics);
        assert!(!v.threat_details.iter().any(|d| d.reason.contains("another device")));
    }

    #[test]
    fn a_stolen_session_is_known_by_its_device_whatever_comes_between_and_without_a_user_agent() {
        let stolen = |v: &Verdict| v.threat_details.iter().any(|d| d.reason.contains("another device"));
        let (e, store, metrics) = with_sessions();
        let mut t = 1_000_000;
        sessions(&e, &store, &metrics, &mut t, 200);
        // Her laptop's session s6, then a new one on her phone (the open one): the thief holds the laptop's token.
        let (laptop_token, phone_token) = ("s6", "p7");
        for i in 0..3u64 {
            t += 2_000;
            e.on_request(&on_device("erin", "/orders", phone_token, PHONE), t + i, &store, &metrics);
        }
        // A bogus cookie first (a session of his own), then her older token: still hers.
        t += 1_000;
        e.on_request(&on_device("erin", "/orders", "made-up", STOLEN), t, &store, &metrics);
        t += 1_000;
        let v = e.on_request(&on_device("erin", "/orders", laptop_token, STOLEN), t, &store, &metrics);
        assert!(stolen(&v) && v.decision >= Decision::Flag, "{:?}", v.threat_details);
        // The token is never bound to his device: she, back on the laptop with it, is herself.
        t += 1_000;
        let v = e.on_request(&on_device("erin", "/cart", laptop_token, LAPTOP), t, &store, &metrics);
        assert!(!stolen(&v), "{:?}", v.threat_details);
        // Leaving the user agent out does not hide the replay.
        t += 1_000;
        let bare = HeaderList::from_pairs(&[(":method", "GET"), (":path", "/orders"), ("x-user-id", "erin"), ("cookie", "session=p7")]);
        let v = e.on_request(&bare, t, &store, &metrics);
        assert!(stolen(&v) && v.decision >= Decision::Flag, "{:?}", v.threat_details);
    }

    #[test]
    fn a_user_agent_is_a_device_whatever_its_version() {
        let mut a = [0u8; DEVICE_BYTES];
        let mut b = [0u8; DEVICE_BYTES];
        let old = agent_without_versions(b"ShopApp/5.2.1 (iOS 17_5; iPhone14,2)", &mut a).to_vec();
        assert_eq!(old, agent_without_versions(b"ShopApp/6.0.0 (iOS 18_1; iPhone14,2)", &mut b));
        assert_ne!(old, agent_without_versions(b"ShopApp/6.0.0 (Android 14; Pixel 8)", &mut b));
        // Hostile lengths are cut, never a panic.
        assert_eq!(agent_without_versions(&[b'x'; 70_000], &mut b).len(), DEVICE_BYTES);
        assert!(agent_without_versions(&[b'7'; 70_000], &mut b).is_empty());
        assert!(agent_without_versions(b"1.2.3", &mut b).is_empty());
    }

    #[test]
    fn a_new_device_alone_is_ordinary_and_it_marks_the_episode_a_takeover_opens() {
        let (e, store, metrics) = with_sessions();
        let mut t = 1_000_000;
        sessions(&e, &store, &metrics, &mut t, 200);
        // A new browser, same routine: not flagged.
        for i in 0..10u64 {
            t += 2_000;
            let v = e.on_request(&on_device("erin", ["/orders", "/cart"][(i % 2) as usize], "s-a", STOLEN), t, &store, &metrics);
            assert_eq!(v.decision, Decision::Allow, "new device, usual routine {i}: {:?}", v.threat_details);
        }
        // Someone else logs in as erin from yet another device and walks the
        // admin area; later, from that device, even her usual endpoint
        // continues the episode, while her laptop's requests do not.
        let thief = "curl/8.5.0";
        let attack = ["/admin/export", "/admin/users", "/api/users/7", "/api/users/8"];
        for i in 0..40u64 {
            t += 400;
            e.on_request(&on_device("erin", attack[(i % 4) as usize], "s-b", thief), t, &store, &metrics);
        }
        t += 500;
        let v = e.on_request(&on_device("erin", "/orders", "s-b", thief), t, &store, &metrics);
        assert!(v.threat_details.iter().any(|d| d.reason.starts_with("episode ")), "{:?}", v.threat_details);
        assert!(v.decision >= Decision::Flag);
        // Her own laptop: once her recent mix is her own again, nothing holds it.
        let mut own = None;
        for i in 0..15u64 {
            t += 2_000;
            own = Some(e.on_request(&on_device("erin", ["/orders", "/cart"][(i % 2) as usize], "s-c", LAPTOP), t, &store, &metrics));
        }
        let own = own.unwrap();
        assert!(!own.threat_details.iter().any(|d| d.reason.starts_with("episode ")), "{:?}", own.threat_details);
        assert_eq!(own.decision, Decision::Allow);
    }

    #[test]
    fn a_refused_request_teaches_nothing_and_an_ordinary_one_everything() {
        use crate::engine::profile::score::learning_weight;
        assert_eq!(learning_weight(0.99, 0.7, true, true), 0.0);
        assert!(learning_weight(0.99, 0.7, true, false) <= 0.02);
        assert!(learning_weight(0.1, 0.7, true, false) <= 0.02, "flagged for any reason: a trace");
        assert_eq!(learning_weight(0.1, 0.7, false, false), 1.0);
        let (mid, high) = (learning_weight(0.5, 0.7, false, false), learning_weight(0.65, 0.7, false, false));
        assert!(1.0 > mid && mid > high && high >= 0.1, "{mid} {high}");
        // In enforce mode a refused identity's profile does not grow.
        let (e, store, metrics) = engine(
            r#"{"mode": "enforce", "rate_limit": {"requests_per_window": 5, "window_seconds": 60},
                "behavioral_profiling": {"enable_user_profiling": true, "min_observations": 20}}"#,
        );
        let mut last = None;
        for i in 0..40u64 {
            last = Some(e.on_request(&as_user("mallory", "/orders", "DE"), 1_000 + i * 10, &store, &metrics));
        }
        // Four learned: the fifth, at the ceiling, was flagged; the rest refused.
        assert_eq!(last.unwrap().profile, Some(ProfileState::Cold { observations: 5 }));
    }

    /// One request answered `status`, as the host runs it.
    fn answered(e: &Engine, store: &MemoryStore, metrics: &MemoryMetrics, user: &str, path: &str, t: u64, status: u16) -> Verdict {
        let mut v = e.on_request(&as_user(user, path, "DE"), t, store, metrics);
        e.on_response(&mut v.features, Some(status), 5_000);
        e.on_complete(&v.features, t);
        v
    }

    /// Seconds from `onset` to the first flagged verdict, and the share flagged from then on.
    fn caught(verdicts: &[(u64, Decision)], onset: u64) -> (Option<f64>, f64) {
        let first = verdicts.iter().position(|(_, d)| *d >= Decision::Flag);
        let Some(i) = first else { return (None, 0.0) };
        let after = &verdicts[i..];
        let flagged = after.iter().filter(|(_, d)| *d >= Decision::Flag).count();
        (Some((verdicts[i].0 - onset) as f64 / 1000.0), flagged as f64 / after.len() as f64)
    }

    #[test]
    fn bola_by_an_established_identity_on_its_own_route_is_caught() {
        let (e, store, metrics) = profiling(false);
        let mut t = 1_000_000;
        // Weeks of habit compressed: a handful of her own orders, now and then.
        for i in 0..300u64 {
            t += 2_000 + (i * 7919) % 3_000;
            let path = if i % 2 == 0 { format!("/orders/{}", [311, 4_102, 977, 12][(i / 2 % 4) as usize]) } else { "/orders".into() };
            let v = answered(&e, &store, &metrics, "erin", &path, t, 200);
            assert_eq!(v.decision, Decision::Allow, "routine {i}: {:?}", v.threat_details);
        }
        let onset = t;
        let mut seen = Vec::new();
        for i in 0..200u64 {
            t += 250;
            let v = answered(&e, &store, &metrics, "erin", &format!("/orders/{}", 5_000 + i), t, if i % 5 == 0 { 200 } else { 403 });
            seen.push((t, v.decision));
        }
        let (delay, share) = caught(&seen, onset);
        assert!(delay.is_some_and(|d| d <= 10.0), "{delay:?}");
        assert!(share >= 0.9, "{share}");
    }

    #[test]
    fn a_fresh_scraper_fast_or_slow_is_judged_against_the_population() {
        let (e, store, metrics) = profiling(false);
        // An ordinary population of newcomers: a few requests, a few objects each.
        let mut t = 1_000_000;
        for u in 0..120u64 {
            for k in 0..6u64 {
                let v = answered(&e, &store, &metrics, &format!("new{u}"), &format!("/products/{}", (u * 31 + k * 977) % 5_000), t + k * 9_000, 200);
                assert_eq!(v.decision, Decision::Allow, "newcomer {u}: {:?}", v.threat_details);
            }
            t += 1_000;
            // Each newcomer's minute closes and is sampled; ticks fold them in.
            answered(&e, &store, &metrics, &format!("new{u}"), "/products", t + 61_000, 200);
            e.on_tick(t + 61_000, 1, &store, &metrics, &NoCallouts);
        }
        t += 120_000;
        e.on_tick(t, 1, &store, &metrics, &NoCallouts);
        for (name, gap_ms, count) in [("fast", 100u64, 300u64), ("slow", 500, 120)] {
            let onset = t;
            let mut seen = Vec::new();
            for i in 0..count {
                t += gap_ms;
                let v = answered(&e, &store, &metrics, name, &format!("/products/{}", 10_000 + i), t, 200);
                seen.push((t, v.decision));
            }
            let (delay, share) = caught(&seen, onset);
            assert!(delay.is_some_and(|d| d <= 10.0), "{name}: {delay:?}");
            assert!(share >= 0.9, "{name}: {share}");
            t += 600_000;
        }
        // A page load fanning out twenty requests at once is not a scraper.
        for k in 0..20u64 {
            let path = if k < 8 { format!("/products/{}", [17, 4_021, 388, 9, 1_200, 77, 3_030, 650][k as usize]) } else { format!("/api/widget{k}") };
            let v = answered(&e, &store, &metrics, "browser", &path, t + k * 5, 200);
            assert_eq!(v.decision, Decision::Allow, "fan-out {k}: {:?}", v.threat_details);
        }
    }

    #[test]
    fn a_false_positive_ends_the_episode() {
        let (e, store, metrics) = profiling(true);
        let mut t = 1_000_000;
        routine(&e, &store, &metrics, &mut t, 200);
        for _ in 0..5 {
            t += 500;
            e.on_request(&as_user("dana", "/admin/export", "KP"), t, &store, &metrics);
        }
        let p = e.profiler().unwrap();
        let hash = e.identity_hash(IdentityKind::User, b"dana");
        assert!(p.standing_for(hash, 0, 0).1.is_none());
        let target = feedback::Target::Identity(hash, "user:dana".into());
        e.apply_feedback(&target, crate::engine::profile::standing::Label::FalsePositive, t, &store, &metrics).unwrap();
        let shared = p.read(hash, &store, &metrics).unwrap().unwrap();
        assert!(!shared.standing.episode.is_open(), "{:?}", shared.standing.episode);
    }

    #[test]
    fn an_anomalous_route_flags_its_requests_but_never_refuses_them_alone() {
        let (e, store, metrics) = engine(
            r#"{"mode": "enforce", "rate_limit": {"enabled": false},
                "time_series_analysis": {"enable_traffic_analysis": true, "analysis_window_minutes": 1}}"#,
        );
        let mut now = 1_700_000_000_000u64;
        let mut last = None;
        for second in 0..70u64 {
            let failing = second >= 65;
            for i in 0..20u64 {
                let mut v = e.on_request(&get(&format!("u{i}")), now, &store, &metrics);
                e.on_response(&mut v.features, Some(if failing { 503 } else { 200 }), 2_000);
                e.on_complete(&v.features, now);
                if second == 64 {
                    assert!(v.features.traffic_anomaly_score.is_some_and(|s| s < 0.34), "steady: {:?}", v.features);
                }
                last = Some(v);
                now += 50;
                assert!(e.on_tick(now, 1, &store, &metrics, &NoCallouts).warn.iter().all(|l| failing && l.contains("5xx_rate")));
            }
        }
        let v = last.unwrap();
        let score = v.features.traffic_anomaly_score.unwrap();
        assert!(score >= 0.9, "{score}");
        assert!(v.risk >= 0.9, "alone, context is the risk: {}", v.risk);
        assert_eq!(v.decision, Decision::Flag, "but it only flags");
        assert!(!v.enforced);
        assert!(v.threat_details.iter().any(|d| d.signal == "traffic" && d.reason.starts_with("5xx_rate on ")));
        assert!(report::signals(&v).starts_with("traffic=0.9") || report::signals(&v).starts_with("traffic=1.0"));
    }

    #[test]
    fn hostile_request_ids_are_sanitised_or_replaced() {
        let (e, store, metrics) = engine("{}");
        let req = HeaderList::from_pairs(&[("x-request-id", "a\"b\\c|d=e\nf")]);
        assert_eq!(e.on_request(&req, 0, &store, &metrics).features.request_id, "abcdef");
        let none = HeaderList::default();
        assert!(e.on_request(&none, 0, &store, &metrics).features.request_id.starts_with("vigil-"));
    }

    struct NoCallouts;
    impl Callouts for NoCallouts {
        fn send(&self, _: &crate::engine::ports::Call) -> Result<u32, u32> {
            Err(1)
        }
    }

    const INLINE: &str = r#"{"mode": "enforce", "enable_ml_models": true, "rate_limit": {"enabled": false},
        "ml_model_config": {"mode": "inline", "anomaly_model_url": "http://ml:8080/v2/models/iforest/infer",
          "model_timeout_ms": 100, "model_retry_count": 2,
          "anomaly_model": {"score_scale": "isolation_forest", "failure_mode": "FAILURE_MODE"},
          "circuit_breaker": {"consecutive_failures": 3, "open_seconds": 5}}}"#;

    fn oip_answer(x: f64) -> Vec<u8> {
        format!(r#"{{"outputs":[{{"name":"anomaly_score","shape":[1,1],"datatype":"FP64","data":[{x}]}}]}}"#).into_bytes()
    }

    /// Runs one waiting request to its end, answering each call with `answer`.
    fn inline_request(
        e: &Engine,
        store: &MemoryStore,
        metrics: &MemoryMetrics,
        calls: &MemoryCallouts,
        now: u64,
        mut answer: impl FnMut(u32) -> (u64, Option<(u16, Vec<u8>)>),
    ) -> Verdict {
        let mut log = Vec::new();
        let mut v = e.assess(&get("mallory"), now, store, metrics, &mut log);
        if let Some(mut ex) = e.ask_models(&mut v, now, calls, metrics, &mut log) {
            let (mut attempt, mut clock) = (0, now);
            while !ex.settled() {
                attempt += 1;
                let (after_ms, reply) = answer(attempt);
                clock += after_ms;
                let token = calls.last_token();
                let reply = reply.as_ref().map(|(s, b)| (*s, b.as_slice()));
                assert!(e.model_reply(&mut ex, token, reply, clock, calls, metrics, &mut log));
                assert!(attempt <= 3, "never more than retries + 1 attempts");
            }
            e.conclude_models(&ex, &mut v, metrics);
        }
        e.decide(&mut v, metrics);
        v
    }

    #[test]
    fn an_inline_model_scoring_high_raises_the_deviation_score_and_the_decision() {
        let (e, store, metrics) = engine(&INLINE.replace("FAILURE_MODE", "allow"));
        let calls = MemoryCallouts::default();
        let benign = inline_request(&e, &store, &metrics, &calls, 1_000, |_| (3, Some((200, oip_answer(0.12)))));
        assert_eq!(benign.decision, Decision::Allow);
        assert!(benign.features.user_deviation_score.unwrap() < 0.2);
        let (_, cluster, path, body) = calls.sent.borrow()[0].clone();
        assert_eq!((cluster.as_str(), path.as_str()), ("ml", "/v2/models/iforest/infer"));
        assert!(String::from_utf8(body).unwrap().contains("\"vigil_feature_version\":\"vigil.v2\""));

        let hostile = inline_request(&e, &store, &metrics, &calls, 2_000, |_| (4, Some((200, oip_answer(-0.2)))));
        let score = hostile.features.user_deviation_score.unwrap();
        assert!(score > 0.95, "{score}");
        assert_eq!(hostile.decision, Decision::Block);
        assert!(hostile.enforced);
        assert!(hostile.threat_details.iter().any(|d| d.signal == "ml" && d.reason.starts_with("anomaly model scored 0.98")));
        assert!(report::signals(&hostile).starts_with("ml=0.98"));
        assert!(report::log_record(&hostile, false).contains("\"user_deviation_score\":0.98"));
        assert!(!report::log_record(&hostile, false).contains("ml_features"));
        assert!(report::log_record(&hostile, true).contains("\"ml_features\":[0.0,"));
        assert_eq!(metrics.get(Metric::MlCalls(Role::Anomaly)), 2);
        assert_eq!(metrics.recorded.borrow().iter().filter(|(m, _)| *m == Metric::MlLatency(Role::Anomaly)).count(), 2);
    }

    #[test]
    fn each_fault_fails_open_or_closed_as_configured_and_is_counted() {
        type Fault<'a> = (&'a str, Option<(u16, &'a [u8])>, u64, Failure, u32);
        let faults: [Fault; 10] = [
            ("slow", None, 100, Failure::Timeout, 3),
            ("envoy timeout", Some((504, b"upstream request timeout")), 100, Failure::Timeout, 3),
            ("reset", None, 2, Failure::Reset, 3),
            ("envoy reset", Some((503, b"upstream connect error or disconnect/reset before headers")), 2, Failure::Reset, 3),
            ("5xx", Some((500, b"{}")), 2, Failure::Status, 3),
            ("429", Some((429, b"slow down")), 2, Failure::Status, 1),
            ("400", Some((400, b"{\"error\": \"12 features expected\"}")), 2, Failure::Status, 1),
            ("garbage", Some((200, b"{\"score\": ")), 2, Failure::Malformed, 1),
            ("wrong shape", Some((200, br#"{"outputs":[{"name":"anomaly_score","shape":[1,3],"data":[1,2,3]}]}"#)), 2, Failure::WrongShape, 1),
            ("nan", Some((200, br#"{"outputs":[{"name":"anomaly_score","shape":[1,1],"data":[NaN]}]}"#)), 2, Failure::NonFinite, 1),
        ];
        for mode in ["allow", "deny"] {
            for (name, reply, after_ms, reason, attempts) in faults {
                let (e, store, metrics) = engine(&INLINE.replace("FAILURE_MODE", mode));
                let calls = MemoryCallouts::default();
                let v = inline_request(&e, &store, &metrics, &calls, 1_000, |_| (after_ms, reply.map(|(s, b)| (s, b.to_vec()))));
                assert_eq!(calls.count() as u32, attempts, "{name}: transport failures and 5xx are retried, nonsense and 4xx are not");
                assert_eq!(metrics.get(Metric::MlFailures(Role::Anomaly, reason)), u64::from(attempts), "{name}");
                assert_eq!(metrics.get(Metric::MlRetries(Role::Anomaly)), u64::from(attempts - 1), "{name}");
                assert_eq!(metrics.get(Metric::MlFallbacks(Role::Anomaly)), 1, "{name}");
                assert_eq!(v.features.user_deviation_score, None);
                assert!(v.threat_details.iter().any(|d| d.reason.contains(reason.as_str())), "{name}: {:?}", v.threat_details);
                if mode == "allow" {
                    assert_eq!(v.decision, Decision::Allow, "{name}: fail open");
                } else {
                    assert_eq!(v.decision, Decision::Block, "{name}: fail closed");
                    assert!(v.enforced && report::signals(&v).starts_with("ml_unavailable=1.000"));
                }
            }
        }
    }

    #[test]
    fn the_breaker_opens_on_a_failing_model_and_a_probe_closes_it() {
        let (e, store, metrics) = engine(&INLINE.replace("FAILURE_MODE", "allow"));
        let calls = MemoryCallouts::default();
        // One request: three attempts, three resets: the breaker opens.
        inline_request(&e, &store, &metrics, &calls, 1_000, |_| (1, None));
        assert_eq!(metrics.get(Metric::MlBreakerOpen(Role::Anomaly)), 1);
        // While open, nothing is sent and the request does not wait at all.
        let mut log = Vec::new();
        let mut v = e.assess(&get("x"), 2_000, &store, &metrics, &mut log);
        assert!(e.ask_models(&mut v, 2_000, &calls, &metrics, &mut log).is_none());
        assert_eq!(calls.count(), 3);
        assert_eq!(metrics.get(Metric::MlFailures(Role::Anomaly, Failure::BreakerOpen)), 1);
        assert!(log.iter().all(|l| !l.contains("request_id")), "payloads are not logged unless configured");
        // After open_seconds, one probe; it succeeds and calls flow again.
        let v = inline_request(&e, &store, &metrics, &calls, 6_010, |_| (2, Some((200, oip_answer(0.1)))));
        assert!(v.features.user_deviation_score.is_some());
        assert_eq!(metrics.get(Metric::MlBreakerOpen(Role::Anomaly)), 0);
        inline_request(&e, &store, &metrics, &calls, 6_200, |_| (2, Some((200, oip_answer(0.1)))));
        assert_eq!(calls.count(), 5);
    }

    #[test]
    fn a_request_that_ends_while_waiting_leaves_nothing_but_a_count() {
        let (e, store, metrics) = engine(&INLINE.replace("FAILURE_MODE", "allow"));
        let calls = MemoryCallouts::default();
        let mut log = Vec::new();
        let mut v = e.assess(&get("gone"), 1_000, &store, &metrics, &mut log);
        let ex = e.ask_models(&mut v, 1_000, &calls, &metrics, &mut log).unwrap();
        e.abandon_models(&ex, &metrics);
        assert_eq!(metrics.get(Metric::MlAbandoned), 1);
        // A reply to a token nobody waits for is ignored.
        assert!(!e.async_model_reply(999, None, 1_050, &store, &metrics, &mut log));
    }

    #[test]
    fn cascade_asks_only_about_the_grey_zone() {
        let (e, store, metrics) = engine(
            r#"{"mode": "enforce", "enable_ml_models": true,
                "rate_limit": {"requests_per_window": 10, "window_seconds": 60},
                "ml_model_config": {"mode": "cascade", "behavioral_model_url": "http://ml/v1/score",
                  "grey_zone": {"low": 0.5, "high": 0.9}}}"#,
        );
        let calls = MemoryCallouts::default();
        let mut log = Vec::new();
        let mut asked = Vec::new();
        for i in 0..30u64 {
            let mut v = e.assess(&get("carol"), 1_000 + i, &store, &metrics, &mut log);
            asked.push(e.ask_models(&mut v, 1_000 + i, &calls, &metrics, &mut log).is_some());
        }
        // Rate scores: 0 up to half the ceiling, 0.6 at it, above 0.8 past it, 1.0 at twice it.
        assert!(!asked[0] && !asked[4], "clearly fine: not asked");
        assert!(asked[9], "at the ceiling (0.6): asked");
        assert!(!asked[29], "clearly over (1.0): not asked");
        assert_eq!(calls.count(), asked.iter().filter(|a| **a).count());
        let native: serde_json::Value = serde_json::from_slice(&calls.sent.borrow()[0].3).unwrap();
        assert_eq!(native["model"], "behavioral");
    }

    #[test]
    fn the_exported_vector_carries_the_identitys_minute_in_the_configured_version() {
        let json = |version: &str| {
            format!(
                r#"{{"behavioral_profiling": {{"enable_user_profiling": true}},
                    "ml_model_config": {{"export_features": true, "feature_version": "{version}"}}}}"#
            )
        };
        let (e, store, metrics) = engine(&json("vigil.v2"));
        let mut log = Vec::new();
        let mut last = None;
        // A walk over 40 objects in 20 s: the minute's objects and the run grow.
        for i in 0..40u64 {
            let path = format!("/items/{}", 100 + i);
            let req = HeaderList::from_pairs(&[(":method", "GET"), (":path", &path), ("x-user-id", "walker")]);
            let v = e.assess(&req, 1_000 + i * 500, &store, &metrics, &mut log);
            last = v.ml_vector;
        }
        let v = last.expect("export_features builds the vector");
        assert_eq!(v.version(), vector::Version::V2);
        let x = v.values();
        assert!(x[11] > 0.5 && x[12] > 0.5, "40 requests on 40 objects in the minute: {x:?}");
        assert!(x[15] > 0.6, "a sequential walk: {x:?}");
        assert!(x[10] > 0.2, "20 s old: {x:?}");

        let (e, store, metrics) = engine(&json("vigil.v1"));
        let v = e.assess(&get("carol"), 1_000, &store, &metrics, &mut log).ml_vector.expect("exported");
        assert_eq!((v.version().as_str(), v.values().len()), ("vigil.v1", 12));
        let bad = config::parse(br#"{"ml_model_config": {"feature_version": "vigil.v3"}}"#).unwrap_err();
        assert!(bad.field.contains("feature_version"), "{bad:?}");
    }

    #[test]
    fn async_answers_reach_the_identitys_next_requests_and_retry_with_backoff() {
        let (e, store, metrics) = engine(
            r#"{"mode": "enforce", "enable_ml_models": true, "rate_limit": {"enabled": false},
                "ml_model_config": {"mode": "async", "behavioral_model_url": "http://ml/v1/score",
                  "model_retry_count": 1, "max_pending_calls": 4, "log_payloads": true}}"#,
        );
        let calls = MemoryCallouts::default();
        let mut log = Vec::new();
        let mut v = e.assess(&get("dave"), 1_000, &store, &metrics, &mut log);
        assert!(e.ask_models(&mut v, 1_000, &calls, &metrics, &mut log).is_none(), "async: the request never waits");
        e.decide(&mut v, &metrics);
        assert_eq!(v.decision, Decision::Allow);
        assert_eq!(calls.count(), 0, "queued for the tick");
        e.on_tick(1_100, 1, &store, &metrics, &calls);
        assert_eq!(calls.count(), 1);
        // A reset: retried after a backoff, not at once.
        assert!(e.async_model_reply(1, None, 1_110, &store, &metrics, &mut log));
        e.on_tick(1_120, 1, &store, &metrics, &calls);
        assert_eq!(calls.count(), 1, "still backing off");
        e.on_tick(1_300, 1, &store, &metrics, &calls);
        assert_eq!(calls.count(), 2);
        assert!(e.async_model_reply(2, Some((200, br#"{"score": 0.97, "confidence": 0.9}"#)), 1_320, &store, &metrics, &mut log));
        let next = e.on_request(&get("dave"), 1_400, &store, &metrics);
        let score = next.features.user_deviation_score.unwrap();
        assert!(score > 0.96, "{score}");
        assert!(next.decision >= Decision::Throttle && next.enforced);
        assert!(next.threat_details.iter().any(|d| d.reason.contains("recent request")));
        assert_eq!(e.on_request(&get("erin"), 1_400, &store, &metrics).features.user_deviation_score, None);
        e.on_tick(1_450, 1, &store, &metrics, &calls);
        assert_eq!(calls.count(), 3, "erin is asked about; dave, within the interval, is not");
        assert!(log.iter().any(|l| l.contains("identity=redacted") && l.contains("vigil.v2=[")), "{log:?}");
        assert!(log.iter().any(|l| l.contains("score 0.970")), "{log:?}");
        // Within the interval (10 s) neither is asked about again the same kind of request...
        e.on_request(&get("dave"), 1_500, &store, &metrics);
        e.on_request(&get("erin"), 1_500, &store, &metrics);
        e.on_tick(1_600, 1, &store, &metrics, &calls);
        assert_eq!(calls.count(), 3);
        // ...but a request of a new kind is.
        let upload = HeaderList::from_pairs(&[(":method", "POST"), (":path", "/upload"), ("x-user-id", "erin"), ("content-length", "40000")]);
        e.on_request(&upload, 1_700, &store, &metrics);
        e.on_tick(1_800, 1, &store, &metrics, &calls);
        assert_eq!(calls.count(), 4);
        // The queue is bounded: beyond max_pending_calls (4), calls are dropped and counted.
        for i in 0..10 {
            e.on_request(&get(&format!("flood{i}")), 2_000 + i, &store, &metrics);
        }
        assert_eq!(metrics.get(Metric::MlFailures(Role::Behavioral, Failure::QueueFull)), 8);
        e.on_tick(2_100, 1, &store, &metrics, &calls);
        assert_eq!(calls.count(), 4 + 2, "erin's two calls are still in flight and hold places");
    }

    #[test]
    fn async_asks_once_per_identity_and_kind_of_request_and_never_for_anonymous() {
        let (e, store, metrics) = engine(
            r#"{"enable_ml_models": true, "rate_limit": {"enabled": false},
                "ml_model_config": {"mode": "async", "behavioral_model_url": "http://ml/v1/score"}}"#,
        );
        let calls = MemoryCallouts::default();
        let upload = HeaderList::from_pairs(&[(":method", "POST"), (":path", "/upload"), ("x-user-id", "kim"), ("content-length", "40000")]);
        // Alternating two kinds of request: each kind is asked about once per interval.
        for i in 0..20u64 {
            let req = if i % 2 == 0 { get("kim") } else { upload.clone() };
            e.on_request(&req, 1_000 + i, &store, &metrics);
        }
        e.on_tick(1_100, 1, &store, &metrics, &calls);
        assert_eq!(calls.count(), 2);
        // Anonymous requests share one hash: no answer could be kept, so none is asked for.
        let anonymous = HeaderList::from_pairs(&[(":method", "GET"), (":path", "/x")]);
        let (e2, store2, metrics2) = engine(
            r#"{"enable_ml_models": true, "identity": {"sources": [{"type": "header", "name": "x-user-id"}]},
                "ml_model_config": {"mode": "async", "behavioral_model_url": "http://ml/v1/score"}}"#,
        );
        e2.on_request(&anonymous, 1_000, &store2, &metrics2);
        e2.on_tick(1_100, 1, &store2, &metrics2, &calls);
        assert_eq!(calls.count(), 2);
    }

    #[test]
    fn a_refused_request_becomes_a_cef_event_and_fires_its_alert_once() {
        let (e, store, metrics) = engine(
            r#"{"mode": "enforce", "rate_limit": {"requests_per_window": 2, "window_seconds": 60},
                "alerts": {"rules": [{"name": "blocked", "on": "risk", "above": 0.95, "per": "identity",
                                      "severity": "warning", "cooldown_seconds": 60, "escalate_after": 5}],
                           "webhooks": [{"url": "http://alerts/hook"}]},
                "siem": {"format": "both"}}"#,
        );
        let mut lines = Vec::new();
        for i in 0..12u64 {
            lines.extend(e.on_request_logged(&get("zed"), 1_000 + i, &store, &metrics).1);
        }
        let cef: Vec<&String> = lines.iter().filter(|l| l.starts_with("vigil-event CEF:0|Vigil|vigil|")).collect();
        let json: Vec<&String> = lines.iter().filter(|l| l.starts_with("vigil-event {")).collect();
        assert!(cef.iter().any(|l| l.contains("|decision|request blocked|9|") && l.contains("externalId=abc-1")));
        assert_eq!(cef.len(), json.len(), "both formats");
        // One alert for the key, then one escalation after five more.
        let alerts: Vec<&&String> = cef.iter().filter(|l| l.contains("|alert|")).collect();
        assert_eq!(alerts.len(), 2, "{alerts:?}");
        assert!(alerts[0].contains("|alert blocked|6|") && alerts[1].contains("|alert blocked|9|"));
        assert_eq!(metrics.get(Metric::Alerts(crate::engine::config::Severity::Warning)), 1);
        assert_eq!(metrics.get(Metric::Alerts(crate::engine::config::Severity::Critical)), 1);
        assert_eq!(e.alerts.as_ref().unwrap().outbox.pending(), 2, "both queued for the webhook");
        assert!(metrics.get(Metric::DecisionReasons("rate")) >= 9);
        // Plain allows write nothing.
        assert!(e.on_request_logged(&get("quiet"), 5_000, &store, &metrics).1.is_empty());
    }

    #[test]
    fn a_model_breaker_opening_fires_the_ml_breaker_alert_from_the_tick() {
        let json = INLINE.replace("FAILURE_MODE", "allow").replacen(
            r#"{"mode": "enforce","#,
            r#"{"mode": "enforce", "alerts": {"rules": [{"name": "model-down", "on": "ml_breaker", "per": "rule", "severity": "critical"}],
                "webhooks": [{"url": "http://alerts/hook"}]},"#,
            1,
        );
        let (e, store, metrics) = engine(&json);
        let calls = MemoryCallouts::default();
        inline_request(&e, &store, &metrics, &calls, 1_000, |_| (1, None));
        assert_eq!(metrics.get(Metric::MlBreakerOpen(Role::Anomaly)), 1);
        let log = e.on_tick(1_100, 1, &store, &metrics, &calls);
        assert!(log.events.iter().any(|l| l.contains("|alert|alert model-down|9|") && l.contains("model anomaly")), "{:?}", log.events);
        assert_eq!(metrics.get(Metric::Alerts(crate::engine::config::Severity::Critical)), 1);
        // Sent from that tick: the webhook call is the last one made.
        assert_eq!(calls.sent.borrow().last().unwrap().2, "/hook");
        assert!(e.on_tick(1_200, 1, &store, &metrics, &calls).events.is_empty(), "once");
    }

    #[test]
    fn decision_logging_explains_each_signal_only_when_asked() {
        let (e, store, metrics) = engine(r#"{"debug": {"log_decisions": true}, "rate_limit": {"requests_per_window": 2}}"#);
        let mut lines = Vec::new();
        for i in 0..3 {
            lines = e.on_request_logged(&get("yan"), 1_000 + i, &store, &metrics).1;
        }
        let explained = lines.iter().find(|l| l.starts_with("vigil-decision ")).unwrap();
        assert!(explained.contains("identity=redacted"), "{explained}");
        assert!(explained.contains("decision=throttle:") || explained.contains("decision=block:"), "{explained}");
        assert!(explained.ends_with("decision=throttle: rate=0.900 [floor]"), "{explained}");
        let (quiet, store, metrics) = engine("{}");
        assert!(quiet.on_request_logged(&get("yan"), 1_000, &store, &metrics).1.is_empty(), "off by default");
    }
}
