//! The bookkeeping of one subscription's assigned partitions: which fetched records are
//! unsettled, which may start (one per key at a time), and how far each partition's offset
//! may be committed (the contiguous prefix of settled records).
//!
//! Pure data, no I/O: the poller thread feeds it fetched records and rebalances, the ackers
//! settle records, the deliveries stream takes the records that may start.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::metadata::CommitMetadata;

/// One record as fetched, owned (librdkafka's message borrows the consumer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    /// Header names and values as received (values may be any bytes).
    pub(crate) headers: Vec<(String, Option<Vec<u8>>)>,
    /// A header name was not UTF-8, which rdkafka cannot read: `headers` is empty, and the
    /// record is delivered as undecodable.
    pub(crate) unreadable_headers: bool,
}

/// Identifies one record within one assignment of its partition: settlements of a record
/// whose partition was revoked (and maybe assigned again since) are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Ticket {
    pub(crate) partition: i32,
    pub(crate) generation: u64,
    pub(crate) offset: i64,
}

/// Where an unsettled record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Behind an unsettled record of the same key.
    Waiting,
    /// May start; its ticket is in the ready queue.
    Ready,
    /// A handler has it.
    HandedOut,
    /// Its handler asked for a retry; a timer makes it ready again.
    RetryPending,
    /// Its acker was dropped without a settlement (an aborted consumer): it stays unsettled,
    /// holding back its key and the partition's commit, until the partition is released.
    Abandoned,
}

#[derive(Debug)]
struct Entry {
    record: Arc<Record>,
    attempt: u32,
    stage: Stage,
}

/// The key records are ordered by: the Kafka key, or (records without one are independent)
/// the offset itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LaneKey {
    Key(Vec<u8>),
    Unkeyed(i64),
}

impl LaneKey {
    fn of(record: &Record) -> Self {
        match &record.key {
            Some(key) => LaneKey::Key(key.clone()),
            None => LaneKey::Unkeyed(record.offset),
        }
    }
}

#[derive(Debug)]
struct Partition {
    id: i32,
    generation: u64,
    revoking: bool,
    /// Fetched and not yet settled, by offset.
    unsettled: BTreeMap<i64, Entry>,
    /// Per key, the unsettled offsets in fetch order; the front one is the key's current
    /// record (ready, handed out, retrying or abandoned), the others wait.
    lanes: HashMap<LaneKey, VecDeque<i64>>,
    /// The offset after the last record fetched: the commit position when all are settled.
    /// `None` until the first record arrives (the position is then the broker's).
    next: Option<i64>,
    /// The highest offset handed to a handler in this or (from the commit metadata) an
    /// earlier assignment.
    delivered_high: Option<i64>,
    /// What an earlier member said when it committed: records up to its `delivered_high`
    /// had been delivered, and the one at the committed offset that many times.
    prior: Option<CommitMetadata>,
    prior_offset: Option<i64>,
    /// The commit last sent for this partition (offset and metadata), to send only changes.
    last_commit: Option<(i64, String)>,
}

/// What a settlement did, for the caller to wake the deliveries stream or the poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Settled {
    /// A record became ready.
    pub(crate) readied: bool,
}

/// One subscription's partitions.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    partitions: HashMap<i32, Partition>,
    ready: VecDeque<Ticket>,
    /// Unsettled records over all partitions (what `prefetch` bounds).
    unsettled: usize,
    /// Records a handler has.
    handed_out: usize,
    generations: u64,
}

/// One commit to send: partition, offset, metadata.
pub(crate) type Commit = (i32, i64, String);

impl Tracker {
    /// Partitions assigned: each starts with an empty book. `committed` is what the group had
    /// committed for it (offset and metadata), read on assignment.
    pub(crate) fn assign(&mut self, partition: i32, committed: Option<(i64, Option<String>)>) {
        self.generations += 1;
        let (prior_offset, prior) = match committed {
            Some((offset, metadata)) => (
                Some(offset),
                metadata.as_deref().and_then(CommitMetadata::parse),
            ),
            None => (None, None),
        };
        let old = self.partitions.insert(
            partition,
            Partition {
                id: partition,
                generation: self.generations,
                revoking: false,
                unsettled: BTreeMap::new(),
                lanes: HashMap::new(),
                next: None,
                delivered_high: prior.map(|p| p.delivered_high),
                prior,
                prior_offset,
                last_commit: prior_offset.map(|o| (o, String::new())),
            },
        );
        if let Some(old) = old {
            self.forget(&old);
        }
    }

    /// A record was fetched. Returns whether it is ready at once.
    pub(crate) fn fetched(&mut self, record: Record) -> bool {
        let Some(partition) = self.partitions.get_mut(&record.partition) else {
            // Fetched for a partition no longer assigned: the next owner reads it.
            return false;
        };
        if partition.revoking || partition.unsettled.contains_key(&record.offset) {
            return false;
        }
        let offset = record.offset;
        let attempt = first_attempt(partition, offset);
        let key = LaneKey::of(&record);
        let lane = partition.lanes.entry(key).or_default();
        lane.push_back(offset);
        let ready = lane.len() == 1;
        partition.unsettled.insert(
            offset,
            Entry {
                record: Arc::new(record),
                attempt,
                stage: if ready { Stage::Ready } else { Stage::Waiting },
            },
        );
        partition.next = Some(partition.next.map_or(offset + 1, |n| n.max(offset + 1)));
        self.unsettled += 1;
        if ready {
            self.ready.push_back(Ticket {
                partition: partition.id,
                generation: partition.generation,
                offset,
            });
        }
        ready
    }

    /// The next record that may start, with its ticket and attempt; it is then handed out.
    pub(crate) fn take_ready(&mut self) -> Option<(Ticket, Arc<Record>, u32)> {
        while let Some(ticket) = self.ready.pop_front() {
            let Some(partition) = self.partitions.get_mut(&ticket.partition) else {
                continue;
            };
            if partition.generation != ticket.generation || partition.revoking {
                continue;
            }
            let Some(entry) = partition.unsettled.get_mut(&ticket.offset) else {
                continue;
            };
            if entry.stage != Stage::Ready {
                continue;
            }
            entry.stage = Stage::HandedOut;
            partition.delivered_high = Some(
                partition
                    .delivered_high
                    .map_or(ticket.offset, |h| h.max(ticket.offset)),
            );
            self.handed_out += 1;
            return Some((ticket, entry.record.clone(), entry.attempt));
        }
        None
    }

    /// The record is done (acked or dead-lettered): the next one of its key becomes ready.
    pub(crate) fn settle(&mut self, ticket: Ticket) -> Settled {
        let Some(partition) = self.live(ticket) else {
            return Settled::default();
        };
        let Some(entry) = partition.unsettled.remove(&ticket.offset) else {
            return Settled::default();
        };
        let handed_out = entry.stage == Stage::HandedOut;
        let key = LaneKey::of(&entry.record);
        let mut next_ready = None;
        if let Some(lane) = partition.lanes.get_mut(&key) {
            lane.retain(|o| *o != ticket.offset);
            if let Some(&next) = lane.front()
                && let Some(next_entry) = partition.unsettled.get_mut(&next)
                && next_entry.stage == Stage::Waiting
            {
                next_entry.stage = Stage::Ready;
                next_ready = Some(next);
            }
            if lane.is_empty() {
                partition.lanes.remove(&key);
            }
        }
        let generation = partition.generation;
        self.unsettled -= 1;
        if handed_out {
            self.handed_out -= 1;
        }
        if let Some(offset) = next_ready {
            self.ready.push_back(Ticket {
                partition: ticket.partition,
                generation,
                offset,
            });
        }
        Settled {
            readied: next_ready.is_some(),
        }
    }

    /// The handler asked for a retry: the record stays unsettled (and its key blocked) until
    /// [`retry_due`](Self::retry_due), and its next delivery counts one more.
    pub(crate) fn retry_later(&mut self, ticket: Ticket) {
        let Some(partition) = self.live(ticket) else {
            return;
        };
        if let Some(entry) = partition.unsettled.get_mut(&ticket.offset)
            && entry.stage == Stage::HandedOut
        {
            entry.stage = Stage::RetryPending;
            entry.attempt = entry.attempt.saturating_add(1);
            self.handed_out -= 1;
        }
    }

    /// A retry's delay is over: the record is ready again (unless its partition went).
    pub(crate) fn retry_due(&mut self, ticket: Ticket) -> bool {
        let Some(partition) = self.live(ticket) else {
            return false;
        };
        match partition.unsettled.get_mut(&ticket.offset) {
            Some(entry) if entry.stage == Stage::RetryPending => {
                entry.stage = Stage::Ready;
                self.ready.push_back(ticket);
                true
            }
            _ => false,
        }
    }

    /// The record's acker went without a settlement.
    pub(crate) fn abandon(&mut self, ticket: Ticket) {
        let Some(partition) = self.live(ticket) else {
            return;
        };
        if let Some(entry) = partition.unsettled.get_mut(&ticket.offset)
            && entry.stage == Stage::HandedOut
        {
            entry.stage = Stage::Abandoned;
            self.handed_out -= 1;
        }
    }

    /// Stops handing out records of `partition` (a revocation began); returns how many of its
    /// records handlers still have.
    pub(crate) fn start_revoke(&mut self, partition: i32) -> usize {
        match self.partitions.get_mut(&partition) {
            Some(p) => {
                p.revoking = true;
                in_handlers(p)
            }
            None => 0,
        }
    }

    /// How many of `partition`'s records handlers still have.
    pub(crate) fn in_handlers(&self, partition: i32) -> usize {
        self.partitions.get(&partition).map_or(0, in_handlers)
    }

    /// The partition is released: its book is dropped. Returns its final commit, if it moved.
    pub(crate) fn release(&mut self, partition: i32) -> Option<Commit> {
        let commit = self.commit_of(partition, true);
        if let Some(old) = self.partitions.remove(&partition) {
            self.forget(&old);
        }
        commit
    }

    /// The commits to send now: each partition whose position or metadata changed.
    pub(crate) fn commits(&mut self) -> Vec<Commit> {
        let ids: Vec<i32> = self.partitions.keys().copied().collect();
        ids.into_iter()
            .filter_map(|p| self.commit_of(p, false))
            .collect()
    }

    /// A commit failed: send these partitions' commits again next time.
    pub(crate) fn commit_failed(&mut self, partition: i32) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.last_commit = None;
        }
    }

    /// Unsettled records over all partitions.
    pub(crate) fn unsettled(&self) -> usize {
        self.unsettled
    }

    /// Records handlers have, over all partitions.
    pub(crate) fn handed_out(&self) -> usize {
        self.handed_out
    }

    /// The assigned partitions.
    pub(crate) fn assigned(&self) -> Vec<i32> {
        self.partitions.keys().copied().collect()
    }

    fn commit_of(&mut self, partition: i32, even_if_unchanged: bool) -> Option<Commit> {
        let p = self.partitions.get_mut(&partition)?;
        let offset = position(p)?;
        let metadata = metadata(p, offset).encode();
        let changed = p
            .last_commit
            .as_ref()
            .is_none_or(|(o, m)| *o != offset || *m != metadata);
        if !changed && !even_if_unchanged {
            return None;
        }
        p.last_commit = Some((offset, metadata.clone()));
        changed.then_some((partition, offset, metadata))
    }

    fn live(&mut self, ticket: Ticket) -> Option<&mut Partition> {
        self.partitions
            .get_mut(&ticket.partition)
            .filter(|p| p.generation == ticket.generation)
    }

    fn forget(&mut self, old: &Partition) {
        self.unsettled -= old.unsettled.len();
        self.handed_out -= in_handlers(old);
    }
}

/// The offset to commit: the first unsettled record's, else the one after the last fetched.
fn position(p: &Partition) -> Option<i64> {
    p.unsettled.keys().next().copied().or(p.next)
}

fn in_handlers(p: &Partition) -> usize {
    p.unsettled
        .values()
        .filter(|e| e.stage == Stage::HandedOut)
        .count()
}

/// What the commit at `offset` says about deliveries: the highest offset delivered, and how
/// often the record at `offset` was (0 when it never was).
fn metadata(p: &Partition, offset: i64) -> CommitMetadata {
    let head_deliveries = match p.unsettled.get(&offset) {
        // An entry's `attempt` is the delivery it is on (handed out, abandoned) or will be on
        // next (waiting, ready, retry pending).
        Some(entry) => match entry.stage {
            Stage::HandedOut | Stage::Abandoned => entry.attempt,
            Stage::Waiting | Stage::Ready | Stage::RetryPending => entry.attempt - 1,
        },
        None => 0,
    };
    CommitMetadata {
        delivered_high: p.delivered_high.unwrap_or(offset - 1),
        head_deliveries,
    }
}

/// The attempt a freshly fetched record is on: counted on from what the previous owner
/// committed (it may have delivered the record already).
fn first_attempt(p: &Partition, offset: i64) -> u32 {
    match (p.prior, p.prior_offset) {
        (Some(prior), Some(committed)) if offset == committed && prior.head_deliveries > 0 => {
            prior.head_deliveries.saturating_add(1)
        }
        (Some(prior), _) if offset <= prior.delivered_high => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, key: &str) -> Record {
        Record {
            partition: 0,
            offset,
            key: Some(key.as_bytes().to_vec()),
            payload: None,
            headers: Vec::new(),
            unreadable_headers: false,
        }
    }

    fn take_all(t: &mut Tracker) -> Vec<(Ticket, u32)> {
        std::iter::from_fn(|| t.take_ready().map(|(ticket, _, attempt)| (ticket, attempt)))
            .collect()
    }

    #[test]
    fn one_record_per_key_and_commits_stop_at_the_first_unsettled() {
        let mut t = Tracker::default();
        t.assign(0, Some((0, None)));
        for (offset, key) in [(0, "a"), (1, "b"), (2, "a"), (3, "c")] {
            t.fetched(record(offset, key));
        }
        let ready = take_all(&mut t);
        let offsets: Vec<i64> = ready.iter().map(|(t, _)| t.offset).collect();
        assert_eq!(
            offsets,
            [0, 1, 3],
            "a's second record waits behind its first"
        );
        // b and c settle; a's first is still in its handler: the commit stays at 0.
        t.settle(ready[1].0);
        t.settle(ready[2].0);
        assert_eq!(t.commits()[0].1, 0);
        // a's first asks for a retry: still unsettled, and a's second still waits.
        t.retry_later(ready[0].0);
        assert!(take_all(&mut t).is_empty());
        assert!(t.retry_due(ready[0].0));
        let again = take_all(&mut t);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].0.offset, again[0].1), (0, 2));
        t.settle(again[0].0);
        // Now a's second runs; the commit moves to it.
        let next = take_all(&mut t);
        assert_eq!(next[0].0.offset, 2);
        assert_eq!(t.commits()[0].1, 2);
        t.settle(next[0].0);
        assert_eq!(t.commits()[0].1, 4);
        assert_eq!((t.unsettled(), t.handed_out()), (0, 0));
    }

    #[test]
    fn a_revoked_partition_hands_out_nothing_and_ignores_late_settlements() {
        let mut t = Tracker::default();
        t.assign(0, None);
        t.fetched(record(0, "a"));
        t.fetched(record(1, "b"));
        let first = t.take_ready().unwrap().0;
        assert_eq!(t.start_revoke(0), 1);
        assert!(
            t.take_ready().is_none(),
            "a revoking partition handed out a record"
        );
        assert_eq!(t.release(0).map(|c| c.1), Some(0));
        // Assigned again: the old ticket belongs to the old assignment.
        t.assign(0, Some((0, None)));
        t.settle(first);
        assert_eq!(t.unsettled(), 0);
        t.fetched(record(0, "a"));
        assert_eq!(t.take_ready().unwrap().0.offset, 0);
    }

    #[test]
    fn the_previous_owners_metadata_counts_deliveries_on() {
        let mut t = Tracker::default();
        let prior = CommitMetadata {
            delivered_high: 3,
            head_deliveries: 4,
        };
        t.assign(0, Some((2, Some(prior.encode()))));
        for (offset, key) in [(2, "a"), (3, "b"), (4, "c")] {
            t.fetched(record(offset, key));
        }
        let attempts: Vec<(i64, u32)> = take_all(&mut t)
            .into_iter()
            .map(|(ticket, attempt)| (ticket.offset, attempt))
            .collect();
        assert_eq!(attempts, [(2, 5), (3, 2), (4, 1)]);
        let (_, offset, metadata) = t.commits().remove(0);
        assert_eq!(offset, 2);
        assert_eq!(
            CommitMetadata::parse(&metadata),
            Some(CommitMetadata {
                delivered_high: 4,
                head_deliveries: 5
            })
        );
    }
}
