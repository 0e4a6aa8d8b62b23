//! Deviation: how unlike its own history one request (and the recent window
//! it ends) is. Each component measures one thing and maps it to [0, 1] with a
//! logistic curve, calibrated so that ordinary behaviour sits near 0.01 and a
//! clear departure near 1; components combine as a noisy-OR of their weighted
//! scores, so one weak oddity stays low and several together add up.
//! docs/profiling.md gives the maths and how to tune it.

use super::model::{self, Learning, Observation, Profile};
use super::stats::{excess_surprise, hellinger, logistic};

/// One aspect of behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// A route template this identity rarely or never calls.
    Endpoint,
    Method,
    /// The recent (last ~10 requests) endpoint mix against the long-run mix.
    Mix,
    /// The recent request rate against the usual gaps between requests.
    Rate,
    /// Request body size against the usual.
    Size,
    /// Time of day.
    Hour,
    /// A burst of 401/403/404 answers.
    Failures,
    Country,
    /// A change of country sooner than travel allows.
    Travel,
    Asn,
    /// A device (user agent or fingerprint) this identity rarely or never uses.
    Device,
    /// The session's token sent from another device than the one it started on.
    SessionDevice,
    /// The current session's length and pace against past sessions.
    Session,
    /// Distinct objects in the last minute against the identity's usual.
    Objects,
    /// A sequential walk over object ids on one route.
    Walk,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Endpoint => "endpoint",
            Component::Method => "method",
            Component::Mix => "mix",
            Component::Rate => "rate",
            Component::Size => "size",
            Component::Hour => "hour",
            Component::Failures => "failures",
            Component::Country => "country",
            Component::Travel => "travel",
            Component::Asn => "asn",
            Component::Device => "device",
            Component::SessionDevice => "session_device",
            Component::Session => "session",
            Component::Objects => "objects",
            Component::Walk => "walk",
        }
    }

    /// The most this component alone adds to the score.
    pub fn weight(self) -> f64 {
        match self {
            Component::Endpoint => 0.5,
            Component::Method => 0.3,
            Component::Mix => 0.6,
            Component::Rate => 0.6,
            Component::Size => 0.3,
            Component::Hour => 0.25,
            Component::Failures => 0.6,
            // A plausible trip alone (about 0.5) stays under the threshold;
            // with impossible travel or new endpoints it adds up.
            Component::Country => 0.5,
            Component::Travel => 0.9,
            Component::Asn => 0.25,
            // A new phone or browser is ordinary; with a new country or
            // endpoints it adds up, and it marks the episode.
            Component::Device => 0.25,
            // A session token does not change devices by itself: alone it
            // crosses the threshold.
            Component::SessionDevice => 0.9,
            Component::Session => 0.35,
            Component::Objects => 0.6,
            Component::Walk => 0.6,
        }
    }
}

/// Some components describe one thing together. Endpoint, method and body
/// size are the kind of request: a login is at once a rare endpoint, a POST
/// and a body. Country, travel and hour of day are where and when: a trip
/// abroad brings another time zone. Within a group the strongest counts in
/// full and the others at this share, so one unusual kind of request, or one
/// trip, is one oddity, not three; a new endpoint from a new country, or at a
/// new pace, is still two.
pub const SAME_KIND_SHARE: f64 = 0.3;

#[derive(PartialEq, Eq, Clone, Copy)]
enum Group {
    Kind,
    Place,
}

impl Component {
    fn group(self) -> Option<Group> {
        match self {
            Component::Endpoint | Component::Method | Component::Size => Some(Group::Kind),
            Component::Country | Component::Travel | Component::Hour => Some(Group::Place),
            _ => None,
        }
    }
}

impl Component {
    /// Where and when a request comes from (country, travel, hour, network,
    /// device), not what it does.
    fn is_place(self) -> bool {
        matches!(self, Component::Country | Component::Travel | Component::Hour | Component::Asn | Component::Device)
    }
}

/// The deviation without where and when the request comes from; the
/// session's device still counts (a token on another device is a thief's).
pub fn without_place(parts: &[(Component, f64)]) -> f64 {
    combine(parts, |c, s| if c.is_place() { 0.0 } else { s })
}

/// What a request does, as its deviation says: without where and when it
/// comes from, nor the session's device. A traveller's usual routine abroad
/// is ordinary conduct.
pub fn conduct(parts: &[(Component, f64)]) -> f64 {
    combine(parts, |c, s| if c.is_place() || c == Component::SessionDevice { 0.0 } else { s })
}

/// The behavioural score of scored components: a noisy-OR of `weight · score`
/// (`1 − Π (1 − w·c)`), each group counted as one oddity (`SAME_KIND_SHARE`).
/// `scale` adjusts a component's score first (a release discounts endpoint
/// and mix).
pub fn combine(parts: &[(Component, f64)], scale: impl Fn(Component, f64) -> f64) -> f64 {
    let term = |c: Component, s: f64| c.weight() * scale(c, s).clamp(0.0, 1.0);
    // Each group's strongest (first of equals) counts in full.
    let strongest = |g: Group| {
        parts
            .iter()
            .enumerate()
            .filter(|(_, (c, _))| c.group() == Some(g))
            .fold(None, |best: Option<(usize, f64)>, (i, (c, s))| {
                let x = term(*c, *s);
                if best.is_some_and(|(_, b)| b >= x) { best } else { Some((i, x)) }
            })
            .map(|(i, _)| i)
    };
    let (kind, place) = (strongest(Group::Kind), strongest(Group::Place));
    let keep: f64 = parts
        .iter()
        .enumerate()
        .map(|(i, (c, s))| {
            let x = term(*c, *s);
            let lead = match c.group() {
                Some(Group::Kind) => kind == Some(i),
                Some(Group::Place) => place == Some(i),
                None => true,
            };
            1.0 - if lead { x } else { x * SAME_KIND_SHARE }
        })
        .product();
    (1.0 - keep).clamp(0.0, 1.0)
}

/// A component's score at or above this is named in `threat_details`.
pub const REASON_AT: f64 = 0.5;
/// Evidence a moment statistic needs before it scores.
const MIN_MOMENT_WEIGHT: f32 = 5.0;
/// Surprise curve: 0.5 at 3 excess bits (8x less likely than typical).
const SURPRISE_MID: f64 = 3.0;
const SURPRISE_SLOPE: f64 = 1.5;
/// z-score curve: 0.5 at z = 3.5.
const Z_MID: f64 = 3.5;
const Z_SLOPE: f64 = 2.0;

/// How scoring reads the configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scoring {
    pub min_observations: u32,
    /// A country change sooner than this after the last request from the
    /// previous country is "impossible travel".
    pub travel_ms: u64,
}

/// What the profile says about one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Assessment {
    /// Too little history to judge: reported as such, never as an anomaly.
    Cold { observations: u32 },
    Scored(Deviation),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Deviation {
    /// `behavioral_score`, in [0, 1]: the request's own deviation, or what
    /// the episode it continues holds, whichever is higher.
    pub score: f64,
    /// The request's own deviation.
    pub own: f64,
    /// Its conduct (`conduct` of `parts`), kept with the parts.
    pub conduct: f64,
    /// It opened one.
    pub opened: bool,
    pub observations: u32,
    /// The profile's decayed request count: how much evidence it rests on.
    pub weight: f64,
    /// Every component that had evidence to score, with its score.
    pub parts: Vec<(Component, f64)>,
    /// Why, for the components at or above `REASON_AT`, strongest first.
    pub reasons: Vec<String>,
}

/// Scores `obs` against `profile`, then teaches the profile as if the
/// request were ordinary (weight 1): tests, benches and replays.
pub fn assess_and_learn(
    profile: &mut Profile,
    obs: &Observation,
    route_name: &str,
    learning: &Learning,
    scoring: &Scoring,
) -> Assessment {
    let (assessment, present) = assess(profile, obs, route_name, learning, scoring);
    profile.learn_baseline(obs, &present, 1.0);
    assessment
}

/// Scores `obs` against `profile` and records the present (recent mix, pace,
/// session: `Profile::learn_present`). Surprise is judged against the history
/// before this request; the recent window (mix, rate, session) includes it.
/// What the request teaches the baseline waits for its decision
/// (`Profile::learn_baseline` with the returned `Present`).
pub fn assess(
    profile: &mut Profile,
    obs: &Observation,
    route_name: &str,
    learning: &Learning,
    scoring: &Scoring,
) -> (Assessment, model::Present) {
    if profile.observations < scoring.min_observations {
        let present = profile.learn_present(obs, learning);
        // Counted as it will be once learned.
        return (Assessment::Cold { observations: profile.observations.saturating_add(1) }, present);
    }
    let mut parts: Vec<(Component, f64, Reason)> = Vec::with_capacity(13);
    before(profile, obs, route_name, scoring, &mut parts);
    let present = profile.learn_present(obs, learning);
    after(profile, &mut parts);

    let scored: Vec<(Component, f64)> = parts.iter().map(|(c, s, _)| (*c, *s)).collect();
    let score = combine(&scored, |_, s| s);
    let mut strong: Vec<&(Component, f64, Reason)> = parts.iter().filter(|(_, s, _)| *s >= REASON_AT).collect();
    strong.sort_by(|a, b| (b.1 * b.0.weight()).total_cmp(&(a.1 * a.0.weight())));
    let reasons = strong.iter().map(|(c, s, r)| format!("{} {:.2}: {}", c.as_str(), s, r.text())).collect();
    let assessment = Assessment::Scored(Deviation {
        score: score.clamp(0.0, 1.0),
        own: score.clamp(0.0, 1.0),
        conduct: conduct(&scored),
        opened: false,
        // Counted as it will be once learned.
        observations: profile.observations.saturating_add(1),
        weight: f64::from(profile.weight),
        parts: scored,
        reasons,
    });
    (assessment, present)
}

/// How much a decided request teaches its identity's normal, in [0, 1]: a
/// refusal nothing, a flagged request or one that deviated (`own` at or above
/// `gate`) a trace, an ordinary one (under 0.3) everything, and in between
/// less the more it deviated. So the normal follows what was judged normal,
/// and a change the identity keeps up at a moderate deviation (a traveller's
/// new country) is still learned, more slowly.
/// `flagged` means the decision was above allow for a reason other than
/// the identity's own moderate deviation (see `Engine::decide`): a newcomer
/// the population flags, a crowd the keys flag.
pub fn learning_weight(own: f64, gate: f64, flagged: bool, refused: bool) -> f32 {
    const TRACE: f64 = 0.02;
    const ORDINARY: f64 = 0.3;
    if refused {
        return 0.0;
    }
    let w = if !own.is_finite() || own >= gate {
        TRACE
    } else if own <= ORDINARY || gate <= ORDINARY {
        1.0
    } else {
        (1.0 - (own - ORDINARY) / (gate - ORDINARY)).max(0.1)
    };
    (if flagged { w.min(TRACE) } else { w }) as f32
}

/// The evidence behind a component, formatted only when it is reported.
enum Reason {
    Endpoint { route: String, share: f64 },
    Method { method: &'static str, share: f64 },
    Hour { hour: usize },
    Size { bytes: u64, z: f64 },
    Failures { recent: f64, usual: f64 },
    Country { country: u16, share: f64 },
    Travel { from: u16, to: u16, minutes: f64 },
    Asn { asn: u32 },
    Device { share: f64 },
    SessionDevice { minutes: f64 },
    Mix { distance: f64 },
    Rate { factor: f64 },
    Session { requests: u32, z: f64 },
    Objects { per_minute: f64, usual: f64 },
    Walk { run: u16 },
}

impl Reason {
    fn text(&self) -> String {
        match self {
            Reason::Endpoint { route, share } if *share < 0.001 => format!("new endpoint {route}"),
            Reason::Endpoint { route, share } => format!("rare endpoint {route} ({:.1}% of history)", share * 100.0),
            Reason::Method { method, share } => format!("method {method} in {:.1}% of history", share * 100.0),
            Reason::Hour { hour } => format!("active at {hour:02}:00 UTC, unusual for this identity"),
            Reason::Size { bytes, z } => format!("body of {bytes} bytes, z={z:.1} against the usual size"),
            Reason::Failures { recent, usual } => {
                format!("{:.0}% of recent answers 401/403/404 (usual {:.0}%)", recent * 100.0, usual * 100.0)
            }
            Reason::Country { country, share } if *share == 0.0 => {
                format!("new country {}", model::country_name(*country))
            }
            Reason::Country { country, share } => {
                format!("rare country {} ({:.1}% of history)", model::country_name(*country), share * 100.0)
            }
            Reason::Travel { from, to, minutes } => format!(
                "country {} -> {} within {minutes:.0} min",
                model::country_name(*from),
                model::country_name(*to)
            ),
            Reason::Asn { asn } => format!("new network AS{asn}"),
            Reason::Device { share } if *share < 0.001 => "new device".to_string(),
            Reason::Device { share } => format!("rare device ({:.1}% of history)", share * 100.0),
            Reason::SessionDevice { minutes } => {
                format!("session token of {minutes:.0} min sent from another device than it started on")
            }
            Reason::Mix { distance } => format!("recent endpoint mix unlike the usual (Hellinger {distance:.2})"),
            Reason::Rate { factor } => format!("requests {factor:.0}x faster than usual"),
            Reason::Session { requests, z } => format!("session of {requests} requests, z={z:.1} against past sessions"),
            Reason::Objects { per_minute, usual } => {
                format!("{per_minute:.0} distinct objects in the last minute (usual {usual:.0})")
            }
            Reason::Walk { run } => format!("{run} object ids in sequence on one route"),
        }
    }
}

fn surprise_score(w: f64, weights: impl Iterator<Item = f64> + Clone) -> f64 {
    logistic(excess_surprise(w, weights), SURPRISE_MID, SURPRISE_SLOPE)
}

fn share(w: f64, total: f64) -> f64 {
    if total > 0.0 { w / total } else { 0.0 }
}

fn before(p: &Profile, obs: &Observation, route_name: &str, s: &Scoring, out: &mut Vec<(Component, f64, Reason)>) {
    // Endpoint: surprise of this route under the long-run mix.
    let longs = p.routes.iter().map(|r| f64::from(r.long)).chain(std::iter::once(f64::from(p.other_route.long)));
    // An untracked route weighs at most the faintest tracked one once the
    // list is full (Space-Saving's bound): a broad user is not told every
    // untracked endpoint is new, a creature of habit is.
    let faintest = p.routes.iter().map(|r| f64::from(r.long)).fold(f64::INFINITY, f64::min);
    let untracked = if p.routes.len() >= model::TOP_ROUTES { faintest } else { 0.0 }
        .max(f64::from(p.other_route.long) / model::TOP_ROUTES as f64);
    let w = p.route_weight(obs.route).map_or(untracked, |r| f64::from(r.long));
    let total: f64 = longs.clone().sum();
    let reason = Reason::Endpoint { route: route_name.to_string(), share: share(w, total) };
    out.push((Component::Endpoint, surprise_score(w, longs), reason));

    let methods = p.methods.iter().map(|m| f64::from(*m));
    let mi = model::method_index(obs.method);
    let w = p.methods.get(mi).map_or(0.0, |m| f64::from(*m));
    let reason = Reason::Method { method: obs.method.as_str(), share: share(w, methods.clone().sum()) };
    out.push((Component::Method, surprise_score(w, methods), reason));

    // Hour of day, smoothed over the neighbouring hours (a habit at 09:00 makes 10:00 unremarkable).
    let at = |i: usize| p.hours.get(i % model::HOURS).map_or(0.0, |x| f64::from(*x));
    let smoothed: [f64; model::HOURS] =
        std::array::from_fn(|h| at(h) + 0.5 * (at(h + model::HOURS - 1) + at(h + 1)));
    let hour = model::hour_of_day(obs.time_ms);
    let w = smoothed.get(hour).copied().unwrap_or(0.0);
    out.push((Component::Hour, surprise_score(w, smoothed.iter().copied()), Reason::Hour { hour }));

    if p.size.w >= MIN_MOMENT_WEIGHT {
        let z = p.size.z(model::ln1p_ms(obs.request_bytes), 0.5).abs();
        out.push((Component::Size, logistic(z, Z_MID, Z_SLOPE), Reason::Size { bytes: obs.request_bytes, z }));
    }

    let answered: f64 = p.status.iter().map(|x| f64::from(*x)).sum();
    if answered >= f64::from(MIN_MOMENT_WEIGHT) {
        let failed = p.status.get(2..4).map_or(0.0, |f| f.iter().map(|x| f64::from(*x)).sum::<f64>());
        let usual = (failed + 0.5) / (answered + 1.0);
        let recent = f64::from(p.recent_fail);
        out.push((Component::Failures, logistic(recent - usual, 0.4, 10.0), Reason::Failures { recent, usual }));
    }

    if let Some(country) = obs.country {
        let known = p.countries.iter().map(|c| f64::from(c.long));
        let seen: f64 = known.clone().sum();
        let w = p.countries.iter().find(|c| c.key == country).map_or(0.0, |c| f64::from(c.long));
        if seen >= f64::from(MIN_MOMENT_WEIGHT) {
            let reason = Reason::Country { country, share: share(w, seen) };
            out.push((Component::Country, surprise_score(w, known), reason));
        }
        let since = obs.time_ms.saturating_sub(p.last_country_ms);
        let moved = p.last_country != 0 && p.last_country != country && since < s.travel_ms;
        if seen > 0.0 {
            let c = if moved && share(w, seen) < 0.1 { 1.0 } else { 0.0 };
            let reason = Reason::Travel { from: p.last_country, to: country, minutes: since as f64 / 60_000.0 };
            out.push((Component::Travel, c, reason));
        }
    }

    // A new country brings a new network: one oddity of place, not two. The
    // network counts on its own only where the country is familiar (or not
    // known): a new provider at home, a VPN.
    let new_country = out.iter().any(|(c, s, _)| matches!(c, Component::Country | Component::Travel) && *s >= REASON_AT);
    if let (Some(asn), false) = (obs.asn, new_country) {
        let known = p.asns.iter().map(|a| f64::from(a.long));
        if known.clone().sum::<f64>() >= f64::from(MIN_MOMENT_WEIGHT) {
            let w = p.asns.iter().find(|a| a.key == asn).map_or(0.0, |a| f64::from(a.long));
            out.push((Component::Asn, surprise_score(w, known), Reason::Asn { asn }));
        }
    }

    if let Some(device) = obs.device {
        let known = p.devices.iter().map(|d| f64::from(d.long));
        let seen: f64 = known.clone().sum();
        if seen >= f64::from(MIN_MOMENT_WEIGHT) {
            let w = p.devices.iter().find(|d| d.key == device).map_or(0.0, |d| f64::from(d.long));
            out.push((Component::Device, surprise_score(w, known), Reason::Device { share: share(w, seen) }));
        }
        // Only a token names a session (an inferred one has no owner to
        // steal); any token the identity used lately is known by its first device.
        let known = obs.session.filter(|id| *id != 0).and_then(|id| p.tokens.iter().find(|(t, d)| *t == id && *d != 0));
        if let Some(&(id, first)) = known {
            let moved = if device != first { 1.0 } else { 0.0 };
            let since = if id == p.session.id { p.session.start_ms } else { obs.time_ms };
            let minutes = obs.time_ms.saturating_sub(since) as f64 / 60_000.0;
            out.push((Component::SessionDevice, moved, Reason::SessionDevice { minutes }));
        }
    }
}

/// Fewer distinct objects a minute than this never score: reading a page of
/// orders is not enumeration, whatever the identity's habit.
pub const OBJECTS_FLOOR: f64 = 12.0;
/// The spread floor of ln(1 + objects per minute).
const OBJECTS_MIN_SD: f64 = 0.5;
use super::activity::OBJECTS_MIN_MINUTES;

/// A sequential walk's score: 0.5 at 12 steps, 0.9 at 18, near 1 from 25;
/// a page showing a handful of neighbouring items stays near 0.
pub fn walk_score(run: u16) -> f64 {
    if run < 5 { 0.0 } else { logistic(f64::from(run), 12.0, 0.35) }
}

fn objects_parts(p: &Profile, out: &mut Vec<(Component, f64, Reason)>) {
    let now = p.activity.summary(p.last_ms);
    let u = &p.activity.usual_objects;
    if now.objects >= OBJECTS_FLOOR && u.w >= OBJECTS_MIN_MINUTES {
        let (mean, sd) = (f64::from(u.mean), f64::from(u.var).max(0.0).sqrt());
        let z = (now.objects.ln_1p() - mean) / sd.max(OBJECTS_MIN_SD);
        let reason = Reason::Objects { per_minute: now.objects, usual: mean.exp() - 1.0 };
        out.push((Component::Objects, logistic(z, Z_MID, Z_SLOPE), reason));
    }
    if now.run >= 5 {
        out.push((Component::Walk, walk_score(now.run), Reason::Walk { run: now.run }));
    }
}

fn after(p: &Profile, out: &mut Vec<(Component, f64, Reason)>) {
    objects_parts(p, out);
    let recent = p.routes.iter().map(|r| f64::from(r.recent)).chain(std::iter::once(f64::from(p.other_route.recent)));
    let long = p.routes.iter().map(|r| f64::from(r.long)).chain(std::iter::once(f64::from(p.other_route.long)));
    let distance = hellinger(recent, long);
    out.push((Component::Mix, logistic(distance, 0.55, 12.0), Reason::Mix { distance }));

    if p.gap.w >= MIN_MOMENT_WEIGHT {
        // One-sided: faster than usual is the concern, a pause is not.
        let z = -p.gap.z(f64::from(p.recent_gap), 0.3);
        let factor = (f64::from(p.gap.mean) - f64::from(p.recent_gap)).exp();
        out.push((Component::Rate, logistic(z, Z_MID, Z_SLOPE), Reason::Rate { factor }));
    }

    if p.session_requests.w >= 3.0 {
        let requests = p.session.requests.max(1);
        let minutes = p.last_ms.saturating_sub(p.session.start_ms) as f64 / 60_000.0;
        let z_count = p.session_requests.z(f64::from(requests).ln(), 0.3);
        // The pace of a session only means something once it has lasted a while.
        let z_pace = if minutes >= 5.0 {
            p.session_rate.z((f64::from(requests) / (minutes + 1.0)).ln(), 0.3)
        } else {
            f64::NEG_INFINITY
        };
        let z = z_count.max(z_pace);
        out.push((Component::Session, logistic(z, Z_MID, Z_SLOPE), Reason::Session { requests, z }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::features::Method;
    use crate::engine::profile::model::country_code;

    const MIN: u64 = 60_000;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn learning() -> Learning {
        Learning { window_ms: 24.0 * 60.0 * MIN as f64, session_gap_ms: 30 * MIN }
    }

    fn scoring() -> Scoring {
        Scoring { min_observations: 20, travel_ms: 120 * MIN }
    }

    /// A routine: 3 endpoints at 50/30/20 %, GET 80 %, small bodies, a
    /// request every ~2 s, from Germany, 5 % 404s.
    fn usual(rng: &mut Rng, t: u64) -> (Observation, u16) {
        let r = rng.next();
        let route = if r < 0.5 { 1 } else if r < 0.8 { 2 } else { 3 };
        let method = if rng.next() < 0.8 { Method::Get } else { Method::Post };
        let bytes = if method == Method::Post { 200 + (rng.next() * 100.0) as u64 } else { 0 };
        let status = if rng.next() < 0.05 { 404 } else { 200 };
        let obs = Observation {
            time_ms: t,
            route,
            method,
            request_bytes: bytes,
            session: None,
            country: country_code(b"DE"),
            asn: Some(3320),
            device: None,
            object: None,
        };
        (obs, status)
    }

    fn gap(rng: &mut Rng) -> u64 {
        (2_000.0 * (0.6 + 0.8 * rng.next())) as u64
    }

    /// A profile that learned 400 routine requests; returns it and the clock.
    fn trained(rng: &mut Rng) -> (Profile, u64) {
        let mut p = Profile::default();
        let mut t = 10 * 60 * MIN;
        for _ in 0..400 {
            t += gap(rng);
            let (o, status) = usual(rng, t);
            assess_and_learn(&mut p, &o, "/x", &learning(), &scoring());
            p.learn_status(status, 1.0);
        }
        (p, t)
    }

    fn scored(a: Assessment) -> Deviation {
        match a {
            Assessment::Scored(d) => d,
            Assessment::Cold { observations } => unreachable!("cold at {observations}"),
        }
    }

    fn part(d: &Deviation, c: Component) -> f64 {
        d.parts.iter().find(|(k, _)| *k == c).map_or(0.0, |(_, s)| *s)
    }

    #[test]
    fn one_unusual_kind_of_request_is_one_oddity_and_independent_ones_add_up() {
        use Component::*;
        // A login: a rare endpoint, a POST, a body, all at once.
        let login = combine(&[(Endpoint, 0.8), (Method, 1.0), (Size, 1.0), (Hour, 0.02), (Rate, 0.05)], |_, s| s);
        assert!(login < 0.55, "{login}");
        // The same endpoint, faster than usual, with failures: three things.
        let takeover = combine(&[(Endpoint, 0.8), (Rate, 0.9), (Failures, 0.8), (Method, 0.02)], |_, s| s);
        assert!(takeover > 0.8, "{takeover}");
        // A trip: a new country, another time zone; under the threshold alone.
        let trip = combine(&[(Country, 1.0), (Hour, 1.0), (Endpoint, 0.02)], |_, s| s);
        assert!(trip < 0.6, "{trip}");
        let takeover_abroad = combine(&[(Country, 1.0), (Hour, 1.0), (Endpoint, 1.0), (Rate, 0.8)], |_, s| s);
        assert!(takeover_abroad > 0.85, "{takeover_abroad}");
        // Order does not matter; the strongest of the group counts in full.
        let a = combine(&[(Size, 1.0), (Endpoint, 0.5)], |_, s| s);
        let b = combine(&[(Endpoint, 0.5), (Size, 1.0)], |_, s| s);
        assert!((a - b).abs() < 1e-12 && (a - (1.0 - 0.7 * (1.0 - 0.25 * SAME_KIND_SHARE))).abs() < 1e-12, "{a} {b}");
    }

    #[test]
    fn requests_from_the_learned_mix_score_low() {
        let mut rng = Rng(7);
        let (mut p, mut t) = trained(&mut rng);
        let mut scores = Vec::new();
        for _ in 0..200 {
            t += gap(&mut rng);
            let (o, status) = usual(&mut rng, t);
            scores.push(scored(assess_and_learn(&mut p, &o, "/x", &learning(), &scoring())).score);
            p.learn_status(status, 1.0);
        }
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        let max = scores.iter().copied().fold(0.0, f64::max);
        assert!(mean < 0.12, "mean {mean}");
        assert!(max < 0.7, "no routine request is a deviation: max {max}");
    }

    #[test]
    fn one_new_endpoint_alone_is_noted_but_is_not_a_deviation() {
        let mut rng = Rng(11);
        let (mut p, t) = trained(&mut rng);
        let (mut o, _) = usual(&mut rng, t + 2_000);
        o.route = 99;
        o.method = Method::Get;
        o.request_bytes = 0;
        let d = scored(assess_and_learn(&mut p, &o, "/admin/users", &learning(), &scoring()));
        assert!(part(&d, Component::Endpoint) > 0.95, "{:?}", d.parts);
        assert!(d.score > 0.4 && d.score < 0.7, "{}", d.score);
        assert!(d.reasons.iter().any(|r| r.contains("new endpoint /admin/users")), "{:?}", d.reasons);
    }

    #[test]
    fn new_endpoints_at_a_new_rate_from_a_new_country_is_a_deviation() {
        let mut rng = Rng(13);
        let (mut p, mut t) = trained(&mut rng);
        let mut last = None;
        let mut reasons = Vec::new();
        for i in 0..10u32 {
            t += 15;
            let o = Observation {
                time_ms: t,
                route: 100 + i,
                method: Method::Get,
                request_bytes: 0,
                session: None,
                country: country_code(b"KP"),
                asn: Some(64_512),
                device: None,
                object: None,
            };
            let d = scored(assess_and_learn(&mut p, &o, "/admin/export", &learning(), &scoring()));
            assert!(d.score > 0.9, "request {i}: {} {:?}", d.score, d.parts);
            reasons.extend(d.reasons.iter().cloned());
            last = Some(d);
        }
        let d = last.unwrap();
        assert!(part(&d, Component::Rate) > 0.9, "{:?}", d.parts);
        assert!(part(&d, Component::Mix) > 0.5, "{:?}", d.parts);
        let why = reasons.join(" | ");
        for expected in ["new endpoint /admin/export", "new country KP", "faster than usual", "DE -> KP"] {
            assert!(why.contains(expected), "{expected:?} missing from {why}");
        }
    }

    #[test]
    fn timing_z_scores_flag_a_faster_pace_not_a_pause() {
        let mut rng = Rng(17);
        let (p0, t0) = trained(&mut rng);
        // Ten requests 20 ms apart: about 100x the usual pace.
        let (mut p, mut t) = (p0.clone(), t0);
        let mut rate = 0.0;
        for _ in 0..10 {
            t += 20;
            let (o, _) = usual(&mut rng, t);
            rate = part(&scored(assess_and_learn(&mut p, &o, "/x", &learning(), &scoring())), Component::Rate);
        }
        assert!(rate > 0.95, "{rate}");
        // A user back after lunch is not suspicious.
        let (mut p, t) = (p0, t0 + 60 * MIN);
        let (o, _) = usual(&mut rng, t);
        let d = scored(assess_and_learn(&mut p, &o, "/x", &learning(), &scoring()));
        assert!(part(&d, Component::Rate) < 0.05, "{:?}", d.parts);
    }

    #[test]
    fn unusual_methods_sizes_and_failure_bursts_score() {
        let mut rng = Rng(19);
        let (p0, t) = trained(&mut rng);
        let (mut o, _) = usual(&mut rng, t + 2_000);
        o.method = Method::Delete;
        let d = scored(assess_and_learn(&mut p0.clone(), &o, "/x", &learning(), &scoring()));
        assert!(part(&d, Component::Method) > 0.9, "{:?}", d.parts);

        let (mut o, _) = usual(&mut rng, t + 2_000);
        o.request_bytes = 5_000_000;
        let d = scored(assess_and_learn(&mut p0.clone(), &o, "/x", &learning(), &scoring()));
        assert!(part(&d, Component::Size) > 0.9, "{:?}", d.parts);

        let mut p = p0;
        for _ in 0..8 {
            p.learn_status(401, 1.0);
        }
        let (o, _) = usual(&mut rng, t + 2_000);
        let d = scored(assess_and_learn(&mut p, &o, "/x", &learning(), &scoring()));
        assert!(part(&d, Component::Failures) > 0.9, "{:?}", d.parts);
        assert!(d.reasons.iter().any(|r| r.contains("401/403/404")));
    }

    #[test]
    fn a_cold_profile_is_reported_cold_never_anomalous() {
        let mut p = Profile::default();
        for i in 0..20u64 {
            let o = Observation {
                time_ms: i,
                route: i as u32,
                method: Method::Other,
                request_bytes: i * 1_000_000,
                session: None,
                country: Some(i as u16 + 1),
                asn: None,
                device: None,
                object: None,
            };
            assert_eq!(assess_and_learn(&mut p, &o, "/x", &learning(), &scoring()), Assessment::Cold {
                observations: i as u32 + 1
            });
        }
    }

    #[test]
    fn a_country_change_is_impossible_travel_only_when_fast() {
        let mut rng = Rng(23);
        let (p0, t) = trained(&mut rng);
        let (mut o, _) = usual(&mut rng, t + 5 * MIN);
        o.country = country_code(b"BR");
        let d = scored(assess_and_learn(&mut p0.clone(), &o, "/x", &learning(), &scoring()));
        assert_eq!(part(&d, Component::Travel), 1.0);
        o.time_ms = t + 10 * 60 * MIN;
        let d = scored(assess_and_learn(&mut p0.clone(), &o, "/x", &learning(), &scoring()));
        assert_eq!(part(&d, Component::Travel), 0.0);
        assert!(part(&d, Component::Country) > 0.9, "still a new country");
    }

    #[test]
    fn a_broad_user_is_not_told_every_untracked_endpoint_is_new() {
        let mut p = Profile::default();
        // 20 endpoints used evenly: 12 tracked, 8 in "other".
        for i in 0..400u64 {
            let o = Observation {
                time_ms: i * 2_000,
                route: (i % 20) as u32,
                method: Method::Get,
                request_bytes: 0,
                session: None,
                country: None,
                asn: None,
                device: None,
                object: None,
            };
            assess_and_learn(&mut p, &o, "/x", &learning(), &scoring());
        }
        let untracked = (0..20u32).find(|r| p.route_weight(*r).is_none()).unwrap();
        let o = Observation {
            time_ms: 400 * 2_000,
            route: untracked,
            method: Method::Get,
            request_bytes: 0,
            session: None,
            country: None,
            asn: None,
            device: None,
            object: None,
        };
        let d = scored(assess_and_learn(&mut p, &o, "/x", &learning(), &scoring()));
        assert!(part(&d, Component::Endpoint) < 0.2, "{:?}", d.parts);
    }
}
