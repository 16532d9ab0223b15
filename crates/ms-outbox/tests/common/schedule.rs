//! Scheduled messages, the same scenarios on each database: published when due and never
//! before (checked against the due time the envelope carries), cancelled ones never, cancel
//! and reschedule undone by a rollback, and the order rule.

// Each test binary uses its own part of it.
#![allow(dead_code)]

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use ms_bus::{CommandSender, Deliveries, Envelope, EventPublisher, Subscriber, Subscription};
use ms_outbox::{
    Backend, Cancellation, DELIVER_AT_EXTENSION, Outbox, OutboxMessage, Relay, Rescheduling,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The topic of the scheduling tests.
pub(crate) const SCHEDULED_TOPIC: &str = "test.scheduled";
/// How long a test waits for something due.
const WAIT: Duration = Duration::from_secs(15);

/// A message of `key` with envelope id `id`.
pub(crate) fn message(id: &str, key: &str) -> OutboxMessage {
    let envelope = Envelope::builder("test.scheduled", "/test")
        .id(id)
        .subject(key)
        .build()
        .expect("valid envelope");
    OutboxMessage::event(SCHEDULED_TOPIC, envelope)
}

/// The due time an envelope carries, if scheduled.
pub(crate) fn due_of(envelope: &Envelope) -> Option<OffsetDateTime> {
    envelope
        .extension(DELIVER_AT_EXTENSION)
        .map(|text| OffsetDateTime::parse(text, &Rfc3339).expect("an RFC 3339 due time"))
}

/// The next envelope within `limit`, acknowledged; asserts it did not come before its due
/// time. `None` when nothing came.
pub(crate) async fn next_checked(deliveries: &mut Deliveries, limit: Duration) -> Option<Envelope> {
    let delivery = tokio::time::timeout(limit, deliveries.next())
        .await
        .ok()??;
    let received = OffsetDateTime::now_utc();
    let (envelope, _info, acker) = delivery.expect("a delivery").into_parts();
    acker.ack().await.expect("ack");
    let envelope = envelope.expect("a decodable envelope");
    if let Some(due) = due_of(&envelope) {
        assert!(
            received >= due,
            "{} received at {received}, before its due time {due}",
            envelope.id()
        );
    }
    Some(envelope)
}

async fn subscribe<B: Subscriber>(bus: &B, group: &str) -> Deliveries {
    bus.subscribe(&Subscription::events(SCHEDULED_TOPIC, group).unwrap())
        .await
        .unwrap()
}

fn in_ms(ms: u64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::from_millis(ms)
}

/// What operators see of the scheduled messages of [`due_cancel_reschedule`]: earliest first,
/// all or by key.
async fn operators_see_them_earliest_first<DB: Backend>(
    outbox: &Outbox<DB>,
    pool: &sqlx::Pool<DB>,
) {
    let listed = outbox.scheduled(pool, None, 10).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["moved", "later-2", "cancelled", "kept", "later-1"]);
    let of_k1 = outbox.scheduled(pool, Some("k1"), 10).await.unwrap();
    assert_eq!(of_k1.len(), 1);
    assert_eq!(
        (of_k1[0].id.as_str(), of_k1[0].destination.as_str()),
        ("later-1", SCHEDULED_TOPIC)
    );
}

/// Published when due, not before; cancelled never; moved at the new time; a rollback of a
/// cancel and a reschedule changes nothing.
pub(crate) async fn due_cancel_reschedule<DB, B>(pool: &sqlx::Pool<DB>, bus: B)
where
    DB: Backend,
    B: EventPublisher + CommandSender + Subscriber + Clone + 'static,
{
    let outbox = Outbox::<DB>::default();
    outbox.migrate(pool).await.unwrap();
    let mut deliveries = subscribe(&bus, "due").await;
    let relay = Relay::builder(&outbox, pool, bus.clone()).build().spawn();

    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue_all(
            &mut *tx,
            [
                message("later-1", "k1").deliver_at(in_ms(2_000)),
                message("now-1", "k1"),
                message("later-2", "k2").deliver_after(Duration::from_millis(1_200)),
                message("cancelled", "k3").deliver_at(in_ms(1_500)),
                message("moved", "k4").deliver_at(in_ms(800)),
                message("kept", "k5").deliver_at(in_ms(1_700)),
            ],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let backlog = outbox.backlog(pool).await.unwrap();
    assert_eq!(backlog.scheduled, 5, "{backlog:?}");
    assert!(backlog.next_due.is_some());
    operators_see_them_earliest_first(&outbox, pool).await;

    // Undone by a rollback: "kept" still comes at its time, "moved" is not moved yet.
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        outbox.cancel(&mut *tx, "kept").await.unwrap(),
        Cancellation::Cancelled
    );
    assert_eq!(
        outbox
            .reschedule(&mut *tx, "moved", in_ms(60_000))
            .await
            .unwrap(),
        Rescheduling::Moved
    );
    tx.rollback().await.unwrap();
    assert_eq!(outbox.backlog(pool).await.unwrap().scheduled, 5);

    // Committed: "cancelled" never comes, "moved" comes at its new time. Unknown ids are an
    // answer, and the transaction goes on to commit.
    let moved_to = in_ms(2_500);
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        outbox.cancel(&mut *tx, "cancelled").await.unwrap(),
        Cancellation::Cancelled
    );
    assert_eq!(
        outbox.cancel(&mut *tx, "no-such-id").await.unwrap(),
        Cancellation::NotScheduled
    );
    assert_eq!(
        outbox
            .reschedule(&mut *tx, "moved", moved_to)
            .await
            .unwrap(),
        Rescheduling::Moved
    );
    assert_eq!(
        outbox
            .reschedule(&mut *tx, "no-such-id", moved_to)
            .await
            .unwrap(),
        Rescheduling::NotScheduled
    );
    tx.commit().await.unwrap();

    let mut order = Vec::new();
    let expected: HashSet<&str> = ["now-1", "later-1", "later-2", "moved", "kept"].into();
    while order.len() < expected.len() {
        let envelope = next_checked(&mut deliveries, WAIT)
            .await
            .unwrap_or_else(|| panic!("only {order:?} arrived"));
        if envelope.id() == "moved" {
            assert!(
                due_of(&envelope).unwrap() >= moved_to - Duration::from_millis(1),
                "the envelope carries the new due time"
            );
        }
        order.push(envelope.id().to_owned());
    }
    assert_eq!(order[0], "now-1", "the immediate message is not held back");
    assert_eq!(
        order.iter().map(String::as_str).collect::<HashSet<_>>(),
        expected,
        "{order:?}"
    );
    // Nothing more: not the cancelled one, not a second copy.
    assert!(
        next_checked(&mut deliveries, Duration::from_millis(1_500))
            .await
            .is_none()
    );
    let status = relay.status();
    assert_eq!(status.scheduled_due, 4, "{status:?}");
    let backlog = outbox.backlog(pool).await.unwrap();
    assert_eq!((backlog.scheduled, backlog.pending), (0, 0), "{backlog:?}");
    assert!(backlog.next_due.is_none());
    relay.shutdown().await.unwrap();
}

/// The order rule: a scheduled message joins its key's order when it becomes due, and holds
/// back no immediate message of its key.
pub(crate) async fn joins_its_key_at_its_due_time<DB, B>(pool: &sqlx::Pool<DB>, bus: B)
where
    DB: Backend,
    B: EventPublisher + CommandSender + Subscriber + Clone + 'static,
{
    let outbox = Outbox::<DB>::default();
    outbox.migrate(pool).await.unwrap();
    let mut deliveries = subscribe(&bus, "order").await;

    // No relay yet: "due" becomes due while "before" (enqueued after it, before its due time)
    // waits. Once a relay runs, "before" must come first: "due" joined the key when due.
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut *tx, message("due", "k").deliver_at(in_ms(300)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut *tx, message("before", "k"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let relay = Relay::builder(&outbox, pool, bus.clone()).build().spawn();
    let first = next_checked(&mut deliveries, WAIT)
        .await
        .expect("published");
    let second = next_checked(&mut deliveries, WAIT)
        .await
        .expect("published");
    assert_eq!(
        [first.id(), second.id()],
        ["before", "due"],
        "a message enqueued before the due time goes first"
    );

    // A message of the key due much later holds back nothing enqueued after it.
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut *tx, message("far", "k").deliver_at(in_ms(3_600_000)))
        .await
        .unwrap();
    outbox
        .enqueue(&mut *tx, message("after", "k"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let next = next_checked(&mut deliveries, WAIT)
        .await
        .expect("not held back");
    assert_eq!(next.id(), "after");
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(outbox.cancel_key(&mut *tx, "k").await.unwrap(), 1);
    tx.commit().await.unwrap();
    relay.shutdown().await.unwrap();
}

/// A recurring schedule: one message per tick, each tick's id and due time its own, and after
/// a relay's downtime every missed tick ([`MissedTicks::FireAll`]), none twice; registering
/// again changes nothing.
pub(crate) async fn recurring_ticks_fire_once_each<DB, B>(pool: &sqlx::Pool<DB>, bus: B)
where
    DB: Backend,
    B: EventPublisher + CommandSender + Subscriber + Clone + 'static,
{
    use ms_outbox::{MissedTicks, Recurring};

    const EVERY: Duration = Duration::from_millis(300);
    let outbox = Outbox::<DB>::default();
    outbox.migrate(pool).await.unwrap();
    let mut deliveries = subscribe(&bus, "recurring").await;
    let schedule = Recurring::every("beat", EVERY, message("template", "beat"))
        .unwrap()
        .missed(MissedTicks::FireAll);
    outbox.register(pool, &schedule).await.unwrap();
    assert_eq!(outbox.backlog(pool).await.unwrap().recurring, 1);

    let mut ticks = Vec::new();
    let mut record = |envelope: Envelope| {
        let due = due_of(&envelope).expect("a tick carries its due time");
        assert_eq!(
            envelope.id(),
            format!("beat@{}", due.format(&Rfc3339).unwrap())
        );
        ticks.push(due);
    };
    let relay = Relay::builder(&outbox, pool, bus.clone()).build().spawn();
    for _ in 0..3 {
        record(next_checked(&mut deliveries, WAIT).await.expect("a tick"));
    }
    relay.shutdown().await.unwrap();
    // Down for about four ticks; registering again (a restart) keeps the schedule's place.
    tokio::time::sleep(EVERY * 4).await;
    outbox.register(pool, &schedule).await.unwrap();
    let relay = Relay::builder(&outbox, pool, bus.clone()).build().spawn();
    for _ in 0..6 {
        record(next_checked(&mut deliveries, WAIT).await.expect("a tick"));
    }
    relay.shutdown().await.unwrap();

    // Consecutive ticks, one interval apart: none skipped, none twice (a tick in flight at the
    // shutdown may come again after the restart, as the same message; drop such copies).
    ticks.dedup();
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], EVERY, "{ticks:?}");
    }
    let mut tx = pool.begin().await.unwrap();
    assert!(outbox.unregister(&mut *tx, "beat").await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(outbox.backlog(pool).await.unwrap().recurring, 0);
}

/// A cron schedule every second, in a time zone: one message per second, on whole seconds,
/// each with its tick's id; registering again (same expression) changes nothing.
#[cfg(feature = "cron")]
pub(crate) async fn cron_ticks_every_second<DB, B>(pool: &sqlx::Pool<DB>, bus: B)
where
    DB: Backend,
    B: EventPublisher + CommandSender + Subscriber + Clone + 'static,
{
    use ms_outbox::Recurring;

    let outbox = Outbox::<DB>::default();
    outbox.migrate(pool).await.unwrap();
    let mut deliveries = subscribe(&bus, "cron").await;
    let schedule = Recurring::cron(
        "cron-beat",
        "* * * * * *",
        "Europe/Paris",
        message("template", "cron-beat"),
    )
    .unwrap();
    outbox.register(pool, &schedule).await.unwrap();
    let relay = Relay::builder(&outbox, pool, bus.clone()).build().spawn();
    let mut ticks = Vec::new();
    for n in 0..4 {
        if n == 2 {
            outbox.register(pool, &schedule).await.unwrap();
        }
        let envelope = next_checked(&mut deliveries, WAIT).await.expect("a tick");
        let due = due_of(&envelope).expect("a tick carries its due time");
        assert_eq!(
            envelope.id(),
            format!("cron-beat@{}", due.format(&Rfc3339).unwrap())
        );
        assert_eq!((due.nanosecond(), due.offset()), (0, time::UtcOffset::UTC));
        ticks.push(due);
    }
    relay.shutdown().await.unwrap();
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], Duration::from_secs(1), "{ticks:?}");
    }
}
