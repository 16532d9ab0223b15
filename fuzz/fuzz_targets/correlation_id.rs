//! Fuzz target `correlation_id`: see [`ms_fuzz::correlation_id`]. Under cargo-fuzz (`--cfg fuzzing`) libFuzzer
//! drives it; otherwise it replays the files named on the command line.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ms_fuzz::correlation_id(data));

#[cfg(not(fuzzing))]
fn main() -> std::process::ExitCode {
    ms_fuzz::replay(ms_fuzz::correlation_id)
}
