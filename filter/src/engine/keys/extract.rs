//! A request's value for each configured key, as a keyed hash: never the raw
//! value. Header values are attacker-controlled: empty ones are no value,
//! long ones are hashed on their first `MAX_VALUE_BYTES` (plus their length),
//! bytes need not be UTF-8, and nothing here allocates.

use super::config::KeySource;
use crate::engine::config::GeoConfig;
use crate::engine::hash::HashKey;
use crate::engine::identity::{self, Identity, IdentityKind};
use crate::engine::request::RequestView;
use std::net::IpAddr;

/// Longest header value hashed whole.
const MAX_VALUE_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Extractor {
    Client { v4: u8, v6: u8, hops: u32 },
    Asn { header: String },
    Country { header: String },
    Header { name: String },
    IdentityAddresses { v4: u8, v6: u8, hops: u32 },
}

/// One request's value of one key: the key value's hash (never 0), what it
/// counts as a member (the identity's hash; for `identity_addresses` the
/// address's), and whether it is an IPv6 prefix (for the threat detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value {
    pub key: u64,
    pub member: u64,
    pub v6: bool,
}

impl Extractor {
    pub fn new(source: &KeySource, geo: &GeoConfig) -> Self {
        match source {
            KeySource::ClientIp { prefix_v4, prefix_v6, trusted_proxy_hops, .. } => {
                Extractor::Client { v4: *prefix_v4, v6: *prefix_v6, hops: *trusted_proxy_hops }
            }
            KeySource::Asn { header, .. } => {
                Extractor::Asn { header: header.clone().or_else(|| geo.asn_header.clone()).unwrap_or_default() }
            }
            KeySource::Country { header, .. } => {
                Extractor::Country { header: header.clone().or_else(|| geo.country_header.clone()).unwrap_or_default() }
            }
            KeySource::Header { name, .. } => Extractor::Header { name: name.clone() },
            KeySource::IdentityAddresses { prefix_v4, prefix_v6, trusted_proxy_hops, .. } => {
                Extractor::IdentityAddresses { v4: *prefix_v4, v6: *prefix_v6, hops: *trusted_proxy_hops }
            }
        }
    }

    /// Whether the members counted are addresses rather than identities.
    pub fn spread_only(&self) -> bool {
        matches!(self, Extractor::IdentityAddresses { .. })
    }

    /// The request's value of this key (`tag` tells the configured keys apart).
    pub fn value(&self, tag: u8, key: &HashKey, req: &dyn RequestView, identity: &Identity) -> Option<Value> {
        let member = if identity.kind == IdentityKind::Anonymous { 0 } else { identity.hash };
        let h = |parts: &[&[u8]]| {
            let mut all: [&[u8]; 4] = [b"keys\x00", &[tag], &[], &[]];
            for (slot, p) in all.iter_mut().skip(2).zip(parts) {
                *slot = p;
            }
            key.hash(&all) | 1
        };
        match self {
            Extractor::Client { v4, v6, hops } => {
                let (bytes, len, is_v6) = prefix(client_ip(req, *hops)?, *v4, *v6);
                Some(Value { key: h(&[bytes.get(..len)?, &[len as u8]]), member, v6: is_v6 })
            }
            Extractor::IdentityAddresses { v4, v6, hops } => {
                if member == 0 {
                    return None;
                }
                let (bytes, len, is_v6) = prefix(client_ip(req, *hops)?, *v4, *v6);
                let address = h(&[bytes.get(..len)?, b"addr"]);
                Some(Value { key: h(&[&identity.hash.to_le_bytes()]), member: address, v6: is_v6 })
            }
            Extractor::Asn { header } => {
                let asn = parse_asn(req.header(header)?)?;
                Some(Value { key: h(&[&asn.to_le_bytes()]), member, v6: false })
            }
            Extractor::Country { header } => {
                let v = req.header(header)?.trim_ascii();
                let code: [u8; 2] = v.try_into().ok()?;
                if !code.iter().all(u8::is_ascii_alphabetic) {
                    return None;
                }
                Some(Value { key: h(&[&code.map(|b| b.to_ascii_uppercase())]), member, v6: false })
            }
            Extractor::Header { name } => {
                let v = req.header(name)?.trim_ascii();
                if v.is_empty() {
                    return None;
                }
                let head = v.get(..MAX_VALUE_BYTES).unwrap_or(v);
                Some(Value { key: h(&[head, &(v.len() as u64).to_le_bytes()]), member, v6: false })
            }
        }
    }
}

/// The address masked to its prefix: 16 bytes, how many of them count, and
/// whether it is IPv6 (an IPv4-mapped IPv6 address counts as IPv4).
fn prefix(ip: IpAddr, v4: u8, v6: u8) -> ([u8; 17], usize, bool) {
    let mut out = [0u8; 17];
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let bits = u32::from(a) & u32::MAX.checked_shl(32 - u32::from(v4.min(32))).unwrap_or(0);
            if let Some(dst) = out.get_mut(..4) {
                dst.copy_from_slice(&bits.to_be_bytes());
            }
            if let Some(p) = out.get_mut(4) {
                *p = v4;
            }
            (out, 5, false)
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a) & u128::MAX.checked_shl(128 - u32::from(v6.min(128))).unwrap_or(0);
            if let Some(dst) = out.get_mut(..16) {
                dst.copy_from_slice(&bits.to_be_bytes());
            }
            if let Some(p) = out.get_mut(16) {
                *p = v6;
            }
            (out, 17, true)
        }
    }
}

/// The client address as the `client_ip` identity source finds it (the
/// `hops + 1`-th `x-forwarded-for` entry from the right, else the peer),
/// without allocating.
fn client_ip(req: &dyn RequestView, hops: u32) -> Option<IpAddr> {
    if hops > 0 {
        if let Some(xff) = req.header("x-forwarded-for") {
            let entry = xff.rsplit(|&b| b == b',').nth(hops as usize).map(<[u8]>::trim_ascii);
            if let Some(ip) = entry.and_then(identity::parse_ip) {
                return Some(ip);
            }
        }
    }
    req.peer_address().and_then(|peer| identity::parse_ip(peer.as_bytes()))
}

/// An ASN as a number, with or without the `AS` prefix.
fn parse_asn(raw: &[u8]) -> Option<u32> {
    let raw = raw.trim_ascii();
    let digits = raw.strip_prefix(b"AS").or_else(|| raw.strip_prefix(b"as")).unwrap_or(raw);
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::request::HeaderList;

    fn user(name: &str) -> Identity {
        identity::resolve(&crate::engine::config::IdentityConfig::default().sources, &HashKey::new(1, 2), &HeaderList::from_pairs(&[("x-user-id", name)]))
    }

    fn client(v4: u8, hops: u32) -> Extractor {
        Extractor::Client { v4, v6: 64, hops }
    }

    fn value(e: &Extractor, req: &HeaderList) -> Option<Value> {
        e.value(0, &HashKey::new(1, 2), req, &user("u"))
    }

    #[test]
    fn client_prefixes_group_a_subnet_and_honour_trusted_hops() {
        let at = |xff: &str| HeaderList::from_pairs(&[("x-forwarded-for", xff)]).with_peer("127.0.0.1:9");
        let e = client(24, 1);
        let a = value(&e, &at("203.0.113.7, 127.0.0.1")).unwrap();
        let b = value(&e, &at("6.6.6.6, 203.0.113.200, 127.0.0.1")).unwrap();
        let c = value(&e, &at("203.0.114.7, 127.0.0.1")).unwrap();
        assert_eq!(a.key, b.key, "same /24, and the spoofed entry is ignored");
        assert_ne!(a.key, c.key);
        assert_ne!(value(&client(32, 1), &at("203.0.113.7, 127.0.0.1")), value(&client(32, 1), &at("203.0.113.8, 127.0.0.1")));
        // Too few entries: the peer.
        let peer = value(&client(24, 0), &HeaderList::default().with_peer("127.0.0.1:1")).unwrap();
        assert_eq!(value(&e, &at("junk")).unwrap().key, peer.key);
        // IPv6 /64, and an IPv4-mapped address counts as IPv4.
        let v6 = |ip: &str| value(&e, &at(&format!("{ip}, 127.0.0.1"))).unwrap();
        assert_eq!(v6("2001:db8:1:2::1").key, v6("2001:db8:1:2:ffff::9").key);
        assert_ne!(v6("2001:db8:1:2::1").key, v6("2001:db8:1:3::1").key);
        assert!(v6("2001:db8:1:2::1").v6);
        assert_eq!(v6("::ffff:203.0.113.9").key, a.key);
    }

    #[test]
    fn hostile_header_values_never_panic() {
        let ua = Extractor::Header { name: "user-agent".into() };
        let big = "A".repeat(8 * 1024);
        let mut bin = HeaderList::default();
        bin.headers.push(("user-agent".into(), vec![0xff, 0xfe, 0x00, 0xc3, 0x28]));
        assert!(value(&ua, &bin).is_some());
        assert!(value(&ua, &HeaderList::from_pairs(&[("user-agent", &big)])).is_some());
        assert_ne!(
            value(&ua, &HeaderList::from_pairs(&[("user-agent", &big)])),
            value(&ua, &HeaderList::from_pairs(&[("user-agent", &format!("{big}B"))])),
            "the length tells long values apart"
        );
        assert!(value(&ua, &HeaderList::from_pairs(&[("user-agent", "   ")])).is_none());
        assert!(value(&ua, &HeaderList::default()).is_none());
        let asn = Extractor::Asn { header: "x-asn".into() };
        for bad in ["", "AS", "ASx", "99999999999999999999", "0", "-1", "\u{ff}"] {
            assert!(value(&asn, &HeaderList::from_pairs(&[("x-asn", bad)])).is_none(), "{bad}");
        }
        assert_eq!(value(&asn, &HeaderList::from_pairs(&[("x-asn", "AS3320")])), value(&asn, &HeaderList::from_pairs(&[("x-asn", "3320")])));
        let country = Extractor::Country { header: "x-c".into() };
        assert_eq!(value(&country, &HeaderList::from_pairs(&[("x-c", "de")])), value(&country, &HeaderList::from_pairs(&[("x-c", " DE ")])));
        assert!(value(&country, &HeaderList::from_pairs(&[("x-c", "DEU")])).is_none());
        assert!(value(&country, &HeaderList::from_pairs(&[("x-c", "1!")])).is_none());
        let mut xff = HeaderList::default().with_peer("garbage");
        xff.headers.push(("x-forwarded-for".into(), vec![0xff; 8192]));
        assert!(value(&client(24, 3), &xff).is_none());
    }

    #[test]
    fn identity_addresses_key_the_identity_and_count_its_addresses() {
        let e = Extractor::IdentityAddresses { v4: 32, v6: 64, hops: 0 };
        let at = |peer: &str| HeaderList::default().with_peer(peer);
        let a = e.value(0, &HashKey::new(1, 2), &at("10.0.0.1:1"), &user("shared")).unwrap();
        let b = e.value(0, &HashKey::new(1, 2), &at("10.0.0.2:1"), &user("shared")).unwrap();
        assert_eq!(a.key, b.key);
        assert_ne!(a.member, b.member);
        let anon = identity::resolve(&[], &HashKey::new(1, 2), &HeaderList::default());
        assert!(e.value(0, &HashKey::new(1, 2), &at("10.0.0.1:1"), &anon).is_none());
    }
}
