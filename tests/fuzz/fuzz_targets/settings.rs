//! Fuzz target `settings`: the body is [`harness::fuzzing::settings`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::fuzzing::settings(data));
