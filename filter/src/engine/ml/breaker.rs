//! Keeping a failing model from taking requests down with it: a circuit
//! breaker per model per worker, and the backoff between attempts.

/// What the breaker allows right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Call,
    /// The breaker is half-open: this call is the one probe.
    Probe,
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until_ms: u64 },
    /// One probe is out; others are refused until it answers or its
    /// deadline passes (a probe whose request vanished never answers).
    HalfOpen { probe_deadline_ms: u64 },
}

/// Closed: calls flow, consecutive failures are counted. `threshold` of them
/// open it for `open_ms`; then one probe goes out. Its success closes the
/// breaker, its failure opens it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    state: State,
    threshold: u32,
    open_ms: u64,
    /// How long a probe may take before another is let through.
    probe_ms: u64,
}

/// A change worth telling (the breaker-open gauge, a log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(threshold: u32, open_ms: u64, probe_ms: u64) -> Self {
        Breaker { state: State::Closed { failures: 0 }, threshold: threshold.max(1), open_ms, probe_ms }
    }

    pub fn permit(&mut self, now_ms: u64) -> Permit {
        match self.state {
            State::Closed { .. } => Permit::Call,
            State::Open { until_ms } | State::HalfOpen { probe_deadline_ms: until_ms } if now_ms >= until_ms => {
                self.state = State::HalfOpen { probe_deadline_ms: now_ms + self.probe_ms };
                Permit::Probe
            }
            State::Open { .. } | State::HalfOpen { .. } => Permit::Refuse,
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    pub fn success(&mut self) -> Option<Transition> {
        let was_open = self.is_open();
        self.state = State::Closed { failures: 0 };
        was_open.then_some(Transition::Closed)
    }

    pub fn failure(&mut self, now_ms: u64) -> Option<Transition> {
        match self.state {
            State::Closed { failures } if failures + 1 >= self.threshold => {
                self.state = State::Open { until_ms: now_ms + self.open_ms };
                Some(Transition::Opened)
            }
            State::Closed { failures } => {
                self.state = State::Closed { failures: failures + 1 };
                None
            }
            // A failed probe (or a late failure of a call sent before it opened).
            State::Open { .. } | State::HalfOpen { .. } => {
                self.state = State::Open { until_ms: now_ms + self.open_ms };
                None
            }
        }
    }
}

/// Exponential backoff with jitter before attempt `attempt` (1 = the first
/// retry): 50 ms, 100 ms, 200 ms... capped at 1 s, each scaled by a factor in
/// [0.5, 1.5) drawn from `seed` so workers retrying together spread out.
pub fn backoff_ms(attempt: u32, seed: u64) -> u64 {
    const BASE_MS: u64 = 50;
    const CAP_MS: u64 = 1_000;
    let exp = BASE_MS.saturating_mul(1u64 << attempt.saturating_sub(1).min(16)).min(CAP_MS);
    // A cheap mix (splitmix64's finaliser) of the seed.
    let mut z = seed.wrapping_add(u64::from(attempt)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^= z >> 31;
    let jitter = (z % 1000) as f64 / 1000.0 + 0.5;
    (exp as f64 * jitter) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_only() {
        let mut b = Breaker::new(3, 1_000, 500);
        assert_eq!(b.failure(0), None);
        assert_eq!(b.failure(0), None);
        assert_eq!(b.success(), None, "a success in between resets the count");
        assert_eq!(b.failure(1), None);
        assert_eq!(b.failure(2), None);
        assert_eq!(b.permit(2), Permit::Call);
        assert_eq!(b.failure(3), Some(Transition::Opened));
        assert!(b.is_open());
        assert_eq!(b.permit(4), Permit::Refuse);
        assert_eq!(b.permit(1_002), Permit::Refuse, "open for the whole period");
    }

    #[test]
    fn after_the_open_period_one_probe_decides() {
        let mut b = Breaker::new(1, 1_000, 500);
        b.failure(0);
        assert_eq!(b.permit(1_000), Permit::Probe);
        assert_eq!(b.permit(1_001), Permit::Refuse, "one probe at a time");
        assert_eq!(b.failure(1_100), None, "the probe failed: open again");
        assert_eq!(b.permit(1_200), Permit::Refuse);
        assert_eq!(b.permit(2_100), Permit::Probe);
        assert_eq!(b.success(), Some(Transition::Closed));
        assert_eq!(b.permit(2_101), Permit::Call);
        assert!(!b.is_open());
    }

    #[test]
    fn a_probe_that_never_answers_does_not_wedge_the_breaker() {
        let mut b = Breaker::new(1, 1_000, 500);
        b.failure(0);
        assert_eq!(b.permit(1_000), Permit::Probe);
        // Its request ended and the host cancelled the call: no answer, ever.
        assert_eq!(b.permit(1_499), Permit::Refuse);
        assert_eq!(b.permit(1_500), Permit::Probe, "another probe after the deadline");
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for seed in [0u64, 1, 42, u64::MAX] {
            let b1 = backoff_ms(1, seed);
            assert!((25..75).contains(&b1), "{b1}");
            let b3 = backoff_ms(3, seed);
            assert!((100..300).contains(&b3), "{b3}");
            assert!(backoff_ms(40, seed) < 1_500, "capped");
        }
        let spread: std::collections::HashSet<u64> = (0..50).map(|s| backoff_ms(1, s)).collect();
        assert!(spread.len() > 20, "jitter spreads retries: {spread:?}");
    }
}
