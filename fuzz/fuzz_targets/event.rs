//! See `lagscale_fuzz::event`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lagscale_fuzz::event(data));
