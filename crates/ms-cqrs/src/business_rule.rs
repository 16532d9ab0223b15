//! Business-rule errors: a request was well-formed but the domain said no.

use std::borrow::Cow;

/// Which way a rule was broken, which decides the status a transport answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RuleKind {
    /// The request conflicts with the current state (already sent, already cancelled):
    /// HTTP 409. Retrying the same request will not help until the state changes.
    Conflict,
    /// The request is well-formed but semantically invalid for the domain (a negative amount,
    /// an inactive tenant): HTTP 422.
    Unprocessable,
}

/// A broken business rule: a stable, machine-readable `code` (`TENANT_INACTIVE`) and a message
/// for people.
///
/// Both HTTP statuses map to gRPC `FAILED_PRECONDITION`: the gRPC status guide reserves
/// `INVALID_ARGUMENT` for arguments that are wrong whatever the system's state, which a
/// business rule, by definition, is not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct BusinessRuleError {
    kind: RuleKind,
    code: Cow<'static, str>,
    message: String,
}

impl BusinessRuleError {
    /// A rule the request conflicts with (HTTP 409).
    pub fn conflict(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            kind: RuleKind::Conflict,
            code: code.into(),
            message: message.into(),
        }
    }

    /// A rule that makes the request unprocessable (HTTP 422).
    pub fn unprocessable(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            kind: RuleKind::Unprocessable,
            code: code.into(),
            message: message.into(),
        }
    }

    /// The stable code callers branch on.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Which way the rule was broken.
    pub fn kind(&self) -> RuleKind {
        self.kind
    }

    /// The HTTP status code: 409 or 422.
    pub fn http_status(&self) -> u16 {
        match self.kind {
            RuleKind::Conflict => 409,
            RuleKind::Unprocessable => 422,
        }
    }

    /// The gRPC status code's canonical name: always `FAILED_PRECONDITION`.
    pub fn grpc_code_name(&self) -> &'static str {
        "FAILED_PRECONDITION"
    }

    /// The gRPC status code's number (`FAILED_PRECONDITION` is 9).
    pub fn grpc_code(&self) -> i32 {
        9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_their_statuses() {
        let unprocessable =
            BusinessRuleError::unprocessable("TENANT_INACTIVE", "tenant t1 is inactive");
        assert_eq!(unprocessable.http_status(), 422);
        assert_eq!(unprocessable.grpc_code(), 9);
        assert_eq!(
            unprocessable.to_string(),
            "TENANT_INACTIVE: tenant t1 is inactive"
        );
        assert_eq!(BusinessRuleError::conflict("X", "y").http_status(), 409);
    }
}
