//! Frame headers (RFC 6455 section 5.2): parsing with every MUST a receiver enforces,
//! and encoding into a caller-owned buffer.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```

use super::error::{InsufficientSize, ProtocolError};
use super::mask::apply_mask;

/// Largest possible frame header: 2 + 8 (length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload a control frame may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes. Reserved values are rejected at parse time, so they have no variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: a later fragment of a message.
    Continuation,
    /// 0x1: a UTF-8 text message (or its first fragment).
    Text,
    /// 0x2: a binary message (or its first fragment).
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Decodes the low nibble of the first header byte.
    pub fn from_u8(v: u8) -> Result<OpCode, ProtocolError> {
        Ok(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::UnknownOpcode(other)),
        })
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Which side of the connection is parsing: servers require masked frames, clients
/// require unmasked ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We are the server; incoming frames come from a client and must be masked.
    Server,
    /// We are the client; incoming frames come from a server and must not be masked.
    Client,
}

/// A parsed, validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1-3 as the top three bits of a nibble (always zero unless an extension allows).
    pub rsv: u8,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, when the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

/// Outcome of parsing a header from the start of a byte slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A complete item, and how many bytes of input it used.
    Complete(T, usize),
    /// The input ends before the item does; nothing was consumed.
    NeedMore,
}

impl FrameHeader {
    /// Parses one header from the front of `input` and checks the rules that need
    /// nothing but the header: masking direction, RSV bits (`allowed_rsv` is the set an
    /// extension negotiated, 0 without one), opcode, control frame limits, and the top
    /// bit of a 64-bit length.
    pub fn parse(input: &[u8], role: Role, allowed_rsv: u8) -> Result<Parsed<FrameHeader>, ProtocolError> {
        if input.len() < 2 {
            return Ok(Parsed::NeedMore);
        }
        let (b0, b1) = (input[0], input[1]);
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        let opcode = OpCode::from_u8(b0 & 0x0f)?;
        if rsv & !allowed_rsv != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        let masked = b1 & 0x80 != 0;
        if masked != (role == Role::Server) {
            return Err(ProtocolError::MaskMismatch);
        }
        let len7 = b1 & 0x7f;
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if len7 as usize > MAX_CONTROL_PAYLOAD {
                return Err(ProtocolError::ControlTooLong);
            }
        }
        let len_bytes = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
        if input.len() < header_len {
            // The top bit of a 64-bit length is visible before the rest arrives;
            // report it now rather than after more bytes.
            if len7 == 127 && input.len() > 2 && input[2] & 0x80 != 0 {
                return Err(ProtocolError::LengthTopBit);
            }
            return Ok(Parsed::NeedMore);
        }
        let payload_len = match len7 {
            126 => u16::from_be_bytes([input[2], input[3]]) as u64,
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&input[2..10]);
                let v = u64::from_be_bytes(b);
                if v >> 63 != 0 {
                    return Err(ProtocolError::LengthTopBit);
                }
                v
            }
            n => n as u64,
        };
        let mask = if masked {
            let at = 2 + len_bytes;
            Some([input[at], input[at + 1], input[at + 2], input[at + 3]])
        } else {
            None
        };
        Ok(Parsed::Complete(FrameHeader { fin, rsv, opcode, mask, payload_len }, header_len))
    }

    /// Bytes this header takes on the wire.
    pub fn encoded_len(&self) -> usize {
        header_len(self.payload_len, self.mask.is_some())
    }

    /// Writes the header into the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, InsufficientSize> {
        let n = self.encoded_len();
        if out.len() < n {
            return Err(InsufficientSize { required: n });
        }
        out[0] = (self.fin as u8) << 7 | (self.rsv & 7) << 4 | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut at = 2;
        if self.payload_len < 126 {
            out[1] = mask_bit | self.payload_len as u8;
        } else if self.payload_len <= u16::MAX as u64 {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
            at = 4;
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
            at = 10;
        }
        if let Some(key) = self.mask {
            out[at..at + 4].copy_from_slice(&key);
        }
        Ok(n)
    }
}

/// The longest header a server writes (unmasked, 64-bit length).
pub const MAX_SERVER_HEADER_LEN: usize = 10;

/// The header of a final, unmasked frame (what a server sends), built in registers:
/// returns the header bytes (only the first `n` are meant) and `n`. The bytes past
/// `n` are zero, so a caller may copy all ten at once when it has the room.
#[inline]
pub fn server_header(opcode: OpCode, payload_len: usize) -> ([u8; MAX_SERVER_HEADER_LEN], usize) {
    let mut h = [0u8; MAX_SERVER_HEADER_LEN];
    h[0] = 0x80 | opcode.as_u8();
    if payload_len < 126 {
        h[1] = payload_len as u8;
        (h, 2)
    } else if payload_len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        (h, 10)
    }
}

/// Bytes a header takes for a payload of `payload_len` (2, 4 or 10, plus 4 when masked).
pub fn header_len(payload_len: u64, masked: bool) -> usize {
    let base = if payload_len < 126 {
        2
    } else if payload_len <= u16::MAX as u64 {
        4
    } else {
        10
    };
    base + if masked { 4 } else { 0 }
}

/// Writes a complete frame (header and payload, masked when `mask` is given) into `out`.
///
/// Returns the bytes written; on `InsufficientSize` nothing was written.
pub fn encode_frame(
    out: &mut [u8],
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> Result<usize, InsufficientSize> {
    let header = FrameHeader { fin, rsv: 0, opcode, mask, payload_len: payload.len() as u64 };
    let total = header.encoded_len() + payload.len();
    if out.len() < total {
        return Err(InsufficientSize { required: total });
    }
    let h = header.encode(out)?;
    out[h..total].copy_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[h..total], key, 0);
    }
    Ok(total)
}

/// Writes a close frame with `code` and `reason` (the reason is cut to fit 125 bytes at a
/// character boundary). `None` writes an empty close frame.
pub fn encode_close(
    out: &mut [u8],
    close: Option<(super::CloseCode, &str)>,
    mask: Option<[u8; 4]>,
) -> Result<usize, InsufficientSize> {
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    let n = match close {
        None => 0,
        Some((code, reason)) => {
            payload[..2].copy_from_slice(&code.0.to_be_bytes());
            let reason = truncate_utf8(reason, MAX_CONTROL_PAYLOAD - 2);
            payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
            2 + reason.len()
        }
    };
    encode_frame(out, true, OpCode::Close, &payload[..n], mask)
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::CloseCode;

    fn parse_server(input: &[u8]) -> Result<Parsed<FrameHeader>, ProtocolError> {
        FrameHeader::parse(input, Role::Server, 0)
    }

    // RFC 6455 section 5.7, byte for byte.
    #[test]
    fn rfc_5_7_unmasked_hello() {
        let wire = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let mut out = [0u8; 16];
        let n = encode_frame(&mut out, true, OpCode::Text, b"Hello", None).unwrap();
        assert_eq!(&out[..n], &wire);
        match FrameHeader::parse(&wire, Role::Client, 0).unwrap() {
            Parsed::Complete(h, 2) => {
                assert!(h.fin);
                assert_eq!(h.opcode, OpCode::Text);
                assert_eq!(h.payload_len, 5);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rfc_5_7_masked_hello() {
        let wire = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let mut out = [0u8; 16];
        let n = encode_frame(&mut out, true, OpCode::Text, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d])).unwrap();
        assert_eq!(&out[..n], &wire);
        let Parsed::Complete(h, hl) = parse_server(&wire).unwrap() else { panic!() };
        let mut payload = wire[hl..].to_vec();
        apply_mask(&mut payload, h.mask.unwrap(), 0);
        assert_eq!(payload, b"Hello");
    }

    #[test]
    fn rfc_5_7_fragmented_hello() {
        let first = [0x01, 0x03, 0x48, 0x65, 0x6c];
        let second = [0x80, 0x02, 0x6c, 0x6f];
        let mut out = [0u8; 8];
        let n = encode_frame(&mut out, false, OpCode::Text, b"Hel", None).unwrap();
        assert_eq!(&out[..n], &first);
        let n = encode_frame(&mut out, true, OpCode::Continuation, b"lo", None).unwrap();
        assert_eq!(&out[..n], &second);
    }

    #[test]
    fn rfc_5_7_ping_and_pong() {
        let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let pong = [0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let mut out = [0u8; 16];
        let n = encode_frame(&mut out, true, OpCode::Ping, b"Hello", None).unwrap();
        assert_eq!(&out[..n], &ping);
        let n = encode_frame(&mut out, true, OpCode::Pong, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d])).unwrap();
        assert_eq!(&out[..n], &pong);
    }

    #[test]
    fn rfc_5_7_binary_256_and_64k() {
        let payload = vec![0xabu8; 256];
        let mut out = vec![0u8; 300];
        let n = encode_frame(&mut out, true, OpCode::Binary, &payload, None).unwrap();
        assert_eq!(&out[..4], &[0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(n, 260);
        let payload = vec![0u8; 65536];
        let mut out = vec![0u8; 65546];
        encode_frame(&mut out, true, OpCode::Binary, &payload, None).unwrap();
        assert_eq!(&out[..10], &[0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]);
    }

    #[test]
    fn need_more_for_every_prefix() {
        let mut out = [0u8; 200];
        for len in [0usize, 125, 126, 127, 150] {
            let payload = vec![1u8; len];
            let n = encode_frame(&mut out, true, OpCode::Binary, &payload, Some([1, 2, 3, 4])).unwrap();
            let hl = header_len(len as u64, true);
            for cut in 0..hl {
                assert_eq!(parse_server(&out[..cut]).unwrap(), Parsed::NeedMore);
            }
            assert!(matches!(parse_server(&out[..n]).unwrap(), Parsed::Complete(_, h) if h == hl));
        }
    }

    #[test]
    fn violations_map_to_close_codes() {
        let cases: &[(&[u8], ProtocolError, u16)] = &[
            (&[0x81, 0x00], ProtocolError::MaskMismatch, 1002),
            (&[0xC1, 0x80, 0, 0, 0, 0], ProtocolError::ReservedBits, 1002),
            (&[0x91, 0x80, 0, 0, 0, 0], ProtocolError::ReservedBits, 1002),
            (&[0xA1, 0x80, 0, 0, 0, 0], ProtocolError::ReservedBits, 1002),
            (&[0x83, 0x80, 0, 0, 0, 0], ProtocolError::UnknownOpcode(3), 1002),
            (&[0x8B, 0x80, 0, 0, 0, 0], ProtocolError::UnknownOpcode(0xB), 1002),
            (&[0x09, 0x80, 0, 0, 0, 0], ProtocolError::FragmentedControl, 1002),
            (&[0x89, 0xFE, 0, 126], ProtocolError::ControlTooLong, 1002),
            (&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4], ProtocolError::LengthTopBit, 1002),
            (&[0x82, 0xFF, 0x80], ProtocolError::LengthTopBit, 1002),
        ];
        for (wire, err, code) in cases {
            assert_eq!(parse_server(wire), Err(*err), "{wire:x?}");
            assert_eq!(err.close_code(), CloseCode(*code));
        }
    }

    #[test]
    fn round_trip_around_length_boundaries() {
        for len in [0usize, 1, 124, 125, 126, 127, 128, 65534, 65535, 65536, 65537, 70000] {
            for mask in [None, Some([9u8, 8, 7, 6])] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut out = vec![0u8; len + MAX_HEADER_LEN];
                let n = encode_frame(&mut out, true, OpCode::Binary, &payload, mask).unwrap();
                assert_eq!(n, header_len(len as u64, mask.is_some()) + len);
                let role = if mask.is_some() { Role::Server } else { Role::Client };
                let Parsed::Complete(h, hl) = FrameHeader::parse(&out[..n], role, 0).unwrap() else { panic!() };
                assert_eq!(h.payload_len, len as u64);
                let body = &mut out[hl..n];
                if let Some(k) = h.mask {
                    apply_mask(body, k, 0);
                }
                assert_eq!(body, &payload[..]);
            }
        }
    }

    #[test]
    fn encode_reports_required_size_and_writes_nothing() {
        let mut out = [0xEEu8; 4];
        assert_eq!(encode_frame(&mut out, true, OpCode::Text, b"hello", None), Err(InsufficientSize { required: 7 }));
        assert_eq!(out, [0xEE; 4]);
    }

    #[test]
    fn close_reason_is_truncated_at_a_char_boundary() {
        let reason = "é".repeat(100);
        let mut out = [0u8; 200];
        let n = encode_close(&mut out, Some((CloseCode::NORMAL, &reason)), None).unwrap();
        assert_eq!(out[1] as usize, n - 2);
        assert!(n - 2 <= 125);
        assert!(std::str::from_utf8(&out[4..n]).is_ok());
    }

    #[test]
    fn server_header_equals_the_general_encoder() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 33] {
            for op in [OpCode::Text, OpCode::Binary, OpCode::Ping, OpCode::Pong, OpCode::Close] {
                let (h, n) = server_header(op, len);
                let mut want = [0u8; MAX_HEADER_LEN];
                let m = FrameHeader { fin: true, rsv: 0, opcode: op, mask: None, payload_len: len as u64 }
                    .encode(&mut want)
                    .unwrap();
                assert_eq!(&h[..n], &want[..m], "len {len} op {op:?}");
                assert!(h[n..].iter().all(|&b| b == 0));
            }
        }
    }
}
