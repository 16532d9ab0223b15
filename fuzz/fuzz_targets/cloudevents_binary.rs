//! Fuzz target `cloudevents_binary`: see [`ms_fuzz::cloudevents_binary`]. Under cargo-fuzz (`--cfg fuzzing`) libFuzzer
//! drives it; otherwise it replays the files named on the command line.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ms_fuzz::cloudevents_binary(data));

#[cfg(not(fuzzing))]
fn main() -> std::process::ExitCode {
    ms_fuzz::replay(ms_fuzz::cloudevents_binary)
}
