//! The feature vector a model sees: a fixed order, a version sent with every
//! call, every value in [0, 1]. A model trained on `vigil.v1` keeps working
//! as long as the filter sends `vigil.v1`; a change of meaning or order is a
//! new version. docs/ml-integration.md lists the same table.

use crate::engine::features::{Features, Method};
use crate::engine::identity::IdentityKind;

pub const VERSION: &str = "vigil.v1";
pub const LEN: usize = 12;
pub const NAMES: [&str; LEN] = [
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

/// What the pipeline knows beyond the features table.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// Requests in the identity's rate window, and the ceiling.
    pub rate: Option<(u32, u32)>,
    pub profile_observations: Option<u32>,
}

pub type Vector = [f32; LEN];

pub fn build(f: &Features, ctx: &Context) -> Vector {
    let method_write = !matches!(f.method, Method::Get | Method::Head | Method::Options);
    let segments = f.route.split('/').filter(|s| !s.is_empty()).count();
    let params = f.route.matches('{').count();
    let hour = (f.time_ms % 86_400_000) as f64 / 3_600_000.0;
    let angle = std::f64::consts::TAU * hour / 24.0;
    let rate_ratio = ctx.rate.map_or(0.0, |(n, ceiling)| f64::from(n) / f64::from(ceiling.max(1)) / 2.0);
    let maturity = ctx.profile_observations.map_or(0.0, |n| (1.0 + f64::from(n)).log2() / 16.0);
    let weak = matches!(f.identity.kind, IdentityKind::ClientIp | IdentityKind::Anonymous);
    let values = [
        flag(method_write),
        (1.0 + f.request_bytes as f64).log2() / 30.0,
        segments as f64 / 8.0,
        params as f64 / 4.0,
        (1.0 + angle.sin()) / 2.0,
        (1.0 + angle.cos()) / 2.0,
        rate_ratio,
        f.behavioral_score.unwrap_or(0.0),
        maturity,
        f.traffic_anomaly_score.unwrap_or(0.0),
        flag(weak),
        flag(f.session.is_some()),
    ];
    values.map(|v| if v.is_finite() { v.clamp(0.0, 1.0) as f32 } else { 0.0 })
}

/// What kind of request this is, coarsely: each feature that describes the
/// request (not the hour, not the profile's age) in four levels, packed. Two
/// requests of the same kind from one identity share it, so `async` need not
/// ask about the second; a request of a new kind gets asked about.
pub fn fingerprint(v: &Vector) -> u32 {
    const KIND: [usize; 9] = [0, 1, 2, 3, 6, 7, 9, 10, 11];
    KIND.iter().fold(0u32, |acc, &i| {
        let level = v.get(i).map_or(0, |x| ((x * 4.0) as u32).min(3));
        (acc << 2) | level
    })
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

    #[test]
    fn the_vector_has_the_documented_order_and_range() {
        let v = build(&features(), &Context::default());
        assert_eq!(v.len(), NAMES.len());
        assert_eq!(v[0], 0.0);
        assert_eq!(v[1], 0.0);
        assert_eq!(v[2], 0.25, "two segments of eight");
        assert_eq!(v[3], 0.25, "one parameter of four");
        assert!((v[4] - 1.0).abs() < 1e-6 && (v[5] - 0.5).abs() < 1e-6, "06:00 UTC: sin 1, cos 0");
        assert_eq!(&v[6..], &[0.0; 6]);

        let mut f = features();
        f.method = Method::Delete;
        f.request_bytes = u64::MAX;
        f.route = "/a/{id}/b/{id}/c/{id}/d/{id}/e/{id}".into();
        f.identity.kind = IdentityKind::ClientIp;
        f.session = Some(3);
        f.behavioral_score = Some(f64::NAN);
        f.traffic_anomaly_score = Some(0.4);
        let v = build(&f, &Context { rate: Some((1500, 600)), profile_observations: Some(u32::MAX) });
        assert!(v.iter().all(|x| (0.0..=1.0).contains(x)), "{v:?}");
        assert_eq!([v[0], v[2], v[3], v[6], v[8], v[10], v[11]], [1.0; 7], "saturated, never above 1");
        assert_eq!(v[1], 1.0);
        assert_eq!(v[7], 0.0, "a non-finite input becomes 0");
        assert!((v[9] - 0.4).abs() < 1e-6);
        let half = build(&features(), &Context { rate: Some((600, 600)), profile_observations: Some(0) });
        assert_ne!(fingerprint(&v), fingerprint(&half), "a different kind of request");
        let mut later = features();
        later.time_ms += 5 * 3_600_000;
        let (a, b) = (build(&features(), &Context::default()), build(&later, &Context { rate: None, profile_observations: Some(500) }));
        assert_eq!(fingerprint(&a), fingerprint(&b), "the same kind: the hour and the profile's age do not count");
        assert_eq!((half[6], half[8]), (0.5, 0.0), "at the ceiling: 0.5; a profile of 0 observations: 0");
    }
}
