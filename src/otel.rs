//! OpenTelemetry export of tracing spans over OTLP/gRPC (cargo feature
//! `otel`): every RPC span and its storage-page children reach a collector.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A tracing layer exporting spans to the OTLP collector at `endpoint`
/// (e.g. `http://127.0.0.1:4317`), and the provider to shut down at exit
/// (which flushes pending spans).
pub fn layer<S>(endpoint: &str) -> anyhow::Result<(impl Layer<S>, SdkTracerProvider)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP exporter for {endpoint}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("hourglass").build())
        .build();
    let tracer = provider.tracer("hourglass");
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
}
