//! Vigil: a Proxy-Wasm filter that scores every API request for abuse.
//!
//! Two worlds, kept apart: [`engine`] decides (pure Rust, deterministic, no
//! host calls) and `host` talks to Envoy through proxy-wasm. See
//! DESIGN.md and docs/ for the why.

pub mod engine;

#[cfg(feature = "host")]
mod host;
