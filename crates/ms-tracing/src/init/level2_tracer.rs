//! The SDK tracer with W3C Trace Context Level 2's `random` flag on its span contexts.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{
    Span, SpanBuilder, SpanContext, Status, TraceContextExt as _, TraceFlags, Tracer,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span as SdkSpan};

use crate::propagation::RANDOM_FLAG;

/// An OpenTelemetry SDK tracer whose span contexts carry the W3C Level 2 `random` flag
/// (§3.2.2.5.2) where the SDK leaves it out; [`TracingBuilder`](super::TracingBuilder) puts
/// one between `tracing` and the SDK.
///
/// - A span that starts a trace has the flag: its trace ID comes from the SDK's
///   `RandomIdGenerator`, whose IDs are random in every byte. Use this tracer only with a
///   provider whose ID generator is random (the SDK's default).
/// - A span the sampler drops keeps its parent's flag (the SDK gives it empty flags), so that a
///   trace continued but not sampled here still says its ID is random downstream.
/// - Every other span is the SDK's own, flags and all (a sampled or recorded child inherits its
///   parent's flags in the SDK already).
///
/// ```
/// use ms_tracing::init::Level2Tracer;
/// use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
/// use opentelemetry_sdk::trace::SdkTracerProvider;
///
/// let provider = SdkTracerProvider::builder().build();
/// let tracer = Level2Tracer::new(provider.tracer("orders"));
/// let root = tracer.start("checkout");
/// assert_eq!(root.span_context().trace_flags().to_u8(), 0x03); // sampled + random
/// ```
#[derive(Debug, Clone)]
pub struct Level2Tracer {
    inner: SdkTracer,
}

impl Level2Tracer {
    /// Wraps `inner`, whose provider generates random trace IDs.
    pub fn new(inner: SdkTracer) -> Self {
        Self { inner }
    }
}

impl Tracer for Level2Tracer {
    type Span = Level2Span;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> Level2Span {
        let inner = self.inner.build_with_context(builder, parent_cx);
        let own = inner.span_context();
        if !own.is_valid() {
            // Telemetry suppressed or the provider shut down: nothing to propagate.
            return Level2Span {
                inner,
                context: None,
            };
        }
        let parent = parent_cx.span();
        let parent = parent.span_context();
        let random = if parent.is_valid() {
            parent.trace_flags().to_u8() & RANDOM_FLAG.to_u8() != 0
        } else {
            true
        };
        let wanted = own.trace_flags().to_u8() & !RANDOM_FLAG.to_u8()
            | if random { RANDOM_FLAG.to_u8() } else { 0 };
        // Only a root or a dropped child differs; the common sampled child allocates nothing.
        let context = (wanted != own.trace_flags().to_u8()).then(|| {
            SpanContext::new(
                own.trace_id(),
                own.span_id(),
                TraceFlags::new(wanted),
                false,
                own.trace_state().clone(),
            )
        });
        Level2Span { inner, context }
    }
}

/// A span of [`Level2Tracer`]: the SDK's span, with the corrected span context when the SDK's
/// flags lack the `random` flag. What is exported is the SDK's span as it is.
#[derive(Debug)]
pub struct Level2Span {
    inner: SdkSpan,
    context: Option<SpanContext>,
}

impl Span for Level2Span {
    fn add_event_with_timestamp<T>(
        &mut self,
        name: T,
        timestamp: SystemTime,
        attributes: Vec<KeyValue>,
    ) where
        T: Into<Cow<'static, str>>,
    {
        self.inner
            .add_event_with_timestamp(name, timestamp, attributes);
    }

    fn span_context(&self) -> &SpanContext {
        self.context
            .as_ref()
            .unwrap_or_else(|| self.inner.span_context())
    }

    fn is_recording(&self) -> bool {
        self.inner.is_recording()
    }

    fn set_attribute(&mut self, attribute: KeyValue) {
        self.inner.set_attribute(attribute);
    }

    fn set_status(&mut self, status: Status) {
        self.inner.set_status(status);
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        self.inner.update_name(new_name);
    }

    fn add_link(&mut self, span_context: SpanContext, attributes: Vec<KeyValue>) {
        self.inner.add_link(span_context, attributes);
    }

    fn end_with_timestamp(&mut self, timestamp: SystemTime) {
        self.inner.end_with_timestamp(timestamp);
    }
}
