//! What a runner's tasks share: the pool, the projection, its tables and the settings.

use std::sync::Arc;
use std::time::Duration;

use ms_bus::propagation::Propagation;

use super::policy::ErrorPolicy;
use crate::store::{Store, Tables};

/// A runner's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) segments: u16,
    pub(crate) batch_size: usize,
    pub(crate) batch_timeout: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) policy: ErrorPolicy,
}

/// What every task of a runner shares.
pub(crate) struct Shared<DB: Store, P> {
    pub(crate) pool: sqlx::Pool<DB>,
    pub(crate) projection: Arc<P>,
    pub(crate) name: Arc<str>,
    pub(crate) tables: Tables,
    pub(crate) config: Config,
    pub(crate) propagation: Arc<dyn Propagation>,
}
