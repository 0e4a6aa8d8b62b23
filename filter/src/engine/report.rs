//! How a verdict is told: headers for the upstream, the local reply body, and
//! the record behind the access log. Formats here are contracts (tests and
//! operators parse them), documented in docs/configuration.md.

use super::pipeline::{ProfileState, Verdict};
use super::text;

pub const HEADER_RISK: &str = "x-vigil-risk-score";
pub const HEADER_DECISION: &str = "x-vigil-decision";
pub const HEADER_SIGNALS: &str = "x-vigil-signals";
pub const HEADERS: [&str; 3] = [HEADER_RISK, HEADER_DECISION, HEADER_SIGNALS];

/// `x-vigil-signals`: `name=score` per signal, then evidence as `key=value`,
/// separated by `;`, e.g. `rate=0.000;rate_count=12;identity=user:…`.
pub fn signals(v: &Verdict) -> String {
    let mut out = String::with_capacity(160);
    for s in &v.signals {
        out.push_str(s.name);
        out.push('=');
        text::push_fixed3(&mut out, s.score);
        out.push(';');
    }
    out.push_str("risk_interval=");
    text::push_fixed3(&mut out, v.interval.0);
    out.push_str("..");
    text::push_fixed3(&mut out, v.interval.1);
    out.push(';');
    if let Some(n) = v.rate_count {
        out.push_str("rate_count=");
        text::push_u64(&mut out, u64::from(n));
        out.push(';');
    }
    let profile = match v.profile {
        Some(ProfileState::Cold { observations }) => Some(("profile=cold:", observations)),
        Some(ProfileState::Warm { observations }) => Some(("profile=warm:", observations)),
        None => None,
    };
    if let Some((label, observations)) = profile {
        out.push_str(label);
        text::push_u64(&mut out, u64::from(observations));
        out.push(';');
    }
    out.push_str("identity=");
    v.features.identity.write_to(&mut out);
    out
}

pub fn risk(v: &Verdict) -> String {
    let mut out = String::with_capacity(8);
    text::push_fixed3(&mut out, v.risk);
    out
}

/// The JSON body of a throttle or block reply. It names the request id so a
/// refused client can quote it to support, and gives nothing else away.
pub fn reply_body(v: &Verdict) -> String {
    let error = match v.decision.status() {
        Some(429) => "too_many_requests",
        _ => "forbidden",
    };
    serde_json::json!({
        "error": error,
        "decision": v.decision.as_str(),
        "request_id": v.features.request_id,
    })
    .to_string()
}

/// One JSON object per request with Vigil's fields, for the access log;
/// `with_features` adds the model's feature vector (`export_features`).
pub fn log_record(v: &Verdict, with_features: bool) -> String {
    let reasons: Vec<String> = v.threat_details.iter().map(|d| format!("{}: {}", d.signal, d.reason)).collect();
    let mut record = serde_json::json!({
        "request_id": v.features.request_id,
        "identity": v.features.identity.display(),
        "route": v.features.route,
        "method": v.features.method.as_str(),
        "risk_score": (v.risk * 1000.0).round() / 1000.0,
        "risk_interval": [(v.interval.0 * 1000.0).round() / 1000.0, (v.interval.1 * 1000.0).round() / 1000.0],
        "behavioral_score": v.features.behavioral_score.map(|s| (s * 1000.0).round() / 1000.0),
        "traffic_anomaly_score": v.features.traffic_anomaly_score.map(|s| (s * 1000.0).round() / 1000.0),
        "user_deviation_score": v.features.user_deviation_score.map(|s| (s * 1000.0).round() / 1000.0),
        "decision": v.decision.as_str(),
        "enforced": v.enforced,
        "signals": signals(v),
        "threat_details": reasons,
    });
    if let (true, Some(vector), Some(obj)) = (with_features, &v.ml_vector, record.as_object_mut()) {
        // Rounded: four decimals are plenty to train on and keep lines short.
        let values: Vec<f64> = vector.values().iter().map(|x| (f64::from(*x) * 1e4).round() / 1e4).collect();
        obj.insert("ml_features".into(), values.into());
    }
    record.to_string()
}
