//! The trace layers' histogram handles, cached per label set.
//!
//! Asking the recorder for a histogram (`metrics::histogram!`) costs a registry lookup every
//! time: the key is built and hashed, copied into an owned key, looked up under the
//! registry's lock. With metrics-exporter-prometheus that was most of what the RED metrics
//! cost a request (`benches/benches/tracing.rs`, `server_trace_metrics`). A layer sees few
//! label sets (method × route × status), so it keeps the handle of each one it has seen and
//! records straight into it: one hash of the labels and a read lock shared by every clone of
//! the layer.
//!
//! The handles belong to the recorder that made them. The cache remembers which one that
//! was (by address) and starts over when another is current: a recorder installed later, or
//! a test's local recorder. A recorder of size zero has no address of its own, so its handles
//! are never cached.

#[cfg(feature = "metrics")]
pub(crate) use enabled::HistogramCache;

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::HistogramCache;

#[cfg(feature = "metrics")]
mod enabled {
    use std::collections::HashMap;
    use std::fmt;
    use std::sync::{Arc, PoisonError, RwLock};

    use metrics::{Histogram, Label};

    /// Label sets one layer keeps handles for. Past it, each call asks the recorder, as
    /// without a cache: a client inventing gRPC paths cannot grow the cache without bound.
    pub(crate) const CAPACITY: usize = 1_024;

    type Entries = HashMap<(&'static str, Vec<Label>), Histogram, foldhash::fast::FixedState>;

    /// A layer's handles; clones share them.
    #[derive(Clone, Default)]
    pub(crate) struct HistogramCache(Arc<RwLock<Cached>>);

    #[derive(Default)]
    struct Cached {
        /// The address of the recorder the handles came from; 0 before the first.
        recorder: usize,
        entries: Entries,
    }

    impl fmt::Debug for HistogramCache {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let cached = self.0.read().unwrap_or_else(PoisonError::into_inner);
            f.debug_struct("HistogramCache")
                .field("label_sets", &cached.entries.len())
                .finish()
        }
    }

    impl HistogramCache {
        /// Records `value` in the histogram `name` with `labels`.
        pub(crate) fn record(&self, name: &'static str, labels: Vec<Label>, value: f64) {
            let recorder = current_recorder();
            let key = (name, labels);
            if recorder != 0 {
                let cached = self.0.read().unwrap_or_else(PoisonError::into_inner);
                if cached.recorder == recorder
                    && let Some(histogram) = cached.entries.get(&key)
                {
                    histogram.record(value);
                    return;
                }
            }
            let (name, labels) = key;
            let histogram = metrics::histogram!(name, labels.clone());
            histogram.record(value);
            if recorder == 0 {
                return;
            }
            let mut cached = self.0.write().unwrap_or_else(PoisonError::into_inner);
            if cached.recorder != recorder {
                cached.entries.clear();
                cached.recorder = recorder;
            }
            if cached.entries.len() < CAPACITY {
                cached.entries.insert((name, labels), histogram);
            }
        }

        /// Label sets held (for tests).
        #[cfg(test)]
        fn len(&self) -> usize {
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .entries
                .len()
        }
    }

    /// The current recorder's address, or 0 for a recorder of size zero (whose address any
    /// other zero-sized value may share).
    fn current_recorder() -> usize {
        metrics::with_recorder(|recorder| {
            if std::mem::size_of_val(recorder) == 0 {
                0
            } else {
                std::ptr::from_ref(recorder).cast::<()>() as usize
            }
        })
    }

    #[cfg(test)]
    mod tests {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        use super::*;

        fn sum(recorder: &DebuggingRecorder) -> f64 {
            recorder
                .snapshotter()
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(_, _, _, value)| match value {
                    DebugValue::Histogram(values) => values.iter().map(|v| v.0).sum(),
                    _ => 0.0,
                })
                .sum()
        }

        #[test]
        fn a_second_recorder_gets_its_own_handles() {
            let cache = HistogramCache::default();
            let labels = || vec![Label::new("http.route", "/orders/{id}")];
            let first = DebuggingRecorder::new();
            metrics::with_local_recorder(&first, || {
                cache.record("d", labels(), 1.0);
                cache.record("d", labels(), 2.0);
            });
            let second = DebuggingRecorder::new();
            metrics::with_local_recorder(&second, || cache.record("d", labels(), 4.0));
            assert!((sum(&first) - 3.0).abs() < f64::EPSILON);
            assert!((sum(&second) - 4.0).abs() < f64::EPSILON);
        }

        #[test]
        fn label_sets_past_the_capacity_are_recorded_uncached() {
            let cache = HistogramCache::default();
            let recorder = DebuggingRecorder::new();
            let sets = CAPACITY + 10;
            metrics::with_local_recorder(&recorder, || {
                for n in 0..sets {
                    cache.record("d", vec![Label::new("rpc.method", n.to_string())], 1.0);
                }
            });
            assert_eq!(cache.len(), CAPACITY);
            #[allow(clippy::cast_precision_loss)] // A small count.
            let expected = sets as f64;
            assert!((sum(&recorder) - expected).abs() < f64::EPSILON);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod disabled {
    /// Nothing to cache without the `metrics` feature.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct HistogramCache;
}
