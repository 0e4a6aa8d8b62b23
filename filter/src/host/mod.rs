//! The host side: the only code that talks to proxy-wasm. It adapts Envoy's
//! callbacks to the engine and the engine's ports to Envoy.

mod abi;
mod callout;
mod http;
mod root;
mod store;

proxy_wasm::main! {{
    // First, so a panic (which should never happen) is logged before the VM dies.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::VigilRoot::new(context_id))
    });
}}
