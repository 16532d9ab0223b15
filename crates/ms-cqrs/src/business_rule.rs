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

    /// The RFC 9457 problem details to answer an HTTP request with: `about:blank` as type,
    /// the status's phrase as title, the message as detail and the code as an extension
    /// member, so that clients branch on `code`, never on text.
    ///
    /// ```
    /// use ms_cqrs::BusinessRuleError;
    ///
    /// let problem = BusinessRuleError::conflict("INVOICE_ALREADY_SENT", "inv-7 was sent").problem();
    /// assert_eq!(
    ///     serde_json::to_value(&problem)?,
    ///     serde_json::json!({
    ///         "type": "about:blank",
    ///         "title": "Conflict",
    ///         "status": 409,
    ///         "detail": "inv-7 was sent",
    ///         "code": "INVOICE_ALREADY_SENT",
    ///     })
    /// );
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn problem(&self) -> ProblemDetails {
        ProblemDetails::new(self.http_status(), self.message.clone()).code(self.code.clone())
    }
}

/// The media type of [`ProblemDetails`] in JSON.
pub const PROBLEM_JSON_CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 9457 problem details object, serialised as `application/problem+json`
/// ([`PROBLEM_JSON_CONTENT_TYPE`]).
///
/// `type` defaults to `about:blank`, for which the RFC asks that `title` be the HTTP status's
/// phrase; set an application's own problem type URI with [`problem_type`](Self::problem_type).
/// `code` is an extension member holding a stable machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProblemDetails {
    /// A URI reference identifying the problem type.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// An explanation of this occurrence, for people.
    pub detail: String,
    /// A stable code callers branch on, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl ProblemDetails {
    /// A problem of type `about:blank` with `status`'s phrase as title.
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        Self {
            problem_type: "about:blank".to_owned(),
            title: status_title(status).to_owned(),
            status,
            detail: detail.into(),
            code: None,
        }
    }

    /// Sets the problem type URI and its title.
    #[must_use]
    pub fn problem_type(mut self, uri: impl Into<String>, title: impl Into<String>) -> Self {
        self.problem_type = uri.into();
        self.title = title.into();
        self
    }

    /// Sets the `code` extension member.
    #[must_use]
    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
}

/// The reason phrase of the statuses this crate answers with (RFC 9110).
fn status_title(status: u16) -> &'static str {
    match status {
        409 => "Conflict",
        422 => "Unprocessable Content",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
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
