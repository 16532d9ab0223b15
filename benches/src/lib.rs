//! Helpers the criterion benches share (the benches themselves live in `benches/`): which
//! self-reporting runs a command line selects, and the arithmetic of paired rounds.

use std::time::Duration;

/// Whether a run that is not a criterion bench (it prints its figures) is selected: with no
/// filter on the command line, or a filter one of whose `|`-separated parts `name` contains
/// (criterion's filters are regular expressions; alternatives and plain words are what this
/// understands).
pub fn selected(name: &str) -> bool {
    // Criterion's options that take a value: that value is not a filter.
    const WITH_VALUE: &[&str] = &[
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--profile-time",
        "--output-format",
        "--color",
        "--plotting-backend",
        "--format",
    ];
    let mut args = std::env::args().skip(1);
    let mut filters = Vec::new();
    while let Some(arg) = args.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            filters.push(arg);
        }
    }
    filters.is_empty()
        || filters
            .iter()
            .any(|f| f.split('|').any(|part| name.contains(part)))
}

/// The median (the upper one of an even count).
///
/// # Panics
///
/// On an empty list: a bench always has rounds.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Events per second.
pub fn rate(events: u64, took: Duration) -> f64 {
    // Event counts here are far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    let events = events as f64;
    events / took.as_secs_f64()
}
