//! Fuzz target `omneo_webhook`: the body is [`harness::fuzzing::omneo_webhook`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::fuzzing::omneo_webhook(data));
