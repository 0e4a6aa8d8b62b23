//! The small statistics a profile is made of: exponentially weighted running
//! moments, smoothed categorical distributions, and the maps from "how
//! unusual" to a score in [0, 1]. All of it decays, so old behaviour fades
//! instead of being cut off.

/// Running mean and variance with exponentially decaying weights (West's
/// weighted update): `w` is the effective number of observations behind them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub w: f32,
    pub mean: f32,
    pub var: f32,
}

impl Moments {
    /// Fades the history by `decay` (in (0, 1]), then adds `x` with weight 1.
    pub fn push(&mut self, x: f64, decay: f64) {
        if !x.is_finite() {
            return;
        }
        let w = f64::from(self.w) * decay + 1.0;
        let a = 1.0 / w;
        let delta = x - f64::from(self.mean);
        let mean = f64::from(self.mean) + a * delta;
        let var = (1.0 - a) * (f64::from(self.var) + a * delta * delta);
        (self.w, self.mean, self.var) = (w as f32, mean as f32, var as f32);
    }

    /// Adds `x` with weight `weight` (no fading: `fade` first). A weight of
    /// 0 changes nothing.
    pub fn push_weighted(&mut self, x: f64, weight: f32) {
        if !x.is_finite() || weight.is_nan() || weight <= 0.0 {
            return;
        }
        let w = f64::from(self.w) + f64::from(weight);
        let a = f64::from(weight) / w;
        let delta = x - f64::from(self.mean);
        let mean = f64::from(self.mean) + a * delta;
        let var = (1.0 - a) * (f64::from(self.var) + a * delta * delta);
        (self.w, self.mean, self.var) = (w as f32, mean as f32, var as f32);
    }

    pub fn fade(&mut self, decay: f64) {
        self.w = (f64::from(self.w) * decay) as f32;
    }

    /// Standard score of `x`, with the spread floored at `min_sd` so a
    /// perfectly regular history does not make every wobble infinite.
    pub fn z(&self, x: f64, min_sd: f64) -> f64 {
        (x - f64::from(self.mean)) / f64::from(self.var).max(0.0).sqrt().max(min_sd)
    }
}

/// Additive (Laplace) smoothing: what an unseen category is given.
pub const PSEUDO_COUNT: f64 = 0.5;

/// Surprise in bits of a category with weight `w` in a distribution of total
/// weight `total` over `k` known categories, smoothed so an unseen category
/// has a finite surprise that grows with the evidence against it.
pub fn surprise_bits(w: f64, total: f64, k: usize) -> f64 {
    let p = (w.max(0.0) + PSEUDO_COUNT) / (total.max(0.0) + PSEUDO_COUNT * (k as f64 + 1.0));
    -p.log2()
}

/// Entropy in bits of the smoothed distribution of `weights` (plus the
/// unseen bucket): the surprise this identity's own history makes typical.
pub fn entropy_bits(weights: impl Iterator<Item = f64> + Clone) -> f64 {
    let k = weights.clone().count();
    let total: f64 = weights.clone().map(|w| w.max(0.0)).sum();
    let norm = total + PSEUDO_COUNT * (k as f64 + 1.0);
    let h = |w: f64| {
        let p = (w.max(0.0) + PSEUDO_COUNT) / norm;
        -p * p.log2()
    };
    weights.map(h).sum::<f64>() + h(0.0)
}

/// Excess surprise: bits beyond what this distribution makes typical. A
/// uniform user surprised by a new endpoint scores less than a creature of
/// habit surprised by the same.
pub fn excess_surprise(w: f64, weights: impl Iterator<Item = f64> + Clone) -> f64 {
    let k = weights.clone().count();
    let total: f64 = weights.clone().map(|w| w.max(0.0)).sum();
    (surprise_bits(w, total, k) - entropy_bits(weights)).max(0.0)
}

/// Hellinger distance between two (unnormalised) weight vectors, in [0, 1].
pub fn hellinger(p: impl Iterator<Item = f64> + Clone, q: impl Iterator<Item = f64> + Clone) -> f64 {
    let (sp, sq): (f64, f64) = (p.clone().map(|x| x.max(0.0)).sum(), q.clone().map(|x| x.max(0.0)).sum());
    if sp <= 0.0 || sq <= 0.0 {
        return 0.0;
    }
    let bc: f64 = p.zip(q).map(|(a, b)| ((a.max(0.0) / sp) * (b.max(0.0) / sq)).sqrt()).sum();
    (1.0 - bc.min(1.0)).sqrt()
}

/// The logistic curve `1 / (1 + e^(-slope (x - mid)))`: 0.5 at `mid`.
pub fn logistic(x: f64, mid: f64, slope: f64) -> f64 {
    if !x.is_finite() {
        return if x > 0.0 { 1.0 } else { 0.0 };
    }
    1.0 / (1.0 + (-slope * (x - mid)).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_match_the_sample_statistics_without_decay() {
        let mut m = Moments::default();
        for x in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            m.push(x, 1.0);
        }
        assert!((m.mean - 5.0).abs() < 1e-6);
        assert!((m.var - 4.0).abs() < 1e-5, "population variance {}", m.var);
        assert!((m.z(9.0, 0.1) - 2.0).abs() < 1e-5);
        assert!((m.w - 8.0).abs() < 1e-6);
    }

    #[test]
    fn decay_lets_a_new_level_take_over() {
        let mut m = Moments::default();
        for _ in 0..100 {
            m.push(1.0, 1.0);
        }
        for _ in 0..100 {
            m.push(10.0, 0.9);
        }
        assert!((m.mean - 10.0).abs() < 0.01, "{}", m.mean);
        assert!(m.w < 11.0);
    }

    #[test]
    fn surprise_is_relative_to_the_entropy_of_the_history() {
        // A creature of habit: one endpoint 300 times.
        let habit = [300.0];
        let new_for_habit = excess_surprise(0.0, habit.iter().copied());
        assert!(new_for_habit > 8.0, "{new_for_habit}");
        assert!(excess_surprise(300.0, habit.iter().copied()) < 0.1);
        // A broad user: 16 endpoints 20 times each; new is less surprising.
        let broad = [20.0; 16];
        let new_for_broad = excess_surprise(0.0, broad.iter().copied());
        assert!(new_for_broad < new_for_habit - 3.0, "{new_for_broad}");
        assert_eq!(excess_surprise(20.0, broad.iter().copied()), 0.0);
    }

    #[test]
    fn hellinger_is_zero_for_the_same_mix_and_one_for_disjoint() {
        let a = [1.0, 2.0, 3.0, 0.0];
        let b = [2.0, 4.0, 6.0, 0.0];
        let c = [0.0, 0.0, 0.0, 5.0];
        assert!(hellinger(a.iter().copied(), b.iter().copied()) < 1e-9);
        assert!((hellinger(a.iter().copied(), c.iter().copied()) - 1.0).abs() < 1e-9);
        assert_eq!(hellinger([0.0].iter().copied(), a.iter().copied()), 0.0);
    }

    #[test]
    fn logistic_is_bounded_and_centred() {
        assert!((logistic(3.0, 3.0, 2.0) - 0.5).abs() < 1e-12);
        assert!(logistic(-1e9, 0.0, 1.0) >= 0.0 && logistic(1e9, 0.0, 1.0) <= 1.0);
        assert_eq!(logistic(f64::INFINITY, 0.0, 1.0), 1.0);
        assert_eq!(logistic(f64::NAN, 0.0, 1.0), 0.0);
    }
}
