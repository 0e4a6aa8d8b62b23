//! The engine's ports over the real host: Envoy shared data and Envoy stats.

use super::abi;
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
const GAUGES: [(Metric, &str); 1] = [(Metric::RateSlotsUsed, "vigil_rate_slots_used")];
pub const PROCESSING_TIME: &str = "vigil_processing_time_us";

/// Metric ids, resolved once at configure time.
pub struct HostMetrics {
    ids: Vec<(Metric, u32)>,
    pub processing_time: Option<u32>,
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
        let processing_time = Some(abi::define_metric(abi::HISTOGRAM, PROCESSING_TIME)?);
        Ok(HostMetrics { ids, processing_time })
    }

    pub fn record_processing_time(&self, micros: u64) {
        if let Some(id) = self.processing_time {
            let _ = abi::record_metric(id, micros);
        }
    }
}

impl MetricsSink for HostMetrics {
    fn add(&self, metric: Metric, n: u64) {
        if n == 0 {
            return;
        }
        if let Some((_, id)) = self.ids.iter().find(|(m, _)| *m == metric) {
            // A failed increment loses one count; it must not fail the request.
            let _ = abi::increment_metric(*id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}
