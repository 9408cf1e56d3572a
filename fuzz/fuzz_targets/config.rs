//! See `lagscale_fuzz::config`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lagscale_fuzz::config(data));
