//! The runner on SQLite: exactly-once effects per message, timeouts, parking and replay.
#![cfg(feature = "sqlite")]

mod common;

use std::time::Duration;

use common::{Order, State, event};
use ms_outbox::{Inbox, Outbox};
use ms_resilience::backoff::ExponentialBackoff;
use ms_saga::{Handled, SagaRunner, SagaStore, Status, UnknownInstance};
use sqlx::{Sqlite, SqlitePool};

async fn setup(
    reply_within: Duration,
    unknown: UnknownInstance,
) -> (SqlitePool, Outbox<Sqlite>, SagaRunner<Order, Sqlite>) {
    let dir = std::env::temp_dir().join(format!("ms-saga-{}.db", uuid_like()));
    let url = format!("sqlite://{}?mode=rwc", dir.display());
    let pool = SqlitePool::connect(&url).await.expect("sqlite");
    let outbox = Outbox::<Sqlite>::default();
    outbox.migrate(&pool).await.expect("outbox");
    Inbox::<Sqlite>::default()
        .migrate(&pool)
        .await
        .expect("inbox");
    let store = SagaStore::<Sqlite>::new(pool.clone());
    store.migrate().await.expect("saga tables");
    store.migrate().await.expect("idempotent");
    let runner = SagaRunner::builder(Order { reply_within }, store, outbox.clone())
        .unknown_instance(unknown)
        .max_attempts(3)
        .backoff(ExponentialBackoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .build();
    (pool, outbox, runner)
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

async fn state(runner: &SagaRunner<Order, Sqlite>, id: &str) -> Option<(State, Status, u64)> {
    runner
        .store()
        .instance::<State>("order", id)
        .await
        .expect("read")
        .map(|i| (i.state, i.status, i.version))
}

#[tokio::test]
async fn a_redelivered_message_has_no_effect() {
    let (pool, outbox, runner) = setup(Duration::from_secs(60), UnknownInstance::Park).await;
    let placed = event("shop.order.placed", "o-1");
    let note = event("shop.order.noted", "o-1");
    runner.handle(&placed).await.expect("placed");
    assert_eq!(
        runner.handle(&placed).await.expect("again"),
        Handled::Duplicate
    );
    runner.handle(&note).await.expect("note");
    assert_eq!(
        runner.handle(&note).await.expect("again"),
        Handled::Duplicate
    );
    assert_eq!(
        state(&runner, "o-1").await,
        Some((State::Charging { notes: 1 }, Status::Active, 2))
    );
    let backlog = outbox.backlog(&pool).await.expect("backlog");
    // One charge and one timeout, not two.
    assert_eq!((backlog.pending, backlog.scheduled), (1, 1));
}

#[tokio::test]
async fn completion_cancels_the_timeout_and_later_messages_have_no_effect() {
    let (pool, outbox, runner) = setup(Duration::from_secs(60), UnknownInstance::Park).await;
    runner
        .handle(&event("shop.order.placed", "o-2"))
        .await
        .expect("placed");
    assert_eq!(outbox.backlog(&pool).await.expect("backlog").scheduled, 1);
    runner
        .handle(&event("payments.paid", "o-2"))
        .await
        .expect("paid");
    assert_eq!(outbox.backlog(&pool).await.expect("backlog").scheduled, 0);
    assert_eq!(
        runner
            .handle(&event("shop.order.noted", "o-2"))
            .await
            .expect("late"),
        Handled::NoEffect
    );
    assert_eq!(
        state(&runner, "o-2").await,
        Some((State::Paid { notes: 0 }, Status::Completed, 2))
    );
}

#[tokio::test]
async fn unknown_instances_follow_the_policy() {
    let (_, _, park) = setup(Duration::from_secs(60), UnknownInstance::Park).await;
    let h = park
        .handle(&event("payments.paid", "nobody"))
        .await
        .expect("park");
    assert!(matches!(h, Handled::Parked { .. }), "{h:?}");
    assert_eq!(
        park.store()
            .parked("order", 10)
            .await
            .expect("parked")
            .len(),
        1
    );

    let (_, _, discard) = setup(Duration::from_secs(60), UnknownInstance::Discard).await;
    let h = discard
        .handle(&event("payments.paid", "nobody"))
        .await
        .expect("discard");
    assert_eq!(h, Handled::NoEffect);
    assert!(
        discard
            .store()
            .parked("order", 10)
            .await
            .expect("parked")
            .is_empty()
    );

    let (_, _, dead) = setup(Duration::from_secs(60), UnknownInstance::DeadLetter).await;
    let h = dead
        .handle(&event("payments.paid", "nobody"))
        .await
        .expect("dead letter");
    assert!(
        matches!(h, Handled::Rejected(ref r) if r.contains("unknown instance")),
        "{h:?}"
    );
}

#[tokio::test]
async fn a_failing_handle_parks_the_instance_with_its_later_messages_until_replay() {
    let (_, _, runner) = setup(Duration::from_secs(60), UnknownInstance::Park).await;
    runner
        .handle(&event("shop.order.placed", "o-3"))
        .await
        .expect("placed");
    let h = runner
        .handle(&event("shop.order.poison", "o-3"))
        .await
        .expect("parks");
    assert_eq!(
        h,
        Handled::Parked {
            reason: "poison message".to_owned()
        }
    );
    // Later messages wait behind it, unhandled.
    let h = runner
        .handle(&event("shop.order.noted", "o-3"))
        .await
        .expect("behind");
    assert!(matches!(h, Handled::Parked { .. }), "{h:?}");
    assert_eq!(
        state(&runner, "o-3").await,
        Some((State::Charging { notes: 0 }, Status::Parked, 1))
    );
    let parked = runner.store().parked("order", 10).await.expect("parked");
    assert_eq!(parked.len(), 2);
    assert_eq!(parked[0].reason, "poison message");
    // The operator drops the poison message; the replay handles the note and un-parks.
    assert!(runner.discard("o-3").await.expect("discard"));
    assert_eq!(runner.replay("o-3").await.expect("replay"), 1);
    assert_eq!(
        state(&runner, "o-3").await,
        Some((State::Charging { notes: 1 }, Status::Active, 2))
    );
    assert!(
        runner
            .store()
            .parked("order", 10)
            .await
            .expect("parked")
            .is_empty()
    );
}

#[tokio::test]
async fn messages_parked_for_an_unknown_instance_are_handled_after_its_start_in_order() {
    let (_, _, runner) = setup(Duration::from_secs(60), UnknownInstance::Park).await;
    // Two notes and the payment overtake the order they belong to.
    for ty in ["shop.order.noted", "shop.order.noted", "payments.paid"] {
        let h = runner.handle(&event(ty, "o-4")).await.expect("parks");
        assert!(matches!(h, Handled::Parked { .. }), "{h:?}");
    }
    assert_eq!(state(&runner, "o-4").await, None);
    let h = runner
        .handle(&event("shop.order.placed", "o-4"))
        .await
        .expect("placed");
    assert!(matches!(h, Handled::Applied { version: 1, .. }), "{h:?}");
    // In arrival order: both notes counted before the payment completed it (in another
    // order the payment would complete it with fewer notes, and the rest have no effect).
    assert_eq!(
        state(&runner, "o-4").await,
        Some((State::Paid { notes: 2 }, Status::Completed, 4))
    );
    assert!(
        runner
            .store()
            .parked("order", 10)
            .await
            .expect("parked")
            .is_empty()
    );
}

#[tokio::test]
async fn a_start_with_messages_waiting_stays_parked_until_they_are_replayed() {
    let (_, _, runner) = setup(Duration::from_secs(60), UnknownInstance::Park).await;
    runner
        .handle(&event("shop.order.noted", "o-5"))
        .await
        .expect("parks");
    runner
        .handle(&event("shop.order.poison", "o-5"))
        .await
        .expect("parks");
    runner
        .handle(&event("shop.order.placed", "o-5"))
        .await
        .expect("placed");
    // The note was replayed; the poison message failed and parked the instance again, so a
    // later note waits behind it instead of overtaking it.
    assert_eq!(
        state(&runner, "o-5").await,
        Some((State::Charging { notes: 1 }, Status::Parked, 2))
    );
    let h = runner
        .handle(&event("shop.order.noted", "o-5"))
        .await
        .expect("behind");
    assert!(matches!(h, Handled::Parked { .. }), "{h:?}");
    let parked = runner.store().parked("order", 10).await.expect("parked");
    assert_eq!(parked.len(), 2);
    assert_eq!(parked[0].reason, "poison message");
    assert!(runner.discard("o-5").await.expect("discard"));
    assert_eq!(runner.replay("o-5").await.expect("replay"), 1);
    assert_eq!(
        state(&runner, "o-5").await,
        Some((State::Charging { notes: 2 }, Status::Active, 3))
    );
}
