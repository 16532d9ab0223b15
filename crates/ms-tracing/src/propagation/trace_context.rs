use std::sync::OnceLock;

use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceState};

use super::traceparent::Traceparent;
use super::tracestate::{parse_tracestate, tracestate_header};

/// The `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header name.
pub const TRACESTATE: &str = "tracestate";

/// A W3C Trace Context propagator that follows the recommendation rule by rule (Level 1 and
/// Level 2 `traceparent`, `tracestate` limits), unlike opentelemetry's own
/// `TraceContextPropagator` which accepts some malformed lengths, reads only the first of
/// repeated headers and drops the Level 2 `random` flag.
///
/// On extraction, anything invalid leaves the context as it was, so the next span starts a new
/// trace: never an error, never a panic.
/// - more than one `traceparent` header is invalid (which one is meant is ambiguous);
/// - the `traceparent` rules are those of [`Traceparent::parse`];
/// - several `tracestate` headers are combined; a malformed, duplicated or over-long
///   (more than 32 members) `tracestate` is discarded while the `traceparent` is kept;
/// - a `tracestate` without a valid `traceparent` is ignored.
///
/// On injection, `traceparent` is written in version `00` with the `sampled` and `random`
/// flags; `tracestate` is written when not empty, shortened to 512 characters as §3.3.1.5 says.
///
/// Repeated headers are only seen through [`Extractor::get_all`]: use an extractor that
/// implements it, such as [`HeaderExtractor`](super::HeaderExtractor).
#[derive(Debug, Clone, Copy, Default)]
pub struct W3cTraceContextPropagator {
    _private: (),
}

impl W3cTraceContextPropagator {
    /// The propagator.
    pub fn new() -> Self {
        Self::default()
    }

    /// The remote span context carried by `extractor`, if it carries a valid one.
    pub fn extract_span_context(&self, extractor: &dyn Extractor) -> Option<SpanContext> {
        let parents = extractor.get_all(TRACEPARENT)?;
        let [parent] = parents.as_slice() else {
            return None;
        };
        let parent = Traceparent::parse(parent).ok()?;
        let state = extractor
            .get_all(TRACESTATE)
            .and_then(|values| parse_tracestate(values).ok())
            .unwrap_or_default();
        Some(SpanContext::new(
            parent.trace_id,
            parent.parent_id,
            parent.flags,
            true,
            state,
        ))
    }
}

impl TextMapPropagator for W3cTraceContextPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let span_context = span.span_context();
        if !span_context.is_valid() {
            return;
        }
        let parent = Traceparent {
            trace_id: span_context.trace_id(),
            parent_id: span_context.span_id(),
            flags: span_context.trace_flags(),
        };
        injector.set(TRACEPARENT, parent.to_header());
        let state: &TraceState = span_context.trace_state();
        let header = tracestate_header(state);
        if !header.is_empty() {
            injector.set(TRACESTATE, header);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match self.extract_span_context(extractor) {
            Some(remote) => cx.with_remote_span_context(remote),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        static FIELDS: OnceLock<[String; 2]> = OnceLock::new();
        FieldIter::new(FIELDS.get_or_init(|| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()]))
    }
}
