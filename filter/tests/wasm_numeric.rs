//! The engine's numeric code, run inside a wasm VM (Node's V8, the engine
//! Envoy embeds) with wasm-bindgen-test. Native `cargo test` skips this file;
//! `make test` runs it with `--target wasm32-unknown-unknown`.
//! Float formatting, 64-bit arithmetic and hashing must give the same answers
//! there as natively, since the filter only ever runs there.
#![cfg(target_arch = "wasm32")]

use vigil::engine::config::{self, RateLimitConfig};
use vigil::engine::decision::{decide, Decision};
use vigil::engine::hash::HashKey;
use vigil::engine::ports::memory::{MemoryMetrics, MemoryStore};
use vigil::engine::ports::Metric;
use vigil::engine::rate::{self, RateRecord};
use vigil::engine::route;
use wasm_bindgen_test::wasm_bindgen_test;

#[wasm_bindgen_test]
fn siphash_matches_reference_vectors_in_wasm() {
    let key = HashKey::new(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
    let msg: Vec<u8> = (0u8..16).collect();
    assert_eq!(key.hash(&[&msg[..0]]), 0x726f_db47_dd0e_0e31);
    assert_eq!(key.hash(&[&msg[..8]]), 0x93f5_f579_9a93_2462);
    assert_eq!(key.hash(&[&msg[..15]]), 0xa129_ca61_49be_45e5);
}

#[wasm_bindgen_test]
fn rate_score_curve_in_wasm() {
    assert_eq!(rate::score(0.5), 0.0);
    assert!((rate::score(1.0) - 0.6).abs() < 1e-12);
    assert!((rate::score(1.5) - 0.9).abs() < 1e-12);
    assert_eq!(rate::score(f64::INFINITY), 0.0);
    let t = config::DecisionThresholds::default();
    assert_eq!(decide(rate::score(1.01), &t), Decision::Throttle);
    assert_eq!(decide(rate::score(1.80), &t), Decision::Block);
}

#[wasm_bindgen_test]
fn sliding_window_estimate_in_wasm() {
    let w = 60_000u64;
    let r = RateRecord { window_start_ms: 1_700_000_000_000, current: 30, previous: 60 };
    assert_eq!(r.estimate(1_700_000_015_000, w), 30.0 + 60.0 * 0.75);
    let next = RateRecord::advance(Some(&r), 1_700_000_061_000, w);
    assert_eq!((next.current, next.previous), (1, 30));
}

#[wasm_bindgen_test]
fn exact_counts_and_bounded_slots_in_wasm() {
    let cfg = RateLimitConfig { enabled: true, requests_per_window: 100, window_seconds: 60, max_identities: 64 };
    let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
    let prefix = rate::key_prefix(&cfg);
    rate::initialize(&cfg, &store, &metrics, &prefix).unwrap();
    for i in 0..500u64 {
        rate::observe(&cfg, &store, &metrics, &prefix, 0xdead_beef_0000_0001, 1_000 + i).unwrap();
    }
    let obs = rate::observe(&cfg, &store, &metrics, &prefix, 0xdead_beef_0000_0001, 2_000).unwrap();
    assert_eq!(obs.record.current, 501);
    let keys = store.len();
    for id in 0..5_000u64 {
        rate::observe(&cfg, &store, &metrics, &prefix, (id << 1) | 1, 3_000).unwrap();
    }
    assert_eq!(store.len(), keys);
    assert!(metrics.get(Metric::RateSlotsUsed) <= 64);
}

#[wasm_bindgen_test]
fn route_templates_in_wasm() {
    assert_eq!(route::template(b"/users/123/orders/0b6e2a8c-3f0e-4b8e-9a7e-2d9c1f4e5a6b"), "/users/{id}/orders/{uuid}");
}
