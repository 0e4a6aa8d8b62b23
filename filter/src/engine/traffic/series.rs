//! One scope's six series (volume, three latency quantiles, 4xx and 5xx
//! rates), each scored by two methods:
//!
//! - a z-score against an exponentially weighted baseline (mean and variance
//!   over the analysis window; for an error rate, the variance beyond the
//!   binomial noise of each second's own request count, which the noise
//!   floor covers), with a floor under its spread per metric:
//!   the noise of the estimate (Poisson noise of a count, a quarter of the
//!   latency, binomial noise of an error rate) and a third of the metric's
//!   minimum meaningful change ([`Floors`], from
//!   `time_series_analysis.min_change`), so a smaller change never reaches
//!   z = 3; and a direction: fewer requests can be an anomaly, faster or
//!   cleaner responses are not. It scores `(|z| - 3) / 3`, clipped to
//!   [0, 1]: nothing below 3, certain from 6.
//! - the streaming detector (`detector.rs`): how unlikely the recent samples
//!   are given this series' own history, robust to outliers and daily cycles.
//!
//! The baseline learns every sample, but once warm clipped at 3 spreads, so an outage
//! moves it slowly: a lasting change becomes the new normal over about one
//! analysis window, and is flagged until then.
//!
//! A series scores the higher of the two, but only while the deviation is
//! material (z of at least 3, in the right direction), and only as far as
//! the shift clears the metric's minimum change: nothing up to it, all from
//! 1.5 times it, continuous in between ([`meaningful`]). For the tail
//! quantiles (p95, p99) the shift must hold over two samples running: one
//! stall of a busy host moves them for a second, a real slowdown for longer. The detector alone
//! flags wiggles on quiet series that nobody would page on; the z-score
//! alone misses a pattern break that stays within the usual spread; and a
//! spiky series teaches the detector that spikes are normal, where the
//! z-score still sees an outage many times larger than any spike.
//!
//! **Young series.** Until its warm-up is over a series has no baseline of
//! its own. A route's young series is then judged against what the
//! established routes say is typical (the highest baseline among them, or
//! the listener's), upwards only and with a population's spread
//! ([`POPULATION_SPREAD`]): a new route that takes a flood, fails most of
//! its requests or is far slower than every other is flagged from its
//! first seconds; one with ordinary traffic is not.
//!
//! **Drift.** A series that stays anomalous for the configured drift time
//! (`time_series_analysis.drift_minutes`), with no break of more than
//! [`DRIFT_GRACE_S`] seconds, has a new normal: its baseline is re-learned at
//! the level it settled on (see [`Series::track`]) and the drift is reported
//! once. Without this, the clipped baseline would take about a window to
//! follow, flagging the series all along.

use super::detector::{Detector, Params, ENCODED_LEN};
use super::tally::Tally;
use crate::engine::codec::{Reader, Writer};

/// A scope's baseline z-score must reach this for its detector's score to count.
pub const Z_MIN: f64 = 3.0;

/// A spread is never below this, so a z-score stays finite whatever the floors.
const MIN_SPREAD: f64 = 1e-9;

/// A young series (its route first seen less than a warm-up ago) is judged
/// against the highest typical value among the established scopes, with a
/// spread of at least this share of it: it is unusual only from 2.5 times
/// that value (z = 3) and certainly so from 4 times (z = 6). Routes differ
/// by far more than their own noise, so a new route like any existing one,
/// or a little busier or slower than the busiest, is ordinary.
pub const POPULATION_SPREAD: f64 = 0.5;

/// The minimum meaningful change per metric (`time_series_analysis.min_change`,
/// indexed by [`Metric::index`]): a deviation from the baseline smaller than
/// this is never an anomaly, whatever the z-score or the detector says. The
/// z-score's spread is at least a third of it, so a smaller change never
/// reaches z = 3, and the score comes in gradually above it (see
/// [`meaningful`]) instead of jumping from 0 to the detector's score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Floors(pub [f64; 6]);

impl Default for Floors {
    /// 5 requests a second; 20, 50 and 100 ms for p50, p95 and p99; 5
    /// percentage points of 4xx and of 5xx.
    fn default() -> Self {
        Floors([5.0, 20.0, 50.0, 100.0, 0.05, 0.05])
    }
}

impl Floors {
    /// No floor at all: the z-score's statistical noise alone decides.
    pub const NONE: Floors = Floors([0.0; 6]);

    pub fn get(&self, metric: Metric) -> f64 {
        self.0.get(metric.index()).copied().filter(|v| v.is_finite()).unwrap_or(0.0).max(0.0)
    }
}

/// How much of a score a shift of `shift` (in the direction that counts)
/// keeps, given the metric's minimum change `floor`: nothing up to the
/// floor, all of it from 1.5 times the floor, linear in between, so the
/// score is continuous in the shift. No floor keeps everything.
pub fn meaningful(shift: f64, floor: f64) -> f64 {
    if floor <= 0.0 {
        return 1.0;
    }
    ((shift - floor) / (0.5 * floor)).clamp(0.0, 1.0)
}

/// What an established series says is typical: its baseline and spread.
/// A young route's series is measured against the highest of these among
/// the established routes (see `analyzer`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Typical {
    pub level: f64,
    pub sd: f64,
}

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

    /// The noise of this metric's estimate, given the baseline and the
    /// sample size: a z-score's spread is never below it (nor below a third
    /// of the metric's minimum change, see [`Floors`]).
    fn noise(self, mean: f64, requests: u64) -> f64 {
        match self {
            // Poisson noise of a count.
            Metric::Requests => mean.max(1.0).sqrt(),
            // A quarter of the usual latency.
            Metric::LatencyP50 | Metric::LatencyP95 | Metric::LatencyP99 => (0.25 * mean).max(MIN_SPREAD),
            // Binomial noise of a rate over this many requests.
            Metric::ClientErrorRate | Metric::ServerErrorRate => (0.25 / requests.max(1) as f64).sqrt(),
        }
    }

    /// The sampling variance of one second's value around `mean` from
    /// `requests` requests: a rate's binomial variance p(1 − p)/n; none for
    /// the others (their variance is learned whole). A rate's learned
    /// variance is what it varies beyond this: a route at one request a
    /// second, where each second's error rate is 0 or 1, must not learn a
    /// spread that hides 80% failures at ten requests a second.
    fn sampling_var(self, mean: f64, requests: u64) -> f64 {
        match self {
            Metric::ClientErrorRate | Metric::ServerErrorRate => {
                let p = mean.clamp(0.0, 1.0);
                p * (1.0 - p) / requests.max(1) as f64
            }
            _ => 0.0,
        }
    }

    /// A tail quantile (p95, p99) rests on the few slowest requests of the
    /// second: one stall of the host (a busy machine descheduling Envoy or
    /// the upstream for a fraction of a second) moves it for that second
    /// alone. Its shift counts only as far as it held over the last sample too.
    fn is_tail(self) -> bool {
        matches!(self, Metric::LatencyP95 | Metric::LatencyP99)
    }

    /// How far `x` is from `level` in the direction that counts (either way
    /// for volume, up for the rest), for comparing with the minimum change.
    /// For a tail quantile, the smaller of this sample's shift and the
    /// previous sample's (`None`: no previous sample, no shift yet), so a
    /// one-second stall of the host does not count ([`Metric::is_tail`]).
    fn shift(self, x: f64, previous: Option<f64>, level: f64) -> f64 {
        let d = x - level;
        if self.two_sided() {
            d.abs()
        } else if self.is_tail() {
            previous.map_or(f64::NEG_INFINITY, |p| d.min(p - level))
        } else {
            d
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
    /// The deviation from the baseline in spreads (0 during the warm-up).
    pub z: f64,
}

/// Seconds without an anomalous reading that a drift run survives: the score
/// of a series at a new level hovers around the threshold now and then (the
/// noise of the level, a second with few requests), and a lull of a few
/// seconds does not end the new normal. A longer break does, and the clock
/// starts again at the next anomalous second.
pub const DRIFT_GRACE_S: u64 = 5;

/// A run of anomalous seconds in progress, for drift detection: 16 bytes
/// encoded, whatever happens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Run {
    /// The first anomalous second of the run (0: no run).
    since: u64,
    /// The last anomalous second of the run, in seconds after `since`.
    last: u32,
    /// The baseline when the run began: the level the series drifted from.
    from: f32,
}

pub const RUN_ENCODED_LEN: usize = 8 + 4 + 4;

/// A series' normal shifted for good: from the old baseline to the new level,
/// after this many seconds of anomaly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shift {
    pub from: f64,
    pub to: f64,
    pub seconds: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    detector: Detector,
    mean: f64,
    var: f64,
    /// An anomaly is in progress (for counting onsets, not seconds).
    pub active: bool,
    run: Run,
    /// Samples before either method may score (from the parameters, not stored).
    warmup: u64,
}

/// Bytes of a series' encoded state (the drift run included).
pub const SERIES_ENCODED_LEN: usize = ENCODED_LEN + 8 + 8 + 1 + RUN_ENCODED_LEN;

impl Series {
    pub fn new(params: Params) -> Self {
        Series { detector: Detector::new(params), mean: 0.0, var: 0.0, active: false, run: Run::default(), warmup: params.warmup }
    }

    /// Drift detection, after `observe` gave `reading` for `second`: extends
    /// or ends the run of anomalous seconds (score at or above `threshold`,
    /// breaks of up to [`DRIFT_GRACE_S`] seconds allowed) and, once the run
    /// has lasted `drift_s` seconds, re-learns the baseline and returns the
    /// shift (once: the run starts over).
    ///
    /// For a metric where only a rise counts (latency, error rates), a
    /// material deviation the other way (z of -3 or less) extends a run too:
    /// it scores nothing, but a baseline left high by a drifted outage must
    /// come back down when the service recovers for good, or the next outage
    /// would hide under it for about a window.
    ///
    /// Re-learning moves only the z-score baseline, to where the detector says
    /// the series has settled: the mean to its smoothed level (~10 samples,
    /// long since past the step: the drift time is at least 60), the variance to the square of its recent
    /// sample-to-sample deviation (~20 samples, all at the new level). That
    /// baseline is what keeps a new level flagged: clipped at 3 spreads a
    /// sample, it would take about an analysis window to follow, and its
    /// variance, inflated by the clipped samples, would dull the series for as
    /// long again. The detector is kept as it is, deliberately: what it learned
    /// is scale-free or already holds the new level (changes are measured in
    /// its running spread, the tails are of those ratios, the seasonal errors
    /// use differences, and its ranges took the new level in when it arrived),
    /// and its score fades within a few samples of the step. Resetting it
    /// would blind the series for a whole warm-up and forget how bursty it is.
    /// The per-metric floor still bounds the z-score's spread from below, so a
    /// calm stretch before the drift cannot make the new baseline jumpy.
    pub fn track(&mut self, reading: Option<&Reading>, second: u64, threshold: f64, drift_s: u64) -> Option<Shift> {
        let run = &mut self.run;
        let last = run.since.saturating_add(u64::from(run.last));
        match reading {
            Some(r) if r.score >= threshold || (!r.metric.two_sided() && r.z <= -Z_MIN) => {
                if run.since == 0 || second.saturating_sub(last) > DRIFT_GRACE_S + 1 {
                    *run = Run { since: second, last: 0, from: r.baseline as f32 };
                }
                run.last = u32::try_from(second.saturating_sub(run.since)).unwrap_or(u32::MAX);
                let seconds = second.saturating_sub(run.since) + 1;
                if seconds < drift_s {
                    return None;
                }
                let from = f64::from(run.from);
                *run = Run::default();
                let to = self.detector.level();
                self.mean = to;
                self.var = self.detector.recent_sd().powi(2);
                Some(Shift { from, to, seconds })
            }
            // Not anomalous this second (or nothing to measure): the run
            // survives a short break.
            _ => {
                if run.since != 0 && second.saturating_sub(last) > DRIFT_GRACE_S {
                    *run = Run::default();
                }
                None
            }
        }
    }

    /// Whether the warm-up is over: the series is judged against its own
    /// baseline (before that, only against `typical`, when given).
    pub fn warm(&self) -> bool {
        self.detector.samples() > self.warmup
    }

    /// The baseline and its spread, once warm: what this series says is
    /// typical, for judging young routes by.
    pub fn typical(&self) -> Option<Typical> {
        self.warm().then(|| Typical { level: self.mean, sd: self.var.max(0.0).sqrt() })
    }

    /// Takes this second's tally; `alpha` is the baseline's weight per second
    /// (one over the analysis window), `floor` the metric's minimum
    /// meaningful change.
    ///
    /// Until the series is warm it has no baseline of its own to be judged
    /// by. With `typical` (for a route: the highest typical value among the
    /// established routes, see `analyzer`), it is judged against that
    /// instead, upwards only, with a spread of at least
    /// [`POPULATION_SPREAD`] of it: a brand-new route that takes a flood or
    /// fails most of its requests is flagged from its first seconds, one
    /// with ordinary traffic is not. Without it (the listener, "other", or
    /// no route established yet), it scores nothing, as before.
    pub fn observe(&mut self, metric: Metric, t: &Tally, alpha: f64, floor: f64, typical: Option<Typical>) -> Option<Reading> {
        let x = metric.value(t)?;
        let first = self.detector.samples() == 0;
        let previous = (!first).then(|| self.detector.last());
        let detected = self.detector.update(x);
        let floor = floor.max(0.0);
        // (A rate's own sampling noise this second is under its noise floor,
        // √(0.25/n): the learned variance is what it varies beyond that.)
        let sampling = metric.sampling_var(self.mean, t.requests);
        let spread = self.var.max(0.0).sqrt().max(metric.noise(self.mean, t.requests)).max(floor / Z_MIN);
        let z = (x - self.mean) / spread;
        let warm = self.warm();
        let reading = if warm {
            let material = if metric.two_sided() { z.abs() >= Z_MIN } else { z >= Z_MIN };
            let by_z = ((z.abs() - Z_MIN) / Z_MIN).clamp(0.0, 1.0);
            let kept = meaningful(metric.shift(x, previous, self.mean), floor);
            let score = if material { detected.max(by_z) * kept } else { 0.0 };
            Reading { metric, score, value: x, baseline: self.mean, z }
        } else if let Some(typ) = typical {
            // Against the population: upwards only (a young route being
            // quieter or faster than the busiest, slowest one is ordinary).
            let spread = typ.sd.max(metric.noise(typ.level, t.requests)).max(floor / Z_MIN).max(POPULATION_SPREAD * typ.level.abs());
            let z = (x - typ.level) / spread;
            let shift = if metric.two_sided() { x - typ.level } else { metric.shift(x, previous, typ.level) };
            let score = ((z - Z_MIN) / Z_MIN).clamp(0.0, 1.0) * meaningful(shift, floor);
            // z stays 0: a young series' deviation from others is no drift of its own.
            Reading { metric, score, value: x, baseline: typ.level, z: 0.0 }
        } else {
            Reading { metric, score: 0.0, value: x, baseline: self.mean, z: 0.0 }
        };
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
            // A rate learns its variance beyond sampling (see `sampling_var`).
            self.var = ((1.0 - alpha) * (self.var + alpha * (d * d - sampling))).max(0.0);
        }
        Some(reading)
    }

    pub fn encode(&self, w: &mut Writer) {
        self.detector.encode(w.0);
        w.f64(self.mean);
        w.f64(self.var);
        w.u8(u8::from(self.active));
        w.u64(self.run.since);
        w.u32(self.run.last);
        w.f32(self.run.from);
    }

    /// The inverse of `encode`. `with_run: false` reads the layout before
    /// drift detection (no run: it starts afresh), so an upgrade keeps the
    /// learned baselines.
    pub fn decode(params: Params, r: &mut Reader, with_run: bool) -> Option<Series> {
        let (detector, used) = Detector::decode(params, r.0)?;
        r.bytes(used)?;
        let mean = r.f64()?;
        let var = r.f64()?;
        let active = r.u8()? != 0;
        let run = if with_run { Run { since: r.u64()?, last: r.u32()?, from: r.f32()? } } else { Run::default() };
        (mean.is_finite() && var.is_finite() && run.from.is_finite())
            .then_some(Series { detector, mean, var, active, run, warmup: params.warmup })
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

    /// A reading with the default floors, judged against its own baseline only.
    fn see(s: &mut Series, metric: Metric, t: &Tally, alpha: f64) -> Option<Reading> {
        s.observe(metric, t, alpha, Floors::default().get(metric), None)
    }

    fn params() -> Params {
        Params { warmup: 30, long_samples: 120.0, ..Params::default() }
    }

    #[test]
    fn a_rare_error_is_not_material_but_an_outage_is() {
        let mut s = Series::new(params());
        for i in 0..200u64 {
            // One 5xx every 20 seconds at 50 rps: a 2% blip now and then.
            let r = see(&mut s, Metric::ServerErrorRate, &tally(50, u64::from(i % 20 == 0), 5), 1.0 / 120.0).unwrap();
            if i > 60 {
                assert_eq!(r.score, 0.0, "second {i}: {r:?}");
            }
        }
        let r = see(&mut s, Metric::ServerErrorRate, &tally(50, 25, 5), 1.0 / 120.0).unwrap();
        assert!(r.score > 0.5, "{r:?}");
        assert_eq!(r.value, 0.5);
    }

    #[test]
    fn a_quiet_routes_failures_one_at_a_time_do_not_hide_a_failing_flood() {
        let client = |requests: u64, failed: u64| {
            let mut t = Tally::default();
            for i in 0..requests {
                t.add(Some(if i < failed { 401 } else { 200 }), Some(5_000));
            }
            t
        };
        // A login at one request a second, one in eight failing: each
        // second's rate is 0 or 1. Never material.
        let mut s = Series::new(params());
        for i in 0..600u64 {
            let r = see(&mut s, Metric::ClientErrorRate, &client(1, u64::from(i % 8 == 0)), 1.0 / 120.0).unwrap();
            if i > 60 {
                assert_eq!(r.score, 0.0, "second {i}: {r:?}");
            }
        }
        // Then stuffing: ten attempts a second, nine of them failing.
        let r = see(&mut s, Metric::ClientErrorRate, &client(10, 9), 1.0 / 120.0).unwrap();
        assert!(r.score > 0.5, "{r:?}");
        // Two attempts in a second, both failing, are not an anomaly.
        let mut s = Series::new(params());
        for i in 0..600u64 {
            see(&mut s, Metric::ClientErrorRate, &client(1, u64::from(i % 8 == 0)), 1.0 / 120.0);
        }
        assert_eq!(see(&mut s, Metric::ClientErrorRate, &client(2, 2), 1.0 / 120.0).unwrap().score, 0.0);
    }

    #[test]
    fn faster_is_not_an_anomaly_fewer_requests_can_be() {
        let mut lat = Series::new(params());
        let mut vol = Series::new(params());
        for i in 0..200u64 {
            see(&mut lat, Metric::LatencyP50, &tally(40 + i % 7, 0, 50), 1.0 / 120.0);
            see(&mut vol, Metric::Requests, &tally(100 + i % 11, 0, 5), 1.0 / 120.0);
        }
        assert_eq!(see(&mut lat, Metric::LatencyP50, &tally(40, 0, 5), 1.0 / 120.0).unwrap().score, 0.0);
        assert!(see(&mut vol, Metric::Requests, &tally(2, 0, 5), 1.0 / 120.0).unwrap().score > 0.5);
    }

    #[test]
    fn no_responses_say_nothing_about_latency_or_errors() {
        let mut s = Series::new(params());
        assert_eq!(see(&mut s, Metric::LatencyP99, &Tally::default(), 0.01), None);
        assert_eq!(see(&mut s, Metric::ServerErrorRate, &Tally::default(), 0.01), None);
        assert_eq!(see(&mut s, Metric::Requests, &Tally::default(), 0.01).map(|r| r.value), Some(0.0));
    }

    #[test]
    fn round_trips() {
        let mut s = Series::new(params());
        for i in 0..50 {
            see(&mut s, Metric::Requests, &tally(10 + i % 3, 0, 1), 0.01);
        }
        s.active = true;
        s.run = Run { since: 1_700_000_000, last: 7, from: 12.5 };
        let mut buf = Vec::new();
        s.encode(&mut Writer(&mut buf));
        assert_eq!(buf.len(), SERIES_ENCODED_LEN);
        let mut r = Reader(&buf);
        assert_eq!(Series::decode(params(), &mut r, true), Some(s.clone()));
        assert!(r.is_empty());
        // The layout before drift detection: the same without the run.
        let old = buf.get(..SERIES_ENCODED_LEN - RUN_ENCODED_LEN).unwrap();
        let mut r = Reader(old);
        assert_eq!(Series::decode(params(), &mut r, false), Some(Series { run: Run::default(), ..s }));
        assert!(r.is_empty());
    }

    /// Deterministic, roughly uniform in [0, 1).
    fn unit(i: u64) -> f64 {
        (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` responses whose latencies (ms) are `ms(i)`.
    fn timed(n: u64, ms: impl Fn(u64) -> f64) -> Tally {
        let mut t = Tally::default();
        for i in 0..n {
            t.add(Some(200), Some((ms(i) * 1000.0) as u64));
        }
        t
    }

    /// A fast route (40 rps, ~5 ms) warmed up on quiet seconds: its p50, p95
    /// and p99 series (p99 at 120 rps, so that it is scored).
    fn warmed(floors: Floors) -> [Series; 3] {
        let mut s = [Series::new(params()), Series::new(params()), Series::new(params())];
        for sec in 0..200u64 {
            let t = timed(120, |i| 4.5 + unit(sec * 1_000 + i));
            for (x, m) in s.iter_mut().zip([Metric::LatencyP50, Metric::LatencyP95, Metric::LatencyP99]) {
                x.observe(m, &t, 1.0 / 120.0, floors.get(m), None);
            }
        }
        s
    }

    /// Scores of the three latency series for one second.
    fn latency_scores(s: &mut [Series; 3], t: &Tally, floors: Floors) -> [f64; 3] {
        let mut out = [0.0; 3];
        for ((x, m), o) in s.iter_mut().zip([Metric::LatencyP50, Metric::LatencyP95, Metric::LatencyP99]).zip(&mut out) {
            *o = x.observe(m, t, 1.0 / 120.0, floors.get(m), None).map_or(0.0, |r| r.score);
        }
        out
    }

    /// CPU jitter on a loaded host: every response up to 15 ms late (p50
    /// shifts by less than its 20 ms floor), and now and then a stall that
    /// holds a tenth of a second's responses for up to 300 ms (p95 and p99
    /// jump for one second). Nothing is an anomaly; without the floors the
    /// same seconds are.
    #[test]
    fn latency_jitter_below_the_floor_raises_nothing() {
        let jitter = |sec: u64| {
            timed(120, move |i| {
                let stall = sec % 20 == 7 && i % 10 == 0;
                4.5 + unit(sec * 1_000 + i) + 15.0 * unit(sec * 7_919 + i) + if stall { 300.0 * unit(i) } else { 0.0 }
            })
        };
        let mut s = warmed(Floors::default());
        for sec in 200..800u64 {
            let scores = latency_scores(&mut s, &jitter(sec), Floors::default());
            assert!(scores.iter().all(|&x| x < 0.05), "second {sec}: {scores:?}");
        }
        // Without floors the first jittery seconds are flagged.
        let mut bare = warmed(Floors::NONE);
        let flagged = (200..260u64).filter(|&sec| latency_scores(&mut bare, &jitter(sec), Floors::NONE).iter().any(|&x| x >= 0.34)).count();
        assert!(flagged > 0, "the jitter alone was never material");
    }

    /// A real slowdown (5 ms to 150 ms) clears every floor: p50 is flagged in
    /// its first second, as before the floors; the tail quantiles from their
    /// second sample (a shift must hold over two samples to beat a stall).
    /// One to 60 ms is flagged by p50 alike; for p95 it is barely past its
    /// 50 ms floor, and for p99 below its 100 ms.
    #[test]
    fn a_real_slowdown_above_the_floor_alarms_at_once() {
        let mut s = warmed(Floors::default());
        let to_60 = |sec: u64| timed(120, move |i| 60.0 + 5.0 * unit(sec * 1_000 + i));
        let first = latency_scores(&mut s, &to_60(200), Floors::default());
        let second = latency_scores(&mut s, &to_60(201), Floors::default());
        assert!(first[0] >= 0.9 && second[1] < 0.34 && second[2] == 0.0, "{first:?} {second:?}");
        let mut s = warmed(Floors::default());
        let slow = |sec: u64| timed(120, move |i| 150.0 + 5.0 * unit(sec * 1_000 + i));
        let first = latency_scores(&mut s, &slow(200), Floors::default());
        assert!(first[0] >= 0.9, "p50 in the first second: {first:?}");
        assert!(first[1] == 0.0 && first[2] == 0.0, "the tail waits one sample: {first:?}");
        let second = latency_scores(&mut s, &slow(201), Floors::default());
        assert!(second.iter().all(|&x| x >= 0.9), "{second:?}");
        // A tail-only slowdown (a tenth of the responses 200 ms late) is caught
        // by p95 and p99 from its second second.
        let mut s = warmed(Floors::default());
        let tail = |sec: u64| timed(120, move |i| 4.5 + unit(sec * 1_000 + i) + if i % 10 == 0 { 200.0 } else { 0.0 });
        let one = latency_scores(&mut s, &tail(200), Floors::default());
        let two = latency_scores(&mut s, &tail(201), Floors::default());
        assert!(one == [0.0; 3] && two[0] == 0.0 && two[1] >= 0.9 && two[2] >= 0.9, "{one:?} {two:?}");
    }

    /// Around the floor the score grows with the shift: zero up to the
    /// floor, whole from 1.5 times it, no jump anywhere.
    #[test]
    fn the_floor_fades_the_score_in_without_a_cliff() {
        assert_eq!(meaningful(10.0, 20.0), 0.0);
        assert_eq!(meaningful(20.0, 20.0), 0.0);
        assert!((meaningful(25.0, 20.0) - 0.5).abs() < 1e-12);
        assert_eq!(meaningful(30.0, 20.0), 1.0);
        assert_eq!(meaningful(-5.0, 0.0), 1.0, "no floor keeps everything");
        // A volume step on a calm series, swept finely through its floor (here
        // 50 requests a second, above the Poisson noise of a 100 rps route).
        let floors = Floors([50.0, 20.0, 50.0, 100.0, 0.05, 0.05]);
        let mut last = 0.0;
        for k in 0..=200u64 {
            let step = 40.0 + 0.2 * k as f64;
            let mut s = Series::new(params());
            for sec in 0..200u64 {
                s.observe(Metric::Requests, &tally(100 + sec % 3, 0, 5), 1.0 / 120.0, floors.get(Metric::Requests), None);
            }
            let r = s.observe(Metric::Requests, &tally(101 + step as u64, 0, 5), 1.0 / 120.0, floors.get(Metric::Requests), None).unwrap();
            if step < 50.0 {
                assert_eq!(r.score, 0.0, "{step}: {r:?}");
            }
            assert!(r.score - last <= 0.25, "a cliff at a step of {step}: {last} -> {}", r.score);
            last = r.score;
        }
        assert!(last >= 0.9, "a step of 80 is an anomaly: {last}");
    }

    /// A young series (warm-up not over) is judged against the typical value
    /// it is given, upwards only and with a population's spread; with none,
    /// it scores nothing, as before.
    #[test]
    fn a_young_series_is_judged_against_the_typical_value() {
        let routes = Typical { level: 20.0, sd: 2.0 };
        let floor = Floors::default().get(Metric::Requests);
        let first = |n: u64, typical| Series::new(params()).observe(Metric::Requests, &tally(n, 0, 5), 0.01, floor, typical).unwrap();
        assert!(first(200, Some(routes)).score >= 0.9, "a flood in its first second");
        assert_eq!(first(200, None).score, 0.0, "nothing to compare with");
        for ordinary in [1, 20, 40] {
            assert_eq!(first(ordinary, Some(routes)).score, 0.0, "{ordinary} rps");
        }
        // 80% errors against routes that typically fail 1%.
        let typical = Some(Typical { level: 0.01, sd: 0.01 });
        let floor = Floors::default().get(Metric::ServerErrorRate);
        let errors = Series::new(params()).observe(Metric::ServerErrorRate, &tally(20, 16, 5), 0.01, floor, typical).unwrap();
        assert!(errors.score >= 0.9 && errors.baseline == 0.01 && errors.z == 0.0, "{errors:?}");
        let clean = Series::new(params()).observe(Metric::ServerErrorRate, &tally(20, 0, 5), 0.01, floor, typical).unwrap();
        assert_eq!(clean.score, 0.0);
        // Once warm, its own baseline decides and the typical value is ignored.
        let mut s = Series::new(params());
        for sec in 0..40u64 {
            s.observe(Metric::Requests, &tally(200 + sec % 3, 0, 5), 0.01, 5.0, Some(routes));
        }
        assert!(s.warm());
        assert_eq!(s.observe(Metric::Requests, &tally(201, 0, 5), 0.01, 5.0, Some(routes)).unwrap().score, 0.0);
    }

    /// A reading of `score` at `second`, for driving `track` directly.
    fn at(score: f64) -> Reading {
        Reading { metric: Metric::Requests, score, value: 400.0, baseline: 40.0, z: 50.0 }
    }

    #[test]
    fn a_run_survives_short_breaks_and_ends_on_a_longer_one() {
        let mut s = Series::new(params());
        let drift_s = 60;
        // Anomalous from 1000, with breaks of up to DRIFT_GRACE_S quiet seconds
        // (low scores, or no reading at all) every 10 s.
        let mut shifts = Vec::new();
        for t in 1_000..1_100u64 {
            let r = at(if t % 10 < 10 - DRIFT_GRACE_S { 0.9 } else { 0.1 });
            let reading = (t % 10 != 9).then_some(r);
            shifts.extend(s.track(reading.as_ref(), t, 0.34, drift_s).map(|x| (t, x)));
        }
        // 1059 has no reading: the drift waits for the next anomalous second.
        assert_eq!(shifts.len(), 1, "{shifts:?}");
        assert_eq!(shifts.first().map(|(t, x)| (*t, x.seconds, x.from)), Some((1_060, 61, 40.0)));
        assert_eq!(s.run.since, 1_061, "reported once: a new run starts after the drift");
        // One more quiet second than the grace ends a run: no drift, ever.
        let mut s = Series::new(params());
        for t in 2_000..3_000u64 {
            let score = if t % 20 < 19 - DRIFT_GRACE_S { 0.9 } else { 0.1 };
            assert_eq!(s.track(Some(&at(score)), t, 0.34, drift_s), None, "second {t}");
        }
    }
}
