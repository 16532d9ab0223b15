//! The conformance suite every adapter runs against its real broker (feature `testkit`).
//!
//! An adapter's test file implements [`Fixture`] (a fresh namespace on the real broker, and a
//! way to connect to it) and generates one test per case with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```
//! # #[cfg(feature = "memory")] {
//! use ms_bus::conformance::{Capabilities, Fixture};
//! use ms_bus::memory::MemoryBus;
//!
//! struct Memory(MemoryBus);
//!
//! impl Fixture for Memory {
//!     type Bus = MemoryBus;
//!     fn connect(&self) -> futures_util::future::BoxFuture<'_, MemoryBus> {
//!         Box::pin(async { self.0.clone() })
//!     }
//!     fn name(&self, name: &str) -> String {
//!         name.to_owned()
//!     }
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities::default()
//!     }
//! }
//!
//! // In tests/conformance_memory.rs:
//! // ms_bus::conformance_tests!(async { Some(Memory(MemoryBus::new())) });
//! # }
//! ```
//!
//! Each case publishes through one connection and consumes through others, as separate
//! processes would, and asserts what the issue promises: round trip; one copy per group,
//! shared within a group; commands to one consumer; nack redelivers; a crashed handler's
//! message is redelivered; a poison message goes to the dead letter after N deliveries while
//! the rest flow; a foreign event with a line break where a header must carry it is
//! dead-lettered, never handed to a handler; 10,000 messages none lost; per-partition-key
//! order, per-subject order, and order through retries (kept in the key's lane); graceful
//! shutdown loses nothing; and (with [`RestartableFixture`]) a broker restart loses nothing
//! confirmed.
//!
//! Waits are bounded by [`WAIT_LIMIT`], long enough for a loaded 2-core CI machine: the cases
//! wait for conditions, never for fixed times.
//!
//! # Panics
//!
//! Every case panics (fails its test) when the adapter breaks a promise; that is what they
//! are for, so the individual cases do not repeat it.
#![allow(clippy::missing_panics_doc)]

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::{CommandSender, EventPublisher, Subscriber};

/// The longest a case waits for a condition before it fails.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// What a broker promises beyond the common semantics; cases for promises a broker does not
/// make are skipped (loudly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// A single consumer receives one partition key's messages in publish order.
    pub ordered_per_key: bool,
    /// How long the broker waits for a settlement before redelivering; the crash case
    /// subscribes with it (keep it short: the case waits that long).
    pub ack_wait: Duration,
    /// A message redelivered to another consumer after its first consumer crashed reports
    /// a higher [`attempt`](crate::consumer::Message::attempt) (the broker or the adapter
    /// counts across consumers). Without it the crash case checks only the redelivery.
    pub counts_redeliveries: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            ordered_per_key: true,
            ack_wait: Duration::from_secs(1),
            counts_redeliveries: true,
        }
    }
}

/// A fresh namespace on a real broker.
pub trait Fixture: Send + Sync + 'static {
    /// The adapter's bus.
    type Bus: EventPublisher + CommandSender + Subscriber + Send + Sync + 'static;

    /// A new connection (a separate process would have its own).
    fn connect(&self) -> BoxFuture<'_, Self::Bus>;

    /// `name` inside this fixture's namespace, a valid bus name.
    fn name(&self, name: &str) -> String;

    /// What the broker promises.
    fn capabilities(&self) -> Capabilities;

    /// Publishes bytes that are no CloudEvents event to `topic`, if the fixture can; the
    /// poison-decoding case is skipped when it returns `None`.
    fn publish_garbage<'a>(&'a self, _topic: &'a str) -> Option<BoxFuture<'a, ()>> {
        None
    }

    /// Publishes `body`, a JSON document, to `topic` in structured mode as a foreign producer
    /// would (content type `application/cloudevents+json`, no `ce-` headers), if the fixture
    /// can; the foreign-event cases are skipped when it returns `None`.
    fn publish_structured<'a>(
        &'a self,
        _topic: &'a str,
        _body: Vec<u8>,
    ) -> Option<BoxFuture<'a, ()>> {
        None
    }
}

/// A fixture whose broker is a private process the case may kill and restart.
pub trait RestartableFixture: Fixture {
    /// Kills the broker (SIGKILL, as a crash) and starts it again on the same address and
    /// storage.
    fn restart_broker(&mut self) -> BoxFuture<'_, ()>;
}

/// Generates one `#[tokio::test]` per conformance case. `$fixture` is an expression
/// evaluating to a future of `Option<impl Fixture>` (`None`: the broker is not there, and
/// the fixture already printed its `SKIPPED` line).
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:expr) => {
        $crate::conformance_tests!(@cases $fixture;
            round_trip,
            groups_get_one_copy_each_and_share_within,
            commands_reach_one_consumer,
            nack_redelivers,
            crashed_handler_redelivers,
            in_progress_extends_the_deadline,
            poison_goes_to_dead_letter_while_the_rest_flow,
            undecodable_goes_to_dead_letter,
            foreign_line_breaks_go_to_dead_letter_never_to_a_forwarding_handler,
            ten_thousand_messages_none_lost,
            per_partition_key_order,
            subject_only_events_keep_their_order,
            a_retry_keeps_the_later_messages_of_its_key_behind_it,
            graceful_shutdown_loses_nothing,
        );
    };
    (@cases $fixture:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(fixture) = $fixture.await {
                    $crate::conformance::$case(&fixture).await;
                }
            }
        )*
    };
}

mod dead_letter;
mod delivery;
mod loss;
mod order;
mod support;

pub use dead_letter::{
    foreign_line_breaks_go_to_dead_letter_never_to_a_forwarding_handler,
    poison_goes_to_dead_letter_while_the_rest_flow, undecodable_goes_to_dead_letter,
};
pub use delivery::{
    commands_reach_one_consumer, crashed_handler_redelivers,
    groups_get_one_copy_each_and_share_within, in_progress_extends_the_deadline, nack_redelivers,
    round_trip,
};
pub use loss::{
    broker_restart_loses_nothing_confirmed, graceful_shutdown_loses_nothing,
    ten_thousand_messages_none_lost,
};
pub use order::{
    a_retry_keeps_the_later_messages_of_its_key_behind_it, per_partition_key_order,
    subject_only_events_keep_their_order,
};
