//! Checks the end-to-end tests share.
#![allow(dead_code, unreachable_pub)]

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use http_body_util::BodyExt as _;
use ms_examples::invoicing_service::{MAX_CHARGE_ATTEMPTS, TimerEvent};
use ms_examples::scenario::Report;

use ms_examples::trace_tree;

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// Counts every panic in this test binary from now on, handler tasks' included (the
/// consumer runtime and tokio catch those, so a test would not see them otherwise).
pub(crate) fn watch_panics() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// How many panics happened since [`watch_panics`] (in any test of this binary).
pub(crate) fn panics() -> usize {
    PANICS.load(Ordering::SeqCst)
}

/// The scenario's outcome: two invoices paid, one overdue after its charge failed, one
/// cancelled; the read model agrees; one trace spans every service under one correlation ID.
pub(crate) fn check_report(report: &Report) {
    assert_eq!(panics(), 0, "nothing panicked");
    let d = &report.dashboard;
    assert_eq!(d["partial"], false, "{d}");
    let by_status = &d["invoices"]["by_status"];
    assert_eq!(by_status["paid"]["count"], 2, "{d}");
    assert_eq!(by_status["paid"]["total_cents"], 223_000, "{d}");
    assert_eq!(by_status["overdue"]["count"], 1, "{d}");
    assert_eq!(by_status["cancelled"]["count"], 1, "{d}");
    assert_eq!(d["invoices"]["outstanding_cents"], 730_000, "{d}");
    assert_eq!(d["payments"]["succeeded_count"], 2, "{d}");
    assert_eq!(d["payments"]["succeeded_cents"], 223_000, "{d}");
    assert_eq!(
        d["payments"]["failed_count"], MAX_CHARGE_ATTEMPTS,
        "the failed charge was tried {MAX_CHARGE_ATTEMPTS} times: {d}"
    );
    assert_eq!(d["read_model"]["invoices"], 4, "{d}");
    assert_eq!(d["read_model"]["collected_cents"], 223_000, "{d}");

    let rows = report.read_model["items"].as_array().expect("items");
    assert_eq!(report.read_model["total"], 4);
    assert_eq!(rows.len(), 3, "a page of three");
    assert_eq!(report.read_model["next_offset"], 3);
    let totals: Vec<i64> = rows
        .iter()
        .map(|r| r["total_cents"].as_i64().unwrap())
        .collect();
    assert_eq!(
        totals,
        [730_000, 125_000, 98_000],
        "sorted by total, descending"
    );
    assert_eq!(rows[0]["status"], "overdue");
    assert!(
        rows[0]["last_payment_error"]
            .as_str()
            .unwrap()
            .starts_with("CARD_LIMIT_EXCEEDED")
    );
    assert_eq!(rows[1]["paid_cents"], 125_000);
    check_timers(report);

    assert_eq!(
        report.traced_services,
        ["gateway", "invoicing", "payments", "reporting"],
        "one trace across every service"
    );
    let spans = trace_tree::spans_of(&report.trace_id);
    let own: Vec<_> = spans
        .iter()
        .filter(|s| trace_tree::attribute(s, trace_tree::SERVICE_ATTRIBUTE).is_some())
        .collect();
    assert!(own.len() >= 8, "{} service spans", own.len());
    for span in own {
        assert_eq!(
            trace_tree::attribute(span, "correlation.id").as_deref(),
            Some(report.correlation_id.as_str()),
            "span {} carries the caller's correlation ID",
            span.name
        );
    }
}

pub(crate) async fn get(url: &str) -> (StatusCode, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Starts the system on embedded defaults, with the panic watcher on.
pub(crate) async fn start_embedded() -> ms_examples::System {
    start(ms_examples::config::Config::default()).await
}

/// Starts the system with `config`, with the panic watcher on.
pub(crate) async fn start(config: ms_examples::config::Config) -> ms_examples::System {
    watch_panics();
    ms_examples::System::start(config)
        .await
        .expect("system starts")
}

/// Shuts the system down gracefully and checks that nothing panicked on the way.
pub(crate) async fn finish(system: ms_examples::System) {
    system.shutdown().await.expect("graceful shutdown");
    assert_eq!(panics(), 0, "nothing panicked");
}

/// The timers of the scenario: only the unpaid invoice (the third) got its overdue message,
/// its charge was retried up to the last attempt, and nothing of the scenario's invoices is
/// still scheduled (the paid ones' overdue messages, due in 30 days, were cancelled).
pub(crate) fn check_timers(report: &Report) {
    let unpaid = report.invoices[2].as_str();
    let delivered: Vec<&str> = report
        .timers
        .iter()
        .filter_map(|e| match e {
            TimerEvent::OverdueDelivered { invoice_id, .. } => Some(invoice_id.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        !delivered.is_empty() && delivered.iter().all(|id| *id == unpaid),
        "an overdue message for the unpaid invoice only: {:?}",
        report.timers
    );
    let retries: Vec<i64> = report
        .timers
        .iter()
        .filter_map(|e| match e {
            TimerEvent::ChargeRetry {
                invoice_id,
                attempt,
                ..
            } if invoice_id == unpaid => Some(*attempt),
            _ => None,
        })
        .collect();
    let expected: Vec<i64> = (2..=MAX_CHARGE_ATTEMPTS).collect();
    assert_eq!(
        retries, expected,
        "retried up to the last attempt: {:?}",
        report.timers
    );
    assert!(
        report.timers.iter().any(|e| matches!(e,
            TimerEvent::ChargeGaveUp { invoice_id, attempts } if invoice_id == unpaid && *attempts == MAX_CHARGE_ATTEMPTS)),
        "{:?}",
        report.timers
    );
    assert!(
        report.still_scheduled.is_empty(),
        "the paid invoices' overdue messages were cancelled: {:?}",
        report.still_scheduled
    );
}
