//! Security events: one record per thing a SIEM should keep (a decision
//! above `flag`, a traffic anomaly, an alert), told as a CEF line, as JSON,
//! or either framed as RFC 5424 syslog. Formatting only: where events go
//! (Envoy's log, a collector) is the host's and the exporter's business.

pub mod cef;
pub mod collector;
pub mod syslog;

use super::decision::Decision;
use super::pipeline::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A request decided above `allow`.
    Decision,
    /// A traffic series became anomalous.
    Anomaly,
    /// An alert rule fired.
    Alert,
    /// An operator's feedback on a decision, identity or route.
    Feedback,
    /// A baseline followed a lasting shift (an identity's or a route's).
    Drift,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Decision, Kind::Anomaly, Kind::Alert, Kind::Feedback, Kind::Drift];

    /// The CEF signature id and the syslog MSGID.
    pub fn signature_id(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::Anomaly => "anomaly",
            Kind::Alert => "alert",
            Kind::Feedback => "feedback",
            Kind::Drift => "drift",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: Kind,
    /// Human-readable name (the CEF Name).
    pub name: String,
    /// 0 (lowest) to 10, as CEF defines it.
    pub severity: u8,
    pub time_ms: u64,
    /// What was done or seen: `flag`, `throttle`, `block`, `anomaly`, `alert`.
    pub action: String,
    pub request_id: Option<String>,
    /// `kind:keyed-hash`, never a raw identity.
    pub identity: Option<String>,
    pub method: Option<String>,
    pub route: Option<String>,
    pub risk: Option<f64>,
    pub signals: String,
    pub reasons: Vec<String>,
    pub message: String,
}

/// CEF severity of a decision: flag 5, throttle 7, block 9 (allow is no event).
pub fn decision_severity(d: Decision) -> u8 {
    match d {
        Decision::Allow => 0,
        Decision::Flag => 5,
        Decision::Throttle => 7,
        Decision::Block => 9,
    }
}

impl Event {
    /// The event for a request decided above `allow`; `None` for `allow`.
    pub fn of_decision(v: &Verdict) -> Option<Event> {
        if v.decision == Decision::Allow {
            return None;
        }
        let action = v.decision.as_str();
        let verb = match v.decision {
            Decision::Flag => "request flagged",
            Decision::Throttle => "request throttled",
            _ => "request blocked",
        };
        Some(Event {
            kind: Kind::Decision,
            name: verb.to_string(),
            severity: decision_severity(v.decision),
            time_ms: v.features.time_ms,
            action: action.to_string(),
            request_id: Some(v.features.request_id.clone()),
            identity: Some(v.features.identity.display()),
            method: Some(v.features.method.as_str().to_string()),
            route: Some(v.features.route.clone()),
            risk: Some(v.risk),
            signals: super::report::signals(v),
            reasons: v.threat_details.iter().map(|d| format!("{}: {}", d.signal, d.reason)).collect(),
            message: format!("{action}{}: risk {:.3}", if v.enforced { "" } else { " (not enforced)" }, v.risk),
        })
    }

    /// The event for a traffic anomaly onset (`line` is the analysis' own).
    pub fn of_anomaly(time_ms: u64, line: &str) -> Event {
        Event::notice(Kind::Anomaly, "traffic anomaly", 6, time_ms, "anomaly", line.to_string())
    }

    /// An event about no request in particular; the caller fills in the
    /// identity, route or request it concerns.
    pub fn notice(kind: Kind, name: &str, severity: u8, time_ms: u64, action: &str, message: String) -> Event {
        Event {
            kind,
            name: name.to_string(),
            severity,
            time_ms,
            action: action.to_string(),
            request_id: None,
            identity: None,
            method: None,
            route: None,
            risk: None,
            signals: String::new(),
            reasons: Vec::new(),
            message,
        }
    }

    pub fn json(&self) -> String {
        self.json_value().to_string()
    }

    pub fn json_value(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind.signature_id(),
            "name": self.name,
            "severity": self.severity,
            "time": syslog::rfc3339(self.time_ms),
            "time_ms": self.time_ms,
            "action": self.action,
            "request_id": self.request_id,
            "identity": self.identity,
            "method": self.method,
            "route": self.route,
            "risk_score": self.risk.map(|r| (r * 1000.0).round() / 1000.0),
            "signals": (!self.signals.is_empty()).then_some(&self.signals),
            "reasons": self.reasons,
            "message": self.message,
        })
    }

    pub fn cef(&self) -> String {
        cef::line(self)
    }
}
