//! See `lagscale_fuzz::metric_path`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lagscale_fuzz::metric_path(data));
