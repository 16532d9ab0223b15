//! The request a handler receives: the envelope, the delivery facts, and a way to say "still
//! working".

use std::ops::Deref;
use std::sync::Arc;

use crate::{Acker, BusError, DeliveryInfo, Envelope};

/// A message handed to a handler (`tower::Service<Message>`). Dereferences to its
/// [`Envelope`].
#[derive(Clone)]
pub struct Message {
    envelope: Arc<Envelope>,
    info: Arc<DeliveryInfo>,
    acker: Arc<dyn Acker>,
}

impl Message {
    pub(crate) fn new(
        envelope: Arc<Envelope>,
        info: Arc<DeliveryInfo>,
        acker: Arc<dyn Acker>,
    ) -> Self {
        Self {
            envelope,
            info,
            acker,
        }
    }

    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The delivery facts (attempt, origin, group, transport headers).
    pub fn info(&self) -> &DeliveryInfo {
        &self.info
    }

    /// Which delivery this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.info.attempt
    }

    /// Tells the broker the handler is still working, extending the ack deadline. Call it
    /// from long handlers more often than the subscription's `ack_wait`.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.acker.in_progress().await
    }

    /// The envelope, owned (cloned only if the message was cloned).
    pub fn into_envelope(self) -> Envelope {
        Arc::unwrap_or_clone(self.envelope)
    }
}

impl Deref for Message {
    type Target = Envelope;

    fn deref(&self) -> &Envelope {
        &self.envelope
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("envelope", &self.envelope)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}
