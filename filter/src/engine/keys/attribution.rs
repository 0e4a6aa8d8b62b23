//! Route anomalies, attributed: the traffic analysis says a route is
//! anomalous; this says who drives it. A caller is a **contributor** when it
//! (its identity, or one of its key values: its /24, its JA4, its ASN) sends
//! at least `min_share` of the route's recent traffic and at least
//! `surge_ratio` times its share before the anomaly. Newcomers (no share
//! before) are contributors once they carry `min_share`; an established
//! caller at its usual pace is not, nor is anyone when everybody moves to a
//! route together (shares do not change when everyone's traffic does).
//!
//! Per route, shared data holds the top subjects (`TOP`) with two decaying
//! counts each, recent (`recent_seconds`) and before (`baseline_seconds`),
//! and the route's totals. The "before" counts freeze while the route is
//! anomalous, so they stay the share before the anomaly. Workers count
//! completed requests per route in a small heavy-hitter sketch of their own
//! (no host call), merge it into the shared record once per sync, and keep
//! the merged record to judge requests by (no host call either).

use super::record::Window;
use crate::engine::codec::{Reader, Writer};
use crate::engine::ports::{MetricsSink, SharedStore, StoreError, Table};
use crate::engine::slots::{Hints, Record, SlotTable};
use std::cell::RefCell;

/// Subjects kept per route in shared data.
pub const TOP: usize = 24;
/// A subject acting as usual for it (an established identity's routine
/// request) drives an anomaly only if it alone carries this share of the
/// route's recent traffic: a power user's busy minute or a page that fans out
/// beside someone else's burst is its own; a scraper whose profile learned
/// the scraping still carries the route.
pub const ROUTINE_MIN_SHARE: f32 = 0.25;
/// Routes a worker counts between two syncs; more are not attributed.
const LOCAL_ROUTES: usize = 64;
/// A worker's sketch per route: 32 buckets of two ways.
const SKETCH: usize = 64;
const VERSION: u8 = 1;

/// How a request on an anomalous route stands to the anomaly (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// It drives the anomaly: the traffic score counts toward its risk.
    Contributor,
    /// It does not: the score stays visible but counts at `bystander_weight`.
    Bystander,
    /// Nothing known about the route's callers yet: the score counts as before.
    Unknown,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Contributor, Role::Bystander, Role::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Contributor => "contributor",
            Role::Bystander => "bystander",
            Role::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub recent_ms: u64,
    pub baseline_ms: u64,
    pub min_share: f32,
    pub surge_ratio: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Entry {
    pub subject: u64,
    pub recent: f32,
    pub before: f32,
}

/// One route's callers, as shared data holds them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteRecord {
    pub at_ms: u64,
    /// When `before` counts were last decayed (they stand still while frozen).
    pub before_at_ms: u64,
    pub recent_total: f32,
    pub before_total: f32,
    /// The route was anomalous at the last hand-in: `before` is frozen.
    pub frozen: bool,
    pub entries: Vec<Entry>,
}

fn decay(elapsed_ms: u64, tau_ms: u64) -> f32 {
    Window { window_ms: tau_ms, epoch_ms: tau_ms }.keep(elapsed_ms)
}

impl RouteRecord {
    fn merged(old: Option<&RouteRecord>, local: &RouteLocal, now_ms: u64, s: &Settings) -> RouteRecord {
        let mut r = old.cloned().unwrap_or(RouteRecord { at_ms: now_ms, before_at_ms: now_ms, ..RouteRecord::default() });
        let k = decay(now_ms.saturating_sub(r.at_ms), s.recent_ms);
        r.recent_total *= k;
        r.entries.iter_mut().for_each(|e| e.recent *= k);
        r.at_ms = r.at_ms.max(now_ms);
        let frozen = local.anomalous;
        if !frozen {
            let k = decay(now_ms.saturating_sub(r.before_at_ms), s.baseline_ms);
            r.before_total *= k;
            r.entries.iter_mut().for_each(|e| e.before *= k);
            r.before_at_ms = r.before_at_ms.max(now_ms);
        }
        r.frozen = frozen;
        let add_before = if frozen { 0.0 } else { 1.0 };
        r.recent_total += local.total as f32;
        r.before_total += add_before * local.total as f32;
        for &(subject, count) in local.sketch.iter().filter(|(s, c)| *s != 0 && *c > 0) {
            let c = count as f32;
            match r.entries.iter_mut().find(|e| e.subject == subject) {
                Some(e) => {
                    e.recent += c;
                    e.before += add_before * c;
                }
                None => r.entries.push(Entry { subject, recent: c, before: add_before * c }),
            }
        }
        if r.entries.len() > TOP {
            let (rt, bt) = (r.recent_total.max(1.0), r.before_total.max(1.0));
            let weight = |e: &Entry| (e.recent / rt).max(e.before / bt);
            r.entries.sort_by(|a, b| weight(b).total_cmp(&weight(a)));
            r.entries.truncate(TOP);
        }
        r
    }

    /// `subject`'s share of the route's recent traffic and of its traffic before.
    pub fn shares(&self, subject: u64) -> Option<(f32, f32)> {
        let e = self.entries.iter().find(|e| e.subject == subject)?;
        let recent = if self.recent_total > 0.0 { e.recent / self.recent_total } else { 0.0 };
        let before = if self.before_total > 0.0 { e.before / self.before_total } else { 0.0 };
        Some((recent.clamp(0.0, 1.0), before.clamp(0.0, 1.0)))
    }
}

impl Record for RouteRecord {
    const SIZE_HINT: usize = 1 + 8 + 8 + 4 + 4 + 1 + 1 + TOP * 16;

    fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.u8(VERSION);
        w.u64(self.at_ms);
        w.u64(self.before_at_ms);
        w.f32(self.recent_total);
        w.f32(self.before_total);
        w.u8(u8::from(self.frozen));
        let n = self.entries.len().min(TOP);
        w.u8(n as u8);
        for e in self.entries.iter().take(n) {
            w.u64(e.subject);
            w.f32(e.recent);
            w.f32(e.before);
        }
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let (at_ms, before_at_ms) = (r.u64()?, r.u64()?);
        let ok = |v: f32| (v.is_finite() && v >= 0.0).then_some(v);
        let recent_total = ok(r.f32()?)?;
        let before_total = ok(r.f32()?)?;
        let frozen = r.u8()? != 0;
        let n = usize::from(r.u8()?).min(TOP);
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(Entry { subject: r.u64()?, recent: ok(r.f32()?)?, before: ok(r.f32()?)? });
        }
        r.is_empty().then_some(RouteRecord { at_ms, before_at_ms, recent_total, before_total, frozen, entries })
    }

    fn keep_value(&self, idle_ms: u64) -> f64 {
        f64::from(self.before_total) - idle_ms as f64
    }
}

/// A worker's counts for one route since its last sync.
#[derive(Debug, Clone)]
struct RouteLocal {
    route: u32,
    total: u32,
    /// A request here saw the route anomalous: do not teach "before".
    anomalous: bool,
    sketch: [(u64, u32); SKETCH],
}

impl RouteLocal {
    fn new(route: u32) -> Self {
        RouteLocal { route, total: 0, anomalous: false, sketch: [(0, 0); SKETCH] }
    }

    /// Counts one request of `subject`: two ways per bucket; a newcomer to a
    /// full bucket wears down the lighter resident and takes its place when
    /// it reaches zero, so heavy subjects stay.
    fn count(&mut self, subject: u64) {
        let b = 2 * ((subject as usize >> 3) % (SKETCH / 2));
        let (a, c) = (b, b + 1);
        let ways = [self.sketch.get(a).copied(), self.sketch.get(c).copied()];
        let target = match ways {
            [Some((s, _)), _] if s == subject => Some(a),
            [_, Some((s, _))] if s == subject => Some(c),
            [Some((0, _)), _] => Some(a),
            [_, Some((0, _))] => Some(c),
            [Some((_, x)), Some((_, y))] => {
                let lighter = if x <= y { a } else { c };
                if let Some(w) = self.sketch.get_mut(lighter) {
                    w.1 -= 1;
                    if w.1 == 0 {
                        *w = (subject, 0);
                        Some(lighter)
                    } else {
                        None
                    }
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(w) = target.and_then(|i| self.sketch.get_mut(i)) {
            w.0 = subject;
            w.1 = w.1.saturating_add(1);
        }
    }

    fn clear(&mut self) {
        self.total = 0;
        self.anomalous = false;
        self.sketch = [(0, 0); SKETCH];
    }
}

/// How a request stands to its route's anomaly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finding {
    pub role: Role,
    /// Which of the subjects judged (index into the slice given), for a contributor.
    pub subject: Option<usize>,
    /// Its share of the route's recent traffic, and before (for a bystander:
    /// the largest recent share among its subjects).
    pub recent: f32,
    pub before: f32,
}

pub struct Attribution {
    s: Settings,
    prefix: String,
    slots: u32,
    ttl_ms: u64,
    hints: Hints,
    local: RefCell<Vec<RouteLocal>>,
    views: RefCell<Vec<(u32, RouteRecord)>>,
}

fn owner(route: u32) -> u64 {
    (u64::from(route) << 32 | u64::from(route.rotate_left(16))) | 1
}

impl Attribution {
    pub fn new(s: Settings, max_routes: u32) -> Self {
        Attribution {
            prefix: format!("vigil/keys/routes/{max_routes}/"),
            slots: max_routes,
            ttl_ms: s.baseline_ms.saturating_mul(4),
            hints: Hints::for_slots(max_routes),
            local: RefCell::new(Vec::with_capacity(LOCAL_ROUTES)),
            views: RefCell::new(Vec::with_capacity(max_routes as usize)),
            s,
        }
    }

    fn table<'a>(&'a self, store: &'a dyn SharedStore, metrics: &'a dyn MetricsSink) -> SlotTable<'a> {
        SlotTable::new(store, metrics, &self.prefix, self.slots, Table::Keys, self.ttl_ms).with_hints(&self.hints)
    }

    pub fn start(&self, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<u32, StoreError> {
        self.table(store, metrics).initialize::<RouteRecord>()
    }

    fn with_route<T>(&self, route: u32, f: impl FnOnce(&mut RouteLocal) -> T) -> Option<T> {
        let mut local = self.local.borrow_mut();
        let i = match local.iter().position(|r| r.route == route) {
            Some(i) => i,
            None if local.len() < LOCAL_ROUTES => {
                local.push(RouteLocal::new(route));
                local.len() - 1
            }
            None => return None,
        };
        local.get_mut(i).map(f)
    }

    /// One completed request on `route` by `subjects` (0s are skipped).
    pub fn count(&self, route: u32, subjects: &[u64]) {
        self.with_route(route, |r| {
            r.total = r.total.saturating_add(1);
            for &s in subjects.iter().filter(|s| **s != 0) {
                r.count(s);
            }
        });
    }

    /// Whether `subjects` drive `route`'s anomaly (request path, no host
    /// call). Also notes the route anomalous, so the next sync freezes its
    /// "before" counts. `first_share`: the share the first subject needs at
    /// least (`ROUTINE_MIN_SHARE` for a routine identity, else 0).
    pub fn judge(&self, route: u32, subjects: &[u64], first_share: f32) -> Finding {
        self.with_route(route, |r| r.anomalous = true);
        let views = self.views.borrow();
        let Some((_, record)) = views.iter().find(|(r, _)| *r == route) else {
            return Finding { role: Role::Unknown, subject: None, recent: 0.0, before: 0.0 };
        };
        let mut best: Option<(usize, f32, f32)> = None;
        let mut largest = (0.0f32, 0.0f32);
        for (i, &s) in subjects.iter().enumerate().filter(|(_, s)| **s != 0) {
            let Some((recent, before)) = record.shares(s) else { continue };
            if recent > largest.0 {
                largest = (recent, before);
            }
            let floor = if i == 0 { self.s.min_share.max(first_share) } else { self.s.min_share };
            let surging = recent >= floor && recent >= self.s.surge_ratio * before;
            if surging && best.map_or(true, |(_, r, _)| recent > r) {
                best = Some((i, recent, before));
            }
        }
        match best {
            Some((i, recent, before)) => Finding { role: Role::Contributor, subject: Some(i), recent, before },
            None => Finding { role: Role::Bystander, subject: None, recent: largest.0, before: largest.1 },
        }
    }

    /// Hands this worker's counts to shared data and keeps the merged
    /// records (every route counted since the last sync: at most 64).
    pub fn sync(&self, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<(), StoreError> {
        let table = self.table(store, metrics);
        let mut result = Ok(());
        let mut local = self.local.borrow_mut();
        for r in local.iter_mut().filter(|r| r.total > 0 || r.anomalous) {
            match table.update(owner(r.route), now_ms, |old| RouteRecord::merged(old, r, now_ms, &self.s)) {
                Ok(updated) => {
                    self.keep_view(r.route, updated.record);
                    r.clear();
                }
                // Kept for the next sync.
                Err(e) => result = Err(e),
            }
        }
        // Routes nobody counted here lately make room for others.
        local.retain(|r| r.total > 0 || r.anomalous);
        result
    }

    fn keep_view(&self, route: u32, record: RouteRecord) {
        let mut views = self.views.borrow_mut();
        if let Some(v) = views.iter_mut().find(|(r, _)| *r == route) {
            v.1 = record;
            return;
        }
        if views.len() < self.slots as usize {
            views.push((route, record));
        } else if let Some(oldest) = views.iter_mut().min_by_key(|(_, v)| v.at_ms) {
            *oldest = (route, record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    fn settings() -> Settings {
        Settings { recent_ms: 10_000, baseline_ms: 300_000, min_share: 0.05, surge_ratio: 3.0 }
    }

    /// `per_second` requests a second from each (subject, count) for `seconds`, syncing every second.
    fn run(a: &Attribution, store: &MemoryStore, now: &mut u64, seconds: u64, route: u32, load: &[(u64, u32)], anomalous: bool) {
        for _ in 0..seconds {
            for &(s, n) in load {
                for _ in 0..n {
                    a.count(route, &[s]);
                }
            }
            if anomalous {
                a.judge(route, &[], 0.0);
            }
            *now += 1_000;
            a.sync(*now, store, &MemoryMetrics::default()).unwrap();
        }
    }

    fn start() -> (Attribution, MemoryStore, u64) {
        let a = Attribution::new(settings(), 16);
        let store = MemoryStore::default();
        a.start(&store, &MemoryMetrics::default()).unwrap();
        (a, store, 1_700_000_000_000)
    }

    #[test]
    fn the_burst_is_attributed_to_its_drivers_not_to_the_ordinary_callers() {
        let (a, store, mut now) = start();
        // Forty ordinary callers, two requests a second each.
        let ordinary: Vec<(u64, u32)> = (1..=40u64).map(|i| (i * 1_000_003, 2)).collect();
        run(&a, &store, &mut now, 120, 7, &ordinary, false);
        // A tenfold burst: one newcomer /24 sends most of it.
        let attacker = 0xabcd_ef01_2345_6789u64;
        let mut load = ordinary.clone();
        load.push((attacker, 720));
        run(&a, &store, &mut now, 30, 7, &load, true);
        let f = a.judge(7, &[42, attacker], 0.0);
        assert_eq!(f.role, Role::Contributor, "{f:?}");
        assert_eq!(f.subject, Some(1));
        assert!(f.recent > 0.8 && f.before < 0.01, "{f:?}");
        // An ordinary caller at its usual pace is a bystander.
        let f = a.judge(7, &[ordinary[3].0], 0.0);
        assert_eq!(f.role, Role::Bystander, "{f:?}");
        // A route never counted: unknown.
        assert_eq!(a.judge(8, &[attacker], 0.0).role, Role::Unknown);
    }

    #[test]
    fn a_routine_caller_drives_an_anomaly_only_by_carrying_the_route() {
        let (a, store, mut now) = start();
        let ordinary: Vec<(u64, u32)> = (1..=10u64).map(|i| (i * 1_000_003, 2)).collect();
        let busy = 0x5eed_u64;
        let mut load = ordinary.clone();
        load.push((busy, 1));
        run(&a, &store, &mut now, 120, 7, &load, false);
        // A burst from newcomers, and beside it the busy user's own fanout:
        // three and a half times its usual share, a sixth of the route.
        let burst = 0xabcd_ef01_2345_6789u64;
        let mut load = ordinary.clone();
        load.extend([(busy, 12), (burst, 40)]);
        run(&a, &store, &mut now, 30, 7, &load, true);
        let f = a.judge(7, &[busy], 0.0);
        assert_eq!(f.role, Role::Contributor, "as any caller, it surged: {f:?}");
        let f = a.judge(7, &[busy], ROUTINE_MIN_SHARE);
        assert_eq!(f.role, Role::Bystander, "as usual for it, and not the route's driver: {f:?}");
        // One that carries the route drives it, routine or not.
        let mut load = ordinary.clone();
        load.push((busy, 200));
        run(&a, &store, &mut now, 30, 7, &load, true);
        assert_eq!(a.judge(7, &[busy], ROUTINE_MIN_SHARE).role, Role::Contributor);
    }

    #[test]
    fn everybody_moving_together_has_no_contributor() {
        let (a, store, mut now) = start();
        // A release moves all callers to a new route: each keeps its share.
        let callers: Vec<(u64, u32)> = (1..=30u64).map(|i| (i * 7_777_777, 1 + (i % 3) as u32)).collect();
        run(&a, &store, &mut now, 3, 9, &callers, false);
        run(&a, &store, &mut now, 30, 9, &callers, true);
        for (s, _) in &callers {
            assert_eq!(a.judge(9, &[*s], 0.0).role, Role::Bystander);
        }
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_subjects_and_routes() {
        let (a, store, mut now) = start();
        let keys = store.len();
        for second in 0..20u64 {
            for i in 0..5_000u64 {
                a.count((i % 200) as u32, &[second * 1_000_000 + i + 1, i + 7]);
            }
            now += 1_000;
            a.sync(now, &store, &MemoryMetrics::default()).unwrap();
        }
        assert_eq!(store.len(), keys, "no new keys in shared data");
        assert!(a.local.borrow().len() <= LOCAL_ROUTES);
        assert!(a.views.borrow().len() <= 16);
        assert!(a.views.borrow().iter().all(|(_, r)| r.entries.len() <= TOP));
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let mut local = RouteLocal::new(3);
        local.total = 5;
        local.count(11);
        let r = RouteRecord::merged(None, &local, 10, &settings());
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(RouteRecord::decode(&out), Some(r));
        assert!(RouteRecord::decode(&out[..out.len() - 2]).is_none());
        assert!(RouteRecord::decode(&[1, 2, 3]).is_none());
    }
}
