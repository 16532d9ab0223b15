//! A runner process killed with SIGKILL in the middle of its batches, eight times, then
//! started again: the read model equals the fold of all events, each applied exactly once
//! (the read model and its checkpoint commit together).
//!
//! The runner runs in a child process: this test binary itself, run again with [`CHILD_ENV`]
//! set, so that [`child_runner`] (a no-op in a normal run) runs until it is killed.

#![cfg(feature = "postgres")]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Entry, Ledger, entry_event, fold, read_model};
use ms_cqrs::{EventLog, ProjectionRunner};
use sqlx::Postgres;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::Command;

const CHILD_ENV: &str = "MS_CQRS_CHILD_RUNNER";
const CHILD_TEST: &str = "child_runner";
const KEYS: i64 = 30;
const PER_KEY: i64 = 100;
/// Each child is killed once it has applied at least this many events (then a little later).
const KILL_AFTER: [u64; 8] = [200, 250, 150, 300, 200, 250, 150, 200];

fn runner_options<P: ms_cqrs::Projection<Postgres>>(
    builder: ms_cqrs::RunnerBuilder<Postgres, P>,
) -> ms_cqrs::RunnerBuilder<Postgres, P> {
    builder.segments(2).batch_size(50)
}

/// The runner process: runs only when started by the test below, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_runner() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let ledger = Ledger {
        delay: Some(Duration::from_millis(1)),
        ..Ledger::default()
    };
    let runner = runner_options(ProjectionRunner::from_log(
        pool,
        ledger,
        &EventLog::default(),
    ))
    .start()
    .await
    .unwrap();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        println!("applied {}", runner.status().applied);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
            // The parent went away (test failed): do not outlive it.
            line = stdin.next_line() => if line.ok().flatten().is_none() { std::process::exit(0) },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_batch_eight_times_each_event_is_applied_once() {
    let Some(db) = ms_testkit::postgres().await else {
        return;
    };
    let pool = db.pool().await;
    let log = EventLog::<Postgres>::default();
    log.migrate(&pool).await.unwrap();
    let mut entries = Vec::new();
    for seq in 1..=PER_KEY {
        for k in 0..KEYS {
            entries.push(Entry {
                key: format!("k{k}"),
                seq,
                amount: seq + k,
                poison: false,
            });
        }
    }
    let mut tx = pool.begin().await.unwrap();
    let events: Vec<_> = entries.iter().map(entry_event).collect();
    log.append(&mut *tx, &events).await.unwrap();
    tx.commit().await.unwrap();
    let total = i64::try_from(entries.len()).unwrap();

    for (round, kill_after) in KILL_AFTER.into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, db.url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let reached = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(n) = line.strip_prefix("applied ")
                    && n.trim().parse::<u64>().unwrap() >= kill_after
                {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap();
        assert!(
            reached,
            "round {round}: the child ended before applying {kill_after} events"
        );
        // The count is reported after commits: wait a little, so that the kill lands anywhere
        // in a batch (a batch of 50 takes about 60 ms here), not just after a commit.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(5..80))).await;
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        assert!(
            !status.success(),
            "round {round}: the child was killed, not finished"
        );
        // Nothing is applied without its checkpoint, nor the other way round: what the
        // killed process committed is a consistent prefix per key.
        let model = read_model(&pool, "ledger").await;
        assert!(
            model
                .values()
                .all(|row| row.in_order && row.applied == row.last_seq),
            "round {round}: {model:?}"
        );
    }

    let runner = runner_options(ProjectionRunner::from_log(
        pool.clone(),
        Ledger::default(),
        &log,
    ))
    .start()
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(60), runner.wait_until(total))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read_model(&pool, "ledger").await, fold(&entries));
    let effects: (i64, i64) = sqlx::query_as("SELECT count(*), max(times) FROM ledger_effects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        effects,
        (total, 1),
        "each event's transaction committed exactly once"
    );
    runner.shutdown().await.unwrap();
}
