use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::{Span as _, SpanId, Status, TraceContextExt, TraceId};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use super::{Overflow, TailSampling};

/// A span processor that buffers each local trace and passes the kept ones to `inner` (a
/// `BatchSpanProcessor` or `SimpleSpanProcessor` in front of an exporter); see the
/// [module docs](super).
#[derive(Debug)]
pub struct TailSamplingProcessor<P> {
    config: TailSampling,
    inner: P,
    state: Mutex<State>,
    stats: TailSamplingStats,
}

/// Counters of a [`TailSamplingProcessor`]; clones share them.
#[derive(Debug, Clone, Default)]
pub struct TailSamplingStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    kept: AtomicU64,
    dropped: AtomicU64,
    overflowed: AtomicU64,
    late: AtomicU64,
}

impl TailSamplingStats {
    /// Traces kept (including those kept by [`Overflow::Keep`]).
    pub fn kept_traces(&self) -> u64 {
        self.0.kept.load(Ordering::Relaxed)
    }
    /// Traces dropped (including those dropped by [`Overflow::Drop`]).
    pub fn dropped_traces(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
    /// Traces decided early because they would have broken the memory budget.
    pub fn overflowed_traces(&self) -> u64 {
        self.0.overflowed.load(Ordering::Relaxed)
    }
    /// Spans that ended after their trace was decided and followed the decision.
    pub fn late_spans(&self) -> u64 {
        self.0.late.load(Ordering::Relaxed)
    }
}

/// Trace IDs arrive from callers, so the maps need a seeded hash (no one can pick IDs that
/// collide), but `SipHash` was a fifth of the processor's cost: foldhash's quality variant is
/// seeded per process and several times faster.
type Hasher = foldhash::quality::RandomState;

#[derive(Debug, Default)]
struct State {
    pending: HashMap<TraceId, Pending, Hasher>,
    /// Pending traces, oldest first, for eviction; may hold IDs already decided (skipped).
    arrival: VecDeque<TraceId>,
    decided: HashMap<TraceId, bool, Hasher>,
    decided_order: VecDeque<TraceId>,
}

/// How many stale entries `arrival` may hold beyond twice the pending traces before a sweep.
const ARRIVAL_SLACK: usize = 64;

#[derive(Debug, Default)]
struct Pending {
    spans: Vec<SpanData>,
    open_local_roots: usize,
    errored: bool,
    slow: bool,
}

/// What to do, once the lock is released.
enum Verdict {
    Buffered,
    Forward(Vec<SpanData>),
    Discard,
}

impl<P: SpanProcessor> TailSamplingProcessor<P> {
    /// Tail sampling with `config` in front of `inner`.
    pub fn new(config: TailSampling, inner: P) -> Self {
        Self {
            config,
            inner,
            state: Mutex::new(State::default()),
            stats: TailSamplingStats::default(),
        }
    }

    /// The counters (take them before handing the processor to the provider).
    pub fn stats(&self) -> TailSamplingStats {
        self.stats.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that
        // matters more than losing tracing altogether: keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ratio_keeps(&self, trace_id: TraceId) -> bool {
        // The same rule as the SDK's TraceIdRatioBased sampler: the low 8 bytes of the ID,
        // which W3C Level 2 `random` IDs make uniformly random.
        let bytes = trace_id.to_bytes();
        let low = u64::from_be_bytes([
            bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15],
        ]) >> 1;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let bound = (self.config.ratio * (1u64 << 63) as f64) as u64;
        low < bound
    }

    /// Records a decision; returns what to do with the trace's buffered spans.
    fn decide(&self, state: &mut State, trace_id: TraceId, keep: bool) -> Verdict {
        let pending = state.pending.remove(&trace_id).unwrap_or_default();
        // `arrival` keeps the IDs of decided traces until eviction reaches them; without this
        // sweep it would grow with every trace while nothing is ever evicted. Sweeping when it
        // is twice as long as needed keeps the cost amortised constant per trace.
        if state.arrival.len() > 2 * state.pending.len() + ARRIVAL_SLACK {
            let pending = &state.pending;
            state.arrival.retain(|id| pending.contains_key(id));
        }
        if self.config.decision_cache > 0 {
            if state.decided.insert(trace_id, keep).is_none() {
                state.decided_order.push_back(trace_id);
            }
            while state.decided_order.len() > self.config.decision_cache {
                if let Some(old) = state.decided_order.pop_front() {
                    state.decided.remove(&old);
                }
            }
        }
        let counter = if keep {
            &self.stats.0.kept
        } else {
            &self.stats.0.dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if keep {
            Verdict::Forward(pending.spans)
        } else {
            Verdict::Discard
        }
    }

    /// Makes room for one more trace, deciding the oldest pending ones by the overflow policy.
    fn evict_for_new_trace(&self, state: &mut State) -> Vec<SpanData> {
        let mut forward = Vec::new();
        while state.pending.len() >= self.config.max_traces {
            let Some(oldest) = state.arrival.pop_front() else {
                break;
            };
            if state.pending.contains_key(&oldest) {
                self.stats.0.overflowed.fetch_add(1, Ordering::Relaxed);
                let keep = self.config.overflow == Overflow::Keep;
                if let Verdict::Forward(spans) = self.decide(state, oldest, keep) {
                    forward.extend(spans);
                }
            }
        }
        forward
    }

    fn pending_entry<'s>(
        &self,
        state: &'s mut State,
        trace_id: TraceId,
        forward: &mut Vec<SpanData>,
    ) -> &'s mut Pending {
        if !state.pending.contains_key(&trace_id) {
            forward.extend(self.evict_for_new_trace(state));
            state.arrival.push_back(trace_id);
        }
        state.pending.entry(trace_id).or_default()
    }

    fn forward(&self, spans: Vec<SpanData>) {
        for span in spans {
            self.inner.on_end(span);
        }
    }

    fn end(&self, span: SpanData) -> (Verdict, Vec<SpanData>) {
        let trace_id = span.span_context.trace_id();
        let mut evicted = Vec::new();
        let mut state = self.lock();
        if let Some(&keep) = state.decided.get(&trace_id) {
            self.stats.0.late.fetch_add(1, Ordering::Relaxed);
            return (
                if keep {
                    Verdict::Forward(vec![span])
                } else {
                    Verdict::Discard
                },
                evicted,
            );
        }
        let local_root = span.parent_span_id == SpanId::INVALID || span.parent_span_is_remote;
        let errored = matches!(span.status, Status::Error { .. });
        let slow = local_root
            && self.config.slower_than.is_some_and(|threshold| {
                span.end_time
                    .duration_since(span.start_time)
                    .unwrap_or(Duration::ZERO)
                    > threshold
            });
        let max_spans = self.config.max_spans_per_trace;
        let pending = self.pending_entry(&mut state, trace_id, &mut evicted);
        pending.errored |= errored;
        pending.slow |= slow;
        if pending.spans.len() >= max_spans {
            self.stats.0.overflowed.fetch_add(1, Ordering::Relaxed);
            let keep = self.config.overflow == Overflow::Keep;
            let verdict = match self.decide(&mut state, trace_id, keep) {
                Verdict::Forward(mut spans) => {
                    spans.push(span);
                    Verdict::Forward(spans)
                }
                other => other,
            };
            return (verdict, evicted);
        }
        pending.spans.push(span);
        if local_root {
            // A root that ended without a matching start (started before this processor
            // existed) counts as the last one.
            pending.open_local_roots = pending.open_local_roots.saturating_sub(1);
            if pending.open_local_roots == 0 {
                let keep = (self.config.keep_errors && pending.errored)
                    || pending.slow
                    || self.ratio_keeps(trace_id);
                return (self.decide(&mut state, trace_id, keep), evicted);
            }
        }
        (Verdict::Buffered, evicted)
    }
}

impl<P: SpanProcessor> SpanProcessor for TailSamplingProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        let parent = cx.span();
        let parent = parent.span_context();
        let local_root = !parent.is_valid() || parent.is_remote();
        if local_root {
            let trace_id = span.span_context().trace_id();
            let mut evicted = Vec::new();
            {
                let mut state = self.lock();
                if !state.decided.contains_key(&trace_id) {
                    self.pending_entry(&mut state, trace_id, &mut evicted)
                        .open_local_roots += 1;
                }
            }
            self.forward(evicted);
        }
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let (verdict, evicted) = self.end(span);
        self.forward(evicted);
        if let Verdict::Forward(spans) = verdict {
            self.forward(spans);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Undecided traces are incomplete; with `Overflow::Keep` they still go out rather than
        // vanish with the process.
        let forward: Vec<SpanData> = {
            let mut state = self.lock();
            let pending: Vec<TraceId> = state.pending.keys().copied().collect();
            let keep = self.config.overflow == Overflow::Keep;
            pending
                .into_iter()
                .filter_map(|trace_id| match self.decide(&mut state, trace_id, keep) {
                    Verdict::Forward(spans) => Some(spans),
                    _ => None,
                })
                .flatten()
                .collect()
        };
        self.forward(forward);
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor};

    use super::*;

    type Inner = TailSamplingProcessor<SimpleSpanProcessor<InMemorySpanExporter>>;

    /// Lets the test look inside the processor the provider owns.
    #[derive(Debug)]
    struct Shared(Arc<Inner>);

    impl SpanProcessor for Shared {
        fn on_start(&self, span: &mut Span, cx: &Context) {
            self.0.on_start(span, cx);
        }
        fn on_end(&self, span: SpanData) {
            self.0.on_end(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            self.0.force_flush()
        }
        fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
            self.0.shutdown_with_timeout(timeout)
        }
    }

    #[test]
    fn bookkeeping_stays_bounded_over_many_traces() {
        let config = TailSampling::builder().decision_cache(100).build();
        let processor = Arc::new(TailSamplingProcessor::new(
            config,
            SimpleSpanProcessor::new(InMemorySpanExporter::default()),
        ));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Shared(Arc::clone(&processor)))
            .build();
        let tracer = provider.tracer("test");
        for _ in 0..10_000 {
            tracer.in_span("root", |_| tracer.in_span("child", |_| {}));
        }
        let state = processor.lock();
        assert!(state.pending.is_empty());
        assert!(
            state.arrival.len() <= ARRIVAL_SLACK + 1,
            "{}",
            state.arrival.len()
        );
        assert_eq!(state.decided.len(), 100);
        assert_eq!(state.decided_order.len(), 100);
    }
}
