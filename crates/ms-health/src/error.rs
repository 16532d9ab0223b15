//! Errors of this crate: only building a registry can fail.

use std::time::Duration;

/// Why [`HealthRegistryBuilder::build`](crate::HealthRegistryBuilder::build) refused the
/// configuration. Each variant names the check at fault; fix the registration and build again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Two checks share a name; names key the report and `?exclude=`, so they must be unique.
    #[error("two health checks are named {name:?}; check names must be unique")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// A name is empty or has characters other than ASCII letters, digits, `-`, `_` and `.`
    /// (names appear unescaped in report keys and query strings).
    #[error(
        "health check name {name:?} is invalid: use 1 to 128 ASCII letters, digits, '-', '_' or '.'"
    )]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// A failure threshold of zero would mean failing before the first failure; use 1 or more.
    #[error("health check {name:?} has a failure threshold of 0; it must be at least 1")]
    ZeroFailureThreshold {
        /// The check's name.
        name: String,
    },
    /// A zero timeout would fail every run before it starts; give the check time to run.
    #[error("health check {name:?} has a timeout of {timeout:?}; it must be greater than zero")]
    ZeroTimeout {
        /// The check's name.
        name: String,
        /// The rejected timeout.
        timeout: Duration,
    },
}
