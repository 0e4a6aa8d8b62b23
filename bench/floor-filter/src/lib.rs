//! The contract floor: a filter that makes exactly the host calls Vigil's
//! contracts oblige it to make on every request, and does no other work.
//! Envoy with it, against the empty filter, is the most any implementation of
//! those contracts could keep; Vigil against it is what is still ours to cut.
//!
//! The plugin configuration names the contracts in force, comma-separated:
//! - `rate`: an exact count of the identity's requests across workers
//!   (DESIGN.md, foundation issue). One compare-and-swap in shared data per
//!   request: a read and a conditional write of the identity's slot, with the
//!   request's time from the clock.
//! - `headers`: `x-vigil-risk-score`, `x-vigil-decision` and
//!   `x-vigil-signals` on the request sent upstream: three header writes.
//! - `response`: the traffic detector's status and latency per request: the
//!   response's `:status` and a second clock read.
//!
//! The identity is read with the request's headers in one call, as Vigil does.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::time::UNIX_EPOCH;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot { contracts: Contracts::default() }) });
}}

/// Slots in the rate table: identities share them modulo this, as a bounded table would.
const SLOTS: u64 = 16_384;
/// Compare-and-swap attempts before giving up (Vigil's own bound).
const CAS_ATTEMPTS: u32 = 8;

#[derive(Clone, Copy, Default)]
struct Contracts {
    rate: bool,
    headers: bool,
    response: bool,
}

struct FloorRoot {
    contracts: Contracts,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "rate" => self.contracts.rate = true,
                "headers" => self.contracts.headers = true,
                "response" => self.contracts.response = true,
                other => {
                    proxy_wasm::hostcalls::log(LogLevel::Error, &format!("floor filter: unknown contract {other:?}")).ok();
                    return false;
                }
            }
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorHttp { contracts: self.contracts, started_ns: 0 }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FloorHttp {
    contracts: Contracts,
    started_ns: u64,
}

impl Context for FloorHttp {}

fn now_ns() -> u64 {
    hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as u64)
}

/// FNV-1a: enough to spread identities over the slots.
fn slot_of(identity: &str) -> u64 {
    identity.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)) % SLOTS
}

/// One more request for the slot: read, add one, write back only if nobody wrote in between.
fn count(slot: u64) {
    let key = format!("vigil-floor/rate/{slot}");
    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = hostcalls::get_shared_data(&key).unwrap_or((None, None));
        let n = value.and_then(|v| v.get(..8).and_then(|b| b.try_into().ok())).map_or(0, u64::from_le_bytes);
        let mut next = [0u8; 16];
        next[..8].copy_from_slice(&(n + 1).to_le_bytes());
        if hostcalls::set_shared_data(&key, Some(&next), cas).is_ok() {
            return;
        }
    }
}

impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let c = self.contracts;
        if !(c.rate || c.headers || c.response) {
            return Action::Continue;
        }
        self.started_ns = now_ns();
        let headers = hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        if c.rate {
            let identity = headers.iter().find(|(k, _)| k == "x-user-id").map_or("", |(_, v)| v.as_str());
            count(slot_of(identity));
        }
        if c.headers {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-vigil-risk-score", Some("0.000"));
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-vigil-decision", Some("allow"));
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                "x-vigil-signals",
                Some("rate=0.000;behavior=0.000;traffic=0.000;rate_count=1;identity=user:0000000000000000"),
            );
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.contracts.response {
            let status = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status").ok().flatten();
            let latency_ns = now_ns().saturating_sub(self.started_ns);
            std::hint::black_box((status, latency_ns));
        }
        Action::Continue
    }
}
