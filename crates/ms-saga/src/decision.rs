//! [`Decision`]: what a saga decided for one message.

use std::time::Duration;

use ms_bus::EnvelopeBuilder;

/// The outcome of [`Saga::handle`](crate::Saga::handle): the instance's next state and what to
/// do, all of it written in the transaction that records the message, or none of it.
///
/// ```
/// use std::time::Duration;
/// use ms_bus::Envelope;
/// use ms_saga::Decision;
///
/// let decision = Decision::to("charging")
///     .send("payments", Envelope::builder("payments.charge", "/invoicing"))
///     .schedule("no-reply", Duration::from_secs(30), Envelope::builder("invoicing.payment.timeout", "/invoicing"));
/// assert_eq!(decision.state(), Some(&"charging"));
/// assert_eq!(decision.message_count(), 2);
/// assert!(!decision.is_complete());
/// ```
///
/// - Commands ([`send`](Self::send)) and events ([`publish`](Self::publish)) go through the
///   outbox, with the instance id as partition key unless the envelope has one.
/// - A timeout ([`schedule`](Self::schedule)) is an ms-outbox scheduled message, sent to the
///   runner's [timeout destination](crate::SagaRunnerBuilder::timeout_destination) when due
///   and handled by the same instance like any message (route it with
///   [`timeout_instance`](crate::timeout_instance)). Its name identifies it within the
///   instance: scheduling a name again replaces the pending one, [`cancel`](Self::cancel)
///   removes it, and a timeout that fires after it was cancelled or replaced is settled without
///   effect. [`complete`](Self::complete) cancels every pending timeout.
#[derive(Debug, Clone)]
#[must_use]
pub struct Decision<S> {
    pub(crate) state: Option<S>,
    pub(crate) messages: Vec<Outgoing>,
    pub(crate) schedules: Vec<Timeout>,
    pub(crate) cancels: Vec<String>,
    pub(crate) complete: bool,
    pub(crate) ignore: bool,
}

/// A command or event the decision asked for.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) event: bool,
    pub(crate) destination: String,
    pub(crate) envelope: EnvelopeBuilder,
}

/// A timeout the decision asked for.
#[derive(Debug, Clone)]
pub(crate) struct Timeout {
    pub(crate) name: String,
    pub(crate) after: Duration,
    pub(crate) envelope: EnvelopeBuilder,
}

impl<S> Decision<S> {
    fn empty(state: Option<S>) -> Self {
        Self {
            state,
            messages: Vec::new(),
            schedules: Vec::new(),
            cancels: Vec::new(),
            complete: false,
            ignore: false,
        }
    }

    /// Moves the instance to `state`.
    pub fn to(state: S) -> Self {
        Self::empty(Some(state))
    }

    /// Keeps the instance's state (add messages, timeouts or completion).
    pub fn stay() -> Self {
        Self::empty(None)
    }

    /// The message means nothing in this state (a late reply, a duplicate by content): it
    /// is recorded as handled and nothing else happens (the state and version stay).
    pub fn ignore() -> Self {
        let mut decision = Self::empty(None);
        decision.ignore = true;
        decision
    }

    /// Sends a command to `destination`.
    pub fn send(mut self, destination: impl Into<String>, envelope: EnvelopeBuilder) -> Self {
        self.messages.push(Outgoing {
            event: false,
            destination: destination.into(),
            envelope,
        });
        self
    }

    /// Publishes an event on `topic`.
    pub fn publish(mut self, topic: impl Into<String>, envelope: EnvelopeBuilder) -> Self {
        self.messages.push(Outgoing {
            event: true,
            destination: topic.into(),
            envelope,
        });
        self
    }

    /// Schedules the timeout `name`: `envelope` comes back to this instance `after` from
    /// the commit (replacing a pending timeout of the same name). The runner sets its id,
    /// partition key and the [`INSTANCE_EXTENSION`](crate::INSTANCE_EXTENSION) and
    /// [`TIMEOUT_EXTENSION`](crate::TIMEOUT_EXTENSION).
    pub fn schedule(
        mut self,
        name: impl Into<String>,
        after: Duration,
        envelope: EnvelopeBuilder,
    ) -> Self {
        self.schedules.push(Timeout {
            name: name.into(),
            after,
            envelope,
        });
        self
    }

    /// Cancels the pending timeout `name` (nothing if none is pending).
    pub fn cancel(mut self, name: impl Into<String>) -> Self {
        self.cancels.push(name.into());
        self
    }

    /// Completes the instance: its pending timeouts are cancelled, and later messages for
    /// it are settled without effect. The row is kept until
    /// [`purge_completed`](crate::SagaStore::purge_completed) removes it.
    pub fn complete(mut self) -> Self {
        self.complete = true;
        self
    }

    /// The next state, if the decision changes it.
    pub fn state(&self) -> Option<&S> {
        self.state.as_ref()
    }

    /// How many commands, events and timeouts it sends.
    pub fn message_count(&self) -> usize {
        self.messages.len() + self.schedules.len()
    }

    /// Whether it completes the instance.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether it is [`ignore`](Self::ignore).
    pub fn is_ignore(&self) -> bool {
        self.ignore
    }
}
