//! The first local signal: each identity's request rate against a ceiling,
//! counted across all workers in the shared slot table.
//!
//! The window is a sliding approximation over two fixed windows that start at
//! the identity's first request: `estimate = current + previous * (share of the
//! previous window still inside the sliding one)`. `current` itself is exact.

use super::config::RateLimitConfig;
use super::features::{Signal, ThreatDetail};
use super::ports::{MetricsSink, SharedStore, StoreError, Table};
use super::slots::{Hints, Record, SlotTable};

pub const SIGNAL: &str = "rate";
/// Shared-data key prefix; the slot count is part of it so a config change of
/// `max_identities` starts a fresh table instead of misreading the old one.
pub fn key_prefix(cfg: &RateLimitConfig) -> String {
    format!("vigil/rate/{}/", cfg.max_identities)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRecord {
    pub window_start_ms: u64,
    pub current: u32,
    pub previous: u32,
}

impl Record for RateRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.window_start_ms.to_le_bytes());
        out.extend_from_slice(&self.current.to_le_bytes());
        out.extend_from_slice(&self.previous.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Option<Self> {
        Some(RateRecord {
            window_start_ms: u64::from_le_bytes(b.get(0..8)?.try_into().ok()?),
            current: u32::from_le_bytes(b.get(8..12)?.try_into().ok()?),
            previous: u32::from_le_bytes(b.get(12..16)?.try_into().ok()?),
        })
    }
}

impl RateRecord {
    /// The record after one more request at `now_ms`.
    pub fn advance(current: Option<&RateRecord>, now_ms: u64, window_ms: u64) -> RateRecord {
        let Some(r) = current else {
            return RateRecord { window_start_ms: now_ms, current: 1, previous: 0 };
        };
        let elapsed = now_ms.saturating_sub(r.window_start_ms);
        let mut next = *r;
        if elapsed >= 2 * window_ms {
            next = RateRecord { window_start_ms: now_ms, current: 0, previous: 0 };
        } else if elapsed >= window_ms {
            next = RateRecord { window_start_ms: r.window_start_ms + window_ms, current: 0, previous: r.current };
        }
        next.current = next.current.saturating_add(1);
        next
    }

    /// Requests in the sliding window ending at `now_ms`.
    pub fn estimate(&self, now_ms: u64, window_ms: u64) -> f64 {
        let into = now_ms.saturating_sub(self.window_start_ms).min(window_ms) as f64;
        let w = window_ms.max(1) as f64;
        f64::from(self.current) + f64::from(self.previous) * (1.0 - into / w)
    }

    /// How long, with no further requests, until the sliding estimate is back
    /// within `ceiling`: what `retry-after` promises. (Refused requests count
    /// too, so a client that keeps hammering stays refused.)
    pub fn ms_until_within(&self, now_ms: u64, window_ms: u64, ceiling: f64) -> u64 {
        if self.estimate(now_ms, window_ms) <= ceiling {
            return 0;
        }
        let w = window_ms as f64;
        let (current, previous) = (f64::from(self.current), f64::from(self.previous));
        let at = if current <= ceiling && previous > 0.0 {
            // Inside this window, once enough of the previous one has slid out.
            self.window_start_ms as f64 + w * (1.0 - (ceiling - current) / previous)
        } else {
            // After this window ends its count becomes "previous" and slides out.
            (self.window_start_ms + window_ms) as f64 + w * (1.0 - ceiling / current.max(1.0))
        };
        (at.ceil() as u64).saturating_sub(now_ms)
    }
}

/// Score of a request rate `r = estimate / ceiling`:
/// 0 up to half the ceiling, rising to 0.6 at the ceiling (flagged from about
/// 92% of it with the default thresholds), then 0.8 just past it (throttled),
/// reaching 1.0 at twice the ceiling (blocked from 1.75x by default).
pub fn score(ratio: f64) -> f64 {
    if !ratio.is_finite() || ratio <= 0.5 {
        0.0
    } else if ratio <= 1.0 {
        0.6 * (ratio - 0.5) / 0.5
    } else {
        (0.8 + 0.2 * (ratio - 1.0)).min(1.0)
    }
}

/// What the rate step found for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RateObservation {
    pub record: RateRecord,
    pub estimate: f64,
    pub signal: Signal,
    pub detail: Option<ThreatDetail>,
}

/// Counts this request for `owner` and scores the resulting rate.
pub fn observe(
    cfg: &RateLimitConfig,
    store: &dyn SharedStore,
    metrics: &dyn MetricsSink,
    prefix: &str,
    hints: Option<&Hints>,
    owner: u64,
    now_ms: u64,
) -> Result<RateObservation, StoreError> {
    let window_ms = u64::from(cfg.window_seconds) * 1000;
    let mut table = table(cfg, store, metrics, prefix);
    if let Some(h) = hints {
        table = table.with_hints(h);
    }
    let updated = table.update(owner, now_ms, |r| RateRecord::advance(r, now_ms, window_ms))?;
    let record = updated.record;
    let estimate = record.estimate(now_ms, window_ms);
    let ceiling = f64::from(cfg.requests_per_window.max(1));
    let s = score(estimate / ceiling);
    let detail = (s > 0.0).then(|| ThreatDetail {
        signal: SIGNAL,
        reason: format!(
            "{:.0} requests in the last {}s against a ceiling of {}",
            estimate, cfg.window_seconds, cfg.requests_per_window
        ),
    });
    Ok(RateObservation { record, estimate, signal: Signal::local(SIGNAL, s), detail })
}

/// Creates the rate table's slots (start-up, idempotent).
pub fn initialize(
    cfg: &RateLimitConfig,
    store: &dyn SharedStore,
    metrics: &dyn MetricsSink,
    prefix: &str,
) -> Result<u32, StoreError> {
    table(cfg, store, metrics, prefix).initialize::<RateRecord>()
}

/// The rate table: a slot not seen for two windows holds nothing worth keeping.
fn table<'a>(
    cfg: &RateLimitConfig,
    store: &'a dyn SharedStore,
    metrics: &'a dyn MetricsSink,
    prefix: &'a str,
) -> SlotTable<'a> {
    let ttl_ms = 2 * u64::from(cfg.window_seconds) * 1000;
    SlotTable::new(store, metrics, prefix, cfg.max_identities, Table::Rate, ttl_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    #[test]
    fn score_is_monotonic_and_hits_the_documented_points() {
        assert_eq!(score(0.0), 0.0);
        assert_eq!(score(0.5), 0.0);
        assert!((score(1.0) - 0.6).abs() < 1e-12);
        assert!(score(1.0001) > 0.8);
        assert!((score(2.0) - 1.0).abs() < 1e-12);
        assert_eq!(score(50.0), 1.0);
        assert_eq!(score(f64::NAN), 0.0);
        let mut last = 0.0;
        for i in 0..400 {
            let s = score(f64::from(i) / 100.0);
            assert!(s >= last && (0.0..=1.0).contains(&s));
            last = s;
        }
    }

    #[test]
    fn windows_roll_and_the_estimate_slides() {
        let w = 10_000;
        let mut r = RateRecord::advance(None, 0, w);
        for t in 1..10 {
            r = RateRecord::advance(Some(&r), t * 1000, w);
        }
        assert_eq!(r.current, 10);
        assert_eq!(r.estimate(9_000, w), 10.0);
        let r2 = RateRecord::advance(Some(&r), 15_000, w);
        assert_eq!((r2.window_start_ms, r2.current, r2.previous), (10_000, 1, 10));
        assert_eq!(r2.estimate(15_000, w), 1.0 + 10.0 * 0.5);
        let r3 = RateRecord::advance(Some(&r2), 40_000, w);
        assert_eq!((r3.current, r3.previous), (1, 0));
    }

    #[test]
    fn retry_after_is_when_the_estimate_is_back_within_the_ceiling() {
        let w = 10_000;
        // 20 requests in this window, ceiling 10: this window must end, then half of it slide out.
        let r = RateRecord { window_start_ms: 0, current: 20, previous: 0 };
        let wait = r.ms_until_within(4_000, w, 10.0);
        assert_eq!(wait, 6_000 + 5_000);
        assert!(RateRecord::advance(Some(&r), 4_000 + wait, w).estimate(4_000 + wait, w) <= 11.0);
        // Within the ceiling now: no wait.
        assert_eq!(r.ms_until_within(4_000, w, 25.0), 0);
        // 5 now, 20 before, ceiling 10: wait until 3/4 of the previous window slid out.
        let r = RateRecord { window_start_ms: 0, current: 5, previous: 20 };
        assert_eq!(r.ms_until_within(1_000, w, 10.0), 7_500 - 1_000);
    }

    #[test]
    fn observe_counts_exactly_and_scores_past_the_ceiling() {
        let cfg = RateLimitConfig { requests_per_window: 10, window_seconds: 60, max_identities: 64, enabled: true };
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let prefix = key_prefix(&cfg);
        initialize(&cfg, &store, &metrics, &prefix).unwrap();
        let mut last = None;
        for i in 0..25u64 {
            last = Some(observe(&cfg, &store, &metrics, &prefix, None, 77, 1_000 + i).unwrap());
            if i == 4 {
                assert_eq!(last.as_ref().unwrap().signal.score, 0.0);
            }
        }
        let last = last.unwrap();
        assert_eq!(last.record.current, 25);
        assert_eq!(last.signal.score, 1.0);
        assert!(last.detail.unwrap().reason.contains("ceiling of 10"));
    }

    #[test]
    fn encoding_round_trips_and_rejects_short_input() {
        let r = RateRecord { window_start_ms: 1 << 40, current: 7, previous: u32::MAX };
        let mut b = Vec::new();
        r.encode(&mut b);
        assert_eq!(b.len(), 16);
        assert_eq!(RateRecord::decode(&b), Some(r));
        assert_eq!(RateRecord::decode(&b[..15]), None);
    }
}
