//! Logging (tracing, `RUST_LOG`, default `info`) and the process-wide TLS crypto provider.
//! OTLP trace export (`HOOKRELAY_OTLP_ENDPOINT`) is not wired yet: setting it logs a warning.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// async-nats and sqlx use rustls with ring; install ring as the process default once so
/// no TLS connect panics over an ambiguous provider.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn init(service: &str, otlp_endpoint: Option<&str>) {
    install_crypto_provider();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("HOOKRELAY_LOG_FORMAT").is_ok_and(|v| v == "json");
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(fmt::layer().json()).try_init()
    } else {
        registry.with(fmt::layer().with_target(false)).try_init()
    };
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
        if let Some(endpoint) = otlp_endpoint {
            tracing::warn!(
                endpoint,
                "HOOKRELAY_OTLP_ENDPOINT is set but trace export is not built yet; ignoring"
            );
        }
    }
}
