//! See `wsloop::redis::fuzzing::cluster_slots` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsloop::redis::fuzzing::cluster_slots(data));
