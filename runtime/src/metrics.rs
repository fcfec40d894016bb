//! Prometheus metrics and health endpoints (feature `metrics`).
//!
//! [`Metrics`] reads what the runtime already counts (gateway counters, entity registries,
//! mailboxes, stores, crash causes) when it is scraped, in the OpenMetrics text format, with
//! the Prometheus project's own Rust client (`prometheus-client`). Recording costs the hot path
//! nothing it did not already pay, except the latency histograms (mailbox wait, tick lateness,
//! handler time: atomic buckets; handler time also takes a kind-wide read lock to find its
//! event's histogram) and the checkpoint counter, which a kind only records once it is
//! registered here. Every label set is bounded: a
//! kind, an event type (a protocol's message names), a close or refusal code, a crash
//! fingerprint (at most [`MAX_CAUSES`](crate::MAX_CAUSES) per kind); never a player, a key or a
//! session.
//!
//! [`Metrics::serve`] answers over HTTP/1.1 (hyper): `GET /metrics`, `GET /healthz` (the
//! process serves: always 200) and `GET /readyz` (200 while [`Health::set_ready`] says so, 503
//! otherwise: starting or draining), for Prometheus and for a load balancer's or Kubernetes'
//! probes. At most [`MAX_HTTP_CONNECTIONS`] are served at once; one more is closed at once. A
//! request head must arrive within 5 s, and a connection lasts at most 30 s (a client that stops
//! reading its response gives its slot back). A scrape whose collection failed is answered 500,
//! never a partial text.

use std::{
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{encoding::EncodeMetric, registry::Registry};
use tokio::{net::TcpListener, sync::watch};

/// What a game needs to add a collector of its own ([`Metrics::register_collector`]).
pub use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
};

use crate::{
    CrashCause, DurabilityStats, Entities, Entity, HistogramSnapshot, registry::WeakEntities,
    stats::refusals_sent,
};

/// The most HTTP connections [`Metrics::serve`] serves at once.
pub const MAX_HTTP_CONNECTIONS: usize = 64;

/// Whether the process accepts players: `/readyz` answers 200 only while ready.
#[derive(Debug, Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Says whether the process accepts players (false while starting and while draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the process accepts players.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// One entity kind read at a scrape.
struct KindReading {
    kind: &'static str,
    active: usize,
    passivated: usize,
    queued: usize,
    activations: u64,
    mailbox_wait: HistogramSnapshot,
    tick_lateness: HistogramSnapshot,
    handlers: Vec<(&'static str, HistogramSnapshot)>,
    causes: Vec<CrashCause>,
    dead_letters: u64,
    checkpoints: u64,
    ticks_late: u64,
    ticks_skipped: u64,
    durability: Option<DurabilityStats>,
}

/// A kind the metrics read, without keeping it alive.
trait KindSource: Send + Sync {
    fn read(&self) -> Option<KindReading>;
}

struct WeakKind<E: Entity>(WeakEntities<E>);

impl<E: Entity> KindSource for WeakKind<E> {
    fn read(&self) -> Option<KindReading> {
        let kind = self.0.upgrade()?;
        let (active, passivated, queued) = kind.census();
        let stats = kind.stats();
        let letters = kind.dead_letters();
        Some(KindReading {
            kind: E::KIND,
            active,
            passivated,
            queued,
            activations: kind.activations(),
            mailbox_wait: stats.mailbox_wait.snapshot(),
            tick_lateness: stats.tick_lateness.snapshot(),
            handlers: stats.handler_times(),
            causes: stats.causes(),
            dead_letters: letters.len() as u64 + letters.dropped(),
            checkpoints: stats.checkpoints(),
            ticks_late: kind.timer_ticks_late(),
            ticks_skipped: kind.timer_ticks_skipped(),
            durability: kind.durability(),
        })
    }
}

/// Everything registered, read at each scrape.
#[derive(Default)]
struct Sources {
    kinds: Mutex<Vec<Box<dyn KindSource>>>,
    limits: Mutex<Vec<crate::overload::AdaptiveLimit>>,
    #[cfg(feature = "gateway")]
    gateways: Mutex<Vec<gateway::GatewaySource>>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// Writes one metric family (one `# TYPE`) with a value per label set.
fn family<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    rows: impl IntoIterator<Item = (L, f64)>,
) -> Result<(), fmt::Error> {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in rows {
        let mut row = metric.encode_family(&labels)?;
        match metric_type {
            MetricType::Counter => row.encode_counter::<NoLabelSet, _, f64>(&value, None)?,
            _ => row.encode_gauge(&value)?,
        }
    }
    Ok(())
}

fn histograms<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, HistogramSnapshot)>,
) -> Result<(), fmt::Error> {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, histogram) in rows {
        // The encoder writes the `+Inf` bucket itself.
        let bounded: Vec<(f64, u64)> = histogram
            .buckets
            .iter()
            .copied()
            .filter(|(bound, _)| bound.is_finite())
            .collect();
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(histogram.sum, histogram.count, &bounded, None)?;
    }
    Ok(())
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let readings: Vec<KindReading> = self
            .kinds
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .filter_map(|source| source.read())
            .collect();
        let e = &mut encoder;
        family(
            e,
            "entities",
            "Entities in the registry, by kind and state (active: running; passivated: a snapshot in memory)",
            MetricType::Gauge,
            readings.iter().flat_map(|r| {
                [
                    ([("kind", r.kind), ("state", "active")], r.active as f64),
                    (
                        [("kind", r.kind), ("state", "passivated")],
                        r.passivated as f64,
                    ),
                ]
            }),
        )?;
        family(
            e,
            "entity_activations",
            "Entity activations (first runs, recoveries and reactivations after passivation)",
            MetricType::Counter,
            readings
                .iter()
                .map(|r| ([("kind", r.kind)], r.activations as f64)),
        )?;
        family(
            e,
            "mailbox_messages",
            "Messages waiting in the mailboxes of a kind's active entities",
            MetricType::Gauge,
            readings
                .iter()
                .map(|r| ([("kind", r.kind)], r.queued as f64)),
        )?;
        histograms(
            e,
            "mailbox_wait_seconds",
            "Time a message waited in its entity's mailbox before its handler ran",
            readings
                .iter()
                .map(|r| ([("kind", r.kind)], r.mailbox_wait.clone())),
        )?;
        histograms(
            e,
            "tick_lateness_seconds",
            "Time from a timer tick's due time to its handler's start (a room's tick overrun)",
            readings
                .iter()
                .filter(|r| r.tick_lateness.count > 0)
                .map(|r| ([("kind", r.kind)], r.tick_lateness.clone())),
        )?;
        histograms(
            e,
            "handler_seconds",
            "Time a handler took, by kind and game.event.type",
            readings.iter().flat_map(|r| {
                r.handlers
                    .iter()
                    .map(|(event, times)| ([("kind", r.kind), ("event", *event)], times.clone()))
            }),
        )?;
        family(
            e,
            "entity_restarts",
            "Entity incarnations that ended abnormally (each restarted, or activated afresh), by kind, exit and cause fingerprint",
            MetricType::Counter,
            readings.iter().flat_map(|r| {
                r.causes.iter().map(|cause| {
                    (
                        [
                            ("kind", r.kind.to_owned()),
                            ("exit", cause.exit.to_owned()),
                            ("cause", cause.cause.clone()),
                        ],
                        cause.count as f64,
                    )
                })
            }),
        )?;
        family(
            e,
            "dead_letters",
            "Accepted messages that were not handled (dead-lettered with a reason)",
            MetricType::Counter,
            readings
                .iter()
                .map(|r| ([("kind", r.kind)], r.dead_letters as f64)),
        )?;
        family(
            e,
            "checkpoints",
            "Entity state snapshots taken (in memory; the durable ones are then written to the store)",
            MetricType::Counter,
            readings
                .iter()
                .map(|r| ([("kind", r.kind)], r.checkpoints as f64)),
        )?;
        family(
            e,
            "timer_ticks",
            "Timer ticks that were late (delivered over a period after due: a tick overrun) or skipped (the mailbox was full)",
            MetricType::Counter,
            readings.iter().flat_map(|r| {
                [
                    ([("kind", r.kind), ("outcome", "late")], r.ticks_late as f64),
                    (
                        [("kind", r.kind), ("outcome", "skipped")],
                        r.ticks_skipped as f64,
                    ),
                ]
            }),
        )?;
        store_families(e, &readings)?;
        overload_families(
            e,
            &self
                .limits
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        )?;
        family(
            e,
            "refusals",
            "Refusals the server told clients (Refused frames queued for them), by refusal code",
            MetricType::Counter,
            refusals_sent()
                .into_iter()
                .map(|(code, count)| ([("code", code.label())], count as f64)),
        )?;
        #[cfg(feature = "gateway")]
        gateway::encode(
            e,
            &self
                .gateways
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        )?;
        Ok(())
    }
}

fn overload_families(
    e: &mut DescriptorEncoder<'_>,
    limits: &[crate::overload::AdaptiveLimit],
) -> Result<(), fmt::Error> {
    use crate::overload::Priority;
    let readings: Vec<_> = limits
        .iter()
        .map(|limit| (limit.name(), limit.stats()))
        .collect();
    family(
        e,
        "overload_limit",
        "The adaptive overload limit now, by limiter",
        MetricType::Gauge,
        readings
            .iter()
            .map(|(name, s)| ([("limiter", *name)], s.limit as f64)),
    )?;
    family(
        e,
        "overload_in_use",
        "What the limiter counts as in use now",
        MetricType::Gauge,
        readings
            .iter()
            .map(|(name, s)| ([("limiter", *name)], s.in_use as f64)),
    )?;
    family(
        e,
        "overload_signal_seconds",
        "The limiter's last latency signal (watched kinds' mailbox wait P99 over a window; twice the target after a late tick)",
        MetricType::Gauge,
        readings
            .iter()
            .map(|(name, s)| ([("limiter", *name)], s.signal.as_secs_f64())),
    )?;
    for (metric, help, pick) in [
        (
            "overload_admitted",
            "Requests the limiter admitted, by priority",
            (|s: &crate::overload::OverloadStats| s.admitted) as fn(&_) -> [u64; 3],
        ),
        (
            "overload_shed",
            "Requests the limiter shed (refused with a retry-after), by priority",
            |s: &crate::overload::OverloadStats| s.shed,
        ),
    ] {
        family(
            e,
            metric,
            help,
            MetricType::Counter,
            readings.iter().flat_map(|(name, s)| {
                Priority::ALL.iter().zip(pick(s)).map(|(priority, count)| {
                    (
                        [("limiter", *name), ("priority", priority.label())],
                        count as f64,
                    )
                })
            }),
        )?;
    }
    Ok(())
}

fn store_families(
    e: &mut DescriptorEncoder<'_>,
    readings: &[KindReading],
) -> Result<(), fmt::Error> {
    let durable: Vec<(&'static str, &DurabilityStats)> = readings
        .iter()
        .filter_map(|r| r.durability.as_ref().map(|stats| (r.kind, stats)))
        .collect();
    let counter = |e: &mut DescriptorEncoder<'_>,
                   name: &str,
                   help: &str,
                   value: fn(&DurabilityStats) -> u64| {
        family(
            e,
            name,
            help,
            MetricType::Counter,
            durable
                .iter()
                .map(|(kind, stats)| ([("kind", *kind)], value(stats) as f64)),
        )
    };
    counter(
        e,
        "store_batches",
        "Batches written to the state store (one transaction each)",
        |s| s.batches,
    )?;
    counter(
        e,
        "store_writes",
        "Writes applied to the state store (puts, appends, deletes)",
        |s| s.writes,
    )?;
    counter(
        e,
        "store_written_bytes",
        "Snapshot and log bytes written to the state store",
        |s| s.bytes,
    )?;
    counter(
        e,
        "store_errors",
        "State store batches that failed (each retried with backoff)",
        |s| s.errors,
    )?;
    counter(
        e,
        "store_fenced_writes",
        "Writes the store refused by fencing (a newer owner holds the entity)",
        |s| s.fenced,
    )?;
    counter(
        e,
        "store_unqueued_changes",
        "Changes not queued for the store because its pending set was full (queued again by the next change)",
        |s| s.dropped,
    )?;
    family(
        e,
        "store_pending_writes",
        "Entities waiting to be written to the state store",
        MetricType::Gauge,
        durable
            .iter()
            .map(|(kind, stats)| ([("kind", *kind)], stats.pending as f64)),
    )?;
    family(
        e,
        "store_degraded",
        "1 while the kind's state store is failing",
        MetricType::Gauge,
        durable
            .iter()
            .map(|(kind, stats)| ([("kind", *kind)], f64::from(u8::from(stats.degraded)))),
    )
}

#[cfg(feature = "gateway")]
mod gateway {
    use std::sync::Arc;

    use prometheus_client::{encoding::DescriptorEncoder, metrics::MetricType};

    use super::family;
    use crate::{
        Sessions,
        gateway::{CloseCode, Counters},
    };

    pub(super) struct GatewaySource {
        pub(super) counters: Arc<Counters>,
        pub(super) sessions: Arc<Sessions>,
    }

    pub(super) fn encode(
        e: &mut DescriptorEncoder<'_>,
        gateways: &[GatewaySource],
    ) -> Result<(), std::fmt::Error> {
        if gateways.is_empty() {
            return Ok(());
        }
        let readings: Vec<_> = gateways
            .iter()
            .map(|gateway| crate::gateway::GatewayMetrics::read(&gateway.counters))
            .collect();
        let sum = |value: fn(&crate::gateway::GatewayMetrics) -> u64| {
            readings.iter().map(value).sum::<u64>() as f64
        };
        let no_labels: [(&str, &str); 0] = [];
        family(
            e,
            "gateway_connections_accepted",
            "Connections accepted (including those refused as server_full)",
            MetricType::Counter,
            [(no_labels, sum(|m| m.accepted))],
        )?;
        family(
            e,
            "gateway_connections",
            "Connections open now",
            MetricType::Gauge,
            [(no_labels, sum(|m| m.active as u64))],
        )?;
        let sessions: usize = gateways.iter().map(|gateway| gateway.sessions.len()).sum();
        family(
            e,
            "gateway_sessions",
            "Sessions open now (connected, or detached within their resume window)",
            MetricType::Gauge,
            [(no_labels, sessions as f64)],
        )?;
        family(
            e,
            "gateway_frames",
            "Frames received from and sent to clients",
            MetricType::Counter,
            [
                ([("direction", "in")], sum(|m| m.frames_in)),
                ([("direction", "out")], sum(|m| m.frames_out)),
            ],
        )?;
        family(
            e,
            "gateway_frame_bytes",
            "Frame bytes received from and sent to clients",
            MetricType::Counter,
            [
                ([("direction", "in")], sum(|m| m.bytes_in)),
                ([("direction", "out")], sum(|m| m.bytes_out)),
            ],
        )?;
        let peer: f64 = sum(|m| m.peer_closed);
        family(
            e,
            "gateway_closes",
            "Connections closed, by close code (client_closed: the client ended it)",
            MetricType::Counter,
            std::iter::once(([("code", "client_closed")], peer)).chain(CloseCode::ALL.iter().map(
                |code| {
                    let count: u64 = readings.iter().map(|m| m.closed_with(*code)).sum();
                    ([("code", code.label())], count as f64)
                },
            )),
        )
    }
}

/// The metrics registry of one process, and its health.
pub struct Metrics {
    registry: Registry,
    sources: Arc<Sources>,
    health: Health,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("ready", &self.health.is_ready())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// An empty registry (every name prefixed `garrison_`), not ready.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("garrison");
        let sources = Arc::new(Sources::default());
        registry.register_collector(Box::new(sources.clone()));
        Metrics {
            registry,
            sources,
            health: Health::default(),
        }
    }

    /// Reads entity kind `E` at each scrape (entities by state, activations, mailbox depth and
    /// wait, handler time per event, restarts by cause, dead letters, checkpoints, timer
    /// overruns, store writes), and its overload limit if it has one
    /// ([`KindConfig::overload`](crate::KindConfig)), and starts timing its mailboxes and
    /// handlers. The registry does not keep the kind alive.
    pub fn kind<E: Entity>(&mut self, kind: &Entities<E>) -> &mut Self {
        kind.stats().time_handlers();
        if let Some(limit) = kind.overload_limit() {
            self.limit(limit);
        }
        self.sources
            .kinds
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(Box::new(WeakKind(kind.downgrade())));
        self
    }

    /// Reads `gateway`'s counters at each scrape (connections, sessions, frames and bytes in
    /// and out, closes by code), and its limit on new sessions if it has one
    /// ([`GatewayBuilder::overload`](crate::gateway::GatewayBuilder::overload)). Several
    /// gateways are summed.
    #[cfg(feature = "gateway")]
    pub fn gateway<P: garrison_protocol::Protocol>(
        &mut self,
        gateway: &crate::gateway::Gateway<P>,
    ) -> &mut Self {
        if let Some(limit) = gateway.overload_limit() {
            self.limit(limit);
        }
        let (counters, sessions) = gateway.metric_sources();
        self.sources
            .gateways
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(gateway::GatewaySource { counters, sessions });
        self
    }

    /// Reads an adaptive overload limit at each scrape (its limit, what is in use, its signal,
    /// admitted and shed requests by priority).
    pub fn limit(&mut self, limit: &crate::overload::AdaptiveLimit) -> &mut Self {
        self.sources
            .limits
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(limit.clone());
        self
    }

    /// Registers a metric of the game's own (named `garrison_<name>`).
    pub fn register(
        &mut self,
        name: &str,
        help: &str,
        metric: impl EncodeMetric + Send + Sync + fmt::Debug + 'static,
    ) -> &mut Self {
        self.registry.register(name, help, metric);
        self
    }

    /// Registers a collector of the game's own, read at each scrape.
    pub fn register_collector(&mut self, collector: impl Collector) -> &mut Self {
        self.registry.register_collector(Box::new(collector));
        self
    }

    /// The health `/readyz` reports; clone it to flip readiness while serving.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Everything, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        self.try_encode().unwrap_or_default()
    }

    /// Everything, or `None` when a collector failed (the text would be incomplete).
    fn try_encode(&self) -> Option<String> {
        let mut text = String::new();
        // Writing to a String cannot fail; a collector's own error ends the text early.
        match prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            Ok(()) => Some(text),
            Err(error) => {
                tracing::warn!(%error, "encoding the metrics failed; the scrape is answered 500");
                None
            }
        }
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `address` until the returned server is
    /// stopped or dropped.
    ///
    /// # Errors
    /// The error binding `address`.
    pub async fn serve(self, address: SocketAddr) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(address).await?;
        let local = listener.local_addr()?;
        let health = self.health.clone();
        let metrics = Arc::new(self);
        let (stop, mut stopped) = watch::channel(false);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(error) => {
                            tracing::warn!(%error, "metrics endpoint: accept failed");
                            // Out of descriptors, typically: let some close first.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = stopped.changed() => return,
                };
                // Over the bound: the connection is closed at once (dropped).
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    continue;
                };
                let metrics = metrics.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let service = hyper::service::service_fn(move |request| {
                        let response = respond(&metrics, &request);
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(5))
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    // Bounded: a client that stops reading cannot hold its slot.
                    let lifetime = tokio::time::sleep(Duration::from_secs(30));
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        _ = lifetime => {}
                        _ = stopped.changed() => {
                            // The response under way is finished (bounded: a client that does
                            // not read it is dropped).
                            connection.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                        }
                    }
                });
            }
        });
        Ok(MetricsServer {
            address: local,
            health,
            stop,
            task: Some(task),
        })
    }

    /// What a `GET` of `path` is answered with.
    fn answer(&self, path: &str) -> (StatusCode, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        match path {
            "/metrics" => match self.try_encode() {
                Some(text) => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                None => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "collecting the metrics failed; see the server's log\n".to_owned(),
                ),
            },
            "/healthz" => (StatusCode::OK, TEXT, "ok\n".to_owned()),
            "/readyz" if self.health.is_ready() => (StatusCode::OK, TEXT, "ready\n".to_owned()),
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "not ready: starting or draining\n".to_owned(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                TEXT,
                "not found: try /metrics, /healthz or /readyz\n".to_owned(),
            ),
        }
    }
}

fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.method() == Method::GET {
        metrics.answer(request.uri().path())
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET is served\n".to_owned(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The running HTTP endpoint of [`Metrics::serve`].
#[derive(Debug)]
pub struct MetricsServer {
    address: SocketAddr,
    health: Health,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MetricsServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// The health `/readyz` reports.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Stops listening, and tells open connections to end after their current response (each
    /// within 5 s); returns once the listener is closed.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
