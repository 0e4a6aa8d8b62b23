//! Events to an HTTP collector (a Splunk HEC-style endpoint, or anything
//! that takes JSON lines or CEF lines), in batches: a batch goes when it is
//! full or its oldest event has waited `flush_seconds`. Batches travel
//! through an outbox (retries, bounded, counted); events beyond what one
//! worker holds are dropped and counted, never slowing a request.

use super::Event;
use crate::engine::config::{CollectorConfig, CollectorFormat, ClusterUrl};
use crate::engine::outbox::{Channel, Outbox, Target};
use crate::engine::ports::{Callouts, Metric, MetricsSink};
use std::cell::RefCell;

/// Events a worker holds before they are batched.
const MAX_EVENTS: usize = 1000;

pub struct Collector {
    format: CollectorFormat,
    syslog_host: Option<String>,
    batch_size: usize,
    flush_ms: u64,
    /// Lines waiting, and when the oldest arrived.
    lines: RefCell<(Vec<String>, u64)>,
    pub outbox: Outbox,
}

impl Collector {
    pub fn new(c: &CollectorConfig, syslog_host: Option<String>) -> Option<Collector> {
        let url = ClusterUrl::parse(&c.url).ok()?;
        let target = Target {
            name: "siem.collector".to_string(),
            cluster: url.cluster(c.cluster.as_ref()),
            authority: url.authority,
            path: url.path,
            timeout_ms: c.timeout_ms,
            retries: c.retries,
            headers: c.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        Some(Collector {
            format: c.format,
            syslog_host,
            batch_size: c.batch_size as usize,
            flush_ms: u64::from(c.flush_seconds) * 1000,
            lines: RefCell::new((Vec::new(), 0)),
            outbox: Outbox::new(Channel::Collector, vec![target]),
        })
    }

    pub fn push(&self, e: &Event, now_ms: u64, metrics: &dyn MetricsSink) {
        let line = match self.format {
            CollectorFormat::Json => e.json(),
            CollectorFormat::Cef => match &self.syslog_host {
                Some(host) => super::syslog::frame(e, host, &e.cef()),
                None => e.cef(),
            },
            CollectorFormat::Hec => hec(e),
        };
        let mut lines = self.lines.borrow_mut();
        if lines.0.len() >= MAX_EVENTS {
            metrics.add(Metric::EventsDropped, 1);
            return;
        }
        if lines.0.is_empty() {
            lines.1 = now_ms;
        }
        lines.0.push(line);
    }

    /// Batches what is due (every full batch, and the rest once its oldest
    /// event has waited `flush_seconds`) and sends from the outbox.
    pub fn on_tick(&self, now_ms: u64, callouts: &dyn Callouts, metrics: &dyn MetricsSink) -> Vec<String> {
        {
            let mut lines = self.lines.borrow_mut();
            loop {
                let full = lines.0.len() >= self.batch_size;
                let old = !lines.0.is_empty() && now_ms.saturating_sub(lines.1) >= self.flush_ms;
                if !(full || old) {
                    break;
                }
                let take = lines.0.len().min(self.batch_size);
                let batch: Vec<String> = lines.0.drain(..take).collect();
                lines.1 = now_ms;
                self.outbox.push(0, batch.join("\n").into_bytes(), now_ms, metrics);
            }
        }
        self.outbox.on_tick(now_ms, callouts, metrics)
    }
}

/// One Splunk HEC event: time in seconds, the event as JSON.
fn hec(e: &Event) -> String {
    serde_json::json!({
        "time": e.time_ms as f64 / 1000.0,
        "source": "vigil",
        "sourcetype": "vigil:event",
        "event": e.json_value(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events::Kind;
    use crate::engine::ports::memory::{MemoryCallouts, MemoryMetrics};

    fn collector(format: CollectorFormat, batch_size: u32) -> Collector {
        let cfg: CollectorConfig = serde_json::from_value(serde_json::json!({
            "url": "http://splunk:8088/services/collector/event", "format": format_name(format),
            "headers": {"authorization": "Splunk t0k3n"}, "batch_size": batch_size, "flush_seconds": 2
        }))
        .unwrap();
        Collector::new(&cfg, None).unwrap()
    }

    fn format_name(f: CollectorFormat) -> &'static str {
        match f {
            CollectorFormat::Json => "json",
            CollectorFormat::Hec => "hec",
            CollectorFormat::Cef => "cef",
        }
    }

    fn event(i: u64) -> Event {
        Event::of_anomaly(1_763_700_000_000 + i, &format!("traffic anomaly: requests_per_s on /x scored {i}"))
    }

    #[test]
    fn events_go_in_batches_when_full_or_old() {
        let (c, calls, metrics) = (collector(CollectorFormat::Hec, 3), MemoryCallouts::default(), MemoryMetrics::default());
        for i in 0..4 {
            c.push(&event(i), 0, &metrics);
        }
        c.on_tick(100, &calls, &metrics);
        assert_eq!(calls.count(), 1, "a full batch goes at once");
        let (_, cluster, path, body) = calls.sent.borrow()[0].clone();
        assert_eq!((cluster.as_str(), path.as_str()), ("splunk", "/services/collector/event"));
        let lines: Vec<serde_json::Value> =
            String::from_utf8(body).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["sourcetype"], "vigil:event");
        assert_eq!(lines[0]["event"]["kind"], Kind::Anomaly.signature_id());
        assert_eq!(lines[0]["time"], 1_763_700_000.0);
        c.on_tick(1_000, &calls, &metrics);
        assert_eq!(calls.count(), 1, "the fourth waits for more company");
        c.on_tick(2_200, &calls, &metrics);
        assert_eq!(calls.count(), 2, "...or for flush_seconds");
        // A burst makes several full batches in one tick, not one per tick.
        for i in 0..9 {
            c.push(&event(i), 3_000, &metrics);
        }
        c.on_tick(3_100, &calls, &metrics);
        assert_eq!(calls.count(), 5);
    }

    #[test]
    fn a_worker_holds_a_bounded_number_of_events() {
        let (c, metrics) = (collector(CollectorFormat::Json, 1000), MemoryMetrics::default());
        for i in 0..(MAX_EVENTS as u64 + 5) {
            c.push(&event(i), 0, &metrics);
        }
        assert_eq!(metrics.get(Metric::EventsDropped), 5);
    }
}
