//! The bus's health checks against the real thing: JetStream answering (then killed), and a
//! consumer running (then stopped).
#![cfg(all(feature = "health", feature = "nats", feature = "memory"))]

use std::time::Duration;

use ms_bus::Subscription;
use ms_bus::consumer::{Consumer, Message};
use ms_bus::memory::MemoryBus;
use ms_bus::nats::NatsBus;
use ms_health::{Check, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_check_passes_then_fails_when_the_server_is_killed() {
    // Only where NATS is expected at all.
    let Some(_shared) = ms_testkit::nats().await else {
        return;
    };
    let mut server = ms_testkit::NatsServer::start().await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus = NatsBus::builder(client).build();
    let check = bus.check();
    let result = check.check().await;
    assert_eq!(result.status(), Status::Pass, "{result:?}");

    server.kill().await.unwrap();
    // The JetStream request times out or fails while the server is gone; bound the wait as
    // a registry's timeout would.
    let result = tokio::time::timeout(Duration::from_secs(30), check.check())
        .await
        .expect("the check gives up within async-nats's request timeout");
    assert_eq!(result.status(), Status::Fail, "{result:?}");

    server.restart().await.unwrap();
    let mut status = Status::Fail;
    for _ in 0..300 {
        status = check.check().await.status();
        if status == Status::Pass {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, Status::Pass, "JetStream did not come back");
}

#[tokio::test]
async fn consumer_check_fails_once_the_consumer_stops() {
    let bus = MemoryBus::new();
    let handler = tower::service_fn(|_m: Message| async { Ok::<_, std::convert::Infallible>(()) });
    let consumer = Consumer::new(Subscription::commands("jobs").unwrap())
        .serve(&bus, handler)
        .await
        .unwrap();
    let check = consumer.check();
    assert_eq!(check.check().await.status(), Status::Pass);
    consumer.abort();
    for _ in 0..1000 {
        if check.check().await.status() == Status::Fail {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the check still passes after the consumer was aborted");
}
