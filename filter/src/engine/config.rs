//! The filter configuration: the JSON in Envoy's `configuration` field.
//!
//! Parsing is strict (an unknown key is an error, so a typo never silently
//! falls back to a default) and every error names the field, because the only
//! place an operator sees it is one line of Envoy's log at load time.

use serde::Deserialize;
use std::fmt;

/// A configuration Vigil cannot honour: which field, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid vigil configuration: {}", self.reason)
        } else {
            write!(f, "invalid vigil configuration: field `{}`: {}", self.field, self.reason)
        }
    }
}

impl ConfigError {
    pub(crate) fn new(field: &str, reason: impl Into<String>) -> Self {
        Self { field: field.to_string(), reason: reason.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Score and report everything, enforce nothing: the safe way to start.
    #[default]
    Monitor,
    /// Throttle and block as decided.
    Enforce,
}

/// Which requests get the full JSON record (`wasm.vigil` filter state) for the
/// access log. The `x-vigil-*` headers are there for every request anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogRecord {
    All,
    /// Only requests not simply allowed: the ones someone will look at.
    #[default]
    Flagged,
    Off,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub mode: Mode,
    pub enable_ml_models: bool,
    pub ml_model_config: MlModelConfig,
    pub behavioral_profiling: BehavioralProfiling,
    pub time_series_analysis: TimeSeriesAnalysis,
    pub ml_scoring_weights: MlScoringWeights,
    pub identity: IdentityConfig,
    pub rate_limit: RateLimitConfig,
    pub decision_thresholds: DecisionThresholds,
    /// Add `x-vigil-risk-score`, `x-vigil-decision` and `x-vigil-signals` to the
    /// request forwarded upstream. Incoming copies are always stripped.
    pub upstream_headers: bool,
    pub log_record: LogRecord,
    pub alerts: AlertsConfig,
    pub siem: SiemConfig,
    pub debug: DebugConfig,
    pub adaptive_thresholds: AdaptiveThresholds,
    pub admin: AdminConfig,
    /// Client prefix, ASN, country, fingerprint headers: see `keys`.
    pub secondary_keys: crate::engine::keys::config::SecondaryKeys,
}

/// Thresholds that move: per route group toward a target false-positive
/// rate (when `enabled`), and by operator feedback (always, through the
/// admin API). See docs/scoring.md.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveThresholds {
    /// The automatic controller. Feedback moves thresholds whether or not.
    pub enabled: bool,
    /// The share of benign requests an operator accepts being flagged.
    pub target_false_positive_rate: f64,
    /// Route templates grouped by prefix, first match wins; the rest are `default`.
    pub route_groups: Vec<RouteGroup>,
    /// Bounds on the offset added to every decision threshold, for a group
    /// and for an identity alike.
    pub min_offset: f64,
    pub max_offset: f64,
    /// How far one adjustment moves a group's offset.
    pub step: f64,
    /// How far one feedback moves the offset of its group and identity.
    pub feedback_step: f64,
    /// The controller looks at each group this often.
    pub adjust_seconds: u32,
    /// A group needs this many requests in a period before it is adjusted.
    pub min_requests: u32,
}

impl Default for AdaptiveThresholds {
    fn default() -> Self {
        Self {
            enabled: false,
            target_false_positive_rate: 0.01,
            route_groups: Vec::new(),
            min_offset: -0.1,
            max_offset: 0.2,
            step: 0.02,
            feedback_step: 0.05,
            adjust_seconds: 60,
            min_requests: 200,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteGroup {
    pub name: String,
    /// Route-template prefixes, e.g. `/api/export`.
    pub routes: Vec<String>,
}

/// The admin API: feedback, profiles, thresholds, model performance. Off
/// unless at least one token hash is configured.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// SHA-256 of each accepted bearer token, in hex (`sha256sum`).
    pub token_sha256: Vec<String>,
    /// Served only to requests that arrived on this local port: a listener
    /// of its own, never the public one.
    pub port: Option<u16>,
    pub path_prefix: String,
    /// Calls per minute, all callers and workers together.
    pub requests_per_minute: u32,
    /// Recent flagged or refused decisions kept for feedback by request id.
    pub recent_decisions: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { token_sha256: Vec::new(), port: None, path_prefix: "/vigil/admin".into(), requests_per_minute: 60, recent_decisions: 4096 }
    }
}

impl AdminConfig {
    pub fn enabled(&self) -> bool {
        !self.token_sha256.is_empty()
    }
}

/// Diagnostics, off by default: nothing is formatted unless switched on.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Log every decision with each signal's score, weight, gate and whether
    /// it counted (info level, `vigil-decision`).
    pub log_decisions: bool,
    /// Name the identity (kind and keyed hash) in those lines instead of `redacted`.
    pub log_identities: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AlertOn {
    /// The request's risk score.
    #[default]
    Risk,
    /// The behavioural score of the request's identity.
    Behavior,
    /// The traffic anomaly score of the request's route.
    Traffic,
    /// The model's score (`user_deviation_score`).
    Ml,
    /// A model's circuit breaker opened (on any worker).
    MlBreaker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AlertPer {
    /// One alert key per identity: each attacker is its own alert.
    #[default]
    Identity,
    /// One per route template.
    Route,
    /// One for the whole rule.
    Rule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// One level up (escalation), critical stays critical.
    pub fn escalated(self) -> Severity {
        match self {
            Severity::Info => Severity::Warning,
            _ => Severity::Critical,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    #[serde(default)]
    pub on: AlertOn,
    /// The condition holds at or above this (not used by `ml_breaker`).
    #[serde(default = "default_alert_above")]
    pub above: f64,
    #[serde(default)]
    pub per: AlertPer,
    #[serde(default)]
    pub severity: Severity,
    /// After an alert, the same key stays quiet this long (de-duplication).
    #[serde(default = "default_cooldown")]
    pub cooldown_seconds: u32,
    /// The condition held this many more times within the cooldown: one
    /// escalated alert, a severity up. 0: never escalate.
    #[serde(default)]
    pub escalate_after: u32,
}

fn default_alert_above() -> f64 {
    0.95
}
fn default_cooldown() -> u32 {
    300
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// A generic JSON object (docs/siem.md).
    #[default]
    Json,
    /// Slack's incoming-webhook payload (`{"text": ...}`).
    Slack,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Envoy cluster to call instead of the URL's host.
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub format: WebhookFormat,
    #[serde(default = "default_webhook_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_webhook_retries")]
    pub retries: u32,
}

fn default_webhook_timeout() -> u64 {
    2000
}
fn default_webhook_retries() -> u32 {
    2
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    pub rules: Vec<AlertRule>,
    pub webhooks: Vec<WebhookConfig>,
    /// Alert keys tracked in shared data (the memory bound).
    pub max_keys: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self { rules: Vec::new(), webhooks: Vec::new(), max_keys: 4096 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EventFormat {
    #[default]
    Cef,
    Json,
    /// Both lines, CEF then JSON.
    Both,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SiemConfig {
    /// Write every security event to Envoy's log (info level, `vigil-event`).
    pub log: bool,
    pub format: EventFormat,
    /// Frame each line as RFC 5424 syslog.
    pub syslog: bool,
    /// The syslog HOSTNAME field.
    pub syslog_hostname: String,
    /// Also send events, in batches, to an HTTP collector.
    pub collector: Option<CollectorConfig>,
}

impl Default for SiemConfig {
    fn default() -> Self {
        Self { log: true, format: EventFormat::Cef, syslog: false, syslog_hostname: "-".to_string(), collector: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CollectorFormat {
    /// One JSON event per line.
    #[default]
    Json,
    /// Splunk HTTP Event Collector: `{"time", "source", "sourcetype", "event"}` per line.
    Hec,
    /// One CEF line per event (syslog-framed with `siem.syslog`).
    Cef,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    pub url: String,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub format: CollectorFormat,
    /// Extra request headers, e.g. `{"authorization": "Splunk <token>"}`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// A batch goes out when it holds this many events...
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// ...or its oldest event is this old.
    #[serde(default = "default_flush_seconds")]
    pub flush_seconds: u32,
    #[serde(default = "default_webhook_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_webhook_retries")]
    pub retries: u32,
}

fn default_batch_size() -> u32 {
    50
}
fn default_flush_seconds() -> u32 {
    1
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::default(),
            enable_ml_models: false,
            ml_model_config: MlModelConfig::default(),
            behavioral_profiling: BehavioralProfiling::default(),
            time_series_analysis: TimeSeriesAnalysis::default(),
            ml_scoring_weights: MlScoringWeights::default(),
            identity: IdentityConfig::default(),
            rate_limit: RateLimitConfig::default(),
            decision_thresholds: DecisionThresholds::default(),
            upstream_headers: true,
            log_record: LogRecord::default(),
            alerts: AlertsConfig::default(),
            siem: SiemConfig::default(),
            debug: DebugConfig::default(),
            adaptive_thresholds: AdaptiveThresholds::default(),
            admin: AdminConfig::default(),
            secondary_keys: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlModelConfig {
    pub behavioral_model_url: Option<String>,
    pub anomaly_model_url: Option<String>,
    /// Envoy cluster to call instead of the URL's host (Istio names clusters
    /// `outbound|PORT||FQDN`, which cannot be a URL host).
    pub behavioral_model_cluster: Option<String>,
    pub anomaly_model_cluster: Option<String>,
    /// Per attempt. The longest a request can wait is this x (retries + 1).
    pub model_timeout_ms: u64,
    pub model_retry_count: u32,
    /// When the model is asked and whether the request waits for it.
    pub mode: MlMode,
    /// `cascade` asks the model only about requests whose local risk is in
    /// [low, high): the ones the local detectors cannot settle.
    pub grey_zone: GreyZone,
    pub behavioral_model: ModelOptions,
    pub anomaly_model: ModelOptions,
    pub circuit_breaker: BreakerConfig,
    /// `async` answers kept per identity in shared data (the memory bound).
    pub max_identities: u32,
    /// An `async` answer fades with this half-life, so one anomalous request
    /// weighs on the identity's next requests for a while, not forever.
    pub answer_half_life_seconds: u32,
    /// Model calls each worker holds at once (queued or in flight, `async`).
    pub max_pending_calls: u32,
    /// `async`: an identity is asked about at most once per this many seconds
    /// per worker, unless a request's local risk reaches the grey zone. 0:
    /// every request is asked about.
    pub async_min_interval_seconds: u32,
    /// Log every model input and output (info level). Off by default.
    pub log_payloads: bool,
    /// With `log_payloads`, name the identity (its kind and keyed hash)
    /// instead of `redacted`.
    pub log_identities: bool,
    /// Put the model's feature vector in the access-log record
    /// (`ml_features`), to train a model on your own traffic.
    pub export_features: bool,
    /// The vector models are sent and `ml_features` carries: `vigil.v2`, or
    /// `vigil.v1` for a model trained on it.
    pub feature_version: crate::engine::ml::vector::Version,
}

impl Default for MlModelConfig {
    fn default() -> Self {
        Self {
            behavioral_model_url: None,
            anomaly_model_url: None,
            behavioral_model_cluster: None,
            anomaly_model_cluster: None,
            model_timeout_ms: 1000,
            model_retry_count: 2,
            mode: MlMode::default(),
            grey_zone: GreyZone::default(),
            behavioral_model: ModelOptions::default(),
            anomaly_model: ModelOptions::default(),
            circuit_breaker: BreakerConfig::default(),
            max_identities: 16384,
            answer_half_life_seconds: 60,
            max_pending_calls: 256,
            async_min_interval_seconds: 10,
            log_payloads: false,
            log_identities: false,
            export_features: false,
            feature_version: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MlMode {
    /// Every request waits for the model's answer (bounded by the timeout).
    Inline,
    /// The request goes on; the answer weighs on the identity's next requests.
    #[default]
    Async,
    /// Only requests in the grey zone wait for the model.
    Cascade,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GreyZone {
    pub low: f64,
    pub high: f64,
}

impl Default for GreyZone {
    fn default() -> Self {
        Self { low: 0.3, high: 0.75 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Open Inference Protocol when the URL path is `/v2/models/{name}/infer`,
    /// else Vigil's native JSON.
    #[default]
    Auto,
    Native,
    Oip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// The model could not answer: decide on the local detectors alone.
    #[default]
    Allow,
    /// The model could not answer: block (fail closed).
    Deny,
}

/// How a model's raw output becomes a score in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ScoreScale {
    /// Already in [0, 1], higher is more anomalous; anything else is rejected.
    #[default]
    Probability,
    /// scikit-learn's `IsolationForest.decision_function` (negative is
    /// anomalous): the logistic centred on 0, width 0.05.
    IsolationForest,
    /// `1 / (1 + exp(-(x - center) / width))`, flipped when lower is anomalous.
    Logistic { center: f64, width: f64, anomalous_below: bool },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelOptions {
    pub protocol: Protocol,
    pub failure_mode: FailureMode,
    pub score_scale: ScoreScale,
    /// The OIP output tensor holding the score.
    pub output_name: String,
    /// The OIP output tensor holding the confidence, if the model gives one.
    pub confidence_output_name: String,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            protocol: Protocol::Auto,
            failure_mode: FailureMode::Allow,
            score_scale: ScoreScale::Probability,
            output_name: "anomaly_score".to_string(),
            confidence_output_name: "confidence".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failed attempts in a row that open the breaker.
    pub consecutive_failures: u32,
    /// How long an open breaker stops calls before one probe is let through.
    pub open_seconds: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { consecutive_failures: 5, open_seconds: 10 }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BehavioralProfiling {
    pub enable_user_profiling: bool,
    /// How much history a profile represents: old behaviour fades with this
    /// time constant (weight `exp(-age / window)`), it is not cut off.
    pub profile_window_hours: u32,
    /// A behavioural score at or above this is a deviation: it raises the risk
    /// through `ml_scoring_weights.behavioral_deviation`.
    pub deviation_threshold: f64,
    /// Requests a profile must have seen before it scores (cold start).
    pub min_observations: u32,
    /// Profiles kept in shared data: the memory bound, whatever the number of
    /// identities seen (at most 1 KiB each).
    pub max_profiles: u32,
    /// A profile idle this long is reclaimed. Default: 4 x profile_window_hours.
    pub profile_ttl_hours: Option<u32>,
    /// Profiles each worker keeps in its local cache.
    pub cache_entries: u32,
    /// How stale a worker's cached profile may get: a changed one is written
    /// back, and a clean one re-read, this long after its last sync. Longer
    /// means fewer shared-data calls and later cross-worker learning.
    pub sync_interval_ms: u32,
    pub session: SessionConfig,
    pub geo: GeoConfig,
    /// The header that tells a client's devices apart (the user agent by
    /// default; a JA4 fingerprint header where a hop adds one); `null` turns
    /// devices off. A session token sent from another device than it started
    /// on scores as a stolen session.
    pub device_header: Option<String>,
    /// An identity deviating from its profile on end for this long has a
    /// new normal: its profile is rebased and the drift reported.
    pub drift_minutes: u32,
}

impl Default for BehavioralProfiling {
    fn default() -> Self {
        Self {
            enable_user_profiling: false,
            profile_window_hours: 24,
            deviation_threshold: 0.7,
            min_observations: 20,
            max_profiles: 16384,
            profile_ttl_hours: None,
            cache_entries: 4096,
            sync_interval_ms: crate::engine::profile::SYNC_MS as u32,
            session: SessionConfig::default(),
            geo: GeoConfig::default(),
            device_header: Some("user-agent".to_string()),
            drift_minutes: 60,
        }
    }
}

impl BehavioralProfiling {
    pub fn ttl_hours(&self) -> u32 {
        self.profile_ttl_hours.unwrap_or(self.profile_window_hours.saturating_mul(4))
    }
}

/// Where sessions come from: a cookie or a header carrying a session token
/// (only its keyed hash is kept), else inferred from an inactivity gap.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    pub cookie: Option<String>,
    pub header: Option<String>,
    pub inactivity_minutes: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self { cookie: None, header: None, inactivity_minutes: 30 }
    }
}

/// Headers carrying the client's country (ISO 3166 alpha-2) and ASN, set by a
/// hop you trust: Envoy's `envoy.filters.http.geoip` filter or a CDN. Unset,
/// geography is not profiled.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    pub country_header: Option<String>,
    pub asn_header: Option<String>,
    /// A change of country sooner than this is "impossible travel".
    pub impossible_travel_minutes: u32,
}

impl Default for GeoConfig {
    fn default() -> Self {
        Self { country_header: None, asn_header: None, impossible_travel_minutes: 120 }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeSeriesAnalysis {
    pub enable_traffic_analysis: bool,
    pub analysis_window_minutes: u32,
    pub anomaly_sensitivity: f64,
    /// Route templates analysed on their own; the rest count as "other".
    pub max_routes: u32,
    /// A series anomalous this long (short breaks aside) has drifted: its
    /// baseline is re-learned at the new level and the drift reported.
    pub drift_minutes: u32,
    /// The minimum meaningful change per metric: a smaller deviation from
    /// the baseline is never an anomaly.
    pub min_change: MinChange,
}

impl Default for TimeSeriesAnalysis {
    fn default() -> Self {
        Self {
            enable_traffic_analysis: false,
            analysis_window_minutes: 60,
            anomaly_sensitivity: 0.8,
            max_routes: 16,
            drift_minutes: 10,
            min_change: MinChange::default(),
        }
    }
}

/// `time_series_analysis.min_change`: per metric (keys as the metric names in
/// threat details and metric labels), the smallest deviation from a series'
/// baseline that can be an incident, in the metric's unit. 0 leaves it to
/// the statistics alone.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MinChange {
    pub requests_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    /// A share (0.05 is 5 percentage points).
    #[serde(rename = "4xx_rate")]
    pub client_error_rate: f64,
    #[serde(rename = "5xx_rate")]
    pub server_error_rate: f64,
}

impl MinChange {
    /// In the order of the traffic series (`traffic::series::METRICS`).
    pub fn by_metric(&self) -> [f64; 6] {
        [
            self.requests_per_s,
            self.latency_p50_ms,
            self.latency_p95_ms,
            self.latency_p99_ms,
            self.client_error_rate,
            self.server_error_rate,
        ]
    }
}

impl Default for MinChange {
    /// The traffic analysis' own defaults (one list of numbers, not two).
    fn default() -> Self {
        let [requests_per_s, latency_p50_ms, latency_p95_ms, latency_p99_ms, client_error_rate, server_error_rate] =
            crate::engine::traffic::series::Floors::default().0;
        Self { requests_per_s, latency_p50_ms, latency_p95_ms, latency_p99_ms, client_error_rate, server_error_rate }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlScoringWeights {
    pub behavioral_deviation: f64,
    pub traffic_anomaly: f64,
    pub user_anomaly: f64,
    /// The `keys` detector (`secondary_keys`).
    pub secondary_keys: f64,
}

impl Default for MlScoringWeights {
    fn default() -> Self {
        Self { behavioral_deviation: 0.4, traffic_anomaly: 0.3, user_anomaly: 0.5, secondary_keys: 0.3 }
    }
}

/// Where an identity comes from; the first source that yields one wins.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum IdentitySource {
    /// A header set by something you trust (an auth filter, a gateway).
    Header { name: String },
    /// A claim of a JWT carried in a header. The token is NOT verified here, so
    /// the claim only groups requests; it grants nothing.
    JwtClaim {
        #[serde(default = "default_jwt_header")]
        header: String,
        #[serde(default = "default_jwt_claim")]
        claim: String,
    },
    /// An API key header. Only its keyed hash is kept, logged or shared.
    ApiKey { name: String },
    /// The client address: Envoy's downstream address, or with
    /// `trusted_proxy_hops` proxies in front of Envoy, read from X-Forwarded-For.
    ClientIp {
        #[serde(default)]
        trusted_proxy_hops: u32,
    },
}

fn default_jwt_header() -> String {
    "authorization".to_string()
}
fn default_jwt_claim() -> String {
    "sub".to_string()
}

/// The public default; start-up warns while it is in use.
pub const DEFAULT_HASH_SECRET: &str = "vigil-default-secret-change-me";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    pub sources: Vec<IdentitySource>,
    /// Secret for the keyed identity hash. Set it in production so identity
    /// hashes (and slot placement) cannot be predicted from outside.
    pub hash_secret: String,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            sources: vec![
                IdentitySource::Header { name: "x-user-id".to_string() },
                IdentitySource::JwtClaim { header: default_jwt_header(), claim: default_jwt_claim() },
                IdentitySource::ApiKey { name: "x-api-key".to_string() },
                IdentitySource::ClientIp { trusted_proxy_hops: 0 },
            ],
            hash_secret: DEFAULT_HASH_SECRET.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// The ceiling: requests one identity may make per window.
    pub requests_per_window: u32,
    pub window_seconds: u32,
    /// Slots in the shared table: the most identities tracked at once. Memory is
    /// bounded by this, whatever the number of identities seen.
    pub max_identities: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { enabled: true, requests_per_window: 600, window_seconds: 60, max_identities: 16384 }
    }
}

/// Risk scores at or above each threshold get that decision.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionThresholds {
    pub flag: f64,
    pub throttle: f64,
    pub block: f64,
}

impl Default for DecisionThresholds {
    fn default() -> Self {
        Self { flag: 0.5, throttle: 0.75, block: 0.95 }
    }
}

/// Parses and validates the configuration. An empty input means all defaults.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let config = match first {
        None => Config::default(),
        Some(b) if *b != b'{' => return Err(ConfigError::new("", "must be a JSON object")),
        Some(_) => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let config: Config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let field = e.path().to_string();
                // serde_path_to_error says "." for the root and "?" for syntax errors.
                let field = if field == "." || field == "?" { String::new() } else { field };
                ConfigError { field, reason: e.into_inner().to_string() }
            })?;
            de.end().map_err(|e| ConfigError::new("", e.to_string()))?;
            config
        }
    };
    validate(&config)?;
    Ok(config)
}

pub(crate) fn unit_interval(field: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::new(field, format!("must be within [0, 1], got {v}")))
    }
}

pub(crate) fn in_range<T: PartialOrd + fmt::Display + Copy>(field: &str, v: T, lo: T, hi: T) -> Result<(), ConfigError> {
    if v >= lo && v <= hi {
        Ok(())
    } else {
        Err(ConfigError::new(field, format!("must be within [{lo}, {hi}], got {v}")))
    }
}

fn validate_adaptive(a: &AdaptiveThresholds) -> Result<(), ConfigError> {
    let f = |k: &str| format!("adaptive_thresholds.{k}");
    if !(a.target_false_positive_rate.is_finite() && a.target_false_positive_rate > 0.0 && a.target_false_positive_rate < 1.0) {
        return Err(ConfigError::new(&f("target_false_positive_rate"), format!("must be within (0, 1), got {}", a.target_false_positive_rate)));
    }
    if !(a.min_offset.is_finite() && (-0.5..=0.0).contains(&a.min_offset)) {
        return Err(ConfigError::new(&f("min_offset"), format!("must be within [-0.5, 0], got {}", a.min_offset)));
    }
    if !(a.max_offset.is_finite() && (0.0..=0.5).contains(&a.max_offset)) {
        return Err(ConfigError::new(&f("max_offset"), format!("must be within [0, 0.5], got {}", a.max_offset)));
    }
    for (k, v) in [("step", a.step), ("feedback_step", a.feedback_step)] {
        if !(v.is_finite() && v > 0.0 && v <= 0.25) {
            return Err(ConfigError::new(&f(k), format!("must be within (0, 0.25], got {v}")));
        }
    }
    in_range(&f("adjust_seconds"), a.adjust_seconds, 1, 86_400)?;
    in_range(&f("min_requests"), a.min_requests, 1, 100_000_000)?;
    if a.route_groups.len() > crate::engine::feedback::MAX_GROUPS {
        return Err(ConfigError::new(&f("route_groups"), format!("at most {} groups", crate::engine::feedback::MAX_GROUPS)));
    }
    for (i, g) in a.route_groups.iter().enumerate() {
        if g.name.is_empty() || g.name.len() > 64 || !g.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(ConfigError::new(&f(&format!("route_groups[{i}].name")), "must be 1-64 characters of [A-Za-z0-9_-]"));
        }
        if g.name == "default" || a.route_groups.iter().take(i).any(|o| o.name == g.name) {
            return Err(ConfigError::new(&f(&format!("route_groups[{i}].name")), format!("`{}` is taken", g.name)));
        }
        if g.routes.is_empty() || g.routes.iter().any(|r| !r.starts_with('/')) {
            return Err(ConfigError::new(&f(&format!("route_groups[{i}].routes")), "must list route prefixes starting with `/`"));
        }
    }
    Ok(())
}

fn validate_admin(a: &AdminConfig) -> Result<(), ConfigError> {
    for (i, h) in a.token_sha256.iter().enumerate() {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConfigError::new(&format!("admin.token_sha256[{i}]"), "must be a SHA-256 digest in hex (64 characters), not a token"));
        }
    }
    if a.enabled() && a.port.is_none() {
        return Err(ConfigError::new("admin.port", "must name the admin listener's port when tokens are configured (the API is never served on the public listener)"));
    }
    if a.port == Some(0) {
        return Err(ConfigError::new("admin.port", "must be a port number"));
    }
    if !a.path_prefix.starts_with('/') || a.path_prefix.len() < 2 || a.path_prefix.ends_with('/') {
        return Err(ConfigError::new("admin.path_prefix", "must start with `/` and not end with one"));
    }
    in_range("admin.requests_per_minute", a.requests_per_minute, 1, 100_000)?;
    in_range("admin.recent_decisions", a.recent_decisions, 16, 1 << 20)?;
    Ok(())
}

fn validate(c: &Config) -> Result<(), ConfigError> {
    validate_adaptive(&c.adaptive_thresholds)?;
    validate_admin(&c.admin)?;
    let m = &c.ml_model_config;
    in_range("ml_model_config.model_timeout_ms", m.model_timeout_ms, 1, 60_000)?;
    in_range("ml_model_config.model_retry_count", m.model_retry_count, 0, 10)?;
    for (field, url) in [
        ("ml_model_config.behavioral_model_url", &m.behavioral_model_url),
        ("ml_model_config.anomaly_model_url", &m.anomaly_model_url),
    ] {
        if let Some(url) = url {
            ClusterUrl::parse(url).map_err(|reason| ConfigError::new(field, reason))?;
        }
    }
    for (field, cluster) in [
        ("ml_model_config.behavioral_model_cluster", &m.behavioral_model_cluster),
        ("ml_model_config.anomaly_model_cluster", &m.anomaly_model_cluster),
    ] {
        if matches!(cluster, Some(name) if name.trim().is_empty()) {
            return Err(ConfigError::new(field, "must not be empty"));
        }
    }
    unit_interval("ml_model_config.grey_zone.low", m.grey_zone.low)?;
    unit_interval("ml_model_config.grey_zone.high", m.grey_zone.high)?;
    if m.grey_zone.low >= m.grey_zone.high {
        return Err(ConfigError::new("ml_model_config.grey_zone.low", "must be below grey_zone.high"));
    }
    for (field, o) in [("ml_model_config.behavioral_model", &m.behavioral_model), ("ml_model_config.anomaly_model", &m.anomaly_model)] {
        if let ScoreScale::Logistic { center, width, .. } = o.score_scale {
            if !center.is_finite() {
                return Err(ConfigError::new(&format!("{field}.score_scale.logistic.center"), "must be a finite number"));
            }
            if !(width.is_finite() && width > 0.0) {
                return Err(ConfigError::new(&format!("{field}.score_scale.logistic.width"), format!("must be above 0, got {width}")));
            }
        }
        if o.output_name.is_empty() {
            return Err(ConfigError::new(&format!("{field}.output_name"), "must not be empty"));
        }
    }
    for (field, url, o) in [
        ("ml_model_config.behavioral_model.protocol", &m.behavioral_model_url, &m.behavioral_model),
        ("ml_model_config.anomaly_model.protocol", &m.anomaly_model_url, &m.anomaly_model),
    ] {
        if let (Some(url), Protocol::Oip) = (url, o.protocol) {
            if !ClusterUrl::parse(url).is_ok_and(|u| u.oip_model_name().is_some()) {
                return Err(ConfigError::new(field, format!("is oip but `{url}` is not .../v2/models/{{name}}/infer")));
            }
        }
    }
    in_range("ml_model_config.circuit_breaker.consecutive_failures", m.circuit_breaker.consecutive_failures, 1, 1000)?;
    in_range("ml_model_config.circuit_breaker.open_seconds", m.circuit_breaker.open_seconds, 1, 3600)?;
    in_range("ml_model_config.max_identities", m.max_identities, 16, 1 << 20)?;
    in_range("ml_model_config.answer_half_life_seconds", m.answer_half_life_seconds, 1, 86_400)?;
    in_range("ml_model_config.max_pending_calls", m.max_pending_calls, 1, 4096)?;
    in_range("ml_model_config.async_min_interval_seconds", m.async_min_interval_seconds, 0, 3600)?;
    if c.enable_ml_models && m.behavioral_model_url.is_none() && m.anomaly_model_url.is_none() {
        return Err(ConfigError::new(
            "enable_ml_models",
            "is true but neither ml_model_config.behavioral_model_url nor anomaly_model_url is set",
        ));
    }

    let p = &c.behavioral_profiling;
    in_range("behavioral_profiling.profile_window_hours", p.profile_window_hours, 1, 24 * 90)?;
    unit_interval("behavioral_profiling.deviation_threshold", p.deviation_threshold)?;
    in_range("behavioral_profiling.min_observations", p.min_observations, 1, 100_000)?;
    in_range("behavioral_profiling.max_profiles", p.max_profiles, 16, 1 << 20)?;
    if let Some(ttl) = p.profile_ttl_hours {
        in_range("behavioral_profiling.profile_ttl_hours", ttl, 1, 24 * 365)?;
    }
    in_range("behavioral_profiling.cache_entries", p.cache_entries, 16, 1 << 16)?;
    in_range("behavioral_profiling.sync_interval_ms", p.sync_interval_ms, 100, 600_000)?;
    in_range("behavioral_profiling.drift_minutes", p.drift_minutes, 1, 7 * 24 * 60)?;
    in_range("behavioral_profiling.session.inactivity_minutes", p.session.inactivity_minutes, 1, 24 * 60)?;
    in_range("behavioral_profiling.geo.impossible_travel_minutes", p.geo.impossible_travel_minutes, 1, 7 * 24 * 60)?;
    for (field, name) in [
        ("behavioral_profiling.session.header", &p.session.header),
        ("behavioral_profiling.geo.country_header", &p.geo.country_header),
        ("behavioral_profiling.geo.asn_header", &p.geo.asn_header),
        ("behavioral_profiling.device_header", &p.device_header),
    ] {
        if let Some(name) = name.as_deref().filter(|n| !is_header_name(n)) {
            return Err(ConfigError::new(field, format!("`{name}` is not a lowercase HTTP header name")));
        }
    }
    if let Some(cookie) = p.session.cookie.as_deref() {
        if cookie.is_empty() || !cookie.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'=' | b';' | b',')) {
            return Err(ConfigError::new("behavioral_profiling.session.cookie", format!("`{cookie}` is not a cookie name")));
        }
    }

    let t = &c.time_series_analysis;
    in_range("time_series_analysis.analysis_window_minutes", t.analysis_window_minutes, 1, 24 * 60)?;
    unit_interval("time_series_analysis.anomaly_sensitivity", t.anomaly_sensitivity)?;
    in_range("time_series_analysis.max_routes", t.max_routes, 1, 64)?;
    in_range("time_series_analysis.drift_minutes", t.drift_minutes, 1, 24 * 60)?;
    let m = &t.min_change;
    in_range("time_series_analysis.min_change.requests_per_s", m.requests_per_s, 0.0, 1e6)?;
    for (key, v) in [("latency_p50_ms", m.latency_p50_ms), ("latency_p95_ms", m.latency_p95_ms), ("latency_p99_ms", m.latency_p99_ms)] {
        in_range(&format!("time_series_analysis.min_change.{key}"), v, 0.0, 600_000.0)?;
    }
    unit_interval("time_series_analysis.min_change.4xx_rate", m.client_error_rate)?;
    unit_interval("time_series_analysis.min_change.5xx_rate", m.server_error_rate)?;

    let w = &c.ml_scoring_weights;
    unit_interval("ml_scoring_weights.behavioral_deviation", w.behavioral_deviation)?;
    unit_interval("ml_scoring_weights.traffic_anomaly", w.traffic_anomaly)?;
    unit_interval("ml_scoring_weights.user_anomaly", w.user_anomaly)?;
    unit_interval("ml_scoring_weights.secondary_keys", w.secondary_keys)?;
    crate::engine::keys::config::validate(c)?;

    if c.identity.sources.is_empty() {
        return Err(ConfigError::new("identity.sources", "must list at least one source"));
    }
    for (i, source) in c.identity.sources.iter().enumerate() {
        let header = match source {
            IdentitySource::Header { name } | IdentitySource::ApiKey { name } => Some(("name", name)),
            IdentitySource::JwtClaim { header, claim } => {
                if claim.is_empty() {
                    return Err(ConfigError::new(&format!("identity.sources[{i}].claim"), "must not be empty"));
                }
                Some(("header", header))
            }
            IdentitySource::ClientIp { trusted_proxy_hops } => {
                in_range(&format!("identity.sources[{i}].trusted_proxy_hops"), *trusted_proxy_hops, 0, 16)?;
                None
            }
        };
        if let Some((key, name)) = header {
            if !is_header_name(name) {
                return Err(ConfigError::new(
                    &format!("identity.sources[{i}].{key}"),
                    format!("`{name}` is not a lowercase HTTP header name"),
                ));
            }
        }
    }
    if c.identity.hash_secret.is_empty() {
        return Err(ConfigError::new("identity.hash_secret", "must not be empty"));
    }

    let r = &c.rate_limit;
    in_range("rate_limit.requests_per_window", r.requests_per_window, 1, 100_000_000)?;
    in_range("rate_limit.window_seconds", r.window_seconds, 1, 86_400)?;
    in_range("rate_limit.max_identities", r.max_identities, 16, 1 << 20)?;

    let a = &c.alerts;
    in_range("alerts.max_keys", a.max_keys, 16, 1 << 20)?;
    for (i, r) in a.rules.iter().enumerate() {
        if r.name.is_empty() || !r.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return Err(ConfigError::new(&format!("alerts.rules[{i}].name"), "must be non-empty letters, digits, `-`, `_` or `.`"));
        }
        if a.rules.iter().take(i).any(|o| o.name == r.name) {
            return Err(ConfigError::new(&format!("alerts.rules[{i}].name"), format!("`{}` is used twice", r.name)));
        }
        unit_interval(&format!("alerts.rules[{i}].above"), r.above)?;
        in_range(&format!("alerts.rules[{i}].cooldown_seconds"), r.cooldown_seconds, 1, 7 * 86_400)?;
        in_range(&format!("alerts.rules[{i}].escalate_after"), r.escalate_after, 0, 1_000_000)?;
    }
    for (i, w) in a.webhooks.iter().enumerate() {
        ClusterUrl::parse(&w.url).map_err(|reason| ConfigError::new(&format!("alerts.webhooks[{i}].url"), reason))?;
        in_range(&format!("alerts.webhooks[{i}].timeout_ms"), w.timeout_ms, 1, 60_000)?;
        in_range(&format!("alerts.webhooks[{i}].retries"), w.retries, 0, 10)?;
        if matches!(&w.cluster, Some(n) if n.trim().is_empty()) {
            return Err(ConfigError::new(&format!("alerts.webhooks[{i}].cluster"), "must not be empty"));
        }
    }
    if !a.rules.is_empty() && a.webhooks.is_empty() && !c.siem.log {
        return Err(ConfigError::new("alerts.webhooks", "alert rules are set but nothing would carry them: add a webhook or keep siem.log on"));
    }
    if let Some(col) = &c.siem.collector {
        ClusterUrl::parse(&col.url).map_err(|reason| ConfigError::new("siem.collector.url", reason))?;
        in_range("siem.collector.batch_size", col.batch_size, 1, 1000)?;
        in_range("siem.collector.flush_seconds", col.flush_seconds, 1, 3600)?;
        in_range("siem.collector.timeout_ms", col.timeout_ms, 1, 60_000)?;
        in_range("siem.collector.retries", col.retries, 0, 10)?;
        if let Some(name) = col.headers.keys().find(|n| !is_header_name(n) || n.starts_with(':')) {
            return Err(ConfigError::new("siem.collector.headers", format!("`{name}` is not a lowercase HTTP header name")));
        }
        if let Some((name, _)) = col.headers.iter().find(|(_, v)| v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)) {
            return Err(ConfigError::new(&format!("siem.collector.headers.{name}"), "must not contain CR, LF or NUL"));
        }
    }
    if c.siem.syslog_hostname.is_empty() {
        return Err(ConfigError::new("siem.syslog_hostname", "must not be empty (\"-\" for none)"));
    }

    let d = &c.decision_thresholds;
    unit_interval("decision_thresholds.flag", d.flag)?;
    unit_interval("decision_thresholds.throttle", d.throttle)?;
    unit_interval("decision_thresholds.block", d.block)?;
    if d.flag > d.throttle {
        return Err(ConfigError::new("decision_thresholds.flag", "must not exceed decision_thresholds.throttle"));
    }
    if d.throttle > d.block {
        return Err(ConfigError::new("decision_thresholds.throttle", "must not exceed decision_thresholds.block"));
    }
    Ok(())
}

/// Envoy lowercases header names; a configured name must match what it sees.
pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// A model's, webhook's or collector's URL, split into what
/// `dispatch_http_call` needs: the host names the Envoy cluster (unless a
/// cluster override is set) and the authority and path go on the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    pub scheme: String,
    pub authority: String,
    pub host: String,
    pub path: String,
}

impl ClusterUrl {
    /// The Envoy cluster to call: the override if set, else the URL's host.
    pub fn cluster(&self, over: Option<&String>) -> String {
        over.cloned().unwrap_or_else(|| self.host.clone())
    }

    /// `{name}` when the path is the Open Inference Protocol's
    /// `/v2/models/{name}[/versions/{v}]/infer`.
    pub fn oip_model_name(&self) -> Option<&str> {
        let rest = self.path.strip_prefix("/v2/models/")?.strip_suffix("/infer")?;
        let name = rest.split('/').next()?;
        (!name.is_empty()).then_some(name)
    }

    pub fn parse(url: &str) -> Result<ClusterUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{url}` is not an absolute http(s) URL"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme `{scheme}` is not http or https"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("/")),
            None => (rest, "/"),
        };
        let host = match authority.rsplit_once(':') {
            Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        };
        if host.is_empty() || host.contains(['@', ' ']) {
            return Err(format!("`{url}` has no usable host"));
        }
        Ok(ClusterUrl {
            scheme: scheme.to_string(),
            authority: authority.to_string(),
            host: host.to_string(),
            path: path.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> ConfigError {
        parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn empty_config_gives_the_specified_defaults() {
        let c = parse(b"").unwrap();
        assert_eq!(c, parse(b"{}").unwrap());
        assert!(!c.enable_ml_models);
        assert_eq!(c.ml_model_config.model_timeout_ms, 1000);
        assert_eq!(c.ml_model_config.model_retry_count, 2);
        assert!(c.ml_model_config.behavioral_model_url.is_none());
        assert!(!c.behavioral_profiling.enable_user_profiling);
        assert_eq!(c.behavioral_profiling.profile_window_hours, 24);
        assert_eq!(c.behavioral_profiling.deviation_threshold, 0.7);
        assert!(!c.time_series_analysis.enable_traffic_analysis);
        assert_eq!(c.time_series_analysis.analysis_window_minutes, 60);
        assert_eq!(c.time_series_analysis.anomaly_sensitivity, 0.8);
        assert_eq!(c.time_series_analysis.drift_minutes, 10);
        assert_eq!(c.ml_scoring_weights.behavioral_deviation, 0.4);
        assert_eq!(c.ml_scoring_weights.traffic_anomaly, 0.3);
        assert_eq!(c.ml_scoring_weights.user_anomaly, 0.5);
        assert_eq!(c.mode, Mode::Monitor);
        assert!(c.upstream_headers);
    }

    #[test]
    fn original_specification_keys_parse() {
        let c = parse(
            br#"{
            "enable_ml_models": true,
            "ml_model_config": {"behavioral_model_url": "http://ml-behavioral/v1/score",
                                "anomaly_model_url": "http://ml:8080/v2/models/iforest/infer",
                                "model_timeout_ms": 250, "model_retry_count": 1},
            "behavioral_profiling": {"enable_user_profiling": true, "profile_window_hours": 48, "deviation_threshold": 0.6},
            "time_series_analysis": {"enable_traffic_analysis": true, "analysis_window_minutes": 30, "anomaly_sensitivity": 0.9},
            "ml_scoring_weights": {"behavioral_deviation": 0.2, "traffic_anomaly": 0.1, "user_anomaly": 1.0}
        }"#,
        )
        .unwrap();
        assert!(c.enable_ml_models);
        assert_eq!(c.ml_model_config.model_timeout_ms, 250);
        assert_eq!(c.behavioral_profiling.profile_window_hours, 48);
        assert_eq!(c.time_series_analysis.anomaly_sensitivity, 0.9);
        assert_eq!(c.ml_scoring_weights.user_anomaly, 1.0);
    }

    #[test]
    fn unknown_keys_are_rejected_naming_the_field() {
        let e = err(r#"{"modee": "enforce"}"#);
        assert!(e.to_string().contains("modee"), "{e}");
        let e = err(r#"{"ml_scoring_weights": {"user_anomaly": 0.5, "bogus": 1}}"#);
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(e.field.starts_with("ml_scoring_weights"), "{e}");
        let e = err(r#"{"identity": {"sources": [{"type": "header", "name": "x-u", "extra": 1}]}}"#);
        assert!(e.to_string().contains("extra"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let e = err(r#"{"ml_scoring_weights": {"user_anomaly": 1.5}}"#);
        assert_eq!(e.field, "ml_scoring_weights.user_anomaly");
        let e = err(r#"{"behavioral_profiling": {"deviation_threshold": -0.1}}"#);
        assert_eq!(e.field, "behavioral_profiling.deviation_threshold");
        let e = err(r#"{"ml_model_config": {"model_timeout_ms": 0}}"#);
        assert_eq!(e.field, "ml_model_config.model_timeout_ms");
        let e = err(r#"{"decision_thresholds": {"flag": 0.9, "throttle": 0.8}}"#);
        assert_eq!(e.field, "decision_thresholds.flag");
        let e = err(r#"{"rate_limit": {"max_identities": 1}}"#);
        assert_eq!(e.field, "rate_limit.max_identities");
        let e = err(r#"{"time_series_analysis": {"max_routes": 0}}"#);
        assert_eq!(e.field, "time_series_analysis.max_routes");
        let e = err(r#"{"time_series_analysis": {"max_routes": 65}}"#);
        assert_eq!(e.field, "time_series_analysis.max_routes");
        let e = err(r#"{"behavioral_profiling": {"sync_interval_ms": 50}}"#);
        assert_eq!(e.field, "behavioral_profiling.sync_interval_ms");
    }

    #[test]
    fn min_change_has_defaults_parses_and_is_validated_naming_the_field() {
        let m = parse(b"{}").unwrap().time_series_analysis.min_change;
        assert_eq!(m.by_metric(), [5.0, 20.0, 50.0, 100.0, 0.05, 0.05]);
        let c = parse(br#"{"time_series_analysis": {"min_change": {"latency_p95_ms": 30, "5xx_rate": 0.02, "requests_per_s": 0}}}"#).unwrap();
        let m = c.time_series_analysis.min_change;
        assert_eq!((m.latency_p95_ms, m.server_error_rate, m.requests_per_s, m.latency_p50_ms), (30.0, 0.02, 0.0, 20.0));
        for (bad, field) in [
            (r#"{"latency_p95_ms": -1}"#, "time_series_analysis.min_change.latency_p95_ms"),
            (r#"{"latency_p99_ms": 1e9}"#, "time_series_analysis.min_change.latency_p99_ms"),
            (r#"{"requests_per_s": -0.5}"#, "time_series_analysis.min_change.requests_per_s"),
            (r#"{"4xx_rate": 5}"#, "time_series_analysis.min_change.4xx_rate"),
            (r#"{"5xx_rate": -0.01}"#, "time_series_analysis.min_change.5xx_rate"),
            (r#"{"latency_p50_ms": "10ms"}"#, "time_series_analysis.min_change.latency_p50_ms"),
            (r#"{"latency_ms": 10}"#, "time_series_analysis.min_change"),
        ] {
            let e = err(&format!(r#"{{"time_series_analysis": {{"min_change": {bad}}}}}"#));
            assert!(e.field.starts_with(field), "{bad}: {e}");
        }
    }

    #[test]
    fn drift_minutes_is_validated_naming_the_field() {
        let c = parse(br#"{"time_series_analysis": {"drift_minutes": 1}}"#).unwrap();
        assert_eq!(c.time_series_analysis.drift_minutes, 1);
        let c = parse(br#"{"time_series_analysis": {"drift_minutes": 1440}}"#).unwrap();
        assert_eq!(c.time_series_analysis.drift_minutes, 1440);
        for bad in ["0", "1441"] {
            let e = err(&format!(r#"{{"time_series_analysis": {{"drift_minutes": {bad}}}}}"#));
            assert_eq!(e.field, "time_series_analysis.drift_minutes", "{bad}: {e}");
            assert!(e.to_string().contains("[1, 1440]"), "{e}");
        }
        for bad in ["-1", "2.5", "\"10\""] {
            let e = err(&format!(r#"{{"time_series_analysis": {{"drift_minutes": {bad}}}}}"#));
            assert_eq!(e.field, "time_series_analysis.drift_minutes", "{bad}: {e}");
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = err(r#"{"ml_model_config": {"model_timeout_ms": "fast"}}"#);
        assert_eq!(e.field, "ml_model_config.model_timeout_ms");
        let e = err(r#"{"mode": "panic"}"#);
        assert_eq!(e.field, "mode");
        let e = err(r#"{"rate_limit": {"window_seconds": -5}}"#);
        assert_eq!(e.field, "rate_limit.window_seconds");
    }

    #[test]
    fn malformed_json_and_trailing_garbage_are_rejected() {
        assert!(parse(b"{").is_err());
        assert!(parse(b"{} {}").is_err());
        assert!(parse(b"[]").is_err());
    }

    #[test]
    fn identity_sources_are_validated() {
        let e = err(r#"{"identity": {"sources": []}}"#);
        assert_eq!(e.field, "identity.sources");
        let e = err(r#"{"identity": {"sources": [{"type": "header", "name": "X-User"}]}}"#);
        assert_eq!(e.field, "identity.sources[0].name");
        let e = err(r#"{"identity": {"sources": [{"type": "telepathy"}]}}"#);
        assert!(e.field.starts_with("identity.sources"), "{e}");
        let c = parse(br#"{"identity": {"sources": [{"type": "jwt_claim"}, {"type": "client_ip", "trusted_proxy_hops": 2}]}}"#)
            .unwrap();
        assert_eq!(
            c.identity.sources,
            vec![
                IdentitySource::JwtClaim { header: "authorization".into(), claim: "sub".into() },
                IdentitySource::ClientIp { trusted_proxy_hops: 2 }
            ]
        );
    }

    #[test]
    fn ml_needs_a_model_and_urls_must_be_usable() {
        let e = err(r#"{"enable_ml_models": true}"#);
        assert_eq!(e.field, "enable_ml_models");
        let e = err(r#"{"ml_model_config": {"anomaly_model_url": "ftp://x/y"}}"#);
        assert_eq!(e.field, "ml_model_config.anomaly_model_url");
        let u = ClusterUrl::parse("http://ml-mock:8080/v2/models/m/infer").unwrap();
        assert_eq!(u.host, "ml-mock");
        assert_eq!(u.authority, "ml-mock:8080");
        assert_eq!(u.path, "/v2/models/m/infer");
        assert_eq!(ClusterUrl::parse("https://scorer").unwrap().path, "/");
    }

    #[test]
    fn ml_options_parse_and_bad_ones_name_the_field() {
        let c = parse(
            br#"{"enable_ml_models": true, "ml_model_config": {
                "anomaly_model_url": "http://ml/v2/models/iforest/infer", "mode": "cascade",
                "grey_zone": {"low": 0.2, "high": 0.6},
                "anomaly_model": {"score_scale": "isolation_forest", "failure_mode": "deny"},
                "behavioral_model": {"score_scale": {"logistic": {"center": 1.5, "width": 0.2, "anomalous_below": false}}},
                "circuit_breaker": {"consecutive_failures": 3, "open_seconds": 30}}}"#,
        )
        .unwrap();
        let m = &c.ml_model_config;
        assert_eq!(m.mode, MlMode::Cascade);
        assert_eq!(m.anomaly_model.failure_mode, FailureMode::Deny);
        assert_eq!(m.anomaly_model.score_scale, ScoreScale::IsolationForest);
        assert_eq!(m.behavioral_model.score_scale, ScoreScale::Logistic { center: 1.5, width: 0.2, anomalous_below: false });
        assert_eq!(m.circuit_breaker.open_seconds, 30);
        assert_eq!(parse(b"{}").unwrap().ml_model_config.mode, MlMode::Async, "the default never makes a request wait");

        let e = err(r#"{"ml_model_config": {"mode": "sometimes"}}"#);
        assert_eq!(e.field, "ml_model_config.mode");
        let e = err(r#"{"ml_model_config": {"grey_zone": {"low": 0.8, "high": 0.4}}}"#);
        assert_eq!(e.field, "ml_model_config.grey_zone.low");
        let e = err(r#"{"ml_model_config": {"anomaly_model": {"failure_mode": "maybe"}}}"#);
        assert_eq!(e.field, "ml_model_config.anomaly_model.failure_mode");
        let e = err(r#"{"ml_model_config": {"anomaly_model": {"score_scale": {"logistic": {"center": 0, "width": 0, "anomalous_below": true}}}}}"#);
        assert_eq!(e.field, "ml_model_config.anomaly_model.score_scale.logistic.width");
        let e = err(r#"{"ml_model_config": {"behavioral_model_url": "http://ml/v1/score", "behavioral_model": {"protocol": "oip"}}}"#);
        assert_eq!(e.field, "ml_model_config.behavioral_model.protocol");
        let e = err(r#"{"ml_model_config": {"circuit_breaker": {"consecutive_failures": 0}}}"#);
        assert_eq!(e.field, "ml_model_config.circuit_breaker.consecutive_failures");
        let e = err(r#"{"ml_model_config": {"max_pending_calls": 0}}"#);
        assert_eq!(e.field, "ml_model_config.max_pending_calls");
        let u = ClusterUrl::parse("http://ml/v2/models/iforest/versions/3/infer").unwrap();
        assert_eq!(u.oip_model_name(), Some("iforest"));
        assert_eq!(ClusterUrl::parse("http://ml/v1/score").unwrap().oip_model_name(), None);
    }

    #[test]
    fn alerts_and_siem_options_are_validated_naming_the_field() {
        let ok = parse(
            br#"{"alerts": {"rules": [{"name": "a", "on": "traffic", "above": 0.9, "per": "route"}],
                            "webhooks": [{"url": "http://hooks/x", "format": "slack"}]},
                 "siem": {"format": "both", "syslog": true, "collector": {"url": "http://splunk:8088/services/collector", "format": "hec",
                          "headers": {"authorization": "Splunk t"}}}}"#,
        )
        .unwrap();
        assert_eq!(ok.alerts.rules[0].per, AlertPer::Route);
        let e = err(r#"{"alerts": {"rules": [{"name": "a b"}], "webhooks": [{"url": "http://h/x"}]}}"#);
        assert_eq!(e.field, "alerts.rules[0].name");
        let e = err(r#"{"alerts": {"rules": [{"name": "a"}, {"name": "a"}], "webhooks": [{"url": "http://h/x"}]}}"#);
        assert_eq!(e.field, "alerts.rules[1].name");
        let e = err(r#"{"alerts": {"rules": [{"name": "a", "above": 2}], "webhooks": [{"url": "http://h/x"}]}}"#);
        assert_eq!(e.field, "alerts.rules[0].above");
        let e = err(r#"{"alerts": {"rules": [{"name": "a"}]}, "siem": {"log": false}}"#);
        assert_eq!(e.field, "alerts.webhooks");
        let e = err(r#"{"alerts": {"webhooks": [{"url": "ftp://h/x"}]}}"#);
        assert_eq!(e.field, "alerts.webhooks[0].url");
        let e = err(r#"{"siem": {"collector": {"url": "http://s/c", "headers": {"Authorization": "x"}}}}"#);
        assert_eq!(e.field, "siem.collector.headers");
        let e = err(r#"{"siem": {"collector": {"url": "http://s/c", "headers": {"x-token": "a\r\nx-evil: 1"}}}}"#);
        assert_eq!(e.field, "siem.collector.headers.x-token");
        let e = err(r#"{"siem": {"format": "xml"}}"#);
        assert_eq!(e.field, "siem.format");
        let e = err(r#"{"debug": {"log_everything": true}}"#);
        assert!(e.field.starts_with("debug"), "{e}");
    }
}
