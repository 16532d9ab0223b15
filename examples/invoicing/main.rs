//! The invoicing example: a toy invoicing system wiring every ms crate together.
//!
//! ```sh
//! cargo run --example invoicing               # the scenario, then stays up until Ctrl-C
//! cargo run --example invoicing -- --once     # the scenario, then exits (CI)
//! cargo run --example invoicing -- --chaos    # payments goes down for a while mid-scenario
//! INVOICING_DATABASE_URL=postgres://postgres@127.0.0.1/postgres \
//! INVOICING_NATS_URL=nats://127.0.0.1:4222 cargo run --example invoicing
//! INVOICING_KAFKA_URL=127.0.0.1:9092 cargo run --example invoicing -- --once
//! ```
//!
//! Four services start on loopback ports (gateway, invoicing, payments, reporting), each
//! with its own database (a SQLite file, or a PostgreSQL schema) and the bus (in memory, NATS
//! JetStream, RabbitMQ or Kafka); a scripted scenario runs through the gateway and prints each
//! step, the dashboard and the trace of one request across every service. See `examples/README.md`.

use std::io::Write as _;
use std::process::ExitCode;

use ms_examples::config::{DEMO_API_KEY, DEMO_BEARER_TOKEN};
use ms_examples::{Options, System, scenario};

#[tokio::main]
async fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1), |name| std::env::var(name).ok()) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("invoicing example failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), ms_examples::Error> {
    let system = System::start(options.config.clone()).await?;
    let addresses = system.addresses();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ms invoicing example: four services on {} and the {}",
        system.database(),
        system.bus()
    )?;
    writeln!(
        out,
        "  gateway    http://{}   (public REST, web BFF)",
        addresses.gateway
    )?;
    writeln!(
        out,
        "  invoicing  http://{}   (write side)",
        addresses.invoicing
    )?;
    writeln!(
        out,
        "  payments   grpc://{}   http://{} (probes)",
        addresses.payments_grpc, addresses.payments_http
    )?;
    writeln!(
        out,
        "  reporting  http://{}   (read model)",
        addresses.reporting
    )?;
    let report = scenario::run(&system, &mut out, options.chaos).await;
    drop(out);
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            let _ = system.shutdown().await;
            return Err(error);
        }
    };
    println!(
        "\n✔ scenario done: {} invoices, one trace across {}",
        report.invoices.len(),
        report.traced_services.join(", ")
    );
    if !options.once {
        print_curl_lines(&system, &report);
        println!("\nServing until Ctrl-C …");
        tokio::signal::ctrl_c().await?;
        println!("Shutting down: readiness fails first, then the servers drain.");
    }
    system.shutdown().await?;
    Ok(())
}

fn print_curl_lines(system: &System, report: &scenario::Report) {
    let a = system.addresses();
    let gw = format!("http://{}", a.gateway);
    let invoice = report.invoices.first().map_or("inv-…", String::as_str);
    println!("\nTry it (copy and paste):");
    println!("  curl -s {gw}/api/web/v1/dashboard -H 'x-api-key: {DEMO_API_KEY}'");
    println!(
        "  curl -s '{gw}/api/v1/reports/invoices?status=paid&sort=-total_cents&limit=2' -H 'authorization: Bearer {DEMO_BEARER_TOKEN}'"
    );
    println!("  curl -s {gw}/api/v1/invoices/{invoice} -H 'x-api-key: {DEMO_API_KEY}'");
    println!(
        "  curl -s -X POST {gw}/api/v1/invoices -H 'x-api-key: {DEMO_API_KEY}' -H 'content-type: application/json' \\"
    );
    println!(
        "       -d '{{\"customer_id\":\"c-runner\",\"lines\":[{{\"description\":\"Tea\",\"quantity\":1,\"unit_price_cents\":250}}]}}'"
    );
    println!(
        "  curl -si {gw}/api/v1/customers                                  # 401 without a key"
    );
    println!(
        "  curl -s -X POST {gw}/api/v1/invoices -H 'x-api-key: {DEMO_API_KEY}' -H 'content-type: application/json' -d '{{oops'   # 400 problem+json"
    );
    println!(
        "  curl -s {gw}/readyz?verbose ; curl -s http://{}/readyz?verbose",
        a.payments_http
    );
    println!("gRPC (grpcurl; the server has no reflection, so give it the proto):");
    println!(
        "  grpcurl -plaintext -import-path examples/proto -proto payments.proto -d '{{}}' {} payments.v1.Payments/GetPaymentSummary",
        a.payments_grpc
    );
    println!(
        "  grpc_health_probe -addr {} -service payments.v1.Payments   # grpc.health.v1, from the same registry",
        a.payments_grpc
    );
}
