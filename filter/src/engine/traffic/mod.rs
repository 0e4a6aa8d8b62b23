//! Time-series traffic analysis: how anomalous is the traffic right now,
//! for the whole listener and per route (volume, latency quantiles, 4xx and
//! 5xx rates).
//!
//! The work is split so that no request pays for it:
//! - **request path** (`record`, `read`): each completed request adds to this
//!   worker's tally of the current second; each new request reads its route's
//!   score from this worker's copy of the last published snapshot. No host
//!   call; the only allocation is a route's name, once per second it is seen.
//! - **every tick, every worker** (`on_tick`): finished seconds are merged
//!   into a pending record in shared data (compare-and-swap, lossless); once
//!   a newer snapshot is due, the worker reads it.
//! - **once per second, one VM** (the lease holder): the pending seconds are
//!   drained, the series are scored (`analyzer`), and the new snapshot is
//!   published. The analysis state lives in shared data, so any worker can
//!   take over.
//!
//! The same detector runs offline in `vigil-replay`, measured on NAB.

pub mod analyzer;
pub mod detector;
pub mod series;
pub mod tally;

use super::codec::{Reader, Writer};
use super::config::TimeSeriesAnalysis;
use super::lease::Lease;
use super::record;
use super::ports::{Metric, MetricsSink, SetOutcome, SharedStore, StoreError, Table};
use analyzer::{Settings, Snapshot, State};
use std::cell::RefCell;
use tally::Counts;

pub const SIGNAL: &str = "traffic";

/// Routes a worker tallies by name in one second; more fold into "other".
const LOCAL_ROUTES: usize = 64;
/// Seconds the pending record holds; beyond that (no analyser running) the
/// oldest are merged together, so the record stays bounded and loses nothing.
const MAX_PENDING_SECONDS: usize = 8;
/// Finished seconds a worker keeps while shared data refuses them.
const MAX_READY: usize = 4;
const LEASE_MS: u64 = 3_000;
/// A second is analysed once it ended this long ago: every worker has had
/// several ticks to hand it in.
const GRACE_S: u64 = 1;
/// After a pause (no analyser), at most this many seconds are replayed.
const CATCH_UP_S: u64 = 30;
/// A snapshot older than this says nothing about now.
const STALE_S: u64 = 10;

/// What the analysis says about one request's moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub score: f64,
    /// Why, when the score reaches the threshold: metric, scope, value, baseline.
    pub detail: Option<String>,
    /// The score is the whole listener's (or the untracked routes' together),
    /// and this request's route is not anomalous itself: something is wrong
    /// somewhere else.
    pub elsewhere: bool,
}

/// What a tick has to say: anomaly onsets (each a security event too),
/// drifts and problems with shared data.
#[derive(Debug, Default)]
pub struct TickReport {
    pub onsets: Vec<String>,
    /// Series whose normal shifted for good (anomalous for the drift time):
    /// their baselines were re-learned at the new level. One line per drift,
    /// from the VM that ran the analysis only:
    /// `traffic: drift on {scope} ({metric}): {old} -> {new} for {n} min; baseline re-learned`.
    pub drifts: Vec<String>,
    pub problems: Vec<String>,
}

/// What the lease holder's analysis found, as lines for people.
#[derive(Debug, Default)]
struct Found {
    onsets: Vec<String>,
    drifts: Vec<String>,
}

pub struct Traffic {
    settings: Settings,
    keys: Keys,
    local: RefCell<Local>,
    view: RefCell<View>,
}

struct Keys {
    lease: String,
    pending: String,
    state: String,
    snapshot: String,
}

#[derive(Default)]
struct Local {
    second: u64,
    counts: Counts,
    /// Finished seconds not yet in shared data.
    ready: Vec<(u64, Counts)>,
}

#[derive(Default)]
struct View {
    cas: u32,
    snapshot: Snapshot,
}

impl Traffic {
    pub fn new(cfg: &TimeSeriesAnalysis) -> Self {
        let window_s = u64::from(cfg.analysis_window_minutes) * 60;
        let params = detector::Params {
            long_samples: window_s as f64,
            warmup: (window_s / 4).clamp(30, 600),
            ..detector::Params::default()
        };
        let settings = Settings {
            params,
            alpha: 1.0 / window_s.max(1) as f64,
            threshold: detector::threshold(cfg.anomaly_sensitivity),
            max_routes: cfg.max_routes as usize,
            idle_s: window_s,
            drift_s: u64::from(cfg.drift_minutes) * 60,
            floors: series::Floors(cfg.min_change.by_metric()),
        };
        // Settings that change the state's shape get their own keys.
        let prefix = format!("vigil/traffic/{}/{}/", cfg.max_routes, cfg.analysis_window_minutes);
        let key = |name: &str| format!("{prefix}{name}");
        Traffic {
            settings,
            keys: Keys { lease: key("lease"), pending: key("pending"), state: key("state"), snapshot: key("snapshot") },
            local: RefCell::new(Local::default()),
            view: RefCell::new(View::default()),
        }
    }

    pub fn threshold(&self) -> f64 {
        self.settings.threshold
    }

    /// Creates the lease and pending keys (state and snapshot follow with the
    /// first analysis: four keys in all), counting their bytes.
    pub fn start(&self, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<(), StoreError> {
        let lease = Lease::create(&self.keys.lease, store)?;
        metrics.add(Metric::SharedDataBytes, lease);
        metrics.add(Metric::StoreBytes(Table::Traffic), lease);
        let mut empty = Vec::new();
        encode_pending(&[], &mut empty);
        if store.get(&self.keys.pending)?.is_none() {
            store.set(&self.keys.pending, &empty, 0)?;
            resized(metrics, &self.keys.pending, None, empty.len());
        }
        Ok(())
    }

    /// One completed request (request path: local memory only).
    pub fn record(&self, route: &str, status: Option<u16>, latency_us: Option<u64>, now_ms: u64) {
        let second = now_ms / 1000;
        let mut local = self.local.borrow_mut();
        if second > local.second {
            local.roll(second);
        }
        local.counts.add(route, LOCAL_ROUTES, status, latency_us);
    }

    /// The traffic score for a request to `route` now (request path: reads
    /// this worker's snapshot copy). `None` before the first analysis or when
    /// the analysis stopped.
    pub fn read(&self, route: &str, now_ms: u64) -> Option<Assessment> {
        let view = self.view.borrow();
        let snap = &view.snapshot;
        if snap.second == 0 || now_ms / 1000 > snap.second + STALE_S {
            return None;
        }
        let (listener, own) = snap.for_route(route);
        let top = match (listener, own) {
            (Some(l), Some(o)) => Some(if o.score >= l.score { o } else { l }),
            (l, o) => l.or(o),
        }?;
        let score = f64::from(top.score);
        // The catch-all "other" series, like the listener, is many routes'
        // together: not this route's own anomaly.
        let own_score = own.filter(|o| o.scope != analyzer::Scope::Other).map_or(0.0, |o| f64::from(o.score));
        let elsewhere = own_score < self.settings.threshold && score >= self.settings.threshold;
        let detail = (score >= self.settings.threshold).then(|| {
            format!(
                "{} on {} {:.2}: {} vs baseline {}",
                top.metric.as_str(),
                top.scope.as_str(),
                score,
                number(top.value),
                number(top.baseline)
            )
        });
        Some(Assessment { score, detail, elsewhere })
    }

    /// Periodic work: hand finished seconds to shared data, analyse when due
    /// and this VM holds the lease, refresh the snapshot copy.
    pub fn on_tick(&self, now_ms: u64, instance: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> TickReport {
        let now_s = now_ms / 1000;
        {
            let mut local = self.local.borrow_mut();
            if now_s > local.second {
                local.roll(now_s);
            }
        }
        let mut report = TickReport::default();
        if let Err(e) = self.flush(store, metrics) {
            // Kept for the next tick; the analysis of what others handed in goes on.
            report.problems.push(format!("traffic: cannot hand counts to shared data: {e:?}"));
        }
        let due = now_s.saturating_sub(1 + GRACE_S);
        // Until a newer second is due, this worker's snapshot copy is current:
        // no analysis to try, nothing to read.
        if self.view.borrow().snapshot.second >= due {
            return report;
        }
        match self.analyze(due, now_ms, instance, store, metrics) {
            Ok(found) => {
                report.onsets = found.onsets;
                report.drifts = found.drifts;
            }
            Err(e) => report.problems.push(format!("traffic: analysis failed: {e:?}")),
        }
        if let Err(e) = self.refresh(store) {
            report.problems.push(format!("traffic: cannot read the snapshot: {e:?}"));
        }
        report
    }

    /// Merges this worker's finished seconds into the pending record.
    fn flush(&self, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<(), StoreError> {
        let ready = std::mem::take(&mut self.local.borrow_mut().ready);
        if ready.is_empty() {
            return Ok(());
        }
        let merged = cas_update(store, metrics, &self.keys.pending, |mut pending| {
            for (second, counts) in &ready {
                match pending.iter_mut().find(|(s, _)| s == second) {
                    Some((_, c)) => c.merge(counts, LOCAL_ROUTES),
                    None => {
                        pending.push((*second, counts.clone()));
                        pending.sort_by_key(|(s, _)| *s);
                    }
                }
            }
            while pending.len() > MAX_PENDING_SECONDS {
                // No analyser for a while: fold the oldest second into the next.
                let (_, oldest) = pending.remove(0);
                if let Some((_, next)) = pending.first_mut() {
                    next.merge(&oldest, LOCAL_ROUTES);
                }
            }
            (pending, ())
        });
        if merged.is_err() {
            // Keep them for the next tick.
            let mut local = self.local.borrow_mut();
            for (second, counts) in ready {
                local.keep_ready(second, counts);
            }
        }
        merged
    }

    /// Analyses every second up to `due` not yet analysed, if this VM holds the lease.
    fn analyze(
        &self,
        due: u64,
        now_ms: u64,
        instance: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
    ) -> Result<Found, StoreError> {
        let lease = Lease { key: &self.keys.lease, holder: instance, duration_ms: LEASE_MS };
        if lease.acquire(store, now_ms)?.is_none() {
            return Ok(Found::default());
        }
        let s = &self.settings;
        let (mut state, state_cas, state_len) = match store.get(&self.keys.state)? {
            Some((bytes, cas)) => (
                State::decode(&bytes, s).unwrap_or_else(|| State::new(due.saturating_sub(1), s)),
                cas,
                Some(bytes.len()),
            ),
            None => (State::new(due.saturating_sub(1), s), 0, None),
        };
        if state.cursor >= due {
            return Ok(Found::default());
        }
        let from = state.cursor.max(due.saturating_sub(CATCH_UP_S)) + 1;
        let drained = cas_update(store, metrics, &self.keys.pending, |pending| {
            let (now, later): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(sec, _)| *sec <= due);
            (later, now)
        })?;

        // Late counts (for seconds already analysed) join the first second analysed.
        let mut per_second: Vec<Counts> = (from..=due).map(|_| Counts::default()).collect();
        let mut requests = 0;
        for (second, counts) in &drained {
            requests += counts.total().requests;
            let at = second.saturating_sub(from).min(due - from) as usize;
            if let Some(c) = per_second.get_mut(at) {
                c.merge(counts, LOCAL_ROUTES);
            }
        }
        metrics.add(Metric::TrafficRequests, requests);

        let mut found = Found::default();
        let mut snapshot = Snapshot::default();
        for (second, counts) in (from..=due).zip(&per_second) {
            let analysis = state.analyze(second, counts, s);
            metrics.add(Metric::TrafficSeconds, 1);
            for o in analysis.onsets {
                metrics.add(Metric::TrafficAnomalies(o.metric), 1);
                // A young route has no baseline of its own yet: it was judged
                // against the established routes.
                let against = if o.young { "established routes'" } else { "baseline" };
                found.onsets.push(format!(
                    "traffic anomaly: {} on {} scored {:.2} ({} vs {against} {})",
                    o.metric.as_str(),
                    o.scope.as_str(),
                    o.score,
                    number(o.value as f32),
                    number(o.baseline as f32)
                ));
            }
            for d in analysis.drifts {
                found.drifts.push(format!(
                    "traffic: drift on {} ({}): {} -> {} for {} min; baseline re-learned",
                    d.scope.as_str(),
                    d.metric.as_str(),
                    level(d.metric, d.from),
                    level(d.metric, d.to),
                    d.seconds / 60
                ));
            }
            snapshot = Snapshot { second, scopes: analysis.scores };
        }
        let mut bytes = Vec::new();
        state.encode(&mut bytes);
        if store.set(&self.keys.state, &bytes, state_cas)? == SetOutcome::CasMismatch {
            // Another VM advanced the state (the lease lapsed under us): its word stands.
            // Our re-learned baselines are discarded with our state, so our
            // drifts did not happen: the state that stands reports its own.
            metrics.add(Metric::StoreCasConflicts(Table::Traffic), 1);
            found.drifts.clear();
            return Ok(found);
        }
        resized(metrics, &self.keys.state, state_len, bytes.len());
        let (snapshot_len, snapshot_cas) = match store.get(&self.keys.snapshot)? {
            Some((old, cas)) => (Some(old.len()), cas),
            None => (None, 0),
        };
        let mut bytes = Vec::new();
        snapshot.encode(&mut bytes);
        if store.set(&self.keys.snapshot, &bytes, snapshot_cas)? == SetOutcome::Written {
            resized(metrics, &self.keys.snapshot, snapshot_len, bytes.len());
        }
        Ok(found)
    }

    /// Reads the published snapshot if it changed since this worker's copy.
    fn refresh(&self, store: &dyn SharedStore) -> Result<(), StoreError> {
        let Some((bytes, cas)) = store.get(&self.keys.snapshot)? else { return Ok(()) };
        let mut view = self.view.borrow_mut();
        if cas != view.cas {
            if let Some(snapshot) = Snapshot::decode(&bytes) {
                *view = View { cas, snapshot };
            }
        }
        Ok(())
    }
}

impl Local {
    /// Closes the current second: its counts wait for the next flush.
    fn roll(&mut self, second: u64) {
        let counts = std::mem::take(&mut self.counts);
        let finished = self.second;
        self.second = second;
        if !counts.is_empty() {
            self.keep_ready(finished, counts);
        }
    }

    fn keep_ready(&mut self, second: u64, counts: Counts) {
        let full = self.ready.len() >= MAX_READY;
        let same = self.ready.iter().position(|(s, _)| *s == second);
        match (same, full) {
            (Some(i), _) => {
                if let Some((_, c)) = self.ready.get_mut(i) {
                    c.merge(&counts, LOCAL_ROUTES);
                }
            }
            (None, false) => self.ready.push((second, counts)),
            // Shared data has refused us for a while: fold into the newest.
            (None, true) => {
                if let Some((_, c)) = self.ready.last_mut() {
                    c.merge(&counts, LOCAL_ROUTES);
                }
            }
        }
    }
}

/// Reads, changes and writes the pending record with compare-and-swap
/// (`record::update`). `f` returns the new record and a result. An
/// unreadable record starts over empty.
fn cas_update<T>(
    store: &dyn SharedStore,
    metrics: &dyn MetricsSink,
    key: &str,
    mut f: impl FnMut(Vec<(u64, Counts)>) -> (Vec<(u64, Counts)>, T),
) -> Result<T, StoreError> {
    record::update(store, metrics, Table::Traffic, key, |bytes| {
        let (next, out) = f(bytes.and_then(decode_pending).unwrap_or_default());
        let mut encoded = Vec::new();
        encode_pending(&next, &mut encoded);
        (Some(encoded), out)
    })
}

/// The byte gauges after a write to one of traffic's keys.
fn resized(metrics: &dyn MetricsSink, key: &str, old: Option<usize>, new: usize) {
    record::resized(metrics, Table::Traffic, key, old, new);
}

fn encode_pending(seconds: &[(u64, Counts)], out: &mut Vec<u8>) {
    let mut w = Writer(out);
    w.u8(seconds.len().min(255) as u8);
    for (second, counts) in seconds.iter().take(255) {
        w.u64(*second);
        counts.encode(&mut w);
    }
}

fn decode_pending(bytes: &[u8]) -> Option<Vec<(u64, Counts)>> {
    let mut r = Reader(bytes);
    let n = r.u8()?;
    let mut out = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        out.push((r.u64()?, Counts::decode(&mut r)?));
    }
    r.is_empty().then_some(out)
}

/// A series' level for people, with its unit.
fn level(metric: series::Metric, v: f64) -> String {
    use series::Metric as M;
    match metric {
        M::Requests => format!("{} req/s", number(v as f32)),
        M::LatencyP50 | M::LatencyP95 | M::LatencyP99 => format!("{} ms", number(v as f32)),
        M::ClientErrorRate | M::ServerErrorRate => format!("{:.1}%", 100.0 * v),
    }
}

/// A value for people: no more digits than it deserves.
fn number(v: f32) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::TimeSeriesAnalysis;
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    fn cfg() -> TimeSeriesAnalysis {
        TimeSeriesAnalysis { enable_traffic_analysis: true, analysis_window_minutes: 2, anomaly_sensitivity: 0.8, max_routes: 4, drift_minutes: 10, ..TimeSeriesAnalysis::default() }
    }

    /// Two workers, each seeing half the traffic, ticking every 100 ms.
    struct Two {
        store: MemoryStore,
        metrics: MemoryMetrics,
        workers: [Traffic; 2],
        now_ms: u64,
    }

    impl Two {
        fn new() -> Self {
            Two::with(cfg())
        }

        fn with(c: TimeSeriesAnalysis) -> Self {
            let t = Two { store: MemoryStore::default(), metrics: MemoryMetrics::default(), workers: [Traffic::new(&c), Traffic::new(&c)], now_ms: 1_700_000_000_000 };
            t.workers.iter().for_each(|w| { w.start(&t.store, &t.metrics).unwrap(); });
            t
        }

        /// One second: `per_route` requests to each route, spread over ten
        /// ticks and both workers; `status` and `latency_ms` for all of them.
        fn second(&mut self, routes: &[(&str, u64, u16, u64)]) -> Vec<String> {
            let mut lines = Vec::new();
            for tick in 0..10u64 {
                for &(route, n, status, ms) in routes {
                    for i in 0..n {
                        if i % 10 == tick {
                            self.workers[(i % 2) as usize].record(route, Some(status), Some(ms * 1000), self.now_ms);
                        }
                    }
                }
                self.now_ms += 100;
                for (k, w) in self.workers.iter().enumerate() {
                    let report = w.on_tick(self.now_ms, k as u64 + 1, &self.store, &self.metrics);
                    lines.extend(report.onsets.into_iter().chain(report.drifts).chain(report.problems));
                }
            }
            lines
        }
    }

    #[test]
    fn every_request_is_counted_once_and_each_second_analysed_once() {
        let mut t = Two::new();
        for s in 0..60 {
            t.second(&[("/a", 40 + s % 7, 200, 5), ("/b", 10, 200, 20), ("/c", 3, 404, 1)]);
        }
        let a = t.workers[1].read("/a", t.now_ms).unwrap();
        assert!(a.score < 0.5 && a.detail.is_none(), "{a:?}");
        // The last seconds are handed in and analysed on later ticks.
        for _ in 0..3 {
            t.second(&[]);
        }
        let sent: u64 = (0..60).map(|s| 40 + s % 7 + 13).sum();
        assert_eq!(t.metrics.get(Metric::TrafficRequests), sent);
        let seconds = t.metrics.get(Metric::TrafficSeconds);
        assert!((60..=64).contains(&seconds), "{seconds} seconds analysed in 63");
        assert_eq!(t.metrics.get(Metric::StoreBytes(Table::Traffic)), t.store.bytes() as u64, "the gauge is exact");
    }

    #[test]
    fn an_outage_is_read_by_every_worker_with_its_metric_and_route() {
        let mut t = Two::new();
        for s in 0..90 {
            let lines = t.second(&[("/a", 40 + s % 7, 200, 5), ("/b", 20 + s % 3, 200, 5)]);
            assert!(lines.is_empty(), "steady second {s}: {lines:?}");
        }
        let mut lines = Vec::new();
        let mut flagged_after = None;
        for s in 0..6 {
            lines.extend(t.second(&[("/a", 40, 200, 5), ("/b", 20, 503, 5)]));
            if flagged_after.is_none() && t.workers.iter().all(|w| w.read("/b", t.now_ms).is_some_and(|a| a.score >= w.threshold())) {
                flagged_after = Some(s + 1);
            }
        }
        let after = flagged_after.expect("flagged");
        assert!(after <= 4, "flagged {after} s after onset");
        let b = t.workers[0].read("/b", t.now_ms).unwrap();
        assert!(b.detail.as_deref().is_some_and(|d| d.starts_with("5xx_rate on /b")), "{b:?}");
        assert_eq!(t.metrics.get(Metric::TrafficAnomalies(series::Metric::ServerErrorRate)), 2, "listener and /b: {lines:?}");
        assert!(lines.iter().any(|l| l.contains("5xx_rate on /b")));
    }

    #[test]
    fn a_new_route_failing_from_its_first_second_is_flagged_against_the_established_ones() {
        let mut t = Two::new();
        for s in 0..60 {
            let lines = t.second(&[("/a", 40 + s % 7, 200, 5), ("/b", 20 + s % 3, 200, 5)]);
            assert!(lines.is_empty(), "steady second {s}: {lines:?}");
        }
        // /new appears answering 503 to all of its 20 requests a second.
        let mut lines = Vec::new();
        for _ in 0..4 {
            lines.extend(t.second(&[("/a", 40, 200, 5), ("/b", 20, 200, 5), ("/new", 20, 503, 5)]));
        }
        let onset = lines.iter().find(|l| l.contains("5xx_rate on /new")).expect("flagged");
        assert!(onset.ends_with("(1.0 vs established routes' 0.000)"), "{onset}");
        let a = t.workers[1].read("/new", t.now_ms).unwrap();
        assert!(a.score >= t.workers[1].threshold() && a.detail.as_deref().is_some_and(|d| d.starts_with("5xx_rate on /new")), "{a:?}");
    }

    #[test]
    fn a_lasting_slowdown_is_one_drift_reported_by_one_worker_then_normal() {
        // A 10-minute window (warm-up 150 s), drift after 1 minute.
        let mut t = Two::with(TimeSeriesAnalysis { analysis_window_minutes: 10, drift_minutes: 1, ..cfg() });
        for s in 0..300 {
            let lines = t.second(&[("/api/orders", 40 + s % 7, 200, 12), ("/b", 20, 200, 5)]);
            assert!(lines.is_empty(), "steady second {s}: {lines:?}");
        }
        // /api/orders is 10 times slower for good.
        let mut lines = Vec::new();
        for s in 0..200 {
            lines.extend(t.second(&[("/api/orders", 40 + s % 7, 200, 130), ("/b", 20, 200, 5)]));
        }
        let drifts: Vec<_> = lines.iter().filter(|l| l.starts_with("traffic: drift on /api/orders")).collect();
        // One line per series, p50 and p95 (≥ 20 timed responses a second): both
        // workers tick, only the lease holder reports.
        assert_eq!(drifts.len(), 2, "{lines:?}");
        for metric in ["latency_p50_ms", "latency_p95_ms"] {
            let d = drifts.iter().find(|l| l.contains(metric)).unwrap();
            // 12 ms and 130 ms as the histogram reads them (buckets √2 apart).
            assert!(d.ends_with(&format!("({metric}): 10.8 ms -> 122 ms for 1 min; baseline re-learned")), "{d}");
        }
        assert!(!lines.iter().any(|l| l.starts_with("traffic: drift on /b")), "{lines:?}");
        // The new latency is the route's normal: no score, nothing more to report.
        let a = t.workers[0].read("/api/orders", t.now_ms).unwrap();
        assert!(a.score < t.workers[0].threshold() && a.detail.is_none(), "{a:?}");
        for s in 0..120 {
            let lines = t.second(&[("/api/orders", 40 + s % 7, 200, 130), ("/b", 20, 200, 5)]);
            assert!(lines.is_empty(), "second {s} after the drift: {lines:?}");
        }
    }

    #[test]
    fn no_analysis_means_no_score_and_a_bounded_pending_record() {
        let t = Traffic::new(&cfg());
        let store = MemoryStore::default();
        t.start(&store, &NoMetricsSink).unwrap();
        assert_eq!(t.read("/a", 1_000_000), None);
        // A worker that flushes but never wins the lease (another holds it forever).
        let other = Lease { key: &t.keys.lease, holder: 99, duration_ms: u64::MAX / 2 };
        other.acquire(&store, 0).unwrap();
        let mut now = 1_700_000_000_000;
        for _ in 0..300 {
            t.record("/a", Some(200), Some(1_000), now);
            now += 100;
            t.on_tick(now, 1, &store, &NoMetricsSink);
        }
        let (bytes, _) = store.get(&t.keys.pending).unwrap().unwrap();
        let pending = decode_pending(&bytes).unwrap();
        assert_eq!(pending.len(), MAX_PENDING_SECONDS);
        assert_eq!(pending.iter().map(|(_, c)| c.total().requests).sum::<u64>(), 300, "merged, not lost");
    }

    use crate::engine::ports::NoMetrics as NoMetricsSink;
}
