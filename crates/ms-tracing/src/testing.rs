//! An in-memory span pipeline so tests can assert on the spans a piece of code produced.
//!
//! ```
//! use ms_tracing::testing::TestTracing;
//!
//! let tracing = TestTracing::new();
//! tracing::dispatcher::with_default(tracing.dispatch(), || {
//!     let parent = tracing::info_span!("parent");
//!     parent.in_scope(|| tracing::info_span!("child", answer = 42).in_scope(|| {}));
//! });
//! let child = tracing.span("child");
//! let parent = tracing.span("parent");
//! assert_eq!(child.parent_span_id, parent.span_context.span_id());
//! assert_eq!(TestTracing::attribute(&child, "answer"), Some("42".to_owned()));
//! ```
//!
//! The dispatch is not global: use it with `tracing::dispatcher::with_default` or
//! `set_default` (current thread) or `tracing::instrument::WithSubscriber::with_subscriber`
//! (a future). A single-threaded tokio runtime (`#[tokio::test]`'s default) keeps every task
//! of a test under one `set_default`.

use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tracing::Dispatch;

use crate::head_sampling::HeadSampler;
use crate::init::{SpanExport, Tracing, TracingBuilder};
use crate::tail_sampling::TailSampling;

/// A tracing pipeline whose finished spans stay in memory.
#[derive(Debug)]
pub struct TestTracing {
    tracing: Tracing,
    exporter: InMemorySpanExporter,
}

impl TestTracing {
    /// Every `info` span recorded and kept ([`HeadSampler::AlwaysOn`]); logs at `warn` and
    /// above.
    pub fn new() -> Self {
        Self::with(|builder| builder)
    }

    /// As [`TestTracing::new`], with tail sampling in front of the exporter.
    pub fn with_tail_sampling(tail: TailSampling) -> Self {
        Self::with(|builder| builder.tail_sampling(tail))
    }

    /// A pipeline configured by `configure`, starting from [`TestTracing::new`]'s settings;
    /// the exporter is always the in-memory one.
    ///
    /// # Panics
    /// When the configuration does not build (a test helper fails loudly).
    pub fn with(configure: impl FnOnce(TracingBuilder) -> TracingBuilder) -> Self {
        let exporter = InMemorySpanExporter::default();
        let builder = TracingBuilder::new("test")
            .sampler(HeadSampler::AlwaysOn)
            .filter("warn");
        let tracing = configure(builder)
            .exporter(SpanExport::InMemory(exporter.clone()))
            .build()
            .unwrap_or_else(|error| panic!("test tracing pipeline: {error}"));
        Self { tracing, exporter }
    }

    /// The subscriber.
    pub fn dispatch(&self) -> &Dispatch {
        self.tracing.dispatch()
    }

    /// Makes this pipeline the current thread's subscriber until the guard drops.
    pub fn set_default(&self) -> tracing::dispatcher::DefaultGuard {
        tracing::dispatcher::set_default(self.dispatch())
    }

    /// Every finished, exported span so far, in the order they ended.
    ///
    /// # Panics
    /// When the pipeline cannot be flushed or read (a span could be missing).
    pub fn spans(&self) -> Vec<SpanData> {
        // A failed flush means a span may be missing: a test wants to know.
        if let Err(error) = self.tracing.provider().force_flush() {
            panic!("flushing test spans: {error}");
        }
        self.exporter
            .get_finished_spans()
            .unwrap_or_else(|error| panic!("reading test spans: {error}"))
    }

    /// The one finished span called `name`.
    ///
    /// # Panics
    /// When there is no such span, or more than one (this is an assertion helper).
    pub fn span(&self, name: &str) -> SpanData {
        let mut found: Vec<SpanData> = self
            .spans()
            .into_iter()
            .filter(|span| span.name == name)
            .collect();
        match found.len() {
            1 => found.remove(0),
            n => panic!(
                "expected one span named {name:?}, found {n}: {:#?}",
                self.names()
            ),
        }
    }

    /// The names of the finished spans, in the order they ended.
    pub fn names(&self) -> Vec<String> {
        self.spans()
            .into_iter()
            .map(|span| span.name.into_owned())
            .collect()
    }

    /// Forgets the spans finished so far.
    pub fn reset(&self) {
        self.exporter.reset();
    }

    /// The value of `span`'s attribute `key`, as text.
    pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }
}

impl Default for TestTracing {
    fn default() -> Self {
        Self::new()
    }
}
