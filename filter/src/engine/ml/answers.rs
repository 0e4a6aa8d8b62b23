//! `async` answers, kept per identity in shared data so that a model's
//! verdict on one request reaches the identity's next requests on every
//! worker. A bounded slot table: an attacker inventing identities recycles
//! slots, never grows memory.

use super::protocol::Answer;
use crate::engine::codec::{Reader, Writer};
use crate::engine::ports::{MetricsSink, SharedStore, StoreError, Table};
use crate::engine::slots::{Record, SlotTable};

/// The strongest recent answer for one identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stored {
    pub score: f32,
    pub confidence: f32,
    pub at_ms: u64,
}

impl Record for Stored {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.f32(self.score);
        w.f32(self.confidence);
        w.u64(self.at_ms);
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        let (score, confidence, at_ms) = (r.f32()?, r.f32()?, r.u64()?);
        // Whatever is in shared data is checked before it can weigh on a decision.
        let unit = |x: f32| x.is_finite() && (0.0..=1.0).contains(&x);
        (unit(score) && unit(confidence)).then_some(Stored { score, confidence, at_ms })
    }
}

impl Stored {
    /// The score `now_ms`, halved every `half_life_ms` since the answer.
    pub fn decayed(&self, now_ms: u64, half_life_ms: u64) -> f64 {
        let age = now_ms.saturating_sub(self.at_ms) as f64;
        f64::from(self.score) * 0.5f64.powf(age / half_life_ms.max(1) as f64)
    }

    /// A new answer replaces the stored one only if it is at least as strong
    /// as what is left of it: a benign answer does not wipe out a recent
    /// anomalous one, it lets it fade.
    fn merge(current: Option<&Stored>, answer: &Answer, now_ms: u64, half_life_ms: u64) -> Stored {
        let fresh = Stored { score: answer.score as f32, confidence: answer.confidence as f32, at_ms: now_ms };
        match current {
            Some(old) if old.decayed(now_ms, half_life_ms) > answer.score => *old,
            _ => fresh,
        }
    }
}

pub struct Answers {
    prefix: String,
    slots: u32,
    half_life_ms: u64,
}

impl Answers {
    pub fn new(slots: u32, half_life_s: u32) -> Self {
        Answers { prefix: format!("vigil/ml/{slots}/"), slots, half_life_ms: u64::from(half_life_s) * 1000 }
    }

    /// After eight half-lives an answer weighs under 0.4%: its slot is free.
    fn table<'a>(&'a self, store: &'a dyn SharedStore, metrics: &'a dyn MetricsSink) -> SlotTable<'a> {
        SlotTable::new(store, metrics, &self.prefix, self.slots, Table::Ml, 8 * self.half_life_ms)
    }

    pub fn start(&self, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<u32, StoreError> {
        self.table(store, metrics).initialize::<Stored>()
    }

    pub fn record(
        &self,
        identity: u64,
        answer: &Answer,
        now_ms: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
    ) -> Result<Stored, StoreError> {
        let hl = self.half_life_ms;
        Ok(self.table(store, metrics).update(identity, now_ms, |cur| Stored::merge(cur, answer, now_ms, hl))?.record)
    }

    /// The identity's answer as it weighs now: (score, confidence).
    pub fn read(
        &self,
        identity: u64,
        now_ms: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
    ) -> Result<Option<(f64, f64)>, StoreError> {
        Ok(self
            .table(store, metrics)
            .read::<Stored>(identity)?
            .map(|s| (s.decayed(now_ms, self.half_life_ms), f64::from(s.confidence))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    fn answer(score: f64) -> Answer {
        Answer { score, raw: score, confidence: 0.8 }
    }

    #[test]
    fn an_anomalous_answer_outlives_benign_ones_and_fades() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let a = Answers::new(64, 60);
        a.start(&store, &metrics).unwrap();
        assert_eq!(a.read(7, 0, &store, &metrics).unwrap(), None);
        a.record(7, &answer(0.96), 1_000, &store, &metrics).unwrap();
        a.record(7, &answer(0.05), 2_000, &store, &metrics).unwrap();
        let (s, c) = a.read(7, 2_000, &store, &metrics).unwrap().unwrap();
        assert!(s > 0.94, "a benign answer a second later does not wipe it: {s}");
        assert!((c - 0.8).abs() < 1e-6);
        let (s, _) = a.read(7, 61_000, &store, &metrics).unwrap().unwrap();
        assert!((s - 0.48).abs() < 0.01, "one half-life later: {s}");
        a.record(7, &answer(0.7), 61_000, &store, &metrics).unwrap();
        assert!((a.read(7, 61_000, &store, &metrics).unwrap().unwrap().0 - 0.7).abs() < 1e-6, "a stronger answer replaces it");
        assert_eq!(a.read(8, 61_000, &store, &metrics).unwrap(), None, "other identities are untouched");
    }

    #[test]
    fn corrupt_records_never_weigh_in() {
        let bad = Stored { score: f32::NAN, confidence: 0.5, at_ms: 0 };
        let mut bytes = Vec::new();
        bad.encode(&mut bytes);
        assert_eq!(Stored::decode(&bytes), None);
        let mut bytes = Vec::new();
        Stored { score: 3.0, confidence: 0.5, at_ms: 0 }.encode(&mut bytes);
        assert_eq!(Stored::decode(&bytes), None);
        assert_eq!(Stored::decode(&bytes[..10]), None);
    }

    #[test]
    fn memory_is_bounded_whatever_the_number_of_identities() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let a = Answers::new(32, 60);
        a.start(&store, &metrics).unwrap();
        let before = store.len();
        for id in 1..5_000u64 {
            a.record(id, &answer(0.9), id, &store, &metrics).unwrap();
        }
        assert_eq!(store.len(), before);
        assert!(store.bytes() < 32 * 64, "{}", store.bytes());
    }
}
