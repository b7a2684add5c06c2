//! The `session_differential` check, shared by the fuzz target
//! (`fuzz/fuzz_targets/session_differential.rs`) and `cargo test` (`tests/fuzz_corpus.rs`
//! replays the corpus, `tests/session_differential.rs` pins each deliberate
//! difference); it needs tungstenite, a dev-dependency, so it cannot live in the crate.
//!
//! The same client bytes go to wsloop's session (accepted, no application replies:
//! `wsloop::session::fuzzing::run_client_stream`) and to tungstenite 0.24's server side
//! (`WebSocket::from_raw_socket(_, Role::Server, _)` over an in-memory stream), each
//! read in the same cut sizes, with the same limits: `max_message` for wsloop, and
//! `max_message_size` = `max_frame_size` = `max_message` for tungstenite (whose
//! per-frame limit must match, or it buffers a whole oversize frame before refusing
//! it). Compared: the data messages delivered, in order, and the close code: the one
//! in the close frame each sends, where tungstenite sends none (it returns an error
//! and leaves the close to the application) the code RFC 6455 gives its error
//! (protocol 1002, UTF-8 1007, capacity 1009).
//!
//! Input: `[limit byte, cut byte, mode byte, stream...]`. `max_message` is
//! `MAX_MESSAGE[limit & 7]`; bit 3 of the limit byte picks a 512-byte read ring (else
//! 4 KiB). The cut byte gives read sizes: 0 everything at once, else cycles of
//! `1 + cut % 64`, `cut / 4 + 1` bytes. Mode bit 0 set: the stream is structured,
//! `[flags, len, payload...]` per frame, masked by the driver (flags as on the wire:
//! FIN, RSV, opcode); clear: raw bytes.
//!
//! Deliberate differences (each pinned by a test in `tests/session_differential.rs`),
//! judged by [`deliberate`]:
//! 1. wsloop checks a frame's header and its UTF-8 as the bytes arrive; tungstenite
//!    reads a whole frame first. When the input stops inside such a frame, wsloop has
//!    failed the connection and tungstenite is still waiting: only the messages are
//!    compared. (Never the other way round: tungstenite is never earlier.)
//! 2. Close code 1014 (Bad Gateway, IANA-registered since RFC 6455): wsloop takes and
//!    echoes it; tungstenite counts it reserved and answers 1002.
//! 3. A frame whose header announces more than tungstenite's frame limit and that is
//!    malformed besides (a 64-bit length with the top bit set, which RFC 6455 5.2
//!    forbids; a control frame over 125 bytes; no mask; RSV bits; a reserved opcode):
//!    wsloop fails with the fault (1002), tungstenite with the size, which it checks
//!    before anything else (1009).
//! 4. A close frame with both an invalid code and a reason that is not UTF-8: wsloop
//!    checks the code first (1002), tungstenite the reason (1007). Both are failures
//!    RFC 6455 allows; only the order of the checks differs.
//! 5. A control frame whose length is in the 16- or 64-bit form (so not the shortest,
//!    which RFC 6455 5.2 requires): wsloop fails it with 1002 (reported as a control
//!    frame over 125 bytes: its 7-bit length field says 126 or 127), tungstenite reads
//!    the real length and goes on. wsloop's messages are then a prefix of tungstenite's.
//! 6. More than `max_fragments` fragments (wsloop's own limit, 1009): tungstenite has no
//!    such limit. The corpus and the target use the default of 100,000, out of reach of
//!    a 4 KiB input, so it never shows here; a unit test covers it in wsloop.

// Included by three crates (the fuzz target and two test crates), each using part of it.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use tungstenite::protocol::{Message, Role, WebSocket, WebSocketConfig};
use wsloop::session::fuzzing::{client_frame, run_client_stream};

/// Limits `max_message` is picked from.
pub const MAX_MESSAGE: [usize; 8] = [0, 1, 16, 125, 126, 300, 1000, 1 << 20];

/// What one side made of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    /// Data messages delivered: (text, payload).
    pub messages: Vec<(bool, Vec<u8>)>,
    /// The close code sent (1005: an empty close frame) or, for tungstenite's errors,
    /// implied; `None`: no close.
    pub code: Option<u16>,
    /// Input ran out with this side still waiting for the rest of a frame.
    pub waiting: bool,
}

/// Both sides' outcomes for one input.
#[derive(Clone, Debug)]
pub struct Compared {
    /// wsloop's session.
    pub wsloop: Side,
    /// tungstenite's server.
    pub tungstenite: Side,
    /// tungstenite's error, if it returned one.
    pub tungstenite_error: Option<String>,
    /// wsloop's protocol error, if it failed the connection.
    pub wsloop_error: Option<wsloop::proto::ProtocolError>,
}

/// The client's bytes for an input after the three parameter bytes.
pub fn client_stream(mode: u8, rest: &[u8]) -> Vec<u8> {
    if mode & 1 == 0 {
        return rest.to_vec();
    }
    let mut out = Vec::new();
    let mut r = rest;
    while let [flags, len, ref tail @ ..] = *r {
        let n = (len as usize).min(tail.len());
        out.extend(client_frame(flags, &tail[..n], false));
        r = &tail[n..];
    }
    out
}

/// Read sizes for a cut byte (0: as much as fits).
pub fn cuts(cut: u8) -> Vec<u8> {
    if cut == 0 {
        vec![0]
    } else {
        vec![1 + cut % 64, cut / 4 + 1]
    }
}

/// An in-memory socket: reads the client's bytes in the given sizes, then would block;
/// keeps what is written.
struct Mem {
    input: Vec<u8>,
    pos: usize,
    cuts: Vec<u8>,
    turn: usize,
    output: Vec<u8>,
}

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.input.len() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let cut = self.cuts[self.turn % self.cuts.len()] as usize;
        self.turn += 1;
        let cut = if cut == 0 { usize::MAX } else { cut };
        let n = buf.len().min(cut).min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// tungstenite's server over `stream`.
pub fn tungstenite_side(stream: &[u8], cuts: &[u8], max_message: usize) -> (Side, Option<String>) {
    let cfg = WebSocketConfig {
        max_message_size: Some(max_message),
        // Control frames may carry 125 bytes whatever max_message says, as in wsloop.
        max_frame_size: Some(max_message.max(125)),
        ..WebSocketConfig::default()
    };
    let mem = Mem { input: stream.to_vec(), pos: 0, cuts: cuts.to_vec(), turn: 0, output: Vec::new() };
    let mut ws = WebSocket::from_raw_socket(mem, Role::Server, Some(cfg));
    let mut side = Side { messages: Vec::new(), code: None, waiting: false };
    let mut error = None;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => side.messages.push((true, t.into_bytes())),
            Ok(Message::Binary(b)) => side.messages.push((false, b)),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Ok(Message::Close(_)) => break,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                side.waiting = true;
                break;
            }
            Err(e) => {
                side.code = Some(match e {
                    tungstenite::Error::Utf8 => 1007,
                    tungstenite::Error::Capacity(_) => 1009,
                    _ => 1002,
                });
                error = Some(format!("{e:?}"));
                break;
            }
        }
    }
    let _ = ws.flush();
    if let Some(code) = close_sent(&ws.get_ref().output) {
        side.code = Some(code);
    }
    (side, error)
}

/// The code of the first close frame in a server's output (1005 if empty).
fn close_sent(mut b: &[u8]) -> Option<u16> {
    while b.len() >= 2 {
        let (len, hl): (usize, usize) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return None,
            l => (l as usize, 2),
        };
        let end = hl.checked_add(len)?;
        if b.len() < end {
            return None;
        }
        if b[0] & 0x0F == 0x8 {
            let p = &b[hl..end];
            return Some(if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 });
        }
        b = &b[end..];
    }
    None
}

/// Runs both sides on an input (layout in the module doc).
pub fn compare(data: &[u8]) -> Option<Compared> {
    let [limit, cut, mode, ref rest @ ..] = *data else {
        return None;
    };
    let max_message = MAX_MESSAGE[limit as usize & 7];
    let ring = if limit & 8 != 0 { 512 } else { 4096 };
    let stream = client_stream(mode, rest);
    let cuts = cuts(cut);
    let ours = run_client_stream(&stream, &cuts, max_message, ring);
    let (theirs, terr) = tungstenite_side(&stream, &cuts, max_message);
    Some(Compared {
        wsloop: Side { messages: ours.messages, code: ours.close_sent, waiting: ours.waiting },
        tungstenite: theirs,
        tungstenite_error: terr,
        wsloop_error: ours.error,
    })
}

/// Difference 5: wsloop failed a control frame for its length form, which tungstenite
/// took (or had not finished reading).
pub fn longer_control_form(c: &Compared) -> bool {
    c.wsloop_error == Some(wsloop::proto::ProtocolError::ControlTooLong)
        && !c.tungstenite_error.as_deref().is_some_and(|e| e.contains("ControlFrameTooBig"))
}

/// Whether the two close codes differ in one of the documented ways (module doc).
pub fn deliberate(c: &Compared) -> bool {
    use wsloop::proto::ProtocolError::*;
    let (ours, theirs) = (c.wsloop.code, c.tungstenite.code);
    if longer_control_form(c) {
        return true;
    }
    match (ours, theirs) {
        // 1: wsloop fails inside a frame tungstenite is still reading.
        (Some(_), None) => c.tungstenite.waiting && c.wsloop_error.is_some(),
        // 2: 1014 echoed by wsloop, refused by tungstenite.
        (Some(1014), Some(1002)) => c.wsloop_error.is_none(),
        // 3: what wsloop calls malformed, tungstenite calls too big.
        (Some(1002), Some(1009)) => {
            c.wsloop_error.is_some_and(|e| e.close_code().0 == 1002)
                && c.tungstenite_error.as_deref().is_some_and(|e| e.starts_with("Capacity"))
        }
        // 4: a close frame wrong twice over, reported by the check each makes first.
        (Some(1002), Some(1007)) => {
            matches!(c.wsloop_error, Some(InvalidCloseCode(_))) && c.tungstenite_error.as_deref() == Some("Utf8")
        }
        _ => false,
    }
}

/// The check: the same messages in the same order, and the same close code unless the
/// difference is a deliberate one.
pub fn check(data: &[u8]) {
    let Some(c) = compare(data) else {
        return;
    };
    if longer_control_form(&c) {
        assert!(c.tungstenite.messages.starts_with(&c.wsloop.messages), "messages differ: {c:?}");
        return;
    }
    assert_eq!(c.wsloop.messages, c.tungstenite.messages, "messages differ: {c:?}");
    if c.wsloop.code != c.tungstenite.code {
        assert!(deliberate(&c), "close codes differ: {c:?}");
    }
}
