//! The three probes a check can belong to.
//!
//! ```
//! use ms_health::{CheckOptions, Probe};
//!
//! // A dependency check: readiness only, which is what `CheckOptions::readiness` gives you.
//! let db = CheckOptions::readiness();
//! assert!(db.probes().contains(&Probe::Readiness));
//! assert!(!db.probes().contains(&Probe::Liveness));
//!
//! // Opting a check into liveness as well has to be spelled out.
//! let deadlock_detector = CheckOptions::liveness().also(Probe::Readiness);
//! assert_eq!(deadlock_detector.probes(), [Probe::Liveness, Probe::Readiness]);
//! ```

use std::fmt;

/// A probe, in the Kubernetes sense: a question an orchestrator or load balancer asks the
/// service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    /// "Is the process wedged?" A failing liveness probe gets the process restarted, so it must
    /// not depend on anything outside the process: a database outage would otherwise restart
    /// every replica at once. Checks join it only when registered for it explicitly.
    Liveness,
    /// "Should traffic be sent here?" Dependency checks belong here.
    Readiness,
    /// "Has start-up finished?" Checks here are one-shot: once one passes it is not run again.
    Startup,
}

impl Probe {
    /// All probes, in a fixed order.
    pub const ALL: [Probe; 3] = [Probe::Liveness, Probe::Readiness, Probe::Startup];

    /// The lowercase name (`"liveness"`, `"readiness"`, `"startup"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Liveness => "liveness",
            Probe::Readiness => "readiness",
            Probe::Startup => "startup",
        }
    }

    pub(crate) fn bit(self) -> u8 {
        match self {
            Probe::Liveness => 1,
            Probe::Readiness => 2,
            Probe::Startup => 4,
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of probes, kept as a bit mask so membership tests on the probe path cost nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProbeSet(u8);

impl ProbeSet {
    pub(crate) fn of(probe: Probe) -> Self {
        Self(probe.bit())
    }

    pub(crate) fn with(self, probe: Probe) -> Self {
        Self(self.0 | probe.bit())
    }

    pub(crate) fn contains(self, probe: Probe) -> bool {
        self.0 & probe.bit() != 0
    }

    pub(crate) fn to_vec(self) -> Vec<Probe> {
        Probe::ALL
            .into_iter()
            .filter(|p| self.contains(*p))
            .collect()
    }
}
