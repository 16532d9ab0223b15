//! Shared progress of one pipeline (one version of a projection being fed): what each
//! segment has done, counters, the state. Written by the reader and the segments, read by
//! the handle.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use tokio::sync::watch;

use super::status::RunnerState;

/// Replay boundary meaning "everything is replay" (a rebuild before its switch).
pub(crate) const ALL_REPLAY: i64 = i64::MAX;
/// Replay boundary meaning "nothing is replay" (a live pipeline).
pub(crate) const NO_REPLAY: i64 = 0;

#[derive(Debug)]
pub(crate) struct Progress {
    /// Per segment: every event of the segment up to this position is applied and committed
    /// (or the segment has none up to it).
    done: Vec<AtomicI64>,
    /// The minimum of `done`: every event up to it is applied.
    position: watch::Sender<i64>,
    pub(crate) head: AtomicI64,
    pub(crate) applied: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) parked: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
    state: watch::Sender<RunnerState>,
    /// `(position, recorded_at)` of dispatched events, oldest first, trimmed as they apply.
    pending: Mutex<VecDeque<(i64, i64)>>,
    /// Bus deliveries handed to segments and not settled yet: ticket → when the event was
    /// created (its `time`, else when it arrived), in Unix microseconds.
    in_flight: Mutex<HashMap<u64, i64>>,
    tickets: AtomicU64,
    /// Fed from a bus (no positions: "caught up" means nothing in flight).
    bus: AtomicBool,
    /// Per segment: events at or below this position are replayed history.
    pub(crate) replay_until: Vec<AtomicI64>,
    /// The reader reads no further than this (a rebuild must not run ahead of the live
    /// version, or it would apply as history events whose side effects never happened).
    pub(crate) cap: watch::Sender<i64>,
}

impl Progress {
    pub(crate) fn new(starts: &[i64], replay: i64) -> Self {
        let start = starts.iter().copied().min().unwrap_or(0);
        Self {
            done: starts.iter().map(|s| AtomicI64::new(*s)).collect(),
            position: watch::Sender::new(start),
            head: AtomicI64::new(start),
            applied: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            last_error: Mutex::new(None),
            state: watch::Sender::new(RunnerState::Starting),
            pending: Mutex::new(VecDeque::new()),
            in_flight: Mutex::new(HashMap::new()),
            tickets: AtomicU64::new(0),
            bus: AtomicBool::new(false),
            replay_until: starts.iter().map(|_| AtomicI64::new(replay)).collect(),
            cap: watch::Sender::new(i64::MAX),
        }
    }

    /// Segment `segment` has done everything up to `position`.
    pub(crate) fn done(&self, segment: usize, position: i64) {
        if let Some(done) = self.done.get(segment) {
            done.fetch_max(position, Ordering::AcqRel);
        }
        let min = self
            .done
            .iter()
            .map(|d| d.load(Ordering::Acquire))
            .min()
            .unwrap_or(position);
        self.position.send_if_modified(|current| {
            if min > *current {
                *current = min;
                true
            } else {
                false
            }
        });
    }

    pub(crate) fn position(&self) -> i64 {
        *self.position.borrow()
    }

    pub(crate) fn segment_positions(&self) -> Vec<i64> {
        self.done
            .iter()
            .map(|d| d.load(Ordering::Acquire))
            .collect()
    }

    pub(crate) fn subscribe_position(&self) -> watch::Receiver<i64> {
        self.position.subscribe()
    }

    pub(crate) fn set_state(&self, state: RunnerState) {
        self.state.send_replace(state);
    }

    pub(crate) fn state(&self) -> RunnerState {
        self.state.borrow().clone()
    }

    pub(crate) fn error(&self, error: &impl ToString) {
        let text = error.to_string();
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(text);
        }
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }

    pub(crate) fn dispatched(&self, rows: impl IntoIterator<Item = (i64, i64)>) {
        let position = self.position();
        if let Ok(mut pending) = self.pending.lock() {
            // Trim here too, so the queue stays as short as what is in flight even when no
            // one asks for the status.
            while pending.front().is_some_and(|(p, _)| *p <= position) {
                pending.pop_front();
            }
            pending.extend(rows);
            // Bounded by what is in flight; the cap only guards against a stuck segment.
            while pending.len() > 1_000_000 {
                pending.pop_front();
            }
        }
    }

    /// When the oldest event not yet applied was recorded (log) or created (bus), in Unix
    /// microseconds.
    pub(crate) fn oldest_pending(&self) -> Option<i64> {
        let position = self.position();
        let logged = self.pending.lock().ok().and_then(|mut pending| {
            while pending.front().is_some_and(|(p, _)| *p <= position) {
                pending.pop_front();
            }
            pending.front().map(|(_, at)| *at)
        });
        let delivered = self
            .in_flight
            .lock()
            .ok()
            .and_then(|in_flight| in_flight.values().copied().min());
        logged.into_iter().chain(delivered).min()
    }

    /// A bus delivery handed to a segment; returns its ticket for [`settled`](Self::settled).
    pub(crate) fn delivered(&self, created_at: i64) -> u64 {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut in_flight) = self.in_flight.lock() {
            in_flight.insert(ticket, created_at);
        }
        ticket
    }

    /// A bus delivery was settled (applied, skipped, parked, or put back for later).
    pub(crate) fn settled(&self, ticket: u64) {
        if let Ok(mut in_flight) = self.in_flight.lock() {
            in_flight.remove(&ticket);
        }
    }

    /// This pipeline is fed from a bus.
    pub(crate) fn mark_bus(&self) {
        self.bus.store(true, Ordering::Release);
    }

    /// The state, with "caught up" worked out for a bus feed: no delivery waiting in the
    /// runner.
    pub(crate) fn current_state(&self) -> RunnerState {
        match self.state() {
            RunnerState::Running { caught_up } => RunnerState::Running {
                caught_up: if self.bus.load(Ordering::Acquire) {
                    self.in_flight
                        .lock()
                        .is_ok_and(|in_flight| in_flight.is_empty())
                } else {
                    caught_up
                },
            },
            other => other,
        }
    }

    pub(crate) fn replaying(&self, segment: usize, position: Option<i64>) -> bool {
        let until = self
            .replay_until
            .get(segment)
            .map_or(NO_REPLAY, |u| u.load(Ordering::Acquire));
        match position {
            Some(position) => position <= until,
            None => until == ALL_REPLAY,
        }
    }
}
