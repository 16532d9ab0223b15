//! The private NATS cluster: three routed nodes that keep an R3 stream through the loss of its
//! leader, a clean stop, restarts on the same ports and store, and that are gone after drop.

use std::time::{Duration, Instant};

use async_nats::jetstream;

fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn messages(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_stream_survives_its_leader_killed_a_node_stopped_and_both_restarted() {
    // Only where NATS is expected at all: the shared server's presence says so.
    if ms_testkit::nats().await.is_none() {
        return;
    }
    let started = Instant::now();
    let mut cluster = ms_testkit::NatsCluster::start().await.unwrap();
    let start_time = started.elapsed();
    let idle: Vec<u64> = (0..ms_testkit::NATS_CLUSTER_NODES)
        .map(|n| resident_kib(cluster.pid(n).unwrap()))
        .collect();
    eprintln!("cluster up in {start_time:?}; resident KiB per idle node: {idle:?}");
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    assert!(urls.iter().all(|u| u.starts_with("nats://127.0.0.1:")));

    let client = async_nats::connect(urls.clone()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "kept".into(),
        subjects: vec!["kept.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("kept.one", "1".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let leader = cluster.stream_leader("kept").await.unwrap();
    cluster.kill(leader).await.unwrap();
    assert!(!cluster.is_running(leader));
    let killed_port = urls[leader]
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", killed_port))
            .await
            .is_err(),
        "the killed node's port still answers"
    );
    let next = cluster.stream_leader("kept").await.unwrap();
    assert_ne!(next, leader, "the dead node cannot lead");
    // Two of three nodes are a quorum: the stream takes publishes without the dead one.
    js.publish("kept.two", "2".into())
        .await
        .unwrap()
        .await
        .unwrap();

    cluster.restart(leader).await.unwrap();
    assert!(cluster.is_running(leader));
    cluster.stop(next).await.unwrap();
    // Until the remaining two elect a leader the stream has no responder: wait for one.
    let third = cluster.stream_leader("kept").await.unwrap();
    assert_ne!(third, next, "the stopped node cannot lead");
    js.publish("kept.three", "3".into())
        .await
        .unwrap()
        .await
        .unwrap();
    cluster.restart(next).await.unwrap();

    // Every node holds the stream, each read through a connection to that node alone: the
    // restarted ones caught up.
    for node in 0..ms_testkit::NATS_CLUSTER_NODES {
        let only = async_nats::connect(cluster.node_url(node)).await.unwrap();
        let js = jetstream::new(only);
        let deadline = Instant::now() + Duration::from_secs(30);
        while messages(&js, "kept").await != 3 {
            assert!(
                Instant::now() < deadline,
                "node {node} never saw 3 messages"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let pids: Vec<u32> = (0..3).map(|n| cluster.pid(n).unwrap()).collect();
    drop(cluster);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids
        .iter()
        .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists() && resident_kib(*pid) > 0)
    {
        assert!(
            Instant::now() < deadline,
            "a node outlived the cluster handle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
