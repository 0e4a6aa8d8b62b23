//! One HTTP stream: read the request once, run the engine, tell the upstream
//! and the access log, and enforce the decision when configured to.

use super::abi;
use super::callout::{self, StreamCallouts};
use super::root::Shared;
use super::store::HostStore;
use crate::engine::admin;
use crate::engine::config::LogRecord;
use crate::engine::decision::Decision;
use crate::engine::features::Features;
use crate::engine::ml::Exchange;
use crate::engine::pipeline::Verdict;
use crate::engine::ports::{Metric, MetricsSink};
use crate::engine::report;
use crate::engine::request::{HeaderList, RequestView};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

/// One request in this many has its processing time recorded.
const PROCESSING_TIME_SAMPLE: u64 = 8;

pub struct VigilHttp {
    shared: Rc<Shared>,
    /// The request's features, kept for the response when a detector wants them.
    features: Option<Features>,
    /// When the request headers arrived (ns), for the response latency.
    started_ns: u64,
    /// When the response headers came (ms): the stream's end for the
    /// detectors, without another clock read at `on_log`.
    responded_ms: Option<u64>,
    /// A request paused for the models: its verdict so far, their calls, and
    /// whether the client sent its own `x-vigil-*` headers.
    waiting: Option<(Verdict, Exchange, bool)>,
    context_id: u32,
    /// One request in PROCESSING_TIME_SAMPLE feeds the sampled histograms.
    sampled: bool,
}

impl VigilHttp {
    pub fn new(shared: Rc<Shared>, context_id: u32) -> Self {
        Self { shared, features: None, started_ns: 0, responded_ms: None, waiting: None, context_id, sampled: false }
    }

    fn callouts(&self) -> StreamCallouts {
        StreamCallouts { root: self.shared.root_id, stream: self.context_id }
    }

    /// Tells the verdict (access-log record, upstream headers) and enforces
    /// it. `Pause` means a local reply was sent.
    fn finish(&mut self, verdict: Verdict, client_headers: bool) -> Action {
        let wants_record = match self.shared.engine.config.log_record {
            LogRecord::All => true,
            LogRecord::Flagged => verdict.decision != Decision::Allow,
            LogRecord::Off => false,
        };
        if wants_record {
            // The access log reads this as %FILTER_STATE(wasm.vigil:PLAIN)%.
            let _ = abi::set_property(&["vigil"], report::log_record(&verdict, self.shared.engine.config.ml_model_config.export_features).as_bytes());
        }
        annotate(client_headers, &verdict, &self.shared);
        // The request's own time: no extra host call for the clock.
        let now_ms = verdict.features.time_ms;
        // Sampled like the processing time, here so that requests that waited
        // for a model are in it too.
        if self.sampled {
            self.shared.metrics.record(Metric::RiskScore, (verdict.risk * 1000.0).round() as u64);
        }
        log_lines(self.shared.engine.after_decision(&verdict, now_ms, &HostStore, &self.shared.metrics));
        let action = if verdict.enforced { reply(&verdict) } else { Action::Continue };
        if self.shared.engine.wants_response_features() {
            self.features = Some(verdict.features);
        }
        action
    }
}

impl VigilHttp {
    /// Serves the admin API to a request under `admin.path_prefix` that
    /// arrived on the admin listener (`admin.port`). The port is read only
    /// for requests under the prefix: nothing is paid on ordinary ones.
    fn admin_call(&self, req: &HostRequest, now_ms: u64) -> Option<Action> {
        let engine = &self.shared.engine;
        let cfg = &engine.config.admin;
        let port = cfg.port.filter(|_| cfg.enabled())?;
        let path = std::str::from_utf8(req.0.header(":path")?).ok()?;
        let rest = path.strip_prefix(cfg.path_prefix.as_str())?;
        if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')) {
            return None;
        }
        let local = abi::property(&["destination", "port"]).ok()??;
        let local_port = match <[u8; 8]>::try_from(local.as_slice()) {
            Ok(b) => i64::from_le_bytes(b),
            Err(_) => std::str::from_utf8(&local).ok()?.trim().parse().ok()?,
        };
        if local_port != i64::from(port) {
            // The public listener: not an admin call, an ordinary request.
            return None;
        }
        let method = req.0.header(":method").and_then(|m| std::str::from_utf8(m).ok()).unwrap_or("");
        let call = admin::Call { method, path, authorization: req.0.header("authorization") };
        let reply = admin::serve(engine, &self.shared.admin_digests, &call, now_ms, &HostStore, &self.shared.metrics);
        log_lines(reply.log);
        let mut headers: Vec<(&str, &[u8])> = vec![("content-type", b"application/json"), ("cache-control", b"no-store")];
        if reply.status == 401 {
            headers.push(("www-authenticate", b"Bearer realm=\"vigil-admin\""));
        }
        match abi::send_local_response(reply.status, "vigil_admin", reply.body.as_bytes(), &headers) {
            Ok(()) => Some(Action::Pause),
            Err(status) => {
                abi::log(abi::LOG_ERROR, &format!("admin reply failed (status {status})"));
                Some(Action::Continue)
            }
        }
    }
}

fn log_lines(lines: Vec<String>) {
    for line in lines {
        abi::log(abi::LOG_INFO, &line);
    }
}

/// The request as the engine sees it: the header list fetched in one host
/// call, and the peer address fetched only if an identity source or a
/// secondary key asks (once, however many ask).
struct HostRequest(HeaderList, std::cell::OnceCell<Option<String>>);

impl RequestView for HostRequest {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.header(name)
    }

    fn peer_address(&self) -> Option<String> {
        self.1
            .get_or_init(|| {
                let bytes = abi::property(&["source", "address"]).ok()??;
                String::from_utf8(bytes).ok()
            })
            .clone()
    }
}

impl Context for VigilHttp {
    /// A model answered (or failed) for the paused request.
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some((mut verdict, mut exchange, client_headers)) = self.waiting.take() else { return };
        let callouts = self.callouts();
        let reply = callout::read_reply_for(&callouts, num_headers, body_size);
        let now_ms = abi::now_nanos().unwrap_or(0) / 1_000_000;
        let engine = &self.shared.engine;
        let metrics = &self.shared.metrics;
        let mut log = Vec::new();
        let reply_view = reply.as_ref().map(|(status, body)| (*status, body.as_slice()));
        engine.model_reply(&mut exchange, token, reply_view, now_ms, &callouts, metrics, &mut log);
        log_lines(log);
        if !exchange.settled() {
            self.waiting = Some((verdict, exchange, client_headers));
            return;
        }
        engine.conclude_models(&exchange, &mut verdict, metrics);
        engine.decide(&mut verdict, metrics);
        // Every path ends in a local reply (Pause) or the request going on.
        if self.finish(verdict, client_headers) == Action::Continue {
            if let Err(status) = abi::resume_request() {
                abi::log(abi::LOG_ERROR, &format!("cannot resume the request (status {status})"));
            }
        }
    }
}

impl HttpContext for VigilHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let started = abi::now_nanos().unwrap_or(0);
        let headers = match abi::header_pairs(abi::REQUEST_HEADERS) {
            Ok(h) => h,
            Err(status) => {
                abi::log(abi::LOG_WARN, &format!("cannot read request headers (status {status}); passing"));
                return Action::Continue;
            }
        };
        let req = HostRequest(HeaderList::new(headers), std::cell::OnceCell::new());
        if let Some(action) = self.admin_call(&req, started / 1_000_000) {
            return action;
        }
        let client_headers = report::HEADERS.iter().any(|name| req.0.header(name).is_some());
        let engine = &self.shared.engine;
        let now_ms = started / 1_000_000;
        self.started_ns = started;
        let n = self.shared.requests_seen.get().wrapping_add(1);
        self.shared.requests_seen.set(n);
        self.sampled = n % PROCESSING_TIME_SAMPLE == 1;
        let mut log = Vec::new();
        let mut verdict = engine.assess(&req, now_ms, &HostStore, &self.shared.metrics, &mut log);
        if let Some(exchange) = engine.ask_models(&mut verdict, now_ms, &self.callouts(), &self.shared.metrics, &mut log) {
            log_lines(log);
            self.waiting = Some((verdict, exchange, client_headers));
            return Action::Pause;
        }
        log_lines(log);
        engine.decide(&mut verdict, &self.shared.metrics);
        let action = self.finish(verdict, client_headers);

        // Timing costs two host calls, so one request in PROCESSING_TIME_SAMPLE
        // is timed. (A request that waited for a model is not: its time is the model's.)
        if self.sampled {
            if let Ok(done) = abi::now_nanos() {
                self.shared.metrics.record_processing_time(done.saturating_sub(started) / 1_000);
            }
        }
        action
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some(features) = self.features.as_mut() {
            let status = abi::header_value(abi::RESPONSE_HEADERS, ":status")
                .ok()
                .flatten()
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok());
            let now_ns = abi::now_nanos().unwrap_or(0);
            self.responded_ms = Some(now_ns / 1_000_000);
            let latency_us = now_ns.saturating_sub(self.started_ns) / 1_000;
            self.shared.engine.on_response(features, status, latency_us);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some((_, exchange, _)) = self.waiting.take() {
            self.shared.engine.abandon_models(&exchange, &self.shared.metrics);
        }
        // Every stream ends here, answered or reset: detectors learn the outcome.
        if let Some(features) = self.features.take() {
            let now_ms = self.responded_ms.unwrap_or_else(|| abi::now_nanos().unwrap_or(0) / 1_000_000);
            self.shared.engine.on_complete(&features, now_ms);
        }
    }
}

/// Puts Vigil's headers on the request (for the upstream, and for the access
/// log, which reads them even when the request is answered locally). Copies a
/// client sent are replaced or removed, so the upstream can trust what it sees.
fn annotate(client_headers: bool, v: &Verdict, shared: &Shared) {
    if shared.engine.config.upstream_headers {
        let _ = abi::replace_header(abi::REQUEST_HEADERS, report::HEADER_RISK, report::risk(v).as_bytes());
        let _ = abi::replace_header(abi::REQUEST_HEADERS, report::HEADER_DECISION, v.decision.as_str().as_bytes());
        let _ = abi::replace_header(abi::REQUEST_HEADERS, report::HEADER_SIGNALS, report::signals(v).as_bytes());
    } else if client_headers {
        for name in report::HEADERS {
            let _ = abi::remove_header(abi::REQUEST_HEADERS, name);
        }
    }
}

/// Answers locally with 429 or 403 and a JSON body naming the request id.
fn reply(v: &Verdict) -> Action {
    let status = v.decision.status().unwrap_or(403);
    let retry_after = v.retry_after_s.map(|s| s.to_string());
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("content-type", b"application/json"),
        (report::HEADER_DECISION, v.decision.as_str().as_bytes()),
        ("x-request-id", v.features.request_id.as_bytes()),
    ];
    if let (429, Some(s)) = (status, retry_after.as_deref()) {
        headers.push(("retry-after", s.as_bytes()));
    }
    let details = if status == 429 { "vigil_throttled" } else { "vigil_blocked" };
    match abi::send_local_response(status, details, report::reply_body(v).as_bytes(), &headers) {
        Ok(()) => Action::Pause,
        Err(status) => {
            abi::log(abi::LOG_ERROR, &format!("local reply failed (status {status}); passing the request"));
            Action::Continue
        }
    }
}
