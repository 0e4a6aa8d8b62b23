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
//! Inline retries go out as soon as an attempt fails: the request is waiting
//! and a filter has no timer of its own per stream. Async retries wait a
//! jittered exponential backoff (`breaker::backoff_ms`).

pub mod answers;
pub mod breaker;
pub mod protocol;
pub mod vector;

use crate::engine::config::{Config, FailureMode, MlMode, ModelOptions, ModelUrl, Protocol};
use crate::engine::features::{Combine, Features, Signal, ThreatDetail};
use crate::engine::identity::IdentityKind;
use crate::engine::ports::{Call, Callouts, Metric, MetricsSink, SharedStore, StoreError};
use answers::Answers;
use breaker::{Breaker, Permit, Transition};
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

/// One model's part of a waiting request.
#[derive(Debug)]
struct Attempt {
    model: usize,
    body: Vec<u8>,
    request_id: String,
    token: Option<u32>,
    /// Attempts sent so far.
    tries: u32,
    sent_ms: u64,
    result: Option<Result<Answer, Failure>>,
}

/// The models' work for one waiting request (`inline`, `cascade`).
#[derive(Debug)]
pub struct Exchange {
    attempts: Vec<Attempt>,
}

impl Exchange {
    /// Every model has answered or failed for good.
    pub fn settled(&self) -> bool {
        self.attempts.iter().all(|a| a.result.is_some())
    }

    pub fn waits_on(&self, token: u32) -> bool {
        self.attempts.iter().any(|a| a.result.is_none() && a.token == Some(token))
    }
}

/// One `async` call, queued or in flight.
struct Job {
    model: usize,
    identity: u64,
    /// Answers for anonymous requests are not kept (they share one hash).
    keep: bool,
    request_id: String,
    body: Vec<u8>,
    tries: u32,
    due_ms: u64,
    token: Option<u32>,
    sent_ms: u64,
}

/// This worker's view of the models: breakers, `async` calls, and when each
/// identity was last asked about.
struct Worker {
    breakers: Vec<Breaker>,
    jobs: VecDeque<Job>,
    /// Direct-mapped by identity hash: (identity, ms, request kind). A
    /// collision only means one more call; the array never grows.
    asked: Vec<(u64, u64, u32)>,
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
            let Some(url) = url.as_deref().and_then(|u| ModelUrl::parse(u).ok()) else { continue };
            let oip_name = url.oip_model_name().map(str::to_string);
            let wire = match (options.protocol, oip_name) {
                (Protocol::Native, _) | (Protocol::Auto, None) => Wire::Native,
                (Protocol::Oip | Protocol::Auto, Some(model_name)) => Wire::Oip { model_name },
                (Protocol::Oip, None) => continue,
            };
            models.push(Model {
                role,
                cluster: cluster.clone().unwrap_or_else(|| url.host.clone()),
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
            answers: (c.mode == MlMode::Async).then(|| Answers::new(c.max_identities, c.answer_half_life_seconds)),
            worker: RefCell::new(Worker { breakers, jobs: VecDeque::new(), asked: Vec::new() }),
        })
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

    // --- inline and cascade ----------------------------------------------

    /// Sends the first attempt to every model, for a request that waits.
    pub fn ask(
        &self,
        features: &Features,
        vector: &vector::Vector,
        now_ms: u64,
        callouts: &dyn Callouts,
        metrics: &dyn MetricsSink,
        log: &mut Vec<String>,
    ) -> Exchange {
        let attempts = self
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| Attempt {
                model: i,
                body: self.body(m, features, vector, log),
                request_id: features.request_id.clone(),
                token: None,
                tries: 0,
                sent_ms: now_ms,
                result: None,
            })
            .collect();
        let mut ex = Exchange { attempts };
        for a in &mut ex.attempts {
            self.send_attempt(a, now_ms, callouts, metrics);
        }
        ex
    }

    /// Takes the reply to `token` (`None`: reset, no response at all), and
    /// retries at once if it failed in a way worth retrying. Returns whether
    /// the token was this exchange's.
    #[allow(clippy::too_many_arguments)]
    pub fn on_reply(
        &self,
        ex: &mut Exchange,
        token: u32,
        reply: Option<(u16, &[u8])>,
        now_ms: u64,
        callouts: &dyn Callouts,
        metrics: &dyn MetricsSink,
        log: &mut Vec<String>,
    ) -> bool {
        let Some(a) = ex.attempts.iter_mut().find(|a| a.result.is_none() && a.token == Some(token)) else {
            return false;
        };
        match self.judge(a.model, a.sent_ms, now_ms, reply, &a.request_id, metrics, log) {
            Err(f) if f.retryable() && !refused_for_good(reply) && a.tries <= self.retries => {
                metrics.add(Metric::MlRetries(self.role(a.model)), 1);
                self.send_attempt(a, now_ms, callouts, metrics);
            }
            r => a.result = Some(r),
        }
        true
    }

    /// Puts the models' verdict on the request: the strongest answer as the
    /// `ml` signal; for a model that could not answer, its failure mode.
    pub fn conclude(
        &self,
        ex: &Exchange,
        features: &mut Features,
        signals: &mut Vec<Signal>,
        details: &mut Vec<ThreatDetail>,
        metrics: &dyn MetricsSink,
    ) {
        let mut best: Option<(Role, Answer)> = None;
        let mut fail_closed = false;
        for a in &ex.attempts {
            let role = self.role(a.model);
            match a.result.unwrap_or(Err(Failure::Timeout)) {
                Ok(answer) => {
                    if best.map_or(true, |(_, b)| answer.score > b.score) {
                        best = Some((role, answer));
                    }
                }
                Err(f) => {
                    metrics.add(Metric::MlFallbacks(role), 1);
                    let deny = self.models.get(a.model).is_some_and(|m| m.options.failure_mode == FailureMode::Deny);
                    fail_closed |= deny;
                    let then = if deny { "failing closed" } else { "local detectors only" };
                    details.push(ThreatDetail {
                        signal: SIGNAL,
                        reason: format!("{} model unavailable ({}), {then}", role.as_str(), f.as_str()),
                    });
                }
            }
        }
        if let Some((role, a)) = best {
            self.apply(Some(role), a.score, a.confidence, features, signals, details);
        }
        if fail_closed {
            signals.push(Signal::local(FAILURE_SIGNAL, 1.0));
        }
    }

    /// The request ended while it waited: the host cancels its calls.
    pub fn abandon(&self, ex: &Exchange, metrics: &dyn MetricsSink) {
        if !ex.settled() {
            metrics.add(Metric::MlAbandoned, 1);
        }
    }

    // --- async --------------------------------------------------------------

    /// Queues a call per model for a request that does not wait. The calls go
    /// out on this worker's next ticks (from the root context, which outlives
    /// the request). An identity already asked about within
    /// `async_min_interval_seconds` is not asked again about the same kind of
    /// request (`vector::fingerprint`), unless its local risk reaches the grey
    /// zone.
    pub fn enqueue(
        &self,
        features: &Features,
        vector: &vector::Vector,
        local_risk: f64,
        now_ms: u64,
        metrics: &dyn MetricsSink,
        log: &mut Vec<String>,
    ) {
        if !self.first_ask_in_interval(features.identity.hash, vector::fingerprint(vector), now_ms) && local_risk < self.grey.0 {
            return;
        }
        for (i, m) in self.models.iter().enumerate() {
            if self.worker.borrow().jobs.len() >= self.max_pending {
                metrics.add(Metric::MlFailures(m.role, Failure::QueueFull), 1);
                continue;
            }
            let job = Job {
                model: i,
                identity: features.identity.hash,
                keep: features.identity.kind != IdentityKind::Anonymous,
                request_id: features.request_id.clone(),
                body: self.body(m, features, vector, log),
                tries: 0,
                due_ms: now_ms,
                token: None,
                sent_ms: now_ms,
            };
            self.worker.borrow_mut().jobs.push_back(job);
        }
    }

    /// Records that `identity` is asked about a request of `kind` now; false
    /// when it already was within the interval.
    fn first_ask_in_interval(&self, identity: u64, kind: u32, now_ms: u64) -> bool {
        if self.min_interval_ms == 0 {
            return true;
        }
        let mut w = self.worker.borrow_mut();
        if w.asked.is_empty() {
            w.asked = vec![(0, 0, 0); ASKED_SLOTS];
        }
        let Some(slot) = w.asked.get_mut((identity % ASKED_SLOTS as u64) as usize) else { return true };
        if slot.0 == identity && slot.2 == kind && now_ms.saturating_sub(slot.1) < self.min_interval_ms {
            return false;
        }
        *slot = (identity, now_ms, kind);
        true
    }

    /// Sends the queued calls that are due (first attempts and retries whose
    /// backoff has passed), at most `MAX_SENDS_PER_TICK`.
    pub fn on_tick(&self, now_ms: u64, callouts: &dyn Callouts, metrics: &dyn MetricsSink) {
        let mut w = self.worker.borrow_mut();
        let Worker { breakers, jobs, .. } = &mut *w;
        let stale_ms = self.timeout_ms + 10_000;
        let mut sends = 0;
        jobs.retain_mut(|j| {
            let role = self.role(j.model);
            if j.token.is_some() {
                // The host answers every call it sent; this only keeps the bound
                // should an answer ever be lost.
                if now_ms.saturating_sub(j.sent_ms) > stale_ms {
                    metrics.add(Metric::MlFailures(role, Failure::Timeout), 1);
                    metrics.add(Metric::MlFallbacks(role), 1);
                    return false;
                }
                return true;
            }
            if j.due_ms > now_ms || sends >= MAX_SENDS_PER_TICK {
                return true;
            }
            sends += 1;
            let Some(breaker) = breakers.get_mut(j.model) else { return false };
            if breaker.permit(now_ms) == Permit::Refuse {
                metrics.add(Metric::MlFailures(role, Failure::BreakerOpen), 1);
                metrics.add(Metric::MlFallbacks(role), 1);
                return false;
            }
            let Some(m) = self.models.get(j.model) else { return false };
            match callouts.send(&self.call(m, &j.request_id, &j.body)) {
                Ok(token) => {
                    j.token = Some(token);
                    j.tries += 1;
                    j.sent_ms = now_ms;
                    metrics.add(Metric::MlCalls(role), 1);
                    true
                }
                Err(_) => {
                    metrics.add(Metric::MlFailures(role, Failure::Dispatch), 1);
                    metrics.add(Metric::MlFallbacks(role), 1);
                    false
                }
            }
        });
    }

    /// Takes the reply to an `async` call: keeps the answer for the identity,
    /// or schedules a retry after a backoff. Returns whether the token was one
    /// of this worker's `async` calls.
    #[allow(clippy::too_many_arguments)]
    pub fn on_async_reply(
        &self,
        token: u32,
        reply: Option<(u16, &[u8])>,
        now_ms: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
        log: &mut Vec<String>,
    ) -> Result<bool, StoreError> {
        let job = {
            let mut w = self.worker.borrow_mut();
            let Some(at) = w.jobs.iter().position(|j| j.token == Some(token)) else { return Ok(false) };
            w.jobs.remove(at)
        };
        let Some(mut job) = job else { return Ok(false) };
        let role = self.role(job.model);
        match self.judge(job.model, job.sent_ms, now_ms, reply, &job.request_id, metrics, log) {
            Ok(answer) => {
                if let (Some(answers), true) = (&self.answers, job.keep) {
                    answers.record(job.identity, &answer, now_ms, store, metrics)?;
                }
            }
            Err(f) if f.retryable() && !refused_for_good(reply) && job.tries <= self.retries => {
                metrics.add(Metric::MlRetries(role), 1);
                job.token = None;
                job.due_ms = now_ms + breaker::backoff_ms(job.tries, job.identity ^ u64::from(token));
                self.worker.borrow_mut().jobs.push_back(job);
            }
            Err(_) => metrics.add(Metric::MlFallbacks(role), 1),
        }
        Ok(true)
    }

    /// Adds the identity's recent `async` answer, faded by its age.
    pub fn apply_stored(
        &self,
        features: &mut Features,
        signals: &mut Vec<Signal>,
        details: &mut Vec<ThreatDetail>,
        now_ms: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
    ) -> Result<(), StoreError> {
        let Some(answers) = &self.answers else { return Ok(()) };
        if features.identity.kind == IdentityKind::Anonymous {
            return Ok(());
        }
        if let Some((score, confidence)) = answers.read(features.identity.hash, now_ms, store, metrics)? {
            self.apply(None, score, confidence, features, signals, details);
        }
        Ok(())
    }

    // --- shared by both ------------------------------------------------------

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
        // Confidence scales the model's weight against the other detectors.
        signals.push(Signal { name: SIGNAL, score, combine: Combine::Weighted { weight: self.weight * confidence, gate: GATE } });
        if score >= GATE {
            let reason = match role {
                Some(r) => format!("{} model scored {score:.2} (confidence {confidence:.2})", r.as_str()),
                None => format!("a model scored this identity's recent request {score:.2} (confidence {confidence:.2}, fading)"),
            };
            details.push(ThreatDetail { signal: SIGNAL, reason });
        }
    }

    fn call<'a>(&'a self, m: &'a Model, request_id: &'a str, body: &'a [u8]) -> Call<'a> {
        Call { cluster: &m.cluster, authority: &m.authority, path: &m.path, request_id, body, timeout_ms: self.timeout_ms }
    }

    fn send_attempt(&self, a: &mut Attempt, now_ms: u64, callouts: &dyn Callouts, metrics: &dyn MetricsSink) {
        let role = self.role(a.model);
        let permit = self.worker.borrow_mut().breakers.get_mut(a.model).map_or(Permit::Refuse, |b| b.permit(now_ms));
        let Some(m) = self.models.get(a.model).filter(|_| permit != Permit::Refuse) else {
            metrics.add(Metric::MlFailures(role, Failure::BreakerOpen), 1);
            a.result = Some(Err(Failure::BreakerOpen));
            return;
        };
        match callouts.send(&self.call(m, &a.request_id, &a.body)) {
            Ok(token) => {
                a.token = Some(token);
                a.tries += 1;
                a.sent_ms = now_ms;
                metrics.add(Metric::MlCalls(role), 1);
            }
            Err(_) => {
                metrics.add(Metric::MlFailures(role, Failure::Dispatch), 1);
                a.result = Some(Err(Failure::Dispatch));
            }
        }
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
                "ml: {} call request_id={} identity={who} {}={vector:?}",
                m.role.as_str(),
                features.request_id,
                vector::VERSION
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
