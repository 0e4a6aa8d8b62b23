//! `async`: the request goes on. Calls wait in a bounded per-worker queue and
//! go out from the tick, from the root context (which outlives the request);
//! the answer is kept per identity in shared data (`answers`), where the
//! identity's next requests, on any worker, find it. Retries wait a jittered
//! exponential backoff.

use super::breaker::{self, Permit};
use super::protocol::Failure;
use super::{refused_for_good, vector, Ml, Worker, ASKED_SLOTS, MAX_SENDS_PER_TICK};
use crate::engine::features::{Features, Signal, ThreatDetail};
use crate::engine::identity::IdentityKind;
use crate::engine::ports::{Callouts, Metric, MetricsSink, SharedStore, StoreError};

/// One `async` call, queued or in flight.
pub(super) struct Job {
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

impl Ml {
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
}
