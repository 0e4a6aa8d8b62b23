//! The features table: what the engine knows about one request, and the
//! threat details that explain its score. Every detector reads features and
//! adds a signal; nothing else is shared between them.

use super::identity::Identity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Other,
}

impl Method {
    pub fn parse(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"PATCH" => Method::Patch,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

/// Per-request features. Response fields are filled when the response passes.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Envoy's `x-request-id` (sanitised), so replies, logs and events join up.
    pub request_id: String,
    pub identity: Identity,
    pub method: Method,
    pub route: String,
    /// The object the path names (its last id-like segment), keyed-hashed.
    pub object: Option<ObjectRef>,
    /// Declared request body size (`content-length`), 0 when absent.
    pub request_bytes: u64,
    pub time_ms: u64,
    /// Keyed hash of the session token (cookie or header), when configured.
    pub session: Option<u32>,
    /// Country (ISO alpha-2, packed) and ASN from the configured geo headers.
    pub country: Option<u16>,
    pub asn: Option<u32>,
    /// Keyed hash of the device header (the user agent by default), for the profile.
    pub device: Option<u32>,
    pub status: Option<u16>,
    /// From the request headers to the response headers.
    pub latency_us: Option<u64>,
    /// Vigil answered this request itself (enforced throttle or block).
    pub refused: bool,
    /// How much the decision lets this request teach its identity's profile
    /// (`profile::score::learning_weight`); its answer's status is learned at it.
    pub learn_weight: f32,
    /// How unlike its identity's history this request is, in [0, 1]; `None`
    /// when profiling is off or the profile is still cold.
    pub behavioral_score: Option<f64>,
    /// How anomalous the traffic of this request's route (or the whole
    /// listener, whichever is worse) is right now, in [0, 1]; `None` when
    /// traffic analysis is off or has no analysis yet.
    pub traffic_anomaly_score: Option<f64>,
    /// What the external models think of this request (`inline`, `cascade`)
    /// or of the identity's recent requests (`async`), in [0, 1]; `None` when
    /// no model answered.
    pub user_deviation_score: Option<f64>,
    /// Which model gave `user_deviation_score` (`None` for a stored `async`
    /// answer, whichever model gave it), for feedback's per-model accuracy.
    pub ml_model: Option<crate::engine::ml::Role>,
    /// The request's secondary-key values (keyed hashes), for learning at
    /// completion (`secondary_keys`); all zero when off.
    pub keys: crate::engine::keys::Subjects,
}

impl Features {
    /// A request as its headers tell it; the evidence (session, geo, size)
    /// and what detectors and the response add come later.
    pub fn new(request_id: String, identity: Identity, method: Method, route: String, time_ms: u64) -> Self {
        Features {
            request_id,
            identity,
            method,
            route,
            object: None,
            request_bytes: 0,
            time_ms,
            session: None,
            country: None,
            asn: None,
            device: None,
            status: None,
            latency_us: None,
            refused: false,
            learn_weight: 1.0,
            behavioral_score: None,
            traffic_anomaly_score: None,
            user_deviation_score: None,
            ml_model: None,
            keys: crate::engine::keys::Subjects::default(),
        }
    }
}

/// An object a request names: a keyed hash of its id (never the id), and
/// the id's value when it is a number, for sequential walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectRef {
    pub hash: u32,
    pub number: Option<u64>,
}

/// One detector's opinion: a score in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signal {
    pub name: &'static str,
    pub score: f64,
    /// How sure the detector is, in [0, 1]: scales its weight in the
    /// ensemble and narrows the risk interval (see `scoring`).
    pub confidence: f64,
    pub combine: Combine,
}

/// How a signal enters the risk score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Combine {
    /// A local rule (the rate ceiling): the risk is at least this score.
    Strongest,
    /// A detector in the weighted ensemble (`ml_scoring_weights`); it counts
    /// only from `gate` up (e.g. `deviation_threshold`).
    Weighted { weight: f64, gate: f64 },
    /// A model's answer, a probability of anomaly: it counts from `gate` up
    /// and not at all below (a model under 0.5 leans to "ordinary"; unlike a
    /// detector's deviation, a little under is not a little anomalous), and
    /// well below it, it speaks for "ordinary" as a detector does.
    Answer { weight: f64, gate: f64 },
    /// Like `Weighted`, but it can only add evidence: its quiet means it
    /// found nothing, not that the request is ordinary (a newcomer against
    /// its population), so it never damps the others.
    Support { weight: f64, gate: f64 },
    /// Like `Weighted`, but about the request's surroundings (the traffic of
    /// its route), not about its identity: on its own it can flag a request,
    /// never refuse it.
    Context { weight: f64, gate: f64 },
}

impl Signal {
    pub fn local(name: &'static str, score: f64) -> Self {
        Signal { name, score, confidence: 1.0, combine: Combine::Strongest }
    }
}

/// Why a signal scored what it did, for logs, headers and events.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreatDetail {
    pub signal: &'static str,
    pub reason: String,
}
