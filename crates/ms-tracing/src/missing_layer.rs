//! The one warning a service gets when its `tracing` subscriber has no OpenTelemetry layer:
//! without it, spans have no OpenTelemetry context, so nothing is continued or propagated.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_opentelemetry::OpenTelemetrySpanExt as _;

static WARNED: AtomicBool = AtomicBool::new(false);

/// Sets `parent` as `span`'s OpenTelemetry parent; warns once per process when that fails
/// because the subscriber has no OpenTelemetry layer (a disabled span is no such case: it was
/// filtered out on purpose).
pub(crate) fn set_parent(span: &tracing::Span, parent: opentelemetry::Context) {
    if let Err(tracing_opentelemetry::SetParentError::LayerNotFound) = span.set_parent(parent) {
        warn_once();
    }
}

/// Warns once per process when `span` is enabled but its subscriber has no OpenTelemetry layer.
pub(crate) fn check(span: &tracing::Span) {
    if WARNED.load(Ordering::Relaxed) {
        return;
    }
    let missing = span
        .with_subscriber(|(id, dispatch)| {
            tracing_opentelemetry::get_otel_context(id, dispatch).is_none()
        })
        .unwrap_or(false);
    if missing {
        warn_once();
    }
}

fn warn_once() {
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            target: "ms_tracing",
            "the tracing subscriber has no OpenTelemetry layer: incoming trace context is not \
             continued and outgoing calls and messages carry none; install one with \
             `ms_tracing::init` or add `tracing_opentelemetry::layer()` to the subscriber",
        );
    }
}
