//! The `application/health+json` body of the IETF draft
//! [draft-inadarei-api-health-check](https://datatracker.ietf.org/doc/html/draft-inadarei-api-health-check)
//! and the setting that decides how much of it a probe may show.
//!
//! ```
//! use ms_health::{HealthReport, Status};
//!
//! let body = r#"{
//!   "status": "warn",
//!   "checks": {
//!     "postgres:responseTime": [{
//!       "componentId": "postgres",
//!       "componentType": "datastore",
//!       "observedValue": 3.5,
//!       "observedUnit": "ms",
//!       "status": "pass",
//!       "time": "2025-01-02T03:04:05.678Z"
//!     }]
//!   }
//! }"#;
//! let report: HealthReport = serde_json::from_str(body).unwrap();
//! assert_eq!(report.status, Status::Warn);
//! assert_eq!(report.checks["postgres:responseTime"][0].observed_unit.as_deref(), Some("ms"));
//!
//! // Serializing gives the same document back.
//! let again: HealthReport = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
//! assert_eq!(again, report);
//! ```

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::check::Status;

/// The media type of a [`HealthReport`] on the wire.
pub const HEALTH_JSON_CONTENT_TYPE: &str = "application/health+json";

/// The result of evaluating one probe: the top-level object of an `application/health+json`
/// body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HealthReport {
    /// The worst status of the checks evaluated (`pass` if there were none).
    pub status: Status,
    /// Why the probe fails when no single check explains it (e.g. `"shutting down"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Remarks about the evaluation itself, e.g. an `exclude` that matched no check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Per-check details keyed by `component` or `component:measurement`; each value is an
    /// array because the draft allows several instances of one component.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, Vec<CheckReport>>,
}

impl HealthReport {
    /// An empty report with `status`.
    pub fn new(status: Status) -> Self {
        Self {
            status,
            output: None,
            notes: Vec::new(),
            checks: BTreeMap::new(),
        }
    }

    /// `true` when the probe should answer 200 (`pass` or `warn`).
    pub fn is_healthy(&self) -> bool {
        self.status.is_healthy()
    }

    /// The HTTP status code a probe answers with: 200 for `pass`/`warn`, 503 for `fail`.
    pub fn http_status(&self) -> u16 {
        if self.is_healthy() { 200 } else { 503 }
    }

    /// The report with `checks` and `notes` removed, for callers not allowed to see details.
    #[must_use]
    pub fn without_details(mut self) -> Self {
        self.checks.clear();
        self.notes.clear();
        self
    }
}

/// One entry of a report's `checks` map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CheckReport {
    /// Identifies the component instance (defaults to the check's registered name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_id: Option<String>,
    /// `datastore`, `component`, `system`, or a URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_type: Option<String>,
    /// The measured value (any JSON value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_value: Option<serde_json::Value>,
    /// The unit of `observed_value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_unit: Option<String>,
    /// The check's status after its failure threshold and criticality were applied.
    pub status: Status,
    /// When the check ran (a cached result keeps the time of the run that produced it).
    /// RFC 3339 in UTC on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339")]
    pub time: Option<SystemTime>,
    /// Human-readable detail, typically the error of a failed check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// Which details a probe shows. Details can leak internals (host names, error texts, versions),
/// so they are hidden unless the service opts in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Details {
    /// Only the top-level `status` (and `output`, e.g. "shutting down"); `?verbose` is ignored.
    #[default]
    Hidden,
    /// `checks` and `notes` appear when the request asks with `?verbose`, as with
    /// kube-apiserver's `/readyz?verbose`.
    OnRequest,
    /// `checks` and `notes` always appear.
    Always,
}

impl Details {
    /// Whether a request that did (or did not) ask for `verbose` sees details.
    pub fn shown(self, verbose_requested: bool) -> bool {
        match self {
            Details::Hidden => false,
            Details::OnRequest => verbose_requested,
            Details::Always => true,
        }
    }
}

mod rfc3339 {
    //! `Option<SystemTime>` as an RFC 3339 UTC timestamp with millisecond precision.

    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    #[allow(clippy::ref_option)] // serde's `with` hands us `&Option<T>`.
    pub(super) fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(t) => serializer.collect_str(&humantime::format_rfc3339_millis(*t)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        humantime::parse_rfc3339_weak(&text)
            .map(Some)
            .map_err(|e| D::Error::custom(format_args!("invalid RFC 3339 time {text:?}: {e}")))
    }
}
