//! One setup call: a `tracing` subscriber with an OpenTelemetry layer, an exporter chosen by
//! configuration, head sampling, optional tail sampling, and this crate's propagator.
//!
//! Quiet by default: [`init`](crate::init()) with nothing set exports spans over OTLP when the
//! crate is built with the `otlp` feature (the OpenTelemetry specification's default) and
//! nowhere otherwise; it never prints spans unless asked to (`OTEL_TRACES_EXPORTER=console`).
//! Logs go to stdout, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]).
//!
//! | variable | what it does | unset |
//! |---|---|---|
//! | `OTEL_TRACES_EXPORTER` | `otlp`, `console` (spans printed to stdout; `stdout` is accepted too) or `none` | `otlp` with the `otlp` feature, else `none` |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the collector, read by the OTLP exporter | `http://localhost:4317` |
//! | `OTEL_SERVICE_NAME` | `service.name`, over the name given in code | the name given in code |
//! | `OTEL_RESOURCE_ATTRIBUTES` | more resource attributes (`key=value,…`) | none |
//! | `OTEL_SDK_DISABLED` | `true`: no span is exported (propagation still works) | `false` |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | the head sampler (see [`crate::head_sampling`]) | `parentbased_always_on` |
//! | `RUST_LOG` | the log filter (not the span filter: see [`TracingBuilder::span_filter`]) | [`DEFAULT_FILTER`] |
//!
//! Exported spans carry no source locations (`code.file.path`, which for a dependency is an
//! absolute path on the build machine) unless [`TracingBuilder::code_location`] asks for them.
//!
//! ```
//! use ms_tracing::init::{SpanExport, TracingBuilder};
//!
//! // Development: spans printed to stdout, logs as JSON lines. `install()` would make this the
//! // process-wide subscriber; `build()` keeps it local, as tests and this example want.
//! let tracing = TracingBuilder::new("invoicing")
//!     .exporter(SpanExport::Stdout)
//!     .json_logs(true)
//!     .build()?;
//! tracing::dispatcher::with_default(tracing.dispatch(), || {
//!     tracing::info_span!("startup").in_scope(|| tracing::info!("ready"));
//! });
//! tracing.shutdown()?;
//! # Ok::<(), ms_tracing::init::InitError>(())
//! ```

mod level2_tracer;

pub use level2_tracer::{Level2Span, Level2Tracer};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::trace::{SdkTracerProvider, SimpleSpanProcessor, SpanProcessor};
use tracing::Dispatch;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{EnvFilter, Registry};

use crate::head_sampling::HeadSampler;
use crate::propagation::new_propagator;
use crate::tail_sampling::{TailSampling, TailSamplingProcessor};

/// The variable that chooses the exporter, as the OpenTelemetry specification names it.
pub const OTEL_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
/// The variable that names the service, over the name given in code.
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// The variable that turns the SDK off (`true`): nothing is exported.
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

/// Whether exported spans carry `code.file.path`, `code.line.number` and `code.module.name`:
/// no, since the path of a dependency's file is an absolute path on the machine that built the
/// binary.
pub const DEFAULT_CODE_LOCATION: bool = false;

/// The spans exported unless [`TracingBuilder::span_filter`] says otherwise: `info` and above,
/// which is every span of this crate's layers and none of hyper's or h2's `trace`-level ones.
pub const DEFAULT_SPAN_FILTER: &str = "info";

/// The log filter used when neither `RUST_LOG` nor [`TracingBuilder::filter`] says otherwise.
pub const DEFAULT_FILTER: &str = "info";

/// Where finished spans go.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum SpanExport {
    /// Nowhere (logs still go to stdout; trace context is still propagated). The default of
    /// [`TracingBuilder::new`].
    #[default]
    None,
    /// Printed to stdout (`OTEL_TRACES_EXPORTER=console`), for development.
    Stdout,
    /// OTLP over gRPC (tonic) to `endpoint` (the exporter's default, `http://localhost:4317`,
    /// or `OTEL_EXPORTER_OTLP_ENDPOINT`, when `None`), batched.
    #[cfg(feature = "otlp")]
    #[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
    Otlp {
        /// The collector's address.
        endpoint: Option<String>,
    },
    /// Kept in memory, for tests (see [`crate::testing`]).
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    InMemory(opentelemetry_sdk::trace::InMemorySpanExporter),
}

impl SpanExport {
    /// The exporter named by `OTEL_TRACES_EXPORTER`'s value: `otlp`, `console` (or `stdout`),
    /// `none`. Unset means `otlp` when this crate is built with the `otlp` feature (the
    /// specification's default), `none` otherwise: spans are never printed unless asked for.
    pub fn from_env_value(value: Option<&str>) -> Result<Self, InitError> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            #[cfg(feature = "otlp")]
            None | Some("" | "otlp") => Ok(Self::Otlp { endpoint: None }),
            #[cfg(not(feature = "otlp"))]
            None | Some("") => Ok(Self::None),
            Some("console" | "stdout") => Ok(Self::Stdout),
            Some("none") => Ok(Self::None),
            Some(other) => Err(InitError::UnknownExporter(other.to_owned())),
        }
    }
}

/// Why setup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// `OTEL_TRACES_EXPORTER` names an exporter this build does not have (`otlp` needs the
    /// `otlp` feature).
    #[error("OTEL_TRACES_EXPORTER={0:?} is not an exporter this build has")]
    UnknownExporter(String),
    /// The log filter does not parse.
    #[error("invalid log filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// The exporter could not be built.
    #[error("span exporter: {0}")]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
    /// Flushing or shutting down the span pipeline failed.
    #[error("span pipeline: {0}")]
    Pipeline(#[from] OTelSdkError),
}

/// Builder for the tracing pipeline; [`TracingBuilder::install`] is the one setup call.
#[derive(Debug)]
#[must_use]
pub struct TracingBuilder {
    service_name: String,
    export: SpanExport,
    sampler: HeadSampler,
    tail: Option<TailSampling>,
    filter: Option<String>,
    span_filter: Option<String>,
    json_logs: bool,
    log_writer: Option<BoxMakeWriter>,
    code_location: bool,
}

/// The built pipeline: a subscriber ([`Tracing::dispatch`]) and the span provider behind it.
#[derive(Debug)]
pub struct Tracing {
    dispatch: Dispatch,
    provider: SdkTracerProvider,
}

/// Returned by [`TracingBuilder::install`]: flushes and shuts down the span pipeline when
/// dropped, so the last spans of a process are not lost on exit.
#[derive(Debug)]
#[must_use = "dropping the guard shuts the span pipeline down"]
pub struct TracingGuard {
    provider: SdkTracerProvider,
}

impl TracingBuilder {
    /// Defaults: [`SpanExport::None`], [`HeadSampler::ParentBasedAlwaysOn`], no tail sampling,
    /// log filter from `RUST_LOG` or [`DEFAULT_FILTER`], span filter [`DEFAULT_SPAN_FILTER`],
    /// text logs to stdout, no code locations ([`DEFAULT_CODE_LOCATION`]).
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            export: SpanExport::default(),
            sampler: HeadSampler::default(),
            tail: None,
            filter: None,
            span_filter: None,
            json_logs: false,
            log_writer: None,
            code_location: DEFAULT_CODE_LOCATION,
        }
    }

    /// Exporter, service name and head sampler from the environment, as the
    /// [module docs](self) list: `OTEL_TRACES_EXPORTER`, `OTEL_SDK_DISABLED`,
    /// `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`
    /// (`OTEL_RESOURCE_ATTRIBUTES` and the OTLP endpoint variables are read when the pipeline
    /// is built).
    pub fn from_env(mut self) -> Result<Self, InitError> {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        self.export = SpanExport::from_env_value(var(OTEL_TRACES_EXPORTER).as_deref())?;
        if var(OTEL_SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            self.export = SpanExport::None;
        }
        if let Some(name) = var(OTEL_SERVICE_NAME) {
            name.trim().clone_into(&mut self.service_name);
        }
        self.sampler = HeadSampler::from_env_or_default();
        Ok(self)
    }

    /// Whether exported spans carry their source location (`code.file.path`, `code.line.number`,
    /// `code.module.name`); default [`DEFAULT_CODE_LOCATION`].
    pub fn code_location(mut self, on: bool) -> Self {
        self.code_location = on;
        self
    }

    /// Where spans go.
    pub fn exporter(mut self, export: SpanExport) -> Self {
        self.export = export;
        self
    }

    /// The head sampler.
    pub fn sampler(mut self, sampler: HeadSampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// Buffer each local trace and decide at its end (see [`crate::tail_sampling`]). Pair it
    /// with a head sampler that records everything it should be able to keep
    /// ([`HeadSampler::AlwaysOn`] or parent-based).
    pub fn tail_sampling(mut self, tail: TailSampling) -> Self {
        self.tail = Some(tail);
        self
    }

    /// The log filter directives (`EnvFilter` syntax), instead of `RUST_LOG`. Logs only: spans
    /// have their own filter, so that quieter logs never break a distributed trace.
    pub fn filter(mut self, directives: impl Into<String>) -> Self {
        self.filter = Some(directives.into());
        self
    }

    /// Which spans are exported (`EnvFilter` syntax; default [`DEFAULT_SPAN_FILTER`]).
    pub fn span_filter(mut self, directives: impl Into<String>) -> Self {
        self.span_filter = Some(directives.into());
        self
    }

    /// Logs as JSON lines (one object per event, with its spans) instead of text.
    pub fn json_logs(mut self, json: bool) -> Self {
        self.json_logs = json;
        self
    }

    /// Where logs go (default stdout): a file, a buffer in a test.
    pub fn log_writer<W>(mut self, writer: W) -> Self
    where
        W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        self.log_writer = Some(BoxMakeWriter::new(writer));
        self
    }

    /// The pipeline, not installed anywhere.
    pub fn build(mut self) -> Result<Tracing, InitError> {
        let filter = match &self.filter {
            Some(directives) => EnvFilter::try_new(directives)?,
            None => {
                EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(DEFAULT_FILTER))?
            }
        };
        let span_filter =
            EnvFilter::try_new(self.span_filter.as_deref().unwrap_or(DEFAULT_SPAN_FILTER))?;
        let provider = self.provider()?;
        let tracer = Level2Tracer::new(provider.tracer("ms-tracing"));
        // Spans and logs are filtered apart: with one filter, `RUST_LOG=warn` would disable the
        // request spans, and with them the trace context that outgoing calls carry on.
        let writer = self
            .log_writer
            .take()
            .unwrap_or_else(|| BoxMakeWriter::new(std::io::stdout));
        let logs = if self.json_logs {
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_filter(filter)
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_filter(filter)
                .boxed()
        };
        let subscriber = Registry::default()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_location(self.code_location)
                    .with_filter(span_filter),
            )
            .with(logs);
        Ok(Tracing {
            dispatch: Dispatch::new(subscriber),
            provider,
        })
    }

    /// Builds the pipeline and installs it process-wide: the global `tracing` subscriber, the
    /// global OpenTelemetry tracer provider, and this crate's propagator as the global
    /// propagator (so other libraries that inject through `opentelemetry::global` agree).
    pub fn install(self) -> Result<TracingGuard, InitError> {
        let Tracing { dispatch, provider } = self.build()?;
        tracing::dispatcher::set_global_default(dispatch)
            .map_err(|_| InitError::AlreadyInstalled)?;
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(new_propagator());
        Ok(TracingGuard { provider })
    }

    // Only the OTLP exporter can fail to build; without that feature the `Result` is still the
    // one shape `build` consumes.
    #[cfg_attr(not(feature = "otlp"), allow(clippy::unnecessary_wraps))]
    fn provider(&self) -> Result<SdkTracerProvider, InitError> {
        let builder = SdkTracerProvider::builder()
            .with_sampler(self.sampler.to_sdk())
            .with_resource(
                Resource::builder()
                    .with_service_name(self.service_name.clone())
                    .build(),
            );
        let builder = match &self.export {
            SpanExport::None => return Ok(builder.build()),
            SpanExport::Stdout => self.with_processor(
                builder,
                SimpleSpanProcessor::new(opentelemetry_stdout::SpanExporter::default()),
            ),
            #[cfg(feature = "otlp")]
            SpanExport::Otlp { endpoint } => {
                use opentelemetry_otlp::WithExportConfig as _;
                // tonic's channel spawns onto the current runtime, and panics without one.
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(InitError::Exporter(
                        "the OTLP exporter needs a Tokio runtime: set up tracing inside it \
                         (in `#[tokio::main]`, or after `Runtime::enter`)"
                            .to_owned(),
                    ));
                }
                let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                if let Some(endpoint) = endpoint {
                    exporter = exporter.with_endpoint(endpoint.clone());
                }
                let exporter = exporter
                    .build()
                    .map_err(|e| InitError::Exporter(e.to_string()))?;
                self.with_processor(
                    builder,
                    opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build(),
                )
            }
            #[cfg(feature = "testing")]
            SpanExport::InMemory(exporter) => {
                self.with_processor(builder, SimpleSpanProcessor::new(exporter.clone()))
            }
        };
        Ok(builder.build())
    }

    fn with_processor<P: SpanProcessor + 'static>(
        &self,
        builder: opentelemetry_sdk::trace::TracerProviderBuilder,
        processor: P,
    ) -> opentelemetry_sdk::trace::TracerProviderBuilder {
        match &self.tail {
            Some(tail) => {
                builder.with_span_processor(TailSamplingProcessor::new(tail.clone(), processor))
            }
            None => builder.with_span_processor(processor),
        }
    }
}

impl Tracing {
    /// The subscriber, to install or to use with `tracing::dispatcher::with_default`.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// The span provider (to flush it, or to create tracers directly).
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Exports what is buffered and stops the span pipeline.
    pub fn shutdown(self) -> Result<(), InitError> {
        self.provider.shutdown()?;
        Ok(())
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            // The subscriber may be the very thing that failed: stderr is the last resort.
            eprintln!("ms-tracing: span pipeline shutdown failed: {error}");
        }
    }
}
