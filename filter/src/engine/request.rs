//! What the engine may ask about a request, without knowing about the host.
//!
//! Like Kuadrant's `AttributeResolver`: the host side implements it over
//! Envoy's header map and properties; tests implement it over a plain list.

/// Read access to the request being scored.
pub trait RequestView {
    /// The value of a (lowercase) header, as raw bytes: Envoy passes non-UTF-8
    /// bytes through, so nothing here may assume text.
    fn header(&self, name: &str) -> Option<&[u8]>;

    /// The downstream peer address (`ip:port`). May cost a host call, so the
    /// engine asks only when an identity source needs it.
    fn peer_address(&self) -> Option<String>;
}

/// A request held as a list of headers: what the host hands over in one call,
/// and what tests build directly.
#[derive(Debug, Default, Clone)]
pub struct HeaderList {
    pub headers: Vec<(String, Vec<u8>)>,
    pub peer: Option<String>,
}

impl HeaderList {
    pub fn new(headers: Vec<(String, Vec<u8>)>) -> Self {
        Self { headers, peer: None }
    }

    /// Builds one from string pairs (tests and benchmarks).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self::new(pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect())
    }

    pub fn with_peer(mut self, peer: &str) -> Self {
        self.peer = Some(peer.to_string());
        self
    }
}

impl RequestView for HeaderList {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    fn peer_address(&self) -> Option<String> {
        self.peer.clone()
    }
}
