//! The analysis of one second of merged traffic: which scopes are tracked,
//! their series, and what each concludes. Its state lives in shared data and
//! is advanced by one VM at a time (the lease holder), so the analysis runs
//! once, not once per worker, and survives a change of holder.

use super::detector::Params;
use super::series::{Floors, Metric, Series, Typical, METRICS};
use super::tally::{Counts, Tally};
use crate::engine::codec::{Reader, Writer};

/// Layout version of the state, so a state written by another build is not
/// misread: 3 adds each series' drift run; 2 (the detector keeps a slow
/// level) is still read, with no run in progress.
const VERSION: u8 = 3;
const VERSION_WITHOUT_RUNS: u8 = 2;
/// Layout version of the snapshot (unchanged by drift detection).
const SNAPSHOT_VERSION: u8 = 2;

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
    /// A series anomalous this long (short breaks aside) has drifted: its
    /// baseline is re-learned and the drift reported.
    pub drift_s: u64,
    /// The minimum meaningful change per metric (`time_series_analysis.min_change`).
    pub floors: Floors,
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
    /// The series is young (its route first seen less than a warm-up ago):
    /// `baseline` is the highest typical value among the established routes.
    pub young: bool,
}

/// A series whose normal shifted for good: anomalous for the drift time (or,
/// where only a rise counts, as far below its baseline), its baseline was
/// re-learned at the new level (reported once per drift).
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    pub scope: Scope,
    pub metric: Metric,
    /// The baseline before the anomaly began.
    pub from: f64,
    /// The level the series settled on, now its baseline.
    pub to: f64,
    /// How long it was anomalous (at least the drift time).
    pub seconds: u64,
}

/// What the analysis of one second concludes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Analysis {
    /// Every scope's most anomalous series.
    pub scores: Vec<ScopeScore>,
    pub onsets: Vec<Onset>,
    pub drifts: Vec<Drift>,
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
    pub fn analyze(&mut self, second: u64, counts: &Counts, s: &Settings) -> Analysis {
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

        // What the established scopes say is typical, before this second
        // moves their baselines: young routes are judged against it.
        let typical = self.typical();
        let mut scores = Vec::with_capacity(self.tracked.len());
        let mut onsets = Vec::new();
        let mut drifts = Vec::new();
        for (i, (tracked, tally)) in self.tracked.iter_mut().zip(&tallies).enumerate() {
            if tally.requests > 0 {
                tracked.last_seen = second;
            }
            // Routes only: the listener and "other" have no population to be
            // compared with (they warm up at start-up, with everything else).
            let population = if i >= 2 { typical } else { [None; METRICS.len()] };
            // The most anomalous series; on a tie (all zero), the first: volume, always there.
            let mut best: Option<ScopeScore> = None;
            for ((series, metric), typical) in tracked.series.iter_mut().zip(METRICS).zip(population) {
                let reading = series.observe(metric, tally, s.alpha, s.floors.get(metric), typical);
                let young = !series.warm();
                // This second still scores as observed; the re-learned baseline
                // scores the next.
                if let Some(shift) = series.track(reading.as_ref(), second, s.threshold, s.drift_s) {
                    drifts.push(Drift { scope: tracked.scope.clone(), metric, from: shift.from, to: shift.to, seconds: shift.seconds });
                }
                let Some(r) = reading else { continue };
                if r.score >= s.threshold && !series.active {
                    series.active = true;
                    onsets.push(Onset { scope: tracked.scope.clone(), metric, score: r.score, value: r.value, baseline: r.baseline, young });
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
        Analysis { scores, onsets, drifts }
    }

    /// Per metric, what is typical among the established scopes, for judging
    /// young routes: the highest baseline among the routes whose series is
    /// warm (with its spread), or the listener's when no route's is. The
    /// highest, so a new route is unusual only where it is beyond every
    /// established one. Worked out from the state each second: nothing is stored.
    fn typical(&self) -> [Option<Typical>; METRICS.len()] {
        let mut out = [None; METRICS.len()];
        for (k, slot) in out.iter_mut().enumerate() {
            let routes = self.tracked.iter().skip(2).filter_map(|t| t.series.get(k)?.typical());
            *slot = routes
                .max_by(|a, b| a.level.total_cmp(&b.level))
                .or_else(|| self.tracked.first()?.series.get(k)?.typical());
        }
        out
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

    /// `None` for bytes this version did not write (the layout before drift
    /// detection is read too), or that break the invariants (listener and
    /// other first, at most `max_routes` routes).
    pub fn decode(bytes: &[u8], s: &Settings) -> Option<State> {
        let mut r = Reader(bytes);
        let with_runs = match r.u8()? {
            VERSION => true,
            VERSION_WITHOUT_RUNS => false,
            _ => return None,
        };
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
            let series = METRICS.iter().map(|_| Series::decode(s.params, &mut r, with_runs)).collect::<Option<Vec<_>>>()?;
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
        w.u8(SNAPSHOT_VERSION);
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
        if r.u8()? != SNAPSHOT_VERSION {
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
    use crate::engine::traffic::series::SERIES_ENCODED_LEN;

    fn settings() -> Settings {
        Settings {
            params: Params { warmup: 30, long_samples: 120.0, ..Params::default() },
            alpha: 1.0 / 120.0,
            threshold: 0.5,
            max_routes: 2,
            idle_s: 60,
            drift_s: 600,
            floors: Floors::default(),
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
        let scores = st.analyze(2, &second(&[("/c", 5, 0)]), &s).scores;
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
            let Analysis { scores, onsets, .. } = st.analyze(t, &second(&[("/a", 50 + t % 5, 0), ("/b", 30 + t % 3, 0)]), &s);
            assert!(onsets.is_empty(), "steady second {t}: {onsets:?}");
            assert!(scores.iter().all(|x| x.score < 0.5), "{scores:?}");
        }
        let mut all = Vec::new();
        for t in 121..=130 {
            let Analysis { scores, onsets, .. } = st.analyze(t, &second(&[("/a", 50, 0), ("/b", 30, 15)]), &s);
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

    /// Two established routes (20 and 30 rps, 2 ms, no errors) for 100 s, then
    /// `new` joins them: the onsets of its first 60 seconds (its warm-up is 30).
    fn newcomer(new: impl Fn(u64, &mut Counts)) -> Vec<(u64, Onset)> {
        let s = Settings { max_routes: 4, ..settings() };
        let mut st = State::new(0, &s);
        let mut found = Vec::new();
        for t in 1..=160u64 {
            let mut c = second(&[("/a", 20 + t % 3, 0), ("/b", 30 + t % 2, 0)]);
            if t > 100 {
                new(t, &mut c);
            }
            let a = st.analyze(t, &c, &s);
            assert!(t > 100 || a.onsets.is_empty(), "steady second {t}: {:?}", a.onsets);
            found.extend(a.onsets.into_iter().map(|o| (t - 100, o)));
        }
        found
    }

    fn on_new(found: &[(u64, Onset)]) -> Vec<(u64, Metric)> {
        found.iter().filter(|(_, o)| o.scope == Scope::Route("/new".into())).map(|(t, o)| (*t, o.metric)).collect()
    }

    #[test]
    fn a_young_route_with_a_flood_or_an_outage_is_flagged_from_its_first_second() {
        // 400 rps from the start: 13 times the busiest established route.
        let flood = newcomer(|_, c| c.merge(&second(&[("/new", 400, 0)]), 64));
        assert_eq!(on_new(&flood).first(), Some(&(1, Metric::Requests)), "{flood:?}");
        let o = flood.iter().map(|(_, o)| o).find(|o| o.scope == Scope::Route("/new".into())).unwrap();
        assert!(o.young && (29.0..32.0).contains(&o.baseline), "judged against /b's 30 rps: {o:?}");
        // 80% of its requests fail (the others' 5xx rate is 0).
        let failing = newcomer(|_, c| c.merge(&second(&[("/new", 20, 16)]), 64));
        assert_eq!(on_new(&failing).first(), Some(&(1, Metric::ServerErrorRate)), "{failing:?}");
        // Ten times slower than the slowest established route.
        let slow = newcomer(|_, c| {
            for _ in 0..20 {
                c.add("/new", 64, Some(200), Some(300_000));
            }
        });
        assert_eq!(on_new(&slow).first(), Some(&(1, Metric::LatencyP50)), "{slow:?}");
    }

    #[test]
    fn a_young_route_with_ordinary_traffic_is_not_flagged() {
        for (rate, errors) in [(1, 0), (25, 0), (45, 0), (30, 1)] {
            let found = newcomer(|t, c| c.merge(&second(&[("/new", rate + t % 3, errors)]), 64));
            // (The listener may well see its own volume rise: that is its business.)
            assert!(on_new(&found).is_empty(), "{rate} rps, {errors} errors: {found:?}");
        }
        // Somewhat slower than the others (8 ms against 2): within the floor.
        let found = newcomer(|_, c| {
            for _ in 0..20 {
                c.add("/new", 64, Some(200), Some(8_000));
            }
        });
        assert!(on_new(&found).is_empty(), "{found:?}");
    }

    #[test]
    fn with_no_established_scope_nothing_is_judged_young() {
        // At start-up every scope is young together: a burst on one route in
        // the warm-up has nothing to be compared with, as before.
        let s = Settings { max_routes: 4, ..settings() };
        let mut st = State::new(0, &s);
        for t in 1..=25u64 {
            let a = st.analyze(t, &second(&[("/a", if t == 20 { 500 } else { 20 }, 0), ("/b", 20, if t == 21 { 18 } else { 0 })]), &s);
            assert!(a.onsets.is_empty() && a.scores.iter().all(|x| x.score == 0.0), "second {t}: {a:?}");
        }
    }

    #[test]
    fn state_and_snapshot_round_trip_and_refuse_garbage() {
        let s = settings();
        let mut st = State::new(0, &s);
        let mut snap = Snapshot::default();
        for t in 1..40 {
            snap = Snapshot { second: t, scopes: st.analyze(t, &second(&[("/a", 5, 1), ("/b", 7, 0)]), &s).scores };
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

    /// The defaults of `Traffic::new` for a 60-minute window, drift after 10.
    fn hour() -> Settings {
        Settings {
            params: Params { warmup: 600, long_samples: 3_600.0, ..Params::default() },
            alpha: 1.0 / 3_600.0,
            threshold: super::super::detector::threshold(0.8),
            max_routes: 4,
            idle_s: 3_600,
            drift_s: 600,
            floors: Floors::default(),
        }
    }

    /// Deterministic, roughly uniform in [-1, 1].
    fn noise(i: u64) -> f64 {
        let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
        (h as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// `level` requests a second to /a with Poisson-sized noise, and a steady /b.
    fn volume(t: u64, level: f64) -> Counts {
        let a = (level + level.sqrt() * noise(t)).round().max(0.0) as u64;
        second(&[("/a", a, 0), ("/b", 20 + t % 3, 0)])
    }

    fn score_of(a: &Analysis, route: &str) -> f32 {
        a.scores.iter().find(|x| x.scope == Scope::Route(route.into())).map_or(0.0, |x| x.score)
    }

    /// Drifts and /a's scores, each with its second.
    type Run = (Vec<(u64, Drift)>, Vec<(u64, f32)>);

    /// Runs `level(t)` for /a over seconds `from..=end`.
    fn run(s: &Settings, st: &mut State, from: u64, end: u64, level: impl Fn(u64) -> f64) -> Run {
        let mut drifts = Vec::new();
        let mut scores = Vec::new();
        for t in from..=end {
            let a = st.analyze(t, &volume(t, level(t)), s);
            scores.push((t, score_of(&a, "/a")));
            drifts.extend(a.drifts.into_iter().map(|d| (t, d)));
        }
        (drifts, scores)
    }

    #[test]
    fn a_lasting_step_in_volume_is_one_drift_after_the_drift_time_then_scores_low() {
        let s = hour();
        let mut st = State::new(0, &s);
        // Warm-up and 5 quiet minutes at 40 rps, then 400 rps for good from 1000.
        let (drifts, scores) = run(&s, &mut st, 1, 3_600, |t| if t < 1_000 { 40.0 } else { 400.0 });
        let on_a: Vec<_> = drifts.iter().filter(|(_, d)| d.scope == Scope::Route("/a".into())).collect();
        assert_eq!(on_a.len(), 1, "{drifts:?}");
        let (at, d) = on_a.first().copied().unwrap();
        assert_eq!(d.metric, Metric::Requests);
        assert!((1_599..=1_610).contains(at), "drift reported at {at}, the step was at 1000");
        assert!(d.seconds >= 600 && (35.0..45.0).contains(&d.from) && (380.0..420.0).contains(&d.to), "{d:?}");
        // The listener carries the same step; /b and other never drift.
        assert_eq!(drifts.iter().filter(|(_, d)| d.scope == Scope::Listener && d.metric == Metric::Requests).count(), 1, "{drifts:?}");
        assert_eq!(drifts.len(), 2, "{drifts:?}");
        // Flagged from the step until the drift, low ever after.
        let flagged = scores.iter().filter(|(t, x)| (1_000..=*at).contains(t) && f64::from(*x) >= s.threshold).count();
        assert!(flagged as u64 >= *at - 1_000 - 5, "{flagged} seconds flagged before the drift");
        let late: Vec<_> = scores.iter().filter(|(t, x)| *t > *at && f64::from(*x) >= s.threshold).collect();
        assert!(late.is_empty(), "flagged after the drift: {late:?}");
    }

    #[test]
    fn a_spike_and_a_three_minute_burst_are_not_drifts() {
        let s = hour();
        let mut st = State::new(0, &s);
        let level = |t: u64| if t == 1_000 || (2_000..2_180).contains(&t) { 400.0 } else { 40.0 };
        let (drifts, scores) = run(&s, &mut st, 1, 4_000, level);
        assert!(drifts.is_empty(), "{drifts:?}");
        // Both were anomalies all the same.
        let flagged = |from, to| scores.iter().filter(|(t, x)| (from..to).contains(t) && f64::from(*x) >= s.threshold).count();
        assert!(flagged(1_000, 1_001) == 1 && flagged(2_000, 2_180) >= 170, "{} {}", flagged(1_000, 1_001), flagged(2_000, 2_180));
        // A burst just short of the drift time is not a drift either.
        let (drifts, _) = run(&s, &mut st, 4_001, 6_000, |t| if (4_500..5_095).contains(&t) { 400.0 } else { 40.0 });
        assert!(drifts.is_empty(), "{drifts:?}");
    }

    #[test]
    fn steady_noise_is_not_a_drift() {
        let s = hour();
        let mut st = State::new(0, &s);
        // Three hours of a noisy /a (±50%) and 5xx blips on the side.
        for t in 1..=3 * 3_600 {
            let a = (60.0 + 30.0 * noise(t)).round() as u64;
            let a = st.analyze(t, &second(&[("/a", a, 0), ("/b", 20 + t % 3, u64::from(t % 50 == 0))]), &s);
            assert!(a.drifts.is_empty(), "second {t}: {:?}", a.drifts);
        }
    }

    #[test]
    fn drift_state_stays_bounded_and_the_old_layout_is_still_read() {
        let s = hour();
        let mut st = State::new(0, &s);
        run(&s, &mut st, 1, 700, |_| 40.0);
        let mut before = Vec::new();
        st.encode(&mut before);
        // Step, drift, a burst in progress: runs come and go, the size stays.
        let (drifts, _) = run(&s, &mut st, 701, 2_500, |t| if t < 1_000 { 40.0 } else if t < 2_400 { 400.0 } else { 4_000.0 });
        assert!(!drifts.is_empty());
        assert!(st.tracked.iter().flat_map(|t| &t.series).any(|x| *x != Series::new(s.params)), "state moved");
        let mut after = Vec::new();
        st.encode(&mut after);
        assert_eq!(after.len(), before.len());
        // Tag, a one-byte length, the name.
        let scope = |name: &str| 1 + 1 + name.len() + 8 + 6 * SERIES_ENCODED_LEN;
        assert_eq!(after.len(), 1 + 8 + 1 + 2 * (1 + 8 + 6 * SERIES_ENCODED_LEN) + scope("/a") + scope("/b"));
        assert_eq!(State::decode(&after, &s), Some(st.clone()));

        // The layout before drift detection (version 2, no runs) still decodes,
        // with the learned baselines and no run in progress.
        let mut old = Vec::new();
        let mut w = Writer(&mut old);
        w.u8(VERSION_WITHOUT_RUNS);
        w.u64(st.cursor);
        w.u8(st.tracked.len() as u8);
        for t in &st.tracked {
            t.scope.encode(&mut w);
            w.u64(t.last_seen);
            for x in &t.series {
                let mut one = Vec::new();
                x.encode(&mut Writer(&mut one));
                w.0.extend_from_slice(one.get(..one.len() - super::super::series::RUN_ENCODED_LEN).unwrap());
            }
        }
        let back = State::decode(&old, &s).expect("version 2 decodes");
        assert_eq!(back.cursor, st.cursor);
        let mut again = Vec::new();
        back.encode(&mut again);
        assert_eq!(again.len(), after.len());
        assert_eq!(State::decode(&[9, 0, 0], &s), None, "unknown version");
    }

    #[test]
    fn an_outage_for_good_drifts_and_so_does_the_recovery() {
        let s = hour();
        let mut st = State::new(0, &s);
        // /a fails half its requests from 1000 to 2000 (a drift at 1600), then
        // recovers (the baseline comes back down by 2600), then fails again.
        let errors = |t: u64| if (1_000..2_000).contains(&t) || t >= 3_000 { 20 } else { 0 };
        let mut drifts = Vec::new();
        let mut again = Vec::new();
        for t in 1..=3_100u64 {
            let a = st.analyze(t, &second(&[("/a", 40, errors(t)), ("/b", 20 + t % 3, 0)]), &s);
            drifts.extend(a.drifts.iter().filter(|d| d.scope == Scope::Route("/a".into())).map(|d| (t, d.metric, d.from, d.to)));
            if t >= 3_000 {
                again.push(score_of(&a, "/a"));
            }
        }
        let rate: Vec<_> = drifts.iter().filter(|d| d.1 == Metric::ServerErrorRate).collect();
        assert_eq!(rate.len(), 2, "{drifts:?}");
        assert!(rate.first().is_some_and(|d| (1_599..1_610).contains(&d.0) && d.2 < 0.01 && (d.3 - 0.5).abs() < 0.01), "{rate:?}");
        assert!(rate.get(1).is_some_and(|d| (2_599..2_610).contains(&d.0) && (d.2 - 0.5).abs() < 0.05 && d.3 < 0.01), "{rate:?}");
        // The baseline is back at 0%: the next outage is flagged at once.
        assert!(again.first().is_some_and(|&x| f64::from(x) >= s.threshold), "{again:?}");
    }
}
