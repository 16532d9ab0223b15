//! The sliding windows: which recent calls the failure and slow-call rates are computed over.
//!
//! Both windows are lock-free. Their counters are packed three to an `AtomicU64` (calls,
//! failures, slow calls; 21 bits each), so one atomic add moves all three at once and a single
//! load reads a consistent triple.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

/// Bits per packed field.
const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;
const CALLS_SHIFT: u32 = 0;
const FAILURES_SHIFT: u32 = FIELD_BITS;
const SLOW_SHIFT: u32 = 2 * FIELD_BITS;
/// Each field of the count window's totals carries this bias, so that a field that is briefly
/// "negative" (see [`CountWindow`]) never borrows from its neighbour.
const BIAS: u64 = 1 << (FIELD_BITS - 1);
const BIASED_ZERO: u64 = (BIAS << CALLS_SHIFT) | (BIAS << FAILURES_SHIFT) | (BIAS << SLOW_SHIFT);

const POSITION_MASK: u64 = u32::MAX as u64;

/// One call's outcome as the window stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) failure: bool,
    pub(crate) slow: bool,
}

impl Recorded {
    pub(crate) const SUCCESS: Self = Self {
        failure: false,
        slow: false,
    };

    /// The slot code: 0 is an empty slot.
    fn code(self) -> u8 {
        1 + u8::from(self.failure) + 2 * u8::from(self.slow)
    }

    /// What the outcome adds to the packed totals.
    fn contribution(self) -> u64 {
        (1 << CALLS_SHIFT)
            | (u64::from(self.failure) << FAILURES_SHIFT)
            | (u64::from(self.slow) << SLOW_SHIFT)
    }
}

fn contribution_of_code(code: u8) -> u64 {
    match code {
        0 => 0,
        code => Recorded {
            failure: (code - 1) & 1 == 1,
            slow: (code - 1) & 2 == 2,
        }
        .contribution(),
    }
}

/// Calls, failures and slow calls in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowCounts {
    /// Calls recorded in the window.
    pub calls: u32,
    /// Of which failed.
    pub failures: u32,
    /// Of which were slow.
    pub slow: u32,
}

impl WindowCounts {
    /// Failed calls as a percentage of all calls (0 for an empty window).
    pub fn failure_rate(&self) -> f64 {
        percent(self.failures, self.calls)
    }

    /// Slow calls as a percentage of all calls (0 for an empty window).
    pub fn slow_call_rate(&self) -> f64 {
        percent(self.slow, self.calls)
    }
}

fn percent(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) * 100.0 / f64::from(whole)
    }
}

fn field(word: u64, shift: u32) -> u64 {
    (word >> shift) & FIELD_MASK
}

/// The last `size` outcomes, as a ring of slots.
///
/// Invariant (between operations, i.e. when no `record` is half-way): `totals` (less its bias)
/// equals the sum of the contributions of the slots. It holds because a slot only changes by
/// `swap`, and whoever swapped adds exactly `new - old` for the value it displaced, so every
/// change of every slot is added to `totals` exactly once, in some order. While records are in
/// flight a field may lag or lead by at most the number of records in flight: that is what the
/// bias absorbs, and [`counts`](Self::counts) clamps the transient value into `0..=size`.
///
/// Concurrent records may land in the ring in a different order than their calls finished,
/// and with more than `size` records in flight at once two of them may share a slot (the later
/// swap wins): the window is then "the last `size` calls, give or take those in flight", which
/// is as exact as a concurrent breaker can be without a lock.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    /// The next slot (low 32 bits) and how many times the ring went round (high 32 bits).
    /// Advanced by compare-and-swap rather than a `fetch_add` and a `%`: a 64-bit division
    /// costs more than the whole rest of a record.
    cursor: AtomicU64,
    totals: AtomicU64,
    size: u64,
    /// `totals` when every slot holds a plain success.
    full_of_successes: u64,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        Self {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            cursor: AtomicU64::new(0),
            totals: AtomicU64::new(BIASED_ZERO),
            size: u64::from(size.max(1)),
            full_of_successes: BIASED_ZERO + (u64::from(size.max(1)) << CALLS_SHIFT),
        }
    }

    /// Whether the ring is full of plain successes: the fastest path, a healthy service. A
    /// further success written into any slot leaves the ring as it was, and where the cursor
    /// points no longer matters either (after k more records the ring holds those k and N - k
    /// successes, whichever slot it starts from), so it needs no write and no cursor move. This
    /// turns the hot path's only atomic read-modify-write on the breaker into a load.
    #[inline]
    pub(crate) fn is_full_of_successes(&self) -> bool {
        self.totals.load(Relaxed) == self.full_of_successes
    }

    /// Records an outcome. Returns the new counts if they changed; `None` when the outcome
    /// replaced an equal one (the steady state of a healthy service: no rate can have moved).
    #[inline]
    pub(crate) fn record(&self, outcome: Recorded) -> Option<WindowCounts> {
        if outcome == Recorded::SUCCESS && self.is_full_of_successes() {
            return None;
        }
        let mut cursor = self.cursor.load(Relaxed);
        let index = loop {
            let position = cursor & POSITION_MASK;
            let next = if position + 1 >= self.size {
                (cursor & !POSITION_MASK).wrapping_add(1 << 32)
            } else {
                cursor + 1
            };
            match self
                .cursor
                .compare_exchange_weak(cursor, next, Relaxed, Relaxed)
            {
                Ok(_) => break position,
                Err(actual) => cursor = actual,
            }
        };
        // The position is below `size`, which came from a `u32`.
        let slot = &self.slots[usize::try_from(index).unwrap_or(0)];
        let new = outcome.code();
        // Fast path: writing the same code would change nothing. Skipping the write is the same
        // as a write that a concurrent swap on this slot immediately superseded.
        if slot.load(Relaxed) == new {
            return None;
        }
        let old = slot.swap(new, Relaxed);
        if old == new {
            return None;
        }
        let delta = outcome
            .contribution()
            .wrapping_sub(contribution_of_code(old));
        let after = self.totals.fetch_add(delta, Relaxed).wrapping_add(delta);
        Some(self.decode(after))
    }

    /// The counts now.
    pub(crate) fn counts(&self) -> WindowCounts {
        self.decode(self.totals.load(Relaxed))
    }

    /// Empties the window, keeping the invariant: each slot is swapped out and its
    /// contribution subtracted, exactly as a record would.
    pub(crate) fn reset(&self) {
        for slot in &*self.slots {
            let old = slot.swap(0, Relaxed);
            if old != 0 {
                self.totals.fetch_sub(contribution_of_code(old), Relaxed);
            }
        }
    }

    /// All calls ever recorded (successes are not counted anywhere else: see the metrics).
    fn decode(&self, word: u64) -> WindowCounts {
        let read = |shift| {
            let biased = field(word, shift);
            let value = biased.saturating_sub(BIAS).min(self.size);
            u32::try_from(value).unwrap_or(u32::MAX)
        };
        WindowCounts {
            calls: read(CALLS_SHIFT),
            failures: read(FAILURES_SHIFT),
            slow: read(SLOW_SHIFT),
        }
    }
}

/// Bits per packed field of a time bucket, and the tag above them: which pass of the ring
/// (the second divided by the number of buckets, modulo 2^10) the counts belong to.
const BUCKET_FIELD_BITS: u32 = 18;
const BUCKET_FIELD_MASK: u64 = (1 << BUCKET_FIELD_BITS) - 1;
const TAG_SHIFT: u32 = 3 * BUCKET_FIELD_BITS;
const TAG_MASK: u64 = (1 << (64 - TAG_SHIFT)) - 1;

fn bucket_contribution(outcome: Recorded) -> u64 {
    1 | (u64::from(outcome.failure) << BUCKET_FIELD_BITS)
        | (u64::from(outcome.slow) << (2 * BUCKET_FIELD_BITS))
}

/// The calls of the last `seconds` seconds, one bucket per second.
///
/// Each bucket is one `AtomicU64`: a tag (which pass of the ring it belongs to) and three
/// packed 18-bit counts, so that "move the bucket to this second and count this call" is one
/// compare-and-swap, and no reader can see one second's counts under another second's tag. A
/// bucket left untouched for exactly a multiple of 1,024 passes of the ring (17 hours for a
/// 60 s window) would read as current. A field saturates at 262,143 calls per second instead
/// of overflowing into its neighbour.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[AtomicU64]>,
    seconds: u64,
    /// The second of the last full count, and whether it was below the minimum of calls.
    last_counted: AtomicU64,
    below_minimum: std::sync::atomic::AtomicBool,
}

impl TimeWindow {
    pub(crate) fn new(seconds: u32) -> Self {
        Self {
            buckets: (0..seconds.max(1)).map(|_| AtomicU64::new(0)).collect(),
            seconds: u64::from(seconds.max(1)),
            last_counted: AtomicU64::new(u64::MAX),
            below_minimum: std::sync::atomic::AtomicBool::new(true),
        }
    }

    fn tag(&self, second: u64) -> u64 {
        (second / self.seconds) & TAG_MASK
    }

    fn bucket(&self, second: u64) -> &AtomicU64 {
        // `second % seconds` is below `seconds`, which came from a `u32`.
        &self.buckets[usize::try_from(second % self.seconds).unwrap_or(0)]
    }

    /// Records an outcome in the bucket of `second` (seconds since the breaker's origin) and
    /// returns the window's counts as of `second` when a rate could have reached its
    /// threshold: after a failure or a slow call, or after a success when the window was
    /// below `minimum` calls at the last count or a second has passed since (old buckets may
    /// have expired). Summing the buckets costs more than the rest of a record, and a success
    /// can only lower the rates of an unchanged window.
    pub(crate) fn record(
        &self,
        second: u64,
        outcome: Recorded,
        minimum: u32,
    ) -> Option<WindowCounts> {
        self.add(second, outcome);
        if outcome == Recorded::SUCCESS
            && self.last_counted.load(Relaxed) == second
            && !self.below_minimum.load(Relaxed)
        {
            return None;
        }
        let counts = self.counts(second);
        self.last_counted.store(second, Relaxed);
        self.below_minimum.store(counts.calls < minimum, Relaxed);
        Some(counts)
    }

    fn add(&self, second: u64, outcome: Recorded) {
        let tag = self.tag(second);
        let bucket = self.bucket(second);
        let add = bucket_contribution(outcome);
        let mut current = bucket.load(Relaxed);
        loop {
            let counts = if current >> TAG_SHIFT == tag {
                current & !(TAG_MASK << TAG_SHIFT)
            } else {
                0
            };
            let saturated = (0..3).any(|i| {
                let shift = i * BUCKET_FIELD_BITS;
                (add >> shift) & 1 == 1
                    && (counts >> shift) & BUCKET_FIELD_MASK == BUCKET_FIELD_MASK
            });
            if saturated {
                break;
            }
            let new = (tag << TAG_SHIFT) | (counts + add);
            match bucket.compare_exchange_weak(current, new, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
    }

    /// The counts of the `seconds` seconds ending with `now` (seconds since the origin).
    pub(crate) fn counts(&self, now: u64) -> WindowCounts {
        let mut total = WindowCounts::default();
        let oldest = now.saturating_sub(self.seconds - 1);
        for second in oldest..=now {
            let word = self.bucket(second).load(Relaxed);
            if word >> TAG_SHIFT != self.tag(second) {
                continue;
            }
            let read = |i: u32| {
                u32::try_from((word >> (i * BUCKET_FIELD_BITS)) & BUCKET_FIELD_MASK).unwrap_or(0)
            };
            total.calls = total.calls.saturating_add(read(0));
            total.failures = total.failures.saturating_add(read(1));
            total.slow = total.slow.saturating_add(read(2));
        }
        total
    }

    pub(crate) fn reset(&self) {
        for bucket in &*self.buckets {
            bucket.store(0, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn outcome(failure: bool, slow: bool) -> Recorded {
        Recorded { failure, slow }
    }

    proptest! {
        /// The ring agrees with the obvious model: a queue of the last `size` outcomes.
        #[test]
        fn count_window_matches_a_queue_of_the_last_n(
            size in 1u32..40,
            outcomes in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..300),
            reset_at in proptest::option::of(0usize..300),
        ) {
            let window = CountWindow::new(size);
            let mut model: VecDeque<Recorded> = VecDeque::new();
            for (i, (failure, slow)) in outcomes.into_iter().enumerate() {
                if reset_at == Some(i) {
                    window.reset();
                    model.clear();
                    // After a reset the ring fills from wherever the cursor is: consecutive
                    // slots, so it still holds exactly the outcomes recorded since.
                }
                window.record(outcome(failure, slow));
                model.push_back(outcome(failure, slow));
                if model.len() > size as usize {
                    model.pop_front();
                }
                {
                    let expected = WindowCounts {
                        calls: u32::try_from(model.len()).unwrap(),
                        failures: u32::try_from(model.iter().filter(|o| o.failure).count()).unwrap(),
                        slow: u32::try_from(model.iter().filter(|o| o.slow).count()).unwrap(),
                    };
                    prop_assert_eq!(window.counts(), expected);
                }
            }
        }

        /// The time window agrees with a model that keeps (second, outcome) pairs.
        #[test]
        fn time_window_matches_a_list_of_timestamped_calls(
            seconds in 1u32..20,
            steps in proptest::collection::vec((0u64..5, any::<bool>(), any::<bool>()), 0..200),
        ) {
            let window = TimeWindow::new(seconds);
            let mut model: Vec<(u64, Recorded)> = Vec::new();
            let mut now = 0;
            for (advance, failure, slow) in steps {
                now += advance;
                window.record(now, outcome(failure, slow), 1);
                let got = window.counts(now);
                model.push((now, outcome(failure, slow)));
                let recent = model.iter().filter(|(t, _)| now - t < u64::from(seconds));
                let mut expected = WindowCounts::default();
                for (_, o) in recent {
                    expected.calls += 1;
                    expected.failures += u32::from(o.failure);
                    expected.slow += u32::from(o.slow);
                }
                prop_assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn the_ring_slides_after_it_is_full() {
        let window = CountWindow::new(10);
        for _ in 0..10_000 {
            window.record(outcome(false, false));
        }
        for _ in 0..5 {
            window.record(outcome(true, false));
        }
        assert_eq!(
            window.counts(),
            WindowCounts {
                calls: 10,
                failures: 5,
                slow: 0
            }
        );
    }

    #[test]
    fn concurrent_records_keep_the_totals_equal_to_the_slots() {
        let window = std::sync::Arc::new(CountWindow::new(64));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let window = window.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        window.record(outcome((i + t) % 3 == 0, i % 7 == 0));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let from_slots = window
            .slots
            .iter()
            .fold(WindowCounts::default(), |mut c, s| {
                let code = s.load(Relaxed);
                let add = contribution_of_code(code);
                c.calls += u32::try_from(field(add, CALLS_SHIFT)).unwrap();
                c.failures += u32::try_from(field(add, FAILURES_SHIFT)).unwrap();
                c.slow += u32::try_from(field(add, SLOW_SHIFT)).unwrap();
                c
            });
        assert_eq!(window.counts(), from_slots);
        assert_eq!(window.counts().calls, 64);
    }
}
