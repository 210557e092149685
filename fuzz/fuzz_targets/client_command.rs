//! `cargo fuzz run client_command`: libFuzzer drives [`livevote_fuzz::client_command`], whose properties are the
//! assertions.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| livevote_fuzz::client_command(data));
