//! Routes many established identities take up at once: a release, not an
//! oddity of each of them. When a new version moves everybody to
//! `/api/v2/...`, every profile finds the new endpoints surprising and the
//! recent mix changed; one identity alone on a route new to it is worth
//! noticing, twenty at once are the application changing.
//!
//! A fixed table of `SLOTS` routes, each with a 64-bit linear-counting
//! bitmap of the distinct established identities for whom the route was new,
//! over a window of `WINDOW_MS`. Each worker marks its adopters in its own
//! view (no host call on the request path) and folds what it marked into one
//! shared record from its ticks (`Shared`: a compare-and-swap at most once a
//! second, bitmaps OR-ed), reading back every worker's: a release is seen
//! once five identities took it up anywhere, not five on each worker.

use crate::engine::codec::{Reader, Writer};
use super::folded::{Folded, Mergeable};
use crate::engine::ports::{MetricsSink, SharedStore, StoreError};

const SLOTS: usize = 64;
const WINDOW_MS: u64 = 10 * 60_000;
/// Distinct adopters (in the window) that make a release.
pub const RELEASE_AT: f64 = 5.0;
/// What the endpoint and mix components of an adopted route still count.
pub const ADOPTED_SHARE: f64 = 0.3;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Slot {
    route: u32,
    since_ms: u64,
    adopters: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Adoption {
    slots: [Slot; SLOTS],
}

impl Default for Adoption {
    fn default() -> Self {
        Adoption { slots: [Slot::default(); SLOTS] }
    }
}

fn distinct(bits: u64) -> f64 {
    let zeros = f64::from(64 - bits.count_ones());
    if zeros == 0.0 { 64.0 * 64f64.ln() } else { -64.0 * (zeros / 64.0).ln() }
}

impl Adoption {
    fn slot(&self, route: u32) -> Option<&Slot> {
        self.slots.get(route as usize % SLOTS).filter(|s| s.route == route && s.adopters != 0)
    }

    /// How many established identities took `route` up lately.
    pub fn adopters(&self, route: u32, now_ms: u64) -> f64 {
        match self.slot(route) {
            Some(s) if live(s, now_ms) => distinct(s.adopters),
            _ => 0.0,
        }
    }

    /// `identity` found `route` new to it. A slot held by another route is
    /// taken over once its window has passed or it has fewer adopters.
    pub fn adopted(&mut self, route: u32, identity: u64, now_ms: u64) {
        let Some(s) = self.slots.get_mut(route as usize % SLOTS) else { return };
        let stale = now_ms.saturating_sub(s.since_ms) > WINDOW_MS;
        if s.route != route {
            if !stale && s.adopters.count_ones() > 1 {
                return;
            }
            *s = Slot { route, since_ms: now_ms, adopters: 0 };
        } else if stale {
            (s.since_ms, s.adopters) = (now_ms, 0);
        }
        s.adopters |= 1u64 << (identity.rotate_left(17) % 64);
    }
}

/// A slot counts within its window; one from the future (a clock gone
/// wrong, a forged shared record) never does.
fn live(s: &Slot, now_ms: u64) -> bool {
    s.adopters != 0 && s.since_ms <= now_ms.saturating_add(60_000) && now_ms.saturating_sub(s.since_ms) <= WINDOW_MS
}

impl Mergeable for Adoption {
    /// Takes in another view's adopters at `now_ms`: the same route's
    /// bitmaps join (the earlier start stands); a slot another route holds
    /// goes to whichever has more adopters in its window.
    fn merge(&mut self, other: &Self, now_ms: u64) {
        for (mine, theirs) in self.slots.iter_mut().zip(other.slots.iter()) {
            if !live(theirs, now_ms) {
                continue;
            }
            if live(mine, now_ms) && mine.route == theirs.route {
                mine.adopters |= theirs.adopters;
                mine.since_ms = mine.since_ms.min(theirs.since_ms);
            } else if !live(mine, now_ms) || theirs.adopters.count_ones() > mine.adopters.count_ones() {
                *mine = *theirs;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.slots.iter().all(|s| s.adopters == 0)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED);
        let mut w = Writer(&mut out);
        w.u8(VERSION);
        for s in &self.slots {
            w.u32(s.route);
            w.u64(s.since_ms);
            w.u64(s.adopters);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let mut a = Adoption::default();
        for s in a.slots.iter_mut() {
            *s = Slot { route: r.u32()?, since_ms: r.u64()?, adopters: r.u64()? };
        }
        r.is_empty().then_some(a)
    }
}

const VERSION: u8 = 1;
const ENCODED: usize = 1 + SLOTS * (4 + 8 + 8);

/// One worker's view of the adoptions, folded into shared data from its ticks.
pub struct Shared(Folded<Adoption>);

impl Shared {
    pub fn new(prefix: &str) -> Shared {
        Shared(Folded::new(format!("{prefix}adoption")))
    }

    /// Request path: `identity` found `route` new to it.
    pub fn adopted(&self, route: u32, identity: u64, now_ms: u64) {
        self.0.mark(|a| a.adopted(route, identity, now_ms));
    }

    /// Request path: how many identities took `route` up lately, on every worker as of the last fold.
    pub fn adopters(&self, route: u32, now_ms: u64) -> f64 {
        self.0.view().adopters(route, now_ms)
    }

    /// Tick: see `Folded::on_tick`.
    pub fn on_tick(&self, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<(), StoreError> {
        self.0.on_tick(now_ms, store, metrics).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopters_on_two_workers_add_up_through_shared_data() {
        use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let workers = [Shared::new("vigil/"), Shared::new("vigil/")];
        let t = 1_000_000;
        // Three adopters on each worker: under the line on either alone.
        for i in 0..6u64 {
            workers[(i % 2) as usize].adopted(7, i.wrapping_mul(0x9E37_79B9_7F4A_7C15), t + i);
        }
        assert!(workers.iter().all(|w| w.adopters(7, t + 10) < RELEASE_AT));
        for w in &workers {
            w.on_tick(t + 1_000, &store, &metrics).unwrap();
        }
        // The first folded before the second: it reads the sum at its next tick.
        workers[0].on_tick(t + 2_000, &store, &metrics).unwrap();
        for w in &workers {
            assert!(w.adopters(7, t + 2_000) >= RELEASE_AT, "{}", w.adopters(7, t + 2_000));
        }
        // A garbled shared record is replaced, never trusted, never a panic.
        let key = "vigil/adoption";
        store.set(key, b"\x01garbage", 0).unwrap();
        workers[1].adopted(9, 1, t + 3_000);
        workers[1].on_tick(t + 3_000, &store, &metrics).unwrap();
        assert!(Adoption::decode(&store.get(key).unwrap().unwrap().0).is_some());
        // A forged record from the future, full bitmaps everywhere, discounts nothing.
        let mut forged = Adoption::default();
        for s in forged.slots.iter_mut() {
            *s = Slot { route: 7, since_ms: u64::MAX / 2, adopters: u64::MAX };
        }
        store.set(key, &forged.encode(), 0).unwrap();
        let fresh = Shared::new("vigil/");
        fresh.on_tick(t + 10_000, &store, &metrics).unwrap();
        assert_eq!(fresh.adopters(7, t + 10_000), 0.0);
    }

    #[test]
    fn many_identities_on_one_new_route_are_a_release_and_one_is_not() {
        let mut a = Adoption::default();
        let t = 1_000_000;
        a.adopted(7, 0x1234_5678_9abc_def0, t);
        assert!(a.adopters(7, t) < RELEASE_AT);
        for i in 0..20u64 {
            a.adopted(7, i.wrapping_mul(0x9E37_79B9_7F4A_7C15), t + i * 1_000);
        }
        assert!(a.adopters(7, t + 30_000) >= RELEASE_AT);
        // The same identity again and again is still one.
        let mut b = Adoption::default();
        for i in 0..50 {
            b.adopted(9, 42, t + i);
        }
        assert!(b.adopters(9, t + 60) < 1.5);
        // The window passes.
        assert_eq!(a.adopters(7, t + WINDOW_MS + 60_000), 0.0);
    }
}
