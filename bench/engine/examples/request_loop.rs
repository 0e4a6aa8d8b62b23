//! The whole request path of the engine in a loop, for profiling it where it
//! runs: built for `wasm32-wasip1` and run in a Wasm runtime with a profiler
//! (docs/performance.md, "Profiling the Wasm"). Natively it runs as well.
//!
//! `request_loop [requests] [config.json]`: 10,000 identities as bench/identities.lua
//! sends them (behind one trusted proxy hop, four to a client /24), the host's sequence per request (assess, decide, the upstream
//! headers' strings, after_decision, response, completion) and a tick every 100.

use std::hint::black_box;
use vigil::engine::config;
use vigil::engine::pipeline::Engine;
use vigil::engine::ports::memory::MemoryStore;
use vigil::engine::ports::memory::MemoryCallouts;
use vigil::engine::ports::NoMetrics;
use vigil::engine::report;
use vigil::engine::request::HeaderList;

const DEFAULT_CONFIG: &str = r#"{"identity": {"hash_secret": "bench"}, "mode": "enforce",
  "rate_limit": {"requests_per_window": 100000000, "window_seconds": 60},
  "behavioral_profiling": {"enable_user_profiling": true},
  "time_series_analysis": {"enable_traffic_analysis": true}}"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let json = match args.get(2) {
        Some(path) => std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}")),
        None => DEFAULT_CONFIG.to_string(),
    };
    let cfg = config::parse(json.as_bytes()).unwrap_or_else(|e| panic!("config: {e}"));
    let engine = Engine::new(cfg);
    let store = MemoryStore::default();
    let callouts = MemoryCallouts::default();
    engine.start(&store, &NoMetrics).unwrap_or_else(|e| panic!("start: {e:?}"));
    let mut now = 1_700_000_000_000u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut allowed = 0u64;
    let (mut in_ticks, started) = (std::time::Duration::ZERO, std::time::Instant::now());
    for i in 0..n {
        let u = next() % 10_000;
        let user = format!("bench-user-{u}");
        // Behind one trusted proxy: 2,500 client /24s of four users each.
        let xff = format!("10.{}.{}.{}, 10.255.0.1", u / 1_000, (u / 4) % 250, u % 4);
        let path = format!("/api/users/{}/orders", next() % 100_000);
        let req = HeaderList::new(vec![
            (":method".into(), b"GET".to_vec()),
            (":path".into(), path.into_bytes()),
            (":authority".into(), b"127.0.0.1".to_vec()),
            ("x-user-id".into(), user.into_bytes()),
            ("x-forwarded-for".into(), xff.into_bytes()),
            ("user-agent".into(), b"wrk".to_vec()),
            ("x-request-id".into(), format!("5a3c{i:028x}").into_bytes()),
        ]);
        now += 1;
        let mut v = engine.assess(&req, now, &store, &NoMetrics, &mut Vec::new());
        engine.decide(&mut v, &NoMetrics);
        black_box((report::risk(&v), report::signals(&v)));
        black_box(engine.after_decision(&v, now, &store, &NoMetrics));
        let mut features = v.features;
        engine.on_response(&mut features, Some(200), 300);
        engine.on_complete(&features, now);
        if i % 100 == 0 {
            let t = std::time::Instant::now();
            black_box(engine.on_tick(now, 1, &store, &NoMetrics, &callouts));
            in_ticks += t.elapsed();
        }
        allowed += u64::from(v.decision == vigil::engine::decision::Decision::Allow);
    }
    let total = started.elapsed();
    let per = |d: std::time::Duration| d.as_nanos() as f64 / n.max(1) as f64;
    println!(
        "{n} requests, {allowed} allowed; per request {:.0} ns: {:.0} ns on the request path, {:.0} ns in ticks; shared-data gets {:.2}, sets {:.2}",
        per(total),
        per(total - in_ticks),
        per(in_ticks),
        store.reads.get() as f64 / n.max(1) as f64,
        store.writes.get() as f64 / n.max(1) as f64
    );
}
