//! The engine's ports over the real host: Envoy shared data and Envoy stats.

use super::abi;
use std::cell::Cell;
use std::collections::HashMap;
use crate::engine::ml::{protocol::Failure, Role};
use crate::engine::ports::{Metric, MetricsSink, SetOutcome, SharedStore, StoreError, Table};
use crate::engine::traffic::series::Metric as TrafficMetric;

/// Envoy's shared data (one map per `vm_id`, shared by every worker).
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        #[cfg(feature = "census")]
        abi::census::key("get", key);
        abi::shared_get(key).map_err(StoreError::Host)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError> {
        #[cfg(feature = "census")]
        abi::census::key("set", key);
        match abi::shared_set(key, value, cas) {
            Ok(true) => Ok(SetOutcome::Written),
            Ok(false) => Ok(SetOutcome::CasMismatch),
            Err(status) => Err(StoreError::Host(status)),
        }
    }
}

/// Every metric Vigil defines, with its Envoy name and kind. Envoy's stats are
/// process-wide, so the same name defined by each worker's VM is one stat.
/// A `.decision.X` or `.table.X` suffix becomes a label through the
/// `stats_tags` rules in envoy.yaml.
const COUNTERS: [(Metric, &str); 28] = [
    (Metric::Requests, "vigil_requests_total"),
    (Metric::DecisionAllow, "vigil_decisions_total.decision.allow"),
    (Metric::DecisionFlag, "vigil_decisions_total.decision.flag"),
    (Metric::DecisionThrottle, "vigil_decisions_total.decision.throttle"),
    (Metric::DecisionBlock, "vigil_decisions_total.decision.block"),
    (Metric::Enforced, "vigil_enforced_total"),
    (Metric::StoreErrors, "vigil_store_errors_total"),
    (Metric::StoreCasConflicts(Table::Rate), "vigil_store_cas_conflicts_total.table.rate"),
    (Metric::StoreCasConflicts(Table::Profile), "vigil_store_cas_conflicts_total.table.profile"),
    (Metric::StoreEvictions(Table::Rate), "vigil_store_evictions_total.table.rate"),
    (Metric::StoreEvictions(Table::Profile), "vigil_store_evictions_total.table.profile"),
    (Metric::StoreExpired(Table::Profile), "vigil_store_expired_total.table.profile"),
    (Metric::StoreNotAdmitted(Table::Profile), "vigil_store_not_admitted_total.table.profile"),
    (Metric::ProfileCacheHits, "vigil_profile_cache_hits_total"),
    (Metric::ProfileCacheMisses, "vigil_profile_cache_misses_total"),
    (Metric::ProfileCold, "vigil_profile_cold_total"),
    (Metric::ProfileDeviations, "vigil_profile_deviations_total"),
    (Metric::ProfileEpisodes, "vigil_profile_episodes_total"),
    (Metric::PopulationDeviations, "vigil_population_deviations_total"),
    (Metric::StoreCasConflicts(Table::Traffic), "vigil_store_cas_conflicts_total.table.traffic"),
    (Metric::TrafficRequests, "vigil_traffic_requests_total"),
    (Metric::TrafficSeconds, "vigil_traffic_analyzed_seconds_total"),
    (Metric::TrafficAnomalies(TrafficMetric::Requests), "vigil_traffic_anomalies_total.metric.requests_per_s"),
    (Metric::TrafficAnomalies(TrafficMetric::LatencyP50), "vigil_traffic_anomalies_total.metric.latency_p50_ms"),
    (Metric::TrafficAnomalies(TrafficMetric::LatencyP95), "vigil_traffic_anomalies_total.metric.latency_p95_ms"),
    (Metric::TrafficAnomalies(TrafficMetric::LatencyP99), "vigil_traffic_anomalies_total.metric.latency_p99_ms"),
    (Metric::TrafficAnomalies(TrafficMetric::ClientErrorRate), "vigil_traffic_anomalies_total.metric.4xx_rate"),
    (Metric::TrafficAnomalies(TrafficMetric::ServerErrorRate), "vigil_traffic_anomalies_total.metric.5xx_rate"),
];
const GAUGES: [(Metric, &str); 8] = [
    (Metric::StoreSlotsUsed(Table::Rate), "vigil_store_slots_used.table.rate"),
    (Metric::StoreSlotsUsed(Table::Profile), "vigil_store_slots_used.table.profile"),
    (Metric::StoreBytes(Table::Rate), "vigil_store_bytes.table.rate"),
    (Metric::StoreBytes(Table::Profile), "vigil_store_bytes.table.profile"),
    (Metric::StoreBytes(Table::Traffic), "vigil_store_bytes.table.traffic"),
    (Metric::SharedDataBytes, "vigil_shared_data_bytes"),
    (Metric::StoreSlotsUsed(Table::Ml), "vigil_store_slots_used.table.ml"),
    (Metric::StoreBytes(Table::Ml), "vigil_store_bytes.table.ml"),
];

/// The model metrics, one set per model (`.model.X`), failures by reason
/// (`.reason.Y`): 2 x 10 failure counters, bounded at compile time.
type Named = Vec<(Metric, String)>;

fn ml_metrics() -> (Named, Named, Named) {
    let (mut counters, mut gauges, mut histograms) = (Vec::new(), Vec::new(), Vec::new());
    for role in Role::ALL {
        let r = role.as_str();
        counters.push((Metric::MlCalls(role), format!("vigil_ml_calls_total.model.{r}")));
        counters.push((Metric::MlRetries(role), format!("vigil_ml_retries_total.model.{r}")));
        counters.push((Metric::MlFallbacks(role), format!("vigil_ml_fallbacks_total.model.{r}")));
        for f in Failure::ALL {
            counters.push((Metric::MlFailures(role, f), format!("vigil_ml_failures_total.model.{r}.reason.{}", f.as_str())));
        }
        gauges.push((Metric::MlBreakerOpen(role), format!("vigil_ml_breaker_open.model.{r}")));
        histograms.push((Metric::MlLatency(role), format!("vigil_ml_latency_ms.model.{r}")));
    }
    counters.push((Metric::MlAbandoned, "vigil_ml_abandoned_total".to_string()));
    counters.push((Metric::StoreEvictions(Table::Ml), "vigil_store_evictions_total.table.ml".to_string()));
    counters.push((Metric::StoreCasConflicts(Table::Ml), "vigil_store_cas_conflicts_total.table.ml".to_string()));
    (counters, gauges, histograms)
}

/// Feedback, accuracy, drift, adaptive thresholds and the admin API.
fn feedback_metrics() -> (Named, Named, Named) {
    use crate::engine::feedback::{DETECTORS, DRIFT_SCOPES, TARGET_KINDS};
    use crate::engine::profile::standing::Label;
    let mut counters: Named = Vec::new();
    let mut gauges: Named = Vec::new();
    for label in [Label::FalsePositive, Label::ConfirmedThreat] {
        for target in TARGET_KINDS {
            counters.push((Metric::Feedback(label, target), format!("vigil_feedback_total.verdict.{}.target.{target}", label.as_str())));
        }
    }
    for d in DETECTORS {
        gauges.push((Metric::Precision(d), format!("vigil_detector_precision_permille.detector.{}", d.as_str())));
        gauges.push((Metric::Recall(d), format!("vigil_detector_recall_permille.detector.{}", d.as_str())));
    }
    for scope in DRIFT_SCOPES {
        counters.push((Metric::Drift(scope), format!("vigil_drift_total.scope.{scope}")));
    }
    counters.push((Metric::ThresholdAdjustments, "vigil_threshold_adjustments_total".to_string()));
    for outcome in crate::engine::admin::OUTCOMES {
        counters.push((Metric::AdminCalls(outcome), format!("vigil_admin_calls_total.outcome.{outcome}")));
    }
    for (t, name) in [(Table::Decisions, "decisions"), (Table::Feedback, "feedback")] {
        counters.push((Metric::StoreCasConflicts(t), format!("vigil_store_cas_conflicts_total.table.{name}")));
        gauges.push((Metric::StoreBytes(t), format!("vigil_store_bytes.table.{name}")));
    }
    counters.push((Metric::StoreEvictions(Table::Decisions), "vigil_store_evictions_total.table.decisions".to_string()));
    gauges.push((Metric::StoreSlotsUsed(Table::Decisions), "vigil_store_slots_used.table.decisions".to_string()));
    (counters, gauges, Vec::new())
}

/// Secondary keys (one set per configured key, `.key.<label>`: at most 8)
/// and route-anomaly attribution (`.role.X`).
fn keys_metrics(labels: &[String]) -> (Named, Named, Named) {
    use crate::engine::keys::{attribution::Role, KeyMetric};
    let (mut counters, mut gauges): (Named, Named) = (Vec::new(), Vec::new());
    for (i, label) in labels.iter().enumerate().take(crate::engine::keys::MAX_KEYS) {
        for m in KeyMetric::ALL {
            let entry = (Metric::Keys(m, i as u8), format!("{}.key.{label}", m.name()));
            if m.is_gauge() {
                gauges.push(entry);
            } else {
                counters.push(entry);
            }
        }
    }
    for role in Role::ALL {
        counters.push((Metric::Attribution(role), format!("vigil_attribution_total.role.{}", role.as_str())));
    }
    counters.push((Metric::DecisionReasons(crate::engine::keys::SIGNAL), "vigil_decision_reasons_total.reason.keys".to_string()));
    for (m, name) in [
        (Metric::StoreCasConflicts(Table::Keys), "vigil_store_cas_conflicts_total.table.keys"),
        (Metric::StoreEvictions(Table::Keys), "vigil_store_evictions_total.table.keys"),
        (Metric::StoreNotAdmitted(Table::Keys), "vigil_store_not_admitted_total.table.keys"),
    ] {
        counters.push((m, name.to_string()));
    }
    gauges.push((Metric::StoreSlotsUsed(Table::Keys), "vigil_store_slots_used.table.keys".to_string()));
    gauges.push((Metric::StoreBytes(Table::Keys), "vigil_store_bytes.table.keys".to_string()));
    (counters, gauges, Vec::new())
}

/// Alerts, notifications, events, decision reasons and the risk histogram.
fn reporting_metrics() -> (Named, Named, Named) {
    use crate::engine::config::Severity;
    use crate::engine::events::Kind;
    use crate::engine::outbox::{Channel, Outcome};
    let mut counters: Named = Vec::new();
    for s in Severity::ALL {
        counters.push((Metric::Alerts(s), format!("vigil_alerts_total.severity.{}", s.as_str())));
    }
    counters.push((Metric::AlertsSuppressed, "vigil_alerts_suppressed_total".to_string()));
    counters.push((Metric::EventsDropped, "vigil_siem_events_dropped_total".to_string()));
    for o in Outcome::ALL {
        counters.push((Metric::Outbox(Channel::Webhook, o), format!("vigil_notifications_total.outcome.{}", o.as_str())));
        counters.push((Metric::Outbox(Channel::Collector, o), format!("vigil_siem_batches_total.outcome.{}", o.as_str())));
    }
    for k in Kind::ALL {
        counters.push((Metric::Events(k), format!("vigil_events_total.kind.{}", k.signature_id())));
    }
    // The signals that can weigh in a decision: a fixed set, never per user.
    for name in [
        crate::engine::rate::SIGNAL,
        crate::engine::profile::SIGNAL,
        crate::engine::traffic::SIGNAL,
        crate::engine::ml::SIGNAL,
        crate::engine::ml::FAILURE_SIGNAL,
    ] {
        counters.push((Metric::DecisionReasons(name), format!("vigil_decision_reasons_total.reason.{name}")));
    }
    counters.push((Metric::StoreCasConflicts(Table::Alerts), "vigil_store_cas_conflicts_total.table.alerts".to_string()));
    counters.push((Metric::StoreEvictions(Table::Alerts), "vigil_store_evictions_total.table.alerts".to_string()));
    let gauges = vec![
        (Metric::StoreSlotsUsed(Table::Alerts), "vigil_store_slots_used.table.alerts".to_string()),
        (Metric::StoreBytes(Table::Alerts), "vigil_store_bytes.table.alerts".to_string()),
    ];
    let histograms = vec![(Metric::RiskScore, "vigil_risk_score_permille".to_string())];
    (counters, gauges, histograms)
}
const PROCESSING_TIME: &str = "vigil_processing_time_us";

/// Envoy stats, batched: requests add to counters in this VM's memory, and
/// `flush` (on every tick) hands the deltas to Envoy. Each increment is a host
/// call, and host calls are the per-request budget; the price is up to one
/// tick of lag in `/stats`.
pub struct HostMetrics {
    ids: Vec<(Metric, u32)>,
    /// Where each metric's pending delta is: about a hundred metrics, several
    /// adds per request, so no linear search.
    index: HashMap<Metric, usize>,
    /// Histograms are recorded at once (one host call per value).
    histograms: Vec<(Metric, u32)>,
    /// Signed: gauges go down too (counters only ever add).
    pending: Vec<Cell<i64>>,
    processing_time: u32,
}

impl HostMetrics {
    /// `key_labels`: the configured secondary keys' labels, in order.
    pub fn define(key_labels: &[String]) -> Result<HostMetrics, abi::Status> {
        let mut ids = Vec::with_capacity(COUNTERS.len() + GAUGES.len());
        for (m, name) in COUNTERS {
            ids.push((m, abi::define_metric(abi::COUNTER, name)?));
        }
        for (m, name) in GAUGES {
            ids.push((m, abi::define_metric(abi::GAUGE, name)?));
        }
        let mut histograms = Vec::new();
        for (counters, gauges, hists) in [ml_metrics(), reporting_metrics(), feedback_metrics(), keys_metrics(key_labels)] {
            for (m, name) in counters {
                ids.push((m, abi::define_metric(abi::COUNTER, &name)?));
            }
            for (m, name) in gauges {
                ids.push((m, abi::define_metric(abi::GAUGE, &name)?));
            }
            for (m, name) in hists {
                histograms.push((m, abi::define_metric(abi::HISTOGRAM, &name)?));
            }
        }
        let processing_time = abi::define_metric(abi::HISTOGRAM, PROCESSING_TIME)?;
        let pending = ids.iter().map(|_| Cell::new(0)).collect();
        let index = ids.iter().enumerate().map(|(i, (m, _))| (*m, i)).collect();
        Ok(HostMetrics { ids, index, histograms, pending, processing_time })
    }

    pub fn record_processing_time(&self, micros: u64) {
        let _ = abi::record_metric(self.processing_time, micros);
    }

    /// Hands every pending delta to Envoy.
    pub fn flush(&self) {
        for ((_, id), pending) in self.ids.iter().zip(&self.pending) {
            let n = pending.take();
            if n != 0 && abi::increment_metric(*id, n).is_err() {
                // Keep it for the next flush rather than lose it.
                pending.set(n);
            }
        }
    }
}

impl HostMetrics {
    fn change(&self, metric: Metric, delta: i64) {
        if let Some(&i) = self.index.get(&metric) {
            if let Some(pending) = self.pending.get(i) {
                pending.set(pending.get().saturating_add(delta));
            }
        }
    }
}

impl MetricsSink for HostMetrics {
    fn add(&self, metric: Metric, n: u64) {
        self.change(metric, i64::try_from(n).unwrap_or(i64::MAX));
    }
    fn sub(&self, metric: Metric, n: u64) {
        self.change(metric, -i64::try_from(n).unwrap_or(i64::MAX));
    }
    fn record(&self, metric: Metric, value: u64) {
        if let Some((_, id)) = self.histograms.iter().find(|(m, _)| *m == metric) {
            let _ = abi::record_metric(*id, value);
        }
    }
}
