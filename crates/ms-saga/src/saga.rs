//! [`Saga`]: the definition of a long-running process, and [`Route`], how a message finds
//! its instance.

use ms_bus::Envelope;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Decision, HandleError};

/// The extension the runner sets on a timeout's envelope: the instance it belongs to.
pub const INSTANCE_EXTENSION: &str = "sagainstance";
/// The extension the runner sets on a timeout's envelope: the timeout's name.
pub const TIMEOUT_EXTENSION: &str = "sagatimeout";

/// A long-running business process: a persisted state machine that reacts to messages.
///
/// - [`NAME`](Self::NAME) keys its instances in the store and its entries in the inbox.
/// - [`route`](Self::route) declares, once, which envelopes start an instance and which
///   belong to one (by subject, partition key, an extension, or the id the runner puts on
///   the saga's own timeouts), and turns them into the saga's [`Message`](Self::Message).
/// - [`handle`](Self::handle) is the process itself: from the current state and a message to
///   a [`Decision`] (the next state, commands to send, events to publish, timeouts to
///   schedule or cancel, completion). It must be **pure**: the runner may call it more than
///   once for one message (a conflict with another runner, a database error before commit),
///   and only the decision of the attempt that commits takes effect.
///
/// An instance that does not exist yet has [`State::default()`](Default::default): write the
/// states as an enum whose default is "not started" and `handle` as a `match` on
/// `(state, message)`; a message that makes no sense in a state is answered with
/// [`Decision::ignore`] (settled, no effect) or a [`HandleError`] (parked with its reason).
/// See the [crate docs](crate) for a complete saga.
pub trait Saga: Send + Sync + 'static {
    /// The saga's name: stable across deployments (the stored instances carry it), an
    /// ms-bus name (ASCII letters, digits, `.`, `_`, `-`).
    const NAME: &'static str;

    /// The state of one instance, stored as JSON between messages.
    type State: Serialize + DeserializeOwned + Default + Send + Sync + 'static;

    /// What the saga reacts to, decoded from the envelope by [`route`](Self::route).
    type Message: Send + Sync + 'static;

    /// Which instance `envelope` belongs to, whether it may start one, and what it says.
    fn route(&self, envelope: &Envelope) -> Route<Self::Message>;

    /// The next step of the instance in `state`, given `message`. Pure: see the trait docs.
    fn handle(
        &self,
        state: &Self::State,
        message: &Self::Message,
    ) -> Result<Decision<Self::State>, HandleError>;
}

/// Where a message goes, as [`Saga::route`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route<M> {
    /// An initiating message: starts instance `instance` (in the default state) if it does
    /// not exist, else is handled by it like any other.
    Start {
        /// The instance's correlation id.
        instance: String,
        /// The decoded message.
        message: M,
    },
    /// A message of an existing instance; for an unknown instance the runner's
    /// [`UnknownInstance`](crate::UnknownInstance) policy applies.
    Correlate {
        /// The instance's correlation id.
        instance: String,
        /// The decoded message.
        message: M,
    },
    /// Not for this saga: settled without effect.
    Ignore,
    /// For this saga but unusable (its data does not decode, the correlation id is missing):
    /// dead-lettered with this reason.
    Reject(String),
}

impl<M> Route<M> {
    /// An initiating message of `instance`.
    pub fn start(instance: impl Into<String>, message: M) -> Self {
        Self::Start {
            instance: instance.into(),
            message,
        }
    }

    /// A message of the existing instance `instance`.
    pub fn correlate(instance: impl Into<String>, message: M) -> Self {
        Self::Correlate {
            instance: instance.into(),
            message,
        }
    }

    /// A message of the instance named by `id`, rejected with a reason when `id` is `None`
    /// (the envelope lacks the attribute the saga correlates by): pass
    /// `envelope.subject()`, `envelope.partition_key()`, `envelope.extension("…")`, or
    /// [`timeout_instance`] for the saga's own timeouts.
    pub fn correlate_by(id: Option<&str>, message: M) -> Self {
        match id {
            Some(id) if !id.is_empty() => Self::correlate(id, message),
            _ => Self::Reject("the message carries no correlation id for this saga".to_owned()),
        }
    }

    /// An initiating message of the instance named by `id`, rejected when `id` is `None`.
    pub fn start_by(id: Option<&str>, message: M) -> Self {
        match id {
            Some(id) if !id.is_empty() => Self::start(id, message),
            _ => Self::Reject("the message carries no correlation id for this saga".to_owned()),
        }
    }
}

/// The instance a timeout envelope (one the runner scheduled for a [`Decision::schedule`])
/// belongs to, from its [`INSTANCE_EXTENSION`].
pub fn timeout_instance(envelope: &Envelope) -> Option<&str> {
    envelope.extension(INSTANCE_EXTENSION)
}

/// The name of the timeout `envelope` carries, from its [`TIMEOUT_EXTENSION`] (`None` for
/// any other message).
pub fn timeout_name(envelope: &Envelope) -> Option<&str> {
    envelope.extension(TIMEOUT_EXTENSION)
}
