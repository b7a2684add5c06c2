//! See `wsloop::server::fuzzing::v1_command` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsloop::server::fuzzing::v1_command(data));
