//! The invoicing example: a toy invoicing system wiring every ms crate together.
//!
//! Run it from the repository root: `cargo run --example invoicing` (add `-- --once` to run
//! the scenario and exit, as CI does).
//!
//! NOT BUILT YET. The system it will run (gateway, invoicing, payments, reporting, each with
//! its own database, talking over REST, gRPC, events and commands) is issue 8, which starts
//! once ms-bus and ms-outbox have landed. Until then this program says what it will show and
//! demonstrates the pieces that exist, then exits 0.

use std::convert::Infallible;
use std::time::Duration;

use ms_bus::consumer::{Consumer, Message};
use ms_bus::memory::MemoryBus;
use ms_bus::{Envelope, EventPublisher, Subscription};
use ms_health::{CheckResult, HealthRegistry, check_fn};
use ms_outbox::{Outbox, OutboxMessage, Relay};
use ms_resilience::circuit_breaker::CircuitBreaker;
use ms_tracing::CorrelationId;
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio::sync::mpsc;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let once = std::env::args().skip(1).any(|arg| arg == "--once");
    println!("ms invoicing example: not built yet (see examples/README.md and issue 8).");
    println!();
    println!("When it lands, this command will start four services on loopback ports");
    println!("(gateway, invoicing, payments, reporting), each with its own SQLite database");
    println!("and the in-memory bus, run a scripted scenario through the gateway, and print");
    println!("each step, the dashboard, and the trace of one request across every service.");
    println!();
    println!("What exists today, working:");

    let correlation = CorrelationId::generate();
    println!("  ms-tracing  correlation ID        {correlation}");

    let event = Envelope::builder("invoicing.invoice.created", "/invoicing")
        .subject("inv-1001")
        .correlation_id(&correlation)
        .data(
            "application/json",
            &br#"{"invoice":"inv-1001","total_cents":4200}"#[..],
        )
        .build()?;
    println!(
        "  ms-bus      CloudEvents envelope   {} {} (id {})",
        event.ty(),
        event.subject().unwrap_or_default(),
        event.id()
    );

    // The event goes through the in-memory bus to a consumer group; the handler runs with the
    // event's correlation ID as the current one, without anyone passing it along.
    let bus = MemoryBus::new();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let consumer = Consumer::new(Subscription::events("invoicing.invoices", "reporting")?)
        .serve(
            &bus,
            tower::service_fn(move |message: Message| {
                let _ = seen_tx.send((message.id().to_owned(), CorrelationId::current()));
                async { Ok::<_, Infallible>(()) }
            }),
        )
        .await?;
    bus.publish("invoicing.invoices", &event).await?;
    let (id, current) = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
        .await?
        .ok_or("the consumer stopped before it handled the event")?;
    consumer.shutdown().await?;
    println!(
        "  ms-bus      memory bus             handled {id} in group reporting, correlation ID {}",
        current.map_or_else(|| "none".to_owned(), |c| c.to_string())
    );

    outbox_demo(&bus).await?;

    // A call to a flaky dependency through a circuit breaker: it opens after enough failures
    // and then fails fast instead of waiting on the dependency.
    let breaker = CircuitBreaker::builder()
        .name("payments")
        .minimum_number_of_calls(4)
        .build();
    let payments =
        ServiceBuilder::new()
            .layer(breaker.layer())
            .service_fn(|cents: u64| async move {
                if cents == 0 {
                    Err::<u64, ms_resilience::BoxError>("payments is down".into())
                } else {
                    Ok(cents)
                }
            });
    for _ in 0..4 {
        let _ = payments.clone().oneshot(0).await;
    }
    let fast_fail = payments.clone().oneshot(4200).await.err();
    println!(
        "  ms-resilience circuit breaker      {:?} after 4 failures: {}",
        breaker.state(),
        fast_fail.map_or_else(|| "call went through".to_owned(), |e| e.to_string())
    );

    let registry = HealthRegistry::builder()
        .readiness("clock", check_fn(|| async { CheckResult::pass() }))
        .build()?;
    let readiness = registry.readiness().await;
    println!(
        "  ms-health   readiness probe        {}",
        readiness.status.as_str()
    );

    if !once {
        println!();
        println!("(Nothing stays up yet; `-- --once` already runs the same and exits.)");
    }
    Ok(())
}

/// The business change and its event commit together (the outbox row is written in the same
/// SQLite transaction as the invoice); the relay then publishes the committed event.
async fn outbox_demo(bus: &MemoryBus) -> Result<(), Box<dyn std::error::Error>> {
    let db_path = std::env::temp_dir().join(format!("ms-invoicing-{}.db", std::process::id()));
    let pool = SqlitePoolOptions::new()
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&db_path)
                .create_if_missing(true),
        )
        .await?;
    sqlx::query("CREATE TABLE invoices (id TEXT PRIMARY KEY, total_cents INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    let outbox = Outbox::<Sqlite>::default();
    outbox.migrate(&pool).await?;
    let (audit_tx, mut audit_rx) = mpsc::unbounded_channel();
    let audit = Consumer::new(Subscription::events("invoicing.invoices", "audit")?)
        .serve(
            bus,
            tower::service_fn(move |message: Message| {
                let _ = audit_tx.send(message.id().to_owned());
                async { Ok::<_, Infallible>(()) }
            }),
        )
        .await?;
    let relay = Relay::builder(&outbox, &pool, bus.clone()).build().spawn();
    let created = Envelope::builder("invoicing.invoice.created", "/invoicing")
        .subject("inv-1002")
        .data(
            "application/json",
            &br#"{"invoice":"inv-1002","total_cents":1900}"#[..],
        )
        .build()?;
    let started = std::time::Instant::now();
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO invoices (id, total_cents) VALUES ('inv-1002', 1900)")
        .execute(&mut *tx)
        .await?;
    outbox
        .enqueue(
            &mut *tx,
            OutboxMessage::event("invoicing.invoices", created.clone()),
        )
        .await?;
    tx.commit().await?;
    let relayed = tokio::time::timeout(Duration::from_secs(10), audit_rx.recv())
        .await?
        .ok_or("the audit consumer stopped before it saw the event")?;
    let elapsed = started.elapsed();
    relay.shutdown().await?;
    audit.shutdown().await?;
    pool.close().await;
    let _ = std::fs::remove_file(&db_path);
    println!(
        "  ms-outbox   outbox + relay         {} committed with invoice inv-1002, published {} ms later{}",
        created.ty(),
        elapsed.as_millis(),
        if relayed == created.id() {
            ""
        } else {
            " (a different event arrived!)"
        }
    );
    Ok(())
}
