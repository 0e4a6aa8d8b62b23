//! The feature vector a model sees: a fixed order, a version sent with every
//! call, every value in [0, 1]. A model trained on one version keeps working
//! as long as the filter sends that version (`ml_model_config.feature_version`);
//! a change of meaning or order is a new version. docs/ml-integration.md lists
//! the same tables.
//!
//! `vigil.v2` (the default) gives the model what the local detectors do not
//! combine: the identity's last minute (requests, distinct objects, endpoints,
//! failed answers, a sequential walk) and its age, beside the request's shape.
//! It carries no detector's verdict: `vigil.v1` did (the behaviour and traffic
//! scores), so in `cascade`, where the model is asked exactly when those scores
//! are doubtful, it mostly restated them, and counted them twice.

use crate::engine::features::{Features, Method};
use crate::engine::identity::IdentityKind;
use crate::engine::profile::activity::Summary;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Version {
    #[serde(rename = "vigil.v1")]
    V1,
    #[default]
    #[serde(rename = "vigil.v2")]
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "vigil.v1",
            Version::V2 => "vigil.v2",
        }
    }

    pub fn names(self) -> &'static [&'static str] {
        match self {
            Version::V1 => &NAMES_V1,
            Version::V2 => &NAMES_V2,
        }
    }

    pub fn width(self) -> usize {
        self.names().len()
    }
}

pub const NAMES_V1: [&str; 12] = [
    "method_write",
    "request_bytes",
    "route_depth",
    "route_params",
    "hour_sin",
    "hour_cos",
    "rate_ratio",
    "behavioral_score",
    "profile_maturity",
    "traffic_anomaly_score",
    "identity_weak",
    "has_session",
];

pub const NAMES_V2: [&str; 16] = [
    "method_write",
    "request_bytes",
    "route_depth",
    "route_params",
    "hour_sin",
    "hour_cos",
    "rate_ratio",
    "profile_maturity",
    "identity_weak",
    "has_session",
    "identity_age",
    "minute_requests",
    "minute_objects",
    "minute_endpoints",
    "minute_fail_share",
    "walk_run",
];

/// The longest vector of any version.
pub const MAX_LEN: usize = 16;

/// What the pipeline knows beyond the features table.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// Requests in the identity's rate window, and the ceiling.
    pub rate: Option<(u32, u32)>,
    pub profile_observations: Option<u32>,
    /// The identity's last sliding minute (with profiling on).
    pub activity: Option<Summary>,
}

/// One request's vector: `values()` is as long as its version says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vector {
    version: Version,
    values: [f32; MAX_LEN],
}

impl Vector {
    pub fn version(&self) -> Version {
        self.version
    }

    pub fn values(&self) -> &[f32] {
        self.values.get(..self.version.width()).unwrap_or(&self.values)
    }

    /// A vector of `version` with these leading values (tests, replays).
    pub fn with_values(version: Version, leading: &[f32]) -> Vector {
        let mut values = [0.0; MAX_LEN];
        for (slot, x) in values.iter_mut().take(version.width()).zip(leading) {
            *slot = *x;
        }
        Vector { version, values }
    }

    fn get(&self, i: usize) -> f32 {
        self.values().get(i).copied().unwrap_or(0.0)
    }
}

pub fn build(version: Version, f: &Features, ctx: &Context) -> Vector {
    let method_write = !matches!(f.method, Method::Get | Method::Head | Method::Options);
    let segments = f.route.split('/').filter(|s| !s.is_empty()).count();
    let params = f.route.matches('{').count();
    let hour = (f.time_ms % 86_400_000) as f64 / 3_600_000.0;
    let angle = std::f64::consts::TAU * hour / 24.0;
    let rate_ratio = ctx.rate.map_or(0.0, |(n, ceiling)| f64::from(n) / f64::from(ceiling.max(1)) / 2.0);
    let maturity = ctx.profile_observations.map_or(0.0, |n| (1.0 + f64::from(n)).log2() / 16.0);
    let weak = matches!(f.identity.kind, IdentityKind::ClientIp | IdentityKind::Anonymous);
    let shape = [
        flag(method_write),
        (1.0 + f.request_bytes as f64).log2() / 30.0,
        segments as f64 / 8.0,
        params as f64 / 4.0,
        (1.0 + angle.sin()) / 2.0,
        (1.0 + angle.cos()) / 2.0,
        rate_ratio,
    ];
    let mut values = [0.0f64; MAX_LEN];
    match version {
        Version::V1 => {
            let rest = [
                f.behavioral_score.unwrap_or(0.0),
                maturity,
                f.traffic_anomaly_score.unwrap_or(0.0),
                flag(weak),
                flag(f.session.is_some()),
            ];
            fill(&mut values, &shape, &rest);
        }
        Version::V2 => {
            let a = ctx.activity.unwrap_or_default();
            // Log scales: 1 request a minute is 0.1, 1,023 is 1; the
            // minute's shares and counts say how busy, not how long.
            let per_minute = |n: f64| (1.0 + n.max(0.0)).log2() / 10.0;
            let rest = [
                maturity,
                flag(weak),
                flag(f.session.is_some()),
                // 0 for the first request, 0.5 at 9 hours, 1 from about 12 days.
                if a.age_ms == 0 { 0.0 } else { (1.0 + a.age_ms as f64 / 1000.0).log2() / 20.0 },
                per_minute(a.requests),
                per_minute(a.objects),
                (1.0 + a.routes.max(0.0)).log2() / 6.0,
                if a.requests > 0.0 { a.fails / a.requests } else { 0.0 },
                (1.0 + f64::from(a.run)).log2() / 8.0,
            ];
            fill(&mut values, &shape, &rest);
        }
    }
    Vector { version, values: values.map(|v| if v.is_finite() { v.clamp(0.0, 1.0) as f32 } else { 0.0 }) }
}

/// What kind of request this is, coarsely: each feature that describes the
/// request or the identity's minute (not the hour, not the profile's age) in
/// four levels, packed. Two requests of the same kind from one identity share
/// it, so `async` need not ask about the second; a request of a new kind gets
/// asked about.
pub fn fingerprint(v: &Vector) -> u32 {
    const KIND_V1: [usize; 9] = [0, 1, 2, 3, 6, 7, 9, 10, 11];
    const KIND_V2: [usize; 13] = [0, 1, 2, 3, 6, 8, 9, 11, 12, 13, 14, 15, 10];
    let kind: &[usize] = match v.version {
        Version::V1 => &KIND_V1,
        Version::V2 => &KIND_V2,
    };
    kind.iter().fold(0u32, |acc, &i| {
        let level = ((v.get(i) * 4.0) as u32).min(3);
        (acc << 2) | level
    })
}

/// The request's shape, then the version's own features, in order.
fn fill(values: &mut [f64; MAX_LEN], shape: &[f64], rest: &[f64]) {
    for (slot, x) in values.iter_mut().zip(shape.iter().chain(rest)) {
        *slot = *x;
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::identity::Identity;

    fn features() -> Features {
        Features::new("r".into(), Identity { kind: IdentityKind::User, hash: 7 }, Method::Get, "/users/{id}".into(), 6 * 3_600_000)
    }

    fn v1(f: &Features, ctx: &Context) -> Vector {
        build(Version::V1, f, ctx)
    }

    #[test]
    fn the_v1_vector_has_the_documented_order_and_range() {
        let v = v1(&features(), &Context::default());
        let x = v.values();
        assert_eq!(x.len(), NAMES_V1.len());
        assert_eq!(x[0], 0.0);
        assert_eq!(x[1], 0.0);
        assert_eq!(x[2], 0.25, "two segments of eight");
        assert_eq!(x[3], 0.25, "one parameter of four");
        assert!((x[4] - 1.0).abs() < 1e-6 && (x[5] - 0.5).abs() < 1e-6, "06:00 UTC: sin 1, cos 0");
        assert_eq!(&x[6..], &[0.0; 6]);

        let mut f = features();
        f.method = Method::Delete;
        f.request_bytes = u64::MAX;
        f.route = "/a/{id}/b/{id}/c/{id}/d/{id}/e/{id}".into();
        f.identity.kind = IdentityKind::ClientIp;
        f.session = Some(3);
        f.behavioral_score = Some(f64::NAN);
        f.traffic_anomaly_score = Some(0.4);
        let v = v1(&f, &Context { rate: Some((1500, 600)), profile_observations: Some(u32::MAX), activity: None });
        let x = v.values();
        assert!(x.iter().all(|x| (0.0..=1.0).contains(x)), "{x:?}");
        assert_eq!([x[0], x[2], x[3], x[6], x[8], x[10], x[11]], [1.0; 7], "saturated, never above 1");
        assert_eq!(x[1], 1.0);
        assert_eq!(x[7], 0.0, "a non-finite input becomes 0");
        assert!((x[9] - 0.4).abs() < 1e-6);
        let half = v1(&features(), &Context { rate: Some((600, 600)), profile_observations: Some(0), activity: None });
        assert_ne!(fingerprint(&v), fingerprint(&half), "a different kind of request");
        let mut later = features();
        later.time_ms += 5 * 3_600_000;
        let (a, b) = (v1(&features(), &Context::default()), v1(&later, &Context { profile_observations: Some(500), ..Context::default() }));
        assert_eq!(fingerprint(&a), fingerprint(&b), "the same kind: the hour and the profile's age do not count");
        assert_eq!((half.values()[6], half.values()[8]), (0.5, 0.0), "at the ceiling: 0.5; a profile of 0 observations: 0");
    }

    #[test]
    fn the_v2_vector_carries_the_identitys_minute_and_no_detectors_verdict() {
        let mut f = features();
        f.behavioral_score = Some(0.9);
        f.traffic_anomaly_score = Some(0.9);
        f.session = Some(1);
        let quiet = Summary { requests: 3.0, objects: 1.0, routes: 2.0, fails: 0.0, run: 0, age_ms: 600_000, objects_known: true };
        let ctx = Context { rate: Some((30, 600)), profile_observations: Some(255), activity: Some(quiet) };
        let v = build(Version::V2, &f, &ctx);
        let x = v.values();
        assert_eq!((x.len(), v.version().as_str()), (16, "vigil.v2"));
        assert_eq!(NAMES_V2.len(), x.len());
        assert_eq!(&x[..4], &v1(&f, &ctx).values()[..4], "the request's shape as in v1");
        assert_eq!((x[7], x[8], x[9]), (0.5, 0.0, 1.0), "maturity of 255 observations, a user, a session");
        assert!((x[10] - (601.0f32).log2() / 20.0).abs() < 1e-6, "ten minutes old");
        assert!((x[11] - 0.2).abs() < 1e-6, "3 requests in the minute: log2(4)/10");
        assert_eq!(x[14], 0.0);
        assert!(!x.contains(&0.9), "no detector's score: {x:?}");

        let scraper = Summary { requests: 900.0, objects: 850.0, routes: 1.0, fails: 450.0, run: 255, age_ms: 0, objects_known: false };
        let w = build(Version::V2, &f, &Context { activity: Some(scraper), ..ctx });
        let y = w.values();
        assert_eq!(y[10], 0.0, "a first request has no age");
        assert!(y[11] > 0.9 && y[12] > 0.9, "{y:?}");
        assert_eq!((y[14], y[15]), (0.5, 1.0), "half its answers failed; a walk of 255 steps");
        assert_ne!(fingerprint(&v), fingerprint(&w), "a busy minute is another kind of request");

        let hostile = Summary { requests: f64::INFINITY, objects: f64::NAN, routes: -5.0, fails: 7.0, run: u16::MAX, age_ms: u64::MAX, objects_known: false };
        let z = build(Version::V2, &f, &Context { activity: Some(hostile), ..ctx });
        assert!(z.values().iter().all(|x| (0.0..=1.0).contains(x)), "{:?}", z.values());
        let none = build(Version::V2, &f, &Context::default());
        assert_eq!(&none.values()[10..], &[0.0; 6], "no profile: no minute");
    }
}
