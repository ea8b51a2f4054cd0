//! Logging (tracing, `RUST_LOG`, default `info`), trace export and propagation, and the
//! process-wide TLS crypto provider.
//!
//! Traces: with `HOOKRELAY_OTLP_ENDPOINT` set (a collector's base URL, e.g.
//! `http://otel-collector:4318`), spans are exported over OTLP/HTTP (protobuf) to
//! `<endpoint>/v1/traces` in batches (`OTEL_BSP_*` tune the batching, `OTEL_TRACES_SAMPLER`
//! the sampling; the default samples everything, following the parent's decision). Every
//! JetStream publish through [`crate::nats::publish`] carries the current span's W3C
//! `traceparent` (and `tracestate`) as NATS headers, and each consumer continues it with
//! [`follow`], so one event's journey (ingest → router → deliverer → log write) is one
//! trace. Without the variable no span is exported and nothing is added to messages.

use async_nats::HeaderMap;
use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TraceContextExt as _,
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

/// async-nats and sqlx use rustls with ring; install ring as the process default once so
/// no TLS connect panics over an ambiguous provider.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Keeps trace export running; [`Telemetry::shutdown`] flushes what is buffered.
#[derive(Debug, Default)]
#[must_use = "dropping it without shutdown loses the spans still buffered"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter. Blocks: call it off the
    /// async runtime's worker threads (e.g. in `spawn_blocking`).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("hookrelay: flushing traces at exit failed: {error}");
        }
    }

    /// [`Telemetry::shutdown`] from async code.
    pub async fn finish(self) {
        let _ = tokio::task::spawn_blocking(move || self.shutdown()).await;
    }
}

/// The OTLP traces URL for a collector's base URL.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

fn provider(service: &str, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .with_headers(std::collections::HashMap::new())
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Sets up logging and, with `otlp_endpoint`, trace export for `service` (reported as
/// `service.name` = `service`).
pub fn init(service: &str, otlp_endpoint: Option<&str>) -> Telemetry {
    install_crypto_provider();
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("HOOKRELAY_LOG_FORMAT").is_ok_and(|v| v == "json");
    let logs = if json {
        fmt::layer().json().boxed()
    } else {
        fmt::layer().with_target(false).boxed()
    };
    let (provider, failed) = match otlp_endpoint.filter(|e| !e.is_empty()).map(|e| provider(service, e)) {
        None => (None, None),
        Some(Ok(p)) => (Some(p), None),
        Some(Err(e)) => (None, Some(e)),
    };
    let traces = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer("hookrelay"))
    });
    let result = tracing_subscriber::registry()
        .with(traces)
        .with(logs.with_filter(filter))
        .try_init();
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
        match (&provider, failed, otlp_endpoint) {
            (Some(_), _, Some(endpoint)) => {
                tracing::info!(endpoint = %traces_url(endpoint), "exporting traces over OTLP")
            }
            (_, Some(error), _) => {
                tracing::error!(%error, "HOOKRELAY_OTLP_ENDPOINT is set but the exporter could not start; no traces")
            }
            _ => {}
        }
    }
    Telemetry { provider }
}

struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(async_nats::HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Adds the current span's trace context (`traceparent`, `tracestate`) to `headers`.
/// Nothing when no span is being exported.
pub fn inject(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Inject(headers)));
    }
}

/// Makes `span` continue the trace whose context `headers` carry. Call it before the span
/// is first entered (an entered span has started its trace). Nothing when they carry none.
pub fn follow(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else {
        return;
    };
    let cx = global::get_text_map_propagator(|p| p.extract(&Extract(headers)));
    if cx.span().span_context().is_valid()
        && let Err(error) = span.set_parent(cx)
    {
        tracing::debug!(%error, "could not continue a trace");
    }
}

/// Makes `span` continue the trace whose context an HTTP request's `headers` carry.
pub fn follow_http(span: &tracing::Span, headers: &http::HeaderMap) {
    let mut nats = HeaderMap::new();
    for key in ["traceparent", "tracestate"] {
        if let Some(v) = headers.get(key).and_then(|v| v.to_str().ok()) {
            nats.insert(key, v);
        }
    }
    follow(span, Some(&nats));
}

/// The current span's W3C `traceparent`, to store with work that resumes later (a
/// delivery's retries); `None` when no span is being exported.
pub fn traceparent() -> Option<String> {
    let mut headers = HeaderMap::new();
    inject(&mut headers);
    headers.get("traceparent").map(|v| v.as_str().to_owned())
}

/// Makes `span` continue the trace of a stored `traceparent`.
pub fn follow_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", tp);
        follow(span, Some(&headers));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_is_the_base_plus_the_signal_path_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }
}
