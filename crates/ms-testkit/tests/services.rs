//! The kit against the real services: every resource is private, usable, and gone after drop.

use std::time::Duration;

use futures_util::StreamExt as _;
use sqlx::Connection as _;

#[tokio::test]
async fn postgres_gives_each_test_its_own_database_and_drops_it() {
    let Some(first) = ms_testkit::postgres().await else {
        return;
    };
    let Some(second) = ms_testkit::postgres().await else {
        return;
    };
    assert_ne!(first.database(), second.database());

    let pool = first.pool().await;
    sqlx::query("CREATE TABLE t (id int)")
        .execute(&pool)
        .await
        .unwrap();
    // The table is private to the first database.
    let other = second.pool().await;
    let err = sqlx::query("SELECT id FROM t").fetch_all(&other).await;
    assert!(err.is_err(), "table leaked into another test's database");

    let admin_url = first.url().replace(first.database(), "postgres");
    let name = first.database().to_owned();
    drop(first); // with its pool still open: WITH (FORCE) must end those connections
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "database {name} survived its handle");
    drop(pool);
}

#[tokio::test]
async fn nats_prefix_isolates_subjects_and_drop_deletes_streams() {
    let Some(nats) = ms_testkit::nats().await else {
        return;
    };
    let client = nats.client().await;
    let subject = nats.subject("greetings");
    assert!(subject.starts_with(nats.prefix()));

    let mut sub = client.subscribe(subject.clone()).await.unwrap();
    client.publish(subject.clone(), "hi".into()).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&msg.payload[..], b"hi");

    let js = async_nats::jetstream::new(client.clone());
    let stream = nats.stream("events");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{}.events.>", nats.prefix())],
        ..Default::default()
    })
    .await
    .unwrap();
    drop(nats);
    assert!(
        js.get_stream(&stream).await.is_err(),
        "stream {stream} survived its handle"
    );
}

#[tokio::test]
async fn amqp_gives_a_private_vhost_and_removes_it_or_else_a_namespace() {
    let Some(amqp) = ms_testkit::amqp().await else {
        return;
    };
    let connection = amqp.connection().await;
    if !amqp.has_private_vhost() {
        // Without the management API (or with private vhosts off) the test gets the URL's own
        // vhost and a namespace no other test has.
        assert!(
            std::env::var(ms_testkit::AMQP_PRIVATE_VHOSTS_VAR).as_deref() != Ok("1"),
            "private vhosts required, but none was made"
        );
        assert!(connection.status().connected());
        let namespace = amqp.namespace().expect("a namespace without a vhost");
        assert_eq!(namespace, amqp.prefix());
        let other = ms_testkit::amqp().await.unwrap();
        assert_ne!(other.namespace(), Some(namespace));
        assert_eq!(other.vhost(), amqp.vhost());
        return;
    }
    assert_eq!(amqp.namespace(), None, "a private vhost needs no namespace");
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            "work".into(),
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.name().as_str(), "work");
    let url = amqp.url().to_owned();
    drop(connection);
    drop(amqp);
    let again = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await;
    assert!(again.is_err(), "vhost behind {url} survived its handle");
}

/// A private server, or `None` when its program is not installed here (a failure when
/// services are required).
fn installed<T>(started: Result<T, ms_testkit::TestkitError>) -> Option<T> {
    match started {
        Ok(server) => Some(server),
        Err(ms_testkit::TestkitError::ProgramNotFound { program })
            if !ms_testkit::require_services() =>
        {
            eprintln!("SKIPPED: {program} is not installed");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn private_nats_server_can_be_killed_and_restarted_with_its_streams() {
    let Some(mut server) = installed(ms_testkit::NatsServer::start().await) else {
        return;
    };
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "kept".into(),
        subjects: vec!["kept.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("kept.one", "1".into())
        .await
        .unwrap()
        .await
        .unwrap();

    server.kill().await.unwrap();
    assert!(!server.is_running());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
            .await
            .is_err(),
        "port still answers after kill"
    );

    server.restart().await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("kept").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn private_rabbitmq_keeps_confirmed_messages_across_a_clean_restart_and_dies_on_kill() {
    use lapin::options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;

    let Some(mut broker) = installed(ms_testkit::RabbitMqServer::start().await) else {
        return;
    };
    let connect = |url: String| async move {
        lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await
    };
    let connection = connect(broker.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare("kept".into(), durable, FieldTable::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            "".into(),
            "kept".into(),
            BasicPublishOptions::default(),
            b"survives",
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());

    broker.stop().await.unwrap();
    assert!(!broker.is_running());
    broker.restart().await.unwrap();
    let connection = connect(broker.url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get("kept".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap_or_else(|e| panic!("{e}; broker log:\n{}", broker.log_tail()))
        .expect("the confirmed persistent message survived the restart");
    assert_eq!(message.delivery.data, b"survives");

    broker.kill().await.unwrap();
    assert!(
        connect(broker.url()).await.is_err(),
        "broker still answers after kill"
    );
    broker.restart().await.unwrap();
    assert!(connect(broker.url()).await.is_ok());
}

#[tokio::test]
async fn private_postgres_keeps_committed_rows_across_kill_and_restart() {
    let Some(mut server) = installed(ms_testkit::PostgresServer::start().await) else {
        return;
    };
    let mut conn = sqlx::PgConnection::connect(&server.url()).await.unwrap();
    sqlx::query("CREATE TABLE kept (id int)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES (1), (2)")
        .execute(&mut conn)
        .await
        .unwrap();

    server.kill().await.unwrap();
    assert!(
        sqlx::query("SELECT 1").execute(&mut conn).await.is_err(),
        "connection still works after the server was killed"
    );

    server.restart().await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&server.url()).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 2);
}
