//! Fuzz target `exclude_logic`: the body is [`harness::fuzzing::exclude_logic`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::fuzzing::exclude_logic(data));
