//! One scope's six series (volume, three latency quantiles, 4xx and 5xx
//! rates), each scored by two methods:
//!
//! - a z-score against an exponentially weighted baseline (mean and variance
//!   over the analysis window), with a floor per metric that encodes what is
//!   too small to matter (Poisson noise of a count, a quarter of the latency,
//!   binomial noise of an error rate), and a direction: fewer requests can be
//!   an anomaly, faster or cleaner responses are not. It scores
//!   `(|z| - 3) / 3`, clipped to [0, 1]: nothing below 3, certain from 6.
//! - the streaming detector (`detector.rs`): how unlikely the recent samples
//!   are given this series' own history, robust to outliers and daily cycles.
//!
//! The baseline learns every sample, but once warm clipped at 3 spreads, so an outage
//! moves it slowly: a lasting change becomes the new normal over about one
//! analysis window, and is flagged until then.
//!
//! A series scores the higher of the two, but only while the deviation is
//! material (z of at least 3, in the right direction). The detector alone
//! flags wiggles on quiet series that nobody would page on; the z-score
//! alone misses a pattern break that stays within the usual spread; and a
//! spiky series teaches the detector that spikes are normal, where the
//! z-score still sees an outage many times larger than any spike.

use super::detector::{Detector, Params, ENCODED_LEN};
use super::tally::Tally;
use crate::engine::codec::{Reader, Writer};

/// A scope's baseline z-score must reach this for its detector's score to count.
pub const Z_MIN: f64 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Requests,
    LatencyP50,
    LatencyP95,
    LatencyP99,
    ClientErrorRate,
    ServerErrorRate,
}

pub const METRICS: [Metric; 6] = [
    Metric::Requests,
    Metric::LatencyP50,
    Metric::LatencyP95,
    Metric::LatencyP99,
    Metric::ClientErrorRate,
    Metric::ServerErrorRate,
];

impl Metric {
    /// The name in threat details, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Requests => "requests_per_s",
            Metric::LatencyP50 => "latency_p50_ms",
            Metric::LatencyP95 => "latency_p95_ms",
            Metric::LatencyP99 => "latency_p99_ms",
            Metric::ClientErrorRate => "4xx_rate",
            Metric::ServerErrorRate => "5xx_rate",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: u8) -> Option<Metric> {
        METRICS.get(usize::from(i)).copied()
    }

    /// This second's value, or `None` when the second says nothing about it
    /// (no responses to time or to count errors in).
    /// A quantile needs enough samples to be more than the slowest request:
    /// p95 is scored from 20 timed responses in the second, p99 from 100.
    fn value(self, t: &Tally) -> Option<f64> {
        let timed = t.latency.total();
        match self {
            Metric::Requests => Some(t.requests as f64),
            Metric::LatencyP50 if timed >= 5 => t.latency.quantile_ms(0.50),
            Metric::LatencyP95 if timed >= 20 => t.latency.quantile_ms(0.95),
            Metric::LatencyP99 if timed >= 100 => t.latency.quantile_ms(0.99),
            Metric::LatencyP50 | Metric::LatencyP95 | Metric::LatencyP99 => None,
            Metric::ClientErrorRate if t.requests > 0 => Some(t.client_errors as f64 / t.requests as f64),
            Metric::ServerErrorRate if t.requests > 0 => Some(t.server_errors as f64 / t.requests as f64),
            Metric::ClientErrorRate | Metric::ServerErrorRate => None,
        }
    }

    /// The smallest deviation that matters, given the baseline and the sample
    /// size: a z-score is measured in at least this.
    fn floor(self, mean: f64, requests: u64) -> f64 {
        match self {
            // Poisson noise of a count.
            Metric::Requests => mean.max(1.0).sqrt().max(2.0),
            // A quarter of the usual latency, and never under 1 ms.
            Metric::LatencyP50 | Metric::LatencyP95 | Metric::LatencyP99 => (0.25 * mean).max(1.0),
            // Binomial noise of a rate over this many requests, and 2 points.
            Metric::ClientErrorRate | Metric::ServerErrorRate => (0.25 / requests.max(1) as f64).sqrt().max(0.02),
        }
    }

    /// Whether a deviation downwards is an anomaly too.
    fn two_sided(self) -> bool {
        self == Metric::Requests
    }
}

/// What one series says about the second just analysed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub metric: Metric,
    /// In [0, 1]: the detector's score when the deviation is material, else 0.
    pub score: f64,
    pub value: f64,
    pub baseline: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    detector: Detector,
    mean: f64,
    var: f64,
    /// An anomaly is in progress (for counting onsets, not seconds).
    pub active: bool,
    /// Samples before either method may score (from the parameters, not stored).
    warmup: u64,
}

pub const SERIES_ENCODED_LEN: usize = ENCODED_LEN + 8 + 8 + 1;

impl Series {
    pub fn new(params: Params) -> Self {
        Series { detector: Detector::new(params), mean: 0.0, var: 0.0, active: false, warmup: params.warmup }
    }

    /// Takes this second's tally; `alpha` is the baseline's weight per second
    /// (one over the analysis window).
    pub fn observe(&mut self, metric: Metric, t: &Tally, alpha: f64) -> Option<Reading> {
        let x = metric.value(t)?;
        let first = self.detector.samples() == 0;
        let detected = self.detector.update(x);
        let spread = self.var.max(0.0).sqrt().max(metric.floor(self.mean, t.requests));
        let z = (x - self.mean) / spread;
        let warm = self.detector.samples() > self.warmup;
        let material = warm && if metric.two_sided() { z.abs() >= Z_MIN } else { z >= Z_MIN };
        let by_z = ((z.abs() - Z_MIN) / Z_MIN).clamp(0.0, 1.0);
        let score = if material { detected.max(by_z) } else { 0.0 };
        let reading = Reading { metric, score, value: x, baseline: self.mean };
        if first {
            self.mean = x;
        } else {
            // Huber-style: once warm, a sample counts at most Z_MIN spreads
            // away, so an outage becomes the new normal over about a window,
            // not in seconds. During warm-up the baseline learns freely (and
            // faster, as a plain mean), so it starts from the real level.
            let d = x - self.mean;
            let d = if warm { d.clamp(-Z_MIN * spread, Z_MIN * spread) } else { d };
            let alpha = if warm { alpha } else { alpha.max(1.0 / self.detector.samples() as f64) };
            self.mean += alpha * d;
            self.var = (1.0 - alpha) * (self.var + alpha * d * d);
        }
        Some(reading)
    }

    pub fn encode(&self, w: &mut Writer) {
        self.detector.encode(w.0);
        w.f64(self.mean);
        w.f64(self.var);
        w.u8(u8::from(self.active));
    }

    pub fn decode(params: Params, r: &mut Reader) -> Option<Series> {
        let (detector, used) = Detector::decode(params, r.0)?;
        r.bytes(used)?;
        let mean = r.f64()?;
        let var = r.f64()?;
        let active = r.u8()? != 0;
        (mean.is_finite() && var.is_finite()).then_some(Series { detector, mean, var, active, warmup: params.warmup })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(requests: u64, server_errors: u64, latency_ms: u64) -> Tally {
        let mut t = Tally::default();
        for i in 0..requests {
            t.add(Some(if i < server_errors { 503 } else { 200 }), Some(latency_ms * 1000));
        }
        t
    }

    fn params() -> Params {
        Params { warmup: 30, long_samples: 120.0, ..Params::default() }
    }

    #[test]
    fn a_rare_error_is_not_material_but_an_outage_is() {
        let mut s = Series::new(params());
        for i in 0..200u64 {
            // One 5xx every 20 seconds at 50 rps: a 2% blip now and then.
            let r = s.observe(Metric::ServerErrorRate, &tally(50, u64::from(i % 20 == 0), 5), 1.0 / 120.0).unwrap();
            if i > 60 {
                assert_eq!(r.score, 0.0, "second {i}: {r:?}");
            }
        }
        let r = s.observe(Metric::ServerErrorRate, &tally(50, 25, 5), 1.0 / 120.0).unwrap();
        assert!(r.score > 0.5, "{r:?}");
        assert_eq!(r.value, 0.5);
    }

    #[test]
    fn faster_is_not_an_anomaly_fewer_requests_can_be() {
        let mut lat = Series::new(params());
        let mut vol = Series::new(params());
        for i in 0..200u64 {
            lat.observe(Metric::LatencyP50, &tally(40 + i % 7, 0, 50), 1.0 / 120.0);
            vol.observe(Metric::Requests, &tally(100 + i % 11, 0, 5), 1.0 / 120.0);
        }
        assert_eq!(lat.observe(Metric::LatencyP50, &tally(40, 0, 5), 1.0 / 120.0).unwrap().score, 0.0);
        assert!(vol.observe(Metric::Requests, &tally(2, 0, 5), 1.0 / 120.0).unwrap().score > 0.5);
    }

    #[test]
    fn no_responses_say_nothing_about_latency_or_errors() {
        let mut s = Series::new(params());
        assert_eq!(s.observe(Metric::LatencyP99, &Tally::default(), 0.01), None);
        assert_eq!(s.observe(Metric::ServerErrorRate, &Tally::default(), 0.01), None);
        assert_eq!(s.observe(Metric::Requests, &Tally::default(), 0.01).map(|r| r.value), Some(0.0));
    }

    #[test]
    fn round_trips() {
        let mut s = Series::new(params());
        for i in 0..50 {
            s.observe(Metric::Requests, &tally(10 + i % 3, 0, 1), 0.01);
        }
        s.active = true;
        let mut buf = Vec::new();
        s.encode(&mut Writer(&mut buf));
        assert_eq!(buf.len(), SERIES_ENCODED_LEN);
        let mut r = Reader(&buf);
        assert_eq!(Series::decode(params(), &mut r), Some(s));
        assert!(r.is_empty());
    }
}
