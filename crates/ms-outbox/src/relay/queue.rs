//! The shards a relay has been told have work, handed to its workers one shard at a time.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Queued,
    Running,
    /// Marked again while a worker drains it: the worker's snapshot may predate the new rows,
    /// so the shard goes back in the queue when it is done.
    RunningDirty,
}

#[derive(Default)]
pub(crate) struct ShardQueue {
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    queue: VecDeque<i16>,
    slots: HashMap<i16, Slot>,
}

impl ShardQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the maps inconsistent (every update is
        // a single insert or remove), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that `shard` may have work.
    pub(crate) fn mark(&self, shard: i16) {
        let mut state = self.lock();
        match state.slots.get(&shard).copied() {
            None => {
                state.slots.insert(shard, Slot::Queued);
                state.queue.push_back(shard);
                drop(state);
                self.ready.notify_one();
            }
            Some(Slot::Running) => {
                state.slots.insert(shard, Slot::RunningDirty);
            }
            Some(Slot::Queued | Slot::RunningDirty) => {}
        }
    }

    fn try_next(&self) -> Option<i16> {
        let mut state = self.lock();
        let shard = state.queue.pop_front()?;
        state.slots.insert(shard, Slot::Running);
        Some(shard)
    }

    /// The next shard to drain, waiting for one.
    pub(crate) async fn next(&self) -> i16 {
        loop {
            if let Some(shard) = self.try_next() {
                return shard;
            }
            self.ready.notified().await;
        }
    }

    /// A worker is done with `shard`; `again` puts it back (a full batch, an error).
    pub(crate) fn done(&self, shard: i16, again: bool) {
        let mut state = self.lock();
        let dirty = state.slots.get(&shard) == Some(&Slot::RunningDirty);
        if again || dirty {
            state.slots.insert(shard, Slot::Queued);
            state.queue.push_back(shard);
            drop(state);
            self.ready.notify_one();
        } else {
            state.slots.remove(&shard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shard_marked_while_running_comes_back_once() {
        let queue = ShardQueue::default();
        queue.mark(3);
        queue.mark(3);
        assert_eq!(queue.next().await, 3);
        assert!(queue.try_next().is_none(), "queued once");
        queue.mark(3);
        queue.mark(3);
        queue.done(3, false);
        assert_eq!(queue.try_next(), Some(3));
        queue.done(3, false);
        assert!(queue.try_next().is_none());
    }
}
