//! Fuzz target `omneo_event_context`: the body is [`harness::fuzzing::omneo_event_context`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::fuzzing::omneo_event_context(data));
