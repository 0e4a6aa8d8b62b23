//! ArcSight Common Event Format: `CEF:0|Vendor|Product|Version|SignatureID|
//! Name|Severity|Extension`. Header fields escape `\` and `|`; extension
//! values escape `\`, `=` and line breaks (ArcSight CEF Implementation
//! Standard, "Character Encoding"). Keys are the standard short names, or
//! custom ones (`cs1`, `cfp1`...) with their `Label`.

use super::Event;
use std::fmt::Write;

pub const VENDOR: &str = "Vigil";
pub const PRODUCT: &str = "vigil";

/// One event as a CEF line (no trailing newline).
pub fn line(e: &Event) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("CEF:0|");
    for field in [VENDOR, PRODUCT, env!("CARGO_PKG_VERSION"), e.kind.signature_id(), &e.name] {
        header(&mut out, field);
        out.push('|');
    }
    let _ = write!(out, "{}|", e.severity.min(10));
    let mut ext = Extension(&mut out, true);
    ext.pair("rt", &e.time_ms.to_string());
    ext.pair("act", &e.action);
    if let Some(id) = &e.request_id {
        ext.pair("externalId", id);
    }
    if let Some(identity) = &e.identity {
        ext.pair("suser", identity);
    }
    if let Some(m) = &e.method {
        ext.pair("requestMethod", m);
    }
    if let Some(route) = &e.route {
        ext.pair("request", route);
    }
    if let Some(risk) = e.risk {
        ext.pair("cfp1", &format!("{risk:.3}"));
        ext.pair("cfp1Label", "riskScore");
    }
    if !e.signals.is_empty() {
        ext.pair("cs1", &e.signals);
        ext.pair("cs1Label", "signals");
    }
    if !e.reasons.is_empty() {
        ext.pair("reason", &e.reasons.join("; "));
    }
    ext.pair("msg", &e.message);
    out
}

fn header(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            // A header holds no line breaks; they would end the event.
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
}

struct Extension<'a>(&'a mut String, bool);

impl Extension<'_> {
    fn pair(&mut self, key: &str, value: &str) {
        if !self.1 {
            self.0.push(' ');
        }
        self.1 = false;
        self.0.push_str(key);
        self.0.push('=');
        for c in value.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '=' => self.0.push_str("\\="),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                c => self.0.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events::{Event, Kind};

    fn event() -> Event {
        Event {
            kind: Kind::Decision,
            name: "request blocked".into(),
            severity: 9,
            time_ms: 1_763_700_000_123,
            action: "block".into(),
            request_id: Some("abc-1".into()),
            identity: Some("user:00000000000000ff".into()),
            method: Some("GET".into()),
            route: Some("/admin/{id}".into()),
            risk: Some(0.9712),
            signals: "rate=1.000;behavior=0.900".into(),
            reasons: vec!["rate: 41 requests in the last 10s against a ceiling of 20".into()],
            message: "block: risk 0.971".into(),
        }
    }

    #[test]
    fn a_decision_event_has_the_header_and_the_keys_a_siem_expects() {
        let l = line(&event());
        assert!(l.starts_with(&format!("CEF:0|Vigil|vigil|{}|decision|request blocked|9|rt=1763700000123 ", env!("CARGO_PKG_VERSION"))), "{l}");
        for part in [
            "act=block",
            "externalId=abc-1",
            "suser=user:00000000000000ff",
            "requestMethod=GET",
            "request=/admin/{id}",
            "cfp1=0.971 cfp1Label=riskScore",
            "cs1=rate\\=1.000;behavior\\=0.900 cs1Label=signals",
            "reason=rate: 41 requests",
            "msg=block: risk 0.971",
        ] {
            assert!(l.contains(part), "{part} in {l}");
        }
        assert!(!l.contains('\n'));
    }

    #[test]
    fn header_and_extension_escaping_follow_the_standard() {
        let mut e = event();
        e.name = "a|b\\c\nd".into();
        e.message = "x=y\\z\r\nnext | pipe".into();
        e.reasons = vec!["a=b".into(), "c\\d".into()];
        let l = line(&e);
        // Header: pipes and backslashes escaped, line breaks dropped.
        assert!(l.contains("|a\\|b\\\\c d|9|"), "{l}");
        // Extension: equals, backslash and line breaks escaped; a pipe is plain.
        assert!(l.ends_with("msg=x\\=y\\\\z\\r\\nnext | pipe"), "{l}");
        assert!(l.contains("reason=a\\=b; c\\\\d"), "{l}");
        assert_eq!(l.lines().count(), 1);
    }
}
