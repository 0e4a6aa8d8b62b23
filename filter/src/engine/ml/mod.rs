//! The second opinion: external model servers, reached through Envoy's
//! `dispatch_http_call` and never trusted to be up, fast or sane.
//!
//! Three modes. `inline`: the request waits for every configured model
//! (bounded by `model_timeout_ms` x (retries + 1)). `cascade`: only a request
//! whose local risk is in the grey zone waits. `async`: the request goes on;
//! the answer is kept per identity in shared data and weighs on the identity's
//! next requests. A model that cannot answer leaves the decision to the local
//! detectors (`failure_mode: allow`) or blocks (`deny`, for requests that
//! wait); either way the failure is counted by reason, and a model that keeps
//! failing is cut off by its circuit breaker and probed again later.
//!
//! `exchange` is the waiting side, `queue` the `async` one; what both share
//! (judging an answer, the breakers, the payload) is here.

pub mod answers;
pub mod breaker;
mod exchange;
pub mod latency;
pub mod protocol;
mod queue;
pub mod vector;

pub use exchange::Exchange;

use crate::engine::config::{Config, MlMode, ModelOptions, ClusterUrl, Protocol};
use crate::engine::features::{Combine, Features, Signal, ThreatDetail};
use crate::engine::ports::{Call, Metric, MetricsSink, SharedStore, StoreError};
use answers::Answers;
use breaker::{Breaker, Transition};
use protocol::{Answer, Failure, Subject, Wire};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write;

/// The model's signal in the risk score and the headers.
pub const SIGNAL: &str = "ml";
/// The signal of a model that failed closed.
pub const FAILURE_SIGNAL: &str = "ml_unavailable";
/// A model score counts in the risk from here up (below, it is a vote for
/// "normal": its weight still dilutes the others).
pub const GATE: f64 = 0.5;
/// An Envoy-side timeout can be reported a little before our own clock
/// agrees; closer than this to the deadline counts as a timeout.
const TIMEOUT_SLACK_MS: u64 = 5;

/// Which configured model: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Behavioral,
    Anomaly,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Behavioral, Role::Anomaly];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Behavioral => "behavioral",
            Role::Anomaly => "anomaly",
        }
    }
}

struct Model {
    role: Role,
    cluster: String,
    authority: String,
    path: String,
    wire: Wire,
    options: ModelOptions,
}

/// This worker's view of the models: breakers, `async` calls, and when each
/// identity was last asked about.
struct Worker {
    breakers: Vec<Breaker>,
    jobs: VecDeque<queue::Job>,
    /// Direct-mapped by identity and request kind: (identity, kind, ms). A
    /// collision only means one more call; the array never grows.
    asked: Vec<(u64, u32, u64)>,
    /// Breakers that opened since the tick last looked (for alert rules).
    opened: Vec<Role>,
    latency: latency::Local,
}

/// Identities remembered per worker for `async_min_interval_seconds`.
const ASKED_SLOTS: usize = 4096;
/// `async` calls sent per worker per tick (100 ms): a burst of queued calls
/// is spread over ticks instead of stalling the worker's requests.
const MAX_SENDS_PER_TICK: usize = 32;

pub struct Ml {
    models: Vec<Model>,
    mode: MlMode,
    grey: (f64, f64),
    timeout_ms: u64,
    retries: u32,
    weight: f64,
    max_pending: usize,
    min_interval_ms: u64,
    log_payloads: bool,
    log_identities: bool,
    version: vector::Version,
    answers: Option<Answers>,
    worker: RefCell<Worker>,
}

impl Ml {
    /// `None` when ML is off or no model is configured.
    pub fn new(config: &Config) -> Option<Ml> {
        let c = &config.ml_model_config;
        if !config.enable_ml_models {
            return None;
        }
        let mut models = Vec::new();
        for (role, url, cluster, options) in [
            (Role::Behavioral, &c.behavioral_model_url, &c.behavioral_model_cluster, &c.behavioral_model),
            (Role::Anomaly, &c.anomaly_model_url, &c.anomaly_model_cluster, &c.anomaly_model),
        ] {
            // Validated at load: an unusable URL never gets here.
            let Some(url) = url.as_deref().and_then(|u| ClusterUrl::parse(u).ok()) else { continue };
            let oip_name = url.oip_model_name().map(str::to_string);
            let wire = match (options.protocol, oip_name) {
                (Protocol::Native, _) | (Protocol::Auto, None) => Wire::Native,
                (Protocol::Oip | Protocol::Auto, Some(model_name)) => Wire::Oip { model_name },
                (Protocol::Oip, None) => continue,
            };
            models.push(Model {
                role,
                cluster: url.cluster(cluster.as_ref()),
                authority: url.authority.clone(),
                path: url.path.clone(),
                wire,
                options: options.clone(),
            });
        }
        if models.is_empty() {
            return None;
        }
        let b = &c.circuit_breaker;
        let budget_ms = c.model_timeout_ms * (u64::from(c.model_retry_count) + 1);
        let breakers =
            models.iter().map(|_| Breaker::new(b.consecutive_failures, u64::from(b.open_seconds) * 1000, budget_ms + 1000)).collect();
        Some(Ml {
            models,
            mode: c.mode,
            grey: (c.grey_zone.low, c.grey_zone.high),
            timeout_ms: c.model_timeout_ms,
            retries: c.model_retry_count,
            weight: config.ml_scoring_weights.user_anomaly,
            max_pending: c.max_pending_calls as usize,
            min_interval_ms: u64::from(c.async_min_interval_seconds) * 1000,
            log_payloads: c.log_payloads,
            log_identities: c.log_identities,
            version: c.feature_version,
            answers: (c.mode == MlMode::Async).then(|| Answers::new(c.max_identities, c.answer_half_life_seconds)),
            worker: RefCell::new(Worker { breakers, jobs: VecDeque::new(), asked: Vec::new(), opened: Vec::new(), latency: latency::Local::default() }),
        })
    }

    /// Hands this worker's model latencies in (once a second).
    pub fn flush_latency(&self, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<(), StoreError> {
        self.worker.borrow_mut().latency.flush(now_ms, store, metrics)
    }

    /// Each configured model: where it is called, and its response time
    /// across workers (admin API).
    pub fn latency_summary(&self, store: &dyn SharedStore) -> serde_json::Value {
        let timings = latency::read(store).unwrap_or_default();
        let models: Vec<serde_json::Value> = self
            .models
            .iter()
            .map(|m| {
                let t = latency::of(&timings, m.role);
                serde_json::json!({
                    "model": m.role.as_str(),
                    "cluster": m.cluster,
                    "path": m.path,
                    "timed_calls": t.calls,
                    "mean_ms": t.mean_ms().map(|x| (x * 10.0).round() / 10.0),
                    "max_ms": (t.calls > 0).then_some(t.max_ms),
                })
            })
            .collect();
        serde_json::Value::Array(models)
    }

    /// The models whose breaker opened on this worker since the last call.
    pub fn take_opened(&self) -> Vec<Role> {
        std::mem::take(&mut self.worker.borrow_mut().opened)
    }

    pub fn mode(&self) -> MlMode {
        self.mode
    }

    /// The clusters the models are called on, for the start-up log.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for m in &self.models {
            let wire = match &m.wire {
                Wire::Native => "native".to_string(),
                Wire::Oip { model_name } => format!("oip:{model_name}"),
            };
            let _ = write!(out, "{}{} -> cluster {} {} ({wire})", if out.is_empty() { "" } else { ", " }, m.role.as_str(), m.cluster, m.path);
        }
        out
    }

    pub fn start(&self, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<u32, StoreError> {
        match &self.answers {
            Some(a) => a.start(store, metrics),
            None => Ok(0),
        }
    }

    /// Whether a request with this local risk waits for the models.
    pub fn waits_for(&self, local_risk: f64) -> bool {
        match self.mode {
            MlMode::Inline => true,
            MlMode::Cascade => local_risk >= self.grey.0 && local_risk < self.grey.1,
            MlMode::Async => false,
        }
    }


    fn apply(
        &self,
        role: Option<Role>,
        score: f64,
        confidence: f64,
        features: &mut Features,
        signals: &mut Vec<Signal>,
        details: &mut Vec<ThreatDetail>,
    ) {
        features.user_deviation_score = Some(score);
        features.ml_model = role;
        // Confidence scales the model's weight against the other detectors (see `scoring`).
        signals.push(Signal { name: SIGNAL, score, confidence, combine: Combine::Answer { weight: self.weight, gate: GATE } });
        if score >= GATE {
            let reason = match role {
                Some(r) => format!("{} model scored {score:.2} (confidence {confidence:.2})", r.as_str()),
                None => format!("a model scored this identity's recent request {score:.2} (confidence {confidence:.2}, fading)"),
            };
            details.push(ThreatDetail { signal: SIGNAL, reason });
        }
    }

    fn call<'a>(&'a self, m: &'a Model, request_id: &'a str, body: &'a [u8]) -> Call<'a> {
        Call { cluster: &m.cluster, authority: &m.authority, path: &m.path, request_id, body, timeout_ms: self.timeout_ms, headers: &[], feature_version: Some(self.version.as_str()) }
    }

    /// Judges one attempt's outcome, and tells the breaker and the metrics.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        model: usize,
        sent_ms: u64,
        now_ms: u64,
        reply: Option<(u16, &[u8])>,
        request_id: &str,
        metrics: &dyn MetricsSink,
        log: &mut Vec<String>,
    ) -> Result<Answer, Failure> {
        let Some(m) = self.models.get(model) else { return Err(Failure::Dispatch) };
        let elapsed = now_ms.saturating_sub(sent_ms);
        metrics.record(Metric::MlLatency(m.role), elapsed);
        self.worker.borrow_mut().latency.record(m.role, elapsed);
        let late = elapsed + TIMEOUT_SLACK_MS >= self.timeout_ms;
        let result = match reply {
            None if late => Err(Failure::Timeout),
            None => Err(Failure::Reset),
            // Envoy answers its own timeout with a 504, and a connection that
            // failed or was reset with a 503 of its own making.
            Some((504, _)) if late => Err(Failure::Timeout),
            Some((503, body)) if body.starts_with(b"upstream connect error") || body.starts_with(b"no healthy upstream") => {
                Err(Failure::Reset)
            }
            Some((status, body)) => protocol::parse(&m.wire, &m.options, status, body),
        };
        let transition = {
            let mut w = self.worker.borrow_mut();
            match (w.breakers.get_mut(model), &result) {
                (Some(b), Ok(_)) => b.success(),
                (Some(b), Err(f)) if f.counts_against_model() => b.failure(now_ms),
                _ => None,
            }
        };
        match transition {
            Some(Transition::Opened) => {
                metrics.add(Metric::MlBreakerOpen(m.role), 1);
                let mut w = self.worker.borrow_mut();
                if !w.opened.contains(&m.role) {
                    w.opened.push(m.role);
                }
                log.push(format!("ml: {} model circuit breaker open, calls stop for a while, then one probe", m.role.as_str()));
            }
            Some(Transition::Closed) => {
                metrics.sub(Metric::MlBreakerOpen(m.role), 1);
                log.push(format!("ml: {} model circuit breaker closed, the probe succeeded", m.role.as_str()));
            }
            None => {}
        }
        if let Err(f) = result {
            metrics.add(Metric::MlFailures(m.role, f), 1);
        }
        if self.log_payloads {
            let outcome = match result {
                Ok(a) => format!("score {:.3} (raw {}) confidence {:.2}", a.score, a.raw, a.confidence),
                Err(f) => format!("failed: {}", f.as_str()),
            };
            log.push(format!("ml: {} answer request_id={request_id} after {elapsed} ms: {outcome}", m.role.as_str()));
        }
        result
    }

    fn body(&self, m: &Model, features: &Features, vector: &vector::Vector, log: &mut Vec<String>) -> Vec<u8> {
        let subject = Subject {
            role: m.role.as_str(),
            request_id: &features.request_id,
            identity_hash: features.identity.hash,
            route: &features.route,
            method: features.method.as_str(),
        };
        if self.log_payloads {
            let who = if self.log_identities { features.identity.display() } else { "redacted".to_string() };
            log.push(format!(
                "ml: {} call request_id={} identity={who} {}={:?}",
                m.role.as_str(),
                features.request_id,
                vector.version().as_str(),
                vector.values()
            ));
        }
        protocol::request_body(&m.wire, &subject, vector)
    }

    fn role(&self, model: usize) -> Role {
        self.models.get(model).map_or(Role::Anomaly, |m| m.role)
    }
}

/// A 4xx other than 408 and 429: the model server rejects the request itself
/// (a feature version it does not know, a body it cannot read), and will
/// again.
fn refused_for_good(reply: Option<(u16, &[u8])>) -> bool {
    matches!(reply, Some((status, _)) if (400..500).contains(&status) && status != 408 && status != 429)
}
