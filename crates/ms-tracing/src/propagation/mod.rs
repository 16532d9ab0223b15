//! W3C Trace Context and Baggage propagation, conformant to the recommendation's own rules.
//!
//! ```
//! use http::HeaderMap;
//! use ms_tracing::propagation::{HeaderExtractor, HeaderInjector, propagator};
//! use opentelemetry::Context;
//! use opentelemetry::propagation::TextMapPropagator;
//! use opentelemetry::trace::TraceContextExt;
//!
//! let mut incoming = HeaderMap::new();
//! incoming.insert(
//!     "traceparent",
//!     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03".parse()?,
//! );
//! incoming.insert("tracestate", "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7".parse()?);
//!
//! let cx = propagator().extract_with_context(&Context::new(), &HeaderExtractor(&incoming));
//! let remote = cx.span().span_context().clone();
//! assert_eq!(remote.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_eq!(remote.trace_flags().to_u8(), 0x03); // sampled + Level 2 random, both kept
//!
//! let mut outgoing = HeaderMap::new();
//! propagator().inject_context(&cx, &mut HeaderInjector(&mut outgoing));
//! assert_eq!(outgoing["traceparent"], incoming["traceparent"]);
//! assert_eq!(outgoing["tracestate"], "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
//!
//! // A malformed header (uppercase hex here) starts a new trace rather than failing.
//! incoming.insert(
//!     "traceparent",
//!     "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".parse()?,
//! );
//! let cx = propagator().extract_with_context(&Context::new(), &HeaderExtractor(&incoming));
//! assert!(!cx.span().span_context().is_valid());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod trace_context;
mod traceparent;
mod tracestate;

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator};
use opentelemetry_sdk::propagation::BaggagePropagator;

pub use trace_context::{TRACEPARENT, TRACESTATE, W3cTraceContextPropagator};
pub use traceparent::{InvalidTraceparent, RANDOM_FLAG, Traceparent};
pub use tracestate::{
    InvalidTracestate, MAX_TRACESTATE_MEMBERS, TRACESTATE_PROPAGATION_LIMIT, parse_tracestate,
    tracestate_header, tracestate_with,
};

/// The propagator this crate uses everywhere: [`W3cTraceContextPropagator`] and
/// opentelemetry's W3C `baggage` propagator. Built once: building one allocates.
pub fn propagator() -> &'static TextMapCompositePropagator {
    static PROPAGATOR: OnceLock<TextMapCompositePropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(new_propagator)
}

/// A new instance of [`propagator()`], for APIs that want one by value (such as
/// `opentelemetry::global::set_text_map_propagator`).
pub fn new_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(W3cTraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// Reads propagation headers from an [`http::HeaderMap`], including every value of a repeated
/// header ([`Extractor::get_all`]), which conformant `traceparent` handling needs.
#[derive(Debug, Clone, Copy)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

/// What a header value that is not visible ASCII reads as: U+FFFD is outside every grammar
/// of W3C Trace Context and Baggage, so the value is refused rather than read as empty (an
/// empty `tracestate` header would be valid).
const NOT_ASCII: &str = "\u{fffd}";

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(|value| value.to_str().unwrap_or(NOT_ASCII))
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let values: Vec<&str> = self
            .0
            .get_all(key)
            .iter()
            .map(|value| value.to_str().unwrap_or(NOT_ASCII))
            .collect();
        (!values.is_empty()).then_some(values)
    }
}

/// Writes propagation headers into an [`http::HeaderMap`], replacing any value already there.
/// A key or value that cannot be a header is skipped (propagation never fails a request).
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
