//! The bodies of the fuzz targets, one per entry point of the protocol core.
//!
//! `fuzz/fuzz_targets/*.rs` hand libFuzzer's bytes to these functions, and
//! `tests/fuzz_corpus.rs` runs every committed seed in `fuzz/corpus/<target>/` through
//! them under plain `cargo test`, so a fixed crash stays fixed without cargo-fuzz.
//!
//! Each function accepts any bytes and panics only when it finds a bug. Where an input
//! needs parameters (limits, chunk sizes), they are taken from its first bytes, as
//! documented on each function, so a seed file is self-contained.

use super::frame::{FrameHeader, OpCode, Parsed, Role, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use super::handshake::{
    header_storage, parse_request, parse_response, write_accept, write_error, write_reject, HandshakeLimits,
    ParseStatus, MAX_HEADERS,
};
use super::mask::apply_mask;
use super::message::{decode_in_chunks, DecoderConfig, OwnedEvent};
use super::InsufficientSize;

/// Limits the `message` target decodes under: small, so that inputs of a few KiB hit
/// the streaming path, the size limit and the fragment limit.
pub const MESSAGE_CFG_INLINE_LIMIT: usize = 256;
/// See [`MESSAGE_CFG_INLINE_LIMIT`].
pub const MESSAGE_CFG_MAX_MESSAGE: usize = 2048;
/// See [`MESSAGE_CFG_INLINE_LIMIT`].
pub const MESSAGE_CFG_MAX_FRAGMENTS: u32 = 8;

/// Opening handshake. Input: `[limit byte, headers byte, request bytes...]`.
///
/// `max_header_bytes` is `(limit byte + 1) * 32` (32 B to 8 KiB) and `max_headers` is
/// `headers byte * 2` (0 to 510, so the clamp to [`MAX_HEADERS`] is exercised). Checks
/// that parsing never panics, that a parsed head lies within the input and the limits,
/// and that a response written for it is either complete or leaves the buffer untouched.
pub fn handshake(data: &[u8]) {
    let [limit, count, ref request @ ..] = *data else {
        return;
    };
    let limits = HandshakeLimits { max_header_bytes: (limit as usize + 1) * 32, max_headers: count as usize * 2 };
    let mut headers = header_storage();
    match parse_request(request, &mut headers, &limits) {
        Ok(ParseStatus::Partial) => assert!(request.len() < limits.max_header_bytes, "partial past the limit"),
        Ok(ParseStatus::Complete(req, head_len)) => {
            assert!(head_len <= request.len(), "head {head_len} longer than input {}", request.len());
            assert!(head_len <= limits.max_header_bytes);
            assert!(req.headers().count() <= limits.max_headers.min(MAX_HEADERS));
            // httparse also takes bare LF line ends, so the head ends "\n\n" or "\n\r\n".
            let head = &request[..head_len];
            assert!(head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"), "head ends {:?}", &head[head_len - 4..]);
            assert!(req.target().starts_with(req.path()));
            let _ = (req.query(), req.origin(), req.host(), req.query_param("access_token"));
            let _ = (req.extensions().count(), req.header("sec-websocket-key"));
            let protocol = req.protocols().next();
            let extra: &[u8] = if limit & 1 == 0 { b"" } else { b"X-Extra: 1\r\n" };
            let n = write_both_sizes(|out| write_accept(out, &req, protocol, extra));
            // Whatever we accept, our own client must accept as the answer to its key.
            if let Ok(key) = <[u8; 24]>::try_from(req.header("sec-websocket-key").unwrap_or("").trim().as_bytes()) {
                let mut out = vec![0u8; n];
                write_accept(&mut out, &req, protocol, extra).expect("fits in its own size");
                match parse_response(&out, &key) {
                    Ok(ParseStatus::Complete((), m)) => assert_eq!(m, n),
                    other => panic!("own accept refused: {other:?} for {:?}", String::from_utf8_lossy(&out)),
                }
            }
            let status = [400, 403, 404, 405, 426, 431, 503, 999][count as usize & 7];
            write_both_sizes(|out| write_reject(out, status, req.path(), extra));
        }
        Err(e) => {
            write_both_sizes(|out| write_error(out, e));
        }
    }
}

/// Writes with `write` into a small and a large buffer. A failure must name a size that
/// then works and must leave the buffer as it was. Returns the bytes written.
fn write_both_sizes(write: impl Fn(&mut [u8]) -> Result<usize, InsufficientSize>) -> usize {
    let mut big = vec![0u8; 64 << 10];
    let n = write(&mut big).expect("64 KiB holds any response");
    for small in [0, 1, 16, 64, n.saturating_sub(1)] {
        let mut out = vec![0xA5u8; small];
        match write(&mut out) {
            Ok(m) => assert!(small >= n && m == n),
            Err(InsufficientSize { required }) => {
                assert_eq!(required, n, "required size differs from what was written");
                assert!(out.iter().all(|&b| b == 0xA5), "buffer written on failure");
            }
        }
    }
    n
}

/// Frame header parsing, for both roles, and masking. Input: raw frame bytes.
///
/// Checks that a parsed header obeys every rule it is parsed under, that every prefix of
/// the input is `NeedMore` or the same verdict, that re-encoding parses back to the same
/// header (fields, not bytes: over-long length encodings are accepted on parse), and that
/// word-wise unmasking of the payload matches a byte-wise reference.
pub fn frame(data: &[u8]) {
    for role in [Role::Server, Role::Client] {
        for allowed_rsv in [0, 0b111] {
            check_frame(data, role, allowed_rsv);
        }
    }
}

fn check_frame(data: &[u8], role: Role, allowed_rsv: u8) {
    let full = FrameHeader::parse(data, role, allowed_rsv);
    let cut_at = match full {
        Ok(Parsed::Complete(_, n)) => n,
        _ => data.len().min(MAX_HEADER_LEN),
    };
    for cut in 0..cut_at {
        let partial = FrameHeader::parse(&data[..cut], role, allowed_rsv);
        match (partial, full) {
            (Ok(Parsed::NeedMore), _) => {}
            (Err(a), Err(b)) if a == b => {}
            (p, f) => panic!("prefix of {cut} bytes gave {p:?}, whole input {f:?}"),
        }
    }
    let Ok(Parsed::Complete(hdr, hlen)) = full else {
        return;
    };
    assert!(hlen <= data.len() && hlen <= MAX_HEADER_LEN);
    assert_eq!(hdr.mask.is_some(), role == Role::Server);
    assert_eq!(hdr.rsv & !allowed_rsv, 0);
    assert!(hdr.payload_len >> 63 == 0);
    if hdr.opcode.is_control() {
        assert!(hdr.fin && hdr.payload_len <= MAX_CONTROL_PAYLOAD as u64);
    }
    assert_eq!(OpCode::from_u8(hdr.opcode.as_u8()), Ok(hdr.opcode));
    assert!(hdr.encoded_len() <= hlen, "re-encoding is longer than the parsed header");
    let mut out = [0u8; MAX_HEADER_LEN];
    assert_eq!(hdr.encode(&mut out[..hdr.encoded_len() - 1]), Err(InsufficientSize { required: hdr.encoded_len() }));
    let n = hdr.encode(&mut out).expect("14 bytes hold any header");
    assert_eq!(n, hdr.encoded_len());
    assert_eq!(FrameHeader::parse(&out[..n], role, allowed_rsv), Ok(Parsed::Complete(hdr, n)));

    if let Some(key) = hdr.mask {
        let payload = &data[hlen..];
        let avail = payload.len().min(hdr.payload_len as usize);
        // Unmask in two pieces split where the input says, from an odd start in memory.
        let split = payload.first().map_or(0, |&b| b as usize % (avail + 1));
        let mut buf = vec![0u8; avail + 1];
        let body = &mut buf[1..];
        body.copy_from_slice(&payload[..avail]);
        let (a, b) = body.split_at_mut(split);
        apply_mask(a, key, 0);
        apply_mask(b, key, split);
        for (i, (&got, &sent)) in body.iter().zip(payload).enumerate() {
            assert_eq!(got, sent ^ key[i % 4], "byte {i} of {avail}, split at {split}");
        }
    }
}

/// Message assembly. Input: `[flags, chunk sizes..., stream...]`.
///
/// The low nibble of `flags` is how many chunk-size bytes follow (none means one byte at
/// a time); bit 4 decodes as a client (unmasked frames). The stream is decoded in one
/// read per buffer fill and again in chunks of the given sizes, cycled; both must give
/// the same events and the same error. Limits: [`MESSAGE_CFG_INLINE_LIMIT`] and friends.
pub fn message(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let n = (flags & 0x0f) as usize;
    if rest.len() < n {
        return;
    }
    let (sizes, stream) = rest.split_at(n);
    let role = if flags & 0x10 == 0 { Role::Server } else { Role::Client };
    let cfg = DecoderConfig {
        role,
        max_message: MESSAGE_CFG_MAX_MESSAGE,
        max_fragments: MESSAGE_CFG_MAX_FRAGMENTS,
        inline_limit: MESSAGE_CFG_INLINE_LIMIT,
    };
    let whole = decode_in_chunks(stream, &mut std::iter::empty(), &cfg);
    let split = if sizes.is_empty() {
        decode_in_chunks(stream, &mut std::iter::repeat(1), &cfg)
    } else {
        decode_in_chunks(stream, &mut sizes.iter().map(|&s| s as usize).cycle(), &cfg)
    };
    assert_eq!(split, whole, "chunks {sizes:?} changed the outcome");
    for ev in &whole.0 {
        match ev {
            OwnedEvent::Text(s) => {
                assert!(std::str::from_utf8(s.as_bytes()).is_ok());
                assert!(s.len() <= cfg.max_message);
            }
            OwnedEvent::Binary(b) | OwnedEvent::Deflated(_, b) | OwnedEvent::DeflatedPart(_, b) => {
                assert!(b.len() <= cfg.max_message)
            }
            OwnedEvent::Ping(b) | OwnedEvent::Pong(b) => assert!(b.len() <= MAX_CONTROL_PAYLOAD),
            OwnedEvent::Close(c) => {
                assert!(c.as_ref().map_or(0, |(_, r)| r.len()) <= MAX_CONTROL_PAYLOAD - 2)
            }
        }
    }
}
