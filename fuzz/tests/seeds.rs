//! Every fuzz target over its seeds in `seeds/<target>/`, so that the targets and the inputs
//! that once mattered (the retry hints that hung and panicked a client among them) run with
//! `cargo test --workspace`, without libFuzzer.

use std::path::Path;

fn run(target: &str, function: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    for seed in seeds {
        let data = std::fs::read(&seed).unwrap();
        let outcome = std::panic::catch_unwind(|| function(&data));
        assert!(outcome.is_ok(), "{} fails on {}", target, seed.display());
    }
}

#[test]
fn cloudevents_structured_seeds() {
    run("cloudevents_structured", ms_fuzz::cloudevents_structured);
}

#[test]
fn cloudevents_binary_seeds() {
    run("cloudevents_binary", ms_fuzz::cloudevents_binary);
}

#[test]
fn traceparent_seeds() {
    run("traceparent", ms_fuzz::traceparent);
}

#[test]
fn trace_context_seeds() {
    run("trace_context", ms_fuzz::trace_context);
}

#[test]
fn correlation_id_seeds() {
    run("correlation_id", ms_fuzz::correlation_id);
}

#[test]
fn health_query_seeds() {
    run("health_query", ms_fuzz::health_query);
}

#[test]
fn retry_hints_seeds() {
    run("retry_hints", ms_fuzz::retry_hints);
}
