use std::sync::OnceLock;

use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceId, TraceState};

use super::traceparent::{RANDOM_FLAG, Traceparent};
use super::tracestate::{parse_members, shortened_header, tracestate_header};

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
/// - several `tracestate` headers are combined; a malformed or over-long (more than 32
///   members) `tracestate` is discarded while the `traceparent` is kept; a key that appears
///   again is dropped, its first value kept;
/// - a `tracestate` without a valid `traceparent` is ignored.
///
/// On injection, `traceparent` is written in version `00` with the `sampled` flag of the span
/// context and, for a trace that came in through this propagator, the `random` flag exactly as
/// it came in (§3.2.2.5.2: set stays set, unset stays unset, for the same trace ID), even
/// though the SDK gives a span it does not sample empty flags. A trace started in this process
/// carries the `random` flag its span context has (see
/// [`Level2Tracer`](crate::init::Level2Tracer), which [`init`](crate::init()) installs).
/// `tracestate` is written when not empty, shortened to 512 characters as §3.3.1.5 says.
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
    ///
    /// A valid `tracestate` that opentelemetry's `TraceState` cannot hold
    /// ([`InvalidTracestate::NotRepresentable`](super::InvalidTracestate::NotRepresentable)) is
    /// missing from the span context returned here; [`TextMapPropagator::extract_with_context`]
    /// keeps it beside the span context and sends it on.
    pub fn extract_span_context(&self, extractor: &dyn Extractor) -> Option<SpanContext> {
        Self::extract_parts(extractor).map(|(remote, _)| remote)
    }

    fn extract_parts(extractor: &dyn Extractor) -> Option<(SpanContext, Received)> {
        let parents = extractor.get_all(TRACEPARENT)?;
        let [parent] = parents.as_slice() else {
            return None;
        };
        let parent = Traceparent::parse(parent).ok()?;
        let members = extractor
            .get_all(TRACESTATE)
            .and_then(|values| parse_members(values).ok())
            .unwrap_or_default();
        let header_len = members.len();
        let (state, tracestate) = match TraceState::from_key_value(members.iter().copied()) {
            Ok(state) => (state, None),
            Err(_) if header_len > 0 => (TraceState::default(), Some(shortened_header(members))),
            Err(_) => (TraceState::default(), None),
        };
        let received = Received {
            trace_id: parent.trace_id,
            random: parent.flags.to_u8() & RANDOM_FLAG.to_u8() != 0,
            tracestate,
        };
        let remote = SpanContext::new(parent.trace_id, parent.parent_id, parent.flags, true, state);
        Some((remote, received))
    }
}

/// What the propagator read from a valid `traceparent`, kept in the context beside the remote
/// span context so that it outlives the spans the SDK derives from it (their context is
/// `parent_cx.with_span(..)`, which keeps the parent's values):
/// - whether the trace ID is random (Level 2 flag): §3.2.2.5.2 says the flag goes out exactly
///   as it came in for the same trace ID, but the SDK gives a span it does not sample empty
///   flags, whatever its parent's were;
/// - a valid `tracestate` that opentelemetry's `TraceState` refuses, so that it still goes out
///   with the trace it came with.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    trace_id: TraceId,
    random: bool,
    tracestate: Option<String>,
}

impl TextMapPropagator for W3cTraceContextPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let span_context = span.span_context();
        if !span_context.is_valid() {
            return;
        }
        let received = cx
            .get::<Received>()
            .filter(|received| received.trace_id == span_context.trace_id());
        let mut flags = span_context.trace_flags();
        if let Some(received) = received {
            let random = if received.random {
                RANDOM_FLAG.to_u8()
            } else {
                0
            };
            flags = TraceFlags::new(flags.to_u8() & !RANDOM_FLAG.to_u8() | random);
        }
        let parent = Traceparent {
            trace_id: span_context.trace_id(),
            parent_id: span_context.span_id(),
            flags,
        };
        injector.set(TRACEPARENT, parent.to_header());
        let mut header = tracestate_header(span_context.trace_state());
        if header.is_empty()
            && let Some(raw) = received.and_then(|received| received.tracestate.as_ref())
        {
            header.clone_from(raw);
        }
        if !header.is_empty() {
            injector.set(TRACESTATE, header);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match Self::extract_parts(extractor) {
            Some((remote, received)) => cx.with_remote_span_context(remote).with_value(received),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        static FIELDS: OnceLock<[String; 2]> = OnceLock::new();
        FieldIter::new(FIELDS.get_or_init(|| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()]))
    }
}
