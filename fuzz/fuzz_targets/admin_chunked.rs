//! See `wsloop::server::fuzzing::admin_chunked` for the input layout and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsloop::server::fuzzing::admin_chunked(data));
