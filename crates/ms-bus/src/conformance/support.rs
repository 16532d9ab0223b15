//! What the cases share: a recording handler, waits, test events and subscriptions.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::WAIT_LIMIT;
use crate::consumer::{Consumer, ConsumerHandle, Message, Outcome};
use crate::{BoxError, Envelope, Subscriber, Subscription};

/// What handlers saw: (envelope id, attempt, consumer tag), in order.
#[derive(Debug, Clone, Default)]
pub(super) struct Seen(Arc<Mutex<Vec<(String, u32, usize)>>>);

impl Seen {
    pub(super) fn push(&self, id: &str, attempt: u32, tag: usize) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id.to_owned(), attempt, tag));
    }

    pub(super) fn all(&self) -> Vec<(String, u32, usize)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn ids(&self) -> BTreeSet<String> {
        self.all().into_iter().map(|(id, _, _)| id).collect()
    }

    pub(super) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// A handler that records each message and then does what `decide` says.
pub(super) fn recorder<F>(
    seen: &Seen,
    tag: usize,
    decide: F,
) -> impl tower::Service<
    Message,
    Response = Outcome,
    Error = BoxError,
    Future = BoxFuture<'static, Result<Outcome, BoxError>>,
> + Send
+ 'static
where
    F: Fn(&Message) -> Result<Outcome, BoxError> + Send + Sync + 'static,
{
    let seen = seen.clone();
    let decide = Arc::new(decide);
    tower::service_fn(move |message: Message| {
        let seen = seen.clone();
        let decide = decide.clone();
        let fut: BoxFuture<'static, Result<Outcome, BoxError>> = Box::pin(async move {
            let outcome = decide(&message);
            seen.push(message.id(), message.attempt(), tag);
            outcome
        });
        fut
    })
}

#[allow(clippy::unnecessary_wraps)] // the shape every `decide` closure has
pub(super) fn ack(_: &Message) -> Result<Outcome, BoxError> {
    Ok(Outcome::Ack)
}

pub(super) async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT_LIMIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) fn event(n: usize) -> Envelope {
    Envelope::builder("conformance.thing.happened", "/conformance")
        .subject(format!("thing-{n}"))
        .json_data(&serde_json::json!({ "n": n }))
        .and_then(crate::EnvelopeBuilder::build)
        .unwrap_or_else(|e| panic!("building a test event: {e}"))
}

pub(super) fn sub_events(topic: &str, group: &str) -> Subscription {
    Subscription::events(topic, group).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn sub_commands(destination: &str) -> Subscription {
    Subscription::commands(destination).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) async fn serve<B: Subscriber>(
    bus: &B,
    consumer: Consumer,
    seen: &Seen,
    tag: usize,
    decide: impl Fn(&Message) -> Result<Outcome, BoxError> + Send + Sync + 'static,
) -> ConsumerHandle {
    consumer
        .serve(bus, recorder(seen, tag, decide))
        .await
        .unwrap_or_else(|e| panic!("subscribing: {e}"))
}

pub(super) async fn shutdown(handle: ConsumerHandle) {
    handle
        .shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutting down: {e}"));
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
