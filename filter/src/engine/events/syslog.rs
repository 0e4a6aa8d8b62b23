//! RFC 5424 framing of an event, for collectors that take syslog:
//! `<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG`. The message is the
//! event's CEF line or JSON; the structured data repeats the keys a
//! collector routes on.

use super::Event;
use std::fmt::Write;

/// Private enterprise number for the SD-ID. 32473 is the one RFC 5612
/// reserves for documentation and examples; replace it with yours if you
/// route on it.
pub const ENTERPRISE: u32 = 32473;
/// Facility 10: security/authorization messages (private).
pub const FACILITY: u8 = 10;

/// CEF severity (0 to 10) to syslog severity (0 emergency .. 7 debug).
pub fn severity(cef: u8) -> u8 {
    match cef {
        9.. => 2,    // critical
        7..=8 => 3,  // error
        5..=6 => 4,  // warning
        3..=4 => 5,  // notice
        _ => 6,      // informational
    }
}

/// One syslog message (no trailing newline; with octet counting, RFC 6587,
/// a TCP transport prefixes its length).
pub fn frame(e: &Event, host: &str, msg: &str) -> String {
    let mut out = String::with_capacity(msg.len() + 160);
    let pri = u32::from(FACILITY) * 8 + u32::from(severity(e.severity));
    let _ = write!(out, "<{pri}>1 {} ", rfc3339(e.time_ms));
    token(&mut out, host, 255);
    out.push_str(" vigil - ");
    token(&mut out, e.kind.signature_id(), 32);
    let _ = write!(out, " [vigil@{ENTERPRISE}");
    param(&mut out, "action", &e.action);
    if let Some(id) = &e.request_id {
        param(&mut out, "requestId", id);
    }
    if let Some(identity) = &e.identity {
        param(&mut out, "identity", identity);
    }
    if let Some(risk) = e.risk {
        param(&mut out, "risk", &format!("{risk:.3}"));
    }
    out.push_str("] ");
    out.push_str(msg);
    out
}

/// A header field: printable US-ASCII without spaces, at most `max`
/// characters; `-` when empty (the NILVALUE).
fn token(out: &mut String, s: &str, max: usize) {
    let start = out.len();
    out.extend(s.chars().filter(|c| c.is_ascii_graphic()).take(max));
    if out.len() == start {
        out.push('-');
    }
}

/// ` name="value"`, with `"`, `\` and `]` escaped (RFC 5424 6.3.3).
fn param(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, " {name}=\"");
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// `YYYY-MM-DDThh:mm:ss.sssZ` from Unix milliseconds (UTC).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem / 60 % 60, rem % 60, ms % 1000)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events::{Event, Kind};

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_763_700_000_123), "2025-11-21T04:40:00.123Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn a_frame_has_pri_version_header_structured_data_and_message() {
        let e = Event {
            kind: Kind::Decision,
            name: "request blocked".into(),
            severity: 9,
            time_ms: 1_763_700_000_123,
            action: "block".into(),
            request_id: Some("r-1".into()),
            identity: Some("user:\"quoted\"]\\".into()),
            method: None,
            route: None,
            risk: Some(0.97),
            signals: String::new(),
            reasons: Vec::new(),
            message: String::new(),
        };
        let f = frame(&e, "edge 1", "CEF:0|Vigil|...");
        // authpriv (10) * 8 + critical (2) = 82; a host with a space loses it.
        assert_eq!(
            f,
            "<82>1 2025-11-21T04:40:00.123Z edge1 vigil - decision [vigil@32473 action=\"block\" requestId=\"r-1\" \
             identity=\"user:\\\"quoted\\\"\\]\\\\\" risk=\"0.970\"] CEF:0|Vigil|..."
        );
        assert!(frame(&e, "", "m").contains(" - vigil - decision "), "an empty host is the NILVALUE");
        assert_eq!([severity(10), severity(7), severity(5), severity(3), severity(0)], [2, 3, 4, 5, 6]);
    }
}
