//! How unusual one key value is against the population of its kind.
//!
//! `score = crowd × badness`:
//! - **crowd**: how far the key's distinct identities exceed what its kind
//!   usually carries: 0 up to `max(population p75, min_identities)`, rising
//!   to 1 at four times that (on a log scale). The 75th percentile, not the
//!   99th: some kinds are heavy-tailed (a popular browser's user agent
//!   carries thousands), and a rare value carrying a hundred identities is a
//!   crowd there too. Whether a crowd is an attack is badness's call.
//! - **badness**: whether those identities behave like an attack: a failure
//!   share well above the population's (mean + 3 sd, at least +0.15, at most
//!   0.6), or a fresh share well above it (new identities). A crowd that
//!   behaves like its peers (an office NAT, a popular browser, a carrier ASN)
//!   scores nothing, however large.
//!
//! For `identity_addresses` the crowd is the signal (an identity seen from
//! many addresses at once), badness is 1.

use super::population::Baseline;
use super::record::KeyRecord;

/// What scoring needs besides the record and its population.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub min_population: f32,
    pub min_identities: f32,
}

/// One key value's score and the evidence behind it, for the threat detail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub score: f64,
    pub confidence: f64,
    pub members: f32,
    pub failure: Option<f32>,
    pub fresh: Option<f32>,
    pub routes: f32,
    /// The population's 75th and 99th percentiles of distinct members.
    pub p75: f32,
    pub p99: f32,
}

/// A population whose fresh share is above this is itself mostly new (a cold
/// start, a fresh deployment): freshness then tells nothing apart.
const COLD_POPULATION_FRESH: f32 = 0.5;

/// The score of `r` (as of now) against `pop`; `None` until the population
/// is large enough to say what is usual.
pub fn score(r: &KeyRecord, pop: &Baseline, spread_only: bool, s: &Settings) -> Option<Scored> {
    if pop.samples < s.min_population {
        return None;
    }
    let members = r.bits.members();
    let (p75, p99) = (pop.p75, pop.p99);
    let floor = p75.max(s.min_identities).max(1.0);
    let crowd = (((members.max(1.0) / floor).log2()) / 2.0).clamp(0.0, 1.0);
    let failure = r.counts.failure_share();
    let fresh = r.counts.fresh_share();
    let badness = if spread_only {
        1.0
    } else {
        let fail = match (pop.failure, failure) {
            (Some((mean, sd)), Some(_)) => {
                // Shrunk toward the population's mean by two answers' worth.
                let share = (r.counts.failures + 2.0 * mean) / (r.counts.answered + 2.0);
                let high = (mean + (3.0 * sd).max(0.15)).min(0.6);
                ((share - high) / (1.0 - high) * 2.0).clamp(0.0, 1.0)
            }
            (None, Some(share)) => ((share - 0.6) / 0.2).clamp(0.0, 1.0),
            _ => 0.0,
        };
        let new = match (pop.fresh, fresh) {
            (Some((mean, sd)), Some(_)) if mean <= COLD_POPULATION_FRESH => {
                let share = (r.counts.fresh + 2.0 * mean) / (r.counts.fresh_known + 2.0);
                let high = mean + (3.0 * sd).max(0.25);
                ((share - high) / 0.25).clamp(0.0, 1.0)
            }
            _ => 0.0,
        };
        1.0 - (1.0 - fail) * (1.0 - 0.6 * new)
    };
    let score = f64::from(crowd * badness).clamp(0.0, 1.0);
    // Evidence: how much traffic stands behind the record; and a quiet key
    // says little about the request (a fifth of a loud one's say).
    let evidence = 1.0 - (-f64::from(r.counts.requests) / 8.0).exp();
    let confidence = (evidence * (0.2 + 0.8 * score)).clamp(0.0, 1.0);
    Some(Scored { score, confidence, members, failure, fresh, routes: r.bits.routes(), p75, p99 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::keys::population::Population;
    use crate::engine::keys::record::{Bits, Counts};

    fn h(i: u64) -> u64 {
        crate::engine::hash::HashKey::new(7, 8).hash(&[&i.to_le_bytes()]) | 1
    }

    fn record(identities: u64, requests: f32, failures: f32, fresh: f32) -> KeyRecord {
        let mut bits = Bits::default();
        for i in 0..identities {
            bits.add(h(i), 1, 1);
        }
        let counts = Counts { requests, answered: requests, failures, fresh, fresh_known: requests };
        KeyRecord { counts, bits, ..KeyRecord::default() }
    }

    /// Most /24s carry one identity, a few several; failures around 5%,
    /// fresh share around 10%.
    fn population() -> Baseline {
        let mut p = Population::default();
        for i in 0..500u64 {
            let n = match i % 100 { 0 => 4, 1..=9 => 2, _ => 1 };
            let failures = if i % 20 == 0 { 2.0 } else { 0.0 };
            let fresh = if i % 10 == 0 { 10.0 } else { 0.5 };
            p.sample(&record(n, 20.0, failures, fresh));
        }
        p.baseline()
    }

    const S: Settings = Settings { min_population: 50.0, min_identities: 5.0 };

    #[test]
    fn a_crowd_of_fresh_failing_identities_scores_high_and_a_normal_crowd_does_not() {
        let pop = population();
        let stuffing = score(&record(143, 430.0, 400.0, 420.0), &pop, false, &S).unwrap();
        assert!(stuffing.score > 0.9, "{stuffing:?}");
        assert!(stuffing.confidence > 0.9);
        assert!((stuffing.members - 143.0).abs() < 20.0);
        let nat = score(&record(30, 600.0, 12.0, 30.0), &pop, false, &S).unwrap();
        assert!(nat.score < 0.05, "{nat:?}");
        assert!(nat.confidence < 0.3, "a quiet key says little");
        // Few identities: no crowd, whatever they do.
        let small = score(&record(3, 30.0, 30.0, 30.0), &pop, false, &S).unwrap();
        assert_eq!(small.score, 0.0);
        // Many fresh identities alone (no failures) still count, less.
        let fresh = score(&record(143, 430.0, 10.0, 420.0), &pop, false, &S).unwrap();
        assert!(fresh.score > 0.4 && fresh.score < stuffing.score, "{fresh:?}");
    }

    #[test]
    fn nothing_is_said_before_the_population_is_known_and_a_fresh_population_ignores_freshness() {
        let mut small = Population::default();
        small.sample(&record(1, 5.0, 0.0, 0.0));
        assert!(score(&record(143, 430.0, 400.0, 420.0), &small.baseline(), false, &S).is_none());
        // Just after start every identity is fresh: freshness is no evidence then.
        let mut cold = Population::default();
        for _ in 0..100 {
            cold.sample(&record(1, 5.0, 0.0, 5.0));
        }
        let cold = cold.baseline();
        let new_users = score(&record(40, 200.0, 0.0, 200.0), &cold, false, &S).unwrap();
        assert_eq!(new_users.score, 0.0, "{new_users:?}");
        let stuffing = score(&record(40, 200.0, 190.0, 200.0), &cold, false, &S).unwrap();
        assert!(stuffing.score > 0.9, "{stuffing:?}");
    }

    #[test]
    fn spread_alone_scores_an_identity_seen_from_many_addresses() {
        let pop = population();
        let shared = score(&record(40, 100.0, 0.0, 0.0), &pop, true, &S).unwrap();
        assert!(shared.score > 0.9, "{shared:?}");
        let roaming = score(&record(3, 100.0, 0.0, 0.0), &pop, true, &S).unwrap();
        assert_eq!(roaming.score, 0.0);
    }
}
