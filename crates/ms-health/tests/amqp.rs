//! The AMQP connection check against the real RabbitMQ.
#![cfg(feature = "amqp")]

use ms_health::checks::AmqpCheck;
use ms_health::{Check, HealthRegistry, Status};

#[tokio::test]
async fn check_passes_while_connected() {
    let Some(amqp) = ms_testkit::amqp().await else {
        return;
    };
    let connection = amqp.connection().await;
    let registry = HealthRegistry::builder()
        .readiness("rabbitmq", AmqpCheck::new(&connection))
        .build()
        .unwrap();

    let report = registry.readiness().await;

    assert_eq!(report.status, Status::Pass, "{report:?}");
    assert_eq!(
        report.checks["rabbitmq"][0].component_type.as_deref(),
        Some("component")
    );
}

#[tokio::test]
async fn check_fails_once_the_connection_is_closed() {
    let Some(amqp) = ms_testkit::amqp().await else {
        return;
    };
    let connection = amqp.connection().await;
    let check = AmqpCheck::new(&connection);
    assert_eq!(check.check().await.status(), Status::Pass);

    connection
        .close(200, "health test done".into())
        .await
        .unwrap();

    let result = check.check().await;
    assert_eq!(result.status(), Status::Fail);
    let output = result.output().unwrap();
    assert!(output.contains("closed"), "{output}");
}
