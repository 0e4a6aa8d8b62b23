//! `secondary_keys`: which keys besides the identity Vigil aggregates
//! (client address prefix, ASN, country, a fingerprint header), and how route
//! anomalies are attributed to the identities and keys that drive them.
//! Off by default. Validated at load, every error naming its field.

use crate::engine::config::{in_range, is_header_name, unit_interval, Config, ConfigError};
use serde::Deserialize;

/// Keys configured at most (each is one slot table and one metric label).
pub const MAX_KEYS: usize = 8;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecondaryKeys {
    pub enabled: bool,
    /// The keys, each aggregated in a table of its own.
    pub keys: Vec<KeySource>,
    /// Slots per key's table in shared data: the memory bound, whatever the
    /// number of key values seen (about 150 bytes each).
    pub max_keys: u32,
    /// The short window a key value's activity is counted over: counts decay
    /// with this time constant, distinct identities are counted over the last
    /// one to two half-windows.
    pub window_seconds: u32,
    /// The population baseline's memory (every key of a kind, one sample per
    /// key value per half-window), in minutes.
    pub baseline_minutes: u32,
    /// Samples the population of a kind needs before its keys score.
    pub min_population: u32,
    /// A key value carrying this many distinct identities (or addresses) or
    /// fewer never scores, whatever its population says.
    pub min_identities: u32,
    /// Upstream statuses that count as failures (Vigil's own refusals never do).
    pub failure_statuses: Vec<u16>,
    /// The `keys` signal counts in the risk from this score up (its gate).
    pub score_threshold: f64,
    /// How often each worker hands its counts to shared data and re-reads
    /// what the others handed in: the staleness of every key's view.
    pub sync_interval_ms: u32,
    /// Key values each worker keeps a view of, per key.
    pub cache_entries: u32,
    pub attribution: AttributionConfig,
}

impl Default for SecondaryKeys {
    fn default() -> Self {
        Self {
            enabled: false,
            keys: Vec::new(),
            max_keys: 4096,
            window_seconds: 60,
            baseline_minutes: 60,
            min_population: 20,
            min_identities: 5,
            failure_statuses: vec![401, 403, 404, 429],
            score_threshold: 0.5,
            sync_interval_ms: 1000,
            cache_entries: 1024,
            attribution: AttributionConfig::default(),
        }
    }
}

/// Route anomalies go to their contributors: the identities and key values
/// whose share of the route's recent traffic is far above their share before.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttributionConfig {
    /// Needs `time_series_analysis.enable_traffic_analysis`; without it there
    /// is no route anomaly to attribute.
    pub enabled: bool,
    /// A contributor sends at least this share of the route's recent traffic...
    pub min_share: f64,
    /// ...and at least this many times its share before.
    pub surge_ratio: f64,
    /// "Recent": the short horizon, in seconds.
    pub recent_seconds: u32,
    /// "Before": the long horizon, in seconds.
    pub baseline_seconds: u32,
    /// How much of the traffic score a caller that is not a contributor
    /// still counts (0: it stays visible in the signals, but not in the risk).
    pub bystander_weight: f64,
    /// Routes tracked in shared data (slots).
    pub max_routes: u32,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_share: 0.05,
            surge_ratio: 3.0,
            recent_seconds: 10,
            baseline_seconds: 300,
            bystander_weight: 0.0,
            max_routes: 64,
        }
    }
}

fn default_prefix_v4() -> u8 {
    24
}
fn default_prefix_v6() -> u8 {
    64
}
fn default_true() -> bool {
    true
}

/// One secondary key: where its value comes from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySource {
    /// The client address masked to a prefix (`/24`, `/64`; 32 and 128 for a
    /// single address), found like the `client_ip` identity source.
    ClientIp {
        #[serde(default = "default_prefix_v4")]
        prefix_v4: u8,
        #[serde(default = "default_prefix_v6")]
        prefix_v6: u8,
        #[serde(default)]
        trusted_proxy_hops: u32,
        #[serde(default)]
        label: Option<String>,
        #[serde(default = "default_true")]
        attribute: bool,
    },
    /// The ASN header (`behavioral_profiling.geo.asn_header` unless `header`).
    Asn {
        #[serde(default)]
        header: Option<String>,
        #[serde(default)]
        label: Option<String>,
        #[serde(default = "default_true")]
        attribute: bool,
    },
    /// The country header (`behavioral_profiling.geo.country_header` unless `header`).
    Country {
        #[serde(default)]
        header: Option<String>,
        #[serde(default)]
        label: Option<String>,
        #[serde(default = "default_true")]
        attribute: bool,
    },
    /// Any header: a TLS fingerprint (`x-ja4`, `x-ja3`), `user-agent`.
    Header {
        name: String,
        #[serde(default)]
        label: Option<String>,
        #[serde(default = "default_true")]
        attribute: bool,
    },
    /// The other way round: the identity is the key and its client addresses
    /// (masked to a prefix) are what is counted. One identity seen from many
    /// addresses at once is a shared (or stolen) API key.
    IdentityAddresses {
        #[serde(default = "default_identity_prefix_v4")]
        prefix_v4: u8,
        #[serde(default = "default_prefix_v6")]
        prefix_v6: u8,
        #[serde(default)]
        trusted_proxy_hops: u32,
        #[serde(default)]
        label: Option<String>,
    },
}

fn default_identity_prefix_v4() -> u8 {
    32
}

impl KeySource {
    /// The metric label and the name the key goes by: `label` if set, else
    /// one derived from the key (`client_prefix_24`, `asn`, `user_agent`, ...).
    pub fn label(&self) -> String {
        let explicit = match self {
            KeySource::ClientIp { label, .. }
            | KeySource::Asn { label, .. }
            | KeySource::Country { label, .. }
            | KeySource::Header { label, .. }
            | KeySource::IdentityAddresses { label, .. } => label.clone(),
        };
        explicit.unwrap_or_else(|| match self {
            KeySource::ClientIp { prefix_v4: 32, prefix_v6: 128, .. } => "client_ip".to_string(),
            KeySource::ClientIp { prefix_v4, .. } => format!("client_prefix_{prefix_v4}"),
            KeySource::Asn { .. } => "asn".to_string(),
            KeySource::Country { .. } => "country".to_string(),
            KeySource::Header { name, .. } => name.replace(['-', '.'], "_"),
            KeySource::IdentityAddresses { .. } => "identity_addresses".to_string(),
        })
    }

    /// Whether route anomalies may be attributed to this key's values.
    pub fn attributes(&self) -> bool {
        match self {
            KeySource::ClientIp { attribute, .. }
            | KeySource::Asn { attribute, .. }
            | KeySource::Country { attribute, .. }
            | KeySource::Header { attribute, .. } => *attribute,
            KeySource::IdentityAddresses { .. } => false,
        }
    }
}

fn is_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

pub fn validate(c: &Config) -> Result<(), ConfigError> {
    let k = &c.secondary_keys;
    let f = |name: &str| format!("secondary_keys.{name}");
    if k.keys.len() > MAX_KEYS {
        return Err(ConfigError::new(&f("keys"), format!("at most {MAX_KEYS} keys, got {}", k.keys.len())));
    }
    if k.enabled && k.keys.is_empty() && !k.attribution.enabled {
        return Err(ConfigError::new(&f("keys"), "must list at least one key (or leave attribution on)"));
    }
    in_range(&f("max_keys"), k.max_keys, 16, 1 << 20)?;
    in_range(&f("window_seconds"), k.window_seconds, 2, 3600)?;
    in_range(&f("baseline_minutes"), k.baseline_minutes, 1, 7 * 24 * 60)?;
    in_range(&f("min_population"), k.min_population, 1, 1_000_000)?;
    in_range(&f("min_identities"), k.min_identities, 1, 100_000)?;
    unit_interval(&f("score_threshold"), k.score_threshold)?;
    in_range(&f("sync_interval_ms"), k.sync_interval_ms, 100, 60_000)?;
    in_range(&f("cache_entries"), k.cache_entries, 16, 1 << 16)?;
    if k.failure_statuses.len() > 32 {
        return Err(ConfigError::new(&f("failure_statuses"), "at most 32 statuses"));
    }
    for (i, s) in k.failure_statuses.iter().enumerate() {
        in_range(&f(&format!("failure_statuses[{i}]")), *s, 100, 599)?;
    }
    let a = &k.attribution;
    unit_interval(&f("attribution.min_share"), a.min_share)?;
    if !(a.surge_ratio.is_finite() && (1.0..=100.0).contains(&a.surge_ratio)) {
        return Err(ConfigError::new(&f("attribution.surge_ratio"), format!("must be within [1, 100], got {}", a.surge_ratio)));
    }
    in_range(&f("attribution.recent_seconds"), a.recent_seconds, 1, 600)?;
    in_range(&f("attribution.baseline_seconds"), a.baseline_seconds, 10, 86_400)?;
    if a.baseline_seconds < 2 * a.recent_seconds {
        return Err(ConfigError::new(&f("attribution.baseline_seconds"), "must be at least twice attribution.recent_seconds"));
    }
    unit_interval(&f("attribution.bystander_weight"), a.bystander_weight)?;
    in_range(&f("attribution.max_routes"), a.max_routes, 4, 1024)?;

    let geo = &c.behavioral_profiling.geo;
    let mut labels: Vec<String> = Vec::new();
    for (i, key) in k.keys.iter().enumerate() {
        let at = |name: &str| f(&format!("keys[{i}].{name}"));
        match key {
            KeySource::ClientIp { prefix_v4, prefix_v6, trusted_proxy_hops, .. }
            | KeySource::IdentityAddresses { prefix_v4, prefix_v6, trusted_proxy_hops, .. } => {
                in_range(&at("prefix_v4"), *prefix_v4, 8, 32)?;
                in_range(&at("prefix_v6"), *prefix_v6, 16, 128)?;
                in_range(&at("trusted_proxy_hops"), *trusted_proxy_hops, 0, 16)?;
            }
            KeySource::Asn { header, .. } | KeySource::Country { header, .. } => {
                let (fallback, geo_field) = match key {
                    KeySource::Asn { .. } => (&geo.asn_header, "asn_header"),
                    _ => (&geo.country_header, "country_header"),
                };
                match header.as_ref().or(fallback.as_ref()) {
                    None => {
                        return Err(ConfigError::new(
                            &at("header"),
                            format!("no header to read: set it or behavioral_profiling.geo.{geo_field}"),
                        ))
                    }
                    Some(name) if !is_header_name(name) => {
                        return Err(ConfigError::new(&at("header"), format!("`{name}` is not a lowercase HTTP header name")))
                    }
                    Some(_) => {}
                }
            }
            KeySource::Header { name, .. } => {
                if !is_header_name(name) || name.starts_with(':') {
                    return Err(ConfigError::new(&at("name"), format!("`{name}` is not a lowercase HTTP header name")));
                }
            }
        }
        let label = key.label();
        if !is_label(&label) {
            return Err(ConfigError::new(&at("label"), format!("`{label}` must be 1-32 characters of [a-z0-9_]")));
        }
        if labels.contains(&label) {
            return Err(ConfigError::new(&at("label"), format!("`{label}` is used twice: give one of them a label")));
        }
        labels.push(label);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::engine::config::parse;

    fn err(json: &str) -> crate::engine::config::ConfigError {
        parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn off_by_default_and_the_documented_defaults() {
        let c = parse(b"{}").unwrap();
        let k = &c.secondary_keys;
        assert!(!k.enabled && k.keys.is_empty());
        assert_eq!((k.max_keys, k.window_seconds, k.min_population, k.sync_interval_ms), (4096, 60, 20, 1000));
        assert_eq!(k.failure_statuses, vec![401, 403, 404, 429]);
        assert_eq!(c.ml_scoring_weights.secondary_keys, 0.3);
        assert!(k.attribution.enabled);
    }

    #[test]
    fn every_kind_parses_with_its_labels() {
        let c = parse(
            br#"{"behavioral_profiling": {"geo": {"asn_header": "x-geo-asn"}},
                 "secondary_keys": {"enabled": true, "keys": [
                   {"type": "client_ip", "trusted_proxy_hops": 1},
                   {"type": "client_ip", "prefix_v4": 32, "prefix_v6": 128},
                   {"type": "asn"},
                   {"type": "country", "header": "cf-ipcountry"},
                   {"type": "header", "name": "x-ja4"},
                   {"type": "header", "name": "user-agent", "attribute": false},
                   {"type": "identity_addresses"}]}}"#,
        )
        .unwrap();
        let labels: Vec<String> = c.secondary_keys.keys.iter().map(|k| k.label()).collect();
        assert_eq!(labels, ["client_prefix_24", "client_ip", "asn", "country", "x_ja4", "user_agent", "identity_addresses"]);
        assert!(!c.secondary_keys.keys[5].attributes());
    }

    #[test]
    fn bad_keys_name_the_field() {
        let e = err(r#"{"secondary_keys": {"keys": [{"type": "client_ip", "prefix_v4": 33}]}}"#);
        assert_eq!(e.field, "secondary_keys.keys[0].prefix_v4");
        let e = err(r#"{"secondary_keys": {"keys": [{"type": "asn"}]}}"#);
        assert_eq!(e.field, "secondary_keys.keys[0].header");
        assert!(e.reason.contains("behavioral_profiling.geo.asn_header"), "{e}");
        let e = err(r#"{"secondary_keys": {"keys": [{"type": "header", "name": "User-Agent"}]}}"#);
        assert_eq!(e.field, "secondary_keys.keys[0].name");
        let e = err(r#"{"secondary_keys": {"keys": [{"type": "header", "name": "x-a"}, {"type": "header", "name": "x.a"}]}}"#);
        assert_eq!(e.field, "secondary_keys.keys[1].label");
        let e = err(r#"{"secondary_keys": {"keys": [{"type": "header", "name": "x-a", "label": "Bad Label"}]}}"#);
        assert_eq!(e.field, "secondary_keys.keys[0].label");
        let e = err(r#"{"secondary_keys": {"keys": [{"type": "fingerprint"}]}}"#);
        assert!(e.field.starts_with("secondary_keys.keys"), "{e}");
        let e = err(r#"{"secondary_keys": {"max_keys": 1}}"#);
        assert_eq!(e.field, "secondary_keys.max_keys");
        let e = err(r#"{"secondary_keys": {"failure_statuses": [401, 99]}}"#);
        assert_eq!(e.field, "secondary_keys.failure_statuses[1]");
        let e = err(r#"{"secondary_keys": {"attribution": {"surge_ratio": 0.5}}}"#);
        assert_eq!(e.field, "secondary_keys.attribution.surge_ratio");
        let e = err(r#"{"secondary_keys": {"enabled": true, "attribution": {"enabled": false}}}"#);
        assert_eq!(e.field, "secondary_keys.keys");
        let e = err(r#"{"secondary_keys": {"bogus": 1}}"#);
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = err(r#"{"ml_scoring_weights": {"secondary_keys": 2}}"#);
        assert_eq!(e.field, "ml_scoring_weights.secondary_keys");
    }
}
