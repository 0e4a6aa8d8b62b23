//! The engine: everything Vigil knows and decides, in pure Rust. No proxy-wasm
//! here; time comes in as an argument and the host is reached only through the
//! traits in `ports`, so all of it runs (and is tested) natively and in a bare
//! wasm VM alike.

pub mod admin;
pub mod alerts;
pub mod codec;
pub mod config;
pub mod decision;
pub mod events;
pub mod features;
pub mod feedback;
pub mod hash;
pub mod identity;
pub mod keys;
pub mod lease;
pub mod ml;
pub mod outbox;
pub mod pipeline;
pub mod ports;
pub mod profile;
pub mod rate;
pub mod record;
pub mod report;
pub mod request;
pub mod route;
pub mod scoring;
pub mod slots;
pub mod text;
pub mod traffic;
