//! The configuration an outbox's clones and relays share, in its own file so that the
//! backends can read it without importing the `Outbox` handle (which imports them).

use std::sync::Arc;

use ms_bus::propagation::Propagation;

use crate::PartitionInterval;
use crate::schema::OutboxSchema;

/// The configuration an outbox's clones and relays share.
pub(crate) struct OutboxInner {
    pub(crate) schema: OutboxSchema,
    pub(crate) shards: u16,
    pub(crate) key_order: bool,
    pub(crate) key_lock_slots: u32,
    pub(crate) notify: bool,
    pub(crate) propagation: Arc<dyn Propagation>,
    /// Partitioned by `created_at` in these intervals (PostgreSQL).
    pub(crate) partitioning: Option<PartitionInterval>,
    /// Wakes an in-process relay (SQLite, where there is no LISTEN/NOTIFY).
    pub(crate) wake: tokio::sync::Notify,
    /// Wakes an in-process relay's timer when a scheduled row is written or moved (SQLite).
    pub(crate) schedule_wake: tokio::sync::Notify,
}
