//! The analysis of one second of merged traffic: which scopes are tracked,
//! their series, and what each concludes. Its state lives in shared data and
//! is advanced by one VM at a time (the lease holder), so the analysis runs
//! once, not once per worker, and survives a change of holder.

use super::detector::Params;
use super::series::{Metric, Series, METRICS};
use super::tally::{Counts, Tally};
use crate::engine::codec::{Reader, Writer};

/// Layout version of the state and snapshot (2: the detector keeps a slow
/// level), so a state written by another build is not misread.
const VERSION: u8 = 2;

/// What a scope covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every request through the filter.
    Listener,
    /// Routes beyond the tracked ones.
    Other,
    Route(String),
}

impl Scope {
    pub fn as_str(&self) -> &str {
        match self {
            Scope::Listener => "listener",
            Scope::Other => "other",
            Scope::Route(r) => r,
        }
    }

    fn encode(&self, w: &mut Writer) {
        match self {
            Scope::Listener => w.u8(0),
            Scope::Other => w.u8(1),
            Scope::Route(r) => {
                w.u8(2);
                w.str(r);
            }
        }
    }

    fn decode(r: &mut Reader) -> Option<Scope> {
        match r.u8()? {
            0 => Some(Scope::Listener),
            1 => Some(Scope::Other),
            2 => Some(Scope::Route(r.str()?.to_string())),
            _ => None,
        }
    }
}

/// How the analysis is tuned (derived from `time_series_analysis`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub params: Params,
    /// The baselines' weight per second: one over the analysis window.
    pub alpha: f64,
    /// A series at or above this score is anomalous.
    pub threshold: f64,
    pub max_routes: usize,
    /// A tracked route idle this long gives its place to a new one.
    pub idle_s: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct Tracked {
    scope: Scope,
    last_seen: u64,
    series: Vec<Series>,
}

/// A scope's conclusion for the second: its most anomalous series.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeScore {
    pub scope: Scope,
    pub score: f32,
    pub metric: Metric,
    pub value: f32,
    pub baseline: f32,
}

/// A series that just became anomalous (counted and logged once per event).
#[derive(Debug, Clone, PartialEq)]
pub struct Onset {
    pub scope: Scope,
    pub metric: Metric,
    pub score: f64,
    pub value: f64,
    pub baseline: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// The last second analysed.
    pub cursor: u64,
    tracked: Vec<Tracked>,
}

impl Tracked {
    fn new(scope: Scope, last_seen: u64, params: Params) -> Self {
        Tracked { scope, last_seen, series: METRICS.iter().map(|_| Series::new(params)).collect() }
    }
}

impl State {
    pub fn new(cursor: u64, s: &Settings) -> Self {
        let fresh = |scope| Tracked::new(scope, cursor, s.params);
        State { cursor, tracked: vec![fresh(Scope::Listener), fresh(Scope::Other)] }
    }

    pub fn routes(&self) -> usize {
        self.tracked.len().saturating_sub(2)
    }

    /// Analyses `second`, whose merged traffic is `counts`.
    pub fn analyze(&mut self, second: u64, counts: &Counts, s: &Settings) -> (Vec<ScopeScore>, Vec<Onset>) {
        // Place every route first (it may track new ones), then tally by place.
        let places: Vec<Option<usize>> = counts.routes.iter().map(|(route, _)| self.place(route, second, s)).collect();
        let mut tallies: Vec<Tally> = vec![Tally::default(); self.tracked.len()];
        let mut other = counts.other.clone();
        for ((_, t), place) in counts.routes.iter().zip(places) {
            match place.and_then(|i| tallies.get_mut(i)) {
                Some(slot) => slot.merge(t),
                None => other.merge(t),
            }
        }
        if let Some(slot) = tallies.get_mut(0) {
            *slot = counts.total();
        }
        if let Some(slot) = tallies.get_mut(1) {
            *slot = other;
        }

        let mut scores = Vec::with_capacity(self.tracked.len());
        let mut onsets = Vec::new();
        for (tracked, tally) in self.tracked.iter_mut().zip(&tallies) {
            if tally.requests > 0 {
                tracked.last_seen = second;
            }
            // The most anomalous series; on a tie (all zero), the first: volume, always there.
            let mut best: Option<ScopeScore> = None;
            for (series, metric) in tracked.series.iter_mut().zip(METRICS) {
                let Some(r) = series.observe(metric, tally, s.alpha) else { continue };
                if r.score >= s.threshold && !series.active {
                    series.active = true;
                    onsets.push(Onset { scope: tracked.scope.clone(), metric, score: r.score, value: r.value, baseline: r.baseline });
                } else if r.score < s.threshold / 2.0 {
                    series.active = false;
                }
                if !best.as_ref().is_some_and(|b| r.score as f32 <= b.score) {
                    best = Some(ScopeScore {
                        scope: tracked.scope.clone(),
                        score: r.score as f32,
                        metric,
                        value: r.value as f32,
                        baseline: r.baseline as f32,
                    });
                }
            }
            scores.extend(best);
        }
        self.cursor = second;
        (scores, onsets)
    }

    /// The index of `route`'s scope, tracking it if there is room (a free
    /// place, or the place of a route idle for `idle_s`); `None` folds it into
    /// "other".
    fn place(&mut self, route: &str, second: u64, s: &Settings) -> Option<usize> {
        let is = |t: &Tracked| matches!(&t.scope, Scope::Route(r) if r == route);
        if let Some(i) = self.tracked.iter().position(is) {
            return Some(i);
        }
        let fresh = || Tracked::new(Scope::Route(route.to_string()), second, s.params);
        if self.routes() < s.max_routes {
            self.tracked.push(fresh());
            return Some(self.tracked.len() - 1);
        }
        let idle = self
            .tracked
            .iter()
            .enumerate()
            .skip(2)
            .filter(|(_, t)| second.saturating_sub(t.last_seen) > s.idle_s)
            .min_by_key(|(_, t)| t.last_seen)
            .map(|(i, _)| i)?;
        if let Some(t) = self.tracked.get_mut(idle) {
            *t = fresh();
        }
        Some(idle)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.u8(VERSION);
        w.u64(self.cursor);
        w.u8(self.tracked.len().min(255) as u8);
        for t in self.tracked.iter().take(255) {
            t.scope.encode(&mut w);
            w.u64(t.last_seen);
            for series in &t.series {
                series.encode(&mut w);
            }
        }
    }

    /// `None` for bytes this version did not write, or that break the
    /// invariants (listener and other first, at most `max_routes` routes).
    pub fn decode(bytes: &[u8], s: &Settings) -> Option<State> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let cursor = r.u64()?;
        let n = usize::from(r.u8()?);
        if !(2..=s.max_routes + 2).contains(&n) {
            return None;
        }
        let mut tracked = Vec::with_capacity(n);
        for i in 0..n {
            let scope = Scope::decode(&mut r)?;
            let expected = match i {
                0 => scope == Scope::Listener,
                1 => scope == Scope::Other,
                _ => matches!(scope, Scope::Route(_)),
            };
            if !expected {
                return None;
            }
            let last_seen = r.u64()?;
            let series = METRICS.iter().map(|_| Series::decode(s.params, &mut r)).collect::<Option<Vec<_>>>()?;
            tracked.push(Tracked { scope, last_seen, series });
        }
        r.is_empty().then_some(State { cursor, tracked })
    }
}

/// What the analysis published for the request path: every scope's score.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// The second analysed.
    pub second: u64,
    pub scopes: Vec<ScopeScore>,
}

impl Snapshot {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.u8(VERSION);
        w.u64(self.second);
        w.u8(self.scopes.len().min(255) as u8);
        for s in self.scopes.iter().take(255) {
            s.scope.encode(&mut w);
            w.f32(s.score);
            w.u8(s.metric.index() as u8);
            w.f32(s.value);
            w.f32(s.baseline);
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Snapshot> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let second = r.u64()?;
        let n = r.u8()?;
        let mut scopes = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let scope = Scope::decode(&mut r)?;
            let score = r.f32()?;
            let metric = Metric::from_index(r.u8()?)?;
            let (value, baseline) = (r.f32()?, r.f32()?);
            if !(0.0..=1.0).contains(&score) {
                return None;
            }
            scopes.push(ScopeScore { scope, score, metric, value, baseline });
        }
        r.is_empty().then_some(Snapshot { second, scopes })
    }

    /// The scores that bear on a request to `route`: the listener's, and its
    /// route's (or "other" when the route is not tracked). Highest first.
    pub fn for_route(&self, route: &str) -> (Option<&ScopeScore>, Option<&ScopeScore>) {
        let listener = self.scopes.iter().find(|s| s.scope == Scope::Listener);
        let own = self
            .scopes
            .iter()
            .find(|s| matches!(&s.scope, Scope::Route(r) if r == route))
            .or_else(|| self.scopes.iter().find(|s| s.scope == Scope::Other));
        (listener, own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            params: Params { warmup: 30, long_samples: 120.0, ..Params::default() },
            alpha: 1.0 / 120.0,
            threshold: 0.5,
            max_routes: 2,
            idle_s: 60,
        }
    }

    fn second(routes: &[(&str, u64, u64)]) -> Counts {
        let mut c = Counts::default();
        for &(route, n, errors) in routes {
            for i in 0..n {
                c.add(route, 64, Some(if i < errors { 500 } else { 200 }), Some(2_000));
            }
        }
        c
    }

    #[test]
    fn routes_are_bounded_and_idle_ones_give_way() {
        let s = settings();
        let mut st = State::new(0, &s);
        st.analyze(1, &second(&[("/a", 5, 0), ("/b", 5, 0), ("/c", 5, 0)]), &s);
        assert_eq!(st.routes(), 2);
        let (scores, _) = st.analyze(2, &second(&[("/c", 5, 0)]), &s);
        assert_eq!(scores.get(1).map(|x| x.value), Some(5.0), "/c counted in other");
        // /b goes quiet for longer than idle_s: /c takes its place.
        for t in 3..100 {
            st.analyze(t, &second(&[("/a", 5, 0)]), &s);
        }
        st.analyze(100, &second(&[("/c", 5, 0)]), &s);
        assert!(st.tracked.iter().any(|t| t.scope == Scope::Route("/c".into())));
        assert!(!st.tracked.iter().any(|t| t.scope == Scope::Route("/b".into())));
    }

    #[test]
    fn an_outage_on_one_route_is_named_and_counted_once() {
        let s = settings();
        let mut st = State::new(0, &s);
        for t in 1..=120 {
            let (scores, onsets) = st.analyze(t, &second(&[("/a", 50 + t % 5, 0), ("/b", 30 + t % 3, 0)]), &s);
            assert!(onsets.is_empty(), "steady second {t}: {onsets:?}");
            assert!(scores.iter().all(|x| x.score < 0.5), "{scores:?}");
        }
        let mut all = Vec::new();
        for t in 121..=130 {
            let (scores, onsets) = st.analyze(t, &second(&[("/a", 50, 0), ("/b", 30, 15)]), &s);
            all.extend(onsets);
            if t == 121 {
                let b = scores.iter().find(|x| x.scope == Scope::Route("/b".into())).unwrap();
                assert_eq!(b.metric, Metric::ServerErrorRate);
                assert!(b.score >= 0.5, "{b:?}");
                let a = scores.iter().find(|x| x.scope == Scope::Route("/a".into())).unwrap();
                assert!(a.score < 0.5, "{a:?}");
            }
        }
        let b_5xx = all.iter().filter(|o| o.scope == Scope::Route("/b".into()) && o.metric == Metric::ServerErrorRate);
        assert_eq!(b_5xx.count(), 1, "{all:?}");
    }

    #[test]
    fn state_and_snapshot_round_trip_and_refuse_garbage() {
        let s = settings();
        let mut st = State::new(0, &s);
        let mut snap = Snapshot::default();
        for t in 1..40 {
            let (scores, _) = st.analyze(t, &second(&[("/a", 5, 1), ("/b", 7, 0)]), &s);
            snap = Snapshot { second: t, scopes: scores };
        }
        let mut buf = Vec::new();
        st.encode(&mut buf);
        assert_eq!(State::decode(&buf, &s), Some(st));
        assert_eq!(State::decode(buf.get(..buf.len() - 1).unwrap(), &s), None);
        let fewer = Settings { max_routes: 1, ..s };
        assert_eq!(State::decode(&buf, &fewer), None, "more routes than configured");
        let mut buf = Vec::new();
        snap.encode(&mut buf);
        assert_eq!(Snapshot::decode(&buf), Some(snap.clone()));
        assert_eq!(snap.for_route("/zzz").1.map(|x| &x.scope), Some(&Scope::Other));
        assert_eq!(Snapshot::decode(&[1, 2, 3]), None);
    }
}
