//! The `application/health+json` codec: round trips and hostile input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ms_health::{HealthReport, Status};

const FULL: &str = r#"{
  "status": "fail",
  "output": "shutting down",
  "notes": ["exclude: no readiness check named \"x\""],
  "checks": {
    "postgres:responseTime": [
      {
        "componentId": "postgres",
        "componentType": "datastore",
        "observedValue": 3.25,
        "observedUnit": "ms",
        "status": "pass",
        "time": "2025-03-04T05:06:07.089Z"
      },
      {
        "componentId": "replica",
        "status": "fail",
        "output": "connection refused"
      }
    ]
  }
}"#;

#[test]
fn full_report_round_trips() {
    let report: HealthReport = serde_json::from_str(FULL).unwrap();
    let json = serde_json::to_string(&report).unwrap();
    let again: HealthReport = serde_json::from_str(&json).unwrap();

    assert_eq!(again, report);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap(),
        serde_json::from_str::<serde_json::Value>(FULL).unwrap(),
        "the wire form is preserved field for field"
    );
}

#[test]
fn time_is_written_as_rfc3339_utc_with_milliseconds() {
    let report: HealthReport = serde_json::from_str(FULL).unwrap();
    let check = &report.checks["postgres:responseTime"][0];
    let expected = UNIX_EPOCH + Duration::from_millis(1_741_064_767_089);

    assert_eq!(check.time, Some(expected));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json["checks"]["postgres:responseTime"][0]["time"],
        "2025-03-04T05:06:07.089Z"
    );
}

#[test]
fn minimal_report_is_just_a_status() {
    let report: HealthReport = serde_json::from_str(r#"{"status":"pass"}"#).unwrap();
    assert_eq!(report, HealthReport::new(Status::Pass));
    assert_eq!(
        serde_json::to_string(&report).unwrap(),
        r#"{"status":"pass"}"#
    );
}

#[test]
fn unknown_fields_from_newer_drafts_are_ignored() {
    let report: HealthReport = serde_json::from_str(
        r#"{"status":"warn","version":"1","releaseId":"1.2.3","links":{"about":"x"}}"#,
    )
    .unwrap();
    assert_eq!(report.status, Status::Warn);
}

#[test]
fn hostile_input_is_rejected_not_panicked_on() {
    let hostile = [
        "",
        "null",
        "[]",
        r#"{"status":"ok"}"#,
        r#"{"status":"PASS"}"#,
        r#"{"checks":{}}"#,
        r#"{"status":"pass","checks":{"a":{"status":"pass"}}}"#,
        r#"{"status":"pass","checks":{"a":[{"status":"pass","time":"yesterday"}]}}"#,
        r#"{"status":"pass","checks":{"a":[{"status":"pass","time":"2025-13-45T99:99:99Z"}]}}"#,
        r#"{"status":"pass","checks":{"a":[{"status":"pass","time":12}]}}"#,
        r#"{"status":"pass","notes":"not an array"}"#,
        &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
    ];
    for input in hostile {
        let shown: String = input.chars().take(60).collect();
        assert!(
            serde_json::from_str::<HealthReport>(input).is_err(),
            "accepted {shown:?}"
        );
    }
}

#[test]
fn far_future_time_survives_a_round_trip() {
    let report: HealthReport = serde_json::from_str(
        r#"{"status":"pass","checks":{"a":[{"status":"pass","time":"9999-12-31T23:59:59.999Z"}]}}"#,
    )
    .unwrap();
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("9999-12-31T23:59:59.999Z"), "{json}");
    assert!(report.checks["a"][0].time.unwrap() > SystemTime::now());
}

#[test]
fn http_status_follows_the_status() {
    assert_eq!(HealthReport::new(Status::Pass).http_status(), 200);
    assert_eq!(HealthReport::new(Status::Warn).http_status(), 200);
    assert_eq!(HealthReport::new(Status::Fail).http_status(), 503);
}
