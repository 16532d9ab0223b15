//! Fuzz target `health_query`: see [`ms_fuzz::health_query`]. Under cargo-fuzz (`--cfg fuzzing`) libFuzzer
//! drives it; otherwise it replays the files named on the command line.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ms_fuzz::health_query(data));

#[cfg(not(fuzzing))]
fn main() -> std::process::ExitCode {
    ms_fuzz::replay(ms_fuzz::health_query)
}
