//! A lease in shared data, so periodic work runs in one VM, not in every
//! worker's (`on_tick` fires in all of them). The holder renews it on each
//! tick; when it lapses (its worker stopped, or stalled) another takes over and
//! carries on from the cursor stored with it.

use super::ports::{SetOutcome, SharedStore, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    holder: u64,
    until_ms: u64,
    cursor: u32,
}

impl State {
    fn encode(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..8].copy_from_slice(&self.holder.to_le_bytes());
        out[8..16].copy_from_slice(&self.until_ms.to_le_bytes());
        out[16..].copy_from_slice(&self.cursor.to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<State> {
        Some(State {
            holder: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            until_ms: u64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
            cursor: u32::from_le_bytes(b.get(16..20)?.try_into().ok()?),
        })
    }
}

pub struct Lease<'a> {
    pub key: &'a str,
    /// This VM's identity (any value unique among the workers; not 0).
    pub holder: u64,
    pub duration_ms: u64,
}

impl Lease<'_> {
    /// Creates the lease key, held by nobody, if it does not exist yet (at
    /// start-up, so the key count is fixed). Returns the bytes it added.
    pub fn create(key: &str, store: &dyn SharedStore) -> Result<u64, StoreError> {
        if store.get(key)?.is_some() {
            return Ok(0);
        }
        let free = State { holder: 0, until_ms: 0, cursor: 0 }.encode();
        store.set(key, &free, 0)?;
        Ok((key.len() + free.len()) as u64)
    }

    /// Takes or renews the lease. Returns the stored cursor when this VM holds
    /// it now, `None` when another VM does.
    pub fn acquire(&self, store: &dyn SharedStore, now_ms: u64) -> Result<Option<u32>, StoreError> {
        let (current, cas) = match store.get(self.key)? {
            Some((bytes, cas)) => (State::decode(&bytes), cas),
            None => (None, 0),
        };
        let cursor = match current {
            Some(s) if s.holder != self.holder && s.until_ms > now_ms => return Ok(None),
            Some(s) => s.cursor,
            None => 0,
        };
        let next = State { holder: self.holder, until_ms: now_ms + self.duration_ms, cursor };
        match store.set(self.key, &next.encode(), cas)? {
            SetOutcome::Written if cas != 0 => Ok(Some(cursor)),
            // A first write is unconditional and races: it holds only if it reads back as ours.
            SetOutcome::Written => match store.get(self.key)? {
                Some((bytes, _)) if State::decode(&bytes).is_some_and(|s| s.holder == self.holder) => Ok(Some(cursor)),
                _ => Ok(None),
            },
            SetOutcome::CasMismatch => Ok(None),
        }
    }

    /// Stores where the work got to, if this VM still holds the lease.
    pub fn save_cursor(&self, store: &dyn SharedStore, cursor: u32) -> Result<(), StoreError> {
        if let Some((bytes, cas)) = store.get(self.key)? {
            if let Some(s) = State::decode(&bytes).filter(|s| s.holder == self.holder) {
                store.set(self.key, &State { cursor, ..s }.encode(), cas)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::memory::MemoryStore;

    #[test]
    fn one_holder_at_a_time_and_takeover_after_it_lapses() {
        let store = MemoryStore::default();
        let a = Lease { key: "l", holder: 1, duration_ms: 5_000 };
        let b = Lease { key: "l", holder: 2, duration_ms: 5_000 };
        assert_eq!(a.acquire(&store, 0).unwrap(), Some(0));
        assert_eq!(b.acquire(&store, 1_000).unwrap(), None, "held by a");
        a.save_cursor(&store, 42).unwrap();
        assert_eq!(a.acquire(&store, 2_000).unwrap(), Some(42), "a renews");
        b.save_cursor(&store, 7).unwrap();
        assert_eq!(a.acquire(&store, 3_000).unwrap(), Some(42), "b cannot move a's cursor");
        // a stops renewing: b takes over where a got to.
        assert_eq!(b.acquire(&store, 9_000).unwrap(), Some(42));
        assert_eq!(a.acquire(&store, 9_500).unwrap(), None);
    }

    #[test]
    fn a_lost_race_does_not_hold() {
        let store = MemoryStore::default();
        let a = Lease { key: "l", holder: 1, duration_ms: 5_000 };
        a.acquire(&store, 0).unwrap();
        store.inject_conflicts.set(1);
        assert_eq!(a.acquire(&store, 100).unwrap(), None);
    }
}
