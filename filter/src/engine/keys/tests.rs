//! The keys end to end through the engine: two workers (two engines on one
//! store, requests alternating between them, a tick every 100 ms each),
//! simulated clients behind a trusted proxy hop.

use crate::engine::config;
use crate::engine::decision::Decision;
use crate::engine::features::Combine;
use crate::engine::pipeline::{Engine, Verdict};
use crate::engine::ports::memory::{MemoryCallouts, MemoryMetrics, MemoryStore};
use crate::engine::ports::Metric;
use crate::engine::request::HeaderList;

use super::attribution::Role;
use super::{KeyMetric, SIGNAL};

struct World {
    workers: [Engine; 2],
    store: MemoryStore,
    metrics: MemoryMetrics,
    now: u64,
    next_tick: u64,
    sent: u64,
}

impl World {
    fn new(json: &str) -> World {
        let cfg = config::parse(json.as_bytes()).unwrap();
        let w = World {
            workers: [Engine::new(cfg.clone()), Engine::new(cfg)],
            store: MemoryStore::default(),
            metrics: MemoryMetrics::default(),
            now: 1_700_000_000_000,
            next_tick: 1_700_000_000_100,
            sent: 0,
        };
        for e in &w.workers {
            e.start(&w.store, &w.metrics).unwrap();
        }
        w
    }

    /// Moves the clock on, ticking both workers every 100 ms.
    fn advance(&mut self, ms: u64) {
        let until = self.now + ms;
        while self.next_tick <= until {
            for (k, e) in self.workers.iter().enumerate() {
                e.on_tick(self.next_tick, k as u64 + 1, &self.store, &self.metrics, &MemoryCallouts::default());
            }
            self.next_tick += 100;
        }
        self.now = until;
    }

    /// One request, on the next worker in turn, answered with `status`.
    fn request(&mut self, user: &str, client: &str, path: &str, ua: &str, status: u16) -> Verdict {
        let e = &self.workers[(self.sent % 2) as usize];
        self.sent += 1;
        let xff = format!("{client}, 10.255.0.1");
        let req = HeaderList::from_pairs(&[
            (":method", if path == "/login" { "POST" } else { "GET" }),
            (":path", path),
            ("x-user-id", user),
            ("x-forwarded-for", &xff),
            ("user-agent", ua),
        ]);
        let mut v = e.on_request(&req, self.now, &self.store, &self.metrics);
        e.on_response(&mut v.features, Some(status), 2_000);
        e.on_complete(&v.features, self.now);
        v
    }
}

fn keys_score(v: &Verdict) -> Option<f64> {
    v.signals.iter().find(|s| s.name == SIGNAL).map(|s| s.score)
}

const CONFIG: &str = r#"{"mode": "monitor", "rate_limit": {"enabled": false},
  "identity": {"sources": [{"type": "header", "name": "x-user-id"}], "hash_secret": "t"},
  "behavioral_profiling": {"enable_user_profiling": true},
  "secondary_keys": {"enabled": true, "min_population": 50,
    "keys": [{"type": "client_ip", "trusted_proxy_hops": 1}, {"type": "header", "name": "user-agent"}]}}"#;

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0";

/// Ordinary traffic for one 100 ms step `step`: 300 home users, each on a
/// /24 of its own, one request every 10 s, most with the same browser; an
/// office NAT (one /24) with 30 staff, one request every 2 s each. One
/// request in 30 is a 404. Returns the office's and the homes' verdicts.
fn ordinary(w: &mut World, step: u64, office: &mut Vec<Verdict>, homes: &mut Vec<Verdict>) {
    for i in (0..300u64).filter(|i| i % 100 == step % 100) {
        let ua = if i % 5 == 0 { format!("Mozilla/5.0 Firefox/{}", 100 + (i / 5) % 30) } else { CHROME.to_string() };
        let status = if (step + i) % 30 == 0 { 404 } else { 200 };
        let path = ["/api/orders", "/api/cart", "/api/orders/7"][(i % 3) as usize];
        homes.push(w.request(&format!("home-{i}"), &format!("10.{}.{}.5", i / 200, i % 200), path, &ua, status));
    }
    for j in (0..30u64).filter(|j| j % 20 == step % 20) {
        let status = if (step + j) % 30 == 0 { 404 } else { 200 };
        let path = ["/api/orders", "/api/reports", "/api/cart"][(j % 3) as usize];
        office.push(w.request(&format!("staff-{j}"), &format!("192.0.2.{}", 10 + j), path, CHROME, status));
    }
}

fn warm_up(w: &mut World, seconds: u64) -> (Vec<Verdict>, Vec<Verdict>) {
    let (mut office, mut homes) = (Vec::new(), Vec::new());
    for step in 0..seconds * 10 {
        ordinary(w, step, &mut office, &mut homes);
        w.advance(100);
    }
    (office, homes)
}

#[test]
fn credential_stuffing_from_a_few_addresses_is_flagged_and_an_office_nat_is_not() {
    let mut w = World::new(CONFIG);
    let (office, homes) = warm_up(&mut w, 180);
    let pop = w.workers[0].keys().unwrap().population_of(0).unwrap();
    assert!(pop.samples >= 50.0, "{pop:?}");
    // 150 fresh identities, three failed logins each, from four addresses of one /24.
    let (mut attack, mut office_during, mut homes_during) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..200u64 {
        for a in 0..2u64 {
            let n = step * 2 + a;
            let k = n / 3 % 150;
            let v = w.request(&format!("victim-{k}"), &format!("198.51.100.{}", 1 + n % 4), "/login", "Mozilla/5.0 (X11) Firefox/118", 401);
            attack.push((step, v));
        }
        ordinary(&mut w, 1800 + step, &mut office_during, &mut homes_during);
        w.advance(100);
    }
    // Flagged within a few seconds of the start, through the client /24.
    let late: Vec<&Verdict> = attack.iter().filter(|(s, _)| *s >= 50).map(|(_, v)| v).collect();
    let flagged = late.iter().filter(|v| keys_score(v).is_some_and(|s| s >= 0.8) && v.decision >= Decision::Flag).count();
    assert!(flagged as f64 >= 0.95 * late.len() as f64, "{flagged} of {}: {:?}", late.len(), late.last().map(|v| &v.signals));
    let first = attack.iter().find(|(_, v)| v.decision >= Decision::Flag).map(|(s, _)| *s).unwrap();
    assert!(first <= 50, "first flagged {:.1} s into the attack", first as f64 / 10.0);
    let detail = late.last().unwrap().threat_details.iter().find(|d| d.signal == SIGNAL).unwrap();
    assert!(detail.reason.starts_with("client /24 carries ") && detail.reason.contains("% failed"), "{detail:?}");
    assert!(!detail.reason.contains("198.51"), "never the raw value");
    // The office NAT's thirty staff, and everyone at home, stay quiet throughout.
    for v in office.iter().chain(&office_during).chain(&homes).chain(&homes_during) {
        assert!(keys_score(v).map_or(true, |s| s < 0.5), "{:?} {:?}", v.signals, v.threat_details);
        assert_eq!(v.decision, Decision::Allow, "{:?}", v.threat_details);
    }
    let office_scores: Vec<f64> = office_during.iter().filter_map(keys_score).collect();
    assert!(!office_scores.is_empty(), "the office is scored, and scores low");
    assert!(w.metrics.get(Metric::Keys(KeyMetric::Flagged, 0)) > 0);
    assert_eq!(w.metrics.get(Metric::Keys(KeyMetric::Flagged, 1)), 0, "the user agent is not the common key here");
    assert!(w.metrics.get(Metric::Keys(KeyMetric::Population, 0)) > 0);
}

#[test]
fn credential_stuffing_from_many_addresses_is_seen_through_the_shared_user_agent() {
    let mut w = World::new(CONFIG);
    warm_up(&mut w, 180);
    let mut attack = Vec::new();
    let (mut office, mut homes) = (Vec::new(), Vec::new());
    for step in 0..200u64 {
        for a in 0..2u64 {
            let n = step * 2 + a;
            // Every attempt from an address (and a /24) of its own.
            attack.push(w.request(&format!("victim-{}", n / 3 % 150), &format!("203.{}.{}.9", n / 250, n % 250), "/login", "python-requests/2.31", 401));
        }
        ordinary(&mut w, 1800 + step, &mut office, &mut homes);
        w.advance(100);
    }
    let late = &attack[100..];
    let flagged = late.iter().filter(|v| keys_score(v).is_some_and(|s| s >= 0.8)).count();
    assert!(flagged as f64 >= 0.95 * late.len() as f64, "{flagged} of {}", late.len());
    let first = attack.iter().position(|v| v.decision >= Decision::Flag).unwrap();
    assert!(first <= 100, "first flagged {:.1} s into the attack", first as f64 / 20.0);
    let detail = late.last().unwrap().threat_details.iter().find(|d| d.signal == SIGNAL).unwrap();
    assert!(detail.reason.starts_with("user-agent value carries "), "{detail:?}");
    // The popular browser, shared by hundreds, is not.
    for v in office.iter().chain(&homes) {
        assert!(keys_score(v).map_or(true, |s| s < 0.5), "{:?}", v.threat_details);
    }
}

#[test]
fn an_api_key_used_from_many_addresses_at_once_is_flagged_and_a_roaming_user_is_not() {
    let json = CONFIG.replace(
        r#""keys": [{"type": "client_ip", "trusted_proxy_hops": 1}, {"type": "header", "name": "user-agent"}]"#,
        r#""keys": [{"type": "identity_addresses", "trusted_proxy_hops": 1}]"#,
    );
    let mut w = World::new(&json);
    warm_up(&mut w, 180);
    let (mut shared, mut roaming) = (Vec::new(), Vec::new());
    for step in 0..150u64 {
        // One key from forty addresses round the world, a request each 100 ms...
        shared.push(w.request("partner-key", &format!("100.{}.3.4", step % 40), "/api/orders", CHROME, 200));
        // ...and a phone switching between two networks.
        if step % 5 == 0 {
            roaming.push(w.request("walker", &format!("172.16.0.{}", 1 + (step / 50) % 2), "/api/cart", CHROME, 200));
        }
        w.advance(100);
    }
    let last = shared.last().unwrap();
    assert!(keys_score(last).is_some_and(|s| s >= 0.8), "{:?}", last.signals);
    let detail = last.threat_details.iter().find(|d| d.signal == SIGNAL).unwrap();
    assert!(detail.reason.starts_with("identity seen from "), "{detail:?}");
    assert!(roaming.iter().all(|v| keys_score(v).map_or(true, |s| s < 0.5)));
}

/// The traffic signal's weight as the ensemble will use it.
fn traffic_counted(v: &Verdict) -> Option<bool> {
    v.signals.iter().find(|s| s.name == "traffic").map(|s| match s.combine {
        Combine::Context { weight, gate } => weight > 0.0 && s.score >= gate,
        _ => false,
    })
}

const ATTRIBUTION: &str = r#"{"mode": "monitor", "rate_limit": {"enabled": false},
  "identity": {"sources": [{"type": "header", "name": "x-user-id"}], "hash_secret": "t"},
  "time_series_analysis": {"enable_traffic_analysis": true, "analysis_window_minutes": 1},
  "secondary_keys": {"enabled": true, "keys": [{"type": "client_ip", "trusted_proxy_hops": 1}]}}"#;

#[test]
fn a_route_anomaly_goes_to_its_contributors_not_to_its_ordinary_callers() {
    let mut w = World::new(ATTRIBUTION);
    // Forty ordinary callers, one request a second each, on /api/search.
    let steady = |w: &mut World, step: u64, out: &mut Vec<Verdict>| {
        for i in (0..40u64).filter(|i| i % 10 == step % 10) {
            out.push(w.request(&format!("reader-{i}"), &format!("10.1.{i}.7"), "/api/search", CHROME, 200));
        }
    };
    let mut before = Vec::new();
    for step in 0..900u64 {
        steady(&mut w, step, &mut before);
        w.advance(100);
    }
    // A tenfold burst from fifty identities in one newcomer /24.
    let (mut burst, mut readers) = (Vec::new(), Vec::new());
    for step in 0..150u64 {
        for b in 0..40u64 {
            burst.push(w.request(&format!("bot-{}", (step * 40 + b) % 50), &format!("198.18.7.{}", b % 8), "/api/search", "bot/1", 200));
        }
        steady(&mut w, step, &mut readers);
        w.advance(100);
    }
    let anomalous = |v: &&Verdict| v.features.traffic_anomaly_score.is_some_and(|s| s >= 0.34);
    let burst_seen: Vec<&Verdict> = burst.iter().filter(anomalous).collect();
    let readers_seen: Vec<&Verdict> = readers.iter().filter(anomalous).collect();
    assert!(burst_seen.len() > 1000, "the burst is an anomaly: {}", burst_seen.len());
    assert!(!readers_seen.is_empty());
    // The burst's requests count the anomaly, and say whose it is...
    let counted = burst_seen.iter().filter(|v| traffic_counted(v) == Some(true)).count();
    assert!(counted as f64 >= 0.95 * burst_seen.len() as f64, "{counted} of {}", burst_seen.len());
    let v = burst_seen.last().unwrap();
    assert!(v.decision >= Decision::Flag);
    let d = v.threat_details.iter().find(|d| d.reason.contains("anomalous: this")).unwrap();
    assert!(d.reason.starts_with("route /api/search anomalous: this client /24 sends "), "{d:?}");
    // ...the ordinary callers' do not: visible, not counted, not flagged.
    for v in &readers_seen {
        assert_eq!(traffic_counted(v), Some(false), "{:?}", v.threat_details);
        assert_eq!(v.decision, Decision::Allow);
        assert!(v.threat_details.iter().any(|d| d.reason.contains("not driven by this request")));
    }
    assert!(w.metrics.get(Metric::Attribution(Role::Contributor)) > 0);
    assert!(w.metrics.get(Metric::Attribution(Role::Bystander)) > 0);
}

#[test]
fn ordinary_users_who_share_a_browser_with_the_crowd_behind_an_anomaly_are_not_blamed() {
    let mut w = World::new(
        r#"{"mode": "monitor", "rate_limit": {"enabled": false},
  "identity": {"sources": [{"type": "header", "name": "x-user-id"}], "hash_secret": "t"},
  "behavioral_profiling": {"enable_user_profiling": true},
  "time_series_analysis": {"enable_traffic_analysis": true, "analysis_window_minutes": 1},
  "secondary_keys": {"enabled": true,
    "keys": [{"type": "client_ip", "trusted_proxy_hops": 1}, {"type": "header", "name": "user-agent"}]}}"#,
    );
    // Forty readers with profiles of their own, one request a second each;
    // four of them use a less common browser.
    const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Firefox/133.0";
    let steady = |w: &mut World, step: u64, out: &mut Vec<(u64, Verdict)>| {
        for i in (0..40u64).filter(|i| i % 10 == step % 10) {
            let ua = if i < 4 { FIREFOX } else { CHROME };
            let path = ["/api/search", "/api/items", "/api/search"][(step / 10 % 3) as usize];
            out.push((i, w.request(&format!("reader-{i}"), &format!("10.1.{i}.7"), path, ua, 200)));
        }
    };
    // A new customer with that browser too, who signed up five seconds
    // before the burst and reads at a reader's pace (cold all through it).
    let newcomer = |w: &mut World, step: u64, out: &mut Vec<Verdict>| {
        if step % 10 == 5 {
            let path = ["/api/items", "/api/search"][(step / 10 % 2) as usize];
            out.push(w.request("new-customer", "10.2.0.7", path, FIREFOX, 200));
        }
    };
    let (mut before, mut joined) = (Vec::new(), Vec::new());
    for step in 0..900u64 {
        steady(&mut w, step, &mut before);
        if step >= 850 {
            newcomer(&mut w, step, &mut joined);
        }
        w.advance(100);
    }
    // A burst on /api/search from fresh identities with that same browser, in many /24s.
    let (mut burst, mut readers, mut customer) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..150u64 {
        for b in 0..30u64 {
            let n = step * 30 + b;
            burst.push(w.request(&format!("bot-{n}"), &format!("100.{}.{}.9", 64 + n % 50, n / 50 % 250), "/api/search", FIREFOX, 200));
        }
        steady(&mut w, step, &mut readers);
        newcomer(&mut w, 900 + step, &mut customer);
        w.advance(100);
    }
    let anomalous = |v: &Verdict| v.features.traffic_anomaly_score.is_some_and(|s| s >= 0.34);
    assert!(burst.iter().filter(|v| anomalous(v)).count() > 1000, "the burst is an anomaly");
    let flagged = burst.iter().filter(|v| anomalous(v) && v.decision >= Decision::Flag).count();
    assert!(flagged > 1000, "the burst is flagged: {flagged}");
    // The four who share its browser, on their usual route at their usual pace, are bystanders.
    let sharing: Vec<&Verdict> = readers.iter().filter(|(i, v)| *i < 4 && anomalous(v)).map(|(_, v)| v).collect();
    assert!(!sharing.is_empty());
    for v in sharing {
        assert_eq!(v.decision, Decision::Allow, "{:?}", v.threat_details);
        assert_ne!(traffic_counted(v), Some(true), "{:?}", v.threat_details);
    }
    // So is the new customer: her clean record, which her population finds
    // ordinary, vouches for her (the bots make one request each).
    let judged_as_newcomer = |v: &&Verdict| v.signals.iter().any(|s| s.name == "population");
    let seen: Vec<&Verdict> = customer.iter().filter(|v| anomalous(v)).filter(judged_as_newcomer).collect();
    assert!(seen.len() >= 5, "{} of {}", seen.len(), customer.len());
    for v in seen {
        assert_eq!(v.decision, Decision::Allow, "{:?} {:?}", v.profile, v.threat_details);
    }
}

#[test]
fn a_burst_from_hundreds_of_fresh_identities_sharing_no_key_is_the_newcomers_and_the_regulars_are_not_blamed() {
    let mut w = World::new(
        r#"{"mode": "monitor", "rate_limit": {"enabled": false},
  "identity": {"sources": [{"type": "header", "name": "x-user-id"}], "hash_secret": "t"},
  "behavioral_profiling": {"enable_user_profiling": true},
  "time_series_analysis": {"enable_traffic_analysis": true, "analysis_window_minutes": 1},
  "secondary_keys": {"enabled": true,
    "keys": [{"type": "client_ip", "trusted_proxy_hops": 1}, {"type": "header", "name": "user-agent"}]}}"#,
    );
    let steady = |w: &mut World, step: u64, out: &mut Vec<Verdict>| {
        for i in (0..40u64).filter(|i| i % 10 == step % 10) {
            out.push(w.request(&format!("reader-{i}"), &format!("10.1.{i}.7"), "/api/search", CHROME, 200));
        }
    };
    let mut before = Vec::new();
    for step in 0..900u64 {
        steady(&mut w, step, &mut before);
        w.advance(100);
    }
    // Each bot sends one request, from its own /24, with its own user agent.
    let (mut burst, mut readers) = (Vec::new(), Vec::new());
    for step in 0..150u64 {
        for b in 0..30u64 {
            let n = step * 30 + b;
            let (client, ua) = (format!("{}.{}.{}.9", 11 + n % 200, n / 200 % 250, n % 97), format!("agent-{n}"));
            burst.push(w.request(&format!("bot-{n}"), &client, "/api/search", &ua, 200));
        }
        steady(&mut w, step, &mut readers);
        w.advance(100);
    }
    let anomalous = |v: &&Verdict| v.features.traffic_anomaly_score.is_some_and(|s| s >= 0.34);
    let seen: Vec<&Verdict> = burst.iter().filter(anomalous).collect();
    assert!(seen.len() > 1000, "the burst is an anomaly: {}", seen.len());
    let flagged = seen.iter().filter(|v| v.decision >= Decision::Flag).count();
    assert!(flagged as f64 >= 0.9 * seen.len() as f64, "{flagged} of {} flagged", seen.len());
    let v = seen.last().unwrap();
    assert!(v.threat_details.iter().any(|d| d.reason.contains("this request's newcomers")), "{:?}", v.threat_details);
    let regulars: Vec<&Verdict> = readers.iter().filter(anomalous).collect();
    assert!(!regulars.is_empty());
    for v in regulars {
        assert_eq!(v.decision, Decision::Allow, "{:?}", v.threat_details);
    }
}

#[test]
fn when_everybody_moves_to_a_new_route_nobody_is_blamed() {
    let mut w = World::new(ATTRIBUTION);
    let mut all = Vec::new();
    for step in 0..1500u64 {
        // Four early adopters use v2; at 90 s a release moves the other
        // thirty-six there too, each at its usual pace: v2 sees ten times its traffic.
        for i in (0..40u64).filter(|i| i % 10 == step % 10) {
            let path = if step < 900 && i >= 4 { "/api/v1/items" } else { "/api/v2/items" };
            all.push(w.request(&format!("client-{i}"), &format!("10.2.{i}.7"), path, CHROME, 200));
        }
        w.advance(100);
    }
    let anomalous = all.iter().filter(|v| v.features.traffic_anomaly_score.is_some_and(|s| s >= 0.34)).count();
    assert!(anomalous > 100, "the shift is an anomaly on v2: {anomalous}");
    assert!(w.metrics.get(Metric::Attribution(Role::Bystander)) > 100);
    assert_eq!(w.metrics.get(Metric::Attribution(Role::Contributor)), 0);
    for v in &all {
        assert_eq!(v.decision, Decision::Allow, "{:?}", v.threat_details);
        assert_ne!(traffic_counted(v), Some(true), "{:?}", v.threat_details);
    }
}

#[test]
fn a_flood_of_never_seen_key_values_keeps_memory_flat_and_hostile_values_never_panic() {
    let json = CONFIG.replace(r#""min_population": 50"#, r#""min_population": 50, "max_keys": 256, "cache_entries": 64"#);
    let mut w = World::new(&json);
    let keys_before = w.store.len();
    let table = crate::engine::ports::Table::Keys;
    // Two keys' tables (records of ENCODED bytes plus the slot header), two
    // populations, 64 routes: all created at start-up or bounded by the slots.
    let bytes_cap = 2 * 256 * (super::record::ENCODED + 17 + 40) + 64 * (17 + 30 + 24 * 16 + 40) + 2 * 200;
    for i in 0..50_000u64 {
        // A new user agent, a new /24 and a new identity every time, all failing.
        w.request(&format!("flood-{i}"), &format!("{}.{}.{}.1", 1 + i % 200, (i / 200) % 250, i / 50_000), "/login", &format!("ua-{i}"), 401);
        if i % 50 == 0 {
            w.advance(100);
        }
    }
    w.advance(10_000);
    // The two key populations, and the users' newcomer population (profiling).
    assert_eq!(w.store.len(), keys_before + 3, "only the population records were added");
    let bytes = w.metrics.get(crate::engine::ports::Metric::StoreBytes(table)) as usize;
    assert!(bytes <= bytes_cap, "{bytes} > {bytes_cap}");
    for e in &w.workers {
        let k = e.keys().unwrap();
        assert_eq!(k.local_capacity(), 64);
        assert!(k.pending_of(0) <= 64 && k.pending_of(1) <= 64);
    }
    // Hostile values: 8 KB, not UTF-8, empty, malformed addresses.
    let e = &w.workers[0];
    let mut odd = HeaderList::from_pairs(&[(":path", "/x"), ("x-user-id", "h"), ("user-agent", &"A".repeat(8 * 1024))]);
    odd.headers.push(("x-forwarded-for".into(), vec![0xff, b',', 0xfe, b',', b' ']));
    for req in [
        odd,
        HeaderList::from_pairs(&[("x-user-id", "h"), ("user-agent", ""), ("x-forwarded-for", "")]),
        HeaderList::from_pairs(&[("user-agent", "\u{0}\u{1}"), ("x-forwarded-for", ",,,,::::,999.1.1.1")]).with_peer("not an address"),
        HeaderList::default(),
    ] {
        let mut v = e.on_request(&req, w.now, &w.store, &w.metrics);
        e.on_response(&mut v.features, None, 0);
        e.on_complete(&v.features, w.now);
    }
    w.advance(2_000);
}
