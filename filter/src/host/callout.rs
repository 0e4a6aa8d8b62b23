//! Model calls over Envoy's `dispatch_http_call`, and reading their answers.

use super::abi;
use crate::engine::ml::vector;
use crate::engine::ports::{Call, Callouts};
use std::time::Duration;

/// A model's answer is small; a bigger one is cut here and then fails to parse.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Sends calls on behalf of the context that is running: its
/// `on_http_call_response` gets the answer. (The SDK routes answers by the
/// context active at dispatch time; an HTTP stream's calls are cancelled by
/// Envoy when the stream ends, the root context's live on.)
pub struct HostCallouts;

impl Callouts for HostCallouts {
    fn send(&self, call: &Call) -> Result<u32, u32> {
        let headers = vec![
            (":method", "POST"),
            (":path", call.path),
            (":authority", call.authority),
            ("content-type", "application/json"),
            ("x-request-id", call.request_id),
            ("x-vigil-feature-version", vector::VERSION),
        ];
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
