//! A streaming anomaly detector for one series, cheap enough to run per
//! bucket in the filter: O(1) memory (424 bytes of state), a few dozen
//! floating-point operations per sample (about 200 more at the end of each
//! seasonal bin, i.e. ~20 per sample amortised), no allocation, no
//! look-ahead.
//!
//! It asks three questions of each sample and scores the most surprising
//! answer.
//!
//! 1. **Is this change unusually large for this series?** The change from the
//!    last sample, scaled by a running mean absolute change (a robust spread),
//!    is a raw anomaly. How rare a raw anomaly is comes from a streaming
//!    peaks-over-threshold model of their distribution: a stochastic estimate
//!    of a high quantile `u` (exceeded by a fraction `tail_p` of samples) and
//!    a generalised Pareto tail fitted by moments to the excesses over it.
//!    The tail probability `q` is calibrated per series: heavy-tailed series
//!    (bursty tweets) need a far larger change than calm ones to look rare,
//!    and changes that recur (a daily jump) build up their own tail.
//! 2. **Is this stretch unlike the same stretch a season ago?** The samples
//!    are averaged in bins of `season_bin`, and the last 32 bin means are kept
//!    (in f32). Each lag of 1..=30 bins predicts a bin from the bin that lag
//!    earlier plus the change since (seasonal differencing, so a level shift
//!    does not echo for a whole season), and keeps the mean absolute error of
//!    its predictions. The lag with the least error is the season found in
//!    the data (a day of 5-minute samples is 24 bins of 12); its residual, in
//!    mean errors, gets a tail probability from a second peaks-over-threshold
//!    model (started from an exponential prior once the errors have settled).
//!    This is what notices a day whose usual rise does not come, or comes
//!    only halfway: every value is ordinary, only the timing is wrong. It
//!    scores at the end of each bin (after ~95 bins of learning); on
//!    series without a season the best lag is just another short-term
//!    predictor, and its tail calibrates it.
//! 3. **Is the series somewhere it has never been?** The value, a smoothed
//!    level (~10 samples) and a slow level (~30 samples) are each compared
//!    with the range they have covered so far (widened by `range_tolerance`
//!    of its width, and by at least `range_margin` of its own noise, so a
//!    level creeping a hair past an old extreme is not news; the bounds relax
//!    slowly towards the level, over ~`range_samples`). Leaving it is a
//!    novelty, `q = 0` (the spatial
//!    anomaly of Numenta's NAB detector, extended to levels at two time
//!    scales: a slow shift out of the range counts too, and so does a lasting
//!    rise or fall to a level that only short bursts reached before, which
//!    the value and the fast level cannot see because the bursts widened
//!    their ranges).
//!
//! **Score.** `q` is mapped to [0, 1] on a log scale, `ln(q + 1e-10) /
//! ln(1e-10)` (0.3 means `q` about 1e-3, 1 a novelty), and the score fades
//! rather than drops after a surprise (by `1 - 1/short_samples` a sample), so
//! a step stays flagged for a few samples while the new level becomes normal.
//! Alarms (one per event) are the job of [`Alarms`].

/// Tuning of the detector. The defaults are what `vigil-replay nab` reports
/// as best on the NAB development subset (see `threshold` for the score
/// threshold that goes with them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Weight of a new absolute change in the spread that scales changes.
    pub spread_alpha: f64,
    /// Fraction of raw anomalies above the tail model's threshold `u`.
    pub tail_p: f64,
    /// Step of the quantile estimate `u`, in mean raw anomalies.
    pub tail_rate: f64,
    /// Memory of the long-run distribution of raw anomalies, in samples: the
    /// tail moments remember ~`long_samples * tail_p` excesses.
    pub long_samples: f64,
    /// A raw anomaly is clipped here, so one absurd sample cannot dominate.
    pub raw_cap: f64,
    /// A value beyond the range seen so far by this fraction of its width is
    /// a novelty...
    pub range_tolerance: f64,
    /// ...and by at least this many of its own noise units: mean absolute
    /// changes for the value, scaled down for the smoothed and slow levels
    /// by how much their averaging quiets independent noise
    /// (`sqrt(a / (2 - a))` for weight `a`). A level creeping past an old
    /// extreme by less than its noise is not news (0: the width alone).
    pub range_margin: f64,
    /// Weight of a new sample in the smoothed level whose range is watched too.
    pub smooth_alpha: f64,
    /// Weight of a new sample in a slower level (about three times the
    /// smoothed level's time scale), whose range is watched too (0: none): a
    /// sustained shift to new ground that short spikes once covered.
    pub slow_alpha: f64,
    /// The range bounds relax towards the smoothed level over about this many
    /// samples (0: never), so a range left long ago can be news again.
    pub range_samples: f64,
    /// Samples per bin of the seasonal memory (rounded down; below 1: no
    /// seasonal memory). Seasons up to 30 bins long are found.
    pub season_bin: f64,
    /// A surprise fades from the score over about this many samples.
    pub short_samples: f64,
    /// Samples before any score is given (warm-up; the detector learns).
    pub warmup: u64,
    /// After an alarm, later scores must beat it to raise another: it is held
    /// for `refractory_hold` samples, then decays by `refractory_decay` per
    /// sample.
    pub refractory_hold: f64,
    pub refractory_decay: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            spread_alpha: 0.05,
            tail_p: 0.02,
            tail_rate: 0.01,
            long_samples: 500.0,
            raw_cap: 1000.0,
            range_tolerance: 0.02,
            range_margin: 0.5,
            smooth_alpha: 0.1,
            slow_alpha: 1.0 / 30.0,
            range_samples: 20_000.0,
            short_samples: 3.0,
            season_bin: 12.0,
            warmup: 150,
            refractory_hold: 50.0,
            refractory_decay: 0.999,
        }
    }
}

/// Inputs are clamped to this magnitude, so differences stay finite.
const MAX_INPUT: f64 = 1e100;
/// The smallest tail probability the score resolves (score 1).
const Q_FLOOR: f64 = 1e-10;

#[derive(Debug, Clone, PartialEq)]
pub struct Detector {
    params: Params,
    n: u64,
    /// The state, one word each (see `encode`): last value, spread, tail
    /// threshold `u`, mean raw anomaly, first and second moments of the
    /// excesses over `u`, range of values (lo, hi), smoothed level and its
    /// range (lo, hi), the current (fading) score (its sign: the direction
    /// of the surprise that set it, negative for a fall), the sum of the current
    /// seasonal bin, the seasonal tail model (as the change one), and the
    /// slow level and its range (lo, hi).
    w: [f64; WORDS],
    /// Means of the last `BINS` completed bins (ring, by bin number).
    ring: [f32; BINS],
    /// Per lag (index = lag in bins, 0 unused), the mean absolute error of
    /// predicting a bin by the bin that lag earlier plus the change since
    /// (seasonal differencing: `b[j - lag] + b[j - 1] - b[j - 1 - lag]`).
    err: [f32; BINS],
    /// How much of the value's noise the smoothed and the slow level keep
    /// (`sqrt(a / (2 - a))` for weight `a`), from the parameters: the
    /// margins of their ranges are these fractions of the value's.
    quieted: [f64; 2],
}

/// The noise an exponential average of weight `a` keeps of independent
/// samples: its standard deviation over theirs, `sqrt(a / (2 - a))`.
fn quieted(a: f64) -> f64 {
    let a = if a.is_nan() { 1.0 } else { a.clamp(0.0, 1.0) };
    (a / (2.0 - a)).sqrt()
}

const WORDS: usize = 20;
const LAST: usize = 0;
const SPREAD: usize = 1;
/// The tail model of the changes: `u`, then (at `U + 1..=U + 3`) the mean
/// raw anomaly and the first and second moments of the excesses over `u`.
const U: usize = 2;
const LO: usize = 6;
const HI: usize = 7;
const SMOOTH: usize = 8;
const SLO: usize = 9;
const SHI: usize = 10;
const SCORE: usize = 11;
/// Sum of the samples of the current seasonal bin.
const BSUM: usize = 12;
/// Tail model of the seasonal residuals (as U, MEAN, E1, E2 for changes).
const SU: usize = 13;
const SMEAN: usize = 14;
const SE1: usize = 15;
const SE2: usize = 16;
/// The slow level and its range (lo, hi).
const SLOW: usize = 17;
const LLO: usize = 18;
const LHI: usize = 19;
/// Bins of the seasonal memory: lags up to `BINS - 2` bins are tried.
const BINS: usize = 32;
/// Weight of a new excess in the seasonal tail moments (~10 excesses).
const SEASON_EXCESS_ALPHA: f64 = 0.1;

/// Bytes of a detector's encoded state.
pub const ENCODED_LEN: usize = 8 + 8 * WORDS + 4 * 2 * BINS;

/// `v` as a finite f32 (the seasonal memory is kept in single precision).
fn to_f32(v: f64) -> f32 {
    v.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32
}

/// Whether `x` leaves the range [lo, hi] widened by `tol` of its width, and
/// by at least `margin`: 1 above it, -1 below, 0 inside. The range then takes
/// it in, and relaxes towards `centre` by `relax`.
fn novel(lo: &mut f64, hi: &mut f64, x: f64, tol: f64, margin: f64, centre: f64, relax: f64) -> f64 {
    let slack = (tol * (*hi - *lo)).max(margin);
    let out = if x > *hi + slack {
        1.0
    } else if x < *lo - slack {
        -1.0
    } else {
        0.0
    };
    *hi = hi.max(x);
    *lo = lo.min(x);
    *hi += relax * (centre - *hi).min(0.0);
    *lo += relax * (centre - *lo).max(0.0);
    out
}

impl Detector {
    pub fn new(params: Params) -> Self {
        let quieted = [quieted(params.smooth_alpha), quieted(params.slow_alpha)];
        Detector { params, n: 0, w: [0.0; WORDS], ring: [0.0; BINS], err: [0.0; BINS], quieted }
    }

    /// Samples seen so far.
    pub fn samples(&self) -> u64 {
        self.n
    }

    /// The recent level of the series: the smoothed level (~10 samples; 60
    /// samples after a step it is within 0.2% of the new level, where the
    /// slow level is still 13% short). Not a score: for a caller that wants
    /// to know where the series has settled.
    pub fn level(&self) -> f64 {
        self.get(SMOOTH)
    }

    /// The last sample taken (0 before the first).
    pub fn last(&self) -> f64 {
        self.get(LAST)
    }

    /// The direction of the surprise behind the current score: 1 for a rise
    /// (a jump up, a value or level above its range, a bin above the
    /// seasonal prediction), -1 for a fall.
    pub fn direction(&self) -> f64 {
        if self.get(SCORE) < 0.0 {
            -1.0
        } else {
            1.0
        }
    }

    /// The recent standard deviation of the series around its level,
    /// estimated from the running mean absolute change between consecutive
    /// samples (~20 samples): for independent noise of deviation σ that mean
    /// is 2σ/√π, so σ is it times √π/2.
    pub fn recent_sd(&self) -> f64 {
        self.get(SPREAD) * core::f64::consts::PI.sqrt() / 2.0
    }

    fn get(&self, i: usize) -> f64 {
        self.w.get(i).copied().unwrap_or(0.0)
    }

    fn set(&mut self, i: usize, v: f64) {
        if let Some(w) = self.w.get_mut(i) {
            *w = v;
        }
    }

    /// The tail probability of raw anomaly `r` under the peaks-over-threshold
    /// model at `base` (`U` or `SU`): 1 at or below `u`, else `tail_p` times
    /// the generalised Pareto survival of the excess (shape and scale by
    /// moments).
    fn tail(&self, base: usize, r: f64) -> f64 {
        let u = self.get(base);
        if r <= u {
            return 1.0;
        }
        let e1 = self.get(base + 2).max(1e-9);
        let var = (self.get(base + 3) - e1 * e1).max(1e-12);
        let ratio = e1 * e1 / var;
        // Shape clamped to tails between exponential (0) and very heavy (1).
        // A negative shape would put an end point on the tail, and beyond it
        // everything is "impossible" (score 1); fitted from the ~10 excesses
        // the moments remember, that end point is mostly noise (a quiet
        // stretch of similar excesses), and no series here has a hard cap
        // on its changes.
        let xi = (0.5 * (1.0 - ratio)).clamp(0.0, 1.0);
        let sigma = (0.5 * e1 * (ratio + 1.0)).max(1e-9);
        let z = (r - u) / sigma;
        let survival = if xi.abs() < 1e-6 {
            (-z).exp()
        } else {
            let base = 1.0 + xi * z;
            if base <= 0.0 {
                0.0
            } else {
                base.powf(-1.0 / xi)
            }
        };
        self.params.tail_p * survival
    }

    /// Learns raw anomaly `r` into the tail model at `base`: the mean raw
    /// anomaly (weight `long_alpha`), the quantile `u` (steps of `rate` mean
    /// raw anomalies) and the moments of the excesses (weight `excess_alpha`).
    fn learn_tail(&mut self, base: usize, r: f64, rate: f64, long_alpha: f64, excess_alpha: f64) {
        let p = self.params.tail_p;
        let mean = self.get(base + 1) + long_alpha * (r - self.get(base + 1));
        self.set(base + 1, mean);
        let u = self.get(base);
        let step = rate * mean.max(1e-9);
        if r > u {
            let e = r - u;
            self.set(base + 2, self.get(base + 2) + excess_alpha * (e - self.get(base + 2)));
            self.set(base + 3, self.get(base + 3) + excess_alpha * (e * e - self.get(base + 3)));
            self.set(base, u + step * (1.0 - p));
        } else {
            self.set(base, u - step * p);
        }
    }

    fn bin(&self, k: u64) -> f64 {
        self.ring.get((k % BINS as u64) as usize).map_or(0.0, |&v| f64::from(v))
    }

    /// The seasonal memory: adds `x` to the current bin and, when the bin is
    /// complete, the tail probability of its mean under the best lag's
    /// prediction and the direction of the miss (1: above the prediction,
    /// -1: below; `None` when there is no prediction yet).
    fn season(&mut self, x: f64) -> Option<(f64, f64)> {
        let p = self.params;
        if p.season_bin.is_nan() || p.season_bin < 1.0 {
            return None;
        }
        let width = p.season_bin.min(1e9) as u64;
        self.set(BSUM, self.get(BSUM) + x);
        if self.n % width != 0 {
            return None;
        }
        let m = self.get(BSUM) / width as f64;
        self.set(BSUM, 0.0);
        let j = self.n / width - 1;
        let mut q = None;
        let lags = BINS as u64 - 2;
        if j > lags {
            let learned = j - lags - 1;
            let prev = self.bin(j - 1);
            let best = (1..=lags as usize)
                .min_by(|&a, &b| self.err.get(a).copied().unwrap_or(0.0).total_cmp(&self.err.get(b).copied().unwrap_or(0.0)))
                .unwrap_or(1);
            let alpha = (width as f64 / p.long_samples.max(1.0)).max(1.0 / (learned + 1) as f64).min(1.0);
            let floor = 1e-6 * m.abs().max(prev.abs()).max(1e-9);
            let mut raw = 0.0;
            let mut direction = 1.0;
            for lag in 1..=lags {
                let pred = self.bin(j - lag) + prev - self.bin(j - 1 - lag);
                let e = (m - pred).abs();
                if let Some(err) = self.err.get_mut(lag as usize) {
                    let old = f64::from(*err);
                    if lag as usize == best {
                        raw = (e / old.max(floor)).min(p.raw_cap);
                        direction = if m < pred { -1.0 } else { 1.0 };
                    }
                    *err = to_f32(old + alpha * (e - old));
                }
            }
            // The errors settle over `BINS` bins; then the tail model starts
            // from a prior (exponential residuals of scale one mean error,
            // `u` their 1 - tail_p quantile) and learns for `BINS` bins more
            // before it scores. Its mean stays 1: residuals are in mean errors.
            let ready = BINS as u64;
            if learned == ready {
                let u = (1.0 / p.tail_p.max(1e-9)).ln();
                for (i, v) in [(SU, u), (SMEAN, 1.0), (SE1, 1.0), (SE2, 2.0)] {
                    self.set(i, v);
                }
            } else if learned > ready {
                if learned >= 2 * ready {
                    q = Some((self.tail(SU, raw), direction));
                }
                self.learn_tail(SU, raw, p.tail_rate * width as f64, 0.0, SEASON_EXCESS_ALPHA);
            }
        }
        if let Some(b) = self.ring.get_mut((j % BINS as u64) as usize) {
            *b = to_f32(m);
        }
        q
    }

    /// Takes one sample and returns the anomaly score of the series now: high
    /// while the recent samples are unlikely, fading as they become normal.
    /// Always in [0, 1]; 0 during the warm-up; a non-finite sample is skipped.
    pub fn update(&mut self, x: f64) -> f64 {
        if !x.is_finite() {
            return if self.n > self.params.warmup { self.get(SCORE).abs() } else { 0.0 };
        }
        let x = x.clamp(-MAX_INPUT, MAX_INPUT);
        let p = self.params;
        self.n += 1;
        if self.n == 1 {
            for i in [LAST, LO, HI, SMOOTH, SLO, SHI, SLOW, LLO, LHI] {
                self.set(i, x);
            }
            self.season(x);
            return 0.0;
        }
        let inv_n = 1.0 / self.n as f64;
        let long_alpha = (1.0 / p.long_samples.max(1.0)).max(inv_n);
        let excess_alpha = (1.0 / (p.long_samples * p.tail_p).max(1.0)).max(inv_n);
        let relax = if p.range_samples > 0.0 { 1.0 / p.range_samples } else { 0.0 };

        // 1. The change, scaled, and how rare it is.
        let last = self.get(LAST);
        let change = (x - last).abs();
        // The spread never reaches zero: a flat series still has a scale.
        let floor = 1e-6 * last.abs().max(x.abs()).max(1e-9);
        let spread = self.get(SPREAD);
        let raw = (change / spread.max(floor)).min(p.raw_cap);
        let mut q = self.tail(U, raw);
        // The direction of the most surprising answer (1: up, -1: down).
        let mut direction = if x < last { -1.0 } else { 1.0 };
        self.set(SPREAD, spread + p.spread_alpha.max(inv_n) * (change - spread));
        self.set(LAST, x);
        self.learn_tail(U, raw, p.tail_rate, long_alpha, excess_alpha);
        if let Some((qs, d)) = self.season(x) {
            if qs < q {
                q = qs;
                direction = d;
            }
        }

        // 2. Novelty: the value, or the smoothed or slow level, out of its
        // range (each relaxing towards its own level).
        let smooth = self.get(SMOOTH) + p.smooth_alpha * (x - self.get(SMOOTH));
        self.set(SMOOTH, smooth);
        let [mut lo, mut hi, mut slo, mut shi] = [self.get(LO), self.get(HI), self.get(SLO), self.get(SHI)];
        // The margin a novelty must clear: `range_margin` of the noise of
        // what is watched (the spread, this sample's change included, for the
        // value; the quieter noise of an average for the levels).
        let margin = p.range_margin.max(0.0) * self.get(SPREAD);
        let [smooth_quieted, slow_quieted] = self.quieted;
        let out = novel(&mut lo, &mut hi, x, p.range_tolerance, margin, smooth, relax);
        let smooth_out = novel(&mut slo, &mut shi, smooth, p.range_tolerance, margin * smooth_quieted, smooth, relax);
        for (i, v) in [(LO, lo), (HI, hi), (SLO, slo), (SHI, shi)] {
            self.set(i, v);
        }
        let mut slow_out = 0.0;
        if p.slow_alpha > 0.0 {
            let slow = self.get(SLOW) + p.slow_alpha.min(1.0) * (x - self.get(SLOW));
            let [mut llo, mut lhi] = [self.get(LLO), self.get(LHI)];
            slow_out = novel(&mut llo, &mut lhi, slow, p.range_tolerance, margin * slow_quieted, slow, relax);
            for (i, v) in [(SLOW, slow), (LLO, llo), (LHI, lhi)] {
                self.set(i, v);
            }
        }
        if let Some(&d) = [out, smooth_out, slow_out].iter().find(|&&d| d != 0.0) {
            q = 0.0;
            direction = d;
        }

        let now = ((q + Q_FLOOR).ln() / Q_FLOOR.ln()).clamp(0.0, 1.0);
        let fade = 1.0 - 1.0 / p.short_samples.max(1.0);
        let held = self.get(SCORE);
        // The score word keeps the direction of the surprise that set it in
        // its sign (a state written before that has only rises).
        let (score, signed) = if now >= held.abs() * fade { (now, now * direction) } else { (held.abs() * fade, held * fade) };
        self.set(SCORE, signed);
        if self.n <= p.warmup {
            return 0.0;
        }
        score
    }

    /// The learned state (not the parameters), so the detector can live in
    /// shared data and move between the VMs that take turns running it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.n.to_le_bytes());
        for v in self.w {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in self.ring.iter().chain(&self.err) {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// The inverse of `encode`; `None` for bytes it did not write. Returns the
    /// detector and the bytes it used.
    pub fn decode(params: Params, bytes: &[u8]) -> Option<(Self, usize)> {
        let word = |i: usize| -> Option<[u8; 8]> { bytes.get(i * 8..i * 8 + 8)?.try_into().ok() };
        let n = u64::from_le_bytes(word(0)?);
        let mut w = [0.0; WORDS];
        for (i, v) in w.iter_mut().enumerate() {
            *v = f64::from_le_bytes(word(i + 1)?);
            if !v.is_finite() {
                return None;
            }
        }
        let mut ring = [0.0f32; BINS];
        let mut err = [0.0f32; BINS];
        let base = 8 + 8 * WORDS;
        for (i, v) in ring.iter_mut().chain(err.iter_mut()).enumerate() {
            let at = base + 4 * i;
            *v = f32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
            if !v.is_finite() {
                return None;
            }
        }
        Some((Detector { n, w, ring, err, ..Detector::new(params) }, ENCODED_LEN))
    }
}

/// The score threshold for an operator's `anomaly_sensitivity` in [0, 1]
/// (higher flags smaller anomalies): `0.94 - 0.75 * sensitivity`, clamped to
/// [0.05, 0.95] — strictly decreasing in the sensitivity. The default 0.8
/// gives 0.34, the threshold that maximises the NAB standard score on
/// the development subset (a tail probability near 1e-3; novelties score 1
/// and pass at any sensitivity). NaN counts as the default.
pub fn threshold(sensitivity: f64) -> f64 {
    let s = if sensitivity.is_nan() { 0.8 } else { sensitivity.clamp(0.0, 1.0) };
    (0.94 - 0.75 * s).clamp(0.05, 0.95)
}

/// Turns a stream of scores into alarms: a score is reported only when it
/// beats the last reported one in the same direction, which is held for a
/// while and then decays each sample. One alarm per event, not one per
/// sample of it; a rise and a fall are different events, so a fall right
/// after a reported rise (or the other way round) is news.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alarms {
    decay: f64,
    hold: f64,
    /// Per direction (rise, fall): samples the reported score is still held,
    /// and that score.
    held: [f64; 2],
    reported: [f64; 2],
}

impl Alarms {
    pub fn new(params: &Params) -> Self {
        Alarms { decay: params.refractory_decay, hold: params.refractory_hold, held: [0.0; 2], reported: [0.0; 2] }
    }

    /// The score if it is news, else 0. `direction` is the detector's
    /// [`Detector::direction`] (negative: a fall).
    pub fn filter(&mut self, score: f64, direction: f64) -> f64 {
        for (held, reported) in self.held.iter_mut().zip(self.reported.iter_mut()) {
            if *held > 0.0 {
                *held -= 1.0;
            } else {
                *reported *= self.decay;
            }
        }
        let k = usize::from(direction < 0.0);
        match (self.held.get_mut(k), self.reported.get_mut(k)) {
            (Some(held), Some(reported)) if score > *reported => {
                *reported = score;
                *held = self.hold;
                score
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(i: u64) -> f64 {
        // Deterministic, roughly uniform in [-1, 1].
        let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
        (h as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// Current scores.
    fn scores(params: Params, series: impl Iterator<Item = f64>) -> Vec<f64> {
        let mut d = Detector::new(params);
        series.map(|x| d.update(x)).collect()
    }

    /// Alarms, as NAB sees them.
    fn run_with(params: Params, series: impl Iterator<Item = f64>) -> Vec<f64> {
        let mut a = Alarms::new(&params);
        let mut d = Detector::new(params);
        series.map(|x| {
            let s = d.update(x);
            a.filter(s, d.direction())
        })
        .collect()
    }

    fn run(series: impl Iterator<Item = f64>) -> Vec<f64> {
        run_with(Params::default(), series)
    }

    fn alarms(s: &[f64], from: usize) -> usize {
        s.iter().skip(from).filter(|&&x| x >= threshold(0.8)).count()
    }

    #[test]
    fn threshold_decreases_with_sensitivity_and_stays_in_range() {
        let mut last = f64::INFINITY;
        for i in 0..=100 {
            let t = threshold(i as f64 / 100.0);
            assert!(t < last && (0.0..1.0).contains(&t), "{i}: {t}");
            last = t;
        }
        assert!((threshold(0.8) - 0.34).abs() < 1e-9);
        assert_eq!(threshold(f64::NAN), threshold(0.8));
        assert_eq!(threshold(7.0), threshold(1.0));
    }

    #[test]
    fn noise_alone_stays_low() {
        let s = run((0..20_000).map(|i| 100.0 + 5.0 * noise(i)));
        let n = alarms(&s, 0);
        assert!(n <= 3, "{n} alarms in 20000 samples of noise");
    }

    #[test]
    fn a_spike_scores_high_at_once() {
        let s = run((0..2_000).map(|i| if i == 1_500 { 130.0 } else { 100.0 + 5.0 * noise(i) }));
        let peak = s.get(1_500..1_502).map_or(0.0, |w| w.iter().copied().fold(0.0, f64::max));
        assert!(peak >= threshold(0.8), "{peak}");
        assert!(alarms(&s, 0) <= 2, "{}", alarms(&s, 0));
    }

    #[test]
    fn a_step_scores_high_then_fades_as_the_new_level_becomes_normal() {
        let series = |i: u64| if i >= 2_000 { 160.0 } else { 100.0 } + 5.0 * noise(i);
        let raw = scores(Params::default(), (0..4_000).map(series));
        assert!(raw.get(2_000..2_003).is_some_and(|w| w.iter().all(|&x| x >= threshold(0.8))), "{:?}", raw.get(1_998..2_006));
        assert!(raw.get(3_000..4_000).is_some_and(|w| w.iter().all(|&x| x < threshold(0.8))));
        let s = run((0..4_000).map(series));
        assert_eq!(alarms(&s, 2_000), 1, "one alarm for the step");
    }

    /// What the filter needs: tenfold volume, 10x latency and errors going
    /// 0 -> 0.5 are flagged at once and stay flagged for a few samples.
    #[test]
    fn web_traffic_steps_are_flagged_within_three_samples_and_stay_flagged() {
        let params = Params { warmup: 300, long_samples: 600.0, ..Params::default() };
        type Series = fn(u64) -> f64;
        let cases: [(&str, Series); 3] = [
            ("volume x10", |i| if i >= 1_000 { 500.0 } else { 50.0 } + 5.0 * noise(i)),
            ("latency x10", |i| (if i >= 1_000 { 10.0 } else { 1.0 }) * (80.0 + 20.0 * noise(i).abs())),
            ("errors 0 -> 0.5", |i| if i >= 1_000 { 0.5 } else { 0.0 }),
        ];
        for (name, f) in cases {
            let s = scores(params, (0..1_100).map(f));
            let first = s.iter().skip(1_000).position(|&x| x >= threshold(0.8));
            assert!(first.is_some_and(|k| k < 3), "{name}: {:?}", s.get(998..1_008));
            let k = first.unwrap_or(0) + 1_000;
            assert!(s.get(k..k + 3).is_some_and(|w| w.iter().all(|&x| x >= threshold(0.8))), "{name}: {:?}", s.get(998..1_008));
        }
    }

    /// Bursts of 8 samples at 400 every 500 samples, then a rise to 220 (a
    /// ramp over 30 samples) that lasts 200: every value and every 10-sample
    /// level has been seen before, only the slow level is on new ground.
    #[test]
    fn a_lasting_rise_that_bursts_once_covered_is_flagged_by_the_slow_level() {
        let series = |i: u64| {
            let base = if !(4_000..4_200).contains(&i) { 100.0 } else { 100.0 + 4.0 * (i - 4_000).min(30) as f64 };
            (if (250..258).contains(&(i % 500)) { 400.0 } else { base }) + 5.0 * noise(i)
        };
        let s = run((0..5_000).map(series));
        let first = s.iter().skip(4_000).position(|&x| x >= threshold(0.8));
        assert!(first.is_some_and(|k| k < 100), "{first:?}");
        let blind = run_with(Params { slow_alpha: 0.0, ..Params::default() }, (0..5_000).map(series));
        assert_eq!(alarms(&blind, 4_000), alarms(&blind, 4_200), "caught without the slow level?");
    }

    /// A range is left only by more than its noise: a value a hair past
    /// the old extreme (beyond `range_tolerance` of the width, within the
    /// margin) is not a novelty, one clearly past it is.
    #[test]
    fn a_range_is_left_only_by_more_than_the_margin() {
        let (mut lo, mut hi) = (0.0, 100.0);
        // Tolerance 2% of the width (2), margin 5: 104 is inside.
        assert_eq!(novel(&mut lo, &mut hi, 104.0, 0.02, 5.0, 50.0, 0.0), 0.0);
        assert_eq!(hi, 104.0, "the range still takes it in");
        assert_eq!(novel(&mut lo, &mut hi, 110.0, 0.02, 5.0, 50.0, 0.0), 1.0);
        assert_eq!(novel(&mut lo, &mut hi, -7.0, 0.02, 5.0, 50.0, 0.0), -1.0);
        // With no margin the width alone decides, as before.
        let (mut lo, mut hi) = (0.0, 100.0);
        assert_eq!(novel(&mut lo, &mut hi, 104.0, 0.02, 0.0, 50.0, 0.0), 1.0);
    }

    /// A level creeping to new ground by less than its noise each time (here
    /// +50, ten noise amplitudes, over 10,000 samples) is not news at every
    /// step: with the margin it raises one alarm, with the width alone eight.
    #[test]
    fn creeping_past_the_old_extremes_is_not_news_every_time() {
        let creep = |i: u64| 100.0 + 0.005 * i as f64 + 5.0 * noise(i);
        let with_margin = run((0..10_000).map(creep));
        let width_alone = run_with(Params { range_margin: 0.0, ..Params::default() }, (0..10_000).map(creep));
        assert!(alarms(&with_margin, 0) <= 2, "{}", alarms(&with_margin, 0));
        assert!(alarms(&width_alone, 0) > 2 * alarms(&with_margin, 0), "{}", alarms(&width_alone, 0));
    }

    #[test]
    fn a_slow_drift_raises_few_alarms() {
        // +20 (four noise amplitudes) over 10000 samples: a few alarms as it
        // reaches levels never seen, none per sample.
        let slow = run((0..10_000).map(|i| 100.0 + 0.002 * i as f64 + 5.0 * noise(i)));
        assert!(alarms(&slow, 0) <= 3, "{}", alarms(&slow, 0));
        // +100 (twenty amplitudes): new ground all the time, still sparse.
        let fast = run((0..10_000).map(|i| 100.0 + 0.01 * i as f64 + 5.0 * noise(i)));
        assert!(alarms(&fast, 0) <= 20, "{}", alarms(&fast, 0));
    }

    /// A day of 5-minute samples (288) low at 20, high at 80 for 100 samples;
    /// on day 10 the rise only reaches `broken_high`.
    fn square_day(i: u64, broken_high: f64) -> f64 {
        let high = if i / 288 == 10 { broken_high } else { 80.0 };
        (if (108..208).contains(&(i % 288)) { high } else { 20.0 }) + 3.0 * noise(i)
    }

    #[test]
    fn a_day_whose_rise_falls_short_is_flagged_by_the_seasonal_memory() {
        let params = Params { warmup: 600, ..Params::default() };
        let clean = run_with(params, (0..4_032).map(|i| square_day(i, 80.0)));
        assert_eq!(alarms(&clean, 600), 0, "a clean square cycle raised alarms");
        // Every value of the broken day is ordinary; only the season says
        // the rise is wrong. 2988 is where the rise should come.
        for broken_high in [40.0, 20.0] {
            let s = run_with(params, (0..4_032).map(|i| square_day(i, broken_high)));
            let first = s.iter().skip(2_988).position(|&x| x >= threshold(0.8));
            assert!(first.is_some_and(|k| k <= 24), "{broken_high}: {first:?}");
            assert!(alarms(&s, 600) <= 3 && alarms(&s, 600) == alarms(&s, 2_988), "{broken_high}: {}", alarms(&s, 600));
            let blind = run_with(Params { season_bin: 0.0, ..params }, (0..4_032).map(|i| square_day(i, broken_high)));
            assert_eq!(alarms(&blind, 2_988), 0, "{broken_high}: caught without the season?");
        }
    }

    #[test]
    fn a_daily_cycle_is_learned_and_a_break_in_it_is_not() {
        // Period 288 (a day of 5-minute samples); warm-up over two periods.
        let params = Params { warmup: 600, ..Params::default() };
        let day = |i: u64| 100.0 + 40.0 * (i as f64 * core::f64::consts::TAU / 288.0).sin() + 3.0 * noise(i);
        let s = run_with(params, (0..6_000).map(day));
        assert_eq!(alarms(&s, 600), 0, "a clean cycle raised alarms");
        let broken = run_with(params, (0..6_000).map(|i| if (4_000..4_100).contains(&i) { 220.0 + 3.0 * noise(i) } else { day(i) }));
        assert_eq!(alarms(&broken, 600), alarms(&broken, 4_000));
        assert!(alarms(&broken, 4_000) >= 1 && broken.get(4_000..4_003).is_some_and(|w| w.iter().any(|&x| x >= threshold(0.8))));
    }

    /// A rise, then within the alarm hold a fall to new ground: two events,
    /// two alarms; the same rise twice within the hold is one.
    #[test]
    fn a_fall_right_after_a_rise_is_its_own_alarm() {
        let base = |i: u64| 100.0 + 5.0 * noise(i);
        let up_down = run((0..3_000).map(|i| match i {
            2_000 => 200.0,
            2_020 => 0.0,
            _ => base(i),
        }));
        assert_eq!(alarms(&up_down, 2_000), 2, "{:?}", up_down.get(1_998..2_025));
        let up_up = run((0..3_000).map(|i| match i {
            2_000 => 200.0,
            2_020 => 190.0,
            _ => base(i),
        }));
        assert_eq!(alarms(&up_up, 2_000), 1);
        let mut d = Detector::new(Params::default());
        for i in 0..2_000 {
            d.update(base(i));
        }
        d.update(0.0);
        assert_eq!(d.direction(), -1.0);
        d.update(base(2_001));
        assert_eq!(d.direction(), -1.0, "the fading score keeps its direction");
        d.update(300.0);
        assert_eq!(d.direction(), 1.0);
    }

    /// Alike excesses over the tail threshold fit, by moments, a bounded
    /// tail, and a change past its end would score as impossible (q = 0,
    /// score 1). The tail is at least exponential: a larger change is rare,
    /// not impossible, and a far larger one is rarer.
    #[test]
    fn a_tail_of_alike_changes_has_no_end_point() {
        let mut d = Detector::new(Params::default());
        // u = 2; excesses of mean 1 and variance 1/3 (alike: an exponential
        // tail has variance 1). By moments that is a bounded tail (shape
        // -1, clamped to -0.5) ending at u + 4 mean excesses.
        for (i, v) in [(U, 2.0), (U + 1, 1.0), (U + 2, 1.0), (U + 3, 1.0 + 1.0 / 3.0)] {
            d.set(i, v);
        }
        let beyond = d.tail(U, 2.0 + 5.0);
        assert!(beyond > 1e-4 && beyond < 0.01, "{beyond}");
        assert!(d.tail(U, 2.0 + 50.0) < 1e-10);
    }

    #[test]
    fn state_survives_encoding() {
        let mut d = Detector::new(Params::default());
        // Long enough for the seasonal memory to be scoring.
        for i in 0..2_000 {
            d.update(100.0 + 5.0 * noise(i));
        }
        let mut bytes = Vec::new();
        d.encode(&mut bytes);
        assert_eq!(bytes.len(), ENCODED_LEN);
        const { assert!(ENCODED_LEN <= 424) };
        let (mut e, used) = Detector::decode(Params::default(), &bytes).unwrap();
        assert_eq!(used, ENCODED_LEN);
        assert_eq!(e, d);
        assert_eq!(e.samples(), 2_000);
        assert_eq!(e.update(300.0), d.update(300.0));
        assert!(Detector::decode(Params::default(), &bytes[..20]).is_none());
    }

    #[test]
    fn warm_up_scores_zero() {
        let s = scores(Params::default(), (0..150).map(|i| if i % 7 == 0 { 1e6 } else { noise(i) }));
        assert!(s.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn garbage_input_does_not_break_it() {
        let mut d = Detector::new(Params { warmup: 2, ..Params::default() });
        let junk = [f64::NAN, f64::INFINITY, 0.0, 0.0, 1e300, -1e300, f64::MAX, f64::MIN, f64::NEG_INFINITY, 0.0, 5e-324];
        for i in 0..200 {
            let x = junk.get(i % junk.len()).copied().unwrap_or(0.0);
            let s = d.update(x);
            assert!((0.0..=1.0).contains(&s), "{x} -> {s}");
        }
        let mut bytes = Vec::new();
        d.encode(&mut bytes);
        assert!(Detector::decode(Params::default(), &bytes).is_some(), "the state stayed finite");
        for i in 0..2_000 {
            let s = d.update(100.0 + noise(i));
            assert!((0.0..=1.0).contains(&s));
        }
    }
}

