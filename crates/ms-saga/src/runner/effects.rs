//! A decision's effects: its commands and events for the outbox, its timeouts scheduled
//! (as outbox messages delivered later) and cancelled.

use std::collections::BTreeMap;

use ms_bus::PARTITION_KEY_EXTENSION;
use ms_outbox::OutboxMessage;

use super::SagaRunner;
use super::step::outbox_failure;
use crate::error::Failure;
use crate::saga::{INSTANCE_EXTENSION, TIMEOUT_EXTENSION};
use crate::store::SagaBackend;
use crate::{Decision, Saga};

impl<S: Saga, DB: SagaBackend> SagaRunner<S, DB> {
    /// Cancels and schedules the decision's timeouts (updating `timeouts`) and returns the
    /// outbox messages to enqueue.
    pub(super) async fn apply(
        &self,
        conn: &mut DB::Connection,
        instance: &str,
        version: i64,
        timeouts: &mut BTreeMap<String, String>,
        decision: &Decision<S::State>,
    ) -> Result<Vec<OutboxMessage>, Failure> {
        let outbox = &self.inner.outbox;
        let mut stale = Vec::new();
        for name in &decision.cancels {
            stale.extend(timeouts.remove(name));
        }
        let mut messages = Vec::with_capacity(decision.message_count());
        for outgoing in &decision.messages {
            let mut envelope = outgoing.envelope.clone().build()?;
            if envelope.partition_key().is_none() {
                envelope.set_extension(PARTITION_KEY_EXTENSION, instance)?;
            }
            messages.push(if outgoing.event {
                OutboxMessage::event(outgoing.destination.clone(), envelope)
            } else {
                OutboxMessage::command(outgoing.destination.clone(), envelope)
            });
        }
        for timeout in &decision.schedules {
            // The id names the timeout and the step that set it: unique per scheduling (the
            // inbox would take a second firing of a reused id for a redelivery), and what
            // the instance row remembers to recognize and cancel it.
            let id = format!("{}/{instance}/{}/{version}", S::NAME, timeout.name);
            let envelope = timeout
                .envelope
                .clone()
                .id(id.clone())
                .partition_key(instance)
                .extension(INSTANCE_EXTENSION, instance)?
                .extension(TIMEOUT_EXTENSION, timeout.name.clone())?
                .build()?;
            stale.extend(timeouts.insert(timeout.name.clone(), id));
            messages.push(
                OutboxMessage::command(self.inner.timeout_destination.clone(), envelope)
                    .deliver_after(timeout.after)
                    .partition_key(instance),
            );
        }
        if decision.complete {
            stale.extend(std::mem::take(timeouts).into_values());
        }
        for id in stale {
            // Already due (NotScheduled) is fine: the instance no longer lists it, so its
            // firing is settled without effect.
            let _ = outbox
                .cancel(&mut *conn, &id)
                .await
                .map_err(outbox_failure::<DB>)?;
        }
        Ok(messages)
    }
}
