//! See `wsloop::redis::fuzzing::resp` for the input layout and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsloop::redis::fuzzing::resp(data));
