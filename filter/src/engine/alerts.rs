//! Alert rules: conditions on what the detectors found, de-duplicated per
//! key across every worker, escalated when they persist, and carried to
//! webhooks (generic JSON or Slack) by the outbox.
//!
//! De-duplication lives in shared data: one bounded slot per alert key
//! (rule + identity, route or nothing) holding when it last fired and how
//! often the condition held since. The worker whose compare-and-swap moves
//! the slot to "fired" is the one that notifies, so a key alerts once per
//! cooldown however many workers see the condition.

use super::codec::{Reader, Writer};
use super::config::{AlertOn, AlertPer, AlertRule, AlertsConfig, ClusterUrl, Severity, WebhookFormat};
use super::events::{Event, Kind};
use super::outbox::{Channel, Outbox, Target};
use super::pipeline::Verdict;
use super::ports::{Metric, MetricsSink, SharedStore, StoreError, Table};
use super::slots::{Record, SlotTable};
use std::cell::Cell;

/// An alert that fired (or escalated).
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub rule: String,
    pub severity: Severity,
    pub escalated: bool,
    /// What the alert is about: `identity user:…`, `route /x`, `model anomaly`, or `rule`.
    pub key: String,
    pub condition: String,
    pub value: f64,
    /// Times the condition held since the last notification for this key.
    pub repeats: u32,
    pub time_ms: u64,
    pub request_id: Option<String>,
    pub route: Option<String>,
}

/// One alert key's state in shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyState {
    last_fired_ms: u64,
    repeats: u32,
    escalated: bool,
}

impl Record for KeyState {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.u64(self.last_fired_ms);
        w.u32(self.repeats);
        w.u8(u8::from(self.escalated));
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        Some(KeyState { last_fired_ms: r.u64()?, repeats: r.u32()?, escalated: r.u8()? == 1 })
    }
}

/// What a condition check concluded for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Fire,
    Escalate,
    Quiet,
}

pub struct Alerts {
    rules: Vec<AlertRule>,
    formats: Vec<WebhookFormat>,
    prefix: String,
    slots: u32,
    ttl_ms: u64,
    pub outbox: Outbox,
}

impl Alerts {
    /// `None` without rules.
    pub fn new(cfg: &AlertsConfig) -> Option<Alerts> {
        if cfg.rules.is_empty() {
            return None;
        }
        let mut targets = Vec::new();
        let mut formats = Vec::new();
        for (i, w) in cfg.webhooks.iter().enumerate() {
            // Validated at load.
            let Ok(url) = ClusterUrl::parse(&w.url) else { continue };
            targets.push(Target {
                name: format!("alerts.webhooks[{i}]"),
                cluster: url.cluster(w.cluster.as_ref()),
                authority: url.authority.clone(),
                path: url.path.clone(),
                timeout_ms: w.timeout_ms,
                retries: w.retries,
                headers: Vec::new(),
            });
            formats.push(w.format);
        }
        let longest = cfg.rules.iter().map(|r| u64::from(r.cooldown_seconds)).max().unwrap_or(300);
        Some(Alerts {
            rules: cfg.rules.clone(),
            formats,
            prefix: format!("vigil/alerts/{}/", cfg.max_keys),
            slots: cfg.max_keys,
            // A key quiet for two cooldowns has nothing left to de-duplicate.
            ttl_ms: 2 * longest * 1000,
            outbox: Outbox::new(Channel::Webhook, targets),
        })
    }

    fn table<'a>(&'a self, store: &'a dyn SharedStore, metrics: &'a dyn MetricsSink) -> SlotTable<'a> {
        SlotTable::new(store, metrics, &self.prefix, self.slots, Table::Alerts, self.ttl_ms)
    }

    pub fn start(&self, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<u32, StoreError> {
        self.table(store, metrics).initialize::<KeyState>()
    }

    /// Checks every request rule against a decided request. A rule whose
    /// state cannot be updated is counted (`StoreErrors`) and skipped: the
    /// alerts of the other rules, whose slots now say "fired", must not be
    /// lost with it.
    pub fn check_request(&self, v: &Verdict, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Vec<Alert> {
        let mut out = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let value = match rule.on {
                AlertOn::Risk => Some(v.risk),
                AlertOn::Behavior => v.features.behavioral_score,
                AlertOn::Traffic => v.features.traffic_anomaly_score,
                AlertOn::Ml => v.features.user_deviation_score,
                AlertOn::MlBreaker => None,
            };
            let Some(value) = value.filter(|x| *x >= rule.above) else { continue };
            let key = match rule.per {
                AlertPer::Identity => format!("identity {}", v.features.identity.display()),
                AlertPer::Route => format!("route {}", v.features.route),
                AlertPer::Rule => "rule".to_string(),
            };
            let context = (Some(v.features.request_id.clone()), Some(v.features.route.clone()));
            match self.step(i, key, value, context, now_ms, store, metrics) {
                Ok(Some(a)) => out.push(a),
                Ok(None) => {}
                Err(_) => metrics.add(Metric::StoreErrors, 1),
            }
        }
        out
    }

    /// Checks the `ml_breaker` rules: a model's breaker just opened.
    pub fn check_breaker(&self, model: &str, now_ms: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Vec<Alert> {
        let mut out = Vec::new();
        for (i, _) in self.rules.iter().enumerate().filter(|(_, r)| r.on == AlertOn::MlBreaker) {
            let key = format!("model {model}");
            match self.step(i, key, 1.0, (None, None), now_ms, store, metrics) {
                Ok(Some(a)) => out.push(a),
                Ok(None) => {}
                Err(_) => metrics.add(Metric::StoreErrors, 1),
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        rule_index: usize,
        key: String,
        value: f64,
        context: (Option<String>, Option<String>),
        now_ms: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
    ) -> Result<Option<Alert>, StoreError> {
        let Some(rule) = self.rules.get(rule_index) else { return Ok(None) };
        let cooldown_ms = u64::from(rule.cooldown_seconds) * 1000;
        let step = Cell::new(Step::Quiet);
        let updated = self.table(store, metrics).update(key_hash(&rule.name, &key), now_ms, |current| {
            let (next, s) = advance(current, rule, cooldown_ms, now_ms);
            step.set(s);
            next
        })?;
        let escalated = match step.get() {
            Step::Quiet => {
                metrics.add(Metric::AlertsSuppressed, 1);
                return Ok(None);
            }
            Step::Fire => false,
            Step::Escalate => true,
        };
        let severity = if escalated { rule.severity.escalated() } else { rule.severity };
        metrics.add(Metric::Alerts(severity), 1);
        Ok(Some(Alert {
            rule: rule.name.clone(),
            severity,
            escalated,
            key,
            condition: condition(rule),
            value,
            repeats: updated.record.repeats,
            time_ms: now_ms,
            request_id: context.0,
            route: context.1,
        }))
    }

    /// Queues the alert for every webhook, in each one's format.
    pub fn notify(&self, alert: &Alert, now_ms: u64, metrics: &dyn MetricsSink) {
        for (i, format) in self.formats.iter().enumerate() {
            let body = match format {
                WebhookFormat::Json => json(alert),
                WebhookFormat::Slack => slack(alert),
            };
            self.outbox.push(i, body.into_bytes(), now_ms, metrics);
        }
    }
}

/// The state after the condition held once more at `now_ms`, and what to do.
fn advance(current: Option<&KeyState>, rule: &AlertRule, cooldown_ms: u64, now_ms: u64) -> (KeyState, Step) {
    match current {
        Some(s) if now_ms.saturating_sub(s.last_fired_ms) < cooldown_ms => {
            let repeats = s.repeats.saturating_add(1);
            if rule.escalate_after > 0 && repeats >= rule.escalate_after && !s.escalated {
                (KeyState { last_fired_ms: s.last_fired_ms, repeats, escalated: true }, Step::Escalate)
            } else {
                (KeyState { repeats, ..*s }, Step::Quiet)
            }
        }
        _ => (KeyState { last_fired_ms: now_ms, repeats: 0, escalated: false }, Step::Fire),
    }
}

/// The rule's condition in words, for the notification (built only when it fires).
fn condition(rule: &AlertRule) -> String {
    let on = match rule.on {
        AlertOn::Risk => "risk",
        AlertOn::Behavior => "behavioral_score",
        AlertOn::Traffic => "traffic_anomaly_score",
        AlertOn::Ml => "user_deviation_score",
        AlertOn::MlBreaker => return "circuit breaker open".to_string(),
    };
    format!("{on} >= {}", rule.above)
}

/// FNV-1a of the rule and the key, never 0 (0 marks a free slot).
fn key_hash(rule: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule.bytes().chain([0u8]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

pub fn summary(a: &Alert) -> String {
    format!(
        "{}{}: {} on {} ({:.3}){}",
        a.rule,
        if a.escalated { " (escalated)" } else { "" },
        a.condition,
        a.key,
        a.value,
        if a.repeats > 0 { format!(", {} more times since the last alert", a.repeats) } else { String::new() }
    )
}

/// The generic webhook payload (docs/siem.md).
pub fn json(a: &Alert) -> String {
    serde_json::json!({
        "source": "vigil",
        "rule": a.rule,
        "severity": a.severity.as_str(),
        "escalated": a.escalated,
        "key": a.key,
        "condition": a.condition,
        "value": (a.value * 1000.0).round() / 1000.0,
        "repeats": a.repeats,
        "time": super::events::syslog::rfc3339(a.time_ms),
        "request_id": a.request_id,
        "route": a.route,
        "summary": summary(a),
    })
    .to_string()
}

/// Slack's incoming-webhook payload.
pub fn slack(a: &Alert) -> String {
    let icon = match a.severity {
        Severity::Critical => ":rotating_light:",
        Severity::Warning => ":warning:",
        Severity::Info => ":information_source:",
    };
    let request = a.request_id.as_deref().map(|r| format!(" (request `{r}`)")).unwrap_or_default();
    serde_json::json!({ "text": format!("{icon} *[{}] Vigil* {}{request}", a.severity.as_str().to_uppercase(), summary(a)) }).to_string()
}

/// The alert as a security event, for the SIEM export.
pub fn event(a: &Alert) -> Event {
    Event {
        kind: Kind::Alert,
        name: format!("alert {}", a.rule),
        severity: match a.severity {
            Severity::Info => 3,
            Severity::Warning => 6,
            Severity::Critical => 9,
        },
        time_ms: a.time_ms,
        action: "alert".to_string(),
        request_id: a.request_id.clone(),
        identity: a.key.strip_prefix("identity ").map(str::to_string),
        method: None,
        route: a.route.clone(),
        risk: None,
        signals: String::new(),
        reasons: Vec::new(),
        message: summary(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    fn rule(cooldown_seconds: u32, escalate_after: u32) -> AlertRule {
        AlertRule {
            name: "hot".into(),
            on: AlertOn::Risk,
            above: 0.9,
            per: AlertPer::Identity,
            severity: Severity::Warning,
            cooldown_seconds,
            escalate_after,
        }
    }

    fn alerts(r: AlertRule) -> (Alerts, MemoryStore, MemoryMetrics) {
        let cfg = AlertsConfig {
            rules: vec![r],
            webhooks: vec![crate::engine::config::WebhookConfig {
                url: "http://alerts/hook".into(),
                cluster: None,
                format: WebhookFormat::Slack,
                timeout_ms: 1000,
                retries: 1,
            }],
            max_keys: 64,
        };
        let a = Alerts::new(&cfg).unwrap();
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        a.start(&store, &metrics).unwrap();
        (a, store, metrics)
    }

    fn fire(a: &Alerts, key: &str, now: u64, store: &MemoryStore, metrics: &MemoryMetrics) -> Option<Alert> {
        a.step(0, key.into(), 0.97, (Some("r".into()), None), now, store, metrics).unwrap()
    }

    #[test]
    fn one_alert_per_key_per_cooldown() {
        let (a, store, metrics) = alerts(rule(60, 0));
        let first = fire(&a, "identity user:1", 0, &store, &metrics).unwrap();
        assert_eq!((first.severity, first.escalated, first.repeats), (Severity::Warning, false, 0));
        for t in 1..100 {
            assert_eq!(fire(&a, "identity user:1", t * 500, &store, &metrics), None, "storm collapses");
        }
        assert!(fire(&a, "identity user:2", 1_000, &store, &metrics).is_some(), "another key alerts on its own");
        let again = fire(&a, "identity user:1", 60_000, &store, &metrics).unwrap();
        assert_eq!(again.repeats, 0);
        assert_eq!(metrics.get(Metric::Alerts(Severity::Warning)), 3);
        assert_eq!(metrics.get(Metric::AlertsSuppressed), 99);
    }

    #[test]
    fn a_condition_that_persists_escalates_once_per_cooldown() {
        let (a, store, metrics) = alerts(rule(60, 5));
        assert!(fire(&a, "k", 0, &store, &metrics).is_some());
        let steps: Vec<Option<Alert>> = (1..=10).map(|t| fire(&a, "k", t * 1000, &store, &metrics)).collect();
        assert!(steps[..4].iter().all(Option::is_none));
        let esc = steps[4].clone().unwrap();
        assert_eq!((esc.severity, esc.escalated, esc.repeats), (Severity::Critical, true, 5));
        assert!(summary(&esc).contains("(escalated)") && summary(&esc).contains("5 more times"));
        assert!(steps[5..].iter().all(Option::is_none), "escalates once");
        // After the cooldown the key starts over at its own severity.
        assert_eq!(fire(&a, "k", 61_000, &store, &metrics).unwrap().severity, Severity::Warning);
    }

    #[test]
    fn workers_racing_on_one_key_notify_once() {
        let (a, store, metrics) = alerts(rule(60, 0));
        // Every conditional write loses twice, as if another worker wrote first.
        store.inject_conflicts.set(2);
        assert!(fire(&a, "k", 0, &store, &metrics).is_some());
        assert!(fire(&a, "k", 1, &store, &metrics).is_none());
    }

    /// A store whose writes fail after the first `ok` ones (start-up excluded).
    struct FailingWrites {
        inner: MemoryStore,
        ok: Cell<u32>,
    }

    impl SharedStore for FailingWrites {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<crate::engine::ports::SetOutcome, StoreError> {
            if self.ok.get() == 0 {
                return Err(StoreError::Host(1));
            }
            self.ok.set(self.ok.get() - 1);
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_rule_whose_state_fails_does_not_lose_the_others_alerts() {
        let mut second = rule(60, 0);
        second.name = "second".into();
        let a = Alerts::new(&AlertsConfig { rules: vec![rule(60, 0), second], webhooks: vec![], max_keys: 64 }).unwrap();
        let metrics = MemoryMetrics::default();
        let store = FailingWrites { inner: MemoryStore::default(), ok: Cell::new(u32::MAX) };
        a.start(&store, &metrics).unwrap();
        // A refused request (risk 1.0) from an engine with a tiny rate ceiling.
        let e = crate::engine::pipeline::Engine::new(
            crate::engine::config::parse(br#"{"rate_limit": {"requests_per_window": 1}}"#).unwrap(),
        );
        let engine_store = MemoryStore::default();
        e.start(&engine_store, &metrics).unwrap();
        let req = crate::engine::request::HeaderList::from_pairs(&[(":path", "/x"), ("x-user-id", "u")]);
        let v = (0..5).map(|i| e.on_request(&req, i, &engine_store, &metrics)).last().unwrap();
        assert!(v.risk >= 0.9);
        // The first rule's write succeeds, the second's fails.
        store.ok.set(1);
        let fired = a.check_request(&v, 10, &store, &metrics);
        assert_eq!(fired.iter().map(|x| x.rule.as_str()).collect::<Vec<_>>(), ["hot"], "the first rule's alert survives");
        assert_eq!(metrics.get(Metric::StoreErrors), 1);
    }

    #[test]
    fn payloads_say_what_fired() {
        let (a, store, metrics) = alerts(rule(60, 0));
        let alert = fire(&a, "identity user:00ff", 1_763_700_000_000, &store, &metrics).unwrap();
        let j: serde_json::Value = serde_json::from_str(&json(&alert)).unwrap();
        assert_eq!(j["rule"], "hot");
        assert_eq!(j["severity"], "warning");
        assert_eq!(j["key"], "identity user:00ff");
        assert_eq!(j["time"], "2025-11-21T04:40:00.000Z");
        let s: serde_json::Value = serde_json::from_str(&slack(&alert)).unwrap();
        assert!(s["text"].as_str().unwrap().starts_with(":warning: *[WARNING] Vigil* hot: risk >= 0.9 on identity user:00ff"));
        a.notify(&alert, 0, &metrics);
        assert_eq!(a.outbox.pending(), 1);
        let e = event(&alert);
        assert_eq!((e.kind, e.severity, e.identity.as_deref()), (Kind::Alert, 6, Some("user:00ff")));
    }
}
