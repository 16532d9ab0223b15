//! What each command error answers over HTTP and gRPC, and its problem details (RFC 9457).

use ms_cqrs::BusinessRuleError;
use ms_cqrs::command::{CONFLICT_CODE, CommandError, PROBLEM_JSON_CONTENT_TYPE, ProblemDetails};
use ms_outbox::OutboxError;
use serde_json::json;

fn mapping(err: &CommandError) -> (u16, i32, &'static str) {
    (err.http_status(), err.grpc_code(), err.grpc_code_name())
}

#[test]
fn broken_rules_answer_409_or_422_and_failed_precondition() {
    let conflict: CommandError =
        BusinessRuleError::conflict("INVOICE_SENT", "inv-7 was sent").into();
    let unprocessable: CommandError =
        BusinessRuleError::unprocessable("NEGATIVE_TOTAL", "the total is -3").into();
    assert_eq!(mapping(&conflict), (409, 9, "FAILED_PRECONDITION"));
    assert_eq!(mapping(&unprocessable), (422, 9, "FAILED_PRECONDITION"));
    assert_eq!(
        serde_json::to_value(unprocessable.problem()).unwrap(),
        json!({
            "type": "about:blank",
            "title": "Unprocessable Content",
            "status": 422,
            "detail": "the total is -3",
            "code": "NEGATIVE_TOTAL",
        })
    );
    assert_eq!(conflict.problem().title, "Conflict");
    assert_eq!(conflict.to_string(), "INVOICE_SENT: inv-7 was sent");
}

#[test]
fn a_conflict_answers_409_and_aborted() {
    let err = CommandError::Conflict {
        id: "inv-7".into(),
        attempts: 5,
    };
    assert_eq!(mapping(&err), (409, 10, "ABORTED"));
    assert_eq!(
        serde_json::to_value(err.problem()).unwrap(),
        json!({
            "type": "about:blank",
            "title": "Conflict",
            "status": 409,
            "detail": "inv-7 was modified concurrently; retry the request",
            "code": CONFLICT_CODE,
        })
    );
}

#[test]
fn infrastructure_answers_503_when_unreachable_and_500_otherwise_without_leaking_details() {
    let unreachable = [
        CommandError::Database(sqlx::Error::PoolTimedOut),
        CommandError::Database(sqlx::Error::Io(std::io::Error::other("refused"))),
        CommandError::Outbox(OutboxError::Database(sqlx::Error::PoolClosed)),
    ];
    for err in &unreachable {
        assert_eq!(mapping(err), (503, 14, "UNAVAILABLE"), "{err}");
    }
    let internal = [
        CommandError::Database(sqlx::Error::Protocol("secret table name".into())),
        CommandError::Envelope(ms_bus::EnvelopeError::EmptyAttribute("type")),
        CommandError::InvalidDecision("events without a state"),
        CommandError::Outbox(OutboxError::InvalidDestination(
            ms_bus::validate_name("bad topic!").unwrap_err(),
        )),
    ];
    for err in &internal {
        assert_eq!(mapping(err), (500, 13, "INTERNAL"), "{err}");
        let problem = err.problem();
        assert_eq!(problem.status, 500);
        assert_eq!(problem.code, None);
        assert!(!problem.detail.contains("secret"), "{}", problem.detail);
    }
}

#[test]
fn problem_details_round_trip_and_take_an_application_type() {
    let problem = ProblemDetails::new(422, "too big")
        .problem_type("https://example.com/problems/limit", "Limit exceeded")
        .code("LIMIT");
    let text = serde_json::to_string(&problem).unwrap();
    assert_eq!(
        serde_json::from_str::<ProblemDetails>(&text).unwrap(),
        problem
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["type"],
        "https://example.com/problems/limit"
    );
    assert_eq!(PROBLEM_JSON_CONTENT_TYPE, "application/problem+json");
}
