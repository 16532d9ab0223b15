//! Tail sampling in process: buffer the spans of each local trace and decide, when its local
//! root ends, whether to keep it: it errored, it was slow, or it falls in a ratio.
//!
//! ```
//! use std::time::Duration;
//! use ms_tracing::tail_sampling::{Overflow, TailSampling, TailSamplingProcessor};
//! use opentelemetry::trace::{Status, TraceContextExt, Tracer, TracerProvider as _};
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor};
//!
//! let exporter = InMemorySpanExporter::default();
//! let config = TailSampling::builder()
//!     .keep_errors(true)
//!     .slower_than(Duration::from_secs(2))
//!     .ratio(0.0) // nothing else
//!     .max_traces(1_000)
//!     .max_spans_per_trace(500)
//!     .overflow(Overflow::Keep)
//!     .build();
//! let processor = TailSamplingProcessor::new(config, SimpleSpanProcessor::new(exporter.clone()));
//! let stats = processor.stats();
//! let provider = SdkTracerProvider::builder().with_span_processor(processor).build();
//! let tracer = provider.tracer("example");
//!
//! // A fast, successful trace is dropped...
//! tracer.in_span("ok", |_| tracer.in_span("child", |_| {}));
//! // ...one whose child failed is kept, child and root together.
//! tracer.in_span("failed", |_| {
//!     tracer.in_span("child", |cx| cx.span().set_status(Status::error("boom")))
//! });
//!
//! let kept = exporter.get_finished_spans()?;
//! assert_eq!(kept.iter().map(|s| &*s.name).collect::<Vec<_>>(), ["child", "failed"]);
//! assert_eq!((stats.kept_traces(), stats.dropped_traces()), (1, 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A *local trace* is what one process sees of a trace; its *local roots* are the spans whose
//! parent is remote or absent (an incoming request, a consumed message). The decision is made
//! when the last open local root of the trace ends; spans that end after that (a task that
//! outlived its request) follow the decision, which is remembered in a bounded cache. A late
//! span whose decision has already left the cache is buffered as a trace of its own and, having
//! no local root, is eventually decided by the [`Overflow`] policy when the budget evicts it.
//!
//! Memory is bounded: at most [`TailSampling::max_traces`] traces are buffered and at most
//! [`TailSampling::max_spans_per_trace`] spans per trace. A trace that would break a bound is
//! decided at once by the [`Overflow`] policy: kept (its spans go on now; nothing is lost) or
//! dropped.
//!
//! Head sampling still runs first: a trace the head sampler drops is never recorded, so pair
//! tail sampling with [`HeadSampler::AlwaysOn`](crate::head_sampling::HeadSampler::AlwaysOn) or
//! a parent-based sampler.

mod config;
mod processor;

pub use config::{
    DEFAULT_DECISION_CACHE, DEFAULT_MAX_SPANS_PER_TRACE, DEFAULT_MAX_TRACES, Overflow,
    TailSampling, TailSamplingBuilder,
};
pub use processor::{TailSamplingProcessor, TailSamplingStats};
