//! wsloop's session against tungstenite's server on the same client bytes: see
//! `fuzz/common/session_differential.rs` for the input layout, what is compared and the
//! deliberate differences.
#![no_main]

#[path = "../common/session_differential.rs"]
mod session_differential;

libfuzzer_sys::fuzz_target!(|data: &[u8]| session_differential::check(data));
