//! One call to install logs and, when configured, OTLP trace export.
//!
//! Logs go to stderr filtered by `RUST_LOG` (default `info`). Traces are exported only when an
//! OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`, or [`TelemetryConfig::endpoint`]);
//! otherwise no OpenTelemetry layer is installed at all, so tracing costs what the log filter
//! costs and nothing more. Sampling is parent-based with a ratio for new traces: a client that
//! sends a sampled trace context is followed; new traces are kept with probability `ratio`.
//!
//! Garrison decides at its own roots (a frame without a client context, a message sent from no
//! span, such as a timer's) *before* creating any span: an unsampled frame or message creates no
//! span at all, and neither does anything it causes (the session hop, the entity's handling),
//! because the decision travels with the work ([`unsampled`]). Building spans only to drop them
//! at export cost a loaded battle server a quarter of its CPU at 1% sampling. Roots Garrison
//! kept carry `garrison.sampled = true`, which the exporter's sampler honours; other roots (your
//! own spans) are sampled by the ratio as usual. Restart spans are always kept.
//!
//! The exporter is built on the tokio multi-thread runtime the caller runs on, and shut down there
//! on a blocking thread ([`TelemetryGuard::shutdown`]): the tonic exporter deadlocks when flushed
//! from an actix thread (opentelemetry-rust #2583).

use std::{
    cell::Cell,
    hash::BuildHasher,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use garrison_protocol::TraceContext;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, registry::LookupSpan};

use crate::Error;

#[cfg(feature = "otlp")]
mod export;

/// How traces travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (Jaeger and collectors listen on 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// What to install.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// The OTLP endpoint; `None` exports nothing.
    pub endpoint: Option<String>,
    /// The OTLP transport.
    pub protocol: OtlpProtocol,
    /// The probability of keeping a new (parentless) trace, 0.0 to 1.0.
    pub sample_ratio: f64,
    /// The log filter (`RUST_LOG` syntax).
    pub log_filter: String,
    /// Which spans are exported (`RUST_LOG` syntax, applied to the trace layer alone).
    pub trace_filter: String,
}

impl TelemetryConfig {
    /// Reads the standard variables: `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default, or `http/protobuf`),
    /// `OTEL_TRACES_SAMPLER_ARG` (the ratio, default 1.0), and `RUST_LOG`.
    pub fn from_env(default_service_name: &str) -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        };
        TelemetryConfig {
            service_name: var("OTEL_SERVICE_NAME")
                .unwrap_or_else(|| default_service_name.to_owned()),
            endpoint: var("OTEL_EXPORTER_OTLP_ENDPOINT"),
            protocol: match var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
                Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
                _ => OtlpProtocol::Grpc,
            },
            sample_ratio: var("OTEL_TRACES_SAMPLER_ARG")
                .and_then(|ratio| ratio.parse().ok())
                .unwrap_or(1.0),
            log_filter: var("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
            trace_filter: "info".to_owned(),
        }
    }
}

/// Keeps the exporter alive; shut it down to flush what is buffered.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otlp")]
        return self.provider.is_some();
        #[cfg(not(feature = "otlp"))]
        false
    }

    /// Exports what is buffered now (on a blocking thread of the current tokio runtime).
    pub async fn flush(&self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.clone() {
            let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        }
    }

    /// Flushes and stops the exporter, waiting at most `limit`.
    pub async fn shutdown(self, limit: Duration) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider {
            let _ =
                tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(limit)).await;
        }
        #[cfg(not(feature = "otlp"))]
        let _ = limit;
    }
}

/// The OpenTelemetry context of a client's span (a frame's W3C trace context), so a server
/// span can become its child.
pub(crate) fn remote_parent(trace: &TraceContext) -> opentelemetry::Context {
    let span_context = SpanContext::new(
        TraceId::from_bytes(trace.trace_id),
        SpanId::from_bytes(trace.span_id),
        TraceFlags::new(trace.flags),
        true,
        TraceState::default(),
    );
    opentelemetry::Context::new().with_remote_span_context(span_context)
}

/// A span for work that arrived from another process with `trace` (a fleet's node receiving a
/// message another node sent from inside a traced span): a child of that remote span, so what
/// the work causes here joins the sender's trace. `Span::none()` without a trace context, or
/// with one whose sampled flag is off. Enter it while handing the work on: an entity message
/// sent inside it is handled in a child span.
pub fn remote_span(name: &'static str, trace: Option<&TraceContext>) -> tracing::Span {
    let Some(trace) = trace.filter(|trace| trace.flags & 1 == 1) else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!("garrison.fleet.receive", otel.name = name);
    let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, remote_parent(trace));
    span
}

/// `garrison.sampled`: the field marking a root span Garrison's head sampling kept.
pub const HEAD_SAMPLED: &str = "garrison.sampled";

/// The ratio [`sample_root`] keeps new traces at, as `f64` bits (1.0 until telemetry with an
/// exporter is built).
static HEAD_RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);

/// Whether a piece of work creates spans: decided once, before any span exists, at the root of
/// the work (a frame from a client, a message sent from no span), and carried with everything the
/// work causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// The trace is kept: the work creates its spans.
    Kept,
    /// The trace was sampled out: the work creates no span at all.
    Dropped,
}

impl Sampling {
    /// The one place Garrison decides. Work that inherits a decision keeps it; a message sent
    /// from a span belongs to that span's trace, which exists only because it was kept; a frame
    /// or message carrying a client's W3C trace context follows the client's sampled flag;
    /// anything else is a new trace, kept at the configured ratio.
    pub fn decide(
        inherited: Option<Sampling>,
        sent_from_span: bool,
        trace: Option<&TraceContext>,
    ) -> Sampling {
        if let Some(sampling) = inherited {
            return sampling;
        }
        let kept = sent_from_span || trace.map_or_else(sample_root, TraceContext::is_sampled);
        if kept {
            Sampling::Kept
        } else {
            Sampling::Dropped
        }
    }

    /// Whether spans are created.
    pub fn is_kept(self) -> bool {
        self == Sampling::Kept
    }
}

tokio::task_local! {
    /// The sampling decided for the work running now.
    static SAMPLING: Sampling;
}

thread_local! {
    static RANDOM: Cell<u64> = Cell::new({
        // Distinct per thread; quality needs are modest (a sampling coin).
        std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1
    });
}

/// Draws whether a new trace is kept: true with the configured ratio (always without an
/// exporter, so local subscribers see every span). [`Sampling::decide`] calls it for new traces.
pub fn sample_root() -> bool {
    let ratio = f64::from_bits(HEAD_RATIO.load(Ordering::Relaxed));
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let draw = RANDOM.with(|random| {
        // xorshift64
        let mut x = random.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        random.set(x);
        x
    });
    ((draw >> 11) as f64 / (1u64 << 53) as f64) < ratio
}

/// The sampling decided for the work running now, if any was.
pub fn current_sampling() -> Option<Sampling> {
    SAMPLING.try_with(|sampling| *sampling).ok()
}

/// Whether the work running now belongs to a trace that was sampled out: a game's own code
/// creates no span then either.
pub fn unsampled() -> bool {
    current_sampling() == Some(Sampling::Dropped)
}

/// Runs `work` under `sampling`, for everything it sends and [`current_sampling`].
pub fn with_sampling<R>(sampling: Sampling, work: impl FnOnce() -> R) -> R {
    SAMPLING.sync_scope(sampling, work)
}

/// [`with_sampling`] for a future: the decision holds across its awaits.
pub fn in_sampling<F: std::future::Future>(
    sampling: Sampling,
    work: F,
) -> impl std::future::Future<Output = F::Output> {
    SAMPLING.scope(sampling, work)
}

/// The W3C trace context of `span`, to put in a frame so the receiver's spans join its trace
/// (a client tracing its inputs, a server tracing a push). `None` when the span is not
/// recorded by an OpenTelemetry layer (no telemetry installed, or filtered out).
pub fn trace_context(span: &tracing::Span) -> Option<TraceContext> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| TraceContext {
        trace_id: span_context.trace_id().to_bytes(),
        span_id: span_context.span_id().to_bytes(),
        flags: span_context.trace_flags().to_u8(),
    })
}

fn filter(directives: &str) -> Result<EnvFilter, Error> {
    EnvFilter::try_new(directives).map_err(|error| Error::Telemetry {
        reason: format!("filter {directives:?}: {error}"),
    })
}

/// Builds the layers onto `base` without installing them anywhere.
fn layered<S>(base: S, config: &TelemetryConfig) -> Result<(Dispatch, TelemetryGuard), Error>
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync + 'static,
{
    // Log lines are events only: a log layer that also recorded spans would format the fields
    // of every span on every hot path (a third of a loaded battle server's CPU went there).
    // Spans are for the trace exporter.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter(&config.log_filter)?)
        .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            metadata.is_event()
        }));
    let Some(endpoint) = &config.endpoint else {
        return Ok((Dispatch::new(base.with(logs)), TelemetryGuard::default()));
    };
    #[cfg(feature = "otlp")]
    {
        let provider = export::provider(config, endpoint)?;
        HEAD_RATIO.store(
            config.sample_ratio.clamp(0.0, 1.0).to_bits(),
            Ordering::Relaxed,
        );
        let traces = export::layer(config, &provider)?;
        Ok((
            Dispatch::new(base.with(logs).with(traces)),
            TelemetryGuard {
                provider: Some(provider),
            },
        ))
    }
    #[cfg(not(feature = "otlp"))]
    Err(Error::Telemetry {
        reason: format!(
            "an OTLP endpoint ({endpoint}) is configured, but this build has no `otlp` feature"
        ),
    })
}

/// Builds the logging and tracing dispatcher without installing it (for tests, or to install it
/// for one thread with `tracing::dispatcher::set_default`).
///
/// # Errors
/// [`Error::Telemetry`] for a malformed filter or an exporter that cannot be built.
pub fn dispatch(config: &TelemetryConfig) -> Result<(Dispatch, TelemetryGuard), Error> {
    layered(tracing_subscriber::registry(), config)
}

/// Installs logging and, when configured, OTLP trace export for the whole process. Call it once,
/// from within the tokio multi-thread runtime, and keep the guard until shutdown.
///
/// # Errors
/// [`Error::Telemetry`] when the configuration is malformed or a global subscriber is already set.
pub fn install(config: &TelemetryConfig) -> Result<TelemetryGuard, Error> {
    let (dispatch, guard) = dispatch(config)?;
    tracing::dispatcher::set_global_default(dispatch).map_err(|error| Error::Telemetry {
        reason: error.to_string(),
    })?;
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_spans_cost_nothing_and_events_still_log() {
        let config = TelemetryConfig {
            service_name: "test".into(),
            endpoint: None,
            protocol: OtlpProtocol::Grpc,
            sample_ratio: 1.0,
            log_filter: "info".into(),
            trace_filter: "info".into(),
        };
        let (dispatch, guard) = dispatch(&config).unwrap();
        assert!(!guard.exporting());
        tracing::dispatcher::with_default(&dispatch, || {
            assert!(
                tracing::info_span!("hot.path").is_disabled(),
                "the log layer does not record spans"
            );
            assert!(
                tracing::event_enabled!(tracing::Level::INFO),
                "events are logged"
            );
        });
    }
}
