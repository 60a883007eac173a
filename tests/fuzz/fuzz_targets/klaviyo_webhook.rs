//! Fuzz target `klaviyo_webhook`: the body is [`harness::fuzzing::klaviyo_webhook`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::fuzzing::klaviyo_webhook(data));
