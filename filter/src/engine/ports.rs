//! The engine's only ways out to the world, as traits. The host side
//! implements them over proxy-wasm; tests use the in-memory versions below.

/// Failure of the host's shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The host answered with an unexpected status code.
    Host(u32),
    /// Too many compare-and-swap conflicts in a row; the update was dropped.
    Contended,
    /// The table is full of records worth more than the newcomer; it was not stored.
    NotAdmitted,
}

/// Outcome of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Written,
    /// Someone wrote the key since we read it.
    CasMismatch,
}

/// A key-value store shared by every worker, with compare-and-swap: Envoy's
/// shared data. There is no delete and no TTL; `cas == 0` writes
/// unconditionally (and creates), any other value must match the current one.
pub trait SharedStore {
    /// The value and its CAS token, or `None` when the key was never written.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError>;
}

/// The shared tables, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Rate,
    Profile,
    Traffic,
    /// `async` model answers, per identity.
    Ml,
    /// Alert keys and when they last fired.
    Alerts,
    /// Recent flagged or refused decisions, for feedback by request id.
    Decisions,
    /// Route groups' thresholds and feedback accuracy.
    Feedback,
    /// Secondary keys' values, their populations and routes' contributors.
    Keys,
}

/// Every number the engine reports. Kept as an enum so label cardinality is
/// fixed at compile time: nothing here can be per user or per path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Requests,
    DecisionAllow,
    DecisionFlag,
    DecisionThrottle,
    DecisionBlock,
    /// Requests answered locally (throttle/block) in enforce mode.
    Enforced,
    /// A step failed on the store and failed open.
    StoreErrors,
    StoreCasConflicts(Table),
    /// A live record was replaced to make room for another identity.
    StoreEvictions(Table),
    /// An expired record was reclaimed by the cleanup.
    StoreExpired(Table),
    /// A newcomer was worth less than every record it could replace.
    StoreNotAdmitted(Table),
    /// Slots holding a record (a gauge, bounded by the table size).
    StoreSlotsUsed(Table),
    /// Bytes of keys and values the table holds in shared data (a gauge).
    StoreBytes(Table),
    /// Bytes of keys and values Vigil holds in shared data, all tables (a gauge).
    SharedDataBytes,
    /// A request found its identity's profile in this worker's cache.
    ProfileCacheHits,
    ProfileCacheMisses,
    /// A profile too young to score (cold start).
    ProfileCold,
    /// A behavioural score at or above `deviation_threshold`.
    ProfileDeviations,
    /// A deviation opened an episode (the identity stays suspect).
    ProfileEpisodes,
    /// A newcomer's population score at or above `deviation_threshold`.
    PopulationDeviations,
    /// Requests counted by the traffic analysis (once, whichever worker saw them).
    TrafficRequests,
    /// Seconds analysed (once each, by whichever VM holds the lease).
    TrafficSeconds,
    /// A traffic series became anomalous (an onset, not every second of it).
    TrafficAnomalies(crate::engine::traffic::series::Metric),
    /// Attempts sent to a model (first attempts and retries).
    MlCalls(crate::engine::ml::Role),
    MlRetries(crate::engine::ml::Role),
    /// An attempt that failed, or a call never sent, by reason.
    MlFailures(crate::engine::ml::Role, crate::engine::ml::protocol::Failure),
    /// A call that ended without an answer: the failure mode decided.
    MlFallbacks(crate::engine::ml::Role),
    /// Workers whose breaker for the model is open (a gauge).
    MlBreakerOpen(crate::engine::ml::Role),
    /// Model response time in ms (a histogram).
    MlLatency(crate::engine::ml::Role),
    /// Requests that ended while waiting for a model.
    MlAbandoned,
    /// Alerts fired (and escalations), by severity.
    Alerts(crate::engine::config::Severity),
    /// A condition held but its key was within its cooldown.
    AlertsSuppressed,
    /// Deliveries (alert webhooks, SIEM batches), by outcome.
    Outbox(crate::engine::outbox::Channel, crate::engine::outbox::Outcome),
    /// Security events, by kind.
    Events(crate::engine::events::Kind),
    /// Events not batched for the collector: the worker already held its bound.
    EventsDropped,
    /// Decisions above `allow`, by signal that weighed in.
    DecisionReasons(&'static str),
    /// Risk score of a request, in thousandths (a histogram, sampled).
    RiskScore,
    /// Operator feedback taken, by verdict and target.
    Feedback(crate::engine::profile::standing::Label, &'static str),
    /// Precision and recall from feedback, in thousandths (gauges).
    Precision(crate::engine::feedback::Detector),
    Recall(crate::engine::feedback::Detector),
    /// A baseline that followed a lasting shift, by scope (`identity`, `route`).
    Drift(&'static str),
    /// The controller moved a route group's thresholds.
    ThresholdAdjustments,
    /// Admin API calls, by outcome (`ok`, `unauthorized`, `bad_request`, `rate_limited`, ...).
    AdminCalls(&'static str),
    /// Secondary keys, per configured key (its index in `secondary_keys.keys`).
    Keys(crate::engine::keys::KeyMetric, u8),
    /// Requests on an anomalous route, by whether they drive the anomaly.
    Attribution(crate::engine::keys::attribution::Role),
}

pub trait MetricsSink {
    fn add(&self, metric: Metric, n: u64);
    /// Lowers a gauge.
    fn sub(&self, metric: Metric, n: u64);
    /// Records one value of a histogram.
    fn record(&self, _metric: Metric, _value: u64) {}
}

/// An HTTP call to an Envoy cluster (a model server). The answer comes back
/// by token to the context that sent it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub cluster: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub request_id: &'a str,
    /// A JSON body, POSTed.
    pub body: &'a [u8],
    pub timeout_ms: u64,
    /// Extra headers (beyond method, path, authority, content type, request id).
    pub headers: &'a [(String, String)],
    /// `x-vigil-feature-version`, on model calls.
    pub feature_version: Option<&'a str>,
}

pub trait Callouts {
    /// Sends the call; the token its answer will carry, or the host's status.
    fn send(&self, call: &Call) -> Result<u32, u32>;
}

/// A sink that drops everything (benchmarks, and callers that do not care).
pub struct NoMetrics;

impl MetricsSink for NoMetrics {
    fn add(&self, _: Metric, _: u64) {}
    fn sub(&self, _: Metric, _: u64) {}
}

pub mod memory {
    //! In-memory stand-ins with the host's semantics, for tests and benches.
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct MemoryStore {
        data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        /// The next this-many conditional writes fail their CAS, as if another
        /// worker had written first.
        pub inject_conflicts: Cell<u32>,
        /// Host calls as the real store would count them: gets and sets.
        pub reads: Cell<u64>,
        pub writes: Cell<u64>,
    }

    impl MemoryStore {
        pub fn len(&self) -> usize {
            self.data.borrow().len()
        }
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }
        pub fn bytes(&self) -> usize {
            self.data.borrow().iter().map(|(k, (v, _))| k.len() + v.len()).sum()
        }
    }

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.reads.set(self.reads.get() + 1);
            Ok(self.data.borrow().get(key).cloned())
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError> {
            self.writes.set(self.writes.get() + 1);
            let mut data = self.data.borrow_mut();
            if cas != 0 && self.inject_conflicts.get() > 0 {
                self.inject_conflicts.set(self.inject_conflicts.get() - 1);
                if let Some(entry) = data.get_mut(key) {
                    // Another writer bumps the token without changing the value.
                    self.next_cas.set(self.next_cas.get() + 1);
                    entry.1 = self.next_cas.get();
                }
                return Ok(SetOutcome::CasMismatch);
            }
            if let Some((_, current)) = data.get(key) {
                if cas != 0 && cas != *current {
                    return Ok(SetOutcome::CasMismatch);
                }
            }
            self.next_cas.set(self.next_cas.get() + 1);
            data.insert(key.to_string(), (value.to_vec(), self.next_cas.get()));
            Ok(SetOutcome::Written)
        }
    }

    #[derive(Default)]
    pub struct MemoryMetrics {
        counts: RefCell<HashMap<Metric, i64>>,
        pub recorded: RefCell<Vec<(Metric, u64)>>,
    }

    impl MemoryMetrics {
        pub fn get(&self, m: Metric) -> u64 {
            u64::try_from(self.counts.borrow().get(&m).copied().unwrap_or(0)).unwrap_or(0)
        }
    }

    impl MetricsSink for MemoryMetrics {
        fn add(&self, metric: Metric, n: u64) {
            *self.counts.borrow_mut().entry(metric).or_default() += i64::try_from(n).unwrap_or(i64::MAX);
        }
        fn sub(&self, metric: Metric, n: u64) {
            *self.counts.borrow_mut().entry(metric).or_default() -= i64::try_from(n).unwrap_or(i64::MAX);
        }
        fn record(&self, metric: Metric, value: u64) {
            self.recorded.borrow_mut().push((metric, value));
        }
    }

    /// A call as sent: token, cluster, path, body.
    pub type SentCall = (u32, String, String, Vec<u8>);

    /// Calls as sent: tokens count up from 1; `refuse` makes the host refuse.
    #[derive(Default)]
    pub struct MemoryCallouts {
        pub sent: RefCell<Vec<SentCall>>,
        pub refuse: Cell<bool>,
    }

    impl MemoryCallouts {
        pub fn last_token(&self) -> u32 {
            self.sent.borrow().last().map_or(0, |c| c.0)
        }
        pub fn count(&self) -> usize {
            self.sent.borrow().len()
        }
    }

    impl Callouts for MemoryCallouts {
        fn send(&self, call: &Call) -> Result<u32, u32> {
            if self.refuse.get() {
                return Err(2);
            }
            let mut sent = self.sent.borrow_mut();
            let token = sent.len() as u32 + 1;
            sent.push((token, call.cluster.to_string(), call.path.to_string(), call.body.to_vec()));
            Ok(token)
        }
    }
}
