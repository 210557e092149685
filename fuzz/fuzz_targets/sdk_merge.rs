//! `cargo fuzz run sdk_merge`: libFuzzer drives [`livevote_fuzz::sdk_merge`], the SDK's merge
//! rules under fuzzed frames and reconnects; its properties are the assertions.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| livevote_fuzz::sdk_merge(data));
