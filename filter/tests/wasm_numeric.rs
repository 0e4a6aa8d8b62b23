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
use vigil::engine::ports::{Metric, Table};
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
    let hints = vigil::engine::slots::Hints::for_slots(cfg.max_identities);
    rate::initialize(&cfg, &store, &metrics, &prefix).unwrap();
    for i in 0..500u64 {
        rate::observe(&cfg, &store, &metrics, &prefix, Some(&hints), 0xdead_beef_0000_0001, 1_000 + i).unwrap();
    }
    let obs = rate::observe(&cfg, &store, &metrics, &prefix, Some(&hints), 0xdead_beef_0000_0001, 2_000).unwrap();
    assert_eq!(obs.record.current, 501);
    let keys = store.len();
    for id in 0..5_000u64 {
        rate::observe(&cfg, &store, &metrics, &prefix, Some(&hints), (id << 1) | 1, 3_000).unwrap();
    }
    assert_eq!(store.len(), keys);
    assert!(metrics.get(Metric::StoreSlotsUsed(Table::Rate)) <= 64);
}

#[wasm_bindgen_test]
fn route_templates_in_wasm() {
    assert_eq!(route::template(b"/users/123/orders/0b6e2a8c-3f0e-4b8e-9a7e-2d9c1f4e5a6b"), "/users/{id}/orders/{uuid}");
}

#[wasm_bindgen_test]
fn profile_statistics_in_wasm() {
    use vigil::engine::profile::stats::{excess_surprise, hellinger, logistic, Moments};
    let mut m = Moments::default();
    for x in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
        m.push(x, 1.0);
    }
    assert!((m.mean - 5.0).abs() < 1e-6 && (m.var - 4.0).abs() < 1e-5);
    assert!(excess_surprise(0.0, [300.0].into_iter()) > 8.0);
    assert!(hellinger([1.0, 0.0].into_iter(), [0.0, 1.0].into_iter()) > 0.999);
    assert!((logistic(3.0, 3.0, 1.5) - 0.5).abs() < 1e-12);
    // exp/ln come from the wasm build of libm: the decay must match the native value.
    let decay = (-1.0f64).exp();
    assert!((decay - 0.36787944117144233).abs() < 1e-15);
}

#[wasm_bindgen_test]
fn profile_learns_scores_and_round_trips_in_wasm() {
    use vigil::engine::features::Method;
    use vigil::engine::profile::model::{Learning, Observation, Profile};
    use vigil::engine::profile::score::{assess_and_learn, Assessment, Scoring};
    let learning = Learning { window_ms: 86_400_000.0, session_gap_ms: 1_800_000 };
    let scoring = Scoring { min_observations: 20, travel_ms: 7_200_000 };
    let obs = |t: u64, route: u32, country: u16| Observation {
        time_ms: t,
        route,
        method: Method::Get,
        request_bytes: 0,
        session: None,
        country: Some(country),
        asn: None,
        device: None,
        object: None,
    };
    let mut p = Profile::default();
    for i in 0..300u64 {
        assess_and_learn(&mut p, &obs(1_000_000 + i * 2_000 + (i * 7919) % 900, (i % 3) as u32, 0x4445), "/a", &learning, &scoring);
    }
    let mut bytes = Vec::new();
    p.encode(&mut bytes);
    assert_eq!(Profile::decode(&bytes).as_ref(), Some(&p));
    match assess_and_learn(&mut p, &obs(1_700_000, 99, 0x4b50), "/admin", &learning, &scoring) {
        Assessment::Scored(d) => assert!(d.score > 0.9, "{}", d.score),
        Assessment::Cold { .. } => unreachable!(),
    }
}

#[wasm_bindgen_test]
fn traffic_detector_and_analysis_in_wasm() {
    use vigil::engine::traffic::analyzer::{Scope, Settings, State};
    use vigil::engine::traffic::detector::{threshold, Detector, Params};
    use vigil::engine::traffic::series::Metric as Series;
    use vigil::engine::traffic::tally::Counts;
    // The detector: a step after a noisy level scores high, garbage stays in [0, 1].
    let mut d = Detector::new(Params { warmup: 50, ..Params::default() });
    let mut peak = 0.0f64;
    for i in 0..400u64 {
        let x = if i < 300 { 100.0 } else { 400.0 } + ((i * 7919) % 11) as f64;
        let s = d.update(x);
        if i >= 300 {
            peak = peak.max(s);
        } else if i > 100 {
            assert!(s < threshold(0.8), "steady sample {i}: {s}");
        }
    }
    assert!(peak >= threshold(0.8), "{peak}");
    for x in [f64::NAN, f64::INFINITY, -1e300] {
        assert!((0.0..=1.0).contains(&d.update(x)));
    }
    let mut bytes = Vec::new();
    d.encode(&mut bytes);
    let (back, _) = Detector::decode(Params { warmup: 50, ..Params::default() }, &bytes).unwrap();
    assert_eq!(back, d);

    // One route starts failing: the analysis names it and the metric.
    let settings = Settings {
        params: Params { warmup: 30, long_samples: 120.0, ..Params::default() },
        alpha: 1.0 / 120.0,
        threshold: threshold(0.8),
        max_routes: 4,
        idle_s: 120,
        drift_s: 600,
        floors: vigil::engine::traffic::series::Floors::default(),
    };
    let mut state = State::new(0, &settings);
    let second = |t: u64, failing: bool| {
        let mut c = Counts::default();
        for i in 0..(40 + t % 5) {
            c.add("/a", 64, Some(200), Some(3_000 + i * 10));
            c.add("/b", 64, Some(if failing && i % 2 == 0 { 503 } else { 200 }), Some(3_000));
        }
        c
    };
    for t in 1..=100 {
        let onsets = state.analyze(t, &second(t, false), &settings).onsets;
        assert!(onsets.is_empty(), "steady second {t}: {onsets:?}");
    }
    let onsets = state.analyze(101, &second(101, true), &settings).onsets;
    assert!(onsets.iter().any(|o| o.scope == Scope::Route("/b".into()) && o.metric == Series::ServerErrorRate), "{onsets:?}");
    let mut bytes = Vec::new();
    state.encode(&mut bytes);
    assert_eq!(State::decode(&bytes, &settings), Some(state));
}

#[wasm_bindgen_test]
fn model_answers_and_feature_vector_in_wasm() {
    use vigil::engine::config::{ModelOptions, ScoreScale};
    use vigil::engine::ml::breaker::backoff_ms;
    use vigil::engine::ml::protocol::{parse, scale, Failure, Wire};

    // The isolation-forest scale, and the parser's number handling, under V8.
    let iforest = |x: f64| scale(ScoreScale::IsolationForest, x).unwrap();
    assert!((iforest(0.0) - 0.5).abs() < 1e-12);
    assert!(iforest(-0.15) > 0.95 && iforest(0.1) < 0.15);
    assert_eq!(iforest(-1e308), 1.0);
    let opts = ModelOptions { score_scale: ScoreScale::IsolationForest, ..ModelOptions::default() };
    let oip = Wire::Oip { model_name: "m".into() };
    let ok = br#"{"outputs":[{"name":"anomaly_score","shape":[1,1],"datatype":"FP64","data":[-0.2]},{"name":"confidence","shape":[1,1],"data":[0.825]}]}"#;
    let a = parse(&oip, &opts, 200, ok).unwrap();
    assert!(a.score > 0.98 && (a.confidence - 0.825).abs() < 1e-12);
    assert_eq!(parse(&oip, &opts, 200, br#"{"outputs":[{"name":"anomaly_score","data":[NaN]}]}"#), Err(Failure::NonFinite));
    assert!(parse(&oip, &opts, 200, br#"{"outputs":[{"name":"anomaly_score","data":[1e999]}]}"#).is_err());
    // Backoff stays within its bounds with the same jitter as natively.
    assert!((25..75).contains(&backoff_ms(1, 42)));

    // The vector (logarithms, sine and cosine of the hour) as exported.
    let e = vigil::engine::pipeline::Engine::new(
        config::parse(br#"{"ml_model_config": {"export_features": true}}"#).unwrap(),
    );
    let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
    e.start(&store, &metrics).unwrap();
    let req = vigil::engine::request::HeaderList::from_pairs(&[
        (":method", "POST"),
        (":path", "/users/42/orders"),
        ("x-user-id", "w"),
        ("content-length", "1023"),
    ]);
    let vector = e.on_request(&req, 6 * 3_600_000, &store, &metrics).ml_vector.unwrap();
    let v = vector.values();
    assert_eq!(v.len(), 16, "vigil.v2 by default");
    assert_eq!(v[0], 1.0);
    assert!((v[1] - 10.0 / 30.0).abs() < 1e-6, "{}", v[1]);
    assert_eq!((v[2], v[3]), (0.375, 0.25));
    assert!((v[4] - 1.0).abs() < 1e-6 && (v[5] - 0.5).abs() < 1e-6, "06:00 UTC");
    assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
}

#[wasm_bindgen_test]
fn secondary_keys_counting_population_and_score_in_wasm() {
    use vigil::engine::keys::population::Population;
    use vigil::engine::keys::record::{Bits, Counts, Delta, KeyRecord, Window};
    use vigil::engine::keys::score::{score, Settings};
    use vigil::engine::slots::Record;
    let key = HashKey::new(9, 10);
    let w = Window::new(60);
    let record = |identities: u64, requests: f32, failures: f32| {
        let mut bits = Bits::default();
        for i in 0..identities {
            bits.add(key.hash(&[&i.to_le_bytes()]) | 1, 3, w.epoch(1_700_000_000_000));
        }
        let counts = Counts { requests, answered: requests, failures, ..Counts::default() };
        KeyRecord::merged(None, &Delta { counts, bits }, 1_700_000_000_000, &w).0
    };
    let stuffing = record(143, 430.0, 400.0);
    assert!((stuffing.bits.members() - 143.0).abs() < 15.0, "{}", stuffing.bits.members());
    let mut out = Vec::new();
    stuffing.encode(&mut out);
    assert_eq!(KeyRecord::decode(&out), Some(stuffing));
    let mut pop = Population::default();
    for i in 0..300u64 {
        pop.sample(&record(if i % 50 == 0 { 3 } else { 1 }, 20.0, if i % 20 == 0 { 1.0 } else { 0.0 }));
    }
    let base = pop.baseline();
    assert_eq!(base.p75, 1.0);
    let s = Settings { min_population: 50.0, min_identities: 5.0 };
    assert!(score(&stuffing, &base, false, &s).unwrap().score > 0.9);
    assert!(score(&record(30, 600.0, 12.0), &base, false, &s).unwrap().score < 0.05);
    let later = stuffing.at(1_700_000_000_000 + 60_000, &w);
    assert!((later.counts.requests - 430.0 * (-1.0f32).exp()).abs() < 0.5);
}
