//! Telemetry shared by every runnel role.
//!
//! - [`init`] sets up `tracing`: an `EnvFilter` from `RUST_LOG` (default
//!   `info`), human or JSON lines (`RUNNEL_LOG_FORMAT=json`), and OTLP trace
//!   export over gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! - [`serve_prometheus`] installs the global `metrics` recorder and serves
//!   `/metrics` on the given address.
//! - [`RequestMetrics`] counts and times one request by service, method and
//!   outcome; every gRPC handler uses it.

use std::net::SocketAddr;
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Otlp(String),
    #[error("Prometheus exporter on {addr}: {reason}")]
    Prometheus { addr: SocketAddr, reason: String },
    #[error("tracing already initialised: {0}")]
    AlreadyInit(String),
}

/// Flushes pending spans on drop; keep it alive for the life of the process.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Initialises logging and tracing for a process named `service`.
pub fn init(service: &str) -> Result<TelemetryGuard, TelemetryError> {
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,tonic=info"))
    };
    let json = std::env::var("RUNNEL_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed()
    };

    let mut guard = TelemetryGuard::default();
    let otel_layer = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service.to_string())
                    .build(),
            )
            .build();
        let tracer = provider.tracer(service.to_string());
        guard.provider = Some(provider);
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(filter()),
        )
    } else {
        None
    };

    tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInit(e.to_string()))?;
    Ok(guard)
}

/// Latency buckets (seconds) for request and I/O histograms: 50 µs … 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder and serves it on `addr`
/// (`GET /metrics`). Call once per process, inside a Tokio runtime.
pub fn serve_prometheus(addr: SocketAddr) -> Result<PrometheusHandle, TelemetryError> {
    let err = |reason: String| TelemetryError::Prometheus { addr, reason };
    let builder = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| err(e.to_string()))?;
    let (recorder, exporter) = builder.build().map_err(|e| err(e.to_string()))?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| err(e.to_string()))?;
    tokio::spawn(async move {
        // The exporter only ends if its listener fails.
        if let Err(e) = exporter.await {
            tracing::error!(error = ?e, "Prometheus exporter stopped");
        }
    });
    metrics::gauge!("runnel_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// Counts and times one request; records on drop with the outcome set.
#[derive(Debug)]
pub struct RequestMetrics {
    service: &'static str,
    method: &'static str,
    outcome: &'static str,
    start: Instant,
}

impl RequestMetrics {
    pub fn start(service: &'static str, method: &'static str) -> Self {
        RequestMetrics {
            service,
            method,
            outcome: "ok",
            start: Instant::now(),
        }
    }

    /// Marks the request as failed with a short error label (a gRPC code or
    /// an error code name).
    pub fn fail(&mut self, outcome: &'static str) {
        self.outcome = outcome;
    }
}

impl Drop for RequestMetrics {
    fn drop(&mut self) {
        let labels = [
            ("service", self.service),
            ("method", self.method),
            ("outcome", self.outcome),
        ];
        metrics::counter!("runnel_requests_total", &labels).increment(1);
        metrics::histogram!(
            "runnel_request_duration_seconds",
            "service" => self.service,
            "method" => self.method
        )
        .record(self.start.elapsed().as_secs_f64());
    }
}
