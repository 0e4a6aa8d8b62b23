//! Model calls over Envoy's `dispatch_http_call`, and reading their answers.

use super::abi;
use crate::engine::ports::{Call, Callouts};
use std::time::Duration;

/// A model's answer is small; a bigger one is cut here and then fails to parse.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Sends calls on behalf of the context that is running: the SDK routes the
/// answer to that context's `on_http_call_response` (the root's, from a tick).
pub struct HostCallouts;

/// Sends a waiting request's calls on the root context, and reads their
/// answers there, while the SDK still routes each answer to the stream.
///
/// Why: a call the stream owned would be cancelled by Envoy when the client
/// hangs up, and then never answered; the SDK would keep its token forever,
/// a few bytes per hang-up, without bound. Owned by the root, the call runs
/// to its answer or timeout, and the SDK then finds the stream gone and drops
/// the answer with its token. Current proxy-wasm-cpp-host versions already
/// dispatch on the root context; the explicit switch (two host calls each
/// way) keeps it so on a host that does not.
pub struct StreamCallouts {
    pub root: u32,
    pub stream: u32,
}

impl Callouts for StreamCallouts {
    fn send(&self, call: &Call) -> Result<u32, u32> {
        if abi::set_effective_context(self.root).is_err() {
            return HostCallouts.send(call);
        }
        let sent = HostCallouts.send(call);
        // Back to the stream for everything else this callback does.
        let _ = abi::set_effective_context(self.stream);
        sent
    }
}

/// `read_reply` for a call sent with `StreamCallouts`.
pub fn read_reply_for(c: &StreamCallouts, num_headers: usize, body_size: usize) -> Option<(u16, Vec<u8>)> {
    let _ = abi::set_effective_context(c.root);
    let reply = read_reply(num_headers, body_size);
    let _ = abi::set_effective_context(c.stream);
    reply
}

impl Callouts for HostCallouts {
    fn send(&self, call: &Call) -> Result<u32, u32> {
        let mut headers = vec![
            (":method", "POST"),
            (":path", call.path),
            (":authority", call.authority),
            ("content-type", "application/json"),
        ];
        if !call.request_id.is_empty() {
            headers.push(("x-request-id", call.request_id));
        }
        if let Some(version) = call.feature_version {
            headers.push(("x-vigil-feature-version", version));
        }
        headers.extend(call.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        proxy_wasm::hostcalls::dispatch_http_call(
            call.cluster,
            headers,
            Some(call.body),
            Vec::new(),
            Duration::from_millis(call.timeout_ms),
        )
        .map_err(|status| status as u32)
    }
}

/// The answer to a call, read in its `on_http_call_response`: status and
/// body, or `None` when the call failed without a response (reset, refused).
pub fn read_reply(num_headers: usize, body_size: usize) -> Option<(u16, Vec<u8>)> {
    if num_headers == 0 {
        return None;
    }
    let status = abi::header_value(abi::HTTP_CALL_RESPONSE_HEADERS, ":status")
        .ok()
        .flatten()
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())?;
    let body = if body_size == 0 {
        Vec::new()
    } else {
        abi::buffer(abi::HTTP_CALL_RESPONSE_BODY, body_size.min(MAX_ANSWER_BYTES)).unwrap_or_default()
    };
    Some((status, body))
}
