//! How widely each route is used: the share of the established identities
//! that called it lately. A route new to one identity is worth noticing; a
//! route new to it that nearly everyone uses (search, the product pages) is
//! a small step, not a takeover's walk to `/admin/api-keys`. A traveller who
//! tries the search abroad must not look like a thief who found the export.
//!
//! A fixed table of `SLOTS` routes, each with two 128-bit linear-counting
//! bitmaps of the distinct identities that called it: this generation and the
//! one before (`GENERATION_MS` each, counted from the epoch, so every worker
//! rolls at the same instant). A route's breadth is what the two hold; its
//! popularity is that against the widest route's. Each worker marks its own
//! view (no host call on the request path) and folds its marks into one
//! shared record from its ticks, as `adoption` does.

use crate::engine::codec::{Reader, Writer};
use super::folded::{Folded, Mergeable};
use super::score::Component;
use crate::engine::ports::{MetricsSink, SharedStore, StoreError};
use std::cell::Cell;

const SLOTS: usize = 128;
const GENERATION_MS: u64 = 5 * 60_000;
/// Below this many identities on the widest route, nothing is popular: a
/// handful of users says nothing about what "everyone" does.
const MIN_WIDEST: f64 = 10.0;
/// What a new endpoint's score keeps on a route everyone uses (see `keep`).
pub const POPULAR_DISCOUNT: f64 = 0.8;
/// A route used by under half as many identities as the widest is not
/// "what everyone uses" (a profile page a sixth of the users open): no
/// discount. A takeover's walk is made of such routes.
pub const POPULAR_FROM: f64 = 0.5;

/// The share of its score a new endpoint keeps on
/// a route of this popularity: 1 up to `POPULAR_FROM`, falling linearly to
/// `1 - POPULAR_DISCOUNT` on the widest route.
pub fn keep(popularity: f64) -> f64 {
    if !popularity.is_finite() {
        return 1.0;
    }
    let p = ((popularity - POPULAR_FROM) / (1.0 - POPULAR_FROM)).clamp(0.0, 1.0);
    1.0 - POPULAR_DISCOUNT * p
}

/// A popular route's discount on a request's parts: the endpoint's score
/// at `keep`; the mix, and everything else, as it was (a slow walk shifts
/// the mix on popular routes too).
pub fn discount(parts: &mut [(Component, f64)], keep: f64) {
    // A keep that is not a number discounts nothing: the safe way round.
    let keep = if keep.is_finite() { keep.clamp(0.0, 1.0) } else { 1.0 };
    for (_, s) in parts.iter_mut().filter(|(c, _)| *c == Component::Endpoint) {
        *s *= keep;
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Slot {
    route: u32,
    generation: u32,
    now: u128,
    before: u128,
}

impl Slot {
    /// The slot as of `generation`: older bits age out.
    fn rolled(mut self, generation: u32) -> Slot {
        if generation == self.generation.wrapping_add(1) {
            (self.before, self.now) = (self.now, 0);
        } else if generation != self.generation {
            (self.before, self.now) = (0, 0);
        }
        // A slot from the future (a clock gone wrong, a forged record) counts nothing.
        self.generation = generation;
        self
    }

    fn breadth(&self) -> f64 {
        distinct(self.now | self.before)
    }

    fn is_empty(&self) -> bool {
        self.now == 0 && self.before == 0
    }
}

fn distinct(bits: u128) -> f64 {
    let zeros = f64::from(128 - bits.count_ones());
    if zeros == 0.0 { 128.0 * 128f64.ln() } else { -128.0 * (zeros / 128.0).ln() }
}

fn generation_of(now_ms: u64) -> u32 {
    (now_ms / GENERATION_MS) as u32
}

#[derive(Debug, Clone, PartialEq)]
struct Breadth {
    slots: [Slot; SLOTS],
}

impl Default for Breadth {
    fn default() -> Self {
        Breadth { slots: [Slot::default(); SLOTS] }
    }
}

impl Breadth {
    fn used(&mut self, route: u32, identity: u64, now_ms: u64) {
        let g = generation_of(now_ms);
        let Some(s) = self.slots.get_mut(route as usize % SLOTS) else { return };
        let mut slot = s.rolled(g);
        if slot.route != route {
            // Another route holds it: the wider keeps it (a collision costs
            // the narrower its discount, the safe way round).
            if slot.breadth() > 1.5 {
                return;
            }
            slot = Slot { route, generation: g, now: 0, before: 0 };
        }
        slot.now |= 1u128 << (identity.rotate_left(23) % 128);
        *s = slot;
    }

    fn breadth(&self, route: u32, now_ms: u64) -> f64 {
        match self.slots.get(route as usize % SLOTS) {
            Some(s) if s.route == route && s.generation <= generation_of(now_ms) => s.rolled(generation_of(now_ms)).breadth(),
            _ => 0.0,
        }
    }

    fn widest(&self, now_ms: u64) -> f64 {
        let g = generation_of(now_ms);
        self.slots.iter().filter(|s| s.generation <= g).map(|s| s.rolled(g).breadth()).fold(0.0, f64::max)
    }
}

impl Mergeable for Breadth {
    /// Takes in another view as of `now_ms`: the same route's bitmaps join;
    /// a slot another route holds goes to the wider.
    fn merge(&mut self, other: &Self, now_ms: u64) {
        let g = generation_of(now_ms);
        for (mine, theirs) in self.slots.iter_mut().zip(other.slots.iter()) {
            if theirs.generation > g {
                continue;
            }
            let (m, t) = (mine.rolled(g), theirs.rolled(g));
            *mine = if t.is_empty() {
                m
            } else if m.route == t.route || m.is_empty() {
                Slot { route: t.route, generation: g, now: m.now | t.now, before: m.before | t.before }
            } else if t.breadth() > m.breadth() {
                t
            } else {
                m
            };
        }
    }

    fn is_empty(&self) -> bool {
        self.slots.iter().all(Slot::is_empty)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED);
        let mut w = Writer(&mut out);
        w.u8(VERSION);
        for s in &self.slots {
            w.u32(s.route);
            w.u32(s.generation);
            w.u64((s.now >> 64) as u64);
            w.u64(s.now as u64);
            w.u64((s.before >> 64) as u64);
            w.u64(s.before as u64);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let mut b = Breadth::default();
        for s in b.slots.iter_mut() {
            let (route, generation) = (r.u32()?, r.u32()?);
            let now = (u128::from(r.u64()?) << 64) | u128::from(r.u64()?);
            let before = (u128::from(r.u64()?) << 64) | u128::from(r.u64()?);
            *s = Slot { route, generation, now, before };
        }
        r.is_empty().then_some(b)
    }
}

const VERSION: u8 = 1;
const ENCODED: usize = 1 + SLOTS * (4 + 4 + 32);

/// One worker's view of the routes' breadth, folded into shared data from
/// its ticks, and the widest route's breadth as of the last fold.
pub struct Shared {
    folded: Folded<Breadth>,
    widest: Cell<f64>,
}

impl Shared {
    pub fn new(prefix: &str) -> Shared {
        Shared { folded: Folded::new(format!("{prefix}breadth")), widest: Cell::new(0.0) }
    }

    /// Request path: an established identity called `route`, in its routine.
    pub fn used(&self, route: u32, identity: u64, now_ms: u64) {
        self.folded.mark(|b| b.used(route, identity, now_ms));
    }

    /// Request path: in [0, 1], how widely `route` is used against the
    /// widest route, on every worker as of the last fold (0 while too few
    /// identities are known).
    pub fn popularity(&self, route: u32, now_ms: u64) -> f64 {
        let widest = self.widest.get();
        if widest < MIN_WIDEST {
            return 0.0;
        }
        (self.folded.view().breadth(route, now_ms) / widest).clamp(0.0, 1.0)
    }

    /// Tick: see `Folded::on_tick`; the widest route is found once per fold.
    pub fn on_tick(&self, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<(), StoreError> {
        if self.folded.on_tick(now_ms, store, metrics)? {
            self.widest.set(self.folded.view().widest(now_ms));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    fn who(i: u64) -> u64 {
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    #[test]
    fn a_route_most_identities_use_is_popular_across_workers_and_a_rare_one_is_not() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let workers = [Shared::new("vigil/"), Shared::new("vigil/")];
        let t = 10 * GENERATION_MS + 1_000;
        // 40 identities, split over two workers, all search (route 1); two call the admin route (2).
        for i in 0..40u64 {
            workers[(i % 2) as usize].used(1, who(i), t + i);
        }
        workers[0].used(2, who(1), t);
        workers[1].used(2, who(2), t);
        assert_eq!(workers[0].popularity(1, t + 100), 0.0, "nothing is known before a fold");
        for w in &workers {
            w.on_tick(t + 1_000, &store, &metrics).unwrap();
        }
        workers[0].on_tick(t + 2_000, &store, &metrics).unwrap();
        for w in &workers {
            assert!(w.popularity(1, t + 2_000) > 0.99, "{}", w.popularity(1, t + 2_000));
            assert!(w.popularity(2, t + 2_000) < 0.1, "{}", w.popularity(2, t + 2_000));
            assert_eq!(w.popularity(3, t + 2_000), 0.0, "a route nobody called");
        }
        // Two generations later, with nobody calling, the breadth is gone.
        let later = t + 2 * GENERATION_MS + 2_000;
        workers[1].used(9, who(99), later);
        workers[1].on_tick(later, &store, &metrics).unwrap();
        assert_eq!(workers[1].popularity(1, later), 0.0);
    }

    #[test]
    fn the_discount_takes_the_endpoint_and_leaves_the_mix() {
        let mut parts = [(Component::Endpoint, 1.0), (Component::Mix, 0.9), (Component::Rate, 0.4)];
        discount(&mut parts, keep(1.0));
        assert!((parts[0].1 - 0.2).abs() < 1e-9, "{parts:?}");
        assert_eq!((parts[1].1, parts[2].1), (0.9, 0.4), "the mix and the rest keep their scores");
        discount(&mut parts, f64::NAN);
        assert!((parts[0].1 - 0.2).abs() < 1e-9, "a keep that is not a number discounts nothing: {parts:?}");
    }

    #[test]
    fn only_routes_most_identities_use_are_discounted() {
        assert_eq!(keep(0.0), 1.0);
        assert_eq!(keep(0.16), 1.0, "a route a sixth of the identities use is no discount");
        assert_eq!(keep(0.5), 1.0);
        assert!((keep(0.75) - 0.6).abs() < 1e-9);
        assert!((keep(1.0) - 0.2).abs() < 1e-9);
        assert_eq!(keep(f64::NAN), 1.0, "nothing known: no discount");
    }

    #[test]
    fn few_identities_make_nothing_popular_and_hostile_records_count_nothing() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let w = Shared::new("vigil/");
        let t = 10 * GENERATION_MS;
        for i in 0..5u64 {
            w.used(1, who(i), t);
        }
        // The same identity again and again is one.
        for _ in 0..500 {
            w.used(2, who(7), t);
        }
        w.on_tick(t + 1_000, &store, &metrics).unwrap();
        assert_eq!(w.popularity(1, t + 1_000), 0.0, "five identities are not 'everyone'");
        // Garbage is replaced, never trusted, never a panic.
        let key = "vigil/breadth";
        store.set(key, b"\x01garbage", 0).unwrap();
        w.used(1, who(1), t + 2_000);
        w.on_tick(t + 2_000, &store, &metrics).unwrap();
        assert!(Breadth::decode(&store.get(key).unwrap().unwrap().0).is_some());
        // A forged record from the future, every bit set, makes nothing popular.
        let mut forged = Breadth::default();
        for s in forged.slots.iter_mut() {
            *s = Slot { route: 2, generation: u32::MAX, now: u128::MAX, before: u128::MAX };
        }
        store.set(key, &forged.encode(), 0).unwrap();
        let fresh = Shared::new("vigil/");
        fresh.on_tick(t + 10_000, &store, &metrics).unwrap();
        assert_eq!(fresh.popularity(2, t + 10_000), 0.0);
    }
}
