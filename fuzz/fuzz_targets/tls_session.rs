//! See `wsloop::tls::fuzzing::tls_session` for the input layout and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsloop::tls::fuzzing::tls_session(data));
