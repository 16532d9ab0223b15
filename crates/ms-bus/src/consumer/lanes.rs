//! Per-key lanes: with several messages in flight, messages that share an
//! [`Envelope::ordering_key`](crate::Envelope::ordering_key) (the `partitionkey`, else the
//! subject, else the id) are still handled one after the other, in delivery order; a message
//! retried in its lane keeps the key's later ones behind it.

use std::collections::{HashMap, VecDeque};

use crate::Delivery;

/// Which keys have a message in flight, and the deliveries waiting behind each.
#[derive(Debug, Default)]
pub(super) struct PartitionLanes {
    /// A key is present while one of its messages is in flight; its queue holds the
    /// deliveries of the same key that arrived meanwhile.
    busy: HashMap<String, VecDeque<Delivery>>,
    /// Deliveries whose predecessor finished, ready to start (their key stays busy).
    runnable: VecDeque<(Delivery, String)>,
    /// Deliveries held in the queues and in `runnable`.
    held: usize,
}

impl PartitionLanes {
    /// Lets `delivery` start now (with its key, to hand back to [`finish`](Self::finish)),
    /// or holds it behind the in-flight message of its key.
    pub(super) fn admit(&mut self, delivery: Delivery) -> Option<(Delivery, Option<String>)> {
        let Some(key) = delivery
            .message()
            .ok()
            .map(|envelope| envelope.ordering_key().to_owned())
        else {
            return Some((delivery, None));
        };
        match self.busy.get_mut(&key) {
            Some(waiting) => {
                waiting.push_back(delivery);
                self.held += 1;
                None
            }
            None => {
                self.busy.insert(key.clone(), VecDeque::new());
                Some((delivery, Some(key)))
            }
        }
    }

    /// The message of `key` is settled: the next one of that key becomes runnable.
    pub(super) fn finish(&mut self, key: Option<String>) {
        let Some(key) = key else { return };
        let next = self.busy.get_mut(&key).and_then(VecDeque::pop_front);
        match next {
            Some(next) => self.runnable.push_back((next, key)),
            None => {
                self.busy.remove(&key);
            }
        }
    }

    /// A held delivery whose turn has come.
    pub(super) fn next_runnable(&mut self) -> Option<(Delivery, Option<String>)> {
        let (delivery, key) = self.runnable.pop_front()?;
        self.held -= 1;
        Some((delivery, Some(key)))
    }

    /// How many deliveries are held (they count against the consumer's concurrency, so that
    /// one hot key cannot make the runtime buffer without bound).
    pub(super) fn held(&self) -> usize {
        self.held
    }
}
