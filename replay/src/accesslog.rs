//! `vigil-replay accesslog`: an Envoy JSON access log (the harness's format:
//! `time`, `path`, `status`, `duration_ms` per line) replayed through the
//! traffic analysis, one second at a time, printing every anomaly onset. For
//! trying `time_series_analysis` settings (window, sensitivity, the minimum
//! changes) on recorded traffic, and for measuring what host jitter does to
//! them: `--stall-at S --stall-ms MS` holds the upstream's responses started in
//! 300 ms of second S (counted from the first request) for up to MS more, and
//! `--jitter-from S --jitter-ms MS` makes every upstream response from second
//! S on up to MS late (deterministically). Upstream means not under `/direct/`
//! (the harness's routes that Envoy answers itself).
//!
//! Each request counts in the second it ended, with its duration as latency
//! (whole milliseconds: the access log's resolution), in its route template.

use std::collections::BTreeMap;
use vigil::engine::config::TimeSeriesAnalysis;
use vigil::engine::route;
use vigil::engine::traffic::analyzer::{Settings, State};
use vigil::engine::traffic::detector::{threshold, Params};
use vigil::engine::traffic::series::Floors;
use vigil::engine::traffic::tally::Counts;

/// What to replay and how.
pub struct Options {
    pub cfg: TimeSeriesAnalysis,
    pub stall: Option<(u64, u64)>,
    pub jitter: Option<(u64, u64)>,
}

const STALL_MS: u64 = 300;

/// Milliseconds since the epoch of an RFC 3339 UTC time (`2026-12-03T13:18:00.123Z`).
fn epoch_ms(t: &str) -> Option<u64> {
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut h = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    let ms: i64 = format!("{:0<3}", frac.get(..3.min(frac.len()))?).parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from(((days * 86_400 + hh * 3_600 + mm * 60 + ss) * 1_000) + ms).ok()
}

fn text_or_number(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// The onset lines, each prefixed with its second (from the first request).
pub fn replay(text: &str, o: &Options) -> Result<Vec<String>, String> {
    let mut by: BTreeMap<u64, Counts> = BTreeMap::new();
    let mut first_s = None;
    for (n, line) in text.lines().enumerate() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(start), Some(path)) = (v["time"].as_str().and_then(epoch_ms), v["path"].as_str()) else { continue };
        let mut ms = text_or_number(&v["duration_ms"]).unwrap_or(0);
        let status = text_or_number(&v["status"]).and_then(|s| u16::try_from(s).ok()).filter(|&s| s > 0);
        let t0 = *first_s.get_or_insert(start / 1_000);
        let upstream = !path.starts_with("/direct/");
        if let (Some((at, extra)), true) = (o.stall, upstream) {
            let from = (t0 + at) * 1_000 + 200;
            if (from..from + STALL_MS).contains(&start) {
                ms += extra - (start - from) * extra / STALL_MS / 2;
            }
        }
        if let (Some((from, most)), true) = (o.jitter, upstream) {
            if start / 1_000 >= t0 + from {
                ms += ((n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % (most + 1);
            }
        }
        let end = start + ms;
        by.entry(end / 1_000).or_default().add(&route::template(path.as_bytes()), 64, status, Some(ms * 1_000 + 500));
    }
    let (Some(&first), Some(&last)) = (by.keys().next(), by.keys().last()) else {
        return Err("no access-log lines with time, path, status and duration_ms".into());
    };
    let window_s = u64::from(o.cfg.analysis_window_minutes.max(1)) * 60;
    let s = Settings {
        params: Params { long_samples: window_s as f64, warmup: (window_s / 4).clamp(30, 600), ..Params::default() },
        alpha: 1.0 / window_s as f64,
        threshold: threshold(o.cfg.anomaly_sensitivity),
        max_routes: o.cfg.max_routes as usize,
        idle_s: window_s,
        drift_s: u64::from(o.cfg.drift_minutes) * 60,
        floors: Floors(o.cfg.min_change.by_metric()),
    };
    // The analysis starts with Envoy, a few seconds before the first request.
    let mut state = State::new(first.saturating_sub(3), &s);
    let mut out = Vec::new();
    for second in first.saturating_sub(2)..=last {
        let counts = by.get(&second).cloned().unwrap_or_default();
        for o in state.analyze(second, &counts, &s).onsets {
            out.push(format!(
                "{:>4} s: {} on {} scored {:.2} ({:.1} vs {}{:.1})",
                second as i64 - first as i64,
                o.metric.as_str(),
                o.scope.as_str(),
                o.score,
                o.value,
                if o.young { "established routes' " } else { "baseline " },
                o.baseline
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_to_epoch_milliseconds() {
        assert_eq!(epoch_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(epoch_ms("2000-03-01T00:00:01.5Z"), Some(951_868_801_500));
        assert_eq!(epoch_ms("nonsense"), None);
    }

    /// Steady traffic then an outage on one route, as the harness logs it.
    #[test]
    fn an_outage_in_a_log_is_found_and_a_stall_is_not() {
        let mut log = String::new();
        for s in 0..120u64 {
            for i in 0..20u64 {
                let status = if s >= 100 && i % 2 == 0 { 503 } else { 200 };
                let t = format!("2026-01-01T00:{:02}:{:02}.{:03}Z", s / 60, s % 60, i * 50);
                log.push_str(&format!(r#"{{"time":"{t}","path":"/status/{status}","status":"{status}","duration_ms":"5"}}"#));
                log.push('\n');
                log.push_str(&format!(r#"{{"time":"{t}","path":"/direct/a","status":"200","duration_ms":"0"}}"#));
                log.push('\n');
            }
        }
        let cfg = TimeSeriesAnalysis { analysis_window_minutes: 1, ..TimeSeriesAnalysis::default() };
        let onsets = replay(&log, &Options { cfg: cfg.clone(), stall: Some((70, 300)), jitter: None }).unwrap();
        assert!(onsets.iter().all(|l| l.starts_with(" 100 s") || l.starts_with(" 101 s")), "{onsets:?}");
        assert!(onsets.iter().any(|l| l.contains("5xx_rate on /status/{id}")), "{onsets:?}");
        // With no floors, the same stall is an anomaly.
        let bare = TimeSeriesAnalysis { min_change: serde_json::from_str(r#"{"requests_per_s":0,"latency_p50_ms":0,"latency_p95_ms":0,"latency_p99_ms":0,"4xx_rate":0,"5xx_rate":0}"#).unwrap(), ..cfg };
        let onsets = replay(&log, &Options { cfg: bare, stall: Some((70, 300)), jitter: None }).unwrap();
        assert!(onsets.iter().any(|l| l.starts_with("  70 s: latency_p95_ms")), "{onsets:?}");
    }
}
