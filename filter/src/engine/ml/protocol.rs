//! The two wire formats a model speaks: Vigil's native JSON and the Open
//! Inference Protocol v2 (KServe, Triton, Seldon MLServer). Requests are
//! built here and answers judged here; an answer that is not exactly what
//! was asked for is rejected with a reason, never guessed at.

use super::vector::Vector;
use crate::engine::config::{ModelOptions, ScoreScale};
use serde_json::Value;
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    Native,
    /// The model's name, from `/v2/models/{name}/infer`.
    Oip { model_name: String },
}

/// Why a model gave no usable answer. Each is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// No answer within `model_timeout_ms`.
    Timeout,
    /// The connection failed or was reset before an answer.
    Reset,
    /// An HTTP status other than 2xx.
    Status,
    /// Not JSON.
    Malformed,
    /// JSON, but not the expected fields, types or tensor shape.
    WrongShape,
    /// NaN or infinity where a number was expected.
    NonFinite,
    /// A number outside what the score scale allows.
    OutOfRange,
    /// Envoy refused to send the call (unknown cluster, bad arguments).
    Dispatch,
    /// The circuit breaker is open: the call was not sent.
    BreakerOpen,
    /// This worker already holds `max_pending_calls`: the call was not sent.
    QueueFull,
}

impl Failure {
    pub const ALL: [Failure; 10] = [
        Failure::Timeout,
        Failure::Reset,
        Failure::Status,
        Failure::Malformed,
        Failure::WrongShape,
        Failure::NonFinite,
        Failure::OutOfRange,
        Failure::Dispatch,
        Failure::BreakerOpen,
        Failure::QueueFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Status => "http_status",
            Failure::Malformed => "malformed",
            Failure::WrongShape => "wrong_shape",
            Failure::NonFinite => "non_finite",
            Failure::OutOfRange => "out_of_range",
            Failure::Dispatch => "dispatch",
            Failure::BreakerOpen => "breaker_open",
            Failure::QueueFull => "queue_full",
        }
    }

    /// Worth another attempt: the transport failed, or the server said it
    /// is overloaded. A model that answers nonsense will answer it again.
    pub fn retryable(self) -> bool {
        matches!(self, Failure::Timeout | Failure::Reset | Failure::Status)
    }

    /// Counts against the model's health (the circuit breaker). Calls never
    /// sent say nothing about the model.
    pub fn counts_against_model(self) -> bool {
        !matches!(self, Failure::BreakerOpen | Failure::QueueFull | Failure::Dispatch)
    }
}

/// A usable answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    /// In [0, 1], higher is more anomalous.
    pub score: f64,
    /// What the model said before the score scale mapped it.
    pub raw: f64,
    /// In [0, 1]; 1 when the model does not say.
    pub confidence: f64,
}

/// What the request tells the model beyond the vector.
pub struct Subject<'a> {
    /// "behavioral" or "anomaly".
    pub role: &'a str,
    pub request_id: &'a str,
    /// The identity's keyed hash: stable per identity, reveals nothing.
    pub identity_hash: u64,
    pub route: &'a str,
    pub method: &'a str,
}

pub fn request_body(wire: &Wire, s: &Subject, v: &Vector) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    let values = v.values();
    let mut data = String::with_capacity(values.len() * 8);
    for (i, x) in values.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(data, "{sep}{x}");
    }
    // Everything quoted here is made of safe characters already (the request
    // id is sanitised, the route is a template), but serde escapes anyway.
    let q = |s: &str| Value::from(s).to_string();
    match wire {
        Wire::Native => {
            let _ = write!(
                out,
                r#"{{"version":{},"model":{},"request_id":{},"identity":"{:016x}","route":{},"method":{},"features":[{}]}}"#,
                q(v.version().as_str()),
                q(s.role),
                q(s.request_id),
                s.identity_hash,
                q(s.route),
                q(s.method),
                data
            );
        }
        Wire::Oip { .. } => {
            let _ = write!(
                out,
                r#"{{"id":{},"parameters":{{"vigil_feature_version":{},"vigil_model":{}}},"inputs":[{{"name":"features","shape":[1,{}],"datatype":"FP32","data":[{}]}}]}}"#,
                q(s.request_id),
                q(v.version().as_str()),
                q(s.role),
                values.len(),
                data
            );
        }
    }
    out.into_bytes()
}

/// Judges a complete HTTP answer (status and body).
pub fn parse(wire: &Wire, options: &ModelOptions, status: u16, body: &[u8]) -> Result<Answer, Failure> {
    if !(200..300).contains(&status) {
        return Err(Failure::Status);
    }
    let json: Value = serde_json::from_slice(body).map_err(|_| {
        // serde_json refuses the bare NaN / Infinity tokens Python writes.
        if contains(body, b"NaN") || contains(body, b"Infinity") {
            Failure::NonFinite
        } else {
            Failure::Malformed
        }
    })?;
    let (raw, confidence) = match wire {
        Wire::Native => {
            let obj = json.as_object().ok_or(Failure::WrongShape)?;
            let score = number(obj.get("score").ok_or(Failure::WrongShape)?)?;
            let confidence = obj.get("confidence").filter(|c| !c.is_null()).map(number).transpose()?;
            (score, confidence)
        }
        Wire::Oip { .. } => {
            let outputs = json.get("outputs").and_then(Value::as_array).ok_or(Failure::WrongShape)?;
            let named = |name: &str| outputs.iter().find(|o| o.get("name").and_then(Value::as_str) == Some(name));
            let score_tensor = match named(&options.output_name) {
                Some(t) => t,
                // A model with a single output of another name is unambiguous.
                None if outputs.len() == 1 => outputs.first().ok_or(Failure::WrongShape)?,
                None => return Err(Failure::WrongShape),
            };
            let confidence = match named(&options.confidence_output_name) {
                Some(t) if !std::ptr::eq(t, score_tensor) => Some(scalar(t)?),
                _ => None,
            };
            (scalar(score_tensor)?, confidence)
        }
    };
    let confidence = match confidence {
        Some(c) if !(0.0..=1.0).contains(&c) => return Err(Failure::OutOfRange),
        Some(c) => c,
        None => 1.0,
    };
    Ok(Answer { score: scale(options.score_scale, raw)?, raw, confidence })
}

/// The one number of a tensor holding a batch of one: shape [1], [1, 1] or
/// absent, data `[x]` or `[[x]]`.
fn scalar(tensor: &Value) -> Result<f64, Failure> {
    if let Some(shape) = tensor.get("shape") {
        let dims = shape.as_array().ok_or(Failure::WrongShape)?;
        if dims.is_empty() || dims.iter().any(|d| d.as_u64() != Some(1)) {
            return Err(Failure::WrongShape);
        }
    }
    let mut data = tensor.get("data").ok_or(Failure::WrongShape)?;
    while let Some(items) = data.as_array() {
        match items.as_slice() {
            [only] => data = only,
            _ => return Err(Failure::WrongShape),
        }
    }
    number(data)
}

fn number(v: &Value) -> Result<f64, Failure> {
    match v {
        Value::Number(n) => n.as_f64().filter(|x| x.is_finite()).ok_or(Failure::NonFinite),
        // Some servers spell the non-finite values as strings.
        Value::String(s) if matches!(s.to_ascii_lowercase().as_str(), "nan" | "inf" | "-inf" | "infinity" | "-infinity") => {
            Err(Failure::NonFinite)
        }
        _ => Err(Failure::WrongShape),
    }
}

/// Maps a raw model output to a score in [0, 1], higher is more anomalous.
pub fn scale(s: ScoreScale, x: f64) -> Result<f64, Failure> {
    if !x.is_finite() {
        return Err(Failure::NonFinite);
    }
    match s {
        ScoreScale::Probability if (0.0..=1.0).contains(&x) => Ok(x),
        ScoreScale::Probability => Err(Failure::OutOfRange),
        ScoreScale::IsolationForest => Ok(logistic(x, 0.0, 0.05, true)),
        ScoreScale::Logistic { center, width, anomalous_below } => Ok(logistic(x, center, width, anomalous_below)),
    }
}

fn logistic(x: f64, center: f64, width: f64, anomalous_below: bool) -> f64 {
    let z = (x - center) / width;
    let z = if anomalous_below { -z } else { z };
    let s = 1.0 / (1.0 + (-z).exp());
    if s.is_finite() {
        s.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oip() -> Wire {
        Wire::Oip { model_name: "vigil-iforest".into() }
    }

    fn opts(scale: ScoreScale) -> ModelOptions {
        ModelOptions { score_scale: scale, ..ModelOptions::default() }
    }

    fn subject() -> Subject<'static> {
        Subject { role: "anomaly", request_id: "req-1", identity_hash: 0xabc, route: "/users/{id}", method: "GET" }
    }

    #[test]
    fn payloads_carry_the_version_the_order_and_no_raw_identity() {
        let mut x = [0.0f32; 12];
        x[1] = 0.5;
        x[11] = 1.0;
        let v = Vector::with_values(super::super::vector::Version::V1, &x);
        let native: Value = serde_json::from_slice(&request_body(&Wire::Native, &subject(), &v)).unwrap();
        assert_eq!(native["version"], "vigil.v1");
        assert_eq!(native["model"], "anomaly");
        assert_eq!(native["request_id"], "req-1");
        assert_eq!(native["identity"], "0000000000000abc");
        assert_eq!(native["route"], "/users/{id}");
        let features: Vec<f64> = native["features"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(features.len(), 12);
        assert_eq!((features[1], features[11]), (0.5, 1.0));

        let o: Value = serde_json::from_slice(&request_body(&oip(), &subject(), &v)).unwrap();
        assert_eq!(o["id"], "req-1");
        assert_eq!(o["parameters"]["vigil_feature_version"], "vigil.v1");
        let input = &o["inputs"][0];
        assert_eq!(input["name"], "features");
        assert_eq!(input["datatype"], "FP32");
        assert_eq!(input["shape"], serde_json::json!([1, 12]));
        assert_eq!(input["data"].as_array().unwrap().len(), 12);

        let v2 = Vector::with_values(super::super::vector::Version::V2, &[0.25; 16]);
        let o: Value = serde_json::from_slice(&request_body(&oip(), &subject(), &v2)).unwrap();
        assert_eq!(o["parameters"]["vigil_feature_version"], "vigil.v2");
        assert_eq!(o["inputs"][0]["shape"], serde_json::json!([1, 16]));
        let native: Value = serde_json::from_slice(&request_body(&Wire::Native, &subject(), &v2)).unwrap();
        assert_eq!((native["version"].as_str(), native["features"].as_array().map(Vec::len)), (Some("vigil.v2"), Some(16)));
    }

    #[test]
    fn native_answers_are_parsed_and_each_malformed_case_has_its_reason() {
        let p = |body: &str| parse(&Wire::Native, &opts(ScoreScale::Probability), 200, body.as_bytes());
        assert_eq!(p(r#"{"score": 0.93, "confidence": 0.5, "model": "m"}"#), Ok(Answer { score: 0.93, raw: 0.93, confidence: 0.5 }));
        assert_eq!(p(r#"{"score": 0}"#).unwrap().confidence, 1.0, "no confidence given: full weight");
        assert_eq!(p(r#"{"score": 0.2, "confidence": null}"#).unwrap().confidence, 1.0);
        assert_eq!(p(r#"{"score": "#), Err(Failure::Malformed));
        assert_eq!(p("<html>oops</html>"), Err(Failure::Malformed));
        assert_eq!(p(""), Err(Failure::Malformed));
        assert_eq!(p(r#"{"scores": [1, 2]}"#), Err(Failure::WrongShape));
        assert_eq!(p(r#"[0.5]"#), Err(Failure::WrongShape));
        assert_eq!(p(r#"{"score": "high"}"#), Err(Failure::WrongShape));
        assert_eq!(p(r#"{"score": [0.5]}"#), Err(Failure::WrongShape));
        assert_eq!(p(r#"{"score": NaN, "confidence": 0.9}"#), Err(Failure::NonFinite));
        assert_eq!(p(r#"{"score": "NaN"}"#), Err(Failure::NonFinite));
        assert_eq!(p(r#"{"score": 7.5}"#), Err(Failure::OutOfRange));
        assert_eq!(p(r#"{"score": -0.1}"#), Err(Failure::OutOfRange));
        assert_eq!(p(r#"{"score": 0.5, "confidence": 1.5}"#), Err(Failure::OutOfRange));
        assert_eq!(p(r#"{"score": 0.5, "confidence": "sure"}"#), Err(Failure::WrongShape));
        assert_eq!(parse(&Wire::Native, &opts(ScoreScale::Probability), 503, b"{\"score\":0.1}"), Err(Failure::Status));
        assert_eq!(parse(&Wire::Native, &opts(ScoreScale::Probability), 404, b""), Err(Failure::Status));
    }

    #[test]
    fn oip_answers_are_parsed_by_output_name_and_shape() {
        let p = |body: &str| parse(&oip(), &opts(ScoreScale::Probability), 200, body.as_bytes());
        let ok = r#"{"model_name":"m","outputs":[{"name":"anomaly_score","shape":[1,1],"datatype":"FP32","data":[0.8]}]}"#;
        assert_eq!(p(ok).unwrap().score, 0.8);
        let nested = r#"{"outputs":[{"name":"x","shape":[1,1],"datatype":"FP64","data":[[0.25]]}]}"#;
        assert_eq!(p(nested).unwrap().score, 0.25, "a single output of another name is unambiguous");
        let with_conf = r#"{"outputs":[{"name":"confidence","shape":[1],"data":[0.4]},{"name":"anomaly_score","shape":[1],"data":[0.9]}]}"#;
        assert_eq!(p(with_conf).unwrap(), Answer { score: 0.9, raw: 0.9, confidence: 0.4 });
        let ambiguous = r#"{"outputs":[{"name":"a","data":[0.1]},{"name":"b","data":[0.2]}]}"#;
        assert_eq!(p(ambiguous), Err(Failure::WrongShape));
        let three = r#"{"outputs":[{"name":"anomaly_score","shape":[1,3],"datatype":"FP32","data":[0.1,0.1,0.1]}]}"#;
        assert_eq!(p(three), Err(Failure::WrongShape));
        let lying_shape = r#"{"outputs":[{"name":"anomaly_score","shape":[1,3],"data":[0.1]}]}"#;
        assert_eq!(p(lying_shape), Err(Failure::WrongShape));
        assert_eq!(p(r#"{"outputs":[{"name":"anomaly_score","shape":[1],"data":[]}]}"#), Err(Failure::WrongShape));
        assert_eq!(p(r#"{"outputs":[]}"#), Err(Failure::WrongShape));
        assert_eq!(p(r#"{"error":"model not found"}"#), Err(Failure::WrongShape));
        assert_eq!(p(r#"{"outputs":[{"name":"anomaly_score","shape":[1,1],"data":[NaN]}]}"#), Err(Failure::NonFinite));
        assert_eq!(p(r#"{"outputs":[{"name":"anomaly_score","shape":[1,1],"data":[7.5]}]}"#), Err(Failure::OutOfRange));
        assert_eq!(p(r#"{"outputs":[{"name":"anomaly_score","data":["0.5"]}]}"#), Err(Failure::WrongShape));
        assert_eq!(p(r#"{"outputs": "#), Err(Failure::Malformed));
    }

    #[test]
    fn isolation_forest_scores_map_to_zero_one_with_negative_anomalous() {
        let iforest = |x: f64| scale(ScoreScale::IsolationForest, x).unwrap();
        assert!((iforest(0.0) - 0.5).abs() < 1e-12, "the fitted boundary is the midpoint");
        assert!(iforest(-0.15) > 0.95, "clear outlier");
        assert!(iforest(0.1) < 0.15, "clear inlier");
        assert!(iforest(-0.05) > iforest(0.05));
        assert_eq!(iforest(-1e9), 1.0);
        assert_eq!(iforest(1e9), 0.0);
        // Raw IF answers of any finite value are accepted; a probability must be in [0, 1].
        let body = r#"{"outputs":[{"name":"anomaly_score","shape":[1,1],"data":[-0.2]}]}"#;
        let a = parse(&oip(), &opts(ScoreScale::IsolationForest), 200, body.as_bytes()).unwrap();
        assert_eq!(a.raw, -0.2);
        assert!(a.score > 0.98);
        let lof = ScoreScale::Logistic { center: 1.5, width: 0.25, anomalous_below: false };
        assert!(scale(lof, 3.0).unwrap() > 0.99 && scale(lof, 1.0).unwrap() < 0.2);
        assert_eq!(scale(ScoreScale::IsolationForest, f64::NAN), Err(Failure::NonFinite));
    }

    #[test]
    fn only_transport_failures_are_retried_and_only_sent_calls_judge_the_model() {
        let retried: Vec<_> = Failure::ALL.iter().filter(|f| f.retryable()).collect();
        assert_eq!(retried, [&Failure::Timeout, &Failure::Reset, &Failure::Status]);
        assert!(!Failure::BreakerOpen.counts_against_model());
        assert!(Failure::NonFinite.counts_against_model());
    }
}
