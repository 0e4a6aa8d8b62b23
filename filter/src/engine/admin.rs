//! The admin API, engine side: authentication, rate limit, routing and the
//! JSON answers. The host hands in the call (method, path, authorization,
//! body) and sends back what this returns; nothing here touches the host.
//!
//! Endpoints under `admin.path_prefix` (default `/vigil/admin`), all JSON:
//! - `POST /feedback?request_id=…|identity=…|route=…&verdict=false_positive|confirmed_threat&note=…`
//!   (parameters in the query string: a Wasm filter that pauses in the
//!   request headers gets no body callbacks, so the API reads no body)
//! - `GET /identities/{kind:hash}`: profile, risk history and trend, feedback
//! - `GET /thresholds`: base thresholds and each route group's state
//! - `GET /models`: precision and recall per detector and model, model latency
//!
//! Every call needs `authorization: Bearer <token>` whose SHA-256 is in
//! `admin.token_sha256` (compared in constant time), counts against
//! `admin.requests_per_minute` (all workers together, checked first, so
//! guessing tokens is slow too), and is audit-logged.

use super::config::Config;
use super::events::{self, Event};
use super::feedback::{accuracy, FeedbackError, Target, DETECTORS};
use super::identity::IdentityKind;
use super::pipeline::Engine;
use super::codec::{Reader, Writer};
use super::ports::{Metric, MetricsSink, SharedStore, StoreError, Table};
use super::record;
use super::profile::standing::Label;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The longest query string the admin API reads.
pub const MAX_QUERY: usize = 2048;
const RATE_KEY: &str = "vigil/admin/calls";
/// Every outcome a call is counted under (`vigil_admin_calls_total{outcome}`).
pub const OUTCOMES: [&str; 7] = ["ok", "unauthorized", "bad_request", "not_found", "rate_limited", "unavailable", "error"];

/// One call, as the host read it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub method: &'a str,
    /// The path with its query, as sent.
    pub path: &'a str,
    pub authorization: Option<&'a [u8]>,
}

/// The answer: status, JSON body, and the lines to log (the audit line
/// first, then any security event).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub log: Vec<String>,
}

/// The configured token digests, decoded once.
pub fn token_digests(config: &Config) -> Vec<[u8; 32]> {
    config.admin.token_sha256.iter().filter_map(|h| hex32(h)).collect()
}

fn hex32(h: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(h.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether `token`'s digest is one of `digests`: every digest is compared
/// in full, whatever matches, so the time says nothing about the token.
pub fn authorized(token: &[u8], digests: &[[u8; 32]]) -> bool {
    let digest: [u8; 32] = Sha256::digest(token).into();
    let mut any = 0u8;
    for d in digests {
        let diff = d.iter().zip(digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        any |= u8::from(diff == 0);
    }
    any == 1
}

/// A short, non-reversible name for the caller's token in the audit log.
fn token_tag(token: Option<&[u8]>) -> String {
    match token {
        Some(t) => {
            let d = Sha256::digest(t);
            d.iter().take(4).map(|b| format!("{b:02x}")).collect()
        }
        None => "none".into(),
    }
}

fn bearer(authorization: Option<&[u8]>) -> Option<&[u8]> {
    let v = authorization?.trim_ascii();
    let scheme = v.get(..7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| v.get(7..)).flatten().map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

fn error(status: u16, code: &str, message: impl Into<String>) -> (u16, Value) {
    (status, json!({"error": code, "message": message.into()}))
}

/// Counts a call against the shared per-minute budget. `Ok(false)` when it is spent.
fn within_rate(limit: u32, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<bool, StoreError> {
    let minute = now_ms / 60_000;
    record::update(store, metrics, Table::Feedback, RATE_KEY, |bytes| {
        let mut r = Reader(bytes.unwrap_or_default());
        let count = match (r.u64(), r.u32()) {
            (Some(m), Some(n)) if m == minute => n,
            _ => 0,
        };
        if count >= limit {
            return (None, false);
        }
        let mut next = Vec::with_capacity(12);
        let mut w = Writer(&mut next);
        w.u64(minute);
        w.u32(count + 1);
        (Some(next), true)
    })
}

/// Serves one admin call.
pub fn serve(
    engine: &Engine,
    digests: &[[u8; 32]],
    call: &Call,
    now_ms: u64,
    store: &dyn SharedStore,
    metrics: &dyn MetricsSink,
) -> Reply {
    let token = bearer(call.authorization);
    let mut events = Vec::new();
    let (status, body, outcome) = match within_rate(engine.config.admin.requests_per_minute, now_ms, store, metrics) {
        Err(e) => {
            let (s, b) = error(503, "unavailable", format!("shared data failed ({e:?})"));
            (s, b, "unavailable")
        }
        Ok(false) => {
            let (s, b) = error(429, "rate_limited", format!("more than {} admin calls this minute", engine.config.admin.requests_per_minute));
            (s, b, "rate_limited")
        }
        Ok(true) if !token.is_some_and(|t| authorized(t, digests)) => {
            let (s, b) = error(401, "unauthorized", "a bearer token whose SHA-256 is in admin.token_sha256 is required");
            (s, b, "unauthorized")
        }
        Ok(true) => {
            let (s, b) = route(engine, call, now_ms, store, metrics, &mut events);
            let outcome = match s {
                200 => "ok",
                400 | 405 | 413 => "bad_request",
                404 => "not_found",
                _ => "error",
            };
            (s, b, outcome)
        }
    };
    metrics.add(Metric::AdminCalls(outcome), 1);
    let path = call.path.split('?').next().unwrap_or("");
    let path: String = path.chars().take(200).filter(|c| c.is_ascii_graphic()).collect();
    let mut log = vec![format!(
        "vigil-audit admin call method={} path={path} status={status} outcome={outcome} token={}",
        call.method.chars().take(10).filter(char::is_ascii_alphabetic).collect::<String>(),
        token_tag(token)
    )];
    for e in &events {
        metrics.add(Metric::Events(e.kind), 1);
        log.extend(engine.emit_event(e, now_ms, metrics));
    }
    Reply { status, body: body.to_string(), log }
}

fn route(engine: &Engine, call: &Call, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink, events: &mut Vec<Event>) -> (u16, Value) {
    let prefix = engine.config.admin.path_prefix.as_str();
    let path = call.path.split('?').next().unwrap_or("");
    let Some(rest) = path.strip_prefix(prefix) else { return error(404, "not_found", "no such admin endpoint") };
    let endpoint = rest.trim_end_matches('/');
    let method = call.method;
    match (method, endpoint) {
        ("POST", "/feedback") => match query_fields(call.path.split_once('?').map_or("", |(_, q)| q)) {
            Ok(o) => feedback(engine, o, now_ms, store, metrics, events),
            Err(m) => error(400, "bad_request", m),
        },
        ("GET", "/thresholds") => thresholds(engine, store),
        ("GET", "/models") => models(engine, store),
        ("GET", e) if e.starts_with("/identities/") => identity(engine, e.trim_start_matches("/identities/"), store, metrics),
        (_, "/feedback" | "/thresholds" | "/models") => error(405, "method_not_allowed", format!("{method} is not served here")),
        _ => error(404, "not_found", "no such admin endpoint"),
    }
}

/// `kind:16-hex` (as logs show it), or `kind=value` for a raw identity,
/// hashed with the deployment's key.
fn parse_identity(engine: &Engine, s: &str) -> Result<(u64, String), String> {
    let kind_of = |k: &str| match k {
        "user" => Some(IdentityKind::User),
        "jwt" => Some(IdentityKind::Jwt),
        "api_key" => Some(IdentityKind::ApiKey),
        "client_ip" => Some(IdentityKind::ClientIp),
        _ => None,
    };
    if let Some((k, hex)) = s.split_once(':') {
        let kind = kind_of(k).ok_or_else(|| format!("unknown identity kind `{k}`"))?;
        if hex.len() == 16 {
            if let Ok(hash) = u64::from_str_radix(hex, 16) {
                return Ok((hash, format!("{}:{hex}", kind.as_str())));
            }
        }
        return Err("an identity is `kind:hash` as logged (16 hex digits), or `kind=value`".into());
    }
    if let Some((k, value)) = s.split_once('=') {
        let kind = kind_of(k).ok_or_else(|| format!("unknown identity kind `{k}`"))?;
        if value.is_empty() || value.len() > 256 {
            return Err("the identity value must be 1 to 256 bytes".into());
        }
        let hash = engine.identity_hash(kind, value.as_bytes());
        return Ok((hash, format!("{}:{hash:016x}", kind.as_str())));
    }
    Err("an identity is `kind:hash` as logged (16 hex digits), or `kind=value`".into())
}

/// `a=b&c=d`, percent-decoded (`+` is a space), each name at most once.
fn query_fields(query: &str) -> Result<serde_json::Map<String, Value>, String> {
    if query.len() > MAX_QUERY {
        return Err(format!("the query string is longer than {MAX_QUERY} bytes"));
    }
    let mut o = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(&k.replace('+', " ")), percent_decode(&v.replace('+', " ")));
        if o.insert(k.clone(), Value::String(v)).is_some() {
            return Err(format!("`{k}` is given twice"));
        }
    }
    Ok(o)
}

fn feedback(
    engine: &Engine,
    o: serde_json::Map<String, Value>,
    now_ms: u64,
    store: &dyn SharedStore,
    metrics: &dyn MetricsSink,
    events: &mut Vec<Event>,
) -> (u16, Value) {
    let allowed = ["request_id", "identity", "route", "verdict", "note"];
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return error(400, "bad_request", format!("unknown field `{k}`"));
    }
    let Some(label) = o.get("verdict").and_then(Value::as_str).and_then(Label::parse) else {
        return error(400, "bad_request", "`verdict` must be `false_positive` or `confirmed_threat`");
    };
    let note = match o.get("note") {
        None => None,
        Some(Value::String(n)) if n.len() <= 512 => Some(n.chars().filter(|c| !c.is_control()).collect::<String>()),
        Some(_) => return error(400, "bad_request", "`note` must be a string of at most 512 bytes"),
    };
    let str_field = |k: &'static str| o.get(k).map(|v| v.as_str().filter(|s| !s.is_empty() && s.len() <= 256).ok_or(k));
    let targets: Vec<_> = ["request_id", "identity", "route"].into_iter().filter(|k| o.contains_key(*k)).collect();
    if targets.len() != 1 {
        return error(400, "bad_request", "name exactly one of `request_id`, `identity`, `route`");
    }
    let target = match (str_field("request_id"), str_field("identity"), str_field("route")) {
        (Some(Ok(id)), _, _) => {
            if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
                return error(400, "bad_request", "`request_id` has characters a request id never has");
            }
            Target::Request(id.to_string())
        }
        (_, Some(Ok(i)), _) => match parse_identity(engine, i) {
            Ok((hash, display)) => Target::Identity(hash, display),
            Err(m) => return error(400, "bad_request", m),
        },
        (_, _, Some(Ok(r))) if r.starts_with('/') => Target::Route(super::route::template(r.as_bytes())),
        _ => return error(400, "bad_request", format!("`{}` must be a non-empty string (a route starts with `/`)", targets.first().copied().unwrap_or("target"))),
    };
    let applied = engine.apply_feedback(&target, label, now_ms, store, metrics);
    let a = match applied {
        Ok(a) => a,
        Err(FeedbackError::NotFound(m)) => return error(404, "not_found", m),
        Err(FeedbackError::Store(e)) => return error(503, "unavailable", format!("shared data failed ({e:?}); nothing changed, try again")),
    };
    metrics.add(Metric::Feedback(label, target.kind()), 1);
    let subject = match &target {
        Target::Request(id) => format!("request {id}"),
        Target::Identity(_, d) => format!("identity {d}"),
        Target::Route(r) => format!("route {r}"),
    };
    let mut e = Event::notice(
        events::Kind::Feedback,
        "operator feedback",
        3,
        now_ms,
        label.as_str(),
        format!("{subject} marked {}{}", label.as_str(), note.as_deref().map(|n| format!(": {n}")).unwrap_or_default()),
    );
    e.request_id = match &target {
        Target::Request(id) => Some(id.clone()),
        _ => None,
    };
    e.identity = a.identity.clone();
    e.route = a.route.clone();
    events.push(e);
    (
        200,
        json!({
            "status": "recorded",
            "verdict": label.as_str(),
            "target": target.kind(),
            "identity": a.identity,
            "route": a.route,
            "group": a.group,
            "group_offset": a.group_offset.map(round3),
            "identity_offset": a.identity_offset.map(round3),
            "pattern_kept": a.pattern_kept,
            "missed_threat": a.missed,
        }),
    )
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn thresholds(engine: &Engine, store: &dyn SharedStore) -> (u16, Value) {
    let t = &engine.feedback().thresholds;
    let cfg = &engine.config.adaptive_thresholds;
    let base = &engine.config.decision_thresholds;
    let groups = match t.read(store) {
        Ok(g) => g,
        Err(e) => return error(503, "unavailable", format!("shared data failed ({e:?})")),
    };
    let list: Vec<Value> = t
        .names()
        .iter()
        .zip(groups.iter())
        .enumerate()
        .map(|(i, (name, g))| {
            let now = super::feedback::shifted(base, f64::from(g.offset));
            let routes: Vec<&str> = if i == 0 {
                Vec::new()
            } else {
                cfg.route_groups.get(i - 1).map(|rg| rg.routes.iter().map(String::as_str).collect()).unwrap_or_default()
            };
            json!({
                "name": name,
                "routes": routes,
                "offset": round3(f64::from(g.offset)),
                "thresholds": {"flag": round3(now.flag), "throttle": round3(now.throttle), "block": round3(now.block)},
                "requests": g.requests,
                "flagged": g.flags,
                "last_flag_rate": round3(f64::from(g.last_flag_rate)),
                "false_positives": g.false_positives,
                "confirmed_threats": g.threats,
                "precision_estimate": round3(g.precision()),
                "adjustments": g.adjustments,
            })
        })
        .collect();
    (
        200,
        json!({
            "base": {"flag": base.flag, "throttle": base.throttle, "block": base.block},
            "adaptive": {
                "enabled": cfg.enabled,
                "target_false_positive_rate": cfg.target_false_positive_rate,
                "min_offset": cfg.min_offset,
                "max_offset": cfg.max_offset,
                "adjust_seconds": cfg.adjust_seconds,
            },
            "groups": list,
        }),
    )
}

fn models(engine: &Engine, store: &dyn SharedStore) -> (u16, Value) {
    let counts = match accuracy::read(store) {
        Ok(c) => c,
        Err(e) => return error(503, "unavailable", format!("shared data failed ({e:?})")),
    };
    let detectors: Vec<Value> = accuracy::named(&counts)
        .map(|(d, c)| {
            json!({
                "name": d.as_str(),
                "true_positives": c.true_positives,
                "false_positives": c.false_positives,
                "missed": c.missed,
                "precision": c.precision().map(round3),
                "recall": c.recall().map(round3),
            })
        })
        .collect();
    let latency = engine.ml().map(|m| m.latency_summary(store)).unwrap_or(Value::Array(Vec::new()));
    (200, json!({"detectors": detectors, "models": latency}))
}

fn identity(engine: &Engine, raw: &str, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> (u16, Value) {
    let (hash, display) = match parse_identity(engine, &percent_decode(raw)) {
        Ok(x) => x,
        Err(m) => return error(400, "bad_request", m),
    };
    let Some(p) = engine.profiler() else { return error(404, "not_found", "behavioral profiling is off: there are no identity profiles") };
    let profile = match p.read(hash, store, metrics) {
        Ok(Some(pr)) => pr,
        Ok(None) => return error(404, "not_found", format!("no profile for identity `{display}`")),
        Err(e) => return error(503, "unavailable", format!("shared data failed ({e:?})")),
    };
    let s = &profile.standing;
    let history: Vec<Value> = s
        .history
        .iter()
        .map(|h| json!({"time": events::syslog::rfc3339(u64::from(h.at_s) * 1000), "risk": f64::from(h.permille) / 1000.0}))
        .collect();
    let patterns: Vec<Value> = s
        .patterns
        .iter()
        .map(|pt| {
            let names: Vec<&str> = DETECTORS.iter().filter(|d| pt.mask & d.bit() != 0).map(|d| d.as_str()).collect();
            json!({
                "verdict": pt.label.as_str(),
                "route_hash": format!("{:08x}", pt.route),
                "detectors": names,
                "allowed_up_to": (pt.label == Label::FalsePositive).then(|| f64::from(pt.ceiling) / 1000.0),
                "decision_at_least": (pt.label == Label::ConfirmedThreat).then(|| super::feedback::decision_of(pt.decision).as_str()),
                "marked": events::syslog::rfc3339(u64::from(pt.at_s) * 1000),
            })
        })
        .collect();
    let min_obs = engine.config.behavioral_profiling.min_observations;
    (
        200,
        json!({
            "identity": display,
            "profile": {
                "observations": profile.observations,
                "state": if profile.observations >= min_obs { "warm" } else { "cold" },
                "weight": round3(f64::from(profile.weight)),
                "confidence": round3(super::scoring::profile_confidence(f64::from(profile.weight), min_obs)),
                "last_seen": (profile.last_ms > 0).then(|| events::syslog::rfc3339(profile.last_ms)),
                "routes_tracked": profile.routes.len(),
            },
            "risk": {
                "history": history,
                "recent_average": round3(f64::from(s.fast)),
                "long_average": round3(f64::from(s.slow)),
                "trend": round3(s.trend()),
            },
            "feedback": {
                "threshold_offset": round3(f64::from(s.offset)),
                "false_positives": s.false_positives,
                "confirmed_threats": s.threats,
                "patterns": patterns,
            },
            "drift": {
                "deviating_share": round3(f64::from(s.deviating)),
                "deviating_since": (s.deviating_since_s > 0).then(|| events::syslog::rfc3339(u64::from(s.deviating_since_s) * 1000)),
                "drifts": s.drifts,
                "last_rebased": (s.rebased_s > 0).then(|| events::syslog::rfc3339(u64::from(s.rebased_s) * 1000)),
            },
        }),
    )
}

/// `%3A` and friends in a path segment (an identity's `:`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b.get(i), hex) {
            (Some(b'%'), Some(v)) => {
                out.push(v);
                i += 3;
            }
            (Some(c), _) => {
                out.push(*c);
                i += 1;
            }
            (None, _) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config;
    use crate::engine::decision::Decision;
    use crate::engine::ports::memory::{MemoryCallouts, MemoryMetrics, MemoryStore};
    use crate::engine::request::HeaderList;

    const TOKEN: &str = "s3cret-admin-token";
    // sha256("s3cret-admin-token")
    fn digest_hex() -> String {
        Sha256::digest(TOKEN.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }

    fn config_json() -> String {
        format!(
            r#"{{"mode": "enforce", "rate_limit": {{"enabled": false}},
                "behavioral_profiling": {{"enable_user_profiling": true, "min_observations": 20,
                  "geo": {{"country_header": "x-geo-country"}}}},
                "admin": {{"token_sha256": ["{}"], "port": 9902, "requests_per_minute": 20}}}}"#,
            digest_hex()
        )
    }

    fn worker(store: &MemoryStore, metrics: &MemoryMetrics) -> Engine {
        let e = Engine::new(config::parse(config_json().as_bytes()).unwrap());
        e.start(store, metrics).unwrap();
        e
    }

    fn req(path: &str, country: &str, id: &str) -> HeaderList {
        HeaderList::from_pairs(&[(":method", "GET"), (":path", path), ("x-user-id", "mallory"), ("x-geo-country", country), ("x-request-id", id)])
    }

    fn call<'a>(method: &'a str, path: &'a str, auth: Option<&'a [u8]>) -> Call<'a> {
        Call { method, path, authorization: auth }
    }

    fn decide(e: &Engine, r: &HeaderList, t: u64, store: &MemoryStore, metrics: &MemoryMetrics) -> crate::engine::pipeline::Verdict {
        e.on_request(r, t, store, metrics)
    }

    #[test]
    fn a_false_positive_marked_on_one_worker_stops_the_pattern_on_both() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let workers = [worker(&store, &metrics), worker(&store, &metrics)];
        let calls = MemoryCallouts::default();
        let digests = token_digests(&workers[0].config);
        let mut t = 1_000_000;
        for i in 0..200u64 {
            t += 1_500 + (i * 7919) % 1_000;
            let w = &workers[(i % 2) as usize];
            let v = decide(w, &req(["/orders", "/cart", "/orders/12"][(i % 3) as usize], "DE", "r"), t, &store, &metrics);
            assert!(i < 40 || v.decision == Decision::Allow, "routine request {i}: {v:?}");
            for w in &workers {
                w.on_tick(t, 1, &store, &metrics, &calls);
            }
        }
        t += 10;
        let flagged = decide(&workers[0], &req("/admin/export", "KP", "export-1"), t, &store, &metrics);
        assert!(flagged.decision >= Decision::Flag, "{flagged:?}");
        let (low, high) = flagged.interval;
        assert!(low <= flagged.risk && flagged.risk <= high);

        // Without a token, or with a wrong one: 401, and nothing changes.
        let fp = "/vigil/admin/feedback?request_id=export-1&verdict=false_positive&note=known+batch+job";
        let before = (workers[1].feedback().thresholds.read(&store).unwrap(), accuracy::read(&store).unwrap());
        for auth in [None, Some(&b"Bearer wrong"[..]), Some(&b"Basic czNjcmV0"[..])] {
            let r = serve(&workers[1], &digests, &call("POST", fp, auth), t, &store, &metrics);
            assert_eq!(r.status, 401, "{r:?}");
            assert!(r.body.contains("\"error\":\"unauthorized\""));
            assert!(r.log[0].starts_with("vigil-audit admin call method=POST path=/vigil/admin/feedback status=401"));
        }
        assert_eq!((workers[1].feedback().thresholds.read(&store).unwrap(), accuracy::read(&store).unwrap()), before);
        let again = decide(&workers[1], &req("/admin/export", "KP", "export-2"), t + 5, &store, &metrics);
        assert!(again.decision >= Decision::Flag, "still flagged before the feedback");

        // The operator marks it a false positive through the other worker.
        let auth = format!("Bearer {TOKEN}");
        let r = serve(&workers[1], &digests, &call("POST", fp, Some(auth.as_bytes())), t + 10, &store, &metrics);
        assert_eq!(r.status, 200, "{r:?}");
        let reply: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(reply["pattern_kept"], true);
        assert_eq!(reply["group"], "default");
        assert!(r.log.iter().any(|l| l.starts_with("vigil-event CEF:0|") && l.contains("|feedback|")), "{:?}", r.log);
        assert_eq!(metrics.get(Metric::Feedback(Label::FalsePositive, "request")), 1);
        assert_eq!(metrics.get(Metric::Precision(crate::engine::feedback::Detector::Behavior)), 0);

        // A second later (a sync), the same pattern is allowed on both workers.
        t += 1_500;
        for w in &workers {
            w.on_tick(t, 1, &store, &metrics, &calls);
        }
        for (i, w) in workers.iter().enumerate() {
            t += 20;
            let v = decide(w, &req("/admin/export", "KP", "export-3"), t, &store, &metrics);
            assert_eq!(v.decision, Decision::Allow, "worker {i}: {v:?}");
            // Either the marked pattern let it through, or the moved baseline
            // no longer finds it unusual at all.
            let by_pattern = v.threat_details.iter().any(|d| d.signal == "feedback");
            assert!(by_pattern || v.risk < flagged.risk, "{v:?}");
        }

        // The identity's standing is readable, with its risk history.
        let r = serve(&workers[0], &digests, &call("GET", "/vigil/admin/identities/user=mallory", Some(auth.as_bytes())), t, &store, &metrics);
        assert_eq!(r.status, 200, "{r:?}");
        let id: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(id["feedback"]["false_positives"], 1);
        assert_eq!(id["feedback"]["patterns"][0]["verdict"], "false_positive");
        assert!(id["risk"]["history"].as_array().is_some_and(|h| !h.is_empty()));
        assert_eq!(id["profile"]["state"], "warm");
    }

    #[test]
    fn malformed_calls_get_400_and_change_nothing() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let e = worker(&store, &metrics);
        let digests = token_digests(&e.config);
        let auth = format!("Bearer {TOKEN}");
        let a = Some(auth.as_bytes());
        for (query, expect) in [
            ("", "verdict"),
            ("route=/x&verdict=maybe", "verdict"),
            ("verdict=false_positive", "exactly one"),
            ("route=/x&identity=user%3Da&verdict=false_positive", "exactly one"),
            ("route=x&verdict=false_positive", "route"),
            ("request_id=a%22b&verdict=false_positive", "request_id"),
            ("identity=wizard:1&verdict=false_positive", "kind"),
            ("route=/x&verdict=false_positive&extra=1", "unknown field"),
            ("route=/x&route=/y&verdict=false_positive", "twice"),
        ] {
            let path = format!("/vigil/admin/feedback?{query}");
            let r = serve(&e, &digests, &call("POST", &path, a), 1_000, &store, &metrics);
            assert_eq!(r.status, 400, "{query}: {r:?}");
            assert!(r.body.contains(expect), "{}", r.body);
        }
        let long = format!("/vigil/admin/feedback?note={}", "x".repeat(3000));
        assert_eq!(serve(&e, &digests, &call("POST", &long, a), 1_000, &store, &metrics).status, 400);
        assert_eq!(e.feedback().thresholds.read(&store).unwrap()[0], Default::default());
        let r = serve(&e, &digests, &call("GET", "/vigil/admin/feedback", a), 1_000, &store, &metrics);
        assert_eq!(r.status, 405);
        let r = serve(&e, &digests, &call("GET", "/vigil/admin/nothing", a), 1_000, &store, &metrics);
        assert_eq!(r.status, 404);
        let r = serve(&e, &digests, &call("POST", "/vigil/admin/feedback?request_id=unknown-1&verdict=false_positive", a), 1_000, &store, &metrics);
        assert_eq!(r.status, 404, "{r:?}");
    }

    #[test]
    fn route_feedback_moves_its_groups_thresholds_within_bounds() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let e = worker(&store, &metrics);
        let digests = token_digests(&e.config);
        let auth = format!("Bearer {TOKEN}");
        for i in 0..8 {
            let path = "/vigil/admin/feedback?route=/reports/2024&verdict=false_positive";
            let r = serve(&e, &digests, &call("POST", path, Some(auth.as_bytes())), 60_000 * i, &store, &metrics);
            assert_eq!(r.status, 200, "{r:?}");
        }
        let r = serve(&e, &digests, &call("GET", "/vigil/admin/thresholds", Some(auth.as_bytes())), 1_000_000, &store, &metrics);
        let t: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(t["groups"][0]["offset"], 0.2, "bounded by max_offset: {t}");
        assert_eq!(t["groups"][0]["thresholds"]["flag"], 0.7);
        assert_eq!(t["groups"][0]["false_positives"], 8);
        // A confirmed threat reported on a request Vigil let through is a miss for every detector.
        let path = "/vigil/admin/feedback?request_id=never-flagged&verdict=confirmed_threat";
        let r = serve(&e, &digests, &call("POST", path, Some(auth.as_bytes())), 1_000_000, &store, &metrics);
        assert_eq!(r.status, 200);
        let r = serve(&e, &digests, &call("GET", "/vigil/admin/models", Some(auth.as_bytes())), 1_000_000, &store, &metrics);
        let m: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(m["detectors"][1]["name"], "behavior");
        assert_eq!(m["detectors"][1]["missed"], 1);
        assert_eq!(m["detectors"][1]["recall"], 0.0);
    }

    #[test]
    fn calls_are_rate_limited_across_callers_authenticated_or_not() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let e = worker(&store, &metrics);
        let digests = token_digests(&e.config);
        let statuses: Vec<u16> = (0..25).map(|_| serve(&e, &digests, &call("GET", "/vigil/admin/thresholds", None), 5_000, &store, &metrics).status).collect();
        assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 20);
        assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5);
        // The next minute has a fresh budget.
        let auth = format!("Bearer {TOKEN}");
        assert_eq!(serve(&e, &digests, &call("GET", "/vigil/admin/thresholds", Some(auth.as_bytes())), 65_000, &store, &metrics).status, 200);
        assert_eq!(metrics.get(Metric::AdminCalls("rate_limited")), 5);
    }

    #[test]
    fn tokens_are_checked_by_digest() {
        let d = [hex32(&digest_hex()).unwrap()];
        assert!(authorized(TOKEN.as_bytes(), &d));
        assert!(!authorized(b"s3cret-admin-toke", &d));
        assert!(!authorized(b"", &[]));
        assert_eq!(bearer(Some(b"bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(b"Bearer ")), None);
        assert_eq!(bearer(Some(b"Token abc")), None);
        assert_eq!(percent_decode("user%3Aab%zz"), "user:ab%zz");
    }
}
