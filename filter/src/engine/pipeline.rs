//! The request pipeline: small steps in a fixed order, each with an explicit
//! outcome. A failed step goes through its failure mode (open: note it, count
//! it, carry on) instead of failing the request.

use super::config::{Config, Mode};
use super::decision::{self, Decision};
use super::features::{Combine, Features, Method, Signal, ThreatDetail};
use super::hash::HashKey;
use super::identity::{self, IdentityKind};
use super::ports::{Metric, MetricsSink, SharedStore, StoreError};
use super::profile::{self, model, Assessment, Profiler};
use super::rate;
use super::request::RequestView;
use super::route;
use super::traffic::{self, Traffic};

/// The engine, built once per configuration and shared by every request.
pub struct Engine {
    pub config: Config,
    hash_key: HashKey,
    rate_prefix: String,
    profiler: Option<Profiler>,
    traffic: Option<Traffic>,
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
    pub decision: Decision,
    /// The decision is acted on (enforce mode and a refusing decision).
    pub enforced: bool,
    /// Exact count of this identity's requests in its current rate window.
    pub rate_count: Option<u32>,
    /// Seconds until the identity is back within its ceiling, for `retry-after`.
    pub retry_after_s: Option<u64>,
    pub profile: Option<ProfileState>,
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
        Self { config, hash_key, rate_prefix, profiler, traffic }
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
        Ok(created)
    }

    pub fn profiler(&self) -> Option<&Profiler> {
        self.profiler.as_ref()
    }

    /// Periodic work (every worker, once a tick): sync profiles, hand in
    /// traffic counts, and the elected cleanup and traffic analysis. `instance`
    /// tells this VM apart from the others. Returns lines worth logging.
    pub fn on_tick(&self, now_ms: u64, instance: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Vec<String> {
        if let Some(p) = &self.profiler {
            p.on_tick(now_ms, instance, store, metrics);
        }
        match &self.traffic {
            Some(t) => t.on_tick(now_ms, instance, store, metrics),
            None => Vec::new(),
        }
    }

    /// Runs the request-side pipeline: identify, extract, count, score, decide.
    pub fn on_request(
        &self,
        req: &dyn RequestView,
        now_ms: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
    ) -> Verdict {
        metrics.add(Metric::Requests, 1);
        let features = self.extract(req, now_ms);
        let mut v = Verdict {
            features,
            signals: Vec::with_capacity(2),
            threat_details: Vec::new(),
            risk: 0.0,
            decision: Decision::Allow,
            enforced: false,
            rate_count: None,
            retry_after_s: None,
            profile: None,
        };

        self.traffic_step(&mut v, now_ms);
        for outcome in [self.rate_step(&mut v, now_ms, store, metrics), self.profile_step(&mut v, store, metrics)] {
            if let Outcome::Failed { step, error } = outcome {
                // Fail open: a store problem must not take the API down with it.
                metrics.add(Metric::StoreErrors, 1);
                v.threat_details
                    .push(ThreatDetail { signal: step, reason: format!("unavailable ({error:?}), failing open") });
            }
        }

        v.risk = decision::risk(&v.signals);
        v.decision = decision::decide_for(v.risk, &v.signals, &self.config.decision_thresholds);
        v.enforced = self.config.mode == Mode::Enforce && v.decision.status().is_some();
        v.features.refused = v.enforced;
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
        v
    }

    /// Whether any detector reads response features (status, latency). Reading
    /// them costs host calls on every response, so the host asks only then.
    pub fn wants_response_features(&self) -> bool {
        self.config.behavioral_profiling.enable_user_profiling || self.config.time_series_analysis.enable_traffic_analysis
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
            p.observe_status(features.identity.hash, status);
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
        let (mut session, mut country, mut asn) = (None, None, None);
        if self.profiler.is_some() {
            let p = &self.config.behavioral_profiling;
            let token = p.session.header.as_deref().and_then(|h| req.header(h)).or_else(|| {
                let c = p.session.cookie.as_deref()?;
                req.header("cookie").and_then(|v| cookie_value(v, c.as_bytes()))
            });
            session = token.filter(|t| !t.is_empty()).map(|t| self.hash_key.hash(&[b"session", t]) as u32);
            country = p.geo.country_header.as_deref().and_then(|h| req.header(h)).and_then(|v| model::country_code(v.trim_ascii()));
            asn = p.geo.asn_header.as_deref().and_then(|h| req.header(h)).and_then(parse_asn);
        }
        Features {
            request_id,
            identity,
            method: req.header(":method").map_or(Method::Other, Method::parse),
            route: route::template(req.header(":path").unwrap_or(b"/")),
            request_bytes: req
                .header("content-length")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
            time_ms: now_ms,
            session,
            country,
            asn,
            status: None,
            latency_us: None,
            refused: false,
            behavioral_score: None,
            traffic_anomaly_score: None,
        }
    }

    /// Reads the route's traffic score from this worker's snapshot (no host call).
    fn traffic_step(&self, v: &mut Verdict, now_ms: u64) {
        let Some(t) = &self.traffic else { return };
        let Some(a) = t.read(&v.features.route, now_ms) else { return };
        v.features.traffic_anomaly_score = Some(a.score);
        v.signals.push(Signal {
            name: traffic::SIGNAL,
            score: a.score,
            combine: Combine::Context { weight: self.config.ml_scoring_weights.traffic_anomaly, gate: t.threshold() },
        });
        if let Some(reason) = a.detail {
            v.threat_details.push(ThreatDetail { signal: traffic::SIGNAL, reason });
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
        match profiler.observe(&v.features, &self.hash_key, store, metrics) {
            Ok(Assessment::Cold { observations }) => {
                metrics.add(Metric::ProfileCold, 1);
                v.profile = Some(ProfileState::Cold { observations });
            }
            Ok(Assessment::Scored(d)) => {
                let gate = self.config.behavioral_profiling.deviation_threshold;
                v.profile = Some(ProfileState::Warm { observations: d.observations });
                v.features.behavioral_score = Some(d.score);
                v.signals.push(Signal {
                    name: profile::SIGNAL,
                    score: d.score,
                    combine: Combine::Weighted { weight: self.config.ml_scoring_weights.behavioral_deviation, gate },
                });
                if d.score >= gate {
                    metrics.add(Metric::ProfileDeviations, 1);
                    v.threat_details.extend(d.reasons.into_iter().map(|reason| ThreatDetail { signal: profile::SIGNAL, reason }));
                }
            }
            Err(error) => return Outcome::Failed { step: profile::SIGNAL, error },
        }
        Outcome::Done
    }

    fn rate_step(&self, v: &mut Verdict, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Outcome {
        let cfg = &self.config.rate_limit;
        if !cfg.enabled {
            return Outcome::Done;
        }
        match rate::observe(cfg, store, metrics, &self.rate_prefix, v.features.identity.hash, now_ms) {
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
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};
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
        assert!(report::signals(&v).starts_with("rate=0.000;rate_count=1;identity=user:"));
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
            assert!((v.risk - score).abs() < 1e-9, "alone, the behavioural detector's score is the risk");
            assert!(v.decision >= Decision::Throttle && v.enforced);
            assert!(v.features.refused, "Vigil's own refusal teaches no status");
        }
        let v = &verdicts[0];
        assert!(v.features.behavioral_score.unwrap() > 0.95);
        assert!(v.threat_details.iter().any(|d| d.signal == "behavior" && d.reason.contains("new country KP")));
        assert!(report::signals(v).starts_with("behavior=0.9"));
        assert!(report::log_record(v).contains("\"behavioral_score\":0.9"));
        assert_eq!(metrics.get(Metric::ProfileDeviations), 5);
        assert_eq!(metrics.get(Metric::ProfileCold), 20);
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
                assert!(e.on_tick(now, 1, &store, &metrics).iter().all(|l| failing && l.contains("5xx_rate")));
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
}
