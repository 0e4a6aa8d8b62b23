//! What one second of traffic looked like, per scope (the whole listener, each
//! tracked route, "other"): requests, 4xx, 5xx and a latency histogram. Tallies
//! add up exactly, so workers count apart and merge in shared data without
//! losing a request.

use crate::engine::codec::{Reader, Writer};

/// Latency buckets: bucket `i` holds latencies up to `FIRST_US * 2^(i/2)`,
/// a factor of √2 apart (a quantile is off by at most ~19%), from 100 µs to
/// about 100 s; the last bucket takes the rest.
pub const BUCKETS: usize = 40;
const FIRST_US: f64 = 100.0;

/// A mergeable latency histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    counts: [u32; BUCKETS],
}

impl Default for Latency {
    fn default() -> Self {
        Latency { counts: [0; BUCKETS] }
    }
}

impl Latency {
    pub fn bucket(us: u64) -> usize {
        if us as f64 <= FIRST_US {
            return 0;
        }
        // 2·log2(us / FIRST_US), rounded up: the first bound at or above us.
        let i = (2.0 * (us as f64 / FIRST_US).log2()).ceil();
        (i as usize).min(BUCKETS - 1)
    }

    fn upper_us(i: usize) -> f64 {
        FIRST_US * (i as f64 / 2.0).exp2()
    }

    pub fn add(&mut self, us: u64) {
        if let Some(c) = self.counts.get_mut(Self::bucket(us)) {
            *c = c.saturating_add(1);
        }
    }

    pub fn merge(&mut self, other: &Latency) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }

    /// The `q` quantile in milliseconds (the bucket's geometric middle), or
    /// `None` with no samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                let upper = Self::upper_us(i);
                let lower = if i == 0 { upper / 2.0 } else { Self::upper_us(i - 1) };
                return Some((lower * upper).sqrt() / 1000.0);
            }
        }
        None
    }

    fn encode(&self, w: &mut Writer) {
        let used = self.counts.iter().filter(|&&c| c > 0).count();
        w.u8(used as u8);
        for (i, &c) in self.counts.iter().enumerate().filter(|(_, &c)| c > 0) {
            w.u8(i as u8);
            w.varint(u64::from(c));
        }
    }

    fn decode(r: &mut Reader) -> Option<Latency> {
        let mut l = Latency::default();
        for _ in 0..r.u8()? {
            let i = usize::from(r.u8()?);
            *l.counts.get_mut(i)? = u32::try_from(r.varint()?).ok()?;
        }
        Some(l)
    }
}

/// One scope's traffic over some span.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tally {
    pub requests: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub latency: Latency,
}

impl Tally {
    /// One completed request: its status (none when the stream was reset
    /// before a response) and latency to the response headers.
    pub fn add(&mut self, status: Option<u16>, latency_us: Option<u64>) {
        self.requests += 1;
        match status {
            Some(400..=499) => self.client_errors += 1,
            Some(500..=599) => self.server_errors += 1,
            _ => {}
        }
        if let Some(us) = latency_us {
            self.latency.add(us);
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.client_errors += other.client_errors;
        self.server_errors += other.server_errors;
        self.latency.merge(&other.latency);
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }

    fn encode(&self, w: &mut Writer) {
        w.varint(self.requests);
        w.varint(self.client_errors);
        w.varint(self.server_errors);
        self.latency.encode(w);
    }

    fn decode(r: &mut Reader) -> Option<Tally> {
        Some(Tally {
            requests: r.varint()?,
            client_errors: r.varint()?,
            server_errors: r.varint()?,
            latency: Latency::decode(r)?,
        })
    }
}

/// A span of traffic by route template: at most `cap` named routes, the rest
/// folded into `other`, so an attacker minting paths cannot grow it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Counts {
    pub routes: Vec<(String, Tally)>,
    pub other: Tally,
}

impl Counts {
    pub fn add(&mut self, route: &str, cap: usize, status: Option<u16>, latency_us: Option<u64>) {
        self.tally_mut(route, cap).add(status, latency_us);
    }

    fn tally_mut(&mut self, route: &str, cap: usize) -> &mut Tally {
        let at = match self.routes.iter().position(|(r, _)| r == route) {
            Some(i) => Some(i),
            None if self.routes.len() < cap => {
                self.routes.push((route.to_string(), Tally::default()));
                Some(self.routes.len() - 1)
            }
            None => None,
        };
        match at {
            Some(i) => match self.routes.get_mut(i) {
                Some((_, t)) => t,
                None => &mut self.other,
            },
            None => &mut self.other,
        }
    }

    pub fn merge(&mut self, other: &Counts, cap: usize) {
        for (route, t) in &other.routes {
            self.tally_mut(route, cap).merge(t);
        }
        self.other.merge(&other.other);
    }

    /// Everything, all routes together.
    pub fn total(&self) -> Tally {
        let mut t = self.other.clone();
        for (_, r) in &self.routes {
            t.merge(r);
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.other.is_empty() && self.routes.iter().all(|(_, t)| t.is_empty())
    }

    pub fn encode(&self, w: &mut Writer) {
        w.u8(self.routes.len().min(255) as u8);
        for (route, t) in self.routes.iter().take(255) {
            w.str(route);
            t.encode(w);
        }
        self.other.encode(w);
    }

    pub fn decode(r: &mut Reader) -> Option<Counts> {
        let n = r.u8()?;
        let mut c = Counts { routes: Vec::with_capacity(usize::from(n)), other: Tally::default() };
        for _ in 0..n {
            let route = r.str()?.to_string();
            c.routes.push((route, Tally::decode(r)?));
        }
        c.other = Tally::decode(r)?;
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut l = Latency::default();
        for ms in 1..=100u64 {
            l.add(ms * 1000);
        }
        for (q, want) in [(0.5, 50.0), (0.95, 95.0), (0.99, 99.0)] {
            let got = l.quantile_ms(q).unwrap();
            assert!((got / want - 1.0).abs() < 0.2, "q{q}: {got} vs {want}");
        }
        assert_eq!(Latency::default().quantile_ms(0.5), None);
        assert_eq!(Latency::bucket(0), 0);
        assert_eq!(Latency::bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn merging_adds_up_exactly_and_round_trips() {
        let mut a = Counts::default();
        let mut b = Counts::default();
        for i in 0..100u64 {
            a.add("/a", 2, Some(200), Some(1_000 + i));
            b.add(if i % 2 == 0 { "/b" } else { "/c" }, 2, Some(if i % 10 == 0 { 503 } else { 404 }), Some(5_000));
        }
        a.merge(&b, 2);
        assert_eq!(a.routes.len(), 2, "capped");
        let t = a.total();
        assert_eq!((t.requests, t.client_errors, t.server_errors), (200, 90, 10));
        assert_eq!(a.other.requests, 50, "/c folded into other");
        assert_eq!(t.latency.total(), 200);

        let mut buf = Vec::new();
        a.encode(&mut Writer(&mut buf));
        let mut r = Reader(&buf);
        assert_eq!(Counts::decode(&mut r), Some(a));
        assert!(r.is_empty());
        assert_eq!(Counts::decode(&mut Reader(buf.get(..buf.len() - 1).unwrap())), None);
    }
}
