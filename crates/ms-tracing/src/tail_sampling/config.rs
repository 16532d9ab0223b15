use std::time::Duration;

/// Default [`TailSampling::max_traces`].
pub const DEFAULT_MAX_TRACES: usize = 10_000;
/// Default [`TailSampling::max_spans_per_trace`].
pub const DEFAULT_MAX_SPANS_PER_TRACE: usize = 1_000;
/// Default [`TailSampling::decision_cache`]: late spans come within moments of their trace's
/// decision, and a small cache stays in the CPU caches (a 100,000-entry one cost about 0.4 µs
/// per trace in `benches/benches/tracing.rs`).
pub const DEFAULT_DECISION_CACHE: usize = 10_000;

/// What happens to a trace that would break the memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// Keep it: its buffered spans go to the exporter now, and its later spans follow (the
    /// default: a budget never loses data, it only stops sampling).
    #[default]
    Keep,
    /// Drop it, and its later spans.
    Drop,
}

/// Tail sampling settings; see the [module docs](super).
#[derive(Debug, Clone, PartialEq)]
pub struct TailSampling {
    pub(crate) keep_errors: bool,
    pub(crate) slower_than: Option<Duration>,
    pub(crate) ratio: f64,
    pub(crate) max_traces: usize,
    pub(crate) max_spans_per_trace: usize,
    pub(crate) decision_cache: usize,
    pub(crate) overflow: Overflow,
}

impl TailSampling {
    /// A builder with the defaults: keep errors, no latency threshold, ratio 0, the `DEFAULT_*`
    /// bounds, [`Overflow::Keep`].
    pub fn builder() -> TailSamplingBuilder {
        TailSamplingBuilder(Self {
            keep_errors: true,
            slower_than: None,
            ratio: 0.0,
            max_traces: DEFAULT_MAX_TRACES,
            max_spans_per_trace: DEFAULT_MAX_SPANS_PER_TRACE,
            decision_cache: DEFAULT_DECISION_CACHE,
            overflow: Overflow::Keep,
        })
    }

    /// Error-based sampling: keep exactly the traces in which a span ended in error.
    pub fn errors_only() -> Self {
        Self::builder().build()
    }

    /// The most traces buffered at once.
    pub fn max_traces(&self) -> usize {
        self.max_traces
    }

    /// The most spans buffered for one trace.
    pub fn max_spans_per_trace(&self) -> usize {
        self.max_spans_per_trace
    }

    /// How many decided traces are remembered for their late spans.
    pub fn decision_cache(&self) -> usize {
        self.decision_cache
    }
}

impl Default for TailSampling {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// Builder for [`TailSampling`].
#[derive(Debug, Clone)]
#[must_use]
pub struct TailSamplingBuilder(TailSampling);

impl TailSamplingBuilder {
    /// Keep every trace in which a span ended with an error status (default `true`).
    pub fn keep_errors(mut self, keep: bool) -> Self {
        self.0.keep_errors = keep;
        self
    }

    /// Keep every trace whose local root took longer than `threshold` (default: none).
    pub fn slower_than(mut self, threshold: Duration) -> Self {
        self.0.slower_than = Some(threshold);
        self
    }

    /// Keep this share of the remaining traces, chosen by trace ID so that every process
    /// sampling at the same ratio keeps the same traces (default 0; clamped to 0..=1).
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.0.ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self
    }

    /// The most traces buffered at once (default [`DEFAULT_MAX_TRACES`], at least 1).
    pub fn max_traces(mut self, max: usize) -> Self {
        self.0.max_traces = max.max(1);
        self
    }

    /// The most spans buffered for one trace (default [`DEFAULT_MAX_SPANS_PER_TRACE`], at
    /// least 1).
    pub fn max_spans_per_trace(mut self, max: usize) -> Self {
        self.0.max_spans_per_trace = max.max(1);
        self
    }

    /// How many decisions are remembered for late spans (default [`DEFAULT_DECISION_CACHE`]).
    pub fn decision_cache(mut self, size: usize) -> Self {
        self.0.decision_cache = size;
        self
    }

    /// What to do with a trace that would break a bound (default [`Overflow::Keep`]).
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.0.overflow = overflow;
        self
    }

    /// The settings.
    pub fn build(self) -> TailSampling {
        self.0
    }
}
