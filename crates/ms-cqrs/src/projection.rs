//! The [`Projection`] trait: how a read model is built from events, one transaction at a time.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use ms_bus::Envelope;

use crate::ApplyError;
use crate::store::Store;

/// A read model built from events.
///
/// The runner calls [`apply`](Self::apply) inside the transaction that also stores the
/// projection's checkpoint: the read model and "how far it got" commit together, so a crash
/// never applies an event twice or skips one (Akka Projections' exactly-once offsets).
///
/// # Versions and rebuilds
///
/// A projection's tables are versioned: [`setup`](Self::setup) creates them for
/// [`ApplyContext::version`], and `apply` writes to [`ApplyContext::table`] (`invoices` →
/// `invoices_v2`). The runner keeps a view per name in [`tables`](Self::tables) pointing at the
/// live version (`invoices` → `SELECT * FROM invoices_v1`), so readers query the plain name
/// and a rebuild (a new version built beside the live one from the start of the log) switches
/// them over in one transaction when it has caught up.
///
/// # Side effects
///
/// `apply` may run again for the same event after a rollback (a failed batch is retried), and
/// runs for every past event during a rebuild, when [`ApplyContext::replaying`] is true. Send
/// emails and the like only when it is false, and better through an outbox in the same
/// transaction.
pub trait Projection<DB: Store>: Send + Sync + 'static {
    /// A stable name: it keys the checkpoints, the registry and the dead letters.
    fn name(&self) -> &str;

    /// The event types this projection handles: exact types, or prefixes ending in `*`
    /// (`invoicing.invoice.*`). Other events are skipped (the checkpoint still moves past
    /// them). Empty, the default: every event.
    fn event_types(&self) -> &[&str] {
        &[]
    }

    /// The logical names of the read model's tables, for which the runner maintains views
    /// over the live version. Empty, the default: the runner keeps no views.
    fn tables(&self) -> &[&str] {
        &[]
    }

    /// Creates the tables of `ctx.version()` if they do not exist (idempotent: runs at every
    /// start and before a rebuild).
    fn setup(
        &self,
        conn: &mut DB::Connection,
        ctx: &ApplyContext,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Applies one event to the read model, in the runner's transaction.
    fn apply(
        &self,
        conn: &mut DB::Connection,
        event: &Envelope,
        ctx: &ApplyContext,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;
}

/// Whether `event_type` is among `patterns` (see [`Projection::event_types`]).
pub(crate) fn handles(patterns: &[&str], event_type: &str) -> bool {
    patterns.is_empty()
        || patterns
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => event_type.starts_with(prefix),
                None => *pattern == event_type,
            })
}

/// What a projection is told about the version it writes and the event it applies.
#[derive(Debug, Clone)]
pub struct ApplyContext {
    name: Arc<str>,
    version: i32,
    tables: Arc<[(String, String)]>,
    replaying: bool,
    position: Option<i64>,
}

impl ApplyContext {
    pub(crate) fn new(name: Arc<str>, version: i32, tables: &[&str]) -> Self {
        let tables = tables
            .iter()
            .map(|base| ((*base).to_owned(), versioned(base, version)))
            .collect();
        Self {
            name,
            version,
            tables,
            replaying: false,
            position: None,
        }
    }

    pub(crate) fn at(&self, position: Option<i64>, replaying: bool) -> Self {
        Self {
            replaying,
            position,
            ..self.clone()
        }
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version of the read model being written (1 at first, one more per rebuild).
    pub fn version(&self) -> i32 {
        self.version
    }

    /// The versioned name of a table: `invoices` → `invoices_v2`. Borrowed for the names in
    /// [`Projection::tables`]; others are formatted on the spot.
    pub fn table<'a>(&'a self, base: &str) -> Cow<'a, str> {
        self.tables
            .iter()
            .find(|(name, _)| name == base)
            .map_or_else(
                || Cow::Owned(versioned(base, self.version)),
                |(_, v)| Cow::Borrowed(v.as_str()),
            )
    }

    /// True while a rebuild replays history: no side effects now, they happened the first
    /// time. False for live events, including those of a rebuilt version after the switch.
    pub fn replaying(&self) -> bool {
        self.replaying
    }

    /// The event's position in the event log (`None` for bus sources).
    pub fn position(&self) -> Option<i64> {
        self.position
    }
}

/// `base` with the version suffix.
pub(crate) fn versioned(base: &str, version: i32) -> String {
    format!("{base}_v{version}")
}
