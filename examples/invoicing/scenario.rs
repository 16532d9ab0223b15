//! The scripted scenario, run through the gateway as a client would: create invoices, break
//! a rule, send them, let payments succeed and one fail, read the dashboard and the read
//! model, and print the trace of one request across every service.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::config::DEMO_API_KEY;
use crate::gateway::API_KEY_HEADER;
use crate::http::Reply;
use crate::invoicing_service::{MAX_CHARGE_ATTEMPTS, OVERDUE_DESTINATION, TimerEvent};
use crate::{Error, System, trace_tree};

/// How long the scenario waits for the system to settle (events relayed and projected).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the scenario saw, for the caller (and the tests) to check.
#[derive(Debug, Clone)]
pub struct Report {
    /// The ids of the invoices created, in order.
    pub invoices: Vec<String>,
    /// The final dashboard.
    pub dashboard: Value,
    /// The read model's list, sorted by total descending.
    pub read_model: Value,
    /// The trace id of the traced request (sending the first invoice).
    pub trace_id: String,
    /// Its correlation ID.
    pub correlation_id: String,
    /// The services that took part in that trace.
    pub traced_services: Vec<String>,
    /// What invoicing's timers did for the scenario's invoices, in order.
    pub timers: Vec<TimerEvent>,
    /// The scenario's invoices' messages still scheduled at the end (none: the paid ones'
    /// overdue messages were cancelled, the unpaid one's was delivered).
    pub still_scheduled: Vec<String>,
}

/// A client of the gateway, as an outside caller is: no tracing of its own, but it may send
/// a `traceparent` and a correlation ID to follow its request.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    base: String,
    api_key: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl GatewayClient {
    /// A client of the gateway at `system`, with the demo API key.
    pub fn new(system: &System) -> Self {
        Self {
            base: format!("http://{}", system.addresses().gateway),
            api_key: Some(DEMO_API_KEY.to_owned()),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The same client with another API key (`None`: none at all).
    #[must_use]
    pub fn with_api_key(mut self, key: Option<&str>) -> Self {
        self.api_key = key.map(str::to_owned);
        self
    }

    /// Sends a request; `body` is sent as is with `content-type: application/json`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, Error> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(key) = &self.api_key {
            builder = builder.header(API_KEY_HEADER, key);
        }
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .map_err(|e| Error::Http(e.to_string()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| Error::Http(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Error::Http(e.to_string()))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// A JSON call that must answer `expect`.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        expect: StatusCode,
        headers: &[(&str, &str)],
    ) -> Result<Value, Error> {
        let text = body.map(Value::to_string);
        let reply = self
            .call(method.clone(), path, text.as_deref(), headers)
            .await?;
        if reply.status != expect {
            return Err(Error::Scenario(format!(
                "{method} {path} answered {} (expected {expect}): {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )));
        }
        reply.json()
    }
}

/// Runs the scenario against `system`, printing each step to `out`. With `chaos`, payments
/// is stopped while the invoices are sent, and started again afterwards.
pub async fn run(system: &System, out: &mut dyn Write, chaos: bool) -> Result<Report, Error> {
    let client = GatewayClient::new(system);
    customers(&client, out).await?;
    let baseline = client
        .expect(
            Method::GET,
            "/api/web/v1/dashboard",
            None,
            StatusCode::OK,
            &[],
        )
        .await?;
    let invoices = create_invoices(&client, out).await?;
    broken_rule(&client, out).await?;
    if chaos {
        step(out, "chaos", "payments goes down")?;
        system.stop_payments().await?;
    }
    let (trace_id, correlation_id) = send_invoices(&client, out, &invoices).await?;
    print_scheduled(&client, out, &invoices).await?;
    if chaos {
        chaos_outage(system, &client, out).await?;
    }

    step(
        out,
        "5",
        "payments settles the charges (one is over the card limit: retried with backoff, then its overdue message decides), invoicing and reporting catch up",
    )?;
    let settling = std::time::Instant::now();
    let dashboard = wait_for(|| async {
        let dashboard = client
            .expect(
                Method::GET,
                "/api/web/v1/dashboard",
                None,
                StatusCode::OK,
                &[],
            )
            .await?;
        Ok(settled(&dashboard, &baseline).then_some(dashboard))
    })
    .await?;
    line(
        out,
        &format!(
            "settled {} ms after the last request: charged, projected, marked paid and overdue",
            settling.elapsed().as_millis()
        ),
    )?;
    print_dashboard(out, &dashboard)?;
    let (timers, still_scheduled) = print_timers(system, out, &invoices).await?;

    let read_model = read_model(&client, out).await?;

    step(
        out,
        "7",
        &format!(
            "the trace of `POST /api/v1/invoices/{}/send`, across every service",
            invoices[0]
        ),
    )?;
    let spans = trace_tree::settle(
        &trace_id,
        Duration::from_millis(300),
        Duration::from_secs(5),
    )
    .await;
    writeln!(
        out,
        "  trace {trace_id} · correlation {correlation_id} · {} spans",
        spans.len()
    )?;
    writeln!(out, "  {:>8} {:>9}", "start", "took")?;
    write!(out, "{}", trace_tree::render(&spans))?;
    let mut traced_services: Vec<String> = trace_tree::services(&spans).into_values().collect();
    traced_services.sort();
    traced_services.dedup();

    Ok(Report {
        invoices,
        dashboard,
        read_model,
        trace_id,
        correlation_id,
        traced_services,
        timers,
        still_scheduled,
    })
}

/// Step 4's overdue messages: one per sent invoice, due at its due date. (Listing them with
/// `Outbox::scheduled` here would race with payments, which cancels the paid ones within
/// milliseconds; step 5 lists what is left.)
async fn print_scheduled(
    client: &GatewayClient,
    out: &mut dyn Write,
    invoices: &[String],
) -> Result<(), Error> {
    line(
        out,
        "each send scheduled the invoice's overdue message at its due date, in the same transaction:",
    )?;
    for id in &invoices[..3] {
        let invoice = client
            .expect(
                Method::GET,
                &format!("/api/v1/invoices/{id}"),
                None,
                StatusCode::OK,
                &[],
            )
            .await?;
        let due = invoice["due_at"]
            .as_i64()
            .and_then(|ms| {
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
            .map_or_else(|| "?".to_owned(), day);
        line(
            out,
            &format!("  {id}-overdue  → {OVERDUE_DESTINATION}  due {due}"),
        )?;
    }
    Ok(())
}

/// What the timers did: overdue messages delivered or cancelled, charges retried with
/// backoff. Waits until the unpaid invoice's overdue message was delivered and its last
/// charge failed.
async fn print_timers(
    system: &System,
    out: &mut dyn Write,
    invoices: &[String],
) -> Result<(Vec<TimerEvent>, Vec<String>), Error> {
    let unpaid = invoices[2].as_str();
    let timers = wait_for(|| async {
        let timers: Vec<TimerEvent> = system
            .timer_log()
            .into_iter()
            .filter(|event| invoices.iter().any(|id| id == timer_invoice(event)))
            .collect();
        let delivered = timers.iter().any(|e| {
            matches!(e, TimerEvent::OverdueDelivered { invoice_id, .. } if invoice_id == unpaid)
        });
        let gave_up = timers.iter().any(
            |e| matches!(e, TimerEvent::ChargeGaveUp { invoice_id, .. } if invoice_id == unpaid),
        );
        Ok((delivered && gave_up).then_some(timers))
    })
    .await?;
    line(out, "timers (scheduled messages in invoicing's outbox):")?;
    for event in &timers {
        let what = match event {
            TimerEvent::ChargeRetry {
                invoice_id,
                attempt,
                after,
            } => format!(
                "{invoice_id}  charge failed: attempt {attempt} of {MAX_CHARGE_ATTEMPTS} scheduled in {} ms (ms-resilience ExponentialBackoff)",
                after.as_millis()
            ),
            TimerEvent::ChargeGaveUp {
                invoice_id,
                attempts,
            } => format!(
                "{invoice_id}  charge failed {attempts} times: no more attempts, the overdue message decides"
            ),
            TimerEvent::OverdueDelivered { invoice_id, marked } => format!(
                "{invoice_id}  overdue message delivered → {}",
                if *marked { "overdue" } else { "no change" }
            ),
        };
        line(out, &format!("  {what}"))?;
    }
    let mut still_scheduled = Vec::new();
    for id in invoices {
        let left = system.scheduled(Some(id)).await?;
        still_scheduled.extend(left.iter().map(|m| m.id.clone()));
    }
    for id in &invoices[..2] {
        let left = still_scheduled
            .iter()
            .filter(|m| m.starts_with(id.as_str()))
            .count();
        line(
            out,
            &format!(
                "  {id}  paid: its overdue message was cancelled in the paying transaction ({left} scheduled)"
            ),
        )?;
    }
    line(
        out,
        &format!(
            "  {}  cancelled as a draft: never scheduled one",
            invoices[3]
        ),
    )?;
    Ok((timers, still_scheduled))
}

fn timer_invoice(event: &TimerEvent) -> &str {
    match event {
        TimerEvent::OverdueDelivered { invoice_id, .. }
        | TimerEvent::ChargeRetry { invoice_id, .. }
        | TimerEvent::ChargeGaveUp { invoice_id, .. } => invoice_id,
    }
}

fn day(at: time::OffsetDateTime) -> String {
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        at.date(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// The read model, a page at a time, sorted by total.
async fn read_model(client: &GatewayClient, out: &mut dyn Write) -> Result<Value, Error> {
    step(
        out,
        "6",
        "the read model: GET /api/v1/reports/invoices?sort=-total_cents&limit=3, then the next page",
    )?;
    // Payments' results come on a topic of their own, so the statuses above can be projected
    // before the failed charge is: wait until every overdue row carries its payment error and
    // every attempt.
    let read_model = wait_for(|| async {
        let page = client
            .expect(
                Method::GET,
                "/api/v1/reports/invoices?sort=-total_cents&limit=3",
                None,
                StatusCode::OK,
                &[],
            )
            .await?;
        let projected = page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|row| row["status"] == "overdue")
            .all(|row| {
                row["last_payment_error"].is_string()
                    && row["payment_attempts"].as_i64() >= Some(MAX_CHARGE_ATTEMPTS)
            });
        Ok(projected.then_some(page))
    })
    .await?;
    print_rows(out, &read_model)?;
    if let Some(next) = read_model["next_offset"].as_i64() {
        let page = client
            .expect(
                Method::GET,
                &format!("/api/v1/reports/invoices?sort=-total_cents&limit=3&offset={next}"),
                None,
                StatusCode::OK,
                &[],
            )
            .await?;
        print_rows(out, &page)?;
    }
    Ok(read_model)
}

async fn customers(client: &GatewayClient, out: &mut dyn Write) -> Result<(), Error> {
    step(
        out,
        "1",
        "the customers context announced its tenants and customers; invoicing keeps a copy",
    )?;
    let customers = wait_for(|| async {
        let list = client
            .expect(Method::GET, "/api/v1/customers", None, StatusCode::OK, &[])
            .await?;
        let count = list["customers"].as_array().map_or(0, Vec::len);
        Ok((count >= 3).then_some(list))
    })
    .await?;
    for customer in customers["customers"].as_array().into_iter().flatten() {
        line(
            out,
            &format!(
                "{:<11} {:<21} tenant {} ({})",
                text(&customer["customer_id"]),
                text(&customer["name"]),
                text(&customer["tenant_id"]),
                text(&customer["tenant_status"])
            ),
        )?;
    }

    Ok(())
}

async fn create_invoices(
    client: &GatewayClient,
    out: &mut dyn Write,
) -> Result<Vec<String>, Error> {
    step(out, "2", "create four invoices (POST /api/v1/invoices)")?;
    let drafts = [
        (
            "c-coyote",
            json!([{"description": "Rocket skates", "quantity": 2, "unit_price_cents": 45_000},
                            {"description": "Giant magnet", "quantity": 1, "unit_price_cents": 35_000}]),
            30,
        ),
        (
            "c-runner",
            json!([{"description": "Track rental", "quantity": 4, "unit_price_cents": 24_500}]),
            30,
        ),
        (
            "c-coyote",
            json!([{"description": "Anvil (bulk)", "quantity": 73, "unit_price_cents": 10_000}]),
            0,
        ),
        (
            "c-runner",
            json!([{"description": "Bird seed", "quantity": 3, "unit_price_cents": 1_500}]),
            30,
        ),
    ];
    let mut invoices = Vec::new();
    for (customer, lines, due) in drafts {
        let body = json!({ "customer_id": customer, "lines": lines, "due_in_days": due });
        let invoice = client
            .expect(
                Method::POST,
                "/api/v1/invoices",
                Some(&body),
                StatusCode::CREATED,
                &[],
            )
            .await?;
        line(
            out,
            &format!(
                "{}  {:<21} {:>12}  due in {due} days",
                text(&invoice["id"]),
                text(&invoice["customer_name"]),
                money(&invoice["total_cents"])
            ),
        )?;
        invoices.push(text(&invoice["id"]));
    }

    Ok(invoices)
}

async fn broken_rule(client: &GatewayClient, out: &mut dyn Write) -> Result<(), Error> {
    step(out, "3", "a business rule: tenant t-globex is suspended")?;
    let body = json!({ "customer_id": "c-scorpio", "lines": [{"description": "Doomsday device", "quantity": 1, "unit_price_cents": 100}] });
    let problem = client
        .expect(
            Method::POST,
            "/api/v1/invoices",
            Some(&body),
            StatusCode::UNPROCESSABLE_ENTITY,
            &[],
        )
        .await?;
    line(
        out,
        &format!(
            "422 {}: {}",
            text(&problem["code"]),
            text(&problem["detail"])
        ),
    )?;

    Ok(())
}

/// Sends three invoices and cancels the fourth; the first send carries a `traceparent` and a
/// correlation ID of the caller's, whose trace is printed at the end.
async fn send_invoices(
    client: &GatewayClient,
    out: &mut dyn Write,
    invoices: &[String],
) -> Result<(String, String), Error> {
    step(
        out,
        "4",
        "send three invoices (each commits its events and a payments.charge command through the outbox), cancel the fourth",
    )?;
    let trace_id = uuid::Uuid::now_v7().simple().to_string();
    let correlation_id = format!("scenario-{}", &trace_id[24..]);
    let traceparent = format!(
        "00-{trace_id}-{}-01",
        &uuid::Uuid::now_v7().simple().to_string()[16..]
    );
    let traced = [
        ("traceparent", traceparent.as_str()),
        ("x-correlation-id", correlation_id.as_str()),
    ];
    for (i, id) in invoices.iter().enumerate() {
        let (action, headers): (&str, &[(&str, &str)]) = match i {
            0 => ("send", &traced),
            3 => ("cancel", &[]),
            _ => ("send", &[]),
        };
        let invoice = client
            .expect(
                Method::POST,
                &format!("/api/v1/invoices/{id}/{action}"),
                None,
                StatusCode::OK,
                headers,
            )
            .await?;
        line(
            out,
            &format!("{id}  {action:<6} → {}", text(&invoice["status"])),
        )?;
    }
    let problem = client
        .expect(
            Method::POST,
            &format!("/api/v1/invoices/{}/send", invoices[0]),
            None,
            StatusCode::CONFLICT,
            &[],
        )
        .await?;
    line(
        out,
        &format!(
            "sending {} again: 409 {}",
            invoices[0],
            text(&problem["code"])
        ),
    )?;

    Ok((trace_id, correlation_id))
}

/// Payments is down: the dashboard degrades and the breaker opens; then it comes back and
/// the queued charges are settled.
async fn chaos_outage(
    system: &System,
    client: &GatewayClient,
    out: &mut dyn Write,
) -> Result<(), Error> {
    for _ in 0..4 {
        let dashboard = client
            .expect(
                Method::GET,
                "/api/web/v1/dashboard",
                None,
                StatusCode::OK,
                &[],
            )
            .await?;
        line(
            out,
            &format!(
                "dashboard: partial={} breaker={:<8} {} unavailable: {}",
                dashboard["partial"],
                text(&dashboard["payments_breaker"]),
                text(&dashboard["unavailable"][0]["backend"]),
                text(&dashboard["unavailable"][0]["error"])
            ),
        )?;
    }
    line(
        out,
        &format!(
            "payments stays down for {:?}; the charges wait on the bus",
            crate::config::DEFAULT_CHAOS_OUTAGE
        ),
    )?;
    tokio::time::sleep(crate::config::DEFAULT_CHAOS_OUTAGE).await;
    system.start_payments().await?;
    step(out, "chaos", "payments is back")?;
    let dashboard = wait_for(|| async {
        let dashboard = client
            .expect(
                Method::GET,
                "/api/web/v1/dashboard",
                None,
                StatusCode::OK,
                &[],
            )
            .await?;
        Ok((dashboard["partial"] == false).then_some(dashboard))
    })
    .await?;
    line(
        out,
        &format!(
            "dashboard: partial={} breaker={}",
            dashboard["partial"],
            text(&dashboard["payments_breaker"])
        ),
    )?;
    Ok(())
}

/// The figures the scenario moves: paid, overdue and cancelled in the read model, failed
/// payments, paid on the write side.
fn figures(dashboard: &Value) -> [i64; 5] {
    let read = |status: &str| {
        dashboard["read_model"]["by_status"][status]["count"]
            .as_i64()
            .unwrap_or(0)
    };
    [
        read("paid"),
        read("overdue"),
        read("cancelled"),
        dashboard["payments"]["failed_count"].as_i64().unwrap_or(0),
        dashboard["invoices"]["by_status"]["paid"]["count"]
            .as_i64()
            .unwrap_or(0),
    ]
}

/// Two more paid, one more overdue, one more cancelled, one more failed payment per charge
/// attempt than at `baseline` (a database that
/// outlives a run keeps the earlier runs' invoices), in the read model and in payments, all
/// at once.
fn settled(dashboard: &Value, baseline: &Value) -> bool {
    let (now, before) = (figures(dashboard), figures(baseline));
    let moved: Vec<i64> = now.iter().zip(before).map(|(n, b)| n - b).collect();
    dashboard["partial"] == false && moved == [2, 1, 1, MAX_CHARGE_ATTEMPTS, 2]
}

async fn wait_for<T, F, Fut>(mut poll: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, Error>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let last = poll().await;
        match last {
            Ok(Some(value)) => return Ok(value),
            Ok(None) | Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(None) => {
                return Err(Error::Scenario(format!(
                    "the system did not settle within {SETTLE_TIMEOUT:?}"
                )));
            }
            Err(error) => return Err(error),
        }
    }
}

fn print_dashboard(out: &mut dyn Write, dashboard: &Value) -> Result<(), Error> {
    writeln!(
        out,
        "  ┌─ dashboard (GET /api/web/v1/dashboard: invoicing + reporting over REST, payments over gRPC) ─"
    )?;
    let by_status = &dashboard["invoices"]["by_status"];
    for status in ["draft", "sent", "paid", "overdue", "cancelled"] {
        let entry = &by_status[status];
        if entry.is_object() {
            writeln!(
                out,
                "  │ {status:<10} {:>3} invoices  {:>12}",
                entry["count"].as_i64().unwrap_or(0),
                money(&entry["total_cents"])
            )?;
        }
    }
    writeln!(
        out,
        "  │ {:<25}{:>12}",
        "outstanding",
        money(&dashboard["invoices"]["outstanding_cents"])
    )?;
    writeln!(
        out,
        "  │ {:<25}{:>12}  (read model)",
        "collected",
        money(&dashboard["read_model"]["collected_cents"])
    )?;
    let payments = &dashboard["payments"];
    writeln!(
        out,
        "  │ payments   {} succeeded ({}), {} failed ({})   breaker {}",
        payments["succeeded_count"],
        money(&payments["succeeded_cents"]),
        payments["failed_count"],
        money(&payments["failed_cents"]),
        text(&dashboard["payments_breaker"])
    )?;
    writeln!(out, "  │ partial    {}", dashboard["partial"])?;
    writeln!(out, "  └─")?;
    Ok(())
}

fn print_rows(out: &mut dyn Write, page: &Value) -> Result<(), Error> {
    for row in page["items"].as_array().into_iter().flatten() {
        let error = row["last_payment_error"]
            .as_str()
            .map(|e| format!("  ({e})"))
            .unwrap_or_default();
        line(
            out,
            &format!(
                "{}  {:<21} {:>12}  {:<9} collected {:>12}{error}",
                text(&row["invoice_id"]),
                text(&row["customer_name"]),
                money(&row["total_cents"]),
                text(&row["status"]),
                money(&row["paid_cents"])
            ),
        )?;
    }
    line(
        out,
        &format!(
            "({} of {} rows, next_offset {})",
            page["items"].as_array().map_or(0, Vec::len),
            page["total"],
            page["next_offset"]
        ),
    )
}

fn step(out: &mut dyn Write, number: &str, what: &str) -> Result<(), Error> {
    writeln!(out, "\n▶ {number}. {what}")?;
    Ok(())
}

fn line(out: &mut dyn Write, what: &str) -> Result<(), Error> {
    writeln!(out, "  {what}")?;
    Ok(())
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// Cents as money: `1234567` → `12,345.67`.
pub fn money(cents: &Value) -> String {
    let cents = cents.as_i64().unwrap_or(0);
    let units = (cents / 100).abs().to_string();
    let mut grouped = String::new();
    for (i, digit) in units.chars().enumerate() {
        if i > 0 && (units.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{grouped}.{:02}", (cents % 100).abs())
}
