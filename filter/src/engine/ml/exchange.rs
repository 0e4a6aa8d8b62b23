//! `inline` and `cascade`: the request waits for the models. Each model gets
//! an attempt; a failed attempt worth retrying is sent again at once (the
//! request is waiting, and a filter has no per-stream timer), up to
//! `model_retry_count` times; then the answers, or the failure modes, join the
//! request's signals.

use super::breaker::Permit;
use super::protocol::{Answer, Failure};
use super::{refused_for_good, vector, Ml, Role, FAILURE_SIGNAL, SIGNAL};
use crate::engine::config::FailureMode;
use crate::engine::features::{Features, Signal, ThreatDetail};
use crate::engine::ports::{Callouts, Metric, MetricsSink};

/// One model's part of a waiting request.
#[derive(Debug)]
pub(super) struct Attempt {
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
}

impl Ml {
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
            // A 429 says "slow down": retrying at once (the request is
            // waiting, there is no backoff here) would only add load.
            Err(f) if f.retryable() && !refused_for_good(reply) && !matches!(reply, Some((429, _))) && a.tries <= self.retries => {
                self.send_attempt(a, now_ms, callouts, metrics);
                if a.result.is_none() {
                    // Counted only when it went out (the breaker may have refused it).
                    metrics.add(Metric::MlRetries(self.role(a.model)), 1);
                }
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
            // A model that stood in for one that failed is less evidence than
            // every configured model agreeing: its confidence is scaled by the
            // share that answered.
            let answered = ex.attempts.iter().filter(|a| matches!(a.result, Some(Ok(_)))).count();
            let share = answered as f64 / ex.attempts.len().max(1) as f64;
            self.apply(Some(role), a.score, a.confidence * share, features, signals, details);
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

    pub(super) fn send_attempt(&self, a: &mut Attempt, now_ms: u64, callouts: &dyn Callouts, metrics: &dyn MetricsSink) {
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
}
