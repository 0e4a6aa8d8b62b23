//! Beyond the identity: attacks spread across identities are seen through
//! secondary keys (the client's /24 or /64, a single address, ASN, country, a
//! fingerprint header such as JA4 or the user agent), and route anomalies go
//! to the identities and keys that drive them.
//!
//! - `extract`: a request's value of each key, as a keyed hash.
//! - `record`: what is kept per key value (decaying counts, distinct
//!   identities and routes as small bitmaps), in a bounded slot table per key.
//! - `local`: each worker's pending counts and its view of the key values it
//!   sees; counted on completion, handed in from ticks.
//! - `population`: the baseline of each kind of key, one shared record.
//! - `score`: one key value against its population.
//! - `attribution`: the route anomaly's contributors.
//!
//! The request path makes no host call here (client addresses aside, read
//! as the identity source reads them) and allocates nothing unless it has a
//! threat detail to write.

pub mod attribution;
pub mod config;
pub mod extract;
pub mod local;
pub mod population;
pub mod record;
pub mod score;

use super::config::Config;
use super::features::{Combine, Features, Signal, ThreatDetail};
use super::hash::HashKey;
use super::identity::IdentityKind;
use super::ports::{Metric, MetricsSink, SharedStore, StoreError, Table};
use super::request::RequestView;
use super::slots::{Admission, Hints, SlotTable};
use attribution::{Attribution, Role};
pub use config::MAX_KEYS;
use extract::Extractor;
use local::Local;
use population::Population;
use record::{Counts, KeyRecord, Window};
use std::cell::{Cell, RefCell};

/// The signal's name in headers and logs.
pub const SIGNAL: &str = "keys";
/// An identity whose profile has seen at most this many requests is fresh.
pub const FRESH_OBSERVATIONS: u32 = 3;
/// A newcomer with this many requests, which its population finds ordinary,
/// vouches for itself as an established identity acting as usual does.
pub const VOUCHED_OBSERVATIONS: u32 = 5;
/// Deltas one key hands in per tick at most (with a 100 ms tick, 640 a second).
const HAND_INS_PER_TICK: usize = 64;

/// Per-key metrics (label: the key's `label`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyMetric {
    /// Requests scored against this key's population.
    Scored,
    /// Requests whose `keys` signal reached its gate through this key.
    Flagged,
    /// Completed requests not counted: the worker's pending table was full of busier values.
    Dropped,
    /// Key values handed in to shared data.
    HandedIn,
    /// The population's size in samples (a gauge).
    Population,
}

impl KeyMetric {
    pub const ALL: [KeyMetric; 5] = [KeyMetric::Scored, KeyMetric::Flagged, KeyMetric::Dropped, KeyMetric::HandedIn, KeyMetric::Population];

    pub fn name(self) -> &'static str {
        match self {
            KeyMetric::Scored => "vigil_keys_scored_total",
            KeyMetric::Flagged => "vigil_keys_flagged_total",
            KeyMetric::Dropped => "vigil_keys_dropped_total",
            KeyMetric::HandedIn => "vigil_keys_handed_in_total",
            KeyMetric::Population => "vigil_keys_population",
        }
    }

    pub fn is_gauge(self) -> bool {
        self == KeyMetric::Population
    }
}

/// Whether the identity is new: unknown without profiling.
/// What a key value's score counts for an established identity acting as
/// usual inside the crowd that carries it.
pub const BYSTANDER_SHARE: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Freshness {
    #[default]
    Unknown,
    Established,
    Fresh,
}

/// Attribution's subjects per request: the identity, each key's value, the newcomers.
const SUBJECTS: usize = MAX_KEYS + 2;
const NEWCOMERS_AT: usize = MAX_KEYS + 1;
/// The newcomers' subject in a route's record (never a keyed hash's value in
/// practice: those are spread over 64 bits; and a collision only merges counts).
const NEWCOMERS: u64 = 0x6e65_7763_6f6d_6572;

/// What a request carries for the keys, from its headers to its completion:
/// keyed hashes only, inline (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Subjects {
    /// Each configured key's value (0: the request has none).
    pub keys: [u64; MAX_KEYS],
    /// What each key counts as a member (the identity; for
    /// `identity_addresses` the address).
    pub members: [u64; MAX_KEYS],
    /// Bit `i`: key `i`'s value is an IPv6 prefix (for threat details).
    pub v6: u8,
    pub fresh: Freshness,
    /// The route template's keyed hash.
    pub route: u32,
}

struct Kind {
    index: u8,
    label: String,
    extractor: Extractor,
    attribute: bool,
    prefix: String,
    pop_key: String,
    hints: Hints,
    local: RefCell<Local>,
    dropped: Cell<u64>,
}

pub struct Keys {
    hash_key: HashKey,
    kinds: Vec<Kind>,
    window: Window,
    window_s: u32,
    scoring: score::Settings,
    gate: f64,
    weight: f64,
    failure_statuses: Vec<u16>,
    sync_ms: u64,
    hold_ms: u64,
    slots: u32,
    ttl_ms: u64,
    baseline_ms: u64,
    last_sync_ms: Cell<u64>,
    attribution: Option<Attribution>,
    bystander_weight: f64,
}

impl Keys {
    pub fn new(config: &Config, hash_key: HashKey) -> Self {
        let k = &config.secondary_keys;
        let window = Window::new(k.window_seconds);
        let kinds = k
            .keys
            .iter()
            .enumerate()
            .map(|(i, source)| {
                let label = source.label();
                Kind {
                    index: i as u8,
                    label: label.clone(),
                    extractor: Extractor::new(source, &config.behavioral_profiling.geo),
                    attribute: source.attributes(),
                    prefix: format!("vigil/keys/{label}/{}/{}/", k.max_keys, k.window_seconds),
                    pop_key: format!("vigil/keys/{label}/{}/population", k.window_seconds),
                    hints: Hints::for_slots(k.max_keys),
                    local: RefCell::new(Local::new(k.cache_entries)),
                    dropped: Cell::new(0),
                }
            })
            .collect();
        let a = &k.attribution;
        let attribution = (a.enabled && config.time_series_analysis.enable_traffic_analysis).then(|| {
            let s = attribution::Settings {
                recent_ms: u64::from(a.recent_seconds) * 1000,
                baseline_ms: u64::from(a.baseline_seconds) * 1000,
                min_share: a.min_share as f32,
                surge_ratio: a.surge_ratio as f32,
            };
            Attribution::new(s, a.max_routes)
        });
        Keys {
            hash_key,
            kinds,
            window,
            window_s: k.window_seconds,
            scoring: score::Settings { min_population: k.min_population as f32, min_identities: k.min_identities as f32 },
            gate: k.score_threshold,
            weight: config.ml_scoring_weights.secondary_keys,
            failure_statuses: k.failure_statuses.clone(),
            sync_ms: u64::from(k.sync_interval_ms),
            // A value with one identity waits a quarter window for a second one.
            hold_ms: window.window_ms / 4,
            slots: k.max_keys,
            ttl_ms: 2 * window.window_ms,
            baseline_ms: u64::from(k.baseline_minutes) * 60_000,
            last_sync_ms: Cell::new(0),
            attribution,
            bystander_weight: a.bystander_weight,
        }
    }

    fn table<'a>(&'a self, kind: &'a Kind, store: &'a dyn SharedStore, metrics: &'a dyn MetricsSink) -> SlotTable<'a> {
        SlotTable::new(store, metrics, &kind.prefix, self.slots, Table::Keys, self.ttl_ms)
            .with_admission(Admission::WorthAtLeast)
            .with_hints(&kind.hints)
    }

    /// Creates every key's slots and the routes' (start-up, idempotent).
    pub fn start(&self, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<u32, StoreError> {
        let mut created = 0;
        for kind in &self.kinds {
            created += self.table(kind, store, metrics).initialize::<KeyRecord>()?;
        }
        if let Some(a) = &self.attribution {
            created += a.start(store, metrics)?;
        }
        Ok(created)
    }

    /// Request path: reads each key's value, scores it against its kind's
    /// population (the `keys` signal), and attributes the route's traffic
    /// anomaly (the `traffic` signal) to its contributors. No host call.
    // Out of line (here, `learn` and `on_tick`): a profile then shows what the keys cost.
    #[inline(never)]
    /// `routine`: the identity is established and this request ordinary for
    /// it (its own deviation under half the gate): in a crowd whose key value
    /// is anomalous it is a bystander, and the value's score counts at half
    /// (an identity's own spread of addresses counts in full).
    #[allow(clippy::too_many_arguments)]
    pub fn assess(
        &self,
        req: &dyn RequestView,
        features: &mut Features,
        fresh: Freshness,
        routine: bool,
        signals: &mut Vec<Signal>,
        details: &mut Vec<ThreatDetail>,
        metrics: &dyn MetricsSink,
    ) {
        let now = features.time_ms;
        let mut subjects = Subjects { fresh, route: self.hash_key.hash(&[features.route.as_bytes()]) as u32, ..Subjects::default() };
        let mut best: Option<(usize, score::Scored, bool)> = None;
        for (i, kind) in self.kinds.iter().enumerate() {
            let Some(value) = kind.extractor.value(kind.index, &self.hash_key, req, &features.identity) else { continue };
            if let (Some(k), Some(m)) = (subjects.keys.get_mut(i), subjects.members.get_mut(i)) {
                *k = value.key;
                *m = value.member;
            }
            if value.v6 {
                subjects.v6 |= 1 << i;
            }
            let local = kind.local.borrow();
            let (Some(pop), Some(view)) = (local.baseline.as_ref(), local.view(value.key, now, &self.window)) else { continue };
            let Some(mut scored) = score::score(&view, pop, kind.extractor.spread_only(), &self.scoring) else { continue };
            if routine && !kind.extractor.spread_only() {
                scored.score *= BYSTANDER_SHARE;
            }
            metrics.add(Metric::Keys(KeyMetric::Scored, kind.index), 1);
            if best.as_ref().map_or(true, |(_, b, _)| scored.score > b.score) {
                best = Some((i, scored, value.v6));
            }
        }
        features.keys = subjects;
        self.attribute(features, routine, signals, details, metrics);
        if let Some((i, s, v6)) = best {
            signals.push(Signal { name: SIGNAL, score: s.score, confidence: s.confidence, combine: Combine::Support { weight: self.weight, gate: self.gate } });
            if let (true, Some(kind)) = (s.score >= self.gate, self.kinds.get(i)) {
                metrics.add(Metric::Keys(KeyMetric::Flagged, kind.index), 1);
                details.push(ThreatDetail { signal: SIGNAL, reason: self.explain(kind, &s, v6) });
            }
        }
    }

    /// The traffic signal of a request on an anomalous route counts toward its
    /// risk only if the request's identity or one of its key values drives
    /// the anomaly. For a `routine` request (an established identity doing
    /// what it usually does) only the identity itself can: a browser's user
    /// agent or a network shared with the crowd that drives the anomaly does
    /// not make its ordinary users part of it.
    fn attribute(
        &self,
        features: &Features,
        routine: bool,
        signals: &mut [Signal],
        details: &mut Vec<ThreatDetail>,
        metrics: &dyn MetricsSink,
    ) {
        let Some(a) = &self.attribution else { return };
        let Some(traffic) = signals.iter_mut().find(|s| s.name == crate::engine::traffic::SIGNAL) else { return };
        let Combine::Context { weight, gate } = traffic.combine else { return };
        if traffic.score.is_nan() || traffic.score < gate {
            return;
        }
        // The identity first, then the key values that may be blamed.
        let candidates = self.subjects(features, routine);
        let finding = a.judge(features.keys.route, &candidates, if routine { attribution::ROUTINE_MIN_SHARE } else { 0.0 });
        metrics.add(Metric::Attribution(finding.role), 1);
        let route = &features.route;
        let percent = |x: f32| (f64::from(x) * 100.0).round();
        match finding.role {
            Role::Contributor => {
                let who = match finding.subject {
                    Some(0) | None => "identity".to_string(),
                    Some(NEWCOMERS_AT) => "request's newcomers (identities on their first requests)".to_string(),
                    Some(i) => self.kinds.get(i - 1).map_or_else(|| "key".to_string(), |k| self.noun(k, features.keys.v6 >> (i - 1) & 1 == 1)),
                };
                details.push(ThreatDetail {
                    signal: crate::engine::traffic::SIGNAL,
                    reason: format!("route {route} anomalous: this {who} sends {:.0}% of its recent traffic ({:.0}% before)", percent(finding.recent), percent(finding.before)),
                });
            }
            Role::Bystander => {
                let share = self.bystander_weight;
                traffic.combine = if share > 0.0 {
                    Combine::Context { weight: weight * share, gate }
                } else {
                    // Out of reach: visible in the signals, left out of the risk.
                    Combine::Context { weight: 0.0, gate: f64::INFINITY }
                };
                details.push(ThreatDetail {
                    signal: crate::engine::traffic::SIGNAL,
                    reason: format!(
                        "route {route} anomalous, not driven by this request's identity or keys (largest share {:.1}% of its recent traffic): counted at {share}",
                        f64::from(finding.recent) * 100.0
                    ),
                });
            }
            Role::Unknown => {}
        }
    }

    /// Who a route anomaly may be attributed to: the identity first, then
    /// (unless the request is routine for it) the request's values of the
    /// keys that may be blamed, then, for an identity on its first requests,
    /// the newcomers as one subject: a burst from hundreds of fresh
    /// identities that share no key value is still the newcomers' surge
    /// (0: none).
    fn subjects(&self, features: &Features, routine: bool) -> [u64; SUBJECTS] {
        let mut out = [0u64; SUBJECTS];
        if let (Some(last), Freshness::Fresh) = (out.get_mut(NEWCOMERS_AT), features.keys.fresh) {
            *last = NEWCOMERS;
        }
        if let (Some(first), false) = (out.first_mut(), features.identity.kind == IdentityKind::Anonymous) {
            *first = features.identity.hash;
        }
        if routine {
            return out;
        }
        for (slot, (kind, key)) in out.iter_mut().skip(1).zip(self.kinds.iter().zip(features.keys.keys)) {
            if kind.attribute && !kind.extractor.spread_only() {
                *slot = key;
            }
        }
        out
    }

    /// What a key value of `kind` is called in a threat detail.
    fn noun(&self, kind: &Kind, v6: bool) -> String {
        match &kind.extractor {
            Extractor::Client { v4: 32, v6: 128, .. } => "client address".to_string(),
            Extractor::Client { v4, v6: p6, .. } => format!("client /{}", if v6 { *p6 } else { *v4 }),
            Extractor::Asn { .. } => "ASN".to_string(),
            Extractor::Country { .. } => "country".to_string(),
            Extractor::Header { name } => format!("{name} value"),
            Extractor::IdentityAddresses { .. } => "identity".to_string(),
        }
    }

    fn explain(&self, kind: &Kind, s: &score::Scored, v6: bool) -> String {
        let n = |x: f32| x.round() as u64;
        let noun = self.noun(kind, v6);
        if kind.extractor.spread_only() {
            return format!("{noun} seen from {} client addresses in {} s (population p75: {}, p99: {})", n(s.members), self.window_s, n(s.p75), n(s.p99));
        }
        let mut out = format!("{noun} carries {} identities in {} s", n(s.members), self.window_s);
        if let Some(f) = s.failure {
            out.push_str(&format!(", {}% failed", n(f * 100.0)));
        }
        if let Some(f) = s.fresh {
            out.push_str(&format!(", {}% fresh", n(f * 100.0)));
        }
        let routes = n(s.routes);
        out.push_str(&format!(" on {routes} route{} (population p75: {}, p99: {})", if routes == 1 { "" } else { "s" }, n(s.p75), n(s.p99)));
        out
    }

    /// A completed request: counted in this worker's pending deltas (and the
    /// route's sketch). No host call, no allocation.
    #[inline(never)]
    pub fn learn(&self, features: &Features, now_ms: u64) {
        let s = &features.keys;
        let answered = features.status.is_some() && !features.refused;
        let failed = answered && features.status.is_some_and(|st| self.failure_statuses.contains(&st));
        let (fresh, known) = match s.fresh {
            Freshness::Unknown => (0.0, 0.0),
            Freshness::Established => (0.0, 1.0),
            Freshness::Fresh => (1.0, 1.0),
        };
        let c = Counts {
            requests: 1.0,
            answered: if answered { 1.0 } else { 0.0 },
            failures: if failed { 1.0 } else { 0.0 },
            fresh,
            fresh_known: known,
        };
        let epoch = self.window.epoch(now_ms);
        for (kind, (&key, &member)) in self.kinds.iter().zip(s.keys.iter().zip(&s.members)) {
            if key != 0 && !kind.local.borrow_mut().count(key, member, s.route, &c, epoch, now_ms) {
                kind.dropped.set(kind.dropped.get() + 1);
            }
        }
        if let Some(a) = &self.attribution {
            a.count(s.route, &self.subjects(features, false));
        }
    }

    /// Periodic work (every worker, every tick): hand in due deltas (bounded
    /// per tick) and, once per sync interval, merge the population samples
    /// and the route counts. Returns problems worth a warning.
    #[inline(never)]
    pub fn on_tick(&self, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Vec<String> {
        let mut problems = Vec::new();
        let epoch = self.window.epoch(now_ms);
        for kind in &self.kinds {
            let dropped = kind.dropped.replace(0);
            if dropped > 0 {
                metrics.add(Metric::Keys(KeyMetric::Dropped, kind.index), dropped);
            }
            let due = kind.local.borrow_mut().take_due(now_ms, self.sync_ms, self.hold_ms, self.scoring.min_identities, HAND_INS_PER_TICK, epoch);
            let table = self.table(kind, store, metrics);
            let mut failed = None;
            for d in &due {
                let sampled = Cell::new(false);
                let result = table.update(d.key, now_ms, |old: Option<&KeyRecord>| {
                    let (r, sample) = KeyRecord::merged(old, &d.delta, now_ms, &self.window);
                    sampled.set(sample);
                    r
                });
                let mut local = kind.local.borrow_mut();
                match result {
                    Ok(updated) => {
                        metrics.add(Metric::Keys(KeyMetric::HandedIn, kind.index), 1);
                        if sampled.get() {
                            local.samples.sample(&updated.record);
                        }
                        local.remember(d.key, updated.record, now_ms);
                    }
                    // The table holds busier values: this one is not tracked.
                    Err(StoreError::NotAdmitted) => {}
                    Err(e) => {
                        local.put_back(d, now_ms);
                        failed = Some(e);
                    }
                }
            }
            if let Some(e) = failed {
                problems.push(format!("keys: cannot hand in {} values ({e:?}), kept for the next tick", kind.label));
            }
        }
        if now_ms.saturating_sub(self.last_sync_ms.get()) >= self.sync_ms {
            self.last_sync_ms.set(now_ms);
            for kind in &self.kinds {
                if let Err(e) = self.sync_population(kind, now_ms, store, metrics) {
                    problems.push(format!("keys: cannot merge the {} population ({e:?})", kind.label));
                }
            }
            if let Some(a) = &self.attribution {
                if let Err(e) = a.sync(now_ms, store, metrics) {
                    problems.push(format!("keys: cannot merge route contributors ({e:?}), kept for the next sync"));
                }
            }
        }
        problems
    }

    /// Adds this worker's samples to the kind's shared population and reads
    /// back the merged one (one read and at most one write).
    fn sync_population(&self, kind: &Kind, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<(), StoreError> {
        let samples = kind.local.borrow().samples;
        let gauge = Cell::new((0i64, 0i64));
        let merged = super::record::update(store, metrics, Table::Keys, &kind.pop_key, |bytes| {
            let old = bytes.and_then(Population::decode);
            if samples.is_empty() {
                return (None, old);
            }
            let p = Population::merged(old.as_ref(), &samples, now_ms, self.baseline_ms);
            gauge.set((old.map_or(0, |o| o.samples.round() as i64), p.samples.round() as i64));
            let mut out = Vec::with_capacity(128);
            p.encode(&mut out);
            (Some(out), Some(p))
        })?;
        let (before, after) = gauge.get();
        let m = Metric::Keys(KeyMetric::Population, kind.index);
        if after > before {
            metrics.add(m, (after - before) as u64);
        } else if before > after {
            metrics.sub(m, (before - after) as u64);
        }
        let mut local = kind.local.borrow_mut();
        local.samples = Population::default();
        if let Some(p) = merged {
            local.population = Some(p);
            local.baseline = Some(p.baseline());
        }
        Ok(())
    }

    /// Labels of the configured keys, in order (for metric names).
    pub fn labels(config: &Config) -> Vec<String> {
        config.secondary_keys.keys.iter().map(|k| k.label()).collect()
    }

    /// Whether any configured key is present in this worker's views (tests).
    pub fn population_of(&self, index: usize) -> Option<Population> {
        self.kinds.get(index).and_then(|k| k.local.borrow().population)
    }

    /// Memory held per worker, in entries per key (the bound).
    pub fn local_capacity(&self) -> usize {
        self.kinds.first().map_or(0, |k| k.local.borrow().capacity())
    }

    #[doc(hidden)]
    pub fn pending_of(&self, index: usize) -> usize {
        self.kinds.get(index).map_or(0, |k| k.local.borrow().pending_len())
    }
}

#[cfg(test)]
mod tests;
