//! `async`: the request goes on. Calls wait in a bounded per-worker queue and
//! go out from the tick, from the root context (which outlives the request);
//! the answer is kept per identity in shared data (`answers`), where the
//! identity's next requests, on any worker, find it. Retries wait a jittered
//! exponential backoff.

use super::breaker::{self, Permit};
use super::protocol::Failure;
use super::{refused_for_good, vector, Ml, Worker, ASKED_SLOTS, MAX_SENDS_PER_TICK};

/// While an identity's local risk is in the grey zone or above, it is asked
/// about again after this long, not after the whole interval.
const GREY_REASK_MS: u64 = 1_000;
use crate::engine::features::{Features, Signal, ThreatDetail};
use crate::engine::identity::IdentityKind;
use crate::engine::ports::{Callouts, Metric, MetricsSink, SharedStore, StoreError};

/// One `async` call, queued or in flight.
pub(super) struct Job {
    model: usize,
    identity: u64,
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
    /// the request). An identity is asked about a kind of request
    /// (`vector::fingerprint`) once per `async_min_interval_seconds`, or once a
    /// second while its local risk is in the grey zone or above. Anonymous
    /// requests are not asked about: they share one hash, so no answer could
    /// be kept for them.
    pub fn enqueue(
        &self,
        features: &Features,
        vector: &vector::Vector,
        local_risk: f64,
        now_ms: u64,
        metrics: &dyn MetricsSink,
        log: &mut Vec<String>,
    ) {
        if features.identity.kind == IdentityKind::Anonymous {
            return;
        }
        let kind = vector::fingerprint(vector);
        let interval = if local_risk >= self.grey.0 { GREY_REASK_MS.min(self.min_interval_ms) } else { self.min_interval_ms };
        if self.asked_within(features.identity.hash, kind, interval, now_ms) {
            return;
        }
        let mut queued = false;
        for (i, m) in self.models.iter().enumerate() {
            if self.worker.borrow().jobs.len() >= self.max_pending {
                metrics.add(Metric::MlFailures(m.role, Failure::QueueFull), 1);
                continue;
            }
            let job = Job {
                model: i,
                identity: features.identity.hash,
                request_id: features.request_id.clone(),
                body: self.body(m, features, vector, log),
                tries: 0,
                due_ms: now_ms,
                token: None,
                sent_ms: now_ms,
            };
            self.worker.borrow_mut().jobs.push_back(job);
            queued = true;
        }
        // Only a call actually queued counts as asking: a full queue leaves the
        // identity free to be asked about on its next request.
        if queued {
            self.remember_ask(features.identity.hash, kind, now_ms);
        }
    }

    /// The slot of (identity, kind): each kind of an identity's requests has
    /// its own, so alternating kinds do not evict each other.
    fn ask_slot(identity: u64, kind: u32) -> usize {
        let mixed = (identity ^ u64::from(kind).rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ((mixed >> 32) % ASKED_SLOTS as u64) as usize
    }

    /// Whether `identity` was asked about a request of `kind` less than
    /// `interval_ms` ago (on this worker).
    fn asked_within(&self, identity: u64, kind: u32, interval_ms: u64, now_ms: u64) -> bool {
        if interval_ms == 0 {
            return false;
        }
        let w = self.worker.borrow();
        w.asked
            .get(Self::ask_slot(identity, kind))
            .is_some_and(|&(id, k, at)| id == identity && k == kind && now_ms.saturating_sub(at) < interval_ms)
    }

    fn remember_ask(&self, identity: u64, kind: u32, now_ms: u64) {
        let mut w = self.worker.borrow_mut();
        if w.asked.is_empty() {
            w.asked = vec![(0, 0, 0); ASKED_SLOTS];
        }
        if let Some(slot) = w.asked.get_mut(Self::ask_slot(identity, kind)) {
            *slot = (identity, kind, now_ms);
        }
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
                if let Some(answers) = &self.answers {
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
