//! A bounded table of per-identity records in shared data.
//!
//! Shared data has no delete and no TTL, and "create if absent" races (a CAS of
//! 0 is an unconditional write). So the key space is fixed: `slots` keys,
//! created once at start-up, each holding its owner's identity hash and when it
//! was last seen. An identity lives in one of `PROBES` candidate slots; a new one
//! takes a free or expired candidate, else evicts the least recently seen. An
//! attacker inventing identities only recycles slots: memory never grows past
//! the bound. Every write is a compare-and-swap, retried a bounded number of
//! times, so counts stay exact when workers race.

use super::ports::{Metric, MetricsSink, SetOutcome, SharedStore, StoreError, Table};

/// Candidate slots per identity (double hashing).
pub const PROBES: u32 = 4;
/// Attempts at a compare-and-swap before giving up on one update.
pub const MAX_ATTEMPTS: u32 = 8;

const VERSION: u8 = 1;
const HEADER_BYTES: usize = 1 + 8 + 8;

/// What a table stores per identity, in a compact binary form.
pub trait Record: Sized {
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(bytes: &[u8]) -> Option<Self>;
    /// About how many bytes `encode` writes, so the buffer is allocated once.
    const SIZE_HINT: usize = 32;
    /// What keeping this record is worth when room must be made, `idle_ms`
    /// after it was last seen: the least valuable candidate goes first. By
    /// default the least recently seen.
    fn keep_value(&self, idle_ms: u64) -> f64 {
        -(idle_ms as f64)
    }
}

/// Whether a newcomer may evict a live record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Always: the least valuable candidate makes room (rate counters).
    Always,
    /// Only a record worth no more than the newcomer (`keep_value`) is
    /// evicted, so a flood of one-request identities cannot push out
    /// established profiles.
    WorthAtLeast,
}

/// One slot as stored: its owner (0 = free), when it was last seen, and the
/// record (absent for a free slot).
#[derive(Debug, Clone, PartialEq)]
struct Slot<R> {
    owner: u64,
    last_seen_ms: u64,
    record: Option<R>,
}

impl<R: Record> Slot<R> {
    fn free() -> Self {
        Slot { owner: 0, last_seen_ms: 0, record: None }
    }

    fn encode(&self) -> Vec<u8> {
        encode_slot(self.owner, self.last_seen_ms, self.record.as_ref(), R::SIZE_HINT)
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if *bytes.first()? != VERSION {
            return None;
        }
        let owner = u64::from_le_bytes(bytes.get(1..9)?.try_into().ok()?);
        let last_seen_ms = u64::from_le_bytes(bytes.get(9..17)?.try_into().ok()?);
        let rest = bytes.get(HEADER_BYTES..)?;
        let record = if owner == 0 { None } else { Some(R::decode(rest)?) };
        Some(Slot { owner, last_seen_ms, record })
    }
}

fn encode_slot<R: Record>(owner: u64, last_seen_ms: u64, record: Option<&R>, size_hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + size_hint);
    out.push(VERSION);
    out.extend_from_slice(&owner.to_le_bytes());
    out.extend_from_slice(&last_seen_ms.to_le_bytes());
    if let Some(r) = record {
        r.encode(&mut out);
    }
    out
}

/// The result of one update.
#[derive(Debug, Clone, PartialEq)]
pub struct Updated<R> {
    pub record: R,
    /// This update took a slot from another identity.
    pub evicted: bool,
}

/// The result of one cleanup pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub freed: u32,
    /// Where the next pass starts.
    pub next: u32,
}

/// Where this worker last found identities in a table: a 32-bit fingerprint
/// of the owner and the slot index per bucket, direct-mapped by owner. Most
/// identities sit in their second or third candidate slot once the table
/// fills, and every probe is a host call; with a hint the first read is the
/// right one. A wrong or stale hint costs one read and nothing else (the
/// slot's owner is checked). Bounded: four buckets per slot, at most
/// `MAX_HINTS` of 8 bytes per table per worker.
pub struct Hints {
    buckets: std::cell::RefCell<Vec<(u32, u32)>>,
}

/// Hint buckets at most (512 KiB per table per worker).
pub const MAX_HINTS: u32 = 65_536;

impl Hints {
    pub fn for_slots(slots: u32) -> Self {
        let n = slots.saturating_mul(4).clamp(1, MAX_HINTS).next_power_of_two() as usize;
        Self { buckets: std::cell::RefCell::new(vec![(0, 0); n]) }
    }

    /// Owners are keyed hashes already: low bits pick the bucket, high bits
    /// tell owners apart (0 marks an empty bucket).
    fn place(owner: u64, len: usize) -> (usize, u32) {
        ((owner as usize) & (len - 1), ((owner >> 32) as u32).max(1))
    }

    pub fn get(&self, owner: u64) -> Option<u32> {
        let b = self.buckets.borrow();
        let (at, print) = Self::place(owner, b.len());
        let (p, i) = *b.get(at)?;
        (p == print).then_some(i)
    }

    pub fn put(&self, owner: u64, index: u32) {
        let mut b = self.buckets.borrow_mut();
        let (at, print) = Self::place(owner, b.len());
        if let Some(slot) = b.get_mut(at) {
            *slot = (print, index);
        }
    }
}

/// Where a record was read and which version of the slot it was: what a
/// later `write_unchanged` needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    index: u32,
    /// The store's version of the value read: a write with it succeeds only if
    /// nobody wrote the slot since.
    cas: u32,
    stored_len: usize,
}

/// A slot as read, with what writing it needs.
struct Located<R> {
    index: u32,
    cas: u32,
    slot: Slot<R>,
    stored_len: usize,
}

pub struct SlotTable<'a> {
    store: &'a dyn SharedStore,
    metrics: &'a dyn MetricsSink,
    prefix: &'a str,
    slots: u32,
    table: Table,
    /// A slot not seen for this long is free for the taking without counting
    /// as an eviction, and the cleanup frees it.
    ttl_ms: u64,
    admission: Admission,
    hints: Option<&'a Hints>,
}

impl<'a> SlotTable<'a> {
    pub fn new(
        store: &'a dyn SharedStore,
        metrics: &'a dyn MetricsSink,
        prefix: &'a str,
        slots: u32,
        table: Table,
        ttl_ms: u64,
    ) -> Self {
        Self { store, metrics, prefix, slots: slots.max(1), table, ttl_ms, admission: Admission::Always, hints: None }
    }

    /// Remembers where identities were found, and tries there first.
    pub fn with_hints(mut self, hints: &'a Hints) -> Self {
        self.hints = Some(hints);
        self
    }

    /// Where this worker last found `owner`, if it remembers.
    fn hint(&self, owner: u64) -> Option<u32> {
        self.hints.and_then(|h| h.get(owner)).filter(|&i| i < self.slots)
    }

    fn remember(&self, owner: u64, index: u32) {
        if let Some(h) = self.hints {
            h.put(owner, index);
        }
    }

    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    fn key(&self, index: u32) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 10);
        key.push_str(self.prefix);
        super::text::push_u64(&mut key, u64::from(index));
        key
    }

    fn candidates(&self, owner: u64) -> impl Iterator<Item = u32> {
        let n = u64::from(self.slots);
        let h1 = owner % n;
        let h2 = 1 + (owner.rotate_left(32) % (n.saturating_sub(1).max(1)));
        (0..u64::from(PROBES.min(self.slots))).map(move |k| ((h1 + k * h2) % n) as u32)
    }

    /// Creates every slot that does not exist yet. Idempotent, and safe while
    /// another worker serves traffic: a slot that exists is never overwritten.
    /// Returns how many slots this call created.
    pub fn initialize<R: Record>(&self) -> Result<u32, StoreError> {
        let ready = format!("{}ready", self.prefix);
        if self.store.get(&ready)?.is_some() {
            return Ok(0);
        }
        let free = Slot::<R>::free().encode();
        let mut created = 0;
        let mut bytes = 0;
        for i in 0..self.slots {
            let key = self.key(i);
            if self.store.get(&key)?.is_none() {
                self.store.set(&key, &free, 0)?;
                created += 1;
                bytes += (key.len() + free.len()) as u64;
            }
        }
        self.store.set(&ready, b"1", 0)?;
        self.grow(bytes + (ready.len() + 1) as u64);
        Ok(created)
    }

    /// Reads `owner`'s record without changing anything.
    pub fn read<R: Record>(&self, owner: u64) -> Result<Option<R>, StoreError> {
        Ok(self.read_versioned(owner)?.map(|(r, _)| r))
    }

    /// `read`, with the version a later `write_unchanged` needs.
    pub fn read_versioned<R: Record>(&self, owner: u64) -> Result<Option<(R, Version)>, StoreError> {
        let hinted = self.hint(owner);
        for index in hinted.into_iter().chain(self.candidates(owner).filter(|&i| Some(i) != hinted)) {
            if let Some((bytes, cas)) = self.store.get(&self.key(index))? {
                // An unreadable slot is someone else's problem (or free): skip it.
                if let Some(slot) = Slot::<R>::decode(&bytes).filter(|s| s.owner == owner) {
                    self.remember(owner, index);
                    let version = Version { index, cas, stored_len: bytes.len() };
                    return Ok(slot.record.map(|record| (record, version)));
                }
            }
        }
        Ok(None)
    }

    /// Writes `record` as `owner`'s, in the slot `read` came from, only if
    /// nobody wrote that slot since: one host call instead of a read and a
    /// write. `Ok(false)` when somebody did (the caller merges and retries
    /// with `update`).
    pub fn write_unchanged<R: Record>(&self, owner: u64, read: Version, now_ms: u64, record: &R) -> Result<bool, StoreError> {
        if read.index >= self.slots {
            return Ok(false);
        }
        let encoded = encode_slot(owner, now_ms, Some(record), R::SIZE_HINT.max(read.stored_len));
        match self.store.set(&self.key(read.index), &encoded, read.cas)? {
            SetOutcome::Written => {
                self.resize(read.stored_len, encoded.len());
                Ok(true)
            }
            SetOutcome::CasMismatch => Ok(false),
        }
    }

    /// Applies `update` to `owner`'s record (`None` when it has none yet) and
    /// stores the result with compare-and-swap, retrying on conflict.
    pub fn update<R: Record + Clone>(
        &self,
        owner: u64,
        now_ms: u64,
        mut update: impl FnMut(Option<&R>) -> R,
    ) -> Result<Updated<R>, StoreError> {
        let hint = self.hint(owner);
        for _attempt in 0..MAX_ATTEMPTS {
            let found = self.locate::<R>(owner, hint, now_ms)?;
            let mine = (found.slot.owner == owner).then_some(found.slot.record.as_ref()).flatten();
            let record = update(mine);
            let evicts = found.slot.owner != owner
                && found.slot.owner != 0
                && now_ms.saturating_sub(found.slot.last_seen_ms) <= self.ttl_ms;
            if evicts && self.admission == Admission::WorthAtLeast {
                let idle = now_ms.saturating_sub(found.slot.last_seen_ms);
                let theirs = found.slot.record.as_ref().map_or(f64::NEG_INFINITY, |r| r.keep_value(idle));
                if theirs > record.keep_value(0) {
                    self.metrics.add(Metric::StoreNotAdmitted(self.table), 1);
                    return Err(StoreError::NotAdmitted);
                }
            }
            let slot = Slot { owner, last_seen_ms: now_ms, record: Some(record.clone()) };
            let encoded = slot.encode();
            match self.store.set(&self.key(found.index), &encoded, found.cas)? {
                SetOutcome::Written => {
                    if evicts {
                        self.metrics.add(Metric::StoreEvictions(self.table), 1);
                    }
                    if found.slot.owner == 0 {
                        self.metrics.add(Metric::StoreSlotsUsed(self.table), 1);
                    }
                    self.resize(found.stored_len, encoded.len());
                    self.remember(owner, found.index);
                    return Ok(Updated { record, evicted: evicts });
                }
                SetOutcome::CasMismatch => self.metrics.add(Metric::StoreCasConflicts(self.table), 1),
            }
        }
        Err(StoreError::Contended)
    }

    /// Frees the records among `count` slots from `from` on that nobody has
    /// seen for longer than the TTL. Shared data has no delete, so a freed slot
    /// keeps its key with the short free encoding.
    pub fn sweep<R: Record>(&self, from: u32, count: u32, now_ms: u64) -> Result<Swept, StoreError> {
        let free = Slot::<R>::free().encode();
        let mut freed = 0;
        let mut index = from % self.slots;
        for _ in 0..count.min(self.slots) {
            if let Some((bytes, cas)) = self.store.get(&self.key(index))? {
                // (expired, counted as used): an unreadable value is reclaimed, but
                // was never counted as a used slot.
                let (expired, used) = match Slot::<R>::decode(&bytes) {
                    Some(slot) => (slot.owner != 0 && now_ms.saturating_sub(slot.last_seen_ms) > self.ttl_ms, true),
                    None => (bytes != free, false),
                };
                if expired && self.store.set(&self.key(index), &free, cas)? == SetOutcome::Written {
                    freed += 1;
                    self.metrics.add(Metric::StoreExpired(self.table), 1);
                    if used {
                        self.metrics.sub(Metric::StoreSlotsUsed(self.table), 1);
                    }
                    self.resize(bytes.len(), free.len());
                }
            }
            index = (index + 1) % self.slots;
        }
        Ok(Swept { freed, next: index })
    }

    fn grow(&self, bytes: u64) {
        self.metrics.add(Metric::StoreBytes(self.table), bytes);
        self.metrics.add(Metric::SharedDataBytes, bytes);
    }

    /// Keeps the byte gauges equal to what the store holds after a value of
    /// `before` bytes was replaced by one of `after`.
    fn resize(&self, before: usize, after: usize) {
        if after >= before {
            self.grow((after - before) as u64);
        } else {
            let n = (before - after) as u64;
            self.metrics.sub(Metric::StoreBytes(self.table), n);
            self.metrics.sub(Metric::SharedDataBytes, n);
        }
    }

    /// Finds the slot to write for `owner`: the one it already holds, else a
    /// free one, else an expired one, else the least valuable (an eviction).
    fn locate<R: Record>(&self, owner: u64, hint: Option<u32>, now_ms: u64) -> Result<Located<R>, StoreError> {
        if let Some(index) = hint.filter(|&h| h < self.slots) {
            if let Some(found) = self.read_slot::<R>(index)? {
                if found.slot.owner == owner {
                    return Ok(found);
                }
            }
        }
        let mut best: Option<(Located<R>, u8, f64)> = None; // rank: 0 free, 1 expired, 2 live
        for index in self.candidates(owner) {
            let found = match self.read_slot::<R>(index)? {
                Some(found) => found,
                None => {
                    // Never initialised (start-up failed?): create it and use it.
                    let free = Slot::<R>::free().encode();
                    self.store.set(&self.key(index), &free, 0)?;
                    self.grow((self.key(index).len() + free.len()) as u64);
                    self.read_slot::<R>(index)?.ok_or(StoreError::Host(0))?
                }
            };
            if found.slot.owner == owner {
                return Ok(found);
            }
            let idle = now_ms.saturating_sub(found.slot.last_seen_ms);
            let (rank, value) = if found.slot.owner == 0 {
                (0, 0.0)
            } else if idle > self.ttl_ms {
                (1, -(idle as f64))
            } else {
                (2, found.slot.record.as_ref().map_or(f64::NEG_INFINITY, |r| r.keep_value(idle)))
            };
            let better = match &best {
                None => true,
                Some((_, brank, bvalue)) => rank < *brank || (rank == *brank && value < *bvalue),
            };
            if better {
                best = Some((found, rank, value));
            }
        }
        best.map(|(found, _, _)| found).ok_or(StoreError::Host(0))
    }

    /// One slot as stored; an undecodable value reads as a free slot.
    fn read_slot<R: Record>(&self, index: u32) -> Result<Option<Located<R>>, StoreError> {
        Ok(self.store.get(&self.key(index))?.map(|(bytes, cas)| Located {
            index,
            cas,
            slot: Slot::<R>::decode(&bytes).unwrap_or_else(Slot::free),
            stored_len: bytes.len(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    #[derive(Debug, Clone, PartialEq)]
    struct Count(u32);

    impl Record for Count {
        fn encode(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.0.to_le_bytes());
        }
        fn decode(bytes: &[u8]) -> Option<Self> {
            Some(Count(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?)))
        }
    }

    fn bump(c: Option<&Count>) -> Count {
        Count(c.map_or(0, |c| c.0) + 1)
    }

    #[test]
    fn counts_per_owner_and_reads_back() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let table = SlotTable::new(&store, &metrics, "t/", 64, Table::Rate, 60_000);
        assert_eq!(table.initialize::<Count>().unwrap(), 64);
        assert_eq!(table.initialize::<Count>().unwrap(), 0, "second start-up creates nothing");
        for _ in 0..5 {
            table.update(11, 1_000, bump).unwrap();
        }
        table.update(13, 1_000, bump).unwrap();
        assert_eq!(table.read::<Count>(11).unwrap(), Some(Count(5)));
        assert_eq!(table.read::<Count>(13).unwrap(), Some(Count(1)));
        assert_eq!(table.read::<Count>(15).unwrap(), None);
        assert_eq!(metrics.get(Metric::StoreSlotsUsed(Table::Rate)), 2);
        // The gauge tracks what the store really holds.
        assert_eq!(metrics.get(Metric::SharedDataBytes), store.bytes() as u64);
    }

    #[test]
    fn cas_conflicts_are_retried_and_counted_without_losing_counts() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let table = SlotTable::new(&store, &metrics, "t/", 16, Table::Rate, 60_000);
        table.initialize::<Count>().unwrap();
        table.update(7, 0, bump).unwrap();
        store.inject_conflicts.set(3);
        let r = table.update(7, 0, bump).unwrap();
        assert_eq!(r.record, Count(2));
        assert_eq!(metrics.get(Metric::StoreCasConflicts(Table::Rate)), 3);
    }

    #[test]
    fn endless_conflicts_give_up_with_an_error() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let table = SlotTable::new(&store, &metrics, "t/", 16, Table::Rate, 60_000);
        table.initialize::<Count>().unwrap();
        store.inject_conflicts.set(1000);
        assert_eq!(table.update(7, 0, bump), Err(StoreError::Contended));
        assert_eq!(metrics.get(Metric::StoreCasConflicts(Table::Rate)), u64::from(MAX_ATTEMPTS));
    }

    #[test]
    fn a_flood_of_identities_never_grows_the_store() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let table = SlotTable::new(&store, &metrics, "t/", 256, Table::Rate, 60_000);
        table.initialize::<Count>().unwrap();
        let keys_before = store.len();
        let bytes_before = store.bytes();
        for id in 1..=100_000u64 {
            table.update(id * 2 + 1, 1_000 + id, bump).unwrap();
        }
        assert_eq!(store.len(), keys_before);
        // Only records are added, never keys: at most the record size per slot.
        assert!(store.bytes() <= bytes_before + 256 * 4);
        assert!(metrics.get(Metric::StoreEvictions(Table::Rate)) > 90_000);
        assert!(metrics.get(Metric::StoreSlotsUsed(Table::Rate)) <= 256);
        // The most recent identity is still tracked.
        assert_eq!(table.read::<Count>(100_000 * 2 + 1).unwrap(), Some(Count(1)));
    }

    #[test]
    fn expired_slots_are_reused_without_counting_an_eviction() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let table = SlotTable::new(&store, &metrics, "t/", 16, Table::Rate, 1_000);
        table.initialize::<Count>().unwrap();
        for id in 0..64u64 {
            table.update(id * 2 + 1, 0, bump).unwrap();
        }
        let evictions = metrics.get(Metric::StoreEvictions(Table::Rate));
        table.update(999, 10_000, bump).unwrap();
        assert_eq!(metrics.get(Metric::StoreEvictions(Table::Rate)), evictions);
    }

    #[test]
    fn hints_make_the_first_read_the_right_one() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let hints = Hints::for_slots(64);
        let plain = SlotTable::new(&store, &metrics, "t/", 64, Table::Rate, 60_000);
        let hinted = SlotTable::new(&store, &metrics, "t/", 64, Table::Rate, 60_000).with_hints(&hints);
        plain.initialize::<Count>().unwrap();
        // Fill most of the table so that some owners land in later candidates.
        let owner = |id: u64| crate::engine::hash::HashKey::new(1, 2).hash(&[&id.to_le_bytes()]);
        for id in 1..=40u64 {
            plain.update(owner(id), 1_000, bump).unwrap();
        }
        let deep = (1..=40u64)
            .map(owner)
            .find(|&o| plain.candidates(o).next() != plain.read_versioned::<Count>(o).unwrap().map(|(_, v)| v.index))
            .expect("some owner lives past its first candidate");
        hinted.update(deep, 2_000, bump).unwrap(); // learns where it lives
        let before = store.reads.get();
        hinted.update(deep, 3_000, bump).unwrap();
        assert_eq!(store.reads.get() - before, 1, "one read with the hint");
        let before = store.reads.get();
        plain.update(deep, 4_000, bump).unwrap();
        assert!(store.reads.get() - before > 1, "more than one without it");
        // A stale hint (the slot went to someone else) costs a read, not a wrong answer.
        hints.put(deep, (hints.get(deep).unwrap() + 1) % 64);
        assert_eq!(hinted.read::<Count>(deep).unwrap(), Some(Count(4)));
    }

    #[test]
    fn a_write_of_an_unchanged_slot_needs_no_read_and_refuses_a_changed_one() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let table = SlotTable::new(&store, &metrics, "t/", 16, Table::Rate, 60_000);
        table.initialize::<Count>().unwrap();
        table.update(7, 0, bump).unwrap();
        let (record, version) = table.read_versioned::<Count>(7).unwrap().unwrap();
        let reads = store.reads.get();
        assert!(table.write_unchanged(7, version, 10, &bump(Some(&record))).unwrap());
        assert_eq!(store.reads.get(), reads, "no read");
        assert_eq!(table.read::<Count>(7).unwrap(), Some(Count(2)));
        // The version is spent: somebody (here, the write above) changed the slot.
        assert!(!table.write_unchanged(7, version, 20, &Count(99)).unwrap());
        assert_eq!(table.read::<Count>(7).unwrap(), Some(Count(2)));
        assert_eq!(metrics.get(Metric::SharedDataBytes), store.bytes() as u64);
    }

    #[test]
    fn corrupt_or_foreign_bytes_do_not_panic() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let table = SlotTable::new(&store, &metrics, "t/", 16, Table::Rate, 1_000);
        table.initialize::<Count>().unwrap();
        for i in 0..16 {
            store.set(&format!("t/{i}"), &[9, 9, 9], 0).unwrap();
        }
        assert_eq!(table.update(5, 0, bump).unwrap().record, Count(1));
        assert!(Slot::<Count>::decode(&[]).is_none());
        assert!(Slot::<Count>::decode(&[VERSION, 1, 2]).is_none());
    }
}
