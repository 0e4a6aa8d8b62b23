//! Time-series traffic analysis: streaming detectors that score how
//! anomalous the current moment of a series is (request volume, latency,
//! error rate). The same code runs in the filter and in `vigil-replay`, which
//! measures it offline on NAB.

pub mod detector;
