//! The breaker's states, and the packed state word the hot path reads.

use std::fmt;

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls go through; outcomes are recorded in the sliding window.
    Closed,
    /// Calls are rejected with [`Error::CircuitOpen`](crate::Error::CircuitOpen) until the open
    /// duration has passed.
    Open,
    /// A fixed number of trial calls go through; their failure rate decides between closed
    /// and open.
    HalfOpen,
    /// Forced open by [`CircuitBreaker::force_open`](super::CircuitBreaker::force_open):
    /// rejects every call until [`reset`](super::CircuitBreaker::reset).
    ForcedOpen,
    /// Forced closed by [`CircuitBreaker::force_closed`](super::CircuitBreaker::force_closed):
    /// lets every call through and records nothing until
    /// [`reset`](super::CircuitBreaker::reset).
    ForcedClosed,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::ForcedClosed => "forced_closed",
        })
    }
}

const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

/// The state and an epoch, packed in one `u64` so that the hot path learns both with one
/// load. The epoch grows by one on every transition: a call admitted under one epoch records
/// its outcome only if the epoch is still current, so a slow call from before the breaker
/// opened never counts as a half-open trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word(pub(crate) u64);

impl Word {
    /// Not a state: admission was refused.
    pub(crate) const REJECTED: Self = Self(u64::MAX);

    pub(crate) fn is_rejected(self) -> bool {
        self == Self::REJECTED
    }

    pub(crate) fn new(state: State, epoch: u64) -> Self {
        let code = match state {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
            State::ForcedClosed => 4,
        };
        Self((epoch << STATE_BITS) | code)
    }

    #[inline]
    pub(crate) fn state(self) -> State {
        match self.0 & STATE_MASK {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            _ => State::ForcedClosed,
        }
    }

    pub(crate) fn epoch(self) -> u64 {
        self.0 >> STATE_BITS
    }

    pub(crate) fn next(self, state: State) -> Self {
        Self::new(state, self.epoch().wrapping_add(1))
    }
}

/// One state change, as listeners and `tracing` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTransition {
    /// The breaker's name.
    pub name: std::sync::Arc<str>,
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
}
