//! Pipelined batch publishing that keeps each ordering key's order through a reconnection.
//!
//! async-nats buffers publishes: some sit in the client's command queue, some in the
//! connection's write buffer and socket. When the connection breaks, those in the write buffer
//! and socket are lost, and those still queued are sent on the next connection. With several
//! unconfirmed publishes of one key, the later ones could then be stored without the earlier
//! ones, and republishing the batch would store the earlier ones behind them (JetStream's
//! deduplication keeps both as first copies). So a batch keeps up to the publish window
//! unconfirmed in all, but at most one per [`Envelope::ordering_key`]: the next event of a key
//! is sent only once the previous one is confirmed. Whatever a failure cuts off, each key's
//! stored events are then a prefix of its events in the batch, and republishing the batch
//! stores each event for the first time after its key's earlier ones.
//!
//! The cost is pipelining within a key: a batch of one key is published one round trip per
//! event; a batch of many keys keeps the whole window busy.

use std::collections::{HashMap, VecDeque};

use crate::Envelope;

/// Which event of a batch may be sent next: per key, its events in batch order, of which at
/// most one is unconfirmed.
#[derive(Debug)]
pub(super) struct KeyedSchedule<'a> {
    /// Per key, the positions of its events not yet sent, in batch order.
    waiting: HashMap<&'a str, VecDeque<usize>>,
    /// Keys with nothing unconfirmed and an event waiting, in the order they became so.
    ready: VecDeque<&'a str>,
}

impl<'a> KeyedSchedule<'a> {
    pub(super) fn new(envelopes: &'a [Envelope]) -> Self {
        let mut waiting: HashMap<&'a str, VecDeque<usize>> = HashMap::new();
        let mut ready = VecDeque::new();
        for (position, envelope) in envelopes.iter().enumerate() {
            let key = envelope.ordering_key();
            let events = waiting.entry(key).or_default();
            if events.is_empty() {
                ready.push_back(key);
            }
            events.push_back(position);
        }
        Self { waiting, ready }
    }

    /// The next event to send (its position and key), if a key is free to send one. The key
    /// is busy until [`confirmed`](Self::confirmed).
    pub(super) fn next(&mut self) -> Option<(usize, &'a str)> {
        let key = self.ready.pop_front()?;
        let position = self.waiting.get_mut(key)?.pop_front()?;
        Some((position, key))
    }

    /// The event of `key` that was sent is confirmed: the key's next one may go.
    pub(super) fn confirmed(&mut self, key: &'a str) {
        match self.waiting.get(key) {
            Some(events) if !events.is_empty() => self.ready.push_back(key),
            Some(_) => {
                self.waiting.remove(key);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(keys: &[&str]) -> Vec<Envelope> {
        keys.iter()
            .map(|key| {
                Envelope::builder("test.happened", "/test")
                    .partition_key(*key)
                    .build()
                    .unwrap()
            })
            .collect()
    }

    /// Drives the schedule with `window` unconfirmed at most, confirming in send order;
    /// returns the send order and the most unconfirmed events of one key at any time.
    fn drive(envelopes: &[Envelope], window: usize) -> (Vec<usize>, usize) {
        let mut schedule = KeyedSchedule::new(envelopes);
        let mut pending: VecDeque<(usize, &str)> = VecDeque::new();
        let mut sent = Vec::new();
        let mut most_per_key = 0;
        loop {
            while pending.len() < window {
                let Some((position, key)) = schedule.next() else {
                    break;
                };
                sent.push(position);
                pending.push_back((position, key));
                let per_key = pending.iter().filter(|(_, k)| *k == key).count();
                most_per_key = most_per_key.max(per_key);
            }
            let Some((_, key)) = pending.pop_front() else {
                break;
            };
            schedule.confirmed(key);
        }
        (sent, most_per_key)
    }

    #[test]
    fn every_event_goes_once_keys_in_order_one_unconfirmed_per_key() {
        let envelopes = events(&["a", "a", "b", "a", "c", "b", "b", "c"]);
        let (sent, most_per_key) = drive(&envelopes, 512);
        assert_eq!(most_per_key, 1);
        let mut sorted = sent.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..envelopes.len()).collect::<Vec<_>>());
        for key in ["a", "b", "c"] {
            let of_key: Vec<usize> = sent
                .iter()
                .copied()
                .filter(|&p| envelopes[p].ordering_key() == key)
                .collect();
            assert!(of_key.is_sorted(), "key {key}: {of_key:?}");
        }
        // The first round sends each key's first event: three in flight at once.
        assert_eq!(&sent[..3], &[0, 2, 4]);
    }

    #[test]
    fn distinct_keys_fill_the_window() {
        let keys: Vec<String> = (0..100).map(|n| format!("k{n}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let envelopes = events(&keys);
        let mut schedule = KeyedSchedule::new(&envelopes);
        let first_round = std::iter::from_fn(|| schedule.next()).count();
        assert_eq!(first_round, 100);
        assert_eq!(drive(&envelopes, 10).0, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn one_key_goes_one_at_a_time() {
        let envelopes = events(&["a"; 5]);
        let mut schedule = KeyedSchedule::new(&envelopes);
        assert_eq!(schedule.next(), Some((0, "a")));
        assert_eq!(schedule.next(), None);
        schedule.confirmed("a");
        assert_eq!(schedule.next(), Some((1, "a")));
        assert_eq!(drive(&envelopes, 512), (vec![0, 1, 2, 3, 4], 1));
    }
}
