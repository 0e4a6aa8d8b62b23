//! Route templates: `/users/123/orders/9f86d081…` becomes
//! `/users/{id}/orders/{hex}`, so per-endpoint statistics count endpoints, not
//! URLs, and a client cannot mint unbounded "endpoints" by varying ids.

/// Segments kept; deeper paths end in `/…`.
const MAX_SEGMENTS: usize = 8;
/// Longest segment kept verbatim; longer ones are folded to `{long}`.
const MAX_SEGMENT_BYTES: usize = 48;

/// The route template of a `:path` value (query and fragment dropped).
pub fn template(path: &[u8]) -> String {
    template_and_object(path).0
}

/// The object a path names: its last id-like segment (`{id}`, `{uuid}`,
/// `{hex}`, `{token}`) as raw bytes, and its value when it is a decimal
/// number (for sequential walks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectId<'a> {
    pub raw: &'a [u8],
    pub number: Option<u64>,
}

/// The route template and the object the path names, in one pass.
pub fn template_and_object(path: &[u8]) -> (String, Option<ObjectId<'_>>) {
    let end = path.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(path.len());
    let path = path.get(..end).unwrap_or(path);
    let mut out = String::with_capacity(path.len().min(128));
    let mut segments = path.split(|&b| b == b'/').filter(|s| !s.is_empty());
    let mut object = None;
    for _ in 0..MAX_SEGMENTS {
        let Some(seg) = segments.next() else { break };
        out.push('/');
        let class = classify(seg);
        if class.starts_with('{') && !matches!(&*class, "{long}" | "{bytes}") {
            let number = if class == "{id}" && seg.len() <= 19 { std::str::from_utf8(seg).ok().and_then(|d| d.parse().ok()) } else { None };
            object = Some(ObjectId { raw: seg, number });
        }
        out.push_str(&class);
    }
    if segments.next().is_some() {
        out.push_str("/…");
    }
    if out.is_empty() {
        out.push('/');
    }
    (out, object)
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
    fn the_object_is_the_last_id_like_segment() {
        use super::{template_and_object, ObjectId};
        let (t, o) = template_and_object(b"/users/12/orders/345?x=1");
        assert_eq!(t, "/users/{id}/orders/{id}");
        assert_eq!(o, Some(ObjectId { raw: b"345", number: Some(345) }));
        let uuid = b"/orders/0b6e2a8c-3f0e-4b8e-9a7e-2d9c1f4e5a6b/items";
        assert_eq!(template_and_object(uuid).1.unwrap().number, None);
        assert_eq!(template_and_object(b"/api/orders").1, None);
        assert_eq!(template_and_object(b"/x/99999999999999999999999").1.unwrap().number, None, "too long for a number");
        assert_eq!(template_and_object(&[b'/', 0xff]).1, None);
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
