//! See `lagscale_fuzz::selector`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lagscale_fuzz::selector(data));
