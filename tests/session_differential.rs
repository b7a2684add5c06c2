//! Each deliberate difference between wsloop's session and tungstenite's server that
//! the `session_differential` fuzz target allows (listed in
//! `fuzz/common/session_differential.rs`), pinned: the inputs are corpus seeds in the
//! target's layout, `[limit, cut, mode, stream...]`.

#[path = "../fuzz/common/session_differential.rs"]
mod session_differential;

use session_differential::{compare, deliberate, Compared};
use wsloop::proto::ProtocolError;
use wsloop::session::fuzzing::client_frame;

/// limit byte 7: max_message 1 MiB, 4 KiB ring; cut 0: one read; mode 0: raw bytes.
fn run(limit: u8, stream: &[u8]) -> Compared {
    let mut data = vec![limit, 0, 0];
    data.extend_from_slice(stream);
    compare(&data).expect("three parameter bytes")
}

#[test]
fn wsloop_fails_a_bad_frame_before_it_is_whole_tungstenite_waits_for_it() {
    // A text frame announcing 10 bytes whose first byte is not UTF-8, cut short.
    let frame = client_frame(0x81, b"\xff23456789", false);
    let c = run(7, &frame[..frame.len() - 4]);
    assert_eq!(c.wsloop.code, Some(1007));
    assert_eq!(c.wsloop_error, Some(ProtocolError::InvalidUtf8));
    assert_eq!(c.tungstenite.code, None);
    assert!(c.tungstenite.waiting);
    assert!(deliberate(&c));
    // Whole, both fail it with 1007.
    let c = run(7, &frame);
    assert_eq!((c.wsloop.code, c.tungstenite.code), (Some(1007), Some(1007)));
}

#[test]
fn close_code_1014_is_echoed_by_wsloop_and_refused_by_tungstenite() {
    let c = run(7, &client_frame(0x88, &1014u16.to_be_bytes(), false));
    assert_eq!(c.wsloop.code, Some(1014));
    assert_eq!(c.wsloop_error, None);
    assert_eq!(c.tungstenite.code, Some(1002));
    assert!(deliberate(&c));
}

#[test]
fn a_64_bit_length_with_the_top_bit_is_1002_for_wsloop_1009_for_tungstenite() {
    let mut frame = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
    frame.extend_from_slice(&[1, 2, 3, 4]);
    let c = run(7, &frame);
    assert_eq!(c.wsloop.code, Some(1002));
    assert_eq!(c.wsloop_error, Some(ProtocolError::LengthTopBit));
    assert_eq!(c.tungstenite.code, Some(1009));
    assert!(c.tungstenite_error.as_deref().is_some_and(|e| e.contains("Capacity")), "{c:?}");
    assert!(deliberate(&c));
}

#[test]
fn a_control_frame_over_125_and_over_the_limit_is_1002_for_wsloop_1009_for_tungstenite() {
    // max_message 126 (limit byte 4), so tungstenite's frame limit is 126 too.
    let c = run(4, &client_frame(0x89, &[b'p'; 127], false));
    assert_eq!(c.wsloop.code, Some(1002));
    assert_eq!(c.wsloop_error, Some(ProtocolError::ControlTooLong));
    assert_eq!(c.tungstenite.code, Some(1009));
    assert!(deliberate(&c));
    // Within tungstenite's frame limit both call it a protocol error.
    let c = run(7, &client_frame(0x89, &[b'p'; 126], false));
    assert_eq!((c.wsloop.code, c.tungstenite.code), (Some(1002), Some(1002)));
}

#[test]
fn where_both_agree_the_check_finds_no_difference() {
    let mut stream = client_frame(0x01, b"hel", false);
    stream.extend(client_frame(0x89, b"ping", false));
    stream.extend(client_frame(0x80, b"lo", false));
    stream.extend(client_frame(0x88, &[0x03, 0xE8, b'o', b'k'], false));
    let c = run(7, &stream);
    assert_eq!(c.wsloop.messages, [(true, b"hello".to_vec())]);
    assert_eq!(c.wsloop.messages, c.tungstenite.messages);
    assert_eq!((c.wsloop.code, c.tungstenite.code), (Some(1000), Some(1000)));
    assert!(!deliberate(&c), "an agreement is not a difference");
}

#[test]
fn a_close_with_a_bad_code_and_a_bad_reason_is_1002_for_wsloop_1007_for_tungstenite() {
    let c = run(7, &client_frame(0x88, &[0xAB, 0x66, 0xFF], false));
    assert_eq!(c.wsloop.code, Some(1002));
    assert_eq!(c.wsloop_error, Some(ProtocolError::InvalidCloseCode(0xAB66)));
    assert_eq!(c.tungstenite.code, Some(1007));
    assert!(deliberate(&c));
    // One fault at a time, both agree.
    let c = run(7, &client_frame(0x88, &[0xAB, 0x66, b'k'], false));
    assert_eq!((c.wsloop.code, c.tungstenite.code), (Some(1002), Some(1002)));
    let c = run(7, &client_frame(0x88, &[0x03, 0xE8, 0xFF], false));
    assert_eq!((c.wsloop.code, c.tungstenite.code), (Some(1007), Some(1007)));
}

#[test]
fn an_unmasked_frame_over_the_frame_limit_is_1002_for_wsloop_1009_for_tungstenite() {
    // No mask bit, a 64-bit length of 2^40: wsloop refuses the missing mask, tungstenite
    // the size (limit 125 with max_message 0).
    let frame = [0x82, 0x7F, 0, 0, 1, 0, 0, 0, 0, 0];
    let c = run(0, &frame);
    assert_eq!(c.wsloop_error, Some(ProtocolError::MaskMismatch));
    assert_eq!((c.wsloop.code, c.tungstenite.code), (Some(1002), Some(1009)));
    assert!(deliberate(&c));
}

#[test]
fn a_control_frame_in_the_16_bit_length_form_is_failed_by_wsloop_and_taken_by_tungstenite() {
    // A pong of 3 bytes with its length as 126 + 0x0003, then a binary message.
    let mut stream = vec![0x8A, 0xFE, 0x00, 0x03, 0, 0, 0, 0, b'a', b'b', b'c'];
    stream.extend(client_frame(0x82, b"after", false));
    let c = run(7, &stream);
    assert_eq!(c.wsloop_error, Some(ProtocolError::ControlTooLong));
    assert_eq!(c.wsloop.code, Some(1002));
    assert!(c.wsloop.messages.is_empty());
    assert_eq!(c.tungstenite.messages, [(false, b"after".to_vec())]);
    assert_eq!(c.tungstenite.code, None);
    assert!(session_differential::longer_control_form(&c) && deliberate(&c));
    // A data frame in the same form is taken by both.
    let mut stream = vec![0x82, 0xFE, 0x00, 0x03, 0, 0, 0, 0, b'a', b'b', b'c'];
    stream.extend(client_frame(0x88, &[0x03, 0xE8], false));
    let c = run(7, &stream);
    assert_eq!(c.wsloop.messages, [(false, b"abc".to_vec())]);
    assert_eq!(c.wsloop.messages, c.tungstenite.messages);
    assert_eq!((c.wsloop.code, c.tungstenite.code), (Some(1000), Some(1000)));
}
