//! Who is making this request: the first configured source that yields an
//! identity wins. Identity values are attacker-controlled, so only a keyed
//! hash of them is kept; raw values never reach shared data, logs or headers.

use super::config::IdentitySource;
use super::hash::HashKey;
use super::request::RequestView;
use std::net::IpAddr;

/// Longest identity value hashed as is; longer values are refused so a
/// hostile header cannot buy CPU time. Envoy's own header limit is far above.
const MAX_IDENTITY_BYTES: usize = 1024;
/// Longest JWT accepted for claim extraction.
const MAX_JWT_BYTES: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    User,
    /// From an unverified JWT claim: good for grouping, proves nothing.
    Jwt,
    ApiKey,
    ClientIp,
    /// No source yielded anything.
    Anonymous,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::User => "user",
            IdentityKind::Jwt => "jwt",
            IdentityKind::ApiKey => "api_key",
            IdentityKind::ClientIp => "client_ip",
            IdentityKind::Anonymous => "anonymous",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub kind: IdentityKind,
    /// Keyed hash of kind and value; never 0 (0 marks a free slot).
    pub hash: u64,
}

impl Identity {
    /// The form used in logs, headers and events: kind and hash, no raw value.
    pub fn display(&self) -> String {
        let mut out = String::with_capacity(24);
        self.write_to(&mut out);
        out
    }

    /// Appends `display()`'s text.
    pub fn write_to(&self, out: &mut String) {
        out.push_str(self.kind.as_str());
        out.push(':');
        super::text::push_hex16(out, self.hash);
    }
}

pub fn resolve(sources: &[IdentitySource], key: &HashKey, req: &dyn RequestView) -> Identity {
    for source in sources {
        let found = match source {
            IdentitySource::Header { name } => {
                req.header(name).and_then(usable).map(|v| (IdentityKind::User, v.to_vec()))
            }
            IdentitySource::ApiKey { name } => {
                req.header(name).and_then(usable).map(|v| (IdentityKind::ApiKey, v.to_vec()))
            }
            IdentitySource::JwtClaim { header, claim } => {
                req.header(header).and_then(|v| jwt_claim(v, claim)).map(|v| (IdentityKind::Jwt, v))
            }
            IdentitySource::ClientIp { trusted_proxy_hops } => {
                client_ip(req, *trusted_proxy_hops).map(|ip| (IdentityKind::ClientIp, ip.to_string().into_bytes()))
            }
        };
        if let Some((kind, value)) = found {
            return Identity { kind, hash: hash_identity(key, kind, &value) };
        }
    }
    Identity { kind: IdentityKind::Anonymous, hash: hash_identity(key, IdentityKind::Anonymous, b"") }
}

pub fn hash_identity(key: &HashKey, kind: IdentityKind, value: &[u8]) -> u64 {
    key.hash(&[kind.as_str().as_bytes(), b"\x00", value]) | 1
}

fn usable(v: &[u8]) -> Option<&[u8]> {
    let v = v.trim_ascii();
    (!v.is_empty() && v.len() <= MAX_IDENTITY_BYTES).then_some(v)
}

/// The claim of a `Bearer` JWT, as bytes. Malformed tokens yield nothing.
fn jwt_claim(header_value: &[u8], claim: &str) -> Option<Vec<u8>> {
    let v = header_value.trim_ascii();
    let token = match v.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case(b"bearer ") => v.get(7..)?.trim_ascii(),
        _ => v,
    };
    if token.len() > MAX_JWT_BYTES {
        return None;
    }
    let mut parts = token.split(|&b| b == b'.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64url_decode(payload)?;
    let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&json).ok()?;
    let value = match claims.get(claim)? {
        serde_json::Value::String(s) => s.clone().into_bytes(),
        serde_json::Value::Number(n) => n.to_string().into_bytes(),
        _ => return None,
    };
    usable(&value).map(<[u8]>::to_vec)
}

/// Unpadded (or padded) base64url, as JWTs use.
fn base64url_decode(input: &[u8]) -> Option<Vec<u8>> {
    let input = match input.iter().position(|&b| b == b'=') {
        Some(i) => input.get(..i)?,
        None => input,
    };
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &c in input {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The client address. With 0 trusted hops it is Envoy's downstream address
/// (`source.address`). With `hops` proxies in front of Envoy it is read from
/// `x-forwarded-for` as Envoy forwards it with `use_remote_address: true`: the
/// last entry is the peer Envoy appended, the `hops` before it were appended
/// by the trusted proxies, so the client is the (hops+1)-th from the right.
/// Entries further left are client-supplied and ignored.
fn client_ip(req: &dyn RequestView, hops: u32) -> Option<IpAddr> {
    if hops > 0 {
        if let Some(xff) = req.header("x-forwarded-for") {
            let entries: Vec<&[u8]> = xff.split(|&b| b == b',').map(<[u8]>::trim_ascii).collect();
            let n = hops as usize;
            if entries.len() > n {
                if let Some(ip) = entries.get(entries.len() - 1 - n).and_then(|e| parse_ip(e)) {
                    return Some(ip);
                }
            }
        }
    }
    req.peer_address().and_then(|peer| parse_ip(peer.as_bytes()))
}

/// Parses `ip`, `ip:port`, `[v6]` or `[v6]:port`.
pub(crate) fn parse_ip(s: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(s).ok()?.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':').and_then(|(ip, _port)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::IdentityConfig;
    use crate::engine::request::HeaderList;

    fn key() -> HashKey {
        HashKey::from_secret(b"test")
    }

    fn resolve_default(req: &HeaderList) -> Identity {
        resolve(&IdentityConfig::default().sources, &key(), req)
    }

    // {"sub":"alice","iat":1} as base64url, no padding.
    const JWT_ALICE: &str = "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSIsImlhdCI6MX0.sig";

    #[test]
    fn sources_are_tried_in_order() {
        let both = HeaderList::from_pairs(&[("x-user-id", "u1"), ("x-api-key", "k1")]);
        assert_eq!(resolve_default(&both).kind, IdentityKind::User);
        let key_only = HeaderList::from_pairs(&[("x-api-key", "k1")]);
        assert_eq!(resolve_default(&key_only).kind, IdentityKind::ApiKey);
        let jwt = HeaderList::from_pairs(&[("authorization", JWT_ALICE), ("x-api-key", "k1")]);
        assert_eq!(resolve_default(&jwt).kind, IdentityKind::Jwt);
        let peer = HeaderList::default().with_peer("10.1.2.3:5555");
        assert_eq!(resolve_default(&peer).kind, IdentityKind::ClientIp);
        assert_eq!(resolve_default(&HeaderList::default()).kind, IdentityKind::Anonymous);
    }

    #[test]
    fn same_value_same_hash_and_kinds_do_not_collide() {
        let a = resolve_default(&HeaderList::from_pairs(&[("x-user-id", "alice")]));
        let b = resolve_default(&HeaderList::from_pairs(&[("x-user-id", "alice")]));
        let k = resolve_default(&HeaderList::from_pairs(&[("x-api-key", "alice")]));
        assert_eq!(a, b);
        assert_ne!(a.hash, k.hash);
        assert_ne!(a.hash & 1, 0);
        assert!(!a.display().contains("alice"));
    }

    #[test]
    fn jwt_claim_groups_by_subject_and_ignores_garbage() {
        let from_jwt = jwt_claim(JWT_ALICE.as_bytes(), "sub").unwrap();
        assert_eq!(from_jwt, b"alice");
        assert_eq!(jwt_claim(JWT_ALICE.as_bytes(), "iat").unwrap(), b"1");
        assert!(jwt_claim(JWT_ALICE.as_bytes(), "missing").is_none());
        assert!(jwt_claim(b"Bearer not-a-jwt", "sub").is_none());
        assert!(jwt_claim(b"Bearer a.!!!.c", "sub").is_none());
        assert!(jwt_claim(b"Bearer a.b.c.d", "sub").is_none());
        assert!(jwt_claim(&[0xff, 0xfe, b'.', 0x80, b'.', 0x00], "sub").is_none());
        let huge = format!("Bearer a.{}.c", "A".repeat(20_000));
        assert!(jwt_claim(huge.as_bytes(), "sub").is_none());
    }

    #[test]
    fn hostile_values_never_panic_and_fall_through() {
        let long = "u".repeat(MAX_IDENTITY_BYTES + 1);
        let req = HeaderList::from_pairs(&[("x-user-id", &long), ("x-api-key", "k")]);
        assert_eq!(resolve_default(&req).kind, IdentityKind::ApiKey);
        let mut bin = HeaderList::default();
        bin.headers.push(("x-user-id".into(), vec![0xff, 0x00, 0xc3]));
        assert_eq!(resolve_default(&bin).kind, IdentityKind::User);
        let blank = HeaderList::from_pairs(&[("x-user-id", "   ")]);
        assert_eq!(resolve_default(&blank).kind, IdentityKind::Anonymous);
    }

    #[test]
    fn client_ip_honours_trusted_hops() {
        let sources = [IdentitySource::ClientIp { trusted_proxy_hops: 1 }];
        // A spoofed entry, the client as the load balancer saw it, the load balancer as Envoy saw it.
        let req = HeaderList::from_pairs(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.1")]).with_peer("10.0.0.1:80");
        let via_xff = resolve(&sources, &key(), &req);
        let direct = HeaderList::default().with_peer("203.0.113.7:1234");
        let zero = [IdentitySource::ClientIp { trusted_proxy_hops: 0 }];
        assert_eq!(via_xff, resolve(&zero, &key(), &direct));
        // Too few entries, or garbage: fall back to the peer.
        let short = HeaderList::from_pairs(&[("x-forwarded-for", "junk")]).with_peer("10.0.0.1:80");
        let peer = resolve(&zero, &key(), &HeaderList::default().with_peer("10.0.0.1:1"));
        assert_eq!(resolve(&sources, &key(), &short), peer);
    }

    #[test]
    fn parses_address_forms() {
        assert_eq!(parse_ip(b"127.0.0.1:80"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(parse_ip(b"[::1]:80"), Some("::1".parse().unwrap()));
        assert_eq!(parse_ip(b"::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_ip(b"nonsense"), None);
    }
}
