//! libFuzzer entry point; see `scripts/fuzz` and [`hourglass::fuzzing`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hourglass::fuzzing::check(data));
