//! The population: what identities of one kind (users, JWT subjects, API
//! keys, client addresses) normally do in their first minutes, so a
//! newcomer is judged before its own profile can judge it. A cold profile
//! says nothing about whether a fresh identity scraping 200 objects a minute
//! is normal; the population says almost nobody new does that.
//!
//! Each young identity's closed activity minutes (requests, distinct objects,
//! distinct endpoints, failed answers) are samples, taken only when the
//! minute's decisions let its requests teach (a flagged newcomer is no
//! sample). They go into log-binned histograms per kind: each worker adds
//! its samples locally and folds them into one shared record per kind from
//! its ticks (a compare-and-swap, at most once a second), decayed with a
//! 6-hour half-life. So a newcomer is scored against every worker's
//! newcomers of the last hours, at most a second or two stale, in 4 × 276
//! bytes of shared data whatever the number of identities.
//!
//! Until a kind has seen enough samples, a built-in prior stands in (newcomers
//! making about 15 requests, 5 objects, 4 endpoints and 1.5 failures a minute
//! at the scale of an exponential tail), weighted as 30 samples.

use super::activity::{Minute, Summary};
use super::stats::logistic;
use crate::engine::codec::{Reader, Writer};
use crate::engine::identity::IdentityKind;
use crate::engine::ports::{MetricsSink, SharedStore, StoreError, Table};
use crate::engine::record;
use std::cell::RefCell;

/// The signal's name in headers and logs.
pub const SIGNAL: &str = "population";
/// An identity younger than this (or with a cold profile) is a newcomer.
pub const YOUNG_MS: u64 = 10 * 60_000;
const FEATURES: usize = 4;
const BINS: usize = 16;
/// Bins per doubling: 16 bins reach about 1,600 a minute.
const BINS_PER_OCTAVE: f64 = 1.5;
const HALF_LIFE_S: f64 = 6.0 * 3600.0;
const PRIOR_WEIGHT: f64 = 30.0;
/// The prior's exponential scale per feature: requests, objects, endpoints, failures.
const PRIOR_SCALE: [f64; FEATURES] = [15.0, 5.0, 4.0, 1.5];
/// Below these a feature never scores, however quiet the population: a
/// newcomer reading a page of a dozen items is not a scraper. Failures
/// also need to be half the minute's answers or more.
const FLOOR: [f64; FEATURES] = [30.0, 12.0, 8.0, 5.0];
/// How much each feature alone can add (noisy-OR, as in the profile).
const WEIGHT: [f64; FEATURES] = [0.6, 0.8, 0.5, 0.7];
const NAMES: [&str; FEATURES] = ["requests", "distinct objects", "endpoints", "failed answers"];
/// Surprise curve: 0.5 at 8 bits (1 newcomer-minute in 256 goes this far), near 1 from 12.
const BITS_MID: f64 = 8.0;
const BITS_SLOPE: f64 = 1.0;
/// Samples are folded in at most once a second; with none to fold, the
/// others' are read every 5 s.
const SYNC_MS: u64 = 1_000;
const REFRESH_MS: u64 = 5_000;
const KINDS: usize = 4;
const ENCODED: usize = 4 + 4 + FEATURES * BINS * 4;

fn bin(x: f64) -> usize {
    ((x.max(0.0).ln_1p() / std::f64::consts::LN_2) * BINS_PER_OCTAVE).floor().clamp(0.0, (BINS - 1) as f64) as usize
}

/// The lowest value of bin `b` (its left edge).
fn bin_floor(b: usize) -> f64 {
    ((b as f64 / BINS_PER_OCTAVE) * std::f64::consts::LN_2).exp() - 1.0
}

/// Decayed counts of identity-minutes per feature and bin.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Histograms {
    at_s: u32,
    total: f32,
    counts: [[f32; BINS]; FEATURES],
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms { at_s: 0, total: 0.0, counts: [[0.0; BINS]; FEATURES] }
    }
}

fn values(m: &Minute) -> [f64; FEATURES] {
    [f64::from(m.requests), f64::from(m.objects), f64::from(m.routes), f64::from(m.fails)]
}

impl Histograms {
    fn add(&mut self, m: &Minute) {
        for (f, x) in values(m).iter().enumerate() {
            if let Some(c) = self.counts.get_mut(f).and_then(|row| row.get_mut(bin(*x))) {
                *c += 1.0;
            }
        }
        self.total += 1.0;
    }

    fn decay_to(&mut self, at_s: u32) {
        if at_s > self.at_s && self.at_s != 0 {
            let k = (-(f64::from(at_s - self.at_s)) / HALF_LIFE_S).exp2() as f32;
            self.total *= k;
            self.counts.iter_mut().flatten().for_each(|c| *c *= k);
        }
        self.at_s = self.at_s.max(at_s);
    }

    fn merge(&mut self, other: &Histograms) {
        self.total += other.total;
        for (a, b) in self.counts.iter_mut().flatten().zip(other.counts.iter().flatten()) {
            *a += *b;
        }
    }

    /// The count at or above bin `b` of feature `f`.
    fn above(&self, f: usize, b: usize) -> f64 {
        self.counts.get(f).map_or(0.0, |r| r.iter().skip(b).map(|c| f64::from(*c)).sum())
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED);
        let mut w = Writer(&mut out);
        w.u32(self.at_s);
        w.f32(self.total);
        self.counts.iter().flatten().for_each(|c| w.f32(*c));
        out
    }

    fn decode(bytes: &[u8]) -> Option<Histograms> {
        let mut r = Reader(bytes);
        let mut h = Histograms { at_s: r.u32()?, total: r.f32()?, ..Histograms::default() };
        for c in h.counts.iter_mut().flatten() {
            *c = r.f32()?;
        }
        let ok = r.is_empty() && h.total.is_finite() && h.total >= 0.0 && h.counts.iter().flatten().all(|c| c.is_finite() && *c >= 0.0);
        ok.then_some(h)
    }
}

/// A newcomer's standing against its population.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub score: f64,
    /// How much population stands behind it: 0.5 on the prior alone, 1 from
    /// about 200 identity-minutes.
    pub confidence: f64,
    /// The features past `REASON_AT`, strongest first.
    pub reasons: Vec<String>,
}

const REASON_AT: f64 = 0.5;

fn kind_index(kind: IdentityKind) -> Option<usize> {
    match kind {
        IdentityKind::User => Some(0),
        IdentityKind::Jwt => Some(1),
        IdentityKind::ApiKey => Some(2),
        IdentityKind::ClientIp => Some(3),
        IdentityKind::Anonymous => None,
    }
}

/// This worker's population: the shared view as last read, plus the samples
/// not yet folded in.
pub struct Population {
    prefix: String,
    view: RefCell<[Histograms; KINDS]>,
    pending: RefCell<[Histograms; KINDS]>,
    synced_ms: RefCell<u64>,
    read_ms: RefCell<u64>,
}

impl Population {
    pub fn new(prefix: &str) -> Self {
        Population {
            prefix: format!("{prefix}population/"),
            view: RefCell::new([Histograms::default(); KINDS]),
            pending: RefCell::new([Histograms::default(); KINDS]),
            synced_ms: RefCell::new(0),
            read_ms: RefCell::new(0),
        }
    }

    /// A young identity's closed activity minute, taught by its decisions.
    pub fn sample(&self, kind: IdentityKind, minute: &Minute) {
        let Some(k) = kind_index(kind) else { return };
        if let Some(h) = self.pending.borrow_mut().get_mut(k) {
            h.add(minute);
        }
    }

    /// How unlike its population a newcomer's last minute is. No host call,
    /// no allocation unless a reason is worth reporting.
    pub fn judge(&self, kind: IdentityKind, now: &Summary) -> Option<Judgement> {
        let k = kind_index(kind)?;
        let view = self.view.borrow();
        let pending = self.pending.borrow();
        let (h, p) = (view.get(k)?, pending.get(k)?);
        let mut keep = 1.0;
        let mut parts = [0.0; FEATURES];
        let xs = [now.requests, now.objects, now.routes, now.fails];
        // Failures count only when most of the minute failed: a newcomer
        // stumbling on a few 404s among many answers is not guessing.
        let mostly_failed = now.fails >= 0.5 * now.requests;
        for f in 0..FEATURES {
            let (Some(x), Some(floor), Some(w)) = (xs.get(f), FLOOR.get(f), WEIGHT.get(f)) else { continue };
            if x < floor || (f == 3 && !mostly_failed) {
                continue;
            }
            // P(X >= x): the shared view plus this worker's samples not yet
            // folded in, and the prior's tail from the same bin edge.
            let b = bin(*x);
            let prior = (-bin_floor(b) / PRIOR_SCALE.get(f).copied().unwrap_or(1.0)).exp();
            let total = f64::from(h.total + p.total);
            let tail = (h.above(f, b) + p.above(f, b) + PRIOR_WEIGHT * prior) / (total + PRIOR_WEIGHT);
            let s = logistic(-tail.max(1e-12).log2(), BITS_MID, BITS_SLOPE);
            if let Some(slot) = parts.get_mut(f) {
                *slot = s;
            }
            keep *= 1.0 - w * s;
        }
        let walk = super::score::walk_score(now.run);
        keep *= 1.0 - 0.8 * walk;
        let score = (1.0 - keep).clamp(0.0, 1.0);
        let samples = f64::from(h.total + p.total);
        let confidence = 0.5 + 0.5 * (samples / 200.0).min(1.0);
        let mut reasons = Vec::new();
        if score >= REASON_AT {
            for (f, s) in parts.iter().enumerate() {
                if *s >= REASON_AT {
                    let (name, x) = (NAMES.get(f).copied().unwrap_or("?"), xs.get(f).copied().unwrap_or(0.0));
                    reasons.push(format!("{s:.2}: {x:.0} {name} in its last minute, rare for a newcomer of its kind"));
                }
            }
            if walk >= REASON_AT {
                reasons.push(format!("{walk:.2}: {} object ids in sequence", now.run));
            }
        }
        Some(Judgement { score, confidence, reasons })
    }

    /// Folds this worker's samples into the shared records and reads the
    /// others' (every worker, at most once a `SYNC_MS`). A failed fold keeps
    /// the samples for the next tick.
    pub fn on_tick(&self, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<(), StoreError> {
        {
            let mut synced = self.synced_ms.borrow_mut();
            if now_ms < synced.saturating_add(SYNC_MS) {
                return Ok(());
            }
            *synced = now_ms;
        }
        let at_s = (now_ms / 1000) as u32;
        let refresh = {
            let mut read = self.read_ms.borrow_mut();
            let due = now_ms >= read.saturating_add(REFRESH_MS);
            if due {
                *read = now_ms;
            }
            due
        };
        for k in 0..KINDS {
            let pending = self.pending.borrow().get(k).copied().unwrap_or_default();
            if pending.total <= 0.0 && !refresh {
                continue;
            }
            let key = format!("{}{k}", self.prefix);
            let merged = if pending.total > 0.0 {
                record::update(store, metrics, Table::Profile, &key, |bytes| {
                    let mut h = bytes.and_then(Histograms::decode).unwrap_or_default();
                    h.decay_to(at_s);
                    h.merge(&pending);
                    (Some(h.encode()), h)
                })?
            } else {
                match store.get(&key)? {
                    Some((bytes, _)) => Histograms::decode(&bytes).unwrap_or_default(),
                    None => Histograms::default(),
                }
            };
            if pending.total > 0.0 {
                if let Some(p) = self.pending.borrow_mut().get_mut(k) {
                    *p = Histograms::default();
                }
            }
            if let Some(v) = self.view.borrow_mut().get_mut(k) {
                *v = merged;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    fn minute(requests: u16, objects: u16, routes: u16, fails: u16) -> Minute {
        Minute { requests, objects, routes, fails }
    }

    fn now(requests: f64, objects: f64, routes: f64, fails: f64, run: u16) -> Summary {
        Summary { requests, objects, routes, fails, run, age_ms: 30_000, objects_known: false }
    }

    #[test]
    fn a_scraping_newcomer_stands_out_and_an_ordinary_one_does_not() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let (a, b) = (Population::new("vigil/"), Population::new("vigil/"));
        // 300 ordinary newcomer-minutes, seen by two workers.
        for i in 0..300u16 {
            let m = minute(2 + i % 12, i % 6, 1 + i % 4, u16::from(i % 10 == 0));
            if i % 2 == 0 { a.sample(IdentityKind::User, &m) } else { b.sample(IdentityKind::User, &m) }
        }
        a.on_tick(10_000, &store, &metrics).unwrap();
        b.on_tick(10_000, &store, &metrics).unwrap();
        a.on_tick(16_000, &store, &metrics).unwrap();
        let ordinary = a.judge(IdentityKind::User, &now(10.0, 4.0, 3.0, 1.0, 0)).unwrap();
        assert!(ordinary.score < 0.05, "{ordinary:?}");
        // A busy but plausible newcomer (a page load fanning out): still quiet.
        let busy = a.judge(IdentityKind::User, &now(25.0, 10.0, 7.0, 0.0, 2)).unwrap();
        assert!(busy.score < 0.1, "{busy:?}");
        let scraper = a.judge(IdentityKind::User, &now(120.0, 115.0, 1.0, 0.0, 0)).unwrap();
        assert!(scraper.score > 0.8 && scraper.confidence > 0.95, "{scraper:?}");
        assert!(scraper.reasons.iter().any(|r| r.contains("distinct objects")), "{scraper:?}");
        // A slow enumeration: 2 a second, in sequence.
        let slow = a.judge(IdentityKind::User, &now(20.0, 20.0, 1.0, 0.0, 19)).unwrap();
        assert!(slow.score > 0.5, "{slow:?}");
        // Other kinds have their own population (only the prior here).
        let key = a.judge(IdentityKind::ApiKey, &now(10.0, 4.0, 3.0, 1.0, 0)).unwrap();
        assert!(key.score < 0.05 && key.confidence == 0.5, "{key:?}");
        assert!(a.judge(IdentityKind::Anonymous, &now(1.0, 0.0, 1.0, 0.0, 0)).is_none());
    }

    #[test]
    fn the_shared_record_is_bounded_and_survives_garbage() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let p = Population::new("vigil/");
        store.set("vigil/population/0", b"garbage", 0).unwrap();
        for i in 0..100_000u32 {
            p.sample(IdentityKind::User, &minute((i % 500) as u16, (i % 300) as u16, 3, 0));
        }
        p.on_tick(5_000, &store, &metrics).unwrap();
        let (bytes, _) = store.get("vigil/population/0").unwrap().unwrap();
        assert_eq!(bytes.len(), ENCODED);
        // Decay: six hours later a sample counts twice as much as the old ones.
        p.sample(IdentityKind::User, &minute(1, 0, 1, 0));
        p.on_tick(5_000 + 6 * 3_600_000, &store, &metrics).unwrap();
        let h = Histograms::decode(&store.get("vigil/population/0").unwrap().unwrap().0).unwrap();
        assert!((h.total - 50_001.0).abs() < 5.0, "{}", h.total);
    }
}
