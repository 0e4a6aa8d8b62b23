//! Model response time across workers, for the admin API: each worker sums
//! its answers' latencies and hands the sums in once a second (one
//! compare-and-swap); the histogram `vigil_ml_latency_ms` has the detail.

use super::Role;
use crate::engine::codec::{Reader, Writer};
use crate::engine::ports::{MetricsSink, SharedStore, StoreError, Table};
use crate::engine::record;

const KEY: &str = "vigil/ml/latency";
const FLUSH_MS: u64 = 1_000;

/// Per model (`Role::ALL` order): calls timed, their total and the slowest, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    pub calls: u64,
    pub total_ms: u64,
    pub max_ms: u64,
}

impl Timing {
    pub fn mean_ms(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.total_ms as f64 / self.calls as f64)
    }

    fn add(&mut self, o: &Timing) {
        self.calls += o.calls;
        self.total_ms += o.total_ms;
        self.max_ms = self.max_ms.max(o.max_ms);
    }
}

#[derive(Debug, Default)]
pub struct Local {
    pending: [Timing; 2],
    flushed_ms: u64,
}

fn index(role: Role) -> usize {
    match role {
        Role::Behavioral => 0,
        Role::Anomaly => 1,
    }
}

impl Local {
    pub fn record(&mut self, role: Role, ms: u64) {
        if let Some(t) = self.pending.get_mut(index(role)) {
            t.add(&Timing { calls: 1, total_ms: ms, max_ms: ms });
        }
    }

    /// Hands the sums in, at most once a second, when there are any.
    pub fn flush(&mut self, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<(), StoreError> {
        if now_ms < self.flushed_ms + FLUSH_MS || self.pending.iter().all(|t| t.calls == 0) {
            return Ok(());
        }
        self.flushed_ms = now_ms;
        let pending = self.pending;
        record::update(store, metrics, Table::Ml, KEY, |bytes| {
            let mut shared = bytes.and_then(decode).unwrap_or_default();
            for (s, p) in shared.iter_mut().zip(&pending) {
                s.add(p);
            }
            (Some(encode(&shared)), ())
        })?;
        self.pending = Default::default();
        Ok(())
    }
}

pub fn read(store: &dyn SharedStore) -> Result<[Timing; 2], StoreError> {
    Ok(store.get(KEY)?.and_then(|(b, _)| decode(&b)).unwrap_or_default())
}

pub fn of(t: &[Timing; 2], role: Role) -> Timing {
    t.get(index(role)).copied().unwrap_or_default()
}

fn encode(t: &[Timing; 2]) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    let mut w = Writer(&mut out);
    for x in t {
        w.u64(x.calls);
        w.u64(x.total_ms);
        w.u64(x.max_ms);
    }
    out
}

fn decode(b: &[u8]) -> Option<[Timing; 2]> {
    let mut r = Reader(b);
    let mut t = [Timing::default(); 2];
    for x in &mut t {
        *x = Timing { calls: r.u64()?, total_ms: r.u64()?, max_ms: r.u64()? };
    }
    r.is_empty().then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    #[test]
    fn workers_sums_add_up() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let (mut a, mut b) = (Local::default(), Local::default());
        a.record(Role::Anomaly, 10);
        a.record(Role::Anomaly, 30);
        b.record(Role::Anomaly, 50);
        a.flush(1_000, &store, &metrics).unwrap();
        b.flush(1_000, &store, &metrics).unwrap();
        let t = of(&read(&store).unwrap(), Role::Anomaly);
        assert_eq!((t.calls, t.max_ms), (3, 50));
        assert_eq!(t.mean_ms(), Some(30.0));
        assert_eq!(of(&read(&store).unwrap(), Role::Behavioral).mean_ms(), None);
    }
}
