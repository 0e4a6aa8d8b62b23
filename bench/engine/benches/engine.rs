//! Native micro-benchmarks of Vigil's engine: what each request costs, step by
//! step and end to end. Run with `cargo bench -p vigil-engine-bench`.
//!
//! These run natively (the bench profile inherits the workspace's release
//! profile, opt-level "s"), against the in-memory store, so they measure the
//! engine's own work: Envoy's shared data adds a host call, a lock and a copy
//! per get/set on top, and the wasm VM its own overhead. Read them as relative
//! costs and as a regression guard, not as the filter's latency in Envoy.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::Duration;
use vigil::engine::config::{self, Config, IdentitySource, RateLimitConfig};
use vigil::engine::hash::HashKey;
use vigil::engine::identity;
use vigil::engine::pipeline::{Engine, Verdict};
use vigil::engine::ports::memory::MemoryStore;
use vigil::engine::ports::NoMetrics;
use vigil::engine::rate;
use vigil::engine::report;
use vigil::engine::request::HeaderList;
use vigil::engine::profile::model::{Learning, Observation, Profile};
use vigil::engine::profile::score::{self, Scoring};
use vigil::engine::route;
use vigil::engine::features::Method;
use vigil::engine::ports::memory::MemoryMetrics;
use vigil::engine::traffic::{self, Traffic};
use vigil::engine::traffic::analyzer::{Settings, State};
use vigil::engine::traffic::detector::{Detector, Params};
use vigil::engine::traffic::tally::Counts;

/// Distinct identities cycled through by the "many identities" benchmarks.
const IDENTITIES: usize = 10_000;
/// Slots in the rate table (the default `max_identities`).
const SLOTS: u32 = 16_384;
/// Simulated time between two requests: 1 ms, i.e. 1000 requests/s.
const TICK_MS: u64 = 1;
const START_MS: u64 = 1_700_000_000_000;

const PATH: &str = "/api/v1/users/12345/orders/0b6e2a8c-3f0e-4b8e-9a7e-2d9c1f4e5a6b?expand=items";

/// The harness configuration: the JSON in envoy/envoy.yaml's
/// `configuration.value`, so the benchmark follows the harness.
fn harness_config_json() -> String {
    let yaml = include_str!("../../../envoy/envoy.yaml");
    let mut lines = yaml.lines();
    let Some(start) = lines.by_ref().find(|l| l.trim_start().starts_with("value: |")) else {
        panic!("envoy/envoy.yaml has no `value: |` block");
    };
    let indent = |l: &str| l.len() - l.trim_start().len();
    let base = indent(start);
    let block: Vec<&str> = lines.take_while(|l| l.trim().is_empty() || indent(l) > base).collect();
    let strip = block.iter().filter(|l| !l.trim().is_empty()).map(|l| indent(l)).min().unwrap_or(0);
    block.iter().map(|l| l.get(strip..).unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn harness_config() -> Config {
    config::parse(harness_config_json().as_bytes()).unwrap_or_else(|e| panic!("harness config: {e}"))
}

/// The harness config with the default rate table (16384 slots, 600/60 s), so
/// 10,000 identities fit without evictions, and profiling off (its own
/// benchmarks below add it).
fn bench_config() -> Config {
    let mut c = harness_config();
    c.rate_limit = RateLimitConfig { max_identities: SLOTS, ..RateLimitConfig::default() };
    c.behavioral_profiling.enable_user_profiling = false;
    c
}

/// `bench_config` with profiling on, 16384 profiles.
fn profiling_config(cache_entries: u32) -> Config {
    let mut c = bench_config();
    c.behavioral_profiling.enable_user_profiling = true;
    c.behavioral_profiling.max_profiles = SLOTS;
    c.behavioral_profiling.cache_entries = cache_entries;
    c
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A realistic RS256 bearer token: typical header and claims, 256-byte signature.
fn bearer_jwt(sub: &str) -> String {
    let header = r#"{"alg":"RS256","typ":"JWT","kid":"2024-09-rotating-key-01"}"#;
    let claims = format!(
        r#"{{"iss":"https://auth.example.com/","sub":"{sub}","aud":["https://api.example.com","https://auth.example.com/userinfo"],"iat":1700000000,"exp":1700003600,"azp":"Zk3n0bQ9xR2mT7vW1yP4","scope":"openid profile email orders:read orders:write","email":"someone@example.com","email_verified":true}}"#
    );
    let signature: Vec<u8> = (0..256u32).map(|i| (i.wrapping_mul(131) ^ 0x5a) as u8).collect();
    format!("Bearer {}.{}.{}", base64url(header.as_bytes()), base64url(claims.as_bytes()), base64url(&signature))
}

/// A typical API request: 12 headers, identity in `x-user-id`.
fn request(i: usize) -> HeaderList {
    let user = format!("user-{i:05}");
    let request_id = format!("{i:08x}-3f0e-4b8e-9a7e-2d9c1f4e5a6b");
    HeaderList::from_pairs(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", PATH),
        (":authority", "api.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-US,en;q=0.9"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", &request_id),
        ("x-user-id", &user),
        ("content-length", "0"),
    ])
    .with_peer("203.0.113.7:51234")
}

/// The same request authenticated by a JWT instead of `x-user-id`.
fn jwt_request() -> HeaderList {
    let mut req = request(0);
    req.headers.retain(|(k, _)| k != "x-user-id");
    req.headers.push(("authorization".to_string(), bearer_jwt("auth0|5f7c8ec7c33c6c004bbafe82").into_bytes()));
    req
}

/// Cycles through `0..n`, one step per call.
fn cycle(n: usize) -> impl FnMut() -> usize {
    let mut i = 0;
    move || {
        i = (i + 1) % n;
        i
    }
}

fn feature_extraction(c: &mut Criterion) {
    let cfg = harness_config();
    let key = HashKey::from_secret(cfg.identity.hash_secret.as_bytes());
    let sources = &cfg.identity.sources;
    let header_req = request(42);
    let jwt_req = jwt_request();
    assert_eq!(identity::resolve(sources, &key, &header_req).kind.as_str(), "user");
    assert_eq!(identity::resolve(sources, &key, &jwt_req).kind.as_str(), "jwt");
    assert_eq!(route::template(PATH.as_bytes()), "/api/v1/users/{id}/orders/{uuid}");

    let mut g = c.benchmark_group("feature_extraction");
    g.bench_function("identity_header", |b| b.iter(|| identity::resolve(sources, &key, black_box(&header_req))));
    g.bench_function("identity_jwt_claim", |b| b.iter(|| identity::resolve(sources, &key, black_box(&jwt_req))));
    g.bench_function("route_template", |b| b.iter(|| route::template(black_box(PATH.as_bytes()))));
    g.finish();
}

fn rate_observe(c: &mut Criterion) {
    let key = HashKey::from_secret(b"bench");
    let sources = [IdentitySource::Header { name: "x-user-id".to_string() }];
    let owners: Vec<u64> = (0..IDENTITIES).map(|i| identity::resolve(&sources, &key, &request(i)).hash).collect();

    let mut g = c.benchmark_group("rate_observe");
    let mut run = |name: &str, cfg: RateLimitConfig, owners: &[u64]| {
        let store = MemoryStore::default();
        let prefix = rate::key_prefix(&cfg);
        rate::initialize(&cfg, &store, &NoMetrics, &prefix).unwrap_or_else(|e| panic!("initialize: {e:?}"));
        let mut next = cycle(owners.len());
        let mut now = START_MS;
        g.bench_function(name, |b| {
            b.iter(|| {
                now += TICK_MS;
                rate::observe(&cfg, &store, &NoMetrics, &prefix, None, black_box(owners[next()]), now)
            })
        });
    };
    let table = RateLimitConfig { max_identities: SLOTS, ..RateLimitConfig::default() };
    // Each identity comes back every 10 s: within its ceiling, slots stay owned.
    run("10k_identities_cycled", table.clone(), &owners);
    // One identity at 1000 requests/s: past any sane ceiling, so the threat
    // detail is formatted every time; and with a ceiling it never reaches.
    run("hot_identity_over_ceiling", table.clone(), &owners[..1]);
    run("hot_identity_within_ceiling", RateLimitConfig { requests_per_window: u32::MAX, ..table }, &owners[..1]);
    g.finish();
}

fn pipeline_full(c: &mut Criterion) {
    let requests: Vec<HeaderList> = (0..IDENTITIES).map(request).collect();
    let mut g = c.benchmark_group("pipeline_full");
    let mut run = |name: &str, cfg: Config| {
        let engine = Engine::new(cfg);
        let store = MemoryStore::default();
        engine.start(&store, &NoMetrics).unwrap_or_else(|e| panic!("start: {e:?}"));
        let mut next = cycle(requests.len());
        let mut now = START_MS;
        g.bench_function(name, |b| {
            b.iter(|| {
                now += TICK_MS;
                engine.on_request(black_box(&requests[next()]), now, &store, &NoMetrics)
            })
        });
    };
    run("10k_identities_16384_slots", bench_config());
    // Profiling on: with a cache that holds every identity (hits), and with
    // a 1024-entry cache (a quarter of the default) against 10,000 identities (mostly misses,
    // each a read of shared data; the write-back happens in ticks, not here).
    run("10k_identities_profiling_cache_16384", profiling_config(16_384));
    run("10k_identities_profiling_cache_1024", profiling_config(1_024));
    // The harness table (4096 slots, 20 per 10 s): 10,000 identities do not
    // fit, so most requests evict a slot.
    run("10k_identities_harness_4096_slots", harness_config());
    g.finish();
}

/// Traffic analysis: what a request pays (add to this worker's tally, read
/// the snapshot), and what one second of analysis costs the lease holder.
fn traffic_scoring(c: &mut Criterion) {
    let cfg = config::TimeSeriesAnalysis { enable_traffic_analysis: true, ..Default::default() };
    let t = Traffic::new(&cfg);
    let store = MemoryStore::default();
    let metrics = MemoryMetrics::default();
    t.start(&store, &metrics).unwrap_or_else(|e| panic!("start: {e:?}"));
    let routes: Vec<String> = (0..16).map(|i| format!("/api/v1/resource{i}/{{id}}")).collect();
    // A few seconds of traffic so a snapshot exists.
    let mut now = START_MS;
    for i in 0..30_000u64 {
        now += 1;
        t.record(&routes[(i % 16) as usize], Some(200), Some(2_000 + i % 500), now);
        if i % 100 == 0 {
            let _ = t.on_tick(now, 1, &store, &metrics);
        }
    }
    let mut g = c.benchmark_group("traffic_scoring");
    let mut i = 0usize;
    g.bench_function("record_completed_request", |b| {
        b.iter(|| {
            i += 1;
            t.record(black_box(&routes[i % 16]), Some(200), Some(2_000), now)
        })
    });
    g.bench_function("read_score_for_request", |b| {
        b.iter(|| {
            i += 1;
            t.read(black_box(&routes[i % 16]), now)
        })
    });
    let mut detector = Detector::new(Params::default());
    let mut x = 0u64;
    g.bench_function("detector_update", |b| {
        b.iter(|| {
            x += 1;
            detector.update(black_box(100.0 + (x % 17) as f64))
        })
    });
    let settings = Settings {
        params: Params { long_samples: 3_600.0, warmup: 600, ..Params::default() },
        alpha: 1.0 / 3_600.0,
        threshold: traffic::detector::threshold(0.8),
        max_routes: 16,
        idle_s: 3_600,
        drift_s: 600,
        floors: traffic::series::Floors::default(),
    };
    let mut second = Counts::default();
    for i in 0..2_000u64 {
        second.add(&routes[(i % 16) as usize], 64, Some(if i % 50 == 0 { 503 } else { 200 }), Some(1_000 + i));
    }
    let mut state = State::new(0, &settings);
    let mut s = 0;
    g.bench_function("analyze_one_second_16_routes", |b| {
        b.iter(|| {
            s += 1;
            state.analyze(s, black_box(&second), &settings)
        })
    });
    g.finish();
}

fn profile_update(c: &mut Criterion) {
    let learning = Learning { window_ms: 24.0 * 3_600_000.0, session_gap_ms: 30 * 60_000 };
    let scoring = Scoring { min_observations: 20, travel_ms: 2 * 3_600_000 };
    let obs = |i: u64| Observation {
        time_ms: START_MS + i * 1_500,
        route: (i % 7) as u32,
        method: Method::Get,
        request_bytes: 0,
        session: None,
        country: Some(0x4445),
        asn: Some(3320),
        device: None,
        object: None,
    };
    let mut trained = Profile::default();
    for i in 0..500 {
        score::assess_and_learn(&mut trained, &obs(i), "/api/orders", &learning, &scoring);
        trained.learn_status(200, 1.0);
    }
    let mut bytes = Vec::new();
    trained.encode(&mut bytes);

    let mut g = c.benchmark_group("profile_update");
    let mut p = trained.clone();
    let mut i = 500;
    g.bench_function("score_and_learn_warm", |b| {
        b.iter(|| {
            i += 1;
            score::assess_and_learn(black_box(&mut p), &obs(i), "/api/orders", &learning, &scoring)
        })
    });
    g.bench_function("encode", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(512);
            black_box(&trained).encode(&mut out);
            out
        })
    });
    g.bench_function("decode", |b| b.iter(|| Profile::decode(black_box(&bytes))));
    g.finish();
}

fn report_encoding(c: &mut Criterion) {
    let mut cfg = bench_config();
    cfg.rate_limit.requests_per_window = 5;
    let engine = Engine::new(cfg);
    let store = MemoryStore::default();
    engine.start(&store, &NoMetrics).unwrap_or_else(|e| panic!("start: {e:?}"));
    let req = request(7);
    let verdicts: Vec<Verdict> = (0..20).map(|i| engine.on_request(&req, START_MS + i, &store, &NoMetrics)).collect();
    let allow = &verdicts[0];
    let block = &verdicts[19];
    assert_eq!((allow.decision.as_str(), block.decision.as_str()), ("allow", "block"));

    let mut g = c.benchmark_group("report_encoding");
    g.bench_function("signals", |b| b.iter(|| report::signals(black_box(allow))));
    g.bench_function("log_record_allow", |b| b.iter(|| report::log_record(black_box(allow), false)));
    g.bench_function("log_record_block", |b| b.iter(|| report::log_record(black_box(block), false)));
    g.finish();
}

fn config_parse(c: &mut Criterion) {
    let json = harness_config_json();
    c.bench_function("config_parse/harness", |b| b.iter(|| config::parse(black_box(json.as_bytes()))));
}

fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = feature_extraction, rate_observe, profile_update, traffic_scoring, pipeline_full, report_encoding, config_parse
}
criterion_main!(benches);
