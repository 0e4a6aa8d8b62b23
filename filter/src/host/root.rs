//! The root context: one per worker VM. It reads and validates the
//! configuration, creates the shared tables, and hands every HTTP stream the
//! engine it built.

use super::abi;
use super::callout::{self, HostCallouts};
use super::http::VigilHttp;
use super::store::{HostMetrics, HostStore};
use crate::engine::{config, pipeline::Engine};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::Cell;
use std::rc::Rc;

/// The tick: periodic work comes in small slices so no tick stalls the
/// worker's requests for long.
const TICK_MS: u32 = 100;
/// How often each VM hands its batched counters to Envoy, in ticks.
const METRICS_FLUSH_TICKS: u32 = 10;

/// What every HTTP context of this VM shares.
pub struct Shared {
    pub engine: Engine,
    pub metrics: HostMetrics,
    /// Requests this VM has seen (drives sampling).
    pub requests_seen: Cell<u64>,
    /// Tells this VM apart from the other workers' (for leases in shared data).
    pub instance: u64,
    /// The root context's id: model calls of waiting requests are owned by it.
    pub root_id: u32,
    /// The admin API's token digests, decoded once.
    pub admin_digests: Vec<[u8; 32]>,
}

pub struct VigilRoot {
    id: u32,
    shared: Option<Rc<Shared>>,
    ticks: u32,
}

impl VigilRoot {
    pub fn new(id: u32) -> Self {
        VigilRoot { id, shared: None, ticks: 0 }
    }
}

impl Context for VigilRoot {
    /// The answer to an `async` model call (sent from the tick).
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(shared) = &self.shared else { return };
        let reply = callout::read_reply(num_headers, body_size);
        let now_ms = abi::now_nanos().unwrap_or(0) / 1_000_000;
        let mut log = Vec::new();
        let reply_view = reply.as_ref().map(|(status, body)| (*status, body.as_slice()));
        if !shared.engine.async_model_reply(token, reply_view, now_ms, &HostStore, &shared.metrics, &mut log) {
            // Not a model call: an alert webhook's answer.
            let status = reply.as_ref().map(|(status, _)| *status);
            for line in shared.engine.notification_reply(token, status, now_ms, &shared.metrics).unwrap_or_default() {
                abi::log(abi::LOG_WARN, &line);
            }
        }
        for line in log {
            abi::log(abi::LOG_INFO, &line);
        }
    }
}

impl RootContext for VigilRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match abi::plugin_configuration() {
            Ok(b) => b,
            Err(status) => {
                abi::log(abi::LOG_CRITICAL, &format!("cannot read the filter configuration (status {status})"));
                return false;
            }
        };
        let config = match config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                // Envoy refuses the filter; this line is all the operator gets.
                abi::log(abi::LOG_CRITICAL, &format!("{e}"));
                return false;
            }
        };
        let metrics = match HostMetrics::define(&crate::engine::keys::Keys::labels(&config)) {
            Ok(m) => m,
            Err(status) => {
                abi::log(abi::LOG_CRITICAL, &format!("cannot define metrics (status {status})"));
                return false;
            }
        };
        let engine = Engine::new(config);
        match engine.start(&HostStore, &metrics) {
            Ok(created) if created > 0 => {
                abi::log(abi::LOG_INFO, &format!("created {created} slots in shared data"))
            }
            Ok(_) => {}
            // Not fatal: requests fail open on the rate signal and count it.
            Err(e) => abi::log(abi::LOG_ERROR, &format!("shared data unavailable at start-up: {e:?}")),
        }
        if engine.config.identity.hash_secret == config::DEFAULT_HASH_SECRET {
            abi::log(
                abi::LOG_WARN,
                "identity.hash_secret is the public default: identity hashes can be predicted and slots targeted; set a secret",
            );
        }
        abi::log(abi::LOG_INFO, &format!("configured, mode {:?}", engine.config.mode).to_lowercase());
        if let Some(t) = engine.traffic() {
            let ts = &engine.config.time_series_analysis;
            abi::log(
                abi::LOG_INFO,
                &format!(
                    "traffic analysis: anomaly threshold {:.3} (anomaly_sensitivity {}), baseline {} min, {} routes, drift after {} min",
                    t.threshold(),
                    ts.anomaly_sensitivity,
                    ts.analysis_window_minutes,
                    ts.max_routes,
                    ts.drift_minutes
                ),
            );
        }
        let keys = &engine.config.secondary_keys;
        if keys.enabled {
            let attribution = match (keys.attribution.enabled, engine.config.time_series_analysis.enable_traffic_analysis) {
                (true, true) => "on",
                (true, false) => "off (it needs time_series_analysis.enable_traffic_analysis)",
                (false, _) => "off",
            };
            abi::log(
                abi::LOG_INFO,
                &format!(
                    "secondary keys: [{}], {} s window, {} slots each; route anomaly attribution {attribution}",
                    crate::engine::keys::Keys::labels(&engine.config).join(", "),
                    keys.window_seconds,
                    keys.max_keys
                ),
            );
        }
        if let Some(ml) = engine.ml() {
            let c = &engine.config.ml_model_config;
            abi::log(
                abi::LOG_INFO,
                &format!(
                    "ml: mode {:?}, {}; timeout {} ms x {} attempts",
                    ml.mode(),
                    ml.describe(),
                    c.model_timeout_ms,
                    c.model_retry_count + 1
                )
                .to_lowercase(),
            );
        }
        metrics.flush();
        let _ = abi::set_tick_period_ms(TICK_MS);
        // Each worker configures its own VM on its own thread: the clock in
        // nanoseconds tells them apart.
        let instance = abi::now_nanos().unwrap_or(0) | 1;
        self.shared = Some(Rc::new(Shared {
            admin_digests: crate::engine::admin::token_digests(&engine.config),
            engine,
            metrics,
            requests_seen: Cell::new(0),
            instance,
            root_id: self.id,
        }));
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            let now_ms = abi::now_nanos().unwrap_or(0) / 1_000_000;
            let log = shared.engine.on_tick(now_ms, shared.instance, &HostStore, &shared.metrics, &HostCallouts);
            for line in log.warn {
                abi::log(abi::LOG_WARN, &line);
            }
            for line in log.events {
                abi::log(abi::LOG_INFO, &line);
            }
            self.ticks = self.ticks.wrapping_add(1);
            #[cfg(feature = "census")]
            if self.ticks % 50 == 0 {
                census(shared);
            }
            if self.ticks % METRICS_FLUSH_TICKS == 0 {
                shared.metrics.flush();
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // on_configure succeeded before any stream can exist.
        let shared = self.shared.clone()?;
        Some(Box::new(VigilHttp::new(shared, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Logs the host calls made since the last census, per request (see
/// `abi::census`). Only in a `census` build.
#[cfg(feature = "census")]
fn census(shared: &Shared) {
    let requests = shared.requests_seen.replace(0).max(1) as f64;
    let (calls, keys) = abi::census::take();
    let line = |list: Vec<(String, u64)>| {
        list.into_iter().map(|(k, n)| format!("{k}={:.3}", n as f64 / requests)).collect::<Vec<_>>().join(" ")
    };
    abi::log(abi::LOG_WARN, &format!("vigil-census requests={requests} calls_per_request: {}", line(calls)));
    abi::log(abi::LOG_WARN, &format!("vigil-census keys_per_request: {}", line(keys)));
}
