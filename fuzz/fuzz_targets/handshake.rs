//! See `wsloop::proto::fuzzing::handshake` for the input layout and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsloop::proto::fuzzing::handshake(data));
