//! The invoicing example end to end on the embedded defaults (a SQLite file per service, the
//! memory bus): the scenario's numbers, the read model, one trace across every service, and
//! the gateway's refusals (401, 429 with `Retry-After`, 400 problem+json).

use std::time::Duration;

use http::{Method, StatusCode, header};
use ms_bus::memory::Faults;
use ms_examples::Options;
use ms_examples::config::{Config, Credential, DEMO_BEARER_TOKEN};
use ms_examples::invoicing_service::{MAX_CHARGE_ATTEMPTS, TimerEvent};
use ms_examples::scenario::{self, GatewayClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_settles_with_the_expected_numbers_and_one_trace() {
    let system = common::start_embedded().await;
    let mut out = Vec::new();
    let report = scenario::run(&system, &mut out, false)
        .await
        .unwrap_or_else(|e| panic!("scenario failed: {e}\n{}", String::from_utf8_lossy(&out)));
    common::check_report(&report);
    common::finish(system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_that_duplicates_delays_reorders_and_loses_acks_changes_no_number() {
    // At-least-once delivery at its worst: every handler must be idempotent (inbox, versioned
    // read model, commands idempotent by state) for the numbers to come out exactly. Seeds 2
    // and 4 redeliver an invoice's older event after a newer one (they catch a read model
    // that does not compare versions).
    for seed in [2, 4, 11] {
        let faults = Faults::seeded(seed)
            .duplicate(0.3)
            .delay(0.2, Duration::from_millis(30))
            .reorder(0.3)
            .drop_before_ack(0.1);
        let config = Config {
            memory_faults: Some(faults),
            ..Config::default()
        };
        let system = common::start(config).await;
        let mut out = Vec::new();
        let report = scenario::run(&system, &mut out, false)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "seed {seed}: scenario failed: {e}\n{}",
                    String::from_utf8_lossy(&out)
                )
            });
        common::check_report(&report);
        for row in report.read_model["items"].as_array().unwrap() {
            let attempts = row["payment_attempts"].as_i64().unwrap();
            let expected = if row["status"] == "overdue" {
                MAX_CHARGE_ATTEMPTS
            } else {
                1
            };
            assert_eq!(
                attempts, expected,
                "seed {seed}: one charge per sent invoice, retried only when it failed: {row}"
            );
        }
        system.shutdown().await.expect("graceful shutdown");
        assert_eq!(common::panics(), 0, "nothing panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_payments_down_for_a_while_the_scenario_still_settles_to_the_same_numbers() {
    let system = common::start_embedded().await;
    let mut out = Vec::new();
    let report = scenario::run(&system, &mut out, true)
        .await
        .unwrap_or_else(|e| panic!("scenario failed: {e}\n{}", String::from_utf8_lossy(&out)));
    let printed = String::from_utf8_lossy(&out);
    assert!(printed.contains("partial=true breaker=Open"), "{printed}");
    common::check_report(&report);
    common::finish(system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_side_answers_broken_rules_and_unknown_invoices_with_problems() {
    let system = common::start_embedded().await;
    let client = GatewayClient::new(&system);
    let cases = [
        (
            r#"{"customer_id": "c-nobody", "lines": [{"description": "x", "quantity": 1, "unit_price_cents": 1}]}"#,
            422,
            "CUSTOMER_UNKNOWN",
        ),
        (
            r#"{"customer_id": "c-coyote", "lines": []}"#,
            422,
            "INVOICE_EMPTY",
        ),
        (
            r#"{"customer_id": "c-coyote", "lines": [{"description": "x", "quantity": 0, "unit_price_cents": 1}]}"#,
            422,
            "LINE_INVALID",
        ),
        (
            r#"{"customer_id": "c-coyote", "lines": [{"description": "x", "quantity": 9223372036854775807, "unit_price_cents": 2}]}"#,
            422,
            "LINE_INVALID",
        ),
    ];
    for (body, status, code) in cases {
        // The customer directory arrives by events: wait for it before judging the rules.
        let reply = loop {
            let reply = client
                .call(Method::POST, "/api/v1/invoices", Some(body), &[])
                .await
                .unwrap();
            let unknown = reply.json().unwrap()["code"] == "CUSTOMER_UNKNOWN";
            if !(unknown && code != "CUSTOMER_UNKNOWN") {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(reply.status.as_u16(), status, "{body}");
        assert_eq!(reply.json().unwrap()["code"], code, "{body}");
    }
    for (method, path) in [
        (Method::GET, "/api/v1/invoices/inv-nope"),
        (Method::POST, "/api/v1/invoices/inv-nope/send"),
    ] {
        let reply = client.call(method, path, None, &[]).await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.json().unwrap()["code"], "INVOICE_NOT_FOUND");
    }
    let body = r#"{"customer_id": "c-runner", "lines": [{"description": "x", "quantity": 1, "unit_price_cents": 100}]}"#;
    let invoice = client
        .call(Method::POST, "/api/v1/invoices", Some(body), &[])
        .await
        .unwrap()
        .json()
        .unwrap();
    let id = invoice["id"].as_str().unwrap();
    let cancel = format!("/api/v1/invoices/{id}/cancel");
    assert_eq!(
        client
            .call(Method::POST, &cancel, None, &[])
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    let again = client.call(Method::POST, &cancel, None, &[]).await.unwrap();
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.json().unwrap()["code"], "INVOICE_CANCELLED");
    let send = client
        .call(
            Method::POST,
            &format!("/api/v1/invoices/{id}/send"),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(send.status, StatusCode::CONFLICT);
    common::finish(system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_readiness_first_keeps_serving_for_the_drain_then_stops() {
    let config = Config {
        drain_delay: Duration::from_millis(1_500),
        ..Config::default()
    };
    let system = common::start(config).await;
    let gateway = system.addresses().gateway;
    assert_eq!(
        common::get(&format!("http://{gateway}/readyz")).await.0,
        StatusCode::OK
    );
    let shutdown = tokio::spawn(system.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Draining: not ready, still alive, still answering.
    assert_eq!(
        common::get(&format!("http://{gateway}/readyz")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        common::get(&format!("http://{gateway}/healthz")).await.0,
        StatusCode::OK
    );
    shutdown.await.unwrap().expect("graceful shutdown");
    assert!(
        tokio::net::TcpStream::connect(gateway).await.is_err(),
        "the gateway stopped listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_serves_its_summary_and_grpc_health_and_stops_serving_when_stopped() {
    use ms_examples::grpc::GetPaymentSummaryRequest;
    use ms_examples::grpc::payments_client::PaymentsClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let system = common::start_embedded().await;
    let url = format!("http://{}", system.addresses().payments_grpc);
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let summary = PaymentsClient::new(channel.clone())
        .get_payment_summary(GetPaymentSummaryRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.succeeded_count, summary.failed_count), (0, 0));
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: "payments.v1.Payments".to_owned(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.as_ref().ok() == Some(&(ServingStatus::Serving as i32)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never SERVING: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    system.stop_payments().await.unwrap();
    let after = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await;
    assert!(
        after.is_err(),
        "payments' gRPC port is closed while it is stopped"
    );
    common::finish(system).await;
}

#[test]
fn flags_win_over_the_environment_and_unknown_flags_are_refused() {
    let env = |name: &str| (name == "INVOICING_NATS_URL").then(|| "nats://env:4222".to_owned());
    let args = [
        "--once",
        "--nats-url=nats://flag:4222",
        "--database-url",
        "postgres://x/y",
    ];
    let options = Options::parse(args.map(str::to_owned), env).unwrap();
    assert!(options.once && !options.chaos);
    assert_eq!(options.config.nats_url.as_deref(), Some("nats://flag:4222"));
    assert_eq!(
        options.config.database_url.as_deref(),
        Some("postgres://x/y")
    );
    let options = Options::parse(["--chaos".to_owned()], env).unwrap();
    assert_eq!(options.config.nats_url.as_deref(), Some("nats://env:4222"));
    assert!(Options::parse(["--nope".to_owned()], env).is_err());
    assert!(Options::parse(["--amqp-url".to_owned()], env).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_answers_its_probes() {
    let system = common::start_embedded().await;
    let a = system.addresses();
    let client = GatewayClient::new(&system);
    for addr in [a.gateway, a.invoicing, a.payments_http, a.reporting] {
        for probe in ["/healthz", "/readyz", "/startupz"] {
            let url = format!("http://{addr}{probe}");
            let reply = common::get(&url).await;
            assert_eq!(reply.0, StatusCode::OK, "{url}: {}", reply.1);
            assert!(reply.1.contains("\"status\""), "{url}: {}", reply.1);
        }
    }
    // Probes need no API key; the API does.
    let reply = client
        .clone()
        .with_api_key(None)
        .call(Method::GET, "/readyz", None, &[])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    common::finish(system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_api_key_is_401_and_a_bearer_token_is_accepted() {
    let system = common::start_embedded().await;
    let client = GatewayClient::new(&system);
    for key in [None, Some("not-a-key")] {
        let reply = client
            .clone()
            .with_api_key(key)
            .call(Method::GET, "/api/v1/customers", None, &[])
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "key {key:?}");
        assert_eq!(
            reply.headers[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert!(reply.headers.contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(reply.json().unwrap()["code"], "UNAUTHENTICATED");
    }
    let bearer = format!("Bearer {DEMO_BEARER_TOKEN}");
    let reply = client
        .clone()
        .with_api_key(None)
        .call(
            Method::GET,
            "/api/v1/customers",
            None,
            &[("authorization", &bearer)],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    common::finish(system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let mut config = Config {
        rate_per_second: 1,
        rate_burst: 3,
        ..Config::default()
    };
    config.credentials.push(Credential {
        secret: "other-key".to_owned(),
        client: "other".to_owned(),
    });
    let system = common::start(config).await;
    let client = GatewayClient::new(&system);
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..5 {
        let reply = client
            .call(Method::GET, "/api/v1/customers", None, &[])
            .await
            .unwrap();
        statuses.push(reply.status.as_u16());
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
        }
    }
    assert_eq!(statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    let limited = limited.expect("a 429");
    let retry_after: u64 = limited.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        limited.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(limited.json().unwrap()["code"], "RATE_LIMITED");
    // Another client has its own allowance.
    let other = client.clone().with_api_key(Some("other-key"));
    let reply = other
        .call(Method::GET, "/api/v1/customers", None, &[])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    common::finish(system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_problem_json_and_nothing_is_created() {
    let system = common::start_embedded().await;
    let client = GatewayClient::new(&system);
    for body in ["{oops", "[1, 2", r#"{"customer_id": 7}"#, ""] {
        let reply = client
            .call(Method::POST, "/api/v1/invoices", Some(body), &[])
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "body {body:?}");
        assert_eq!(
            reply.headers[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let problem = reply.json().unwrap();
        assert_eq!(problem["code"], "MALFORMED_JSON");
        assert_eq!(problem["status"], 400);
    }
    let summary = client
        .call(Method::GET, "/api/web/v1/dashboard", None, &[])
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(summary["invoices"]["by_status"], serde_json::json!({}));
    common::finish(system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_payments_the_dashboard_is_partial_the_breaker_opens_and_all_catches_up() {
    let system = common::start_embedded().await;
    let client = GatewayClient::new(&system);
    system.stop_payments().await.unwrap();
    let mut last = serde_json::Value::Null;
    for _ in 0..4 {
        last = client
            .expect(
                Method::GET,
                "/api/web/v1/dashboard",
                None,
                StatusCode::OK,
                &[],
            )
            .await
            .unwrap();
        assert_eq!(last["partial"], true, "{last}");
        assert_eq!(last["unavailable"][0]["backend"], "payments", "{last}");
        assert!(
            last["invoices"].is_object(),
            "the rest still answers: {last}"
        );
    }
    assert_eq!(system.payments_breaker(), "Open", "{last}");
    system.start_payments().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let dashboard = client
            .expect(
                Method::GET,
                "/api/web/v1/dashboard",
                None,
                StatusCode::OK,
                &[],
            )
            .await
            .unwrap();
        if dashboard["partial"] == false {
            assert!(dashboard["payments"].is_object());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {dashboard}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    common::finish(system).await;
}

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_its_metrics_in_prometheus_text() {
    let system = common::start_embedded().await;
    let a = system.addresses();
    let client = GatewayClient::new(&system);
    // The gateway's readiness asks invoicing and reporting over HTTP: server and client calls.
    let reply = client
        .clone()
        .with_api_key(None)
        .call(Method::GET, "/readyz", None, &[])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    for addr in [a.gateway, a.invoicing, a.payments_http, a.reporting] {
        let url = format!("http://{addr}/metrics");
        let (status, text) = common::get(&url).await;
        assert_eq!(status, StatusCode::OK, "{url}: {text}");
        for family in [
            "# TYPE http_server_request_duration histogram",
            "# TYPE http_client_request_duration histogram",
        ] {
            assert!(text.contains(family), "{url} lacks {family}:\n{text}");
        }
        assert!(
            text.contains("http_server_request_duration_bucket{"),
            "{url}:\n{text}"
        );
        // The scrape itself is not traced nor measured.
        assert!(!text.contains("http_route=\"/metrics\""), "{url}:\n{text}");
        if std::env::var_os("MS_EXAMPLES_PRINT_METRICS").is_some() {
            println!("{text}");
        }
    }
    // The relays' gauges, the scheduled rows' among them, once a relay has looked.
    let url = format!("http://{}/metrics", a.invoicing);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = common::get(&url).await;
        if text.contains("ms_outbox_scheduled_rows{table=\"invoicing_outbox\"}") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{url}:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::finish(system).await;
}

/// Two invoices due in two seconds: the one paid at once never gets its overdue message (it
/// was cancelled when it was paid); the one whose card is declined is charged
/// `MAX_CHARGE_ATTEMPTS` times, then its overdue message marks it overdue at its due date,
/// not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_unpaid_invoice_gets_its_overdue_message_at_its_due_date() {
    let system = common::start_embedded().await;
    let client = GatewayClient::new(&system);
    let due_at = unix_ms() + 2_000;
    let mut ids = Vec::new();
    for cents in [1_000, 900_000] {
        ids.push(create_and_send(&client, cents, due_at).await);
    }
    let (paid, declined) = (ids[0].as_str(), ids[1].as_str());
    let status = |id: String| {
        let client = client.clone();
        async move {
            client
                .call(Method::GET, &format!("/api/v1/invoices/{id}"), None, &[])
                .await
                .unwrap()
                .json()
                .unwrap()
        }
    };
    // Before the due date: the declined one was retried and is still `sent`, with its overdue
    // message waiting; the paid one has nothing scheduled.
    let gave_up = |log: &[TimerEvent]| {
        log.iter().any(
            |e| matches!(e, TimerEvent::ChargeGaveUp { invoice_id, .. } if invoice_id == declined),
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !gave_up(&system.timer_log()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            system.timer_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before: serde_json::Value = status(declined.to_owned()).await;
    let early = unix_ms() < due_at;
    if early {
        assert_eq!(
            before["status"], "sent",
            "not overdue before its due date: {before}"
        );
        let waiting = system.scheduled(Some(declined)).await.unwrap();
        assert_eq!(
            waiting.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
            [format!("{declined}-overdue")]
        );
    }
    assert_eq!(before["charge_attempts"], MAX_CHARGE_ATTEMPTS, "{before}");
    assert_eq!(status(paid.to_owned()).await["status"], "paid");
    assert!(system.scheduled(Some(paid)).await.unwrap().is_empty());

    // Past the due date (and a relay's poll).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let overdue = status(declined.to_owned()).await["status"] == "overdue";
        if overdue {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the overdue message came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let delivered: Vec<(String, bool)> = system
        .timer_log()
        .into_iter()
        .filter_map(|e| match e {
            TimerEvent::OverdueDelivered { invoice_id, marked } => Some((invoice_id, marked)),
            _ => None,
        })
        .collect();
    assert_eq!(
        delivered,
        [(declined.to_owned(), true)],
        "the paid invoice never got an overdue message"
    );
    assert_eq!(status(paid.to_owned()).await["status"], "paid");
    common::finish(system).await;
}

fn unix_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// Creates an invoice of one line of `cents` for c-runner, due at `due_at`, and sends it.
async fn create_and_send(client: &GatewayClient, cents: i64, due_at: i64) -> String {
    let body = serde_json::json!({
        "customer_id": "c-runner", "due_at": due_at,
        "lines": [{"description": "x", "quantity": 1, "unit_price_cents": cents}],
    });
    // The customer directory arrives by events: wait for it.
    let invoice: serde_json::Value = loop {
        let reply = client
            .call(
                Method::POST,
                "/api/v1/invoices",
                Some(&body.to_string()),
                &[],
            )
            .await
            .unwrap();
        if reply.status == StatusCode::CREATED {
            break reply.json().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let id = invoice["id"].as_str().unwrap().to_owned();
    let sent = client
        .call(
            Method::POST,
            &format!("/api/v1/invoices/{id}/send"),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(sent.status, StatusCode::OK);
    id
}
