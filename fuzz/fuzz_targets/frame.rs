//! See `wsloop::proto::fuzzing::frame` for the input layout and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsloop::proto::fuzzing::frame(data));
