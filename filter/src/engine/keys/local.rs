//! One worker's side of one key: what it counted since its last hand-in
//! (`pending`), what it last read of each key value (`cache`), and the
//! population samples it owes. Fixed-size two-way tables indexed by the key
//! value's (keyed) hash: allocated once, never grown, so a flood of
//! never-seen values recycles entries and memory stays flat, and the request
//! path allocates nothing.

use super::population::Population;
use super::record::{Counts, Delta, KeyRecord, Window};

#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    /// 0: empty.
    key: u64,
    first_ms: u64,
    delta: Delta,
}

#[derive(Debug, Clone, Copy, Default)]
struct Cached {
    key: u64,
    read_ms: u64,
    record: KeyRecord,
}

/// A pending delta taken out to hand in.
#[derive(Debug, Clone, Copy)]
pub struct Due {
    pub key: u64,
    pub delta: Delta,
}

/// Each call of `take_due` looks at this share of the pending table.
const SCAN_SHARE: usize = 4;
/// Bits of the per-epoch "already sampled" filter for key values never handed in.
const SAMPLED_WORDS: usize = 64;

pub struct Local {
    pending: Vec<Pending>,
    cache: Vec<Cached>,
    /// Population samples since the last hand-in.
    pub samples: Population,
    /// The population as last read from shared data, and what scoring reads of it.
    pub population: Option<Population>,
    pub baseline: Option<super::population::Baseline>,
    sampled: [u64; SAMPLED_WORDS],
    sampled_epoch: u32,
    cursor: usize,
}

/// Index of the first of `key`'s two ways in a table of `len` (a power of two).
fn ways(key: u64, len: usize) -> (usize, usize) {
    let buckets = (len / 2).max(1);
    let b = (key as usize) & (buckets - 1);
    (2 * b, 2 * b + 1)
}

impl Local {
    /// `cache_entries` views and as many pending deltas (rounded up to a power of two).
    pub fn new(cache_entries: u32) -> Self {
        let n = (cache_entries.max(2) as usize).next_power_of_two();
        Local {
            pending: vec![Pending::default(); n],
            cache: vec![Cached::default(); n],
            samples: Population::default(),
            population: None,
            baseline: None,
            sampled: [0; SAMPLED_WORDS],
            sampled_epoch: 0,
            cursor: 0,
        }
    }

    /// Entries in each table (the memory bound).
    pub fn capacity(&self) -> usize {
        self.pending.len()
    }

    /// Entries in use (for tests and gauges).
    pub fn pending_len(&self) -> usize {
        self.pending.iter().filter(|p| p.key != 0).count()
    }

    /// Counts one completed request. Returns false when there was no room
    /// (both ways hold busier key values): the request is not counted.
    pub fn count(&mut self, key: u64, member: u64, route: u32, c: &Counts, epoch: u32, now_ms: u64) -> bool {
        let (a, b) = ways(key, self.pending.len());
        let pick = {
            let (pa, pb) = (self.pending.get(a), self.pending.get(b));
            let requests = |p: Option<&Pending>| p.map_or(f32::MAX, |p| p.delta.counts.requests);
            match (pa.map(|p| p.key), pb.map(|p| p.key)) {
                (Some(k), _) if k == key => Some((a, false)),
                (_, Some(k)) if k == key => Some((b, false)),
                (Some(0), _) => Some((a, true)),
                (_, Some(0)) => Some((b, true)),
                // Both taken: a one-request value makes room, a busier one does not.
                _ if requests(pa) <= 1.0 && requests(pa) <= requests(pb) => Some((a, true)),
                _ if requests(pb) <= 1.0 => Some((b, true)),
                _ => None,
            }
        };
        let Some((i, fresh)) = pick else { return false };
        let Some(p) = self.pending.get_mut(i) else { return false };
        if fresh {
            *p = Pending { key, first_ms: now_ms, delta: Delta::default() };
        }
        p.delta.counts.add(c);
        p.delta.bits.add(member, route, epoch);
        true
    }

    fn pending_of(&self, key: u64) -> Option<&Delta> {
        let (a, b) = ways(key, self.pending.len());
        [a, b].into_iter().filter_map(|i| self.pending.get(i)).find(|p| p.key == key).map(|p| &p.delta)
    }

    fn cached_of(&self, key: u64) -> Option<&Cached> {
        let (a, b) = ways(key, self.cache.len());
        [a, b].into_iter().filter_map(|i| self.cache.get(i)).find(|c| c.key == key)
    }

    /// What this worker knows of `key` now: the merged record it last read
    /// (decayed to now) plus what it counted since. No host call.
    pub fn view(&self, key: u64, now_ms: u64, w: &Window) -> Option<KeyRecord> {
        let pending = self.pending_of(key);
        match self.cached_of(key) {
            Some(c) => Some(c.record.at(now_ms, w).with(pending)),
            None => pending.map(|d| KeyRecord::from_delta(d, now_ms).at(now_ms, w)),
        }
    }

    /// Keeps the record read back after a hand-in.
    pub fn remember(&mut self, key: u64, record: KeyRecord, now_ms: u64) {
        let (a, b) = ways(key, self.cache.len());
        let i = match (self.cache.get(a), self.cache.get(b)) {
            (Some(x), _) if x.key == key || x.key == 0 => a,
            (_, Some(y)) if y.key == key || y.key == 0 => b,
            (Some(x), Some(y)) => {
                if x.read_ms <= y.read_ms {
                    a
                } else {
                    b
                }
            }
            _ => a,
        };
        if let Some(c) = self.cache.get_mut(i) {
            *c = Cached { key, read_ms: now_ms, record };
        }
    }

    /// Takes out up to `budget` deltas due for a hand-in:
    /// - a busy value (a failure, or `busy_members` distinct members or more
    ///   as this worker sees it) after `sync_ms`;
    /// - a quiet value worth sharing (two identities or more, or one already
    ///   shared) after `hold_ms`: it cannot score, its view may lag;
    /// - a value with one identity and no failure after `hold_ms` is only a
    ///   population sample (once per epoch): most key values are like that,
    ///   and they need no shared record.
    pub fn take_due(&mut self, now_ms: u64, sync_ms: u64, hold_ms: u64, busy_members: f32, budget: usize, epoch: u32) -> Vec<Due> {
        if epoch != self.sampled_epoch {
            self.sampled = [0; SAMPLED_WORDS];
            self.sampled_epoch = epoch;
        }
        let n = self.pending.len();
        let mut due = Vec::new();
        let mut scanned = 0;
        // A quarter of the table per call: with a 100 ms tick every entry is
        // looked at every 400 ms, not every tick.
        let slice = n.div_ceil(SCAN_SHARE);
        while scanned < slice && due.len() < budget {
            let i = (self.cursor + scanned) % n;
            scanned += 1;
            let Some(p) = self.pending.get(i).copied() else { continue };
            if p.key == 0 {
                continue;
            }
            let age = now_ms.saturating_sub(p.first_ms);
            let cached = self.cached_of(p.key);
            let failing = p.delta.counts.failures >= 0.5;
            let bits = p.delta.bits.member_bits();
            let members = match cached {
                Some(c) => {
                    let mut b = c.record.bits;
                    b.merge(&p.delta.bits);
                    b.members()
                }
                None => bits as f32,
            };
            let busy = failing || members >= busy_members;
            let worth = cached.is_some() || bits >= 2 || failing;
            if (busy && age >= sync_ms) || (worth && age >= hold_ms) {
                due.push(Due { key: p.key, delta: p.delta });
            } else if !worth && age >= hold_ms {
                self.sample_single(p.key, &p.delta.counts);
            } else {
                continue;
            }
            if let Some(slot) = self.pending.get_mut(i) {
                slot.key = 0;
            }
        }
        self.cursor = (self.cursor + scanned) % n.max(1);
        due
    }

    /// A delta that could not be handed in goes back (if there is room).
    pub fn put_back(&mut self, d: &Due, now_ms: u64) {
        let (a, b) = ways(d.key, self.pending.len());
        for i in [a, b] {
            if let Some(p) = self.pending.get_mut(i) {
                if p.key == 0 {
                    *p = Pending { key: d.key, first_ms: now_ms, delta: d.delta };
                    return;
                }
                if p.key == d.key {
                    p.delta.counts.add(&d.delta.counts);
                    p.delta.bits.merge(&d.delta.bits);
                    return;
                }
            }
        }
    }

    fn sample_single(&mut self, key: u64, c: &Counts) {
        let bit = (key >> 7) as usize % (SAMPLED_WORDS * 64);
        let (w, mask) = (bit / 64, 1u64 << (bit % 64));
        if let Some(word) = self.sampled.get_mut(w) {
            if *word & mask != 0 {
                return;
            }
            *word |= mask;
        }
        self.samples.sample_single(c.answered, c.failures, c.fresh, c.fresh_known);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole pass over the table (four calls).
    fn take(l: &mut Local, now: u64, sync: u64, hold: u64, busy: f32, budget: usize, epoch: u32) -> Vec<Due> {
        (0..SCAN_SHARE).flat_map(|_| l.take_due(now, sync, hold, busy, budget, epoch)).collect()
    }

    fn one(failed: bool) -> Counts {
        Counts { requests: 1.0, answered: 1.0, failures: if failed { 1.0 } else { 0.0 }, fresh: 0.0, fresh_known: 0.0 }
    }

    #[test]
    fn a_flood_of_new_values_recycles_entries_and_keeps_the_busy_one() {
        let w = Window::new(60);
        let mut l = Local::new(64);
        let busy = 0xdead_beef_0000_0003u64;
        for i in 0..50 {
            assert!(l.count(busy, 1000 + i, 1, &one(true), 1, 0));
        }
        for i in 0..100_000u64 {
            l.count(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, i | 1, 1, &one(false), 1, 0);
        }
        assert_eq!(l.capacity(), 64);
        assert!(l.pending_len() <= 64);
        let v = l.view(busy, 0, &w).unwrap();
        assert_eq!(v.counts.requests, 50.0);
        assert!(v.bits.members() > 40.0);
    }

    #[test]
    fn due_deltas_are_the_shareable_ones_and_singletons_become_samples() {
        let w = Window::new(60);
        let mut l = Local::new(64);
        l.count(3, 11, 1, &one(false), 1, 0);
        l.count(3, 13, 1, &one(false), 1, 0); // two identities: shared
        l.count(5, 11, 1, &one(false), 1, 0); // one identity, no failure: a sample
        l.count(7, 11, 1, &one(true), 1, 0); // a failure: shared
        assert!(take(&mut l, 500, 1_000, 5_000, 5.0, 10, 1).is_empty(), "not yet");
        let due = take(&mut l, 1_000, 1_000, 5_000, 5.0, 10, 1);
        assert_eq!(due.iter().map(|d| d.key).collect::<Vec<_>>(), [7], "the failing one first");
        assert_eq!(l.samples.samples, 0.0);
        let due = take(&mut l, 5_000, 1_000, 5_000, 5.0, 10, 1);
        assert_eq!(due.iter().map(|d| d.key).collect::<Vec<_>>(), [3], "the quiet one later");
        assert_eq!(l.samples.samples, 1.0);
        assert!(l.view(5, 5_000, &w).is_none());
        // Once shared, a value is handed in whatever it carries.
        l.remember(5, KeyRecord::default(), 5_000);
        l.count(5, 11, 1, &one(false), 1, 6_000);
        assert!(take(&mut l, 7_000, 1_000, 5_000, 5.0, 10, 1).is_empty());
        assert_eq!(take(&mut l, 11_000, 1_000, 5_000, 5.0, 10, 1).len(), 1);
        // A busy one (five identities) every sync.
        for m in 20..26 {
            l.count(9, m, 1, &one(false), 1, 11_000);
        }
        assert_eq!(take(&mut l, 12_000, 1_000, 5_000, 5.0, 10, 1).len(), 1);
    }
}
