//! See `wsloop::auth::fuzzing::jwt` for the input layout and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsloop::auth::fuzzing::jwt(data));
