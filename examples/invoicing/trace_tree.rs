//! The spans of the whole system, kept in memory, and one trace printed as a tree with
//! timings: gateway → invoicing → outbox → bus → payments → reporting.
//!
//! Every service of the example runs in this process, so one tracing pipeline (ms-tracing's
//! in-memory exporter) sees all their spans; in production each service would export to a
//! collector instead, and the tree would be drawn by Jaeger or Tempo from the same parent
//! links.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use ms_tracing::TracingBuilder;
use ms_tracing::head_sampling::HeadSampler;
use ms_tracing::init::{SpanExport, TracingGuard};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};

/// The attribute naming the service a span belongs to.
pub const SERVICE_ATTRIBUTE: &str = "ms.service";

struct Pipeline {
    exporter: InMemorySpanExporter,
    _guard: Option<TracingGuard>,
}

static PIPELINE: OnceLock<Pipeline> = OnceLock::new();

/// Installs the process-wide tracing pipeline with the in-memory exporter (once; later calls
/// do nothing). Logs go to stderr at `warn`, or as `RUST_LOG` says.
pub fn install() {
    PIPELINE.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let mut builder = TracingBuilder::new("invoicing-example")
            .exporter(SpanExport::InMemory(exporter.clone()))
            .sampler(HeadSampler::AlwaysOn)
            .log_writer(std::io::stderr);
        if std::env::var_os("RUST_LOG").is_none() {
            builder = builder.filter("warn");
        }
        // Another subscriber may be installed already (a test harness): spans then go there,
        // and the tree is empty rather than the program failing.
        let guard = builder.install().ok();
        Pipeline {
            exporter,
            _guard: guard,
        }
    });
}

/// The finished spans of trace `trace_id` (hex), in the order they ended.
pub fn spans_of(trace_id: &str) -> Vec<SpanData> {
    let Some(pipeline) = PIPELINE.get() else {
        return Vec::new();
    };
    let Ok(trace) = TraceId::from_hex(trace_id) else {
        return Vec::new();
    };
    pipeline
        .exporter
        .get_finished_spans()
        .unwrap_or_default()
        .into_iter()
        .filter(|span| span.span_context.trace_id() == trace)
        .collect()
}

/// Waits until trace `trace_id` stops growing (no new span for `quiet`), at most `limit`.
pub async fn settle(trace_id: &str, quiet: Duration, limit: Duration) -> Vec<SpanData> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = spans_of(trace_id).len();
    loop {
        tokio::time::sleep(quiet).await;
        let now = spans_of(trace_id);
        if (now.len() == seen && seen > 0) || tokio::time::Instant::now() >= deadline {
            return now;
        }
        seen = now.len();
    }
}

/// An attribute's value, as text.
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The service each span belongs to: its own [`SERVICE_ATTRIBUTE`]; a server or consumer span
/// takes its handler's (its first child that has one: the service that received the call or
/// the message); any other span its parent's.
pub fn services(spans: &[SpanData]) -> HashMap<SpanId, String> {
    let mut labels: HashMap<SpanId, String> = HashMap::new();
    for span in spans {
        if let Some(service) = attribute(span, SERVICE_ATTRIBUTE) {
            labels.insert(span.span_context.span_id(), service);
        }
    }
    // Server spans: from their children (a request span wraps the service's own span).
    for span in spans {
        let id = span.span_context.span_id();
        if labels.contains_key(&id) {
            continue;
        }
        if let Some(child) = spans
            .iter()
            .filter(|child| child.parent_span_id == id)
            .find_map(|child| labels.get(&child.span_context.span_id()).cloned())
            && matches!(
                span.span_kind,
                opentelemetry::trace::SpanKind::Server | opentelemetry::trace::SpanKind::Consumer
            )
        {
            labels.insert(id, child);
        }
    }
    // Everything else: from the nearest labelled ancestor.
    for span in spans {
        let mut id = span.span_context.span_id();
        let mut parent = span.parent_span_id;
        while !labels.contains_key(&id) {
            match spans.iter().find(|p| p.span_context.span_id() == parent) {
                Some(p) => {
                    if let Some(label) = labels.get(&p.span_context.span_id()).cloned() {
                        labels.insert(span.span_context.span_id(), label);
                        break;
                    }
                    id = p.span_context.span_id();
                    parent = p.parent_span_id;
                }
                None => break,
            }
        }
    }
    labels
}

/// The trace as a tree: each span with its service, its start after the root's, and its
/// duration.
pub fn render(spans: &[SpanData]) -> String {
    let mut out = String::new();
    if spans.is_empty() {
        out.push_str("  (no spans recorded: another tracing subscriber is installed)\n");
        return out;
    }
    let ids: Vec<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
    let labels = services(spans);
    let origin = spans
        .iter()
        .map(|s| s.start_time)
        .min()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut roots: Vec<&SpanData> = spans
        .iter()
        .filter(|s| !ids.contains(&s.parent_span_id))
        .collect();
    roots.sort_by_key(|s| s.start_time);
    for root in roots {
        draw(spans, &labels, origin, root, "", true, &mut out);
    }
    out
}

fn draw(
    spans: &[SpanData],
    labels: &HashMap<SpanId, String>,
    origin: SystemTime,
    span: &SpanData,
    prefix: &str,
    last: bool,
    out: &mut String,
) {
    let at = span.start_time.duration_since(origin).unwrap_or_default();
    let took = span
        .end_time
        .duration_since(span.start_time)
        .unwrap_or_default();
    let service = labels
        .get(&span.span_context.span_id())
        .map_or("", String::as_str);
    let branch = if last { "└─ " } else { "├─ " };
    let _ = writeln!(
        out,
        "  {:>8} {:>9}  {prefix}{branch}{:<12}{}",
        format!("+{}", ms(at)),
        ms(took),
        format!("[{service}]"),
        span.name
    );
    let mut children: Vec<&SpanData> = spans
        .iter()
        .filter(|child| child.parent_span_id == span.span_context.span_id())
        .collect();
    children.sort_by_key(|child| child.start_time);
    let inner = format!("{prefix}{}", if last { "   " } else { "│  " });
    let count = children.len();
    for (i, child) in children.into_iter().enumerate() {
        draw(spans, labels, origin, child, &inner, i + 1 == count, out);
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.1}ms", duration.as_secs_f64() * 1_000.0)
}
