//! `cargo fuzz run channel_name`: libFuzzer drives [`livevote_fuzz::channel_name`], whose properties are the
//! assertions.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| livevote_fuzz::channel_name(data));
