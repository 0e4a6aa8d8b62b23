//! The population of one kind of key (every /24, every ASN, every JA4 value
//! seen): what a key value of that kind usually looks like, so one value is
//! scored against its peers, not against a fixed number. A /24 carrying 30
//! identities is ordinary where offices sit behind NATs and strange where
//! every /24 carries one.
//!
//! Each key value gives one sample per epoch (half a window), taken by the
//! worker whose hand-in is the key's first of the epoch: its distinct
//! identities (into a decayed histogram, for quantiles), its failure share and
//! its fresh share (weighted mean and variance). The record is one key in
//! shared data per kind; every worker adds its samples with compare-and-swap
//! in its sync and reads the merged record back.

use super::record::KeyRecord;
use crate::engine::codec::{Reader, Writer};

/// Histogram buckets: bucket `b` holds distinct counts around `2^(b/2)`,
/// from 1 to about 2900 (a factor of √2 apart).
pub const BUCKETS: usize = 24;
const VERSION: u8 = 1;
/// A key's share counts fully in the population from this many answers up.
const FULL_WEIGHT_ANSWERS: f32 = 20.0;

pub fn bucket(d: f32) -> usize {
    if d.is_nan() || d <= 1.0 {
        return 0;
    }
    ((2.0 * d.log2()).round() as usize).min(BUCKETS - 1)
}

pub fn bucket_value(b: usize) -> f32 {
    (b as f32 / 2.0).exp2()
}

/// Weighted moments of a share in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Moments {
    pub w: f32,
    pub sum: f32,
    pub sq: f32,
}

impl Moments {
    pub fn add(&mut self, x: f32, w: f32) {
        if x.is_finite() && w.is_finite() && w > 0.0 {
            self.w += w;
            self.sum += w * x;
            self.sq += w * x * x;
        }
    }

    fn scale(&mut self, k: f32) {
        self.w *= k;
        self.sum *= k;
        self.sq *= k;
    }

    fn merge(&mut self, o: &Moments) {
        self.w += o.w;
        self.sum += o.sum;
        self.sq += o.sq;
    }

    /// Mean and standard deviation, once there is a little weight.
    pub fn mean_sd(&self) -> Option<(f32, f32)> {
        if self.w < 1.0 {
            return None;
        }
        let mean = (self.sum / self.w).clamp(0.0, 1.0);
        let var = (self.sq / self.w - mean * mean).max(0.0);
        Some((mean, var.sqrt()))
    }
}

/// What scoring reads of a population, worked out once per sync rather than
/// on every request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    pub samples: f32,
    pub p75: f32,
    pub p99: f32,
    /// Mean and standard deviation of the failure share, of the fresh share.
    pub failure: Option<(f32, f32)>,
    pub fresh: Option<(f32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Population {
    pub at_ms: u64,
    /// Samples, decayed.
    pub samples: f32,
    /// Distinct identities (or addresses) per key value.
    pub hist: [f32; BUCKETS],
    pub failure: Moments,
    pub fresh: Moments,
}

impl Population {
    /// One key value's sample.
    pub fn sample(&mut self, r: &KeyRecord) {
        self.samples += 1.0;
        if let Some(h) = self.hist.get_mut(bucket(r.bits.members())) {
            *h += 1.0;
        }
        if let Some(f) = r.counts.failure_share() {
            self.failure.add(f, (r.counts.answered / FULL_WEIGHT_ANSWERS).min(1.0));
        }
        if let Some(f) = r.counts.fresh_share() {
            self.fresh.add(f, (r.counts.fresh_known / FULL_WEIGHT_ANSWERS).min(1.0));
        }
    }

    /// A key value seen with one identity and nothing else worth sharing.
    pub fn sample_single(&mut self, answered: f32, failures: f32, fresh: f32, fresh_known: f32) {
        self.samples += 1.0;
        if let Some(h) = self.hist.first_mut() {
            *h += 1.0;
        }
        if answered >= 0.5 {
            self.failure.add(failures / answered, (answered / FULL_WEIGHT_ANSWERS).min(1.0));
        }
        if fresh_known >= 0.5 {
            self.fresh.add(fresh / fresh_known, (fresh_known / FULL_WEIGHT_ANSWERS).min(1.0));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.samples <= 0.0
    }

    fn scale(&mut self, k: f32) {
        self.samples *= k;
        self.hist.iter_mut().for_each(|h| *h *= k);
        self.failure.scale(k);
        self.fresh.scale(k);
    }

    /// `shared` (decayed with time constant `tau_ms` to `now_ms`) plus a
    /// worker's new samples.
    pub fn merged(shared: Option<&Population>, local: &Population, now_ms: u64, tau_ms: u64) -> Population {
        let mut p = shared.copied().unwrap_or(Population { at_ms: now_ms, ..Population::default() });
        if now_ms > p.at_ms {
            p.scale((-((now_ms - p.at_ms) as f64) / tau_ms.max(1) as f64).exp() as f32);
            p.at_ms = now_ms;
        }
        p.samples += local.samples;
        for (a, b) in p.hist.iter_mut().zip(&local.hist) {
            *a += b;
        }
        p.failure.merge(&local.failure);
        p.fresh.merge(&local.fresh);
        p
    }

    pub fn baseline(&self) -> Baseline {
        Baseline {
            samples: self.samples,
            p75: self.quantile(0.75),
            p99: self.quantile(0.99),
            failure: self.failure.mean_sd(),
            fresh: self.fresh.mean_sd(),
        }
    }

    /// The `q` quantile of distinct identities per key value.
    pub fn quantile(&self, q: f32) -> f32 {
        let total: f32 = self.hist.iter().sum();
        if total <= 0.0 {
            return 1.0;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut seen = 0.0;
        for (b, h) in self.hist.iter().enumerate() {
            seen += h;
            if seen >= rank {
                return bucket_value(b);
            }
        }
        bucket_value(BUCKETS - 1)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.u8(VERSION);
        w.u64(self.at_ms);
        w.f32(self.samples);
        for h in &self.hist {
            w.f32(*h);
        }
        for m in [&self.failure, &self.fresh] {
            w.f32(m.w);
            w.f32(m.sum);
            w.f32(m.sq);
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Population> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let at_ms = r.u64()?;
        let mut f = || r.f32().filter(|v| v.is_finite() && *v >= 0.0);
        let samples = f()?;
        let mut hist = [0.0; BUCKETS];
        for h in hist.iter_mut() {
            *h = f()?;
        }
        let failure = Moments { w: f()?, sum: f()?, sq: f()? };
        let fresh = Moments { w: f()?, sum: f()?, sq: f()? };
        r.is_empty().then_some(Population { at_ms, samples, hist, failure, fresh })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::keys::record::{Bits, Counts};

    fn record(members: u64, answered: f32, failures: f32) -> KeyRecord {
        let mut bits = Bits::default();
        for i in 0..members {
            bits.add(crate::engine::hash::HashKey::new(5, 6).hash(&[&i.to_le_bytes()]) | 1, 0, 1);
        }
        KeyRecord { counts: Counts { requests: answered, answered, failures, ..Counts::default() }, bits, ..KeyRecord::default() }
    }

    #[test]
    fn quantiles_follow_the_samples() {
        let mut p = Population::default();
        for i in 0..200 {
            p.sample(&record(if i % 50 == 0 { 4 } else { 1 }, 10.0, 0.0));
        }
        assert_eq!(p.quantile(0.5), 1.0);
        let p99 = p.quantile(0.99);
        assert!((2.0..=5.7).contains(&p99), "{p99}");
        let (mean, sd) = p.failure.mean_sd().unwrap();
        assert!(mean < 0.01 && sd < 0.01);
    }

    #[test]
    fn merge_decays_the_shared_copy_and_round_trips() {
        let mut local = Population::default();
        local.sample(&record(3, 20.0, 10.0));
        let shared = Population::merged(None, &local, 1_000, 60_000);
        let later = Population::merged(Some(&shared), &local, 61_000, 60_000);
        assert!((later.samples - (1.0 + (-1.0f32).exp())).abs() < 1e-3, "{}", later.samples);
        let mut out = Vec::new();
        later.encode(&mut out);
        assert_eq!(Population::decode(&out), Some(later));
        assert!(Population::decode(&out[1..]).is_none());
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(f32::NAN), 0);
        assert_eq!(bucket(1e9), BUCKETS - 1);
    }
}
