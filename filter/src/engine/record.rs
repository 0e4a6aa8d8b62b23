//! One record under one key in shared data, changed with compare-and-swap:
//! read, change, write back if nobody wrote in between, else retry (a
//! bounded number of times). The byte gauges follow every write exactly, so
//! the deltas of all VMs add up. For per-identity records, see `slots`.

use super::ports::{Metric, MetricsSink, SetOutcome, SharedStore, StoreError, Table};

/// Attempts before an update gives up as contended.
pub const CAS_RETRIES: u32 = 8;

/// Applies `change` to the bytes at `key` (`None` when the key was never
/// written) and writes what it returns: `Some(bytes)` to write, `None` to
/// leave the record as it is. Returns `change`'s result from the attempt
/// that stood. `change` may run several times: keep it free of side effects.
pub fn update<T>(
    store: &dyn SharedStore,
    metrics: &dyn MetricsSink,
    table: Table,
    key: &str,
    mut change: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Result<T, StoreError> {
    for _ in 0..CAS_RETRIES {
        let current = store.get(key)?;
        let (bytes, cas) = match &current {
            Some((b, cas)) => (Some(b.as_slice()), *cas),
            None => (None, 0),
        };
        let (next, out) = change(bytes);
        let Some(next) = next else { return Ok(out) };
        match store.set(key, &next, cas)? {
            SetOutcome::Written => {
                resized(metrics, table, key, bytes.map(<[u8]>::len), next.len());
                return Ok(out);
            }
            SetOutcome::CasMismatch => metrics.add(Metric::StoreCasConflicts(table), 1),
        }
    }
    Err(StoreError::Contended)
}

/// Keeps the byte gauges right after a write that replaced `old` bytes (or
/// created the key) with `new`.
pub fn resized(metrics: &dyn MetricsSink, table: Table, key: &str, old: Option<usize>, new: usize) {
    let old = old.map_or(0, |n| n + key.len()) as u64;
    let new = (new + key.len()) as u64;
    for m in [Metric::SharedDataBytes, Metric::StoreBytes(table)] {
        if new >= old {
            metrics.add(m, new - old);
        } else {
            metrics.sub(m, old - new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    #[test]
    fn conflicts_are_retried_and_bytes_follow_the_writes() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let n = update(&store, &metrics, Table::Feedback, "k", |b| (Some(vec![1; 4]), b.is_none())).unwrap();
        assert!(n);
        store.inject_conflicts.set(2);
        update(&store, &metrics, Table::Feedback, "k", |b| (b.map(|b| [b, &[2]].concat()), ())).unwrap();
        assert_eq!(store.get("k").unwrap().map(|(b, _)| b.len()), Some(5));
        assert_eq!(metrics.get(Metric::StoreCasConflicts(Table::Feedback)), 2);
        assert_eq!(metrics.get(Metric::StoreBytes(Table::Feedback)), 6);
        // Leaving it as it is writes nothing.
        update(&store, &metrics, Table::Feedback, "k", |_| (None, ())).unwrap();
        assert_eq!(store.get("k").unwrap().map(|(b, _)| b.len()), Some(5));
        store.inject_conflicts.set(u32::MAX);
        assert_eq!(update(&store, &metrics, Table::Feedback, "k", |_| (Some(vec![]), ())), Err(StoreError::Contended));
    }
}
