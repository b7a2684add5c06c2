//! See `wsloop::session::fuzzing::session` for the input layout and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsloop::session::fuzzing::session(data));
