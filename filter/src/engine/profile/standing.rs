//! What an identity's profile keeps besides its behaviour: its recent risk
//! scores (history and trend), what operators said about it (a threshold
//! offset and up to `PATTERNS` marked patterns), and whether its normal has
//! drifted. It travels inside the profile record, so it is bounded like the
//! profiles and reaches every worker on the same sync, at no extra host call.

use crate::engine::codec::{Reader, Writer};

/// Recent risk scores kept per identity.
pub const HISTORY: usize = 8;
/// Operator-marked patterns kept per identity (the oldest makes room).
pub const PATTERNS: usize = 4;
/// Per-request smoothing of the risk: fast (~3 requests) and slow (~30).
const FAST_ALPHA: f32 = 0.3;
const SLOW_ALPHA: f32 = 0.03;
/// Per-request smoothing of "this request deviated" (~10 requests).
const DEVIATING_ALPHA: f32 = 0.1;
/// The share of recent requests deviating that counts as a shifted normal.
pub const DRIFT_SHARE: f32 = 0.5;

/// The largest encoding, checked by a test.
pub const MAX_ENCODED: usize = 1 + HISTORY * 6 + 4 + 4 + 4 + 2 + 2 + 1 + PATTERNS * 14 + 4 + 4 + 2 + 4 + EPISODE_BYTES;
const EPISODE_BYTES: usize = 4 + 4 + 4 + 2 + 4 + 4 + 4 + 4 + 4 + 4;
/// An episode's held score halves every this many seconds without a
/// request that renews it: an attack under way stays suspect for minutes, a
/// one-off oddity fades.
pub const EPISODE_HALF_LIFE_S: f64 = 300.0;
/// A request deviating this share of the gate on its own continues an episode.
pub const CONTINUES_AT: f64 = 0.8;
/// A request that continues the episode only by its marks, from a device the
/// identity knows, and is otherwise ordinary for it (its deviation without
/// place and device under this), is calm: its behaviour is back to its own
/// baseline.
pub const CALM_BELOW: f64 = 0.3;
/// An episode whose continuing requests have all been calm for this long is
/// over: a traveller who lands and goes about her usual routine is herself.
/// An attacker's own requests keep deviating, or come from a device new to
/// the identity, and each such one unsettles the episode again. Time, not a
/// count, so that workers' views merge (the latest unsettling wins).
pub const CALM_ENDS_S: u32 = 30;
/// A request deviating this share of the gate, and unusual in what it does
/// (its deviation without place and device at least `CALM_BELOW`), strains
/// the identity: one such request is an oddity, a run of them is the
/// deviation a single request only nearly shows (a thief whose requests sit
/// at 0.6 against a gate of 0.7 is still a thief; so is an account that
/// ramps up its enumeration slowly enough that no request crosses).
pub const STRAINS_AT: f64 = 0.85;
/// A straining request in a context new to the identity (a mark) adds 1,
/// one without adds this: a run needs twice as many requests to open an
/// episode from the identity's own device and place.
pub const UNMARKED_STRAIN: f32 = 0.5;
/// The strain halves every this many seconds...
pub const STRAIN_HALF_LIFE_S: f64 = 30.0;
/// ...and at this much (about three marked straining requests within half
/// a minute, or six unmarked) it opens an episode at the gate, or renews it.
pub const STRAIN_OPENS: f32 = 2.5;
/// Hostile bytes aside, the strain never exceeds this.
const STRAIN_CAP: f32 = 8.0;
/// Below this held score the episode is over.
/// Half the default deviation threshold: a held score at or above it never
/// speaks for "ordinary" in the ensemble.
pub const EPISODE_END: f32 = 0.35;

/// A deviation that has not ended: the identity stays suspect. Requests that
/// continue it (the same new country, network or device as the one that
/// opened it, or a deviation of their own) score at least what the episode
/// holds, so an attacker cannot dilute a takeover with a few ordinary-looking
/// requests, and the victim's own routine (none of the marks, no deviation)
/// neither closes it nor is held by it. It ends when it fades, when an
/// operator says so, or after `CALM_ENDS_S` of calm continuations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Episode {
    /// The peak deviation (0: no episode).
    pub level: f32,
    /// When the peak was last renewed, and when the episode opened (s).
    pub peak_s: u32,
    pub opened_s: u32,
    /// The opening request's unusual context (0: none): its country when new
    /// to the identity, its network and its device when new (or the device a
    /// session moved to).
    pub country: u16,
    pub asn: u32,
    pub device: u32,
    /// When an operator last ended an episode, or the identity's calm did
    /// (s): a worker's older copy of it must not come back at the next merge.
    pub cleared_s: u32,
    /// When a continuing request was last not calm, or the peak renewed (s).
    pub unsettled_s: u32,
    /// Straining requests before an episode opens (`STRAINS_AT`), fading
    /// with `STRAIN_HALF_LIFE_S` from `strain_s`.
    pub strain: f32,
    pub strain_s: u32,
}

/// The context a request arrives in, as an episode compares it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Context {
    pub country: u16,
    pub asn: u32,
    pub device: u32,
}

impl Episode {
    pub fn is_open(&self) -> bool {
        self.level > 0.0
    }

    /// What the episode holds at `at_s`: its peak, halved per half-life since renewed.
    pub fn held(&self, at_s: u32) -> f64 {
        // A peak from the future (a clock gone wrong, hostile bytes) holds nothing.
        if !self.is_open() || self.peak_s > at_s.saturating_add(60) {
            return 0.0;
        }
        let idle = f64::from(at_s.saturating_sub(self.peak_s));
        f64::from(self.level) * (-idle / EPISODE_HALF_LIFE_S).exp2()
    }

    /// The strain at `at_s`, faded since it was last added to.
    pub fn strain_at(&self, at_s: u32) -> f32 {
        if self.strain_s > at_s.saturating_add(60) {
            return 0.0;
        }
        let idle = f64::from(at_s.saturating_sub(self.strain_s));
        (f64::from(self.strain) * (-idle / STRAIN_HALF_LIFE_S).exp2()) as f32
    }

    /// Whether a request in `ctx` whose own deviation is `own` carries the
    /// episode on: it shares a mark, or deviates nearly as much itself (0.8
    /// of the gate; an ordinary request after a one-off oddity does not).
    pub fn continued_by(&self, ctx: &Context, own: f64, gate: f64) -> bool {
        let shares = |mark: u32, value: u32| mark != 0 && mark == value;
        shares(u32::from(self.country), u32::from(ctx.country))
            || shares(self.asn, ctx.asn)
            || shares(self.device, ctx.device)
            || own >= CONTINUES_AT * gate
    }
}

/// An operator's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Label {
    FalsePositive,
    ConfirmedThreat,
}

impl Label {
    pub fn as_str(self) -> &'static str {
        match self {
            Label::FalsePositive => "false_positive",
            Label::ConfirmedThreat => "confirmed_threat",
        }
    }

    pub fn parse(s: &str) -> Option<Label> {
        match s {
            "false_positive" => Some(Label::FalsePositive),
            "confirmed_threat" => Some(Label::ConfirmedThreat),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scored {
    pub at_s: u32,
    pub permille: u16,
}

/// A decision an operator marked: the route (hash), the detectors that
/// weighed in (a bit mask, see `feedback::mask`), and what to do when the
/// same pattern comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern {
    pub route: u32,
    pub mask: u16,
    pub label: Label,
    /// False positive: the pattern is allowed up to this risk (the marked
    /// risk plus a margin); above it, it is no longer the same pattern.
    pub ceiling: u16,
    /// Confirmed threat: the decision the pattern gets at least.
    pub decision: u8,
    pub at_s: u32,
}

impl Pattern {
    /// Whether a request on `route` whose detectors `mask` weighed in is
    /// this pattern: the same route, and nothing weighed in that did not
    /// then (a false positive) or something that did then (a threat).
    pub fn matches(&self, route: u32, mask: u16) -> bool {
        self.route == route
            && match self.label {
                Label::FalsePositive => mask & !self.mask == 0,
                Label::ConfirmedThreat => mask & self.mask != 0,
            }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Standing {
    /// Newest last.
    pub history: Vec<Scored>,
    pub fast: f32,
    pub slow: f32,
    /// Added to the decision thresholds for this identity (feedback).
    pub offset: f32,
    pub false_positives: u16,
    pub threats: u16,
    pub patterns: Vec<Pattern>,
    /// Smoothed share of requests whose behaviour deviated.
    pub deviating: f32,
    /// Since when that share has been at or above `DRIFT_SHARE` (0: not).
    pub deviating_since_s: u32,
    pub drifts: u16,
    pub rebased_s: u32,
    pub episode: Episode,
}

impl Standing {
    /// Scores a request against the open episode, and opens or renews one.
    /// `own` is the request's own deviation, `gate` the deviation threshold,
    /// `marks` the request's unusual context (what is new to the identity).
    /// `rest` is the request's deviation without its place and device
    /// components, or 1 from a device new to the identity (`CALM_BELOW`);
    /// `beyond` the same without the override (what the request does, not
    /// where from), which decides whether it strains (`STRAINS_AT`).
    /// Returns the score the request stands at (at least `own`), whether it
    /// continues an episode, and whether it opened one.
    #[allow(clippy::too_many_arguments)]
    pub fn episode_score(
        &mut self,
        at_ms: u64,
        own: f64,
        rest: f64,
        beyond: f64,
        gate: f64,
        ctx: &Context,
        marks: &Context,
    ) -> (f64, bool, bool) {
        let at_s = (at_ms / 1000) as u32;
        let e = &mut self.episode;
        let held = e.held(at_s);
        if e.is_open() && held < f64::from(EPISODE_END) {
            *e = Episode { cleared_s: e.cleared_s, ..Episode::default() };
        }
        let mut continues = e.is_open() && e.continued_by(ctx, own, gate);
        if continues {
            if own >= gate || rest >= CALM_BELOW {
                e.unsettled_s = e.unsettled_s.max(at_s);
            } else if at_s.saturating_sub(e.unsettled_s.max(e.peak_s)) >= CALM_ENDS_S {
                // Over, for every worker: no copy of this episode (renewed
                // at or before its last peak) comes back at a merge.
                *e = Episode { cleared_s: e.cleared_s.max(e.peak_s), ..Episode::default() };
                continues = false;
            }
        }
        let mut score = if continues { own.max(held) } else { own };
        let marked = marks.country != 0 || marks.asn != 0 || marks.device != 0;
        let mut peak = own;
        if own >= STRAINS_AT * gate && beyond >= CALM_BELOW {
            let step = if marked { 1.0 } else { UNMARKED_STRAIN };
            e.strain = (e.strain_at(at_s) + step).min(STRAIN_CAP);
            e.strain_s = at_s;
            if e.strain >= STRAIN_OPENS {
                peak = own.max(gate);
                score = score.max(peak);
            }
        }
        let mut opened = false;
        if peak >= gate && peak >= held {
            if !e.is_open() {
                opened = true;
                *e = Episode { opened_s: at_s, country: marks.country, asn: marks.asn, device: marks.device, ..*e };
            } else {
                // A renewed peak may bring marks of its own.
                e.country = if e.country == 0 { marks.country } else { e.country };
                e.asn = if e.asn == 0 { marks.asn } else { e.asn };
                e.device = if e.device == 0 { marks.device } else { e.device };
            }
            e.level = peak as f32;
            e.peak_s = at_s;
            e.unsettled_s = at_s;
        }
        (score, continues, opened)
    }

    /// The operator said the deviation is normal (a false positive): the
    /// episode is over.
    pub fn end_episode(&mut self, at_ms: u64) {
        self.episode = Episode { cleared_s: (at_ms / 1000) as u32, ..Episode::default() };
    }

    /// Merges another worker's view of the episode into this (shared) copy
    /// at `at_s`: the one holding more now wins, marks missing on one side
    /// are taken from the other, and an episode renewed before an operator
    /// ended episodes does not come back.
    pub fn merge_episode(&mut self, local: &Episode, at_s: u32) {
        let shared = &mut self.episode;
        let cleared = shared.cleared_s.max(local.cleared_s);
        // A run split over workers: the larger strain either side holds (each
        // worker takes the merge at its sync, so the count goes on from it).
        let strain = |e: &Episode| if e.strain_s > cleared { e.strain_at(at_s) } else { 0.0 };
        let strained = strain(shared).max(strain(local));
        if local.is_open() && local.peak_s > cleared {
            let other = *shared;
            if !other.is_open() || local.held(at_s) > other.held(at_s) {
                *shared = *local;
            }
            if other.is_open() {
                shared.country = if shared.country == 0 { other.country } else { shared.country };
                shared.asn = if shared.asn == 0 { other.asn } else { shared.asn };
                shared.device = if shared.device == 0 { other.device } else { shared.device };
                shared.unsettled_s = shared.unsettled_s.max(other.unsettled_s);
                shared.opened_s = shared.opened_s.min(other.opened_s).max(1);
            }
        }
        if shared.is_open() && local.is_open() {
            // Whichever view was kept, the latest unsettling request counts.
            shared.unsettled_s = shared.unsettled_s.max(local.unsettled_s);
        }
        shared.cleared_s = cleared;
        if shared.is_open() && shared.peak_s <= cleared {
            *shared = Episode { cleared_s: cleared, ..Episode::default() };
        }
        (shared.strain, shared.strain_s) = if strained > 0.0 { (strained, at_s) } else { (0.0, 0) };
    }

    /// Records a decided request's risk, and whether its behaviour deviated.
    pub fn record(&mut self, at_ms: u64, risk: f64, deviated: bool) {
        let risk = risk.clamp(0.0, 1.0) as f32;
        if self.history.len() >= HISTORY {
            self.history.remove(0);
        }
        let at_s = (at_ms / 1000) as u32;
        self.history.push(Scored { at_s, permille: (risk * 1000.0).round() as u16 });
        if self.history.len() == 1 && self.fast == 0.0 && self.slow == 0.0 {
            (self.fast, self.slow) = (risk, risk);
        } else {
            self.fast += FAST_ALPHA * (risk - self.fast);
            self.slow += SLOW_ALPHA * (risk - self.slow);
        }
        self.deviating += DEVIATING_ALPHA * (if deviated { 1.0 } else { 0.0 } - self.deviating);
        if self.deviating < DRIFT_SHARE {
            self.deviating_since_s = 0;
        } else if self.deviating_since_s == 0 {
            self.deviating_since_s = at_s.max(1);
        }
    }

    /// Rising (> 0) or falling risk: the fast average over the slow one.
    pub fn trend(&self) -> f64 {
        f64::from(self.fast - self.slow)
    }

    /// Whether the identity has deviated for `drift_ms` on end: its normal
    /// has shifted for good. The caller rebases the profile and reports it.
    pub fn drifted(&self, at_ms: u64, drift_ms: u64) -> bool {
        self.deviating_since_s != 0 && at_ms / 1000 >= u64::from(self.deviating_since_s) + drift_ms / 1000
    }

    /// The profile was rebased at `at_ms`: the drift is over.
    pub fn rebased(&mut self, at_ms: u64) {
        self.drifts = self.drifts.saturating_add(1);
        self.rebased_s = (at_ms / 1000) as u32;
        self.deviating = 0.0;
        self.deviating_since_s = 0;
    }

    /// Takes an operator's verdict: moves the offset by `step` (up for a
    /// false positive, down for a threat) within `bounds`, and keeps the
    /// pattern if there is one.
    pub fn learn_feedback(&mut self, label: Label, step: f64, bounds: (f64, f64), pattern: Option<Pattern>) {
        let delta = match label {
            Label::FalsePositive => {
                self.false_positives = self.false_positives.saturating_add(1);
                step
            }
            Label::ConfirmedThreat => {
                self.threats = self.threats.saturating_add(1);
                -step
            }
        };
        self.offset = (f64::from(self.offset) + delta).clamp(bounds.0, bounds.1) as f32;
        if let Some(p) = pattern {
            self.patterns.retain(|q| !(q.route == p.route && q.mask == p.mask));
            if self.patterns.len() >= PATTERNS {
                self.patterns.remove(0);
            }
            self.patterns.push(p);
        }
    }

    /// The newest marked pattern this request matches.
    pub fn pattern_for(&self, route: u32, mask: u16) -> Option<Pattern> {
        self.patterns.iter().rev().find(|p| p.matches(route, mask)).copied()
    }

    pub fn encode(&self, w: &mut Writer) {
        w.u8(self.history.len().min(HISTORY) as u8);
        for s in self.history.iter().take(HISTORY) {
            w.u32(s.at_s);
            w.u16(s.permille);
        }
        w.f32(self.fast);
        w.f32(self.slow);
        w.f32(self.offset);
        w.u16(self.false_positives);
        w.u16(self.threats);
        w.u8(self.patterns.len().min(PATTERNS) as u8);
        for p in self.patterns.iter().take(PATTERNS) {
            w.u32(p.route);
            w.u16(p.mask);
            w.u8(match p.label {
                Label::FalsePositive => 0,
                Label::ConfirmedThreat => 1,
            });
            w.u16(p.ceiling);
            w.u8(p.decision);
            w.u32(p.at_s);
        }
        w.f32(self.deviating);
        w.u32(self.deviating_since_s);
        w.u16(self.drifts);
        w.u32(self.rebased_s);
        let e = &self.episode;
        w.f32(e.level);
        w.u32(e.peak_s);
        w.u32(e.opened_s);
        w.u16(e.country);
        w.u32(e.asn);
        w.u32(e.cleared_s);
        w.u32(e.device);
        w.u32(e.unsettled_s);
        w.f32(e.strain);
        w.u32(e.strain_s);
    }

    /// `version`: the profile's encoding version (the episode from 3 on,
    /// its device mark from 4 on, its strain from 5 on).
    pub fn decode(r: &mut Reader, version: u8) -> Option<Standing> {
        let n = usize::from(r.u8()?);
        if n > HISTORY {
            return None;
        }
        let mut s = Standing::default();
        for _ in 0..n {
            s.history.push(Scored { at_s: r.u32()?, permille: r.u16()?.min(1000) });
        }
        (s.fast, s.slow, s.offset) = (r.f32()?, r.f32()?, r.f32()?);
        (s.false_positives, s.threats) = (r.u16()?, r.u16()?);
        let n = usize::from(r.u8()?);
        if n > PATTERNS {
            return None;
        }
        for _ in 0..n {
            let route = r.u32()?;
            let mask = r.u16()?;
            let label = match r.u8()? {
                0 => Label::FalsePositive,
                1 => Label::ConfirmedThreat,
                _ => return None,
            };
            s.patterns.push(Pattern { route, mask, label, ceiling: r.u16()?.min(1000), decision: r.u8()?.min(3), at_s: r.u32()? });
        }
        s.deviating = r.f32()?;
        s.deviating_since_s = r.u32()?;
        s.drifts = r.u16()?;
        s.rebased_s = r.u32()?;
        if version >= 3 {
            s.episode = Episode {
                level: r.f32()?,
                peak_s: r.u32()?,
                opened_s: r.u32()?,
                country: r.u16()?,
                asn: r.u32()?,
                cleared_s: r.u32()?,
                ..Episode::default()
            };
        }
        if version >= 4 {
            s.episode.device = r.u32()?;
            s.episode.unsettled_s = r.u32()?;
        }
        if version >= 5 {
            s.episode.strain = r.f32()?;
            s.episode.strain_s = r.u32()?;
        }
        let unit = |x: f32| x.is_finite() && (0.0..=1.0).contains(&x);
        (unit(s.fast) && unit(s.slow) && unit(s.deviating) && unit(s.episode.level)
            && s.episode.strain.is_finite()
            && (0.0..=STRAIN_CAP).contains(&s.episode.strain)
            && s.offset.is_finite() && s.offset.abs() <= 1.0).then_some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATE: f64 = 0.7;

    #[test]
    fn calm_continuations_end_an_episode_and_a_deviating_one_unsettles_it() {
        let (home, away) = (Context { country: 1, asn: 0, device: 0 }, Context { country: 2, asn: 0, device: 0 });
        let mut s = Standing::default();
        let t = 1_000_000_u64;
        let (_, _, opened) = s.episode_score(t, 0.9, 0.5, 0.0, GATE, &away, &away);
        assert!(opened);
        // Calm requests from the marked country for 20 s, then one deviating:
        for i in 1..=10u64 {
            let (score, continues, _) = s.episode_score(t + i * 2_000, 0.5, 0.1, 0.0, GATE, &away, &Context::default());
            assert!(continues && score > 0.8);
        }
        let (_, continues, _) = s.episode_score(t + 22_000, 0.6, 0.45, 0.0, GATE, &away, &Context::default());
        assert!(continues, "a deviating continuation");
        // ...so 30 s of calm count from there, not from the peak.
        let (_, continues, _) = s.episode_score(t + 40_000, 0.5, 0.1, 0.0, GATE, &away, &Context::default());
        assert!(continues && s.episode.is_open(), "unsettled at 22 s: still open at 40 s");
        let (score, continues, _) = s.episode_score(t + 53_000, 0.5, 0.1, 0.0, GATE, &away, &Context::default());
        assert!(!continues && !s.episode.is_open() && (score - 0.5).abs() < 1e-9, "over at 53 s");
        // Over for every worker: another worker's older copy does not come back.
        let mut other = Standing::default();
        other.episode_score(t, 0.9, 0.5, 0.0, GATE, &away, &away);
        s.merge_episode(&other.episode, (t / 1000 + 60) as u32);
        assert!(!s.episode.is_open());
        // The victim's own routine at home never continued it.
        let (_, continues, _) = s.episode_score(t + 60_000, 0.1, 0.1, 0.0, GATE, &home, &Context::default());
        assert!(!continues);
    }

    #[test]
    fn the_latest_unsettling_request_on_any_worker_counts() {
        let away = Context { country: 2, asn: 0, device: 0 };
        let (mut a, mut b) = (Standing::default(), Standing::default());
        let t = 1_000_000_u64;
        a.episode_score(t, 0.9, 0.5, 0.0, GATE, &away, &away);
        b.episode = a.episode;
        // Worker b sees a deviating continuation at 20 s; worker a only calm ones.
        b.episode_score(t + 20_000, 0.6, 0.5, 0.0, GATE, &away, &Context::default());
        a.episode_score(t + 10_000, 0.5, 0.1, 0.0, GATE, &away, &Context::default());
        a.merge_episode(&b.episode, (t / 1000 + 21) as u32);
        assert_eq!(a.episode.unsettled_s, (t / 1000 + 20) as u32);
        let (_, continues, _) = a.episode_score(t + 35_000, 0.5, 0.1, 0.0, GATE, &away, &Context::default());
        assert!(continues && a.episode.is_open(), "15 s after b's unsettling request: not yet");
    }

    #[test]
    fn a_run_of_near_deviations_in_a_new_context_opens_an_episode_one_does_not() {
        let device = Context { country: 0, asn: 0, device: 9 };
        let t = 1_000_000_u64;
        // One near-deviation from a new device is an oddity; another a minute
        // later finds the first faded.
        let mut s = Standing::default();
        let (score, _, opened) = s.episode_score(t, 0.62, 1.0, 0.5, GATE, &device, &device);
        assert!(!opened && (score - 0.62).abs() < 1e-9);
        let (_, _, opened) = s.episode_score(t + 60_000, 0.62, 1.0, 0.5, GATE, &device, &device);
        assert!(!opened && !s.episode.is_open());
        // A thief at 0.6 from the new device, half a second apart: the third opens at the gate...
        let mut s = Standing::default();
        let mut opened_at = None;
        for i in 0..6u64 {
            let (score, _, opened) = s.episode_score(t + i * 500, 0.62, 1.0, 0.5, GATE, &device, &device);
            if opened {
                assert!((score - GATE).abs() < 1e-9, "{score}");
                opened_at = Some(i);
                break;
            }
        }
        assert_eq!(opened_at, Some(2));
        // ...and its quieter requests from that device stand at what it holds.
        let (score, continues, _) = s.episode_score(t + 5_000, 0.45, 1.0, 0.3, GATE, &device, &Context::default());
        assert!(continues && score > 0.69, "{score}");
    }

    #[test]
    fn a_travellers_routine_does_not_strain_and_odd_requests_apart_do_not_add_up() {
        let (home, away) = (Context { country: 1, asn: 0, device: 0 }, Context { country: 2, asn: 0, device: 0 });
        let t = 1_000_000_u64;
        // A traveller: a new country, and her usual routine from there.
        let mut s = Standing::default();
        for i in 0..60u64 {
            let (_, _, opened) = s.episode_score(t + i * 1_000, 0.66, 0.1, 0.1, GATE, &away, &away);
            assert!(!opened);
        }
        assert!(!s.episode.is_open() && s.episode.strain == 0.0);
        // At home, an odd request every 20 s, for ten minutes: each an oddity.
        for i in 0..30u64 {
            let (_, _, opened) = s.episode_score(t + 60_000 + i * 20_000, 0.66, 0.5, 0.5, GATE, &home, &Context::default());
            assert!(!opened, "request {i}: strain {}", s.episode.strain);
        }
    }

    #[test]
    fn a_ramp_that_never_crosses_the_gate_is_held_by_its_run() {
        let home = Context { country: 1, asn: 0, device: 0 };
        let t = 1_000_000_u64;
        // An account on its own device and place, its requests at 0.62 a second apart: twice the run a mark needs.
        let mut s = Standing::default();
        let mut opened_at = None;
        for i in 0..10u64 {
            let (score, _, opened) = s.episode_score(t + i * 1_000, 0.62, 0.5, 0.5, GATE, &home, &Context::default());
            if opened {
                assert!((score - GATE).abs() < 1e-9);
                opened_at = Some(i);
                break;
            }
        }
        assert_eq!(opened_at, Some(5));
        // Two minutes on, its run goes on and keeps the episode at the gate
        // (renewed, not faded), and its requests between stand at it.
        for i in 0..60u64 {
            let own = if i % 2 == 0 { 0.62 } else { 0.58 };
            let (score, continues, _) = s.episode_score(t + 6_000 + i * 2_000, own, 0.5, 0.5, GATE, &home, &Context::default());
            assert!(continues && score > 0.69, "request {i}: {score}");
        }
    }

    #[test]
    fn a_run_split_over_workers_goes_on_from_the_merge_and_a_clear_stops_it() {
        let device = Context { country: 0, asn: 0, device: 9 };
        let t = 1_000_000_u64;
        let (mut a, mut b) = (Standing::default(), Standing::default());
        a.episode_score(t, 0.62, 1.0, 0.5, GATE, &device, &device);
        a.episode_score(t + 500, 0.62, 1.0, 0.5, GATE, &device, &device);
        b.episode_score(t + 700, 0.62, 1.0, 0.5, GATE, &device, &device);
        // b syncs first (shared = b), then a merges into it: the larger strain stays.
        let mut shared = b.clone();
        shared.merge_episode(&a.episode, (t / 1000 + 1) as u32);
        assert!(shared.episode.strain > 1.9, "{}", shared.episode.strain);
        let (_, _, opened) = shared.episode_score(t + 1_500, 0.62, 1.0, 0.5, GATE, &device, &device);
        assert!(opened, "the third straining request on either worker opens it");
        // An operator ended the identity's episodes: a worker's older strain does not come back.
        let mut cleared = Standing::default();
        cleared.end_episode(t + 2_000);
        cleared.merge_episode(&a.episode, (t / 1000 + 3) as u32);
        assert_eq!(cleared.episode.strain, 0.0);
    }

    #[test]
    fn history_is_bounded_and_the_trend_follows_the_risk() {
        let mut s = Standing::default();
        for i in 0..50 {
            s.record(i * 1000, 0.1, false);
        }
        assert_eq!(s.history.len(), HISTORY);
        assert!(s.trend().abs() < 0.01);
        for i in 50..55 {
            s.record(i * 1000, 0.9, false);
        }
        assert!(s.trend() > 0.3, "rising: {}", s.trend());
        assert_eq!(s.history.last(), Some(&Scored { at_s: 54, permille: 900 }));
    }

    #[test]
    fn sustained_deviation_is_a_drift_a_passing_one_is_not() {
        let drift_ms = 600_000;
        let mut s = Standing::default();
        // A burst of 20 deviating requests in a minute, then normal again.
        for i in 0..20 {
            s.record(i * 3000, 0.6, true);
        }
        for i in 20..200 {
            s.record(i * 3000, 0.1, false);
            assert!(!s.drifted(i * 3000, drift_ms));
        }
        // Deviating on end: a drift once drift_ms has passed, not before.
        let t0 = 200 * 3000;
        let mut first = None;
        for i in 0..400u64 {
            let t = t0 + i * 3000;
            s.record(t, 0.6, true);
            if s.drifted(t, drift_ms) {
                first = Some(t);
                s.rebased(t);
                break;
            }
        }
        let first = first.expect("a drift");
        assert!(first - t0 >= drift_ms && first - t0 < drift_ms + 60_000, "{}", first - t0);
        assert_eq!(s.drifts, 1);
        assert!(!s.drifted(first + 1000, drift_ms));
    }

    #[test]
    fn feedback_moves_the_offset_within_bounds_and_keeps_few_patterns() {
        let mut s = Standing::default();
        for i in 0..20 {
            let p = Pattern { route: i, mask: 2, label: Label::FalsePositive, ceiling: 700, decision: 1, at_s: i };
            s.learn_feedback(Label::FalsePositive, 0.05, (-0.1, 0.2), Some(p));
        }
        assert!((s.offset - 0.2).abs() < 1e-6);
        assert_eq!(s.patterns.len(), PATTERNS);
        assert_eq!(s.patterns.last().map(|p| p.route), Some(19));
        for _ in 0..20 {
            s.learn_feedback(Label::ConfirmedThreat, 0.05, (-0.1, 0.2), None);
        }
        assert!((s.offset + 0.1).abs() < 1e-6);
        assert_eq!((s.false_positives, s.threats), (20, 20));
    }

    #[test]
    fn a_false_positive_pattern_matches_only_with_nothing_new() {
        let fp = Pattern { route: 7, mask: 0b0010, label: Label::FalsePositive, ceiling: 700, decision: 1, at_s: 0 };
        assert!(fp.matches(7, 0b0010));
        assert!(fp.matches(7, 0));
        assert!(!fp.matches(7, 0b0110), "a new detector weighed in");
        assert!(!fp.matches(8, 0b0010));
        let threat = Pattern { label: Label::ConfirmedThreat, ..fp };
        assert!(threat.matches(7, 0b0110));
        assert!(!threat.matches(7, 0b0100));
    }

    #[test]
    fn encoding_round_trips_and_refuses_nonsense() {
        let mut s = Standing::default();
        for i in 0..12 {
            s.record(i * 1000, 0.5, i % 2 == 0);
        }
        for i in 0..6 {
            let p = Pattern { route: i, mask: 3, label: Label::ConfirmedThreat, ceiling: 1000, decision: 3, at_s: 9 };
            s.learn_feedback(Label::ConfirmedThreat, 0.05, (-0.1, 0.2), Some(p));
        }
        let mut bytes = Vec::new();
        s.encode(&mut Writer(&mut bytes));
        assert_eq!(bytes.len(), MAX_ENCODED);
        let mut r = Reader(&bytes);
        assert_eq!(Standing::decode(&mut r, 5), Some(s.clone()));
        assert!(r.is_empty());
        let mut bad = s;
        bad.offset = f32::NAN;
        let mut bytes = Vec::new();
        bad.encode(&mut Writer(&mut bytes));
        assert_eq!(Standing::decode(&mut Reader(&bytes), 5), None);
    }
}
