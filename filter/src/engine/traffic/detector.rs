//! A streaming anomaly detector for one series, cheap enough to run per
//! bucket in the filter: O(1) memory and a few dozen floating-point
//! operations per sample, no look-ahead.
//!
//! 1. **Residual.** Each sample is compared with an exponentially weighted
//!    level (the prediction); the residual is scaled by a running mean
//!    absolute deviation, a robust spread that one outlier cannot inflate
//!    much. That gives a raw anomaly: how many spreads away this sample is.
//! 2. **Likelihood.** Raw anomalies are noisy, and some series are noisier
//!    than others. The recent average raw anomaly (last ~10 samples) is
//!    compared with the long-run distribution of raw anomalies (mean and
//!    variance over ~1000 samples): the Gaussian tail probability of that
//!    average is how unlikely the recent stretch is *for this series*.
//! 3. **Score.** The tail probability `q` is mapped to [0, 1] on a log scale,
//!    `ln(q + 1e-10) / ln(1e-10)`: 0.5 means `q` about 1e-5.

/// Tuning of the detector. The defaults are what `vigil-replay nab` reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Weight of a new sample in each predictor's level (1 = last value).
    pub level_alphas: [f64; K],
    /// Weight of a new absolute residual in the spread.
    pub spread_alpha: f64,
    /// Samples averaged in the recent raw anomaly.
    pub short_samples: f64,
    /// Samples in the long-run distribution of raw anomalies.
    pub long_samples: f64,
    /// Samples before any score is given (warm-up).
    pub warmup: u64,
    /// A raw anomaly is clipped here, so one absurd sample cannot dominate.
    pub raw_cap: f64,
    /// After an alarm, later scores must beat it to raise another: it is held
    /// for `refractory_hold` samples, then decays by this factor per sample.
    pub refractory_decay: f64,
    pub refractory_hold: f64,
    pub tail_p: f64,
    pub tail_lr: f64,
    pub tail_alpha: f64,
    /// Experimental knobs.
    pub x1: f64,
    pub x2: f64,
    pub x3: f64,
}

/// Number of predictors.
pub const K: usize = 3;

impl Default for Params {
    fn default() -> Self {
        Params {
            level_alphas: [1.0, 0.0, 0.0],
            spread_alpha: 0.02,
            short_samples: 5.0,
            long_samples: 300.0,
            warmup: 150,
            raw_cap: 20.0,
            refractory_decay: 0.995,
            refractory_hold: 0.0,
            tail_p: 0.02,
            tail_lr: 0.05,
            tail_alpha: 0.02,
            x1: 0.0,
            x2: 0.0,
            x3: 0.0,
        }
    }
}

/// A streaming peaks-over-threshold tail model (method-of-moments GPD).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Tail {
    u: f64,
    m: f64,
    e1: f64,
    e2: f64,
}

impl Tail {
    fn q(&self, r: f64, p0: f64) -> f64 {
        if r <= self.u {
            return 1.0;
        }
        let excess = r - self.u;
        let e1 = self.e1.max(1e-9);
        let v = (self.e2 - e1 * e1).max(1e-12);
        let ratio = e1 * e1 / v;
        let xi = (0.5 * (1.0 - ratio)).clamp(-0.5, 1.0);
        let sigma = (0.5 * e1 * (ratio + 1.0)).max(1e-9);
        if xi.abs() < 1e-6 {
            return p0 * (-excess / sigma).exp();
        }
        let base = 1.0 + xi * excess / sigma;
        if base <= 0.0 {
            return 0.0;
        }
        p0 * base.powf(-1.0 / xi)
    }

    fn learn(&mut self, r: f64, p0: f64, lr: f64, alpha_m: f64, alpha_e: f64) {
        self.m += alpha_m * (r - self.m);
        if r > self.u {
            let excess = r - self.u;
            self.e1 += alpha_e * (excess - self.e1);
            self.e2 += alpha_e * (excess * excess - self.e2);
            self.u += lr * self.m.max(1e-9) * (1.0 - p0);
        } else {
            self.u -= lr * self.m.max(1e-9) * p0;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Predictor {
    t0: Tail,
    t1: Tail,
    level: f64,
    spread: f64,
    short: f64,
    long_mean: f64,
    long_var: f64,
}

const WORDS: usize = 5;

impl Predictor {
    fn words(&self) -> [f64; WORDS] {
        [self.level, self.spread, self.short, self.long_mean, self.long_var]
    }
    fn from_words(w: [f64; WORDS]) -> Self {
        let [level, spread, short, long_mean, long_var] = w;
        Predictor { level, spread, short, long_mean, long_var, ..Default::default() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Detector {
    params: Params,
    n: u64,
    preds: [Predictor; K],
}

/// Bytes of a detector's encoded state.
pub const ENCODED_LEN: usize = 8 + 8 * WORDS * K;

impl Detector {
    pub fn new(params: Params) -> Self {
        Detector { params, n: 0, preds: [Predictor::default(); K] }
    }

    /// Samples seen so far.
    pub fn samples(&self) -> u64 {
        self.n
    }

    /// Takes one sample and returns the anomaly score of the series now: high
    /// while the recent samples are unlikely, fading as they become normal.
    pub fn update(&mut self, x: f64) -> f64 {
        if !x.is_finite() {
            return 0.0;
        }
        let p = self.params;
        self.n += 1;
        if self.n == 1 {
            for pr in self.preds.iter_mut() {
                pr.level = x;
            }
            return 0.0;
        }
        let inv_n = 1.0 / self.n as f64;
        let short_alpha = (1.0 / p.short_samples.max(1.0)).max(inv_n);
        let long_alpha = (1.0 / p.long_samples.max(1.0)).max(inv_n);
        let spread_alpha = p.spread_alpha.max(inv_n);
        let mut qmin = 1.0f64;
        for (pr, &a) in self.preds.iter_mut().zip(p.level_alphas.iter()) {
            if a <= 0.0 {
                continue;
            }
            let residual = (x - pr.level).abs();
            let floor = 1e-3 * pr.level.abs().max(1e-9);
            let raw = (residual / pr.spread.max(floor)).min(p.raw_cap);
            pr.level += a * (x - pr.level);
            pr.spread += spread_alpha * (residual - pr.spread);
            pr.short += short_alpha * (raw - pr.short);
            let delta = raw - pr.long_mean;
            pr.long_mean += long_alpha * delta;
            pr.long_var = (1.0 - long_alpha) * (pr.long_var + long_alpha * delta * delta);
            let q = if p.x1 == 0.0 {
                let sd = (pr.long_var.max(1e-12) / p.short_samples.max(1.0)).sqrt();
                let z = (pr.short - pr.long_mean) / sd;
                0.5 * erfc(z / core::f64::consts::SQRT_2)
            } else {
                let p0 = p.tail_p;
                let ae = p.tail_alpha.max(inv_n);
                let q0 = pr.t0.q(raw, p0);
                pr.t0.learn(raw, p0, p.tail_lr, long_alpha, ae);
                let q1 = if p.x2 > 0.0 { pr.t1.q(pr.short, p0) } else { 1.0 };
                pr.t1.learn(pr.short, p0, p.tail_lr, long_alpha, ae);
                q0.min(q1)
            };
            qmin = qmin.min(q);
        }
        if self.n <= p.warmup {
            return 0.0;
        }
        ((qmin + 1e-10).ln() / 1e-10f64.ln()).clamp(0.0, 1.0)
    }

    /// The learned state (not the parameters), so the detector can live in
    /// shared data and move between the VMs that take turns running it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.n.to_le_bytes());
        for pr in &self.preds {
            for v in pr.words() {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// The inverse of `encode`; `None` for bytes it did not write. Returns the
    /// detector and the bytes it used.
    pub fn decode(params: Params, bytes: &[u8]) -> Option<(Self, usize)> {
        let word = |i: usize| -> Option<[u8; 8]> { bytes.get(i * 8..i * 8 + 8)?.try_into().ok() };
        let n = u64::from_le_bytes(word(0)?);
        let mut preds = [Predictor::default(); K];
        for (k, pr) in preds.iter_mut().enumerate() {
            let mut f = [0.0; WORDS];
            for (i, v) in f.iter_mut().enumerate() {
                *v = f64::from_le_bytes(word(1 + k * WORDS + i)?);
                if !v.is_finite() {
                    return None;
                }
            }
            *pr = Predictor::from_words(f);
        }
        Some((Detector { params, n, preds }, ENCODED_LEN))
    }
}

/// Turns a stream of scores into alarms: a score is reported only when it
/// beats the last reported one, which is held a while and then decays each
/// sample. One alarm per event, not one per sample of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alarms {
    decay: f64,
    hold: f64,
    held: f64,
    reported: f64,
}

impl Alarms {
    pub fn new(params: &Params) -> Self {
        Alarms { decay: params.refractory_decay, hold: params.refractory_hold, held: 0.0, reported: 0.0 }
    }

    /// The score if it is news, else 0.
    pub fn filter(&mut self, score: f64) -> f64 {
        if self.held > 0.0 {
            self.held -= 1.0;
        } else {
            self.reported *= self.decay;
        }
        if score > self.reported {
            self.reported = score;
            self.held = self.hold;
            score
        } else {
            0.0
        }
    }
}

/// The complementary error function, with a fractional error under 1.2e-7
/// everywhere (a Chebyshev fit), enough for tail probabilities down to 1e-10.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
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

    /// Alarms, as NAB sees them.
    fn run(series: impl Iterator<Item = f64>) -> Vec<f64> {
        let mut d = Detector::new(Params::default());
        let mut a = Alarms::new(&Params::default());
        series.map(|x| a.filter(d.update(x))).collect()
    }

    #[test]
    fn erfc_matches_known_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-7);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-7);
        assert!((erfc(5.0) / 1.537_459_794e-12 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn noise_alone_stays_low() {
        let s = run((0..5_000).map(|i| 100.0 + 5.0 * noise(i)));
        let high = s.iter().filter(|&&x| x >= 0.5).count();
        assert!(high < 5, "{high} false alarms in 5000 samples of noise");
    }

    #[test]
    fn a_spike_scores_high_at_once() {
        let s = run((0..2_000).map(|i| if i == 1_500 { 200.0 } else { 100.0 + 5.0 * noise(i) }));
        let peak = s.get(1_500..1_505).map_or(0.0, |w| w.iter().copied().fold(0.0, f64::max));
        assert!(peak >= 0.5, "{peak}");
    }

    #[test]
    fn a_step_scores_high_then_fades_as_the_new_level_becomes_normal() {
        let s = run((0..4_000).map(|i| if i >= 2_000 { 160.0 } else { 100.0 } + 5.0 * noise(i)));
        assert!(s.get(2_000..2_010).is_some_and(|w| w.iter().any(|&x| x >= 0.5)));
        assert!(s.get(3_500..4_000).is_some_and(|w| w.iter().all(|&x| x < 0.5)));
    }

    #[test]
    fn state_survives_encoding() {
        let mut d = Detector::new(Params::default());
        for i in 0..500 {
            d.update(100.0 + 5.0 * noise(i));
        }
        let mut bytes = Vec::new();
        d.encode(&mut bytes);
        assert_eq!(bytes.len(), ENCODED_LEN);
        let (mut e, used) = Detector::decode(Params::default(), &bytes).unwrap();
        assert_eq!(used, ENCODED_LEN);
        assert_eq!(e, d);
        assert_eq!(e.update(300.0), d.update(300.0));
        assert!(Detector::decode(Params::default(), &bytes[..20]).is_none());
    }

    #[test]
    fn garbage_input_does_not_break_it() {
        let mut d = Detector::new(Params::default());
        for x in [f64::NAN, f64::INFINITY, 0.0, 0.0, 1e300, -1e300, 0.0] {
            let s = d.update(x);
            assert!((0.0..=1.0).contains(&s));
        }
    }
}
