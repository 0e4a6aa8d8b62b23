//! This worker's cache of profiles, written back to shared data once a tick.
//!
//! Reading and writing a profile in shared data on every request would cost
//! several host calls per request. Instead a worker keeps the profiles it is
//! using, learns into them locally, and remembers what it learned since the
//! last sync (`pending`). Once a tick each changed profile is merged into
//! shared data: read the shared copy, replay the pending events onto it (so
//! other workers' learning is kept), write it back with compare-and-swap. A
//! profile not synced for a tick is re-read before use, so every worker sees
//! every worker's traffic within about a second.
//!
//! The cache is bounded (`cache_entries`); a full cache replaces entries with
//! the CLOCK policy (a second chance for recently used ones).

use crate::engine::slots::Version;
use super::model::{Observation, Profile};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Events per entry that trigger an early sync (a busy identity).
pub const MAX_PENDING: usize = 32;
/// Events kept at most: room for the statuses that arrive between a full
/// list and the next request's sync. Past it (a profile the table keeps
/// refusing) the oldest go: the local copy has learned them anyway.
const PENDING_CAP: usize = 2 * MAX_PENDING;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A request not (yet) decided: only its present is replayed.
    Request(Observation),
    /// A response's status, learned into the baseline at `weight` (its request's).
    Status { status: u16, weight: f32 },
    /// A request, once decided: its risk, whether its behaviour deviated, and
    /// the weight its decision gave it in the baseline.
    Scored { obs: Observation, risk: f32, deviated: bool, weight: f32 },
    /// A decided request whose `Request` event was synced before its
    /// decision (it waited for a model): only its baseline is replayed.
    Baseline { obs: Observation, present: super::model::Present, weight: f32 },
    /// A decided request's risk, when its request event is no longer the last.
    Risk { at_ms: u64, risk: f32, deviated: bool },
    /// The profile was rebased after a drift.
    Rebase { at_ms: u64 },
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub owner: u64,
    /// The shared copy as last synced, plus this worker's pending events.
    pub profile: Profile,
    pub pending: Vec<Event>,
    /// The shared version `profile` was read from, while nobody (this worker
    /// included) has written the slot since: then a sync is one conditional
    /// write of `profile`, with no read.
    pub version: Option<Version>,
    pub synced_ms: u64,
    /// After a refused or failed sync, no early sync before this.
    pub retry_at_ms: u64,
    referenced: bool,
}

impl Entry {
    pub fn new(owner: u64, profile: Profile, version: Option<Version>, now_ms: u64) -> Self {
        Entry {
            owner,
            profile,
            pending: Vec::new(),
            version,
            synced_ms: now_ms,
            retry_at_ms: 0,
            referenced: true,
        }
    }

    /// Its events are in shared data now.
    pub fn synced(&mut self, now_ms: u64) {
        self.pending.clear();
        // Most identities queue a few events a second: do not keep a
        // burst's worth of memory for each of them.
        self.pending.shrink_to(4);
        self.synced_ms = now_ms;
    }

    /// A sync was refused or failed: try again `interval_ms` (the sync
    /// interval) later, not on every request or every tick.
    pub fn failed(&mut self, now_ms: u64, interval_ms: u64) {
        self.synced_ms = now_ms;
        self.retry_at_ms = now_ms + interval_ms;
    }

    pub fn is_dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Records an event; the oldest is dropped past `PENDING_CAP`.
    pub fn push(&mut self, event: Event) {
        if self.pending.len() >= PENDING_CAP {
            self.pending.remove(0);
        }
        self.pending.push(event);
    }
}

/// Identity hashes are already keyed SipHash outputs: hashing them again
/// would only cost time.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub struct Cache {
    entries: Vec<Entry>,
    /// Dirty entries pushed out of the cache, waiting for the tick's sync.
    evicted: Vec<Entry>,
    index: HashMap<u64, usize, BuildHasherDefault<IdentityHasher>>,
    hand: usize,
    capacity: usize,
}

impl Cache {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Cache { entries: Vec::with_capacity(capacity), evicted: Vec::new(), index: HashMap::default(), hand: 0, capacity }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get_mut(&mut self, owner: u64) -> Option<&mut Entry> {
        let i = *self.index.get(&owner)?;
        let e = self.entries.get_mut(i)?;
        e.referenced = true;
        Some(e)
    }

    /// Like `get_mut`, without counting as a use (for the sync).
    pub fn peek_mut(&mut self, owner: u64) -> Option<&mut Entry> {
        let i = *self.index.get(&owner)?;
        self.entries.get_mut(i)
    }

    /// Makes room for one more entry if the cache is full: returns the entry
    /// taken out (the caller syncs it first if it is dirty).
    pub fn make_room(&mut self) -> Option<Entry> {
        if self.entries.len() < self.capacity {
            return None;
        }
        // CLOCK: clear reference bits until an unreferenced entry comes round.
        for _ in 0..=2 * self.entries.len() {
            self.hand %= self.entries.len().max(1);
            let e = self.entries.get_mut(self.hand)?;
            if e.referenced {
                e.referenced = false;
                self.hand += 1;
            } else {
                break;
            }
        }
        if self.entries.is_empty() {
            return None;
        }
        let victim = self.entries.swap_remove(self.hand % self.entries.len());
        self.index.remove(&victim.owner);
        if let Some(moved) = self.entries.get(self.hand) {
            self.index.insert(moved.owner, self.hand);
        }
        Some(victim)
    }

    /// Adds (or replaces) an entry; call `make_room` first when the cache may be full.
    pub fn insert(&mut self, entry: Entry) -> Option<&mut Entry> {
        let owner = entry.owner;
        let i = match self.index.get(&owner) {
            Some(&i) => {
                if let Some(e) = self.entries.get_mut(i) {
                    *e = entry;
                }
                i
            }
            None => {
                self.entries.push(entry);
                self.index.insert(owner, self.entries.len() - 1);
                self.entries.len() - 1
            }
        };
        self.entries.get_mut(i)
    }

    /// Keeps a dirty entry pushed out of the cache for the next tick's sync, so
    /// the request that pushed it out does not pay for its write. Gives it back
    /// when a quarter of the cache is already waiting (the caller syncs it now).
    pub fn defer(&mut self, entry: Entry) -> Option<Entry> {
        if self.evicted.len() > self.capacity / 4 {
            return Some(entry);
        }
        self.evicted.push(entry);
        None
    }

    /// Up to `n` of the entries `defer` kept, oldest first, to sync.
    pub fn take_deferred(&mut self, n: usize) -> Vec<Entry> {
        let n = n.min(self.evicted.len());
        self.evicted.drain(..n).collect()
    }

    /// Owners of up to `n` entries with pending events last synced at or
    /// before `synced_by`, the longest waiting first.
    pub fn due(&self, synced_by: u64, n: usize) -> Vec<u64> {
        let mut due: Vec<(u64, u64)> =
            self.entries.iter().filter(|e| e.is_dirty() && e.synced_ms <= synced_by).map(|e| (e.synced_ms, e.owner)).collect();
        if due.len() > n {
            due.select_nth_unstable(n);
            due.truncate(n);
        }
        due.into_iter().map(|(_, owner)| owner).collect()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(owner: u64) -> Entry {
        Entry::new(owner, Profile::default(), None, 0)
    }

    #[test]
    fn bounded_and_keeps_the_recently_used() {
        let mut c = Cache::new(4);
        for owner in 1..=4 {
            assert!(c.make_room().is_none());
            c.insert(entry(owner));
        }
        // A full sweep clears every bit; then 2 is used again.
        let first = c.make_room().unwrap();
        c.insert(entry(first.owner + 100));
        c.get_mut(2).unwrap();
        for owner in 10..20 {
            let _ = c.make_room();
            c.insert(entry(owner));
            c.get_mut(2).unwrap();
            assert!(c.len() <= 4);
        }
        assert!(c.get_mut(2).is_some(), "a hot entry survives a stream of newcomers");
        for e in &c.entries {
            assert_eq!(c.index.get(&e.owner).map(|&i| c.entries[i].owner), Some(e.owner));
        }
    }

    #[test]
    fn pending_is_bounded() {
        let mut e = entry(1);
        for s in 0..100 {
            e.push(Event::Status { status: s, weight: 1.0 });
        }
        assert_eq!(e.pending.len(), PENDING_CAP);
        assert_eq!(e.pending.last(), Some(&Event::Status { status: 99, weight: 1.0 }));
    }
}
