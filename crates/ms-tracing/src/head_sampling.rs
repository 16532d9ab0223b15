//! Head sampling: the OpenTelemetry SDK samplers, chosen from `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` as the OpenTelemetry specification says.
//!
//! ```
//! use ms_tracing::head_sampling::HeadSampler;
//!
//! assert_eq!(
//!     HeadSampler::from_env_values(Some("parentbased_traceidratio"), Some("0.25")),
//!     Ok(HeadSampler::ParentBasedTraceIdRatio(0.25))
//! );
//! // Unset: the specification's default.
//! assert_eq!(HeadSampler::from_env_values(None, None), Ok(HeadSampler::ParentBasedAlwaysOn));
//! // A bad ratio is reported; the caller logs it and uses the default (1.0), as the spec asks.
//! assert!(HeadSampler::from_env_values(Some("traceidratio"), Some("1.5")).is_err());
//! ```

use opentelemetry_sdk::trace::Sampler;

/// The sampler-name variable.
pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// The sampler-argument variable (the ratio, for the ratio samplers).
pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";

/// The head samplers the specification names for `OTEL_TRACES_SAMPLER` that this SDK has.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum HeadSampler {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio`: this ratio of traces, chosen by trace ID.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default): follow the parent's decision, sample roots.
    #[default]
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`: follow the parent's decision, drop roots.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`: follow the parent's decision, sample this ratio of roots.
    ParentBasedTraceIdRatio(f64),
}

/// Why the sampler variables were not usable. The specification asks that such input be logged
/// and otherwise ignored: see [`HeadSampler::from_env_or_default`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidSamplerConfig {
    /// `OTEL_TRACES_SAMPLER` names a sampler this SDK does not have.
    #[error("OTEL_TRACES_SAMPLER={0:?} is not a sampler this SDK has")]
    UnknownSampler(String),
    /// `OTEL_TRACES_SAMPLER_ARG` is not a number from 0 to 1.
    #[error("OTEL_TRACES_SAMPLER_ARG={0:?} is not a ratio between 0 and 1")]
    BadRatio(String),
}

/// The ratio used when `OTEL_TRACES_SAMPLER_ARG` is unset or invalid.
pub const DEFAULT_RATIO: f64 = 1.0;

impl HeadSampler {
    /// The sampler the two variables' values describe (`None` for an unset variable).
    pub fn from_env_values(
        sampler: Option<&str>,
        arg: Option<&str>,
    ) -> Result<Self, InvalidSamplerConfig> {
        let ratio = || match arg.map(str::trim) {
            None | Some("") => Ok(DEFAULT_RATIO),
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|ratio| (0.0..=1.0).contains(ratio))
                .ok_or_else(|| InvalidSamplerConfig::BadRatio(text.to_owned())),
        };
        match sampler.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "parentbased_always_on") => Ok(Self::ParentBasedAlwaysOn),
            Some("always_on") => Ok(Self::AlwaysOn),
            Some("always_off") => Ok(Self::AlwaysOff),
            Some("parentbased_always_off") => Ok(Self::ParentBasedAlwaysOff),
            Some("traceidratio") => ratio().map(Self::TraceIdRatio),
            Some("parentbased_traceidratio") => ratio().map(Self::ParentBasedTraceIdRatio),
            Some(other) => Err(InvalidSamplerConfig::UnknownSampler(other.to_owned())),
        }
    }

    /// The sampler from the process environment. Invalid input is logged (a `tracing` warning)
    /// and otherwise ignored, as the specification says: an unknown sampler gives the default
    /// sampler, a bad ratio the default ratio.
    pub fn from_env_or_default() -> Self {
        let sampler = std::env::var(OTEL_TRACES_SAMPLER).ok();
        let arg = std::env::var(OTEL_TRACES_SAMPLER_ARG).ok();
        Self::from_env_values(sampler.as_deref(), arg.as_deref()).unwrap_or_else(|error| {
            tracing::warn!(target: "ms_tracing::init", %error, "ignoring sampler configuration");
            match error {
                InvalidSamplerConfig::BadRatio(_) => {
                    Self::from_env_values(sampler.as_deref(), None).unwrap_or_default()
                }
                InvalidSamplerConfig::UnknownSampler(_) => Self::default(),
            }
        })
    }

    /// The SDK sampler.
    pub fn to_sdk(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(ratio) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }
}
