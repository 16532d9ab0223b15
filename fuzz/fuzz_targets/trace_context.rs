//! Fuzz target `trace_context`: see [`ms_fuzz::trace_context`]. Under cargo-fuzz (`--cfg fuzzing`) libFuzzer
//! drives it; otherwise it replays the files named on the command line.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ms_fuzz::trace_context(data));

#[cfg(not(fuzzing))]
fn main() -> std::process::ExitCode {
    ms_fuzz::replay(ms_fuzz::trace_context)
}
