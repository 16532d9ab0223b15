//! One in-memory queue: a consumer group's copy of a topic, or a command destination.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::Envelope;
use crate::codec::TransportMessage;

/// What is queued: an envelope as published, or raw transport bytes (which may not even be a
/// CloudEvents event, to test the dead-letter path).
#[derive(Debug, Clone)]
pub(super) enum Payload {
    Envelope(Envelope),
    Raw(TransportMessage),
}

#[derive(Debug, Clone)]
pub(super) struct Item {
    pub(super) payload: Payload,
    /// Transport headers beyond the envelope (dead-letter reasons).
    pub(super) headers: Vec<(String, String)>,
    /// Deliveries so far.
    pub(super) deliveries: u32,
}

#[derive(Debug)]
pub(super) struct Queue {
    pub(super) origin: Arc<str>,
    pub(super) group: Option<Arc<str>>,
    items: Mutex<VecDeque<Item>>,
    available: Notify,
}

impl Queue {
    pub(super) fn new(origin: Arc<str>, group: Option<Arc<str>>) -> Self {
        Self {
            origin,
            group,
            items: Mutex::new(VecDeque::new()),
            available: Notify::new(),
        }
    }

    /// Queues `item` at `position` (clamped; `None` is last) and wakes one waiting consumer.
    pub(super) fn push(&self, item: Item, position: Option<usize>) {
        {
            let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
            match position {
                Some(at) => {
                    let at = at.min(items.len());
                    items.insert(at, item);
                }
                None => items.push_back(item),
            }
        }
        self.available.notify_one();
    }

    pub(super) fn push_all(&self, batch: impl IntoIterator<Item = Item>) {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(batch);
        // One wake-up is enough: a consumer that takes an item and sees more wakes the next
        // (see `pop`), so a batch does not cost a thread wake-up per item.
        self.available.notify_one();
    }

    /// The next item, waiting until there is one.
    pub(super) async fn pop(&self) -> Item {
        loop {
            // Registering interest before looking avoids missing a push in between.
            let notified = self.available.notified();
            let (item, more) = {
                let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
                let item = items.pop_front();
                (item, !items.is_empty())
            };
            if let Some(item) = item {
                if more {
                    // Another consumer may be waiting for the items behind this one.
                    self.available.notify_one();
                }
                return item;
            }
            notified.await;
        }
    }

    pub(super) fn len(&self) -> usize {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
