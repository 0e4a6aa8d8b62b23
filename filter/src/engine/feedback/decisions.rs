//! The recent decisions an operator may give feedback on, by request id:
//! every flagged, throttled or blocked request (allowed ones are not kept:
//! they are most requests, and a write each would cost the request path).
//! A bounded slot table in shared data (`admin.recent_decisions`), the least
//! recently written record making room, so any worker can answer feedback
//! on any worker's decision.

use crate::engine::codec::{Reader, Writer};
use crate::engine::ports::{MetricsSink, SharedStore, StoreError, Table};
use crate::engine::slots::{Record, SlotTable};

/// Decisions older than this are forgotten (and their slots reused).
const TTL_MS: u64 = 7 * 24 * 3_600_000;

/// What feedback needs to know about a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub identity: u64,
    /// The identity's display form (`kind:keyed-hash`).
    pub identity_display: String,
    pub anonymous: bool,
    pub route: String,
    pub route_hash: u32,
    pub group: u8,
    /// Detectors that weighed in (`feedback::mask`).
    pub mask: u16,
    pub risk_permille: u16,
    /// 1 flag, 2 throttle, 3 block.
    pub decision: u8,
    pub at_ms: u64,
}

impl Record for Decided {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.u64(self.identity);
        w.str(&self.identity_display);
        w.u8(u8::from(self.anonymous));
        w.str(&self.route);
        w.u32(self.route_hash);
        w.u8(self.group);
        w.u16(self.mask);
        w.u16(self.risk_permille);
        w.u8(self.decision);
        w.u64(self.at_ms);
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let d = Decided {
            identity: r.u64()?,
            identity_display: r.str()?.to_string(),
            anonymous: r.u8()? != 0,
            route: r.str()?.to_string(),
            route_hash: r.u32()?,
            group: r.u8()?,
            mask: r.u16()?,
            risk_permille: r.u16()?.min(1000),
            decision: r.u8()?.min(3),
            at_ms: r.u64()?,
        };
        r.is_empty().then_some(d)
    }
}

pub struct Decisions {
    prefix: String,
    slots: u32,
}

impl Decisions {
    pub fn new(slots: u32) -> Self {
        Decisions { prefix: format!("vigil/decisions/{slots}/"), slots }
    }

    fn table<'a>(&'a self, store: &'a dyn SharedStore, metrics: &'a dyn MetricsSink) -> SlotTable<'a> {
        SlotTable::new(store, metrics, &self.prefix, self.slots, Table::Decisions, TTL_MS)
    }

    pub fn start(&self, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<u32, StoreError> {
        self.table(store, metrics).initialize::<Decided>()
    }

    /// Keeps a decision under its request id's hash.
    pub fn keep(&self, request: u64, d: Decided, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<(), StoreError> {
        let at = d.at_ms;
        self.table(store, metrics).update(request.max(1), at, |_| d.clone()).map(|_| ())
    }

    pub fn find(&self, request: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<Option<Decided>, StoreError> {
        self.table(store, metrics).read(request.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    fn decided(i: u64) -> Decided {
        Decided {
            identity: 40 + i,
            identity_display: "user:abc".into(),
            anonymous: false,
            route: "/export/{id}".into(),
            route_hash: 7,
            group: 1,
            mask: 2,
            risk_permille: 612,
            decision: 1,
            at_ms: 1_000 + i,
        }
    }

    #[test]
    fn decisions_are_found_by_request_and_the_table_stays_bounded() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let t = Decisions::new(16);
        t.start(&store, &metrics).unwrap();
        let keys = store.len();
        t.keep(99, decided(0), &store, &metrics).unwrap();
        assert_eq!(t.find(99, &store, &metrics).unwrap(), Some(decided(0)));
        assert_eq!(t.find(98, &store, &metrics).unwrap(), None);
        for i in 0..1000 {
            t.keep(1000 + i, decided(i), &store, &metrics).unwrap();
        }
        assert_eq!(store.len(), keys, "no key added past the slots");
        assert_eq!(t.find(1999, &store, &metrics).unwrap(), Some(decided(999)), "the newest is kept");
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let mut bytes = Vec::new();
        decided(3).encode(&mut bytes);
        assert_eq!(Decided::decode(&bytes), Some(decided(3)));
        assert_eq!(Decided::decode(&bytes[..bytes.len() - 1]), None);
        bytes.push(0);
        assert_eq!(Decided::decode(&bytes), None);
    }
}
