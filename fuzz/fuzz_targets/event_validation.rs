//! `cargo fuzz run event_validation`: libFuzzer drives [`livevote_fuzz::event_validation`], whose properties are the
//! assertions.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| livevote_fuzz::event_validation(data));
