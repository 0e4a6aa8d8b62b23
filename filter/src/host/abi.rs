//! The proxy-wasm host calls Vigil makes, without panics.
//!
//! The SDK's `hostcalls` panic on any status they do not expect, and a panic
//! kills the worker's VM (every later request then fails). These wrappers
//! declare the same ABI imports and turn every status into a `Result`.

use std::ptr::{null, null_mut};

pub type Status = u32;
pub const OK: Status = 0;
pub const NOT_FOUND: Status = 1;
pub const CAS_MISMATCH: Status = 8;

pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
pub const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;

pub const HTTP_CALL_RESPONSE_BODY: u32 = 4;

pub const PLUGIN_CONFIGURATION: u32 = 7;

pub const COUNTER: u32 = 0;
pub const GAUGE: u32 = 1;
pub const HISTOGRAM: u32 = 2;

pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;
pub const LOG_CRITICAL: u32 = 5;

#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

/// A census of host calls (built with `--features census`; see
/// docs/performance.md): every wrapper below counts its kind, and the store
/// counts gets and sets by key shape. The root logs both per request every
/// 5 s, which is how the request path's host calls are budgeted.
#[cfg(feature = "census")]
pub mod census {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    thread_local! {
        static CALLS: RefCell<BTreeMap<&'static str, u64>> = RefCell::default();
        static KEYS: RefCell<BTreeMap<String, u64>> = RefCell::default();
    }

    pub fn call(kind: &'static str) {
        CALLS.with(|c| *c.borrow_mut().entry(kind).or_default() += 1);
    }

    /// A shared-data access, by key with its numbers as `#`.
    pub fn key(op: &str, key: &str) {
        let mut shape = String::with_capacity(op.len() + 1 + key.len());
        shape.push_str(op);
        shape.push(' ');
        for c in key.chars() {
            if !c.is_ascii_digit() {
                shape.push(c);
            } else if !shape.ends_with('#') {
                shape.push('#');
            }
        }
        KEYS.with(|k| *k.borrow_mut().entry(shape).or_default() += 1);
    }

    pub type Counts = Vec<(String, u64)>;

    /// The counts since the last call: calls, then keys.
    pub fn take() -> (Counts, Counts) {
        let calls = CALLS.with(|c| std::mem::take(&mut *c.borrow_mut())).into_iter().map(|(k, n)| (k.to_string(), n)).collect();
        let keys = KEYS.with(|k| std::mem::take(&mut *k.borrow_mut())).into_iter().collect();
        (calls, keys)
    }
}

macro_rules! tally {
    ($kind:literal) => {
        #[cfg(feature = "census")]
        census::call($kind);
    };
}

fn check(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(status)
    }
}

/// Takes ownership of a buffer the host allocated through the SDK's
/// `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes).
unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

pub fn log(level: u32, message: &str) {
    tally!("log");
    // Nothing sensible remains to be done if logging itself fails.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

pub fn now_nanos() -> Result<u64, Status> {
    tally!("now");
    let mut t = 0u64;
    check(unsafe { proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

pub fn set_tick_period_ms(period: u32) -> Result<(), Status> {
    tally!("tick");
    check(unsafe { proxy_set_tick_period_milliseconds(period) })
}

/// All headers of a map in one host call. Values stay bytes (Envoy forwards
/// non-UTF-8 values; the SDK's string variant would panic on them).
pub fn header_pairs(map_type: u32) -> Result<Vec<(String, Vec<u8>)>, Status> {
    tally!("pairs");
    let mut data = null_mut();
    let mut size = 0usize;
    check(unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) })?;
    Ok(unsafe { owned(data, size) }.map(|b| decode_pairs(&b)).unwrap_or_default())
}

/// One header's value, as bytes.
pub fn header_value(map_type: u32, name: &str) -> Result<Option<Vec<u8>>, Status> {
    tally!("header_value");
    let mut data = null_mut();
    let mut size = 0usize;
    match unsafe { proxy_get_header_map_value(map_type, name.as_ptr(), name.len(), &mut data, &mut size) } {
        OK => Ok(unsafe { owned(data, size) }),
        NOT_FOUND => Ok(None),
        status => Err(status),
    }
}

pub fn replace_header(map_type: u32, name: &str, value: &[u8]) -> Result<(), Status> {
    tally!("replace");
    check(unsafe { proxy_replace_header_map_value(map_type, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

pub fn remove_header(map_type: u32, name: &str) -> Result<(), Status> {
    tally!("remove");
    check(unsafe { proxy_remove_header_map_value(map_type, name.as_ptr(), name.len()) })
}

/// A property by path (segments joined by NUL, as the ABI wants).
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    tally!("property");
    let joined = path.join("\0");
    let mut data = null_mut();
    let mut size = 0usize;
    match unsafe { proxy_get_property(joined.as_ptr(), joined.len(), &mut data, &mut size) } {
        OK => Ok(unsafe { owned(data, size) }),
        NOT_FOUND => Ok(None),
        status => Err(status),
    }
}

pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), Status> {
    tally!("set_property");
    let joined = path.join("\0");
    check(unsafe { proxy_set_property(joined.as_ptr(), joined.len(), value.as_ptr(), value.len()) })
}

pub fn shared_get(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    tally!("shared_get");
    let mut data = null_mut();
    let mut size = 0usize;
    let mut cas = 0u32;
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) } {
        OK => Ok(Some((unsafe { owned(data, size) }.unwrap_or_default(), cas))),
        NOT_FOUND => Ok(None),
        status => Err(status),
    }
}

/// Writes a shared value; `Ok(false)` on a CAS mismatch.
pub fn shared_set(key: &str, value: &[u8], cas: u32) -> Result<bool, Status> {
    tally!("shared_set");
    match unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) } {
        OK => Ok(true),
        CAS_MISMATCH => Ok(false),
        status => Err(status),
    }
}

pub fn send_local_response(status: u16, details: &str, body: &[u8], headers: &[(&str, &[u8])]) -> Result<(), Status> {
    tally!("local_response");
    let map = encode_pairs(headers);
    check(unsafe {
        proxy_send_local_response(
            u32::from(status),
            details.as_ptr(),
            details.len(),
            if body.is_empty() { null() } else { body.as_ptr() },
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    })
}

/// The filter's configuration bytes (empty when none was given).
pub fn plugin_configuration() -> Result<Vec<u8>, Status> {
    let mut data = null_mut();
    let mut size = 0usize;
    match unsafe { proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, usize::MAX, &mut data, &mut size) } {
        OK => Ok(unsafe { owned(data, size) }.unwrap_or_default()),
        NOT_FOUND => Ok(Vec::new()),
        status => Err(status),
    }
}

/// Up to `max` bytes of a buffer (e.g. a model's answer).
pub fn buffer(buffer_type: u32, max: usize) -> Result<Vec<u8>, Status> {
    tally!("buffer");
    let mut data = null_mut();
    let mut size = 0usize;
    match unsafe { proxy_get_buffer_bytes(buffer_type, 0, max, &mut data, &mut size) } {
        OK => Ok(unsafe { owned(data, size) }.unwrap_or_default()),
        NOT_FOUND => Ok(Vec::new()),
        status => Err(status),
    }
}

/// Makes host calls act on another context of this VM (see callout.rs).
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    tally!("effective");
    check(unsafe { proxy_set_effective_context(context_id) })
}

/// Lets a paused request go on to the upstream.
pub fn resume_request() -> Result<(), Status> {
    check(unsafe { proxy_continue_stream(0) })
}

pub fn define_metric(metric_type: u32, name: &str) -> Result<u32, Status> {
    tally!("define");
    let mut id = 0u32;
    check(unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    tally!("increment");
    check(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    tally!("record");
    check(unsafe { proxy_record_metric(id, value) })
}

/// The ABI's header map encoding: count, (key size, value size) pairs, then
/// each key and value followed by a NUL.
fn encode_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let size = 4 + pairs.iter().map(|(k, v)| 10 + k.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Decodes the ABI's header map encoding; a truncated map yields the pairs
/// read so far rather than a panic.
fn decode_pairs(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let read_u32 = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let Some(count) = read_u32(0) else { return Vec::new() };
    let count = count.min(bytes.len() / 8);
    let mut pairs = Vec::with_capacity(count);
    let mut p = 4 + count * 8;
    for n in 0..count {
        let (Some(klen), Some(vlen)) = (read_u32(4 + n * 8), read_u32(8 + n * 8)) else { break };
        let (Some(k), Some(v)) = (bytes.get(p..p + klen), bytes.get(p + klen + 1..p + klen + 1 + vlen)) else {
            break;
        };
        pairs.push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
        p += klen + vlen + 2;
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_round_trip_and_truncation_is_harmless() {
        let pairs: [(&str, &[u8]); 2] = [(":path", b"/a"), ("x-bin", &[0xff, 0x00, 0x7f])];
        let bytes = encode_pairs(&pairs);
        let back = decode_pairs(&bytes);
        assert_eq!(back, vec![(":path".to_string(), b"/a".to_vec()), ("x-bin".to_string(), vec![0xff, 0x00, 0x7f])]);
        for cut in 0..bytes.len() {
            let partial = decode_pairs(&bytes[..cut]);
            assert!(partial.len() <= 2);
        }
        assert!(decode_pairs(&[0xff, 0xff, 0xff, 0xff]).is_empty());
    }
}
