//! Message assembly: turns a byte stream into messages and control frames.
//!
//! The [`Decoder`] is fed the unconsumed bytes of a connection's read buffer and
//! returns how many it consumed plus at most one [`Event`]. Bytes it did not consume must
//! be presented again, at the front of the next call, with whatever arrived since.
//!
//! ```text
//!            header parsed,               header parsed,
//!            frame fits inline_limit      frame larger than inline_limit
//!   +------+ ---------------------> +--------+        +-----------+
//!   | Idle |                        | Inline |        | Streaming |
//!   +------+ <--------------------- +--------+        +-----------+
//!      ^  ^     frame complete                              |
//!      |  +---------------------------------------------------+
//!                       last payload byte consumed
//! ```
//!
//! Inline frames are unmasked in place and a single-frame message is returned as a slice
//! of the caller's buffer: no copy. Fragmented messages and frames too large for the
//! buffer are copied once into the decoder's assembly buffer. Text is validated as bytes
//! arrive, so invalid UTF-8 fails at the first bad byte. The size limit is checked from
//! the frame header, before any payload is buffered.

use super::close::CloseCode;
use super::error::ProtocolError;
use super::frame::{FrameHeader, OpCode, Parsed, Role, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;

/// Limits and role for a [`Decoder`]; shared by all connections of a server.
#[derive(Clone, Copy, Debug)]
pub struct DecoderConfig {
    /// Whose frames we parse (a server parses masked client frames).
    pub role: Role,
    /// Largest message, summed over its fragments (default 16 MiB).
    pub max_message: usize,
    /// Most fragments in one message (default 100,000); size limits alone do not stop a
    /// peer from sending millions of empty fragments.
    pub max_fragments: u32,
    /// Frames whose header and payload fit in this many bytes are waited for and handed
    /// out in place; larger ones are streamed into the assembly buffer. Set it to the
    /// read buffer's capacity. At least 256.
    pub inline_limit: usize,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig { role: Role::Server, max_message: 16 << 20, max_fragments: 100_000, inline_limit: 64 << 10 }
    }
}

/// One thing the peer said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping with its payload (answer with a pong carrying the same bytes).
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A close frame: code and reason, or `None` for an empty close frame.
    Close(Option<(CloseCode, &'a str)>),
    /// A complete permessage-deflate message (RSV1 on its first frame, only once
    /// [`Decoder::set_deflate`] allowed it), still compressed: the caller inflates it,
    /// checking the size limit as it goes and, for text, UTF-8.
    ///
    /// A message that arrives in parts (fragments, or a long frame across reads) comes
    /// as several events, `end` on the last: the caller inflates each part at once, so
    /// bad UTF-8 fails the connection as early as in a plain text message. (One variant
    /// for both, so the plain path's matches keep their shape.)
    Deflated {
        /// A text message (else binary).
        text: bool,
        /// The message is complete with this part.
        end: bool,
        /// The compressed bytes since the last part (all of them for a message that
        /// came whole), without the stripped tail.
        payload: &'a [u8],
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
    /// Compressed (RFC 7692): validated only after inflation.
    DeflatedText,
    DeflatedBinary,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Idle,
    /// Header not consumed; `done` payload bytes after it are unmasked and validated.
    Inline {
        hdr: FrameHeader,
        hlen: u8,
        done: u32,
    },
    /// Header consumed; `remaining` payload bytes still to come, `offset` already seen.
    Streaming {
        mask: Option<[u8; 4]>,
        fin: bool,
        remaining: u64,
        /// Payload bytes seen so far, modulo 4 (all the mask needs).
        offset: u8,
    },
}

/// The message in progress, once its first data frame header has been accepted.
#[derive(Clone, Copy, Debug)]
struct Msg {
    kind: Kind,
    /// Payload bytes announced by the headers so far.
    len: u64,
    fragments: u32,
    /// Its bytes are in `Decoder::assembled` (not a single in-place frame).
    assembled: bool,
}

/// Incremental, allocation-free (for messages that fit inline) WebSocket decoder.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    msg: Option<Msg>,
    utf8: Utf8Validator,
    /// Boxed so an idle decoder (one per connection) stays small: 8 bytes instead of 24.
    #[allow(clippy::box_collection)]
    assembled: Option<Box<Vec<u8>>>,
    /// [`CLEAR_ASSEMBLED`] and [`DEFLATE`]: one byte, so the flag a negotiated
    /// extension needs does not grow every connection by a word.
    flags: u8,
}

/// The last event borrowed `assembled`; empty it on the next call.
const CLEAR_ASSEMBLED: u8 = 1;
/// permessage-deflate was negotiated: RSV1 may start a data message.
const DEFLATE: u8 = 2;

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// RSV1 in [`FrameHeader::rsv`]: permessage-deflate's "compressed" bit.
const RSV1: u8 = 0x4;

/// Above this, the assembly buffer is freed after its message rather than kept.
const KEEP_ASSEMBLY_CAPACITY: usize = 64 << 10;

/// Fastest path, the small message of a chat or telemetry client: masked, final,
/// unfragmented text or binary with a 7-bit length, wholly in `input`. The same rules
/// as the general path hold (FIN set, RSV clear, known opcode, masked, within
/// max_message; 131 bytes always fit the inline limit). Returns the payload length of
/// such a frame; `None`: take the general path.
#[inline(always)]
fn small_frame(input: &[u8], cfg: &DecoderConfig) -> Option<usize> {
    if cfg.role != Role::Server || input.len() < 6 {
        return None;
    }
    let (b0, b1) = (input[0], input[1]);
    let len = (b1 & 0x7f) as usize;
    let ok = (b0 == 0x81 || b0 == 0x82) && b1 & 0x80 != 0 && len < 126 && input.len() >= 6 + len;
    (ok && len <= cfg.max_message).then_some(len)
}

/// Unmasks and returns the message of a frame that [`small_frame`] accepted.
#[inline(always)]
fn small_message(input: &mut [u8], len: usize) -> Result<(usize, Option<Event<'_>>), ProtocolError> {
    let key = [input[2], input[3], input[4], input[5]];
    let text = input[0] == 0x81;
    let payload = &mut input[6..6 + len];
    apply_mask(payload, key, 0);
    let payload = &input[6..6 + len];
    let event = if text {
        Event::Text(std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?)
    } else {
        Event::Binary(payload)
    };
    Ok((6 + len, Some(event)))
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub const fn new() -> Self {
        Decoder { state: State::Idle, msg: None, utf8: Utf8Validator::new(), assembled: None, flags: 0 }
    }

    /// Nothing pending at all: a call with empty input would do nothing.
    #[inline]
    pub fn is_idle(&self) -> bool {
        self.flags & CLEAR_ASSEMBLED == 0 && self.msg.is_none() && matches!(self.state, State::Idle)
    }

    /// Lets RSV1 mark a compressed message (permessage-deflate was negotiated).
    pub fn set_deflate(&mut self, on: bool) {
        self.flags = if on { self.flags | DEFLATE } else { self.flags & !DEFLATE };
    }

    /// Bytes held in the assembly buffer (part of a connection's memory).
    pub fn assembled_capacity(&self) -> usize {
        self.assembled.as_ref().map_or(0, |v| v.capacity())
    }

    /// Decodes from the front of `input`. Returns the bytes consumed and the event, if
    /// one completed. `(0, None)` means: call again when more bytes have arrived.
    /// `(n > 0, None)` means progress without an event: call again with the rest.
    #[inline(always)]
    pub fn decode<'a>(
        &'a mut self,
        input: &'a mut [u8],
        cfg: &DecoderConfig,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        // Inlined into the caller's loop: the steady state of a chat or telemetry
        // server is one small message per read.
        if self.is_idle() {
            if let Some(len) = small_frame(input, cfg) {
                return small_message(input, len);
            }
        }
        self.decode_general(input, cfg)
    }

    #[inline(never)]
    fn decode_general<'a>(
        &'a mut self,
        input: &'a mut [u8],
        cfg: &DecoderConfig,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        debug_assert!(cfg.inline_limit >= MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD, "inline_limit below a control frame");
        if self.flags & CLEAR_ASSEMBLED != 0 {
            self.flags &= !CLEAR_ASSEMBLED;
            if let Some(v) = self.assembled.as_mut() {
                if v.capacity() > KEEP_ASSEMBLY_CAPACITY {
                    self.assembled = None;
                } else {
                    v.clear();
                }
            }
        }
        match self.state {
            State::Idle => self.start_frame(input, cfg),
            State::Inline { hdr, hlen, done } => self.continue_inline(input, hdr, hlen as usize, done as usize),
            State::Streaming { mask, fin, remaining, offset } => self.stream(input, mask, fin, remaining, offset),
        }
    }

    fn start_frame<'a>(
        &'a mut self,
        input: &'a mut [u8],
        cfg: &DecoderConfig,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        let (hdr, hlen) = match FrameHeader::parse(input, cfg.role, if self.flags & DEFLATE != 0 { RSV1 } else { 0 })? {
            Parsed::Complete(h, n) => (h, n),
            Parsed::NeedMore => return Ok((0, None)),
        };
        // RSV1 marks a message, so only its first frame (RFC 7692 6.1).
        if hdr.rsv != 0 && (hdr.opcode == OpCode::Continuation || hdr.opcode.is_control()) {
            return Err(ProtocolError::ReservedBits);
        }
        // Fast path, the steady state of a busy server: a whole single-frame message
        // already in the buffer. Same checks as the general path, no state kept.
        let total = hlen + hdr.payload_len as usize;
        if hdr.fin
            && hdr.rsv == 0
            && self.msg.is_none()
            && matches!(hdr.opcode, OpCode::Text | OpCode::Binary)
            && total <= input.len()
            && total <= cfg.inline_limit.max(MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD)
            && hdr.payload_len as usize <= cfg.max_message
        {
            let payload = &mut input[hlen..total];
            if let Some(key) = hdr.mask {
                apply_mask(payload, key, 0);
            }
            let payload = &input[hlen..total];
            let event = if hdr.opcode == OpCode::Text {
                Event::Text(std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?)
            } else {
                Event::Binary(payload)
            };
            return Ok((total, Some(event)));
        }
        if !hdr.opcode.is_control() {
            self.accept_data_header(&hdr, cfg)?;
            let total = hlen as u64 + hdr.payload_len;
            if total > cfg.inline_limit.max(MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD) as u64 {
                let msg = self.msg.as_mut().expect("accepted data header starts a message");
                if !msg.assembled {
                    msg.assembled = true;
                }
                // Bounded by max_message, checked in accept_data_header.
                // Reserve what is likely to arrive soon, not what the header claims: a
                // 14-byte header must not make every connection allocate max_message.
                self.assembly().reserve((hdr.payload_len as usize).min(KEEP_ASSEMBLY_CAPACITY));
                self.state = State::Streaming { mask: hdr.mask, fin: hdr.fin, remaining: hdr.payload_len, offset: 0 };
                let (n, ev) = self.stream_inner(&mut input[hlen..])?;
                return Ok((hlen + n, ev));
            }
        }
        self.state = State::Inline { hdr, hlen: hlen as u8, done: 0 };
        self.continue_inline(input, hdr, hlen, 0)
    }

    /// Checks fragmentation order and limits for a data frame header, and records it.
    fn accept_data_header(&mut self, hdr: &FrameHeader, cfg: &DecoderConfig) -> Result<(), ProtocolError> {
        match (hdr.opcode, self.msg.as_mut()) {
            (OpCode::Continuation, None) => Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, Some(msg)) => {
                msg.fragments += 1;
                if msg.fragments > cfg.max_fragments {
                    return Err(ProtocolError::TooManyFragments);
                }
                msg.len = msg.len.saturating_add(hdr.payload_len);
                if msg.len > cfg.max_message as u64 {
                    return Err(ProtocolError::MessageTooBig);
                }
                msg.assembled = true;
                Ok(())
            }
            (_, Some(_)) => Err(ProtocolError::ExpectedContinuation),
            (op, None) => {
                if hdr.payload_len > cfg.max_message as u64 {
                    return Err(ProtocolError::MessageTooBig);
                }
                let compressed = hdr.rsv & RSV1 != 0;
                let kind = match (op == OpCode::Text, compressed) {
                    (true, false) => Kind::Text,
                    (false, false) => Kind::Binary,
                    (true, true) => Kind::DeflatedText,
                    (false, true) => Kind::DeflatedBinary,
                };
                self.utf8.reset();
                // A first frame without FIN will be joined with its continuations; a
                // compressed message is always copied out (it is inflated elsewhere).
                self.msg = Some(Msg { kind, len: hdr.payload_len, fragments: 1, assembled: !hdr.fin || compressed });
                Ok(())
            }
        }
    }

    fn continue_inline<'a>(
        &'a mut self,
        input: &'a mut [u8],
        hdr: FrameHeader,
        hlen: usize,
        done: usize,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        let len = hdr.payload_len as usize;
        let avail = input.len().saturating_sub(hlen).min(len);
        if avail > done {
            let fresh = &mut input[hlen + done..hlen + avail];
            if let Some(key) = hdr.mask {
                apply_mask(fresh, key, done);
            }
            if !hdr.opcode.is_control() && self.msg.map(|m| m.kind) == Some(Kind::Text) {
                self.utf8.feed(fresh).map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            self.state = State::Inline { hdr, hlen: hlen as u8, done: avail as u32 };
        }
        if avail < len {
            return Ok((0, None));
        }
        self.state = State::Idle;
        let consumed = hlen + len;
        let payload = &input[hlen..consumed];
        let event = match hdr.opcode {
            OpCode::Ping => Event::Ping(payload),
            OpCode::Pong => Event::Pong(payload),
            OpCode::Close => Event::Close(parse_close_payload(payload)?),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let msg = self.msg.expect("data frame belongs to a message");
                if msg.assembled {
                    self.assembly().extend_from_slice(payload);
                    if !hdr.fin {
                        return Ok((consumed, self.deflated_part(msg.kind)));
                    }
                    return Ok((consumed, Some(self.finish_assembled()?)));
                }
                self.msg = None;
                match msg.kind {
                    Kind::Binary | Kind::DeflatedText | Kind::DeflatedBinary => Event::Binary(payload),
                    Kind::Text => {
                        self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                        // SAFETY: validated as it arrived, and finish() saw no cut-off code point.
                        Event::Text(unsafe { std::str::from_utf8_unchecked(payload) })
                    }
                }
            }
        };
        Ok((consumed, Some(event)))
    }

    fn stream<'a>(
        &'a mut self,
        input: &'a mut [u8],
        mask: Option<[u8; 4]>,
        fin: bool,
        remaining: u64,
        offset: u8,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        self.state = State::Streaming { mask, fin, remaining, offset };
        self.stream_inner(input)
    }

    fn stream_inner<'a>(&'a mut self, input: &'a mut [u8]) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        let State::Streaming { mask, fin, remaining, offset } = self.state else {
            unreachable!("stream_inner outside Streaming")
        };
        let take = (remaining.min(input.len() as u64)) as usize;
        if take == 0 && remaining > 0 {
            return Ok((0, None));
        }
        let chunk = &mut input[..take];
        if let Some(key) = mask {
            apply_mask(chunk, key, (offset & 3) as usize);
        }
        if self.msg.map(|m| m.kind) == Some(Kind::Text) {
            self.utf8.feed(chunk).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        self.assembly().extend_from_slice(chunk);
        let remaining = remaining - take as u64;
        if remaining > 0 {
            self.state = State::Streaming { mask, fin, remaining, offset: ((offset as usize + take) & 3) as u8 };
            let kind = self.msg.expect("streaming a message").kind;
            return Ok((take, if take > 0 { self.deflated_part(kind) } else { None }));
        }
        self.state = State::Idle;
        if !fin {
            let kind = self.msg.expect("streaming a message").kind;
            return Ok((take, self.deflated_part(kind)));
        }
        Ok((take, Some(self.finish_assembled()?)))
    }

    /// For a compressed message, hands over the compressed bytes assembled so far (they
    /// are emptied on the next call); `None` for a plain one, which stays assembled.
    #[inline]
    fn deflated_part(&mut self, kind: Kind) -> Option<Event<'_>> {
        let text = match kind {
            Kind::Text | Kind::Binary => return None,
            Kind::DeflatedText => true,
            Kind::DeflatedBinary => false,
        };
        self.flags |= CLEAR_ASSEMBLED;
        Some(Event::Deflated { text, end: false, payload: self.assembled_bytes() })
    }

    fn assembly(&mut self) -> &mut Vec<u8> {
        self.assembled.get_or_insert_with(Default::default)
    }

    fn assembled_bytes(&self) -> &[u8] {
        self.assembled.as_deref().map_or(&[], |v| v.as_slice())
    }

    fn finish_assembled(&mut self) -> Result<Event<'_>, ProtocolError> {
        let msg = self.msg.take().expect("finishing a started message");
        self.flags |= CLEAR_ASSEMBLED;
        Ok(match msg.kind {
            Kind::Binary => Event::Binary(self.assembled_bytes()),
            Kind::DeflatedText => Event::Deflated { text: true, end: true, payload: self.assembled_bytes() },
            Kind::DeflatedBinary => Event::Deflated { text: false, end: true, payload: self.assembled_bytes() },
            Kind::Text => {
                self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                // SAFETY: every byte went through the validator, which saw a complete end.
                Event::Text(unsafe { std::str::from_utf8_unchecked(self.assembled_bytes()) })
            }
        })
    }
}

/// Validates a close frame's payload: empty, or a valid code and a UTF-8 reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::CloseTooShort),
        _ => {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| ProtocolError::CloseReasonNotUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// What a test or fuzz target compares: an owned copy of an [`Event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OwnedEvent {
    /// Text message.
    Text(String),
    /// Binary message.
    Binary(Vec<u8>),
    /// Ping payload.
    Ping(Vec<u8>),
    /// Pong payload.
    Pong(Vec<u8>),
    /// Close code and reason.
    Close(Option<(u16, String)>),
    /// A compressed message: text or binary, and its payload.
    Deflated(bool, Vec<u8>),
    /// Part of a compressed message: text or binary, and the bytes.
    DeflatedPart(bool, Vec<u8>),
}

impl From<Event<'_>> for OwnedEvent {
    fn from(e: Event<'_>) -> Self {
        match e {
            Event::Text(s) => OwnedEvent::Text(s.to_owned()),
            Event::Binary(b) => OwnedEvent::Binary(b.to_vec()),
            Event::Ping(b) => OwnedEvent::Ping(b.to_vec()),
            Event::Pong(b) => OwnedEvent::Pong(b.to_vec()),
            Event::Close(c) => OwnedEvent::Close(c.map(|(c, r)| (c.0, r.to_owned()))),
            Event::Deflated { text, end: true, payload } => OwnedEvent::Deflated(text, payload.to_vec()),
            Event::Deflated { text, end: false, payload } => OwnedEvent::DeflatedPart(text, payload.to_vec()),
        }
    }
}

/// Feeds `input` to a fresh decoder in the given chunk sizes, through a buffer of
/// `cfg.inline_limit` bytes the way a server's read ring would, and collects the events
/// up to the first error. Used by tests and the fuzz targets to check that how bytes are
/// split never changes the outcome.
pub(crate) fn decode_in_chunks(
    input: &[u8],
    chunks: &mut dyn Iterator<Item = usize>,
    cfg: &DecoderConfig,
) -> (Vec<OwnedEvent>, Option<ProtocolError>) {
    let mut dec = Decoder::new();
    let mut buf: Vec<u8> = Vec::with_capacity(cfg.inline_limit);
    let mut events = Vec::new();
    let mut fed = 0;
    loop {
        // Refill up to the buffer's capacity, in the next chunk size.
        let room = cfg.inline_limit - buf.len();
        assert!(room > 0 || fed == input.len(), "decoder stalled on a full buffer");
        let step = chunks.next().unwrap_or(usize::MAX).max(1).min(room).min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + step]);
        fed += step;
        let mut pos = 0;
        loop {
            match dec.decode(&mut buf[pos..], cfg) {
                Err(e) => return (events, Some(e)),
                Ok((n, ev)) => {
                    pos += n;
                    match ev {
                        Some(ev) => {
                            let closed = matches!(ev, Event::Close(_));
                            events.push(OwnedEvent::from(ev));
                            if closed {
                                return (events, None);
                            }
                        }
                        None if n == 0 => break,
                        None => {}
                    }
                }
            }
        }
        buf.drain(..pos);
        if fed == input.len() && (step == 0 || pos == 0) {
            return (events, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::encode_frame;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; payload.len() + MAX_HEADER_LEN];
        let n = encode_frame(&mut out, fin, op, payload, Some(KEY)).unwrap();
        out.truncate(n);
        out
    }

    fn small_cfg() -> DecoderConfig {
        DecoderConfig { inline_limit: 256, ..DecoderConfig::default() }
    }

    fn run(input: &[u8], cfg: &DecoderConfig) -> (Vec<OwnedEvent>, Option<ProtocolError>) {
        let whole = decode_in_chunks(input, &mut std::iter::empty(), cfg);
        for size in [1usize, 2, 3, 7, 64, 131] {
            let split = decode_in_chunks(input, &mut std::iter::repeat(size), cfg);
            assert_eq!(split, whole, "chunk size {size}");
        }
        whole
    }

    #[test]
    fn small_frame_fast_path_decodes_what_the_general_path_does() {
        // The decoder's one fast path (small, final, masked text or binary) against
        // `decode_general` on the same bytes, for every first and second byte: valid
        // frames, bad opcodes, RSV bits, FIN clear, unmasked, invalid UTF-8.
        let cfg = DecoderConfig::default();
        for b0 in 0u8..=255 {
            for (len, b1mask) in [(0usize, 0x80u8), (5, 0x80), (5, 0), (125, 0x80)] {
                for payload in [vec![b'a'; len], vec![0xff; len]] {
                    let mut wire = vec![b0, b1mask | len as u8, 1, 2, 3, 4];
                    let mut masked = payload.clone();
                    crate::proto::mask::apply_mask(&mut masked, [1, 2, 3, 4], 0);
                    wire.extend(&masked);
                    let mut a = wire.clone();
                    let mut b = wire.clone();
                    let (mut fast, mut general) = (Decoder::new(), Decoder::new());
                    let x = fast.decode(&mut a, &cfg).map(|(n, e)| (n, e.map(OwnedEvent::from)));
                    let y = general.decode_general(&mut b, &cfg).map(|(n, e)| (n, e.map(OwnedEvent::from)));
                    assert_eq!(x, y, "b0 {b0:#x} len {len} mask {b1mask:#x}");
                }
            }
        }
    }

    #[test]
    fn single_frame_text_is_returned_in_place() {
        let mut wire = frame(true, OpCode::Text, b"Hello");
        let mut dec = Decoder::new();
        let base = wire.as_ptr() as usize;
        let (n, ev) = dec.decode(&mut wire, &DecoderConfig::default()).unwrap();
        assert_eq!(n, 11);
        match ev {
            Some(Event::Text(s)) => {
                assert_eq!(s, "Hello");
                assert_eq!(s.as_ptr() as usize, base + 6, "no copy");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(dec.assembled_capacity(), 0);
    }

    #[test]
    fn fragments_with_interleaved_control_frames() {
        let mut wire = frame(false, OpCode::Text, "κό".as_bytes());
        wire.extend(frame(true, OpCode::Ping, b"p"));
        wire.extend(frame(false, OpCode::Continuation, "σμ".as_bytes()));
        wire.extend(frame(true, OpCode::Pong, b""));
        wire.extend(frame(true, OpCode::Continuation, "ε".as_bytes()));
        wire.extend(frame(true, OpCode::Binary, &[1, 2, 3]));
        wire.extend(frame(true, OpCode::Close, &[0x03, 0xe8, b'o', b'k']));
        let (ev, err) = run(&wire, &small_cfg());
        assert_eq!(err, None);
        assert_eq!(
            ev,
            vec![
                OwnedEvent::Ping(b"p".to_vec()),
                OwnedEvent::Pong(vec![]),
                OwnedEvent::Text("κόσμε".into()),
                OwnedEvent::Binary(vec![1, 2, 3]),
                OwnedEvent::Close(Some((1000, "ok".into()))),
            ]
        );
    }

    #[test]
    fn utf8_split_across_fragments_inside_a_code_point() {
        let bytes = "𝄞".as_bytes();
        let mut wire = frame(false, OpCode::Text, &bytes[..1]);
        wire.extend(frame(false, OpCode::Continuation, &bytes[1..3]));
        wire.extend(frame(true, OpCode::Continuation, &bytes[3..]));
        assert_eq!(run(&wire, &small_cfg()), (vec![OwnedEvent::Text("𝄞".into())], None));
    }

    #[test]
    fn large_frames_stream_through_a_small_buffer() {
        for len in [120usize, 125, 126, 127, 250, 251, 300, 65535, 65536, 65537, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let wire = frame(true, OpCode::Binary, &payload);
            let (ev, err) = run(&wire, &small_cfg());
            assert_eq!(err, None, "len {len}");
            assert_eq!(ev, vec![OwnedEvent::Binary(payload)], "len {len}");
        }
    }

    #[test]
    fn violations_and_their_codes() {
        let cfg = DecoderConfig { max_message: 1000, max_fragments: 3, ..small_cfg() };
        let bad_utf8 = [0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xed, 0xa0, 0x80, b'a', b'b'];
        let cases: Vec<(Vec<u8>, ProtocolError, u16)> = vec![
            (frame(true, OpCode::Continuation, b"x"), ProtocolError::UnexpectedContinuation, 1002),
            (
                [frame(false, OpCode::Text, b"a"), frame(true, OpCode::Binary, b"b")].concat(),
                ProtocolError::ExpectedContinuation,
                1002,
            ),
            (frame(true, OpCode::Close, &[3]), ProtocolError::CloseTooShort, 1002),
            (frame(true, OpCode::Close, &[0x03, 0xed]), ProtocolError::InvalidCloseCode(1005), 1002),
            (frame(true, OpCode::Close, &[0x03, 0xec]), ProtocolError::InvalidCloseCode(1004), 1002),
            (frame(true, OpCode::Close, &[0x13, 0x88]), ProtocolError::InvalidCloseCode(5000), 1002),
            (frame(true, OpCode::Close, &[0x03, 0xe8, 0xff]), ProtocolError::CloseReasonNotUtf8, 1007),
            (frame(true, OpCode::Text, &bad_utf8), ProtocolError::InvalidUtf8, 1007),
            (frame(true, OpCode::Text, &[b'a', 0xce]), ProtocolError::InvalidUtf8, 1007),
            (frame(true, OpCode::Binary, &[0; 1001]), ProtocolError::MessageTooBig, 1009),
            (
                [frame(false, OpCode::Binary, &[0; 600]), frame(true, OpCode::Continuation, &[0; 401])].concat(),
                ProtocolError::MessageTooBig,
                1009,
            ),
            (
                [
                    frame(false, OpCode::Binary, b""),
                    frame(false, OpCode::Continuation, b""),
                    frame(false, OpCode::Continuation, b""),
                    frame(false, OpCode::Continuation, b""),
                ]
                .concat(),
                ProtocolError::TooManyFragments,
                1009,
            ),
        ];
        for (wire, want, code) in cases {
            let (_, err) = run(&wire, &cfg);
            assert_eq!(err, Some(want), "{wire:x?}");
            assert_eq!(want.close_code().0, code);
        }
    }

    /// `wire` through a decoder that negotiated permessage-deflate, in one piece and
    /// byte by byte: the events up to the first error.
    fn run_deflate(wire: &[u8]) -> (Vec<OwnedEvent>, Option<ProtocolError>) {
        let mut outcomes = Vec::new();
        for step in [wire.len().max(1), 1] {
            let (mut events, mut err) = (Vec::new(), None);
            let mut dec = Decoder::new();
            dec.set_deflate(true);
            let mut buf = Vec::new();
            for chunk in wire.chunks(step) {
                buf.extend_from_slice(chunk);
                loop {
                    match dec.decode(&mut buf, &small_cfg()) {
                        Ok((n, ev)) => {
                            let progressed = n > 0 || ev.is_some();
                            if let Some(ev) = ev {
                                events.push(OwnedEvent::from(ev));
                            }
                            buf.drain(..n);
                            if !progressed {
                                break;
                            }
                        }
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                }
                if err.is_some() {
                    break;
                }
            }
            outcomes.push((events, err));
        }
        // Where a message's parts end depends on how its bytes arrived; its bytes do not.
        let joined = |events: &[OwnedEvent]| {
            let mut out: Vec<OwnedEvent> = Vec::new();
            let mut part = Vec::new();
            for ev in events {
                match ev {
                    OwnedEvent::DeflatedPart(_, b) => part.extend_from_slice(b),
                    OwnedEvent::Deflated(t, b) => {
                        part.extend_from_slice(b);
                        out.push(OwnedEvent::Deflated(*t, std::mem::take(&mut part)));
                    }
                    e => out.push(e.clone()),
                }
            }
            out
        };
        assert_eq!(joined(&outcomes[0].0), joined(&outcomes[1].0), "byte by byte changed the messages");
        assert_eq!(outcomes[0].1, outcomes[1].1, "byte by byte changed the error");
        outcomes.swap_remove(0)
    }

    fn rsv1(mut f: Vec<u8>) -> Vec<u8> {
        f[0] |= 0x40;
        f
    }

    #[test]
    fn rsv1_marks_a_compressed_message_only_when_negotiated() {
        let wire = rsv1(frame(true, OpCode::Text, b"zz"));
        assert_eq!(run(&wire, &small_cfg()).1, Some(ProtocolError::ReservedBits));
        assert_eq!(run_deflate(&wire), (vec![OwnedEvent::Deflated(true, b"zz".to_vec())], None));
        // Fragmented: RSV1 on the first frame only; each fragment handed over as it
        // completes, for inflating at once.
        let wire = [rsv1(frame(false, OpCode::Binary, b"ab")), frame(true, OpCode::Continuation, b"cd")].concat();
        let want = vec![OwnedEvent::DeflatedPart(false, b"ab".to_vec()), OwnedEvent::Deflated(false, b"cd".to_vec())];
        assert_eq!(run_deflate(&wire), (want, None));
        // Compressed bytes are not text yet: no UTF-8 check before inflation.
        let wire = rsv1(frame(true, OpCode::Text, &[0xff; 300]));
        assert_eq!(run_deflate(&wire), (vec![OwnedEvent::Deflated(true, vec![0xff; 300])], None));
        // A plain message still goes through unchanged.
        assert_eq!(run_deflate(&frame(true, OpCode::Text, b"hi")), (vec![OwnedEvent::Text("hi".into())], None));
    }

    #[test]
    fn rsv1_on_control_or_continuation_frames_is_1002() {
        let cases = [
            rsv1(frame(true, OpCode::Ping, b"p")),
            rsv1(frame(true, OpCode::Close, &[0x03, 0xe8])),
            [frame(false, OpCode::Text, b"a"), rsv1(frame(true, OpCode::Continuation, b"b"))].concat(),
            [rsv1(frame(false, OpCode::Text, b"a")), rsv1(frame(true, OpCode::Continuation, b"b"))].concat(),
            {
                let mut f = frame(true, OpCode::Text, b"a");
                f[0] |= 0x20; // RSV2: no extension uses it
                f
            },
        ];
        for wire in cases {
            assert_eq!(run_deflate(&wire).1, Some(ProtocolError::ReservedBits), "{wire:x?}");
            assert_eq!(ProtocolError::ReservedBits.close_code().0, 1002);
        }
    }

    #[test]
    fn size_limit_is_checked_before_payload_arrives() {
        let cfg = DecoderConfig { max_message: 1000, ..small_cfg() };
        let wire = frame(true, OpCode::Binary, &[0; 5000]);
        let mut dec = Decoder::new();
        // Only the header: the verdict must not wait for 5000 bytes.
        let mut head = wire[..8].to_vec();
        assert_eq!(dec.decode(&mut head, &cfg).unwrap_err(), ProtocolError::MessageTooBig);
        assert_eq!(dec.assembled_capacity(), 0);
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_is_complete() {
        let mut payload = "κόσμε".as_bytes().to_vec();
        payload.extend([0xf4, 0x90, 0x80, 0x80]);
        payload.extend(vec![b'a'; 100]);
        let wire = frame(true, OpCode::Text, &payload);
        let mut dec = Decoder::new();
        let mut part = wire[..6 + "κόσμε".len() + 2].to_vec();
        assert_eq!(dec.decode(&mut part, &small_cfg()).unwrap_err(), ProtocolError::InvalidUtf8);
    }

    #[test]
    fn no_allocation_for_inline_messages_after_a_large_one_shrinks_back() {
        let cfg = small_cfg();
        let mut dec = Decoder::new();
        let mut big = frame(true, OpCode::Binary, &vec![7u8; 100_000]);
        let mut pos = 0;
        let mut got = 0;
        while pos < big.len() {
            let end = (pos + 256).min(big.len());
            let (n, ev) = dec.decode(&mut big[pos..end], &cfg).unwrap();
            if let Some(Event::Binary(b)) = ev {
                got = b.len();
            }
            pos += n;
        }
        assert_eq!(got, 100_000);
        let mut small = frame(true, OpCode::Binary, b"x");
        dec.decode(&mut small, &cfg).unwrap();
        assert_eq!(dec.assembled_capacity(), 0, "large assembly buffer released");
    }
}
