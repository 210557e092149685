//! `cargo fuzz run http_bodies`: libFuzzer drives [`livevote_fuzz::http_bodies`], whose properties are the
//! assertions.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| livevote_fuzz::http_bodies(data));
