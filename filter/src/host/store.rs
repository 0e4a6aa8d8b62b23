//! The engine's ports over the real host: Envoy shared data and Envoy stats.

use super::abi;
use std::cell::Cell;
use crate::engine::ports::{Metric, MetricsSink, SetOutcome, SharedStore, StoreError};

/// Envoy's shared data (one map per `vm_id`, shared by every worker).
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        abi::shared_get(key).map_err(StoreError::Host)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError> {
        match abi::shared_set(key, value, cas) {
            Ok(true) => Ok(SetOutcome::Written),
            Ok(false) => Ok(SetOutcome::CasMismatch),
            Err(status) => Err(StoreError::Host(status)),
        }
    }
}

/// Every metric Vigil defines, with its Envoy name and kind. Envoy's stats are
/// process-wide, so the same name defined by each worker's VM is one stat.
const COUNTERS: [(Metric, &str); 9] = [
    (Metric::Requests, "vigil_requests_total"),
    (Metric::DecisionAllow, "vigil_decisions_total.decision.allow"),
    (Metric::DecisionFlag, "vigil_decisions_total.decision.flag"),
    (Metric::DecisionThrottle, "vigil_decisions_total.decision.throttle"),
    (Metric::DecisionBlock, "vigil_decisions_total.decision.block"),
    (Metric::Enforced, "vigil_enforced_total"),
    (Metric::StoreCasConflicts, "vigil_store_cas_conflicts_total"),
    (Metric::StoreEvictions, "vigil_store_evictions_total"),
    (Metric::StoreErrors, "vigil_store_errors_total"),
];
const GAUGES: [(Metric, &str); 2] = [
    (Metric::RateSlotsUsed, "vigil_rate_slots_used"),
    (Metric::SharedDataBytes, "vigil_shared_data_bytes"),
];
const PROCESSING_TIME: &str = "vigil_processing_time_us";

/// Envoy stats, batched: requests add to counters in this VM's memory, and
/// `flush` (on every tick) hands the deltas to Envoy. Each increment is a host
/// call, and host calls are the per-request budget; the price is up to one
/// tick of lag in `/stats`.
pub struct HostMetrics {
    ids: Vec<(Metric, u32)>,
    pending: Vec<Cell<u64>>,
    processing_time: u32,
}

impl HostMetrics {
    pub fn define() -> Result<HostMetrics, abi::Status> {
        let mut ids = Vec::with_capacity(COUNTERS.len() + GAUGES.len());
        for (m, name) in COUNTERS {
            ids.push((m, abi::define_metric(abi::COUNTER, name)?));
        }
        for (m, name) in GAUGES {
            ids.push((m, abi::define_metric(abi::GAUGE, name)?));
        }
        let processing_time = abi::define_metric(abi::HISTOGRAM, PROCESSING_TIME)?;
        let pending = ids.iter().map(|_| Cell::new(0)).collect();
        Ok(HostMetrics { ids, pending, processing_time })
    }

    pub fn record_processing_time(&self, micros: u64) {
        let _ = abi::record_metric(self.processing_time, micros);
    }

    /// Hands every pending delta to Envoy.
    pub fn flush(&self) {
        for ((_, id), pending) in self.ids.iter().zip(&self.pending) {
            let n = pending.take();
            if n > 0 && abi::increment_metric(*id, i64::try_from(n).unwrap_or(i64::MAX)).is_err() {
                // Keep it for the next flush rather than lose it.
                pending.set(n);
            }
        }
    }
}

impl MetricsSink for HostMetrics {
    fn add(&self, metric: Metric, n: u64) {
        if let Some(i) = self.ids.iter().position(|(m, _)| *m == metric) {
            if let Some(pending) = self.pending.get(i) {
                pending.set(pending.get().saturating_add(n));
            }
        }
    }
}
