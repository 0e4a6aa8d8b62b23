//! What a profile learns about one identity, how one request teaches it, and
//! its compact binary form in shared data (at most `MAX_ENCODED` bytes).
//!
//! Long-run weights fade with time (`exp(-dt / window)`), so a profile always
//! represents about `profile_window_hours` of history and old behaviour fades
//! smoothly. "Recent" weights fade per request instead (the last ~10), which
//! is what the recent mix is compared against.

use super::activity::{self, Activity};
use super::standing::Standing;
use super::stats::Moments;
use crate::engine::features::Method;
use crate::engine::codec::{Reader, Writer};

/// Endpoints (route templates) tracked by name; the rest share "other".
pub const TOP_ROUTES: usize = 12;
pub const TOP_COUNTRIES: usize = 4;
pub const TOP_ASNS: usize = 4;
/// Devices (user-agent or fingerprint hashes) an identity is known on.
pub const TOP_DEVICES: usize = 3;
/// Session tokens remembered with the device each started on.
pub const RECENT_TOKENS: usize = 3;
pub const METHODS: usize = 8;
pub const HOURS: usize = 24;
/// 1xx/2xx, 3xx, 401/403, 404, other 4xx, 5xx.
pub const STATUS_CLASSES: usize = 6;
/// Per-request fading of the recent mix: about the last 10 requests.
pub const RECENT_KEEP: f32 = 0.9;
/// Per-request smoothing of the recent request gap (about the last 4) and failure rate.
pub const RECENT_GAP_ALPHA: f64 = 0.4;
pub const RECENT_FAIL_ALPHA: f64 = 0.2;

/// The largest encoding (all lists full), checked by a test.
pub const MAX_ENCODED: usize = 1
    + 4 + 8 + 4
    + 1 + TOP_ROUTES * 12 + 8
    + METHODS * 4
    + HOURS * 4
    + 12 + 4
    + 12
    + STATUS_CLASSES * 4 + 4
    + 4 + 8 + 4 + 12 * 3
    + 1 + TOP_COUNTRIES * 6 + 2 + 8
    + 1 + TOP_ASNS * 8
    + super::standing::MAX_ENCODED
    + activity::ENCODED
    + 1 + TOP_DEVICES * 8
    + RECENT_TOKENS * 8;

// A profile slot (17-byte slot header + profile) fits in 1 KiB, checked at compile time.
const _: () = assert!(MAX_ENCODED + 17 <= 1024);

/// 2 added the standing (risk history, feedback, drift), 3 its episode and
/// the activity, 4 devices (the session's and the identity's), 5 the
/// episode's strain; 1 to 4 are still read.
pub const VERSION: u8 = 5;

/// What `learn_present` saw that `learn_baseline` needs later: the gap since
/// the previous request, and whether the request came in order.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Present {
    pub gap: Option<f64>,
    pub in_order: bool,
    /// The activity minute this request closed, if it opened a new one.
    pub closed: Option<(activity::Minute, f32)>,
}

/// What one request contributes to its identity's profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub time_ms: u64,
    /// Hash of the route template (names are not stored, only compared).
    pub route: u32,
    pub method: Method,
    pub request_bytes: u64,
    /// Hash of the session cookie or header, when one is configured and sent.
    pub session: Option<u32>,
    /// ISO 3166 alpha-2 country, packed in two bytes.
    pub country: Option<u16>,
    pub asn: Option<u32>,
    /// Keyed hash of the device header (`behavioral_profiling.device_header`,
    /// the user agent by default), when sent.
    pub device: Option<u32>,
    /// The object the request names (keyed hash and numeric value).
    pub object: Option<crate::engine::features::ObjectRef>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Weighted<K> {
    pub key: K,
    pub long: f32,
    pub recent: f32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Session {
    /// Hash of the session token; 0 when sessions are inferred from gaps.
    pub id: u32,
    pub start_ms: u64,
    pub requests: u32,
}

/// How time and sessions are read; from the configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Learning {
    /// The decay time constant: `profile_window_hours` in ms.
    pub window_ms: f64,
    /// An inferred session ends after this long without a request.
    pub session_gap_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// Requests observed, ever (cold start is judged on this).
    pub observations: u32,
    pub last_ms: u64,
    /// Decayed number of requests: what the profile is worth keeping.
    pub weight: f32,
    pub routes: Vec<Weighted<u32>>,
    pub other_route: Weighted<()>,
    pub methods: [f32; METHODS],
    pub hours: [f32; HOURS],
    /// ln(ms between requests + 1).
    pub gap: Moments,
    pub recent_gap: f32,
    /// ln(request bytes + 1).
    pub size: Moments,
    pub status: [f32; STATUS_CLASSES],
    /// Recent share of 401/403/404 answers.
    pub recent_fail: f32,
    pub session: Session,
    /// Per finished session: ln(requests), ln(minutes + 1), ln(requests per minute).
    pub session_requests: Moments,
    pub session_minutes: Moments,
    pub session_rate: Moments,
    pub countries: Vec<Weighted<u16>>,
    pub last_country: u16,
    pub last_country_ms: u64,
    pub asns: Vec<Weighted<u32>>,
    pub devices: Vec<Weighted<u32>>,
    /// The last few session tokens and the device each started on (newest
    /// first; 0: free): a token replayed from elsewhere, even one that is not
    /// the open session's, is still known by its first device.
    pub tokens: [(u32, u32); RECENT_TOKENS],
    pub standing: Standing,
    /// The last minute or so: objects, walks, pace (profile version 3 on).
    pub activity: Activity,
}

pub fn method_index(m: Method) -> usize {
    match m {
        Method::Get => 0,
        Method::Head => 1,
        Method::Post => 2,
        Method::Put => 3,
        Method::Patch => 4,
        Method::Delete => 5,
        Method::Options => 6,
        Method::Other => 7,
    }
}

pub fn status_class(status: u16) -> usize {
    match status {
        401 | 403 => 2,
        404 => 3,
        300..=399 => 1,
        400..=499 => 4,
        500..=599 => 5,
        _ => 0,
    }
}

pub fn hour_of_day(time_ms: u64) -> usize {
    ((time_ms / 3_600_000) % 24) as usize
}

/// Packs an ISO country code ("DE") into two bytes; anything else is `None`.
pub fn country_code(raw: &[u8]) -> Option<u16> {
    match raw {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some(u16::from_be_bytes([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
        }
        _ => None,
    }
}

pub fn country_name(code: u16) -> String {
    String::from_utf8_lossy(&code.to_be_bytes()).into_owned()
}

pub fn ln1p_ms(ms: u64) -> f64 {
    (ms as f64).ln_1p()
}

impl Profile {
    /// The fading factor for the time since the last request.
    pub fn decay_at(&self, time_ms: u64, l: &Learning) -> f64 {
        // No history yet (an identity flagged from its first request keeps
        // `observations` at 0 but still fades).
        if self.last_ms == 0 || time_ms <= self.last_ms {
            return 1.0;
        }
        (-((time_ms - self.last_ms) as f64) / l.window_ms.max(1.0)).exp()
    }

    pub fn route_weight(&self, route: u32) -> Option<&Weighted<u32>> {
        self.routes.iter().find(|r| r.key == route)
    }

    /// Whether `obs` starts a new session (a new token, or after an inactivity gap).
    pub fn session_ends(&self, obs: &Observation, l: &Learning) -> bool {
        self.last_ms > 0
            && match obs.session {
                Some(id) => id != self.session.id,
                None => obs.time_ms.saturating_sub(self.last_ms) > l.session_gap_ms,
            }
    }

    /// Learns one request as normal (weight 1): `learn_present`, then
    /// `learn_baseline`.
    pub fn learn(&mut self, obs: &Observation, l: &Learning) {
        let present = self.learn_present(obs, l);
        self.learn_baseline(obs, &present, 1.0);
    }

    /// What is happening now, for every request however it was judged: time
    /// fades the history, the recent mix, pace and session move on. Returns
    /// what `learn_baseline` needs once the request is decided. Events older
    /// than the profile (another worker's, merged late) still count, but
    /// teach no timing.
    pub fn learn_present(&mut self, obs: &Observation, l: &Learning) -> Present {
        let d = self.decay_at(obs.time_ms, l);
        let fresh = self.observations == 0 && self.last_ms == 0;
        let in_order = fresh || obs.time_ms >= self.last_ms;
        let df = d as f32;
        self.weight *= df;
        for r in &mut self.routes {
            r.long *= df;
            r.recent *= RECENT_KEEP;
        }
        self.other_route.long *= df;
        self.other_route.recent *= RECENT_KEEP;
        match self.routes.iter_mut().find(|r| r.key == obs.route) {
            Some(r) => r.recent += 1.0,
            // Until the baseline takes the route (if it does), it is recent "other".
            None => self.other_route.recent += 1.0,
        }
        for w in self.methods.iter_mut().chain(self.hours.iter_mut()).chain(self.status.iter_mut()) {
            *w *= df;
        }
        for c in &mut self.countries {
            c.long *= df;
        }
        for a in self.asns.iter_mut().chain(self.devices.iter_mut()) {
            a.long *= df;
        }
        for m in [&mut self.size, &mut self.gap] {
            m.fade(d);
        }

        let mut gap = None;
        if in_order && !fresh {
            let g = ln1p_ms(obs.time_ms - self.last_ms);
            gap = Some(g);
            // The recent pace watches for "faster": a pause says only "not
            // faster", so it counts as the usual gap, and a burst right after
            // a break shows at once.
            let paced = g.min(f64::from(self.gap.mean));
            self.recent_gap = if self.gap.w <= 1.0 {
                g as f32
            } else {
                (f64::from(self.recent_gap) * (1.0 - RECENT_GAP_ALPHA) + paced * RECENT_GAP_ALPHA) as f32
            };
        }

        if in_order {
            let ends = self.session_ends(obs, l);
            if ends {
                self.close_session(d);
            }
            if fresh || ends || self.session.requests == 0 {
                let token = obs.session.unwrap_or(0);
                if token != 0 {
                    self.remember_token(token, obs.device.unwrap_or(0));
                }
                self.session = Session { id: token, start_ms: obs.time_ms, requests: 0 };
            }
            self.session.requests = self.session.requests.saturating_add(1);
            self.last_ms = obs.time_ms;
        }
        let closed = self.activity.record(obs.time_ms, obs.route, obs.object);
        Present { gap, in_order, closed }
    }

    /// Remembers the device `token` started on (a token not seen before
    /// takes the oldest place). A known token is never bound to another device.
    fn remember_token(&mut self, token: u32, device: u32) {
        if let Some(known) = self.tokens.iter_mut().find(|(t, _)| *t == token) {
            if known.1 == 0 {
                known.1 = device;
            }
            return;
        }
        self.tokens.rotate_right(1);
        if let Some(first) = self.tokens.first_mut() {
            *first = (token, device);
        }
    }

    /// What the request teaches the identity's normal, at `weight` in [0, 1]:
    /// 1 for a request judged ordinary, little for one that deviated, 0 for
    /// one refused. A route, country or network learned at under half a
    /// request's weight is not given a place of its own, so an attack
    /// repeated a thousand times stays as new as it was.
    pub fn learn_baseline(&mut self, obs: &Observation, present: &Present, weight: f32) {
        let weight = if weight.is_finite() { weight.clamp(0.0, 1.0) } else { 0.0 };
        let full = weight >= 0.5;
        self.activity.weighed(weight);
        self.weight += weight;
        if full || self.route_weight(obs.route).is_some() {
            let tracked = self.route_weight(obs.route).is_some();
            bump(&mut self.routes, &mut self.other_route, obs.route, TOP_ROUTES, weight, 0.0);
            if !tracked {
                // Its recent share moves from "other" to its own place.
                if let Some(r) = self.routes.iter_mut().find(|r| r.key == obs.route) {
                    r.recent += 1.0;
                    self.other_route.recent = (self.other_route.recent - 1.0).max(0.0);
                }
            }
        } else {
            self.other_route.long += weight;
        }
        if let Some(m) = self.methods.get_mut(method_index(obs.method)) {
            *m += weight;
        }
        if let Some(h) = self.hours.get_mut(hour_of_day(obs.time_ms)) {
            *h += weight;
        }
        self.size.push_weighted(ln1p_ms(obs.request_bytes), weight);
        if let Some(g) = present.gap {
            self.gap.push_weighted(g, weight);
        }
        if let Some(country) = obs.country {
            if full || self.countries.iter().any(|c| c.key == country) {
                let mut sink = Weighted::default();
                bump(&mut self.countries, &mut sink, country, TOP_COUNTRIES, weight, 0.0);
            }
            if present.in_order && full {
                self.last_country = country;
                self.last_country_ms = obs.time_ms;
            }
        }
        if let Some(asn) = obs.asn {
            if full || self.asns.iter().any(|a| a.key == asn) {
                let mut sink = Weighted::default();
                bump(&mut self.asns, &mut sink, asn, TOP_ASNS, weight, 0.0);
            }
        }
        if let Some(device) = obs.device {
            if full || self.devices.iter().any(|d| d.key == device) {
                let mut sink = Weighted::default();
                bump(&mut self.devices, &mut sink, device, TOP_DEVICES, weight, 0.0);
            }
        }
        if full {
            self.observations = self.observations.saturating_add(1);
        }
    }

    /// The normal has shifted for good (a drift): old history keeps `keep`
    /// of its weight, so what the identity does now becomes its baseline
    /// within a few requests. The recent mix and the standing are kept.
    pub fn rebase(&mut self, keep: f32) {
        self.weight *= keep;
        for r in &mut self.routes {
            r.long *= keep;
        }
        self.other_route.long *= keep;
        for w in self.methods.iter_mut().chain(self.hours.iter_mut()).chain(self.status.iter_mut()) {
            *w *= keep;
        }
        for m in [&mut self.gap, &mut self.size, &mut self.session_requests, &mut self.session_minutes, &mut self.session_rate] {
            m.w *= keep;
        }
        for c in &mut self.countries {
            c.long *= keep;
        }
        for a in self.asns.iter_mut().chain(self.devices.iter_mut()) {
            a.long *= keep;
        }
    }

    /// An operator said requests on `route` are this identity's normal (a
    /// false positive): the route gains `weight` requests' worth of history.
    pub fn accept_route(&mut self, route: u32, weight: f32) {
        bump(&mut self.routes, &mut self.other_route, route, TOP_ROUTES, 1.0, 0.0);
        if let Some(r) = self.routes.iter_mut().find(|r| r.key == route) {
            r.long += (weight - 1.0).max(0.0);
        }
        self.weight += weight;
    }

    /// An operator confirmed a threat on `route`: it is not this identity's
    /// normal, so its history there loses half its weight.
    pub fn doubt_route(&mut self, route: u32) {
        if let Some(r) = self.routes.iter_mut().find(|r| r.key == route) {
            r.long *= 0.5;
        }
    }

    /// Learns the status of an answered request: into the baseline at
    /// `weight` (its request's), into the recent failure share always.
    pub fn learn_status(&mut self, status: u16, weight: f32) {
        let class = status_class(status);
        if let Some(s) = self.status.get_mut(class) {
            *s += if weight.is_finite() { weight.clamp(0.0, 1.0) } else { 0.0 };
        }
        let failed = if matches!(class, 2 | 3) { 1.0 } else { 0.0 };
        if failed > 0.0 {
            self.activity.failed();
        }
        self.recent_fail =
            (f64::from(self.recent_fail) * (1.0 - RECENT_FAIL_ALPHA) + failed * RECENT_FAIL_ALPHA) as f32;
    }

    fn close_session(&mut self, decay: f64) {
        let s = self.session;
        if s.requests == 0 {
            return;
        }
        let minutes = self.last_ms.saturating_sub(s.start_ms) as f64 / 60_000.0;
        let requests = f64::from(s.requests);
        self.session_requests.push(requests.ln(), decay);
        self.session_minutes.push(minutes.ln_1p(), decay);
        self.session_rate.push((requests / (minutes + 1.0)).ln(), decay);
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.u8(VERSION);
        w.u32(self.observations);
        w.u64(self.last_ms);
        w.f32(self.weight);
        w.u8(self.routes.len().min(TOP_ROUTES) as u8);
        for r in self.routes.iter().take(TOP_ROUTES) {
            w.u32(r.key);
            w.f32(r.long);
            w.f32(r.recent);
        }
        w.f32(self.other_route.long);
        w.f32(self.other_route.recent);
        self.methods.iter().chain(&self.hours).for_each(|x| w.f32(*x));
        put_moments(&mut w, &self.gap);
        w.f32(self.recent_gap);
        put_moments(&mut w, &self.size);
        self.status.iter().for_each(|x| w.f32(*x));
        w.f32(self.recent_fail);
        w.u32(self.session.id);
        w.u64(self.session.start_ms);
        w.u32(self.session.requests);
        put_moments(&mut w, &self.session_requests);
        put_moments(&mut w, &self.session_minutes);
        put_moments(&mut w, &self.session_rate);
        w.u8(self.countries.len().min(TOP_COUNTRIES) as u8);
        for c in self.countries.iter().take(TOP_COUNTRIES) {
            w.u16(c.key);
            w.f32(c.long);
        }
        w.u16(self.last_country);
        w.u64(self.last_country_ms);
        w.u8(self.asns.len().min(TOP_ASNS) as u8);
        for a in self.asns.iter().take(TOP_ASNS) {
            w.u32(a.key);
            w.f32(a.long);
        }
        self.standing.encode(&mut w);
        self.activity.encode(&mut w);
        w.u8(self.devices.len().min(TOP_DEVICES) as u8);
        for d in self.devices.iter().take(TOP_DEVICES) {
            w.u32(d.key);
            w.f32(d.long);
        }
        for (token, device) in &self.tokens {
            w.u32(*token);
            w.u32(*device);
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Profile> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if !(1..=VERSION).contains(&version) {
            return None;
        }
        let mut p = Profile { observations: r.u32()?, last_ms: r.u64()?, weight: r.f32()?, ..Profile::default() };
        let n = usize::from(r.u8()?);
        if n > TOP_ROUTES {
            return None;
        }
        for _ in 0..n {
            p.routes.push(Weighted { key: r.u32()?, long: r.f32()?, recent: r.f32()? });
        }
        p.other_route = Weighted { key: (), long: r.f32()?, recent: r.f32()? };
        for x in p.methods.iter_mut().chain(p.hours.iter_mut()) {
            *x = r.f32()?;
        }
        p.gap = get_moments(&mut r)?;
        p.recent_gap = r.f32()?;
        p.size = get_moments(&mut r)?;
        for x in p.status.iter_mut() {
            *x = r.f32()?;
        }
        p.recent_fail = r.f32()?;
        p.session = Session { id: r.u32()?, start_ms: r.u64()?, requests: r.u32()? };
        p.session_requests = get_moments(&mut r)?;
        p.session_minutes = get_moments(&mut r)?;
        p.session_rate = get_moments(&mut r)?;
        let n = usize::from(r.u8()?);
        if n > TOP_COUNTRIES {
            return None;
        }
        for _ in 0..n {
            p.countries.push(Weighted { key: r.u16()?, long: r.f32()?, recent: 0.0 });
        }
        p.last_country = r.u16()?;
        p.last_country_ms = r.u64()?;
        let n = usize::from(r.u8()?);
        if n > TOP_ASNS {
            return None;
        }
        for _ in 0..n {
            p.asns.push(Weighted { key: r.u32()?, long: r.f32()?, recent: 0.0 });
        }
        if version >= 2 {
            p.standing = Standing::decode(&mut r, version)?;
        }
        if version >= 3 {
            p.activity = Activity::decode(&mut r)?;
        } else if p.observations > 0 {
            // An established identity from before activity was kept is no newcomer.
            p.activity.first_ms = 1;
        }
        if version >= 4 {
            let n = usize::from(r.u8()?);
            if n > TOP_DEVICES {
                return None;
            }
            for _ in 0..n {
                p.devices.push(Weighted { key: r.u32()?, long: r.f32()?, recent: 0.0 });
            }
            for slot in p.tokens.iter_mut() {
                *slot = (r.u32()?, r.u32()?);
            }
        }
        let finite = p.routes.iter().all(|r| r.long.is_finite() && r.recent.is_finite())
            && p.countries.iter().all(|c| c.long.is_finite())
            && p.asns.iter().chain(&p.devices).all(|a| a.long.is_finite())
            && p.methods.iter().chain(&p.hours).chain(&p.status).all(|x| x.is_finite())
            && p.weight.is_finite();
        (finite && r.is_empty()).then_some(p)
    }
}

/// Adds one to `key` in a bounded list (the Space-Saving scheme): a tracked
/// key gains weight; a new one takes a free place, else replaces the faintest
/// entry and inherits its weight plus one. Heavy keys stay tracked, any
/// untracked key weighs at most the faintest entry, and a cycle of more keys
/// than places still accumulates (replacing only faded entries would churn
/// forever). The replaced entry's recent weight moves to `other`.
/// `recent` is what the recent weight gains (0 for lists without one).
fn bump<K: Copy + PartialEq + Default>(
    list: &mut Vec<Weighted<K>>,
    other: &mut Weighted<()>,
    key: K,
    cap: usize,
    amount: f32,
    recent: f32,
) {
    if let Some(e) = list.iter_mut().find(|e| e.key == key) {
        e.long += amount;
        e.recent += recent;
        return;
    }
    let fresh = Weighted { key, long: amount, recent };
    if list.len() < cap {
        list.push(fresh);
        return;
    }
    if let Some(e) = list.iter_mut().min_by(|a, b| a.long.total_cmp(&b.long)) {
        other.recent += e.recent;
        *e = Weighted { long: e.long + amount, ..fresh };
    }
}

fn put_moments(w: &mut Writer, m: &Moments) {
    w.f32(m.w);
    w.f32(m.mean);
    w.f32(m.var);
}

fn get_moments(r: &mut Reader) -> Option<Moments> {
    Some(Moments { w: r.f32()?, mean: r.f32()?, var: r.f32()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const HOUR: u64 = 3_600_000;

    fn learning() -> Learning {
        Learning { window_ms: 24.0 * HOUR as f64, session_gap_ms: 30 * 60_000 }
    }

    fn obs(t: u64, route: u32) -> Observation {
        Observation {
            time_ms: t,
            route,
            method: Method::Get,
            request_bytes: 0,
            session: None,
            country: country_code(b"de"),
            asn: Some(3320),
            device: None,
            object: None,
        }
    }

    #[test]
    fn a_full_profile_fits_in_its_bound_and_round_trips() {
        let mut p = Profile::default();
        let l = learning();
        for i in 0..500u64 {
            let mut o = obs(1_000 + i * 1_000, (i % 40) as u32);
            o.country = Some(i as u16 % 9 + 1);
            o.asn = Some(i as u32 % 11 + 1);
            o.device = Some(i as u32 % 5 + 1);
            o.session = Some(77);
            o.method = [Method::Get, Method::Post, Method::Delete][i as usize % 3];
            o.request_bytes = i * 10;
            p.learn(&o, &l);
            p.learn_status([200, 404, 500, 401][i as usize % 4], 1.0);
            p.standing.record(1_000 + i * 1_000, 0.3, i % 2 == 0);
        }
        for i in 0..9 {
            let pattern = super::super::standing::Pattern {
                route: i,
                mask: 1,
                label: super::super::standing::Label::FalsePositive,
                ceiling: 600,
                decision: 1,
                at_s: 5,
            };
            p.standing.learn_feedback(pattern.label, 0.05, (-0.1, 0.2), Some(pattern));
        }
        assert_eq!(p.routes.len(), TOP_ROUTES);
        let mut bytes = Vec::new();
        p.encode(&mut bytes);
        assert_eq!(bytes.len(), MAX_ENCODED, "all lists full");
        assert_eq!(Profile::decode(&bytes), Some(p.clone()));
        assert_eq!(p.devices.len(), TOP_DEVICES);
        assert_ne!(p.tokens[0].1, 0, "the open session's device is remembered");
        // A version-4 record (no strain: the standing's last 4 + 4 bytes) is still read.
        let devices = 1 + TOP_DEVICES * 8 + RECENT_TOKENS * 8;
        let strain = bytes.len() - devices - activity::ENCODED - 8;
        let mut v4 = bytes.clone();
        v4.drain(strain..strain + 8);
        v4[0] = 4;
        let old = Profile::decode(&v4).expect("a version-4 profile");
        assert_eq!((old.standing.episode.strain, old.standing.episode.strain_s), (0.0, 0));
        assert_eq!((&old.devices, old.tokens), (&p.devices, p.tokens));
        let bytes = v4;
        // A version-3 record (no devices: neither the tail nor the episode's mark) is still read.
        let mut v3 = bytes[..bytes.len() - devices].to_vec();
        // The episode's device mark and last unsettling (4 + 4 bytes) end the standing.
        let mark = v3.len() - activity::ENCODED - 8;
        v3.drain(mark..mark + 8);
        v3[0] = 3;
        let old = Profile::decode(&v3).expect("a version-3 profile");
        assert!(old.devices.is_empty() && old.tokens == [(0, 0); RECENT_TOKENS]);
        assert_eq!((&old.routes, old.activity), (&p.routes, p.activity));
        let bytes = v3;
        let max_v3 = bytes.len();
        // A version-1 record (before the standing) is still read.
        let mut v1 = bytes[..max_v3 - (super::super::standing::MAX_ENCODED - 16) - activity::ENCODED].to_vec();
        v1[0] = 1;
        let old = Profile::decode(&v1).expect("a version-1 profile");
        assert_eq!(old.standing, Standing::default());
        assert_eq!(old.routes, p.routes);
        // A version-2 record (a standing without its episode, no activity) too.
        let episode = 4 + 4 + 4 + 2 + 4 + 4;
        let mut v2 = bytes[..max_v3 - activity::ENCODED - episode].to_vec();
        v2[0] = 2;
        let old = Profile::decode(&v2).expect("a version-2 profile");
        assert_eq!(old.standing.history, p.standing.history);
        assert_eq!(old.activity, Activity { first_ms: 1, ..Activity::default() }, "an established identity is no newcomer");
    }

    #[test]
    fn a_rebase_keeps_a_tenth_of_history_and_feedback_moves_routes() {
        let mut p = Profile::default();
        let l = learning();
        for i in 0..100u64 {
            p.learn(&obs(1_000 + i * 1_000, 1), &l);
        }
        let before = p.weight;
        p.rebase(0.1);
        assert!((p.weight - before * 0.1).abs() < 1e-3);
        p.accept_route(9, 20.0);
        let r9 = p.routes.iter().find(|r| r.key == 9).map(|r| r.long);
        assert_eq!(r9, Some(20.0));
        p.doubt_route(9);
        assert_eq!(p.routes.iter().find(|r| r.key == 9).map(|r| r.long), Some(10.0));
    }

    #[test]
    fn hostile_bytes_do_not_decode() {
        let mut bytes = Vec::new();
        Profile::default().encode(&mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(Profile::decode(&bytes[..cut]), None);
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Profile::decode(&long), None, "trailing bytes");
        let mut lying = bytes.clone();
        lying[1 + 4 + 8 + 4] = 200; // a route count past the bound
        assert_eq!(Profile::decode(&lying), None);
        let mut nan = bytes;
        nan[13..17].copy_from_slice(&f32::NAN.to_le_bytes()); // the weight
        assert_eq!(Profile::decode(&nan), None);
    }

    #[test]
    fn history_fades_with_the_window_not_at_a_cut_off() {
        let l = learning();
        let mut p = Profile::default();
        for i in 0..100 {
            p.learn(&obs(i, 1), &l);
        }
        let weight_after = |idle: u64| f64::from(p.weight) * p.decay_at(p.last_ms + idle, &l);
        let w0 = weight_after(0);
        assert!((w0 - 100.0).abs() < 0.01);
        // One window later the weight is 1/e of what it was; three windows, 1/e^3.
        assert!((weight_after(24 * HOUR) / w0 - (-1f64).exp()).abs() < 1e-6);
        assert!((weight_after(72 * HOUR) / w0 - (-3f64).exp()).abs() < 1e-6);
        // New behaviour a window later outweighs the faded old one soon after.
        for i in 0..50 {
            p.learn(&obs(48 * HOUR + i, 2), &l);
        }
        let old = p.route_weight(1).map_or(0.0, |r| r.long);
        let new = p.route_weight(2).map_or(0.0, |r| r.long);
        assert!(new > 3.0 * old, "old {old} new {new}");
        assert!((old - 100.0 * (-2f32).exp()).abs() < 0.5);
    }

    #[test]
    fn sessions_are_inferred_from_gaps_or_read_from_a_token() {
        let l = learning();
        let mut p = Profile::default();
        // Three sessions of 10 requests a minute apart, two hours between them.
        for s in 0..3u64 {
            for i in 0..10u64 {
                p.learn(&obs(s * 2 * HOUR + i * 60_000, 1), &l);
            }
        }
        assert_eq!(p.session_requests.w.round(), 2.0, "two finished, one open");
        assert!((f64::from(p.session_requests.mean) - 10f64.ln()).abs() < 0.01);
        assert!((f64::from(p.session_minutes.mean) - 10f64.ln()).abs() < 0.05, "9 minutes long");
        assert_eq!(p.session.requests, 10);
        // A token change starts a session even without a gap.
        let mut o = obs(6 * HOUR + 10 * 60_000, 1);
        o.session = Some(77);
        p.learn(&o, &l);
        assert_eq!((p.session.id, p.session.requests), (77, 1));
    }

    #[test]
    fn new_endpoints_churn_the_faint_places_and_strong_ones_stay() {
        let l = learning();
        let mut p = Profile::default();
        for i in 0..200u64 {
            p.learn(&obs(i, (i % 4) as u32), &l);
        }
        // Walk 100 new endpoints once each.
        for i in 0..100u64 {
            p.learn(&obs(200 + i, 1_000 + i as u32), &l);
        }
        assert_eq!(p.routes.len(), TOP_ROUTES);
        for r in 0..4 {
            assert!(p.route_weight(r).is_some_and(|e| e.long > 40.0), "usual endpoint {r} kept");
        }
        // The walk churned only the other 8 places.
        assert!(p.routes.iter().filter(|e| e.key >= 1_000).all(|e| e.long < 20.0));
    }

    #[test]
    fn late_events_from_another_worker_count_but_teach_no_timing() {
        let l = learning();
        let mut p = Profile::default();
        for i in 0..10 {
            p.learn(&obs(10_000 + i * 1_000, 1), &l);
        }
        let gap = p.gap;
        p.learn(&obs(5_000, 2), &l);
        assert_eq!(p.gap, gap);
        assert_eq!(p.last_ms, 19_000);
        assert_eq!(p.observations, 11);
    }

    #[test]
    fn codes_and_classes() {
        assert_eq!(country_code(b"de"), country_code(b"DE"));
        assert_eq!(country_code(b"D1"), None);
        assert_eq!(country_code(b"DEU"), None);
        assert_eq!(country_name(country_code(b"nz").unwrap()), "NZ");
        assert_eq!([200, 302, 401, 403, 404, 429, 503, 99].map(status_class), [0, 1, 2, 2, 3, 4, 5, 0]);
        assert_eq!(hour_of_day(25 * HOUR + 5), 1);
    }
}
