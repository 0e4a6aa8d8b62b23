//! What Vigil keeps per key value (one /24, one ASN, one JA4 value): a
//! compact record of its short-window activity, the same shape in shared data
//! and in a worker's pending counts, so merging is adding.
//!
//! - Counts (requests, answered, failed, fresh) decay with the window as time
//!   constant: about what the last `window_seconds` saw.
//! - Distinct identities and routes are linear-counting bitmaps (256 bits for
//!   members, 64 for routes) per half-window epoch, the current and the one
//!   before: OR-merged, so a worker handing in the same bits twice changes
//!   nothing, and no raw value or even full hash is kept.

use crate::engine::codec::{Reader, Writer};
use crate::engine::slots::Record;

/// Bits of the member (identity) bitmap: estimates are good to about 1000
/// distinct members, saturating near 1400.
pub const MEMBER_BITS: u32 = 256;
const ROUTE_BITS: u32 = 64;
const VERSION: u8 = 1;
/// Encoded size of a record.
pub const ENCODED: usize = 1 + 8 + 5 * 4 + 4 + 4 + 8 * 8 + 2 * 8;

/// How the windows are cut.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Counts decay with this time constant (ms).
    pub window_ms: u64,
    /// Bitmaps roll every half-window.
    pub epoch_ms: u64,
}

impl Window {
    pub fn new(window_seconds: u32) -> Self {
        let window_ms = u64::from(window_seconds.max(2)) * 1000;
        Window { window_ms, epoch_ms: window_ms / 2 }
    }

    pub fn epoch(&self, now_ms: u64) -> u32 {
        (now_ms / self.epoch_ms.max(1)) as u32
    }

    /// The factor counts keep after `elapsed_ms`.
    pub fn keep(&self, elapsed_ms: u64) -> f32 {
        (-(elapsed_ms as f64) / self.window_ms.max(1) as f64).exp() as f32
    }
}

/// Decaying counts (or, in a worker's pending delta, exact ones).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Counts {
    pub requests: f32,
    /// Requests the upstream answered (Vigil's own refusals are not).
    pub answered: f32,
    /// Answered with a failure status (`failure_statuses`).
    pub failures: f32,
    /// Requests from identities first seen recently...
    pub fresh: f32,
    /// ...out of the requests whose freshness is known (profiling on).
    pub fresh_known: f32,
}

impl Counts {
    fn scale(&mut self, k: f32) {
        self.requests *= k;
        self.answered *= k;
        self.failures *= k;
        self.fresh *= k;
        self.fresh_known *= k;
    }

    pub fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.answered += o.answered;
        self.failures += o.failures;
        self.fresh += o.fresh;
        self.fresh_known += o.fresh_known;
    }

    /// Failure share, or `None` with nothing answered.
    pub fn failure_share(&self) -> Option<f32> {
        (self.answered >= 0.5).then(|| (self.failures / self.answered).clamp(0.0, 1.0))
    }

    pub fn fresh_share(&self) -> Option<f32> {
        (self.fresh_known >= 0.5).then(|| (self.fresh / self.fresh_known).clamp(0.0, 1.0))
    }
}

/// Member and route bitmaps for the current epoch and the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bits {
    pub epoch: u32,
    pub members: [[u64; 4]; 2],
    pub routes: [u64; 2],
}

fn member_bit(h: u64) -> (usize, u64) {
    // A keyed hash already: fold its halves for the bit index.
    let i = ((h >> 32) ^ h) as u8;
    (usize::from(i >> 6), 1u64 << (i & 63))
}

impl Bits {
    /// Moves to `epoch`: the current bits become the previous ones (or
    /// everything is forgotten after two epochs or more). Never goes back.
    pub fn roll(&mut self, epoch: u32) {
        if epoch <= self.epoch {
            return;
        }
        let [cur, _] = self.members;
        let [rcur, _] = self.routes;
        if epoch == self.epoch + 1 {
            self.members = [[0; 4], cur];
            self.routes = [0, rcur];
        } else {
            self.members = [[0; 4]; 2];
            self.routes = [0; 2];
        }
        self.epoch = epoch;
    }

    /// Adds one member (0: none, e.g. an anonymous request) and one route at `epoch`.
    pub fn add(&mut self, member: u64, route: u32, epoch: u32) {
        self.roll(epoch);
        let slot = if epoch < self.epoch { 1 } else { 0 };
        if epoch + 1 < self.epoch {
            return;
        }
        if member != 0 {
            let (w, bit) = member_bit(member);
            if let Some(word) = self.members.get_mut(slot).and_then(|m| m.get_mut(w)) {
                *word |= bit;
            }
        }
        if let Some(r) = self.routes.get_mut(slot) {
            *r |= 1u64 << (route % ROUTE_BITS);
        }
    }

    /// ORs `other` in, both seen at the later of their epochs.
    pub fn merge(&mut self, other: &Bits) {
        let mut o = *other;
        let epoch = self.epoch.max(o.epoch);
        self.roll(epoch);
        o.roll(epoch);
        for (a, b) in self.members.iter_mut().flatten().zip(o.members.iter().flatten()) {
            *a |= b;
        }
        for (a, b) in self.routes.iter_mut().zip(&o.routes) {
            *a |= b;
        }
    }

    /// Distinct members over both epochs (linear counting).
    pub fn members(&self) -> f32 {
        let [a, b] = self.members;
        let set: u32 = a.iter().zip(&b).map(|(x, y)| (x | y).count_ones()).sum();
        linear_count(set, MEMBER_BITS)
    }

    /// Bits set in the member bitmaps (a test of "more than one").
    pub fn member_bits(&self) -> u32 {
        let [a, b] = self.members;
        a.iter().zip(&b).map(|(x, y)| (x | y).count_ones()).sum()
    }

    pub fn routes(&self) -> f32 {
        let [a, b] = self.routes;
        linear_count((a | b).count_ones(), ROUTE_BITS)
    }
}

/// Linear counting: `n ≈ -m ln(zeros / m)`; a full bitmap reads as `m ln m`.
fn linear_count(set: u32, m: u32) -> f32 {
    let m = m as f32;
    let zeros = (m - set as f32).max(1.0);
    (m * (m / zeros).ln()).max(set as f32)
}

/// One key value's record in shared data.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct KeyRecord {
    /// When `counts` were last decayed.
    pub at_ms: u64,
    pub counts: Counts,
    /// The epoch this record last gave the population a sample in.
    pub sampled_epoch: u32,
    pub bits: Bits,
}

/// A worker's activity for one key value since it last handed it in.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Delta {
    pub counts: Counts,
    pub bits: Bits,
}

impl KeyRecord {
    /// This record as of `now_ms`: counts decayed, bitmaps rolled.
    pub fn at(&self, now_ms: u64, w: &Window) -> KeyRecord {
        let mut r = *self;
        if now_ms > r.at_ms {
            r.counts.scale(w.keep(now_ms - r.at_ms));
            r.at_ms = now_ms;
        }
        r.bits.roll(w.epoch(now_ms));
        r
    }

    /// Adds a worker's delta at `now_ms`. Returns the record, and whether
    /// this is the key's first hand-in of the epoch (the merging worker then
    /// gives the population its sample of this key).
    pub fn merged(current: Option<&KeyRecord>, delta: &Delta, now_ms: u64, w: &Window) -> (KeyRecord, bool) {
        let mut r = current.map_or(KeyRecord { at_ms: now_ms, ..KeyRecord::default() }, |c| c.at(now_ms, w));
        r.counts.add(&delta.counts);
        r.bits.merge(&delta.bits);
        let epoch = w.epoch(now_ms);
        let sample = r.sampled_epoch != epoch;
        r.sampled_epoch = epoch;
        (r, sample)
    }

    /// What a worker sees of the key: this record plus its own pending delta.
    pub fn with(&self, delta: Option<&Delta>) -> KeyRecord {
        let mut r = *self;
        if let Some(d) = delta {
            r.counts.add(&d.counts);
            r.bits.merge(&d.bits);
        }
        r
    }

    pub fn from_delta(delta: &Delta, now_ms: u64) -> KeyRecord {
        KeyRecord { at_ms: now_ms, counts: delta.counts, sampled_epoch: 0, bits: delta.bits }
    }
}

impl Record for KeyRecord {
    const SIZE_HINT: usize = ENCODED;

    fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.u8(VERSION);
        w.u64(self.at_ms);
        let c = &self.counts;
        for v in [c.requests, c.answered, c.failures, c.fresh, c.fresh_known] {
            w.f32(v);
        }
        w.u32(self.sampled_epoch);
        w.u32(self.bits.epoch);
        for word in self.bits.members.iter().flatten() {
            w.u64(*word);
        }
        for word in &self.bits.routes {
            w.u64(*word);
        }
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let at_ms = r.u64()?;
        let mut f = || r.f32().filter(|v| v.is_finite() && *v >= 0.0);
        let counts = Counts { requests: f()?, answered: f()?, failures: f()?, fresh: f()?, fresh_known: f()? };
        let sampled_epoch = r.u32()?;
        let mut bits = Bits { epoch: r.u32()?, ..Bits::default() };
        for word in bits.members.iter_mut().flatten() {
            *word = r.u64()?;
        }
        for word in bits.routes.iter_mut() {
            *word = r.u64()?;
        }
        r.is_empty().then_some(KeyRecord { at_ms, counts, sampled_epoch, bits })
    }

    /// Worth its recent requests: a flood of one-request key values cannot
    /// push out a busy one.
    fn keep_value(&self, idle_ms: u64) -> f64 {
        // The decay's time constant is not known here: a minute, the default window.
        f64::from(self.counts.requests) * (-(idle_ms as f64) / 60_000.0).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> Window {
        Window::new(60)
    }

    fn h(i: u64) -> u64 {
        crate::engine::hash::HashKey::new(3, 4).hash(&[&i.to_le_bytes()]) | 1
    }

    #[test]
    fn distinct_members_are_estimated_within_a_few_percent() {
        for n in [1u64, 5, 30, 143, 500] {
            let mut b = Bits::default();
            for i in 0..n {
                b.add(h(i), 1, 10);
                b.add(h(i), 1, 10); // the same member twice counts once
            }
            let est = b.members();
            let err = (est - n as f32).abs() / n as f32;
            assert!(err < 0.12, "{n}: {est}");
        }
        let mut full = Bits::default();
        for i in 0..100_000 {
            full.add(h(i), 1, 1);
        }
        assert!(full.members() > 1_000.0 && full.members().is_finite());
    }

    #[test]
    fn epochs_roll_and_merge_is_idempotent() {
        let mut b = Bits::default();
        for i in 0..20 {
            b.add(h(i), 1, 5);
        }
        let mut later = b;
        later.roll(6);
        assert!((later.members() - b.members()).abs() < 0.01, "the previous epoch still counts");
        later.roll(8);
        assert_eq!(later.members(), 0.0, "two epochs on, forgotten");
        let mut twice = b;
        twice.merge(&b);
        assert_eq!(twice, b);
        // A delta from the previous epoch lands in the previous half.
        let mut old = Bits::default();
        old.add(h(99), 2, 4);
        let mut m = b;
        m.merge(&old);
        assert_eq!(m.epoch, 5);
        assert!(m.member_bits() >= b.member_bits());
    }

    #[test]
    fn counts_decay_and_the_first_hand_in_of_an_epoch_samples() {
        let w = w();
        let d = Delta { counts: Counts { requests: 10.0, answered: 10.0, failures: 9.0, ..Counts::default() }, bits: Bits::default() };
        let (r, sample) = KeyRecord::merged(None, &d, 100_000, &w);
        assert!(sample);
        let (r2, sample) = KeyRecord::merged(Some(&r), &d, 101_000, &w);
        assert!(!sample, "same epoch");
        assert!(r2.counts.requests > 19.0 && r2.counts.requests < 20.0);
        assert!((r2.counts.failure_share().unwrap() - 0.9).abs() < 1e-3);
        let later = r2.at(100_000 + 60_000 * 5, &w);
        assert!(later.counts.requests < 0.2);
        let (_, sample) = KeyRecord::merged(Some(&r2), &d, 200_000, &w);
        assert!(sample, "a new epoch");
    }

    #[test]
    fn encoding_round_trips_and_refuses_garbage() {
        let mut b = Bits::default();
        b.add(h(1), 7, 3);
        let r = KeyRecord { at_ms: 5, counts: Counts { requests: 1.5, answered: 1.0, failures: 1.0, fresh: 0.5, fresh_known: 1.0 }, sampled_epoch: 3, bits: b };
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(out.len(), ENCODED);
        assert_eq!(KeyRecord::decode(&out), Some(r));
        assert!(KeyRecord::decode(&out[..out.len() - 1]).is_none());
        assert!(KeyRecord::decode(&[]).is_none());
        let mut nan = out.clone();
        nan[9..13].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(KeyRecord::decode(&nan).is_none());
    }
}
