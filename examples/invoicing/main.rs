//! The invoicing example: a toy invoicing system wiring every ms crate together.
//!
//! Run it from the repository root: `cargo run --example invoicing` (add `-- --once` to run
//! the scenario and exit, as CI does).
//!
//! NOT BUILT YET. The system it will run (gateway, invoicing, payments, reporting, each with
//! its own database, talking over REST, gRPC, events and commands) is issue 8, which starts
//! once ms-bus and ms-outbox have landed. Until then this program says what it will show and
//! demonstrates the pieces that exist, then exits 0.

use ms_bus::Envelope;
use ms_health::{CheckResult, HealthRegistry, check_fn};
use ms_tracing::CorrelationId;

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
