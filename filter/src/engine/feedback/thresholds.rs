//! Adaptive decision thresholds per route group.
//!
//! Each group carries an offset added to every decision threshold. Two
//! things move it: operator feedback (a false positive raises it by
//! `feedback_step`, a confirmed threat lowers it), and, when `enabled`, a
//! controller that every `adjust_seconds` compares the group's estimated
//! false-positive rate with the target and moves by `step`:
//!
//!   est_fp = flag_rate × (1 − precision), precision = (threats + 1) / (threats + fps + 2)
//!
//! above 1.25 × target the offset rises (fewer flags), below 0.5 × target it
//! falls (a quiet group stays sensitive); always within [min_offset,
//! max_offset]. Without feedback the precision prior is 1/2.
//!
//! All groups share one record in shared data. Workers count locally and
//! hand their counts in once a second; whichever worker's compare-and-swap
//! finds the period over runs the adjustment, so it happens once. Requests
//! read the offsets from this worker's copy, refreshed each second: no host
//! call on the request path.

use crate::engine::codec::{Reader, Writer};
use crate::engine::config::AdaptiveThresholds;
use crate::engine::ports::{MetricsSink, SharedStore, StoreError, Table};
use crate::engine::record;
use crate::engine::profile::standing::Label;
use std::cell::RefCell;

const KEY: &str = "vigil/thresholds";
const VERSION: u8 = 1;
/// Counts are handed in (and offsets re-read) this often.
pub const FLUSH_MS: u64 = 1_000;

/// One group's state, as shared.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupState {
    pub offset: f32,
    pub false_positives: u32,
    pub threats: u32,
    /// Since the last adjustment.
    pub period_requests: u64,
    pub period_flags: u64,
    pub requests: u64,
    pub flags: u64,
    pub adjustments: u32,
    /// The flag rate the last adjustment saw.
    pub last_flag_rate: f32,
}

impl GroupState {
    /// The precision estimate from feedback (prior 1/2).
    pub fn precision(&self) -> f64 {
        (f64::from(self.threats) + 1.0) / (f64::from(self.threats) + f64::from(self.false_positives) + 2.0)
    }

    /// What one controller period decides. Returns the offset's change.
    pub fn adjust(&mut self, cfg: &AdaptiveThresholds) -> f64 {
        if self.period_requests < u64::from(cfg.min_requests) {
            return 0.0;
        }
        let flag_rate = self.period_flags as f64 / self.period_requests as f64;
        let est_fp = flag_rate * (1.0 - self.precision());
        let target = cfg.target_false_positive_rate;
        let delta = if est_fp > target * 1.25 {
            cfg.step
        } else if est_fp < target * 0.5 {
            -cfg.step
        } else {
            0.0
        };
        let before = f64::from(self.offset);
        self.offset = (before + delta).clamp(cfg.min_offset, cfg.max_offset) as f32;
        self.last_flag_rate = flag_rate as f32;
        self.period_requests = 0;
        self.period_flags = 0;
        self.adjustments = self.adjustments.saturating_add(1);
        f64::from(self.offset) - before
    }

    /// Takes an operator's verdict on one of the group's decisions.
    pub fn feedback(&mut self, label: Label, cfg: &AdaptiveThresholds) {
        let delta = match label {
            Label::FalsePositive => {
                self.false_positives = self.false_positives.saturating_add(1);
                cfg.feedback_step
            }
            Label::ConfirmedThreat => {
                self.threats = self.threats.saturating_add(1);
                -cfg.feedback_step
            }
        };
        self.offset = (f64::from(self.offset) + delta).clamp(cfg.min_offset, cfg.max_offset) as f32;
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Shared {
    last_adjust_ms: u64,
    groups: Vec<GroupState>,
}

impl Shared {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.groups.len() * 52);
        let mut w = Writer(&mut out);
        w.u8(VERSION);
        w.u64(self.last_adjust_ms);
        w.u8(self.groups.len() as u8);
        for g in &self.groups {
            w.f32(g.offset);
            w.u32(g.false_positives);
            w.u32(g.threats);
            w.u64(g.period_requests);
            w.u64(g.period_flags);
            w.u64(g.requests);
            w.u64(g.flags);
            w.u32(g.adjustments);
            w.f32(g.last_flag_rate);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Shared> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let last_adjust_ms = r.u64()?;
        let n = usize::from(r.u8()?);
        let mut groups = Vec::with_capacity(n);
        for _ in 0..n {
            let g = GroupState {
                offset: r.f32()?,
                false_positives: r.u32()?,
                threats: r.u32()?,
                period_requests: r.u64()?,
                period_flags: r.u64()?,
                requests: r.u64()?,
                flags: r.u64()?,
                adjustments: r.u32()?,
                last_flag_rate: r.f32()?,
            };
            if !(g.offset.is_finite() && g.offset.abs() <= 1.0 && g.last_flag_rate.is_finite()) {
                return None;
            }
            groups.push(g);
        }
        r.is_empty().then_some(Shared { last_adjust_ms, groups })
    }
}

struct Local {
    /// Requests and flags per group since the last hand-in.
    counts: Vec<(u64, u64)>,
    offsets: Vec<f32>,
    flushed_ms: u64,
}

pub struct Thresholds {
    cfg: AdaptiveThresholds,
    /// Group names, `default` first; prefixes per named group.
    names: Vec<String>,
    local: RefCell<Local>,
}

impl Thresholds {
    pub fn new(cfg: &AdaptiveThresholds) -> Self {
        let names: Vec<String> = std::iter::once("default".to_string()).chain(cfg.route_groups.iter().map(|g| g.name.clone())).collect();
        let n = names.len();
        Thresholds {
            cfg: cfg.clone(),
            names,
            local: RefCell::new(Local { counts: vec![(0, 0); n], offsets: vec![0.0; n], flushed_ms: 0 }),
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The group of a route template: the first whose prefix it starts with.
    pub fn group_of(&self, route: &str) -> usize {
        self.cfg.route_groups.iter().position(|g| g.routes.iter().any(|p| route.starts_with(p.as_str()))).map_or(0, |i| i + 1)
    }

    pub fn group_named(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The group's offset as this worker last read it.
    pub fn offset(&self, group: usize) -> f64 {
        self.local.borrow().offsets.get(group).map_or(0.0, |o| f64::from(*o))
    }

    /// Clamps an identity's and a group's offsets together into the bounds.
    pub fn bounded(&self, offset: f64) -> f64 {
        offset.clamp(self.cfg.min_offset, self.cfg.max_offset)
    }

    /// Counts a decided request (local, no host call).
    pub fn count(&self, group: usize, flagged: bool) {
        if let Some(c) = self.local.borrow_mut().counts.get_mut(group) {
            c.0 += 1;
            c.1 += u64::from(flagged);
        }
    }

    /// Once a second: hands this worker's counts in, runs the controller if
    /// its period is over (once, whichever worker gets there), and re-reads
    /// the offsets. Returns what changed, for the log.
    pub fn on_tick(&self, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<Vec<String>, StoreError> {
        let counts = {
            let mut local = self.local.borrow_mut();
            if now_ms < local.flushed_ms + FLUSH_MS {
                return Ok(Vec::new());
            }
            local.flushed_ms = now_ms;
            let n = local.counts.len();
            std::mem::replace(&mut local.counts, vec![(0, 0); n])
        };
        if counts.iter().all(|c| *c == (0, 0)) {
            // Nothing to hand in (an idle worker, or the admin listener's
            // root): only re-read the offsets, without a write.
            let groups = self.read(store)?;
            self.local.borrow_mut().offsets = groups.iter().map(|g| g.offset).collect();
            return Ok(Vec::new());
        }
        let period_ms = u64::from(self.cfg.adjust_seconds) * 1000;
        let enabled = self.cfg.enabled;
        let mut changes = Vec::new();
        let result = self.update(store, metrics, |s| {
            changes.clear();
            for (g, (requests, flags)) in s.groups.iter_mut().zip(&counts) {
                g.requests += requests;
                g.flags += flags;
                g.period_requests += requests;
                g.period_flags += flags;
            }
            if s.last_adjust_ms == 0 {
                s.last_adjust_ms = now_ms;
            } else if enabled && now_ms >= s.last_adjust_ms + period_ms {
                s.last_adjust_ms = now_ms;
                for (i, g) in s.groups.iter_mut().enumerate() {
                    let before = g.offset;
                    if g.adjust(&self.cfg) != 0.0 {
                        changes.push((i, before, g.offset, g.last_flag_rate));
                    }
                }
            }
        });
        match result {
            Ok(shared) => {
                self.local.borrow_mut().offsets = shared.groups.iter().map(|g| g.offset).collect();
                Ok(changes
                    .iter()
                    .map(|(i, from, to, rate)| {
                        let name = self.names.get(*i).map_or("?", String::as_str);
                        format!("thresholds: group {name} offset {from:+.2} -> {to:+.2} (flag rate {:.2}%)", rate * 100.0)
                    })
                    .collect())
            }
            Err(e) => {
                // The counts go back for the next tick: none is lost to a conflict.
                let mut local = self.local.borrow_mut();
                for (c, (r, f)) in local.counts.iter_mut().zip(counts) {
                    c.0 += r;
                    c.1 += f;
                }
                Err(e)
            }
        }
    }

    /// Applies an operator's verdict to a group. Returns its new state.
    pub fn feedback(&self, group: usize, label: Label, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<GroupState, StoreError> {
        let shared = self.update(store, metrics, |s| {
            if let Some(g) = s.groups.get_mut(group) {
                g.feedback(label, &self.cfg);
            }
        })?;
        self.local.borrow_mut().offsets = shared.groups.iter().map(|g| g.offset).collect();
        Ok(shared.groups.get(group).copied().unwrap_or_default())
    }

    /// Every group's state as shared data holds it (admin API).
    pub fn read(&self, store: &dyn SharedStore) -> Result<Vec<GroupState>, StoreError> {
        let mut groups = match store.get(KEY)? {
            Some((bytes, _)) => Shared::decode(&bytes).map(|s| s.groups).unwrap_or_default(),
            None => Vec::new(),
        };
        groups.resize(self.names.len(), GroupState::default());
        Ok(groups)
    }

    fn update(&self, store: &dyn SharedStore, metrics: &dyn MetricsSink, mut f: impl FnMut(&mut Shared)) -> Result<Shared, StoreError> {
        record::update(store, metrics, Table::Feedback, KEY, |bytes| {
            let mut shared = bytes.and_then(Shared::decode).unwrap_or_default();
            // A configuration with other groups (a rollout) keeps the shared
            // state of the groups it shares by position.
            shared.groups.resize(self.names.len(), GroupState::default());
            f(&mut shared);
            (Some(shared.encode()), shared)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::RouteGroup;
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    fn cfg() -> AdaptiveThresholds {
        AdaptiveThresholds {
            enabled: true,
            min_requests: 100,
            route_groups: vec![RouteGroup { name: "exports".into(), routes: vec!["/export".into()] }],
            ..AdaptiveThresholds::default()
        }
    }

    /// A route whose benign requests score uniformly in [0, 1): the flag rate
    /// at flag threshold t is 1 − t.
    fn flag_rate(threshold: f64) -> f64 {
        (1.0 - threshold).clamp(0.0, 1.0)
    }

    #[test]
    fn routes_fall_into_their_group_or_the_default() {
        let t = Thresholds::new(&cfg());
        assert_eq!(t.group_of("/export/{id}"), 1);
        assert_eq!(t.group_of("/users/{id}"), 0);
        assert_eq!(t.group_named("exports"), Some(1));
        assert_eq!(t.names(), ["default", "exports"]);
    }

    #[test]
    fn a_stream_of_false_positives_lowers_the_flag_rate_toward_the_target_within_bounds() {
        let c = AdaptiveThresholds { target_false_positive_rate: 0.05, max_offset: 0.4, ..cfg() };
        let mut g = GroupState::default();
        let base = 0.5;
        let mut rates = Vec::new();
        for _ in 0..40 {
            let t = base + f64::from(g.offset);
            let rate = flag_rate(t);
            rates.push(rate);
            // A period: 1000 requests, and the operator marks every flag reviewed a false positive.
            g.period_requests = 1000;
            g.period_flags = (rate * 1000.0) as u64;
            for _ in 0..5 {
                g.feedback(Label::FalsePositive, &c);
            }
            g.adjust(&c);
            assert!(f64::from(g.offset) <= c.max_offset + 1e-6 && f64::from(g.offset) >= c.min_offset - 1e-6);
        }
        assert!(rates[0] > 0.45, "{rates:?}");
        assert!(rates.windows(2).all(|w| w[1] <= w[0] + 1e-9), "the flag rate only falls: {rates:?}");
        // The bound holds: the rate stops at 1 − (0.5 + 0.4), not at the target.
        assert!((rates.last().copied().unwrap_or(0.0) - 0.1).abs() < 1e-6, "{rates:?}");
    }

    #[test]
    fn the_controller_settles_near_the_target_and_a_quiet_group_gets_sensitive() {
        let c = AdaptiveThresholds { target_false_positive_rate: 0.1, max_offset: 0.4, ..cfg() };
        // Precision 1/2 (no feedback): est_fp = rate / 2; the target 0.1 wants rate ~ 0.2.
        let mut g = GroupState::default();
        for _ in 0..50 {
            g.period_requests = 1000;
            g.period_flags = (flag_rate(0.5 + f64::from(g.offset)) * 1000.0) as u64;
            g.adjust(&c);
        }
        let rate = flag_rate(0.5 + f64::from(g.offset));
        assert!((0.1..=0.26).contains(&rate), "settled at {rate}");
        // A quiet group (no flags at all) lowers its thresholds to the bound, no further.
        let mut quiet = GroupState::default();
        for _ in 0..50 {
            quiet.period_requests = 1000;
            quiet.period_flags = 0;
            quiet.adjust(&c);
        }
        assert!((f64::from(quiet.offset) - c.min_offset).abs() < 1e-6);
        // Too few requests: no adjustment, the period keeps counting.
        let mut thin = GroupState { period_requests: 10, period_flags: 10, ..GroupState::default() };
        assert_eq!(thin.adjust(&c), 0.0);
        assert_eq!(thin.period_requests, 10);
    }

    #[test]
    fn confirmed_threats_raise_sensitivity() {
        let c = AdaptiveThresholds { target_false_positive_rate: 0.05, ..cfg() };
        let mut g = GroupState { offset: 0.1, ..GroupState::default() };
        g.feedback(Label::ConfirmedThreat, &c);
        assert!((g.offset - 0.05).abs() < 1e-6);
        for _ in 0..20 {
            g.feedback(Label::ConfirmedThreat, &c);
        }
        // High precision: the same flag rate is now mostly true positives, so thresholds fall.
        g.period_requests = 1000;
        g.period_flags = 80;
        assert!(g.precision() > 0.9);
        let before = g.offset;
        g.adjust(&c);
        assert!(g.offset <= before);
        assert!((f64::from(g.offset) - c.min_offset).abs() < 1e-6, "bounded below: {}", g.offset);
    }

    #[test]
    fn workers_hand_in_counts_and_the_period_is_adjusted_once() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let c = AdaptiveThresholds { adjust_seconds: 10, min_requests: 10, ..cfg() };
        let (a, b) = (Thresholds::new(&c), Thresholds::new(&c));
        // An idle tick writes nothing; the first counts open the first period.
        a.on_tick(500, &store, &metrics).unwrap();
        assert_eq!(store.len(), 0);
        for w in [&a, &b] {
            w.count(0, false);
            w.on_tick(1_000, &store, &metrics).unwrap();
        }
        for _ in 0..100 {
            a.count(0, true);
            b.count(0, true);
        }
        let mut lines = a.on_tick(12_000, &store, &metrics).unwrap();
        lines.extend(b.on_tick(12_000, &store, &metrics).unwrap());
        let g = a.read(&store).unwrap()[0];
        assert_eq!(g.requests, 202, "both workers' counts");
        assert_eq!(g.adjustments, 1, "once: {lines:?}");
        assert_eq!(lines.len(), 1);
        assert!((g.offset - 0.02).abs() < 1e-6);
        // b's hand-in came after the adjustment: it opens the next period.
        assert_eq!(g.period_requests, 100);
        // Both workers read the new offset.
        b.on_tick(13_500, &store, &metrics).unwrap();
        assert!((b.offset(0) - 0.02).abs() < 1e-6);
        // Feedback reaches the shared record and this worker at once.
        let after = a.feedback(1, Label::FalsePositive, &store, &metrics).unwrap();
        assert_eq!(after.false_positives, 1);
        assert!((a.offset(1) - 0.05).abs() < 1e-6);
    }

    #[test]
    fn a_corrupt_record_is_replaced_not_trusted() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        store.set(KEY, b"\x01garbage", 0).unwrap();
        let t = Thresholds::new(&cfg());
        t.count(0, false);
        t.on_tick(5_000, &store, &metrics).unwrap();
        assert_eq!(t.read(&store).unwrap()[0].requests, 1);
    }
}
