//! Route templates: `/users/123/orders/9f86d081…` becomes
//! `/users/{id}/orders/{hex}`, so per-endpoint statistics count endpoints, not
//! URLs, and a client cannot mint unbounded "endpoints" by varying ids.

/// Segments kept; deeper paths end in `/…`.
const MAX_SEGMENTS: usize = 8;
/// Longest segment kept verbatim; longer ones are folded to `{long}`.
const MAX_SEGMENT_BYTES: usize = 48;

/// The route template of a `:path` value (query and fragment dropped).
pub fn template(path: &[u8]) -> String {
    let end = path.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(path.len());
    let path = path.get(..end).unwrap_or(path);
    let mut out = String::with_capacity(path.len().min(128));
    let mut segments = path.split(|&b| b == b'/').filter(|s| !s.is_empty());
    for _ in 0..MAX_SEGMENTS {
        let Some(seg) = segments.next() else { break };
        out.push('/');
        out.push_str(&classify(seg));
    }
    if segments.next().is_some() {
        out.push_str("/…");
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn classify(seg: &[u8]) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    if seg.iter().all(u8::is_ascii_digit) {
        return Cow::Borrowed("{id}");
    }
    if is_uuid(seg) {
        return Cow::Borrowed("{uuid}");
    }
    if seg.len() >= 16 && seg.iter().all(u8::is_ascii_hexdigit) {
        return Cow::Borrowed("{hex}");
    }
    if seg.len() > MAX_SEGMENT_BYTES {
        return Cow::Borrowed("{long}");
    }
    if looks_like_token(seg) {
        return Cow::Borrowed("{token}");
    }
    match std::str::from_utf8(seg) {
        Ok(s) if s.bytes().all(|b| b.is_ascii_graphic()) => Cow::Borrowed(s),
        _ => Cow::Borrowed("{bytes}"),
    }
}

fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Long mixed letters-and-digits segments are ids too (base62/base64 keys).
fn looks_like_token(s: &[u8]) -> bool {
    s.len() >= 20
        && s.iter().any(u8::is_ascii_digit)
        && s.iter().any(u8::is_ascii_alphabetic)
        && s.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::template;

    #[test]
    fn ids_collapse_to_one_endpoint() {
        assert_eq!(template(b"/users/123"), "/users/{id}");
        assert_eq!(template(b"/users/456?x=1"), "/users/{id}");
        assert_eq!(template(b"/orders/0b6e2a8c-3f0e-4b8e-9a7e-2d9c1f4e5a6b/items"), "/orders/{uuid}/items");
        assert_eq!(template(b"/blobs/9f86d081884c7d659a2feaa0c55ad015"), "/blobs/{hex}");
        assert_eq!(template(b"/k/AbC123xyz789QrS456tuv"), "/k/{token}");
    }

    #[test]
    fn words_stay_and_edges_are_bounded() {
        assert_eq!(template(b"/api/v1/health"), "/api/v1/health");
        assert_eq!(template(b""), "/");
        assert_eq!(template(b"/"), "/");
        assert_eq!(template(b"//a///b"), "/a/b");
        assert_eq!(template(b"/a/b/c/d/e/f/g/h/i/j"), "/a/b/c/d/e/f/g/h/…");
        assert_eq!(template(&[b'/', 0xff, 0xfe]), "/{bytes}");
        let long = format!("/{}", "x".repeat(500));
        assert_eq!(template(long.as_bytes()), "/{long}");
        assert!(template(&vec![b'/'; 100_000]).len() <= 1);
    }
}
