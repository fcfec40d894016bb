//! OTLP trace export: the tracer provider with Garrison's root sampler, and the trace layer
//! over it (the `otlp` feature).

use opentelemetry::{
    KeyValue,
    trace::{Link, SpanKind, TraceId, TraceState, TracerProvider as _},
};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample},
};
use tracing::Subscriber;
use tracing_subscriber::{Layer, registry::LookupSpan};

use super::{HEAD_SAMPLED, OtlpProtocol, TelemetryConfig, filter};
use crate::Error;

/// The root sampler: roots Garrison's head sampling kept are kept; others go by the ratio.
#[derive(Debug, Clone)]
struct HeadSampled(Sampler);

impl ShouldSample for HeadSampled {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if attributes
            .iter()
            .any(|attribute| attribute.key.as_str() == HEAD_SAMPLED)
        {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        self.0
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

pub(super) fn provider(
    config: &TelemetryConfig,
    endpoint: &str,
) -> Result<SdkTracerProvider, Error> {
    let endpoint = normalize_endpoint(endpoint, config.protocol);
    let exporter = match config.protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build(),
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build(),
    }
    .map_err(|error| Error::Telemetry {
        reason: error.to_string(),
    })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(HeadSampled(
            Sampler::TraceIdRatioBased(config.sample_ratio.clamp(0.0, 1.0)),
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build())
}

/// The layer exporting spans through `provider`, filtered by the configuration's trace filter.
pub(super) fn layer<S>(
    config: &TelemetryConfig,
    provider: &SdkTracerProvider,
) -> Result<impl Layer<S> + Send + Sync + 'static, Error>
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync + 'static,
{
    Ok(tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("garrison"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(filter(&config.trace_filter)?))
}

/// An endpoint without a scheme would be taken as https by the exporter; a local collector is
/// plain http. For OTLP/HTTP the traces path is appended when missing.
fn normalize_endpoint(endpoint: &str, protocol: OtlpProtocol) -> String {
    let mut endpoint = if endpoint.contains("://") {
        endpoint.trim_end_matches('/').to_owned()
    } else {
        format!("http://{}", endpoint.trim_end_matches('/'))
    };
    if protocol == OtlpProtocol::HttpProtobuf && !endpoint.ends_with("/v1/traces") {
        endpoint.push_str("/v1/traces");
    }
    endpoint
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized() {
        let check = |endpoint, protocol, expected| {
            assert_eq!(normalize_endpoint(endpoint, protocol), expected)
        };
        check(
            "127.0.0.1:4317",
            OtlpProtocol::Grpc,
            "http://127.0.0.1:4317",
        );
        check(
            "http://127.0.0.1:4317/",
            OtlpProtocol::Grpc,
            "http://127.0.0.1:4317",
        );
        check(
            "https://collector:4317",
            OtlpProtocol::Grpc,
            "https://collector:4317",
        );
        check(
            "127.0.0.1:4318",
            OtlpProtocol::HttpProtobuf,
            "http://127.0.0.1:4318/v1/traces",
        );
        check(
            "http://127.0.0.1:4318/v1/traces",
            OtlpProtocol::HttpProtobuf,
            "http://127.0.0.1:4318/v1/traces",
        );
    }
}
