//! `TailSamplingProcessor` driven by the OpenTelemetry SDK tracer, with explicit timestamps and
//! trace IDs so that no outcome depends on the clock or on chance.

use std::time::{Duration, SystemTime};

use ms_tracing::tail_sampling::{Overflow, TailSampling, TailSamplingProcessor, TailSamplingStats};
use opentelemetry::Context;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry_sdk::trace::{
    InMemorySpanExporter, SdkTracer, SdkTracerProvider, SimpleSpanProcessor,
};

struct Harness {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    stats: TailSamplingStats,
}

fn harness(config: TailSampling) -> Harness {
    let exporter = InMemorySpanExporter::default();
    let processor = TailSamplingProcessor::new(config, SimpleSpanProcessor::new(exporter.clone()));
    let stats = processor.stats();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .build();
    let tracer = provider.tracer("test");
    Harness {
        exporter,
        provider,
        tracer,
        stats,
    }
}

impl Harness {
    fn exported(&self) -> Vec<String> {
        self.exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .map(|s| s.name.into_owned())
            .collect()
    }

    /// A root span (optionally of a given trace) lasting `duration`, with children named
    /// `children`, the one named `failing` ending in error.
    fn trace(
        &self,
        name: &str,
        trace_id: Option<TraceId>,
        duration: Duration,
        children: &[&str],
        failing: Option<&str>,
    ) {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let builder = self
            .tracer
            .span_builder(name.to_owned())
            .with_start_time(start);
        // A trace ID is chosen by continuing a remote parent of that trace.
        let parent = trace_id.map_or_else(Context::new, |trace_id| {
            Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                SpanId::from(1_u64),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ))
        });
        let root = builder.start_with_context(&self.tracer, &parent);
        let cx = Context::new().with_span(root);
        for child in children {
            let mut span = self.tracer.start_with_context(child.to_string(), &cx);
            if failing == Some(*child) {
                span.set_status(Status::error("failed"));
            }
            span.end();
        }
        if failing == Some(name) {
            cx.span().set_status(Status::error("failed"));
        }
        cx.span().end_with_timestamp(start + duration);
    }
}

const FAST: Duration = Duration::from_millis(10);

#[test]
fn an_error_anywhere_keeps_the_whole_trace() {
    let h = harness(TailSampling::errors_only());
    h.trace("ok", None, FAST, &["a", "b"], None);
    h.trace("bad-child", None, FAST, &["c", "d"], Some("d"));
    h.trace("bad-root", None, FAST, &["e"], Some("bad-root"));
    assert_eq!(h.exported(), ["c", "d", "bad-child", "e", "bad-root"]);
    assert_eq!((h.stats.kept_traces(), h.stats.dropped_traces()), (2, 1));
}

#[test]
fn errors_are_not_kept_when_told_not_to() {
    let h = harness(TailSampling::builder().keep_errors(false).build());
    h.trace("bad", None, FAST, &["c"], Some("c"));
    assert!(h.exported().is_empty());
}

#[test]
fn a_local_root_slower_than_the_threshold_keeps_its_trace() {
    let h = harness(
        TailSampling::builder()
            .slower_than(Duration::from_secs(1))
            .build(),
    );
    h.trace("fast", None, Duration::from_millis(999), &["a"], None);
    h.trace("exactly", None, Duration::from_secs(1), &["b"], None);
    h.trace("slow", None, Duration::from_millis(1001), &["c"], None);
    assert_eq!(h.exported(), ["c", "slow"]);
}

#[test]
fn the_ratio_is_decided_by_trace_id() {
    let h = harness(TailSampling::builder().ratio(0.5).build());
    let low = TraceId::from(0x0123_0000_0000_0000_0000_0000_0000_0001_u128);
    let high = TraceId::from(0x0123_0000_0000_0000_ffff_ffff_ffff_ffff_u128);
    h.trace("low", Some(low), FAST, &[], None);
    h.trace("high", Some(high), FAST, &[], None);
    assert_eq!(h.exported(), ["low"]);
    let all = harness(TailSampling::builder().ratio(1.0).build());
    all.trace("high", Some(high), FAST, &[], None);
    assert_eq!(all.exported(), ["high"]);
}

#[test]
fn late_spans_follow_the_decision() {
    let h = harness(TailSampling::errors_only());
    for (name, failing) in [("kept", true), ("dropped", false)] {
        let root = h.tracer.start(name);
        let cx = Context::new().with_span(root);
        let mut late = h.tracer.start_with_context(format!("{name}-late"), &cx);
        if failing {
            cx.span().set_status(Status::error("failed"));
        }
        cx.span().end();
        late.end(); // ends after its root: the trace is already decided
    }
    assert_eq!(h.exported(), ["kept", "kept-late"]);
    assert_eq!(h.stats.late_spans(), 2);
}

#[test]
fn a_span_with_a_remote_parent_is_a_local_root_and_the_last_one_decides() {
    let h = harness(TailSampling::errors_only());
    let remote = SpanContext::new(
        TraceId::from(7_u128),
        SpanId::from(9_u64),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let parent = Context::new().with_remote_span_context(remote);
    // Two requests of one trace in this process; the first fails, the second ends last.
    let mut first = h.tracer.start_with_context("first", &parent);
    let second = h.tracer.start_with_context("second", &parent);
    first.set_status(Status::error("failed"));
    first.end();
    assert!(
        h.exported().is_empty(),
        "decided before the last local root ended"
    );
    let cx = Context::new().with_span(second);
    h.tracer.start_with_context("child", &cx).end();
    cx.span().end();
    assert_eq!(h.exported(), ["first", "child", "second"]);
}

#[test]
fn too_many_traces_decides_the_oldest_by_the_overflow_policy() {
    for (overflow, expected) in [(Overflow::Keep, vec!["a-child"]), (Overflow::Drop, vec![])] {
        let h = harness(
            TailSampling::builder()
                .max_traces(2)
                .overflow(overflow)
                .build(),
        );
        let open: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|name| {
                let cx = Context::new().with_span(h.tracer.start(name));
                h.tracer
                    .start_with_context(format!("{name}-child"), &cx)
                    .end();
                cx
            })
            .collect();
        // Starting "c" made room by deciding "a", the oldest.
        assert_eq!(h.exported(), expected, "{overflow:?}");
        assert_eq!(h.stats.overflowed_traces(), 1);
        for cx in open {
            cx.span().end();
        }
        // "a"'s root is a late span and follows; "b" and "c" are decided normally (dropped).
        let mut expected = expected;
        if overflow == Overflow::Keep {
            expected.push("a");
        }
        assert_eq!(h.exported(), expected, "{overflow:?}");
    }
}

#[test]
fn too_many_spans_in_one_trace_decides_it_early() {
    let h = harness(TailSampling::builder().max_spans_per_trace(3).build());
    let cx = Context::new().with_span(h.tracer.start("root"));
    for n in 0..5 {
        h.tracer.start_with_context(format!("child-{n}"), &cx).end();
    }
    cx.span().end();
    assert_eq!(
        h.exported(),
        [
            "child-0", "child-1", "child-2", "child-3", "child-4", "root"
        ]
    );
    assert_eq!((h.stats.overflowed_traces(), h.stats.late_spans()), (1, 2));
}

#[test]
fn shutdown_keeps_undecided_traces_under_the_keep_policy() {
    let h = harness(TailSampling::errors_only());
    let cx = Context::new().with_span(h.tracer.start("never-ends"));
    h.tracer.start_with_context("child", &cx).end();
    assert!(h.exported().is_empty());
    // The in-memory exporter forgets everything on shutdown, so look before: a flush alone
    // must not decide anything...
    h.provider.force_flush().unwrap();
    assert!(h.exported().is_empty());
    assert_eq!(h.stats.kept_traces(), 0);
    // ...shutdown does, keeping the undecided trace.
    h.provider.shutdown().unwrap();
    assert_eq!(h.stats.kept_traces(), 1);
    drop(cx);
}

#[test]
fn the_decision_cache_is_bounded() {
    let h = harness(TailSampling::builder().decision_cache(1).build());
    let first = Context::new().with_span(h.tracer.start("first"));
    let mut first_late = h.tracer.start_with_context("first-late", &first);
    first.span().set_status(Status::error("failed"));
    first.span().end(); // kept, remembered
    h.trace("second", None, FAST, &[], None); // dropped, pushes "first" out of the cache
    first_late.end(); // no longer remembered: buffered as a new, rootless local trace
    assert_eq!(h.exported(), ["first"]);
    assert_eq!(h.stats.late_spans(), 0);
}
