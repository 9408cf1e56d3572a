//! See `lagscale_fuzz::quantity`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lagscale_fuzz::quantity(data));
