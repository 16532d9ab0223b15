//! [`ResponseFuture`]: the retry loop, as a state machine (no allocation per call).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::{Config, Prepare, RetryRequest};
use crate::backoff::Delays;
use crate::classify::{Classify, Outcome, RetryHint};
use crate::{BoxError, Error};

pin_project! {
    /// The response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, C, R, Req>
    where
        S: Service<R::Request>,
        R: RetryRequest<Req>,
    {
        service: S,
        config: Arc<Config>,
        classifier: C,
        requests: R,
        prepared: Option<R::Prepared>,
        // A `u64`, not a `u32`: the future is moved by 8-byte words right after it is built,
        // and a word half-written by a 4-byte store cannot be forwarded to that read (a stall
        // of tens of cycles, measured here as most of the layer's cost).
        attempts: u64,
        // Everything only a retry (or a timeout) needs, allocated when first needed: a call
        // that succeeds at once keeps a future small enough to create and move cheaply.
        retrying: RetrySlot<R::Request>,
        #[pin]
        state: State<S::Future, R::PrepareFuture>,
        _request: PhantomData<fn(Req)>,
    }
}

/// The future's slot for [`Retrying`], empty until a retry (or a timer) needs it. Freeing a
/// full slot is kept out of line, so that the drop of a future that needed no retry is small
/// enough to be inlined into its caller: one reference count decrement and one check for
/// `None` (and the future need not even be written to memory).
struct RetrySlot<T>(Option<Box<Retrying<T>>>);

impl<T> Drop for RetrySlot<T> {
    #[inline]
    fn drop(&mut self) {
        if let Some(retrying) = self.0.take() {
            free_retrying(retrying);
        }
    }
}

#[cold]
#[inline(never)]
fn free_retrying<T>(retrying: Box<Retrying<T>>) {
    drop(retrying);
}

impl<T> std::ops::Deref for RetrySlot<T> {
    type Target = Option<Box<Retrying<T>>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<T> std::ops::DerefMut for RetrySlot<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

struct Retrying<T> {
    pending: Option<T>,
    delays: Option<Delays>,
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    // Whether the running timer is the overall deadline (rather than a per-try timeout).
    timer_is_deadline: bool,
}

impl<T> Retrying<T> {
    #[allow(clippy::unnecessary_box_returns)] // It lives boxed in the future; see there.
    fn new(config: &Config) -> Box<Self> {
        Box::new(Self {
            pending: None,
            delays: None,
            // A deadline too far away to represent is no deadline.
            deadline: config.deadline.and_then(|d| Instant::now().checked_add(d)),
            timer: None,
            timer_is_deadline: false,
        })
    }

    /// Starts the timer of one attempt: the per-try timeout or the overall deadline,
    /// whichever ends first; none if neither is set.
    fn arm_attempt_timer(&mut self, config: &Config) {
        // A timeout too far away to represent is no timeout.
        let per_try = config
            .per_try_timeout
            .and_then(|t| Instant::now().checked_add(t));
        let (end, is_deadline) = match (per_try, self.deadline) {
            (None, None) => {
                self.timer = None;
                return;
            }
            (Some(p), Some(d)) if d <= p => (d, true),
            (Some(p), _) => (p, false),
            (None, Some(d)) => (d, true),
        };
        self.timer_is_deadline = is_deadline;
        match &mut self.timer {
            Some(sleep) => sleep.as_mut().reset(end),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(end))),
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, P> {
        Preparing { #[pin] future: P },
        Calling { #[pin] future: F },
        Waiting,
        Readying,
        // `RetryRequest::attempt` gave no request for the first attempt.
        Unsendable,
        Done,
    }
}

impl<S, C, R, Req> fmt::Debug for ResponseFuture<S, C, R, Req>
where
    S: Service<R::Request>,
    R: RetryRequest<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// One attempt's end.
enum Attempt<T> {
    Finished(T),
    TimedOut,
}

impl<S, C, R, Req> ResponseFuture<S, C, R, Req>
where
    S: Service<R::Request>,
    R: RetryRequest<Req>,
{
    #[inline]
    pub(crate) fn new(
        mut service: S,
        config: Arc<Config>,
        classifier: C,
        requests: R,
        request: Req,
        timed: bool,
    ) -> Self {
        let mut retrying = timed.then(|| Retrying::new(&config));
        // Each field is written once: stores made here are drained before the reference
        // counts' atomic operations, so fewer of them make the call cheaper.
        let (prepared, state) = match requests.prepare(request) {
            Prepare::Pending(preparing) => (None, State::Preparing { future: preparing }),
            Prepare::Ready(mut prepared) => match requests.attempt(&mut prepared, true) {
                Some(request) => {
                    // The service was polled ready by our own `poll_ready`.
                    let call = service.call(request);
                    if let Some(retrying) = &mut retrying {
                        retrying.arm_attempt_timer(&config);
                    }
                    (Some(prepared), State::Calling { future: call })
                }
                None => (Some(prepared), State::Unsendable),
            },
        };
        Self {
            service,
            config,
            classifier,
            requests,
            prepared,
            attempts: 0,
            retrying: RetrySlot(retrying),
            state,
            _request: PhantomData,
        }
    }
}

impl<S, C, R, Req> Future for ResponseFuture<S, C, R, Req>
where
    S: Service<R::Request>,
    S::Error: Into<BoxError>,
    R: RetryRequest<Req>,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, BoxError>;

    // One state machine reads best as one loop.
    #[allow(clippy::too_many_lines)]
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let attempt = match this.state.as_mut().project() {
                StateProj::Preparing { future } => {
                    let prepared = this.prepared.insert(ready!(future.poll(cx)));
                    let Some(request) = this.requests.attempt(prepared, true) else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err("retry: the request could not be prepared".into()));
                    };
                    // The service was polled ready by our own `poll_ready`.
                    let future = this.service.call(request);
                    if let Some(retrying) = this.retrying.as_mut() {
                        retrying.arm_attempt_timer(this.config);
                    }
                    this.state.set(State::Calling { future });
                    continue;
                }
                StateProj::Calling { future } => match future.poll(cx) {
                    Poll::Ready(result) => {
                        // The common case first: an outcome not worth retrying ends the call
                        // here, without the retry bookkeeping below.
                        let outcome = this.classifier.classify(&result);
                        if !outcome.is_retryable() {
                            if let Some(budget) = &this.config.budget {
                                match outcome {
                                    Outcome::Success => budget.record_success(),
                                    Outcome::Failure { .. } => budget.record_failure(),
                                    Outcome::Ignored => {}
                                }
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(result.map_err(Into::into));
                        }
                        Attempt::Finished(result)
                    }
                    Poll::Pending => {
                        let Some(retrying) = this.retrying.as_mut() else {
                            return Poll::Pending;
                        };
                        let fired = retrying
                            .timer
                            .as_mut()
                            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                        if !fired {
                            return Poll::Pending;
                        }
                        if retrying.timer_is_deadline {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(Error::DeadlineExceeded {
                                deadline: this.config.deadline.unwrap_or_default(),
                            }
                            .into()));
                        }
                        Attempt::TimedOut
                    }
                },
                StateProj::Waiting => {
                    if let Some(timer) = this.retrying.as_mut().and_then(|r| r.timer.as_mut()) {
                        ready!(timer.as_mut().poll(cx));
                    }
                    this.state.set(State::Readying);
                    continue;
                }
                StateProj::Readying => {
                    if let Err(error) = ready!(this.service.poll_ready(cx)) {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error.into()));
                    }
                    let Some(request) = this.retrying.as_mut().and_then(|r| r.pending.take())
                    else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err("retry: no request for the next attempt".into()));
                    };
                    let future = this.service.call(request);
                    if let Some(retrying) = this.retrying.as_mut() {
                        retrying.arm_attempt_timer(this.config);
                    }
                    this.state.set(State::Calling { future });
                    continue;
                }
                StateProj::Unsendable => {
                    this.state.set(State::Done);
                    return Poll::Ready(Err("retry: the request could not be prepared".into()));
                }
                StateProj::Done => {
                    return Poll::Ready(Err("retry future polled after completion".into()));
                }
            };

            *this.attempts += 1;
            let (retryable, hint) = match &attempt {
                Attempt::Finished(result) => {
                    let outcome = this.classifier.classify(result);
                    if let Some(budget) = &this.config.budget {
                        match outcome {
                            Outcome::Success => budget.record_success(),
                            Outcome::Failure { .. } => budget.record_failure(),
                            // The destination never saw it (an open breaker further in).
                            Outcome::Ignored => {}
                        }
                    }
                    if outcome.is_retryable() {
                        (true, this.classifier.retry_hint(result))
                    } else {
                        (false, RetryHint::None)
                    }
                }
                Attempt::TimedOut => {
                    if let Some(budget) = &this.config.budget {
                        budget.record_failure();
                    }
                    (true, RetryHint::None)
                }
            };
            let mut next = None;
            if retryable && *this.attempts < u64::from(this.config.max_attempts) {
                let retrying = this
                    .retrying
                    .get_or_insert_with(|| Retrying::new(this.config));
                if let (Some(wait), Some(prepared)) = (
                    next_delay(
                        this.config,
                        &mut retrying.delays,
                        *this.attempts,
                        hint,
                        retrying.deadline,
                    ),
                    this.prepared.as_mut(),
                ) {
                    next = this.requests.attempt(prepared, false).map(|r| (wait, r));
                }
            }
            let Some(((delay, wake), request)) = next else {
                this.state.set(State::Done);
                return Poll::Ready(match attempt {
                    Attempt::Finished(result) => result.map_err(Into::into),
                    Attempt::TimedOut => Err(Error::Timeout {
                        after: this.config.per_try_timeout.unwrap_or_default(),
                    }
                    .into()),
                });
            };
            tracing::debug!(attempt = *this.attempts, ?delay, "retrying");
            #[cfg(feature = "metrics")]
            crate::metrics::increment(crate::metrics::RETRY_ATTEMPTS);
            if let Some(retrying) = this.retrying.as_mut() {
                retrying.pending = Some(request);
                match &mut retrying.timer {
                    Some(timer) => timer.as_mut().reset(wake),
                    None => retrying.timer = Some(Box::pin(tokio::time::sleep_until(wake))),
                }
            }
            this.state.set(State::Waiting);
        }
    }
}

/// The wait before the next attempt and when it ends, or `None` when no retry should be made:
/// the budget is spent, the server said not to, the server asked for a wait longer than
/// `max_retry_hint`, or the wait would run past the deadline (or past what the clock can
/// represent).
fn next_delay(
    config: &Config,
    delays: &mut Option<Delays>,
    attempts: u64,
    hint: RetryHint,
    deadline: Option<Instant>,
) -> Option<(Duration, Instant)> {
    if config.budget.as_ref().is_some_and(|b| !b.can_retry()) {
        tracing::debug!(attempts, "retry budget spent: not retrying");
        #[cfg(feature = "metrics")]
        crate::metrics::increment(crate::metrics::RETRY_BUDGET_EXHAUSTED);
        return None;
    }
    let backoff = delays
        .get_or_insert_with(|| config.backoff.delays())
        .next()
        .unwrap_or_else(|| config.backoff.max());
    let delay = match hint {
        RetryHint::DoNotRetry => return None,
        RetryHint::After(after) if after > config.max_retry_hint => {
            tracing::debug!(
                attempts,
                hint = ?after,
                max_retry_hint = ?config.max_retry_hint,
                "the server asked to wait longer than max_retry_hint: not retrying"
            );
            return None;
        }
        RetryHint::After(after) => after,
        RetryHint::None => backoff,
    };
    // A hint comes from the server (and a backoff from configuration): either may be too long
    // to add to the clock, and a wait that never ends is no retry.
    let wake = Instant::now().checked_add(delay)?;
    match deadline {
        Some(deadline) if wake >= deadline => None,
        _ => Some((delay, wake)),
    }
}
