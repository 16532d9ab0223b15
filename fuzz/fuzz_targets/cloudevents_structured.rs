//! Fuzz target `cloudevents_structured`: see [`ms_fuzz::cloudevents_structured`]. Under cargo-fuzz (`--cfg fuzzing`) libFuzzer
//! drives it; otherwise it replays the files named on the command line.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ms_fuzz::cloudevents_structured(data));

#[cfg(not(fuzzing))]
fn main() -> std::process::ExitCode {
    ms_fuzz::replay(ms_fuzz::cloudevents_structured)
}
