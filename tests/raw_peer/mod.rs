//! A hand-rolled WebSocket client over a blocking `std::net::TcpStream`, written from
//! RFC 6455 and independent of `wsloop::proto`: for what a normal client library will
//! not do (split the handshake, send half a frame, send an unmasked frame) and for loops
//! that must not allocate.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The key and accept value from the example in RFC 6455 section 1.3.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A fixed masking key: enough for tests, and it keeps frames reproducible.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A valid upgrade request for `addr`.
pub fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET /chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Connects with generous timeouts (a test hangs for at most `timeout` per call).
pub fn tcp(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(timeout)).expect("read timeout");
    s.set_write_timeout(Some(timeout)).expect("write timeout");
    s
}

/// Reads an HTTP response head one byte at a time, so nothing after the blank line (the
/// first frames) is consumed. At most 16 KiB.
pub fn read_head(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 << 10 {
            return Err(io::Error::other("response head over 16 KiB"));
        }
        match s.read(&mut b)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => head.push(b[0]),
        }
    }
    Ok(head)
}

/// The status code of an HTTP response head.
pub fn status(head: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or("");
    line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {line:?}"))
}

/// The value of header `name` (case-insensitive) in a response head.
pub fn header(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head).lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// Checks a head is a valid 101 for [`KEY`].
pub fn assert_switching(head: &[u8]) {
    assert_eq!(status(head), 101, "{}", String::from_utf8_lossy(head));
    assert_eq!(header(head, "sec-websocket-accept").as_deref(), Some(ACCEPT), "{}", String::from_utf8_lossy(head));
}

/// Connects and completes the opening handshake.
pub fn connect(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let mut s = tcp(addr, timeout);
    s.write_all(upgrade_request(addr).as_bytes()).expect("write request");
    let head = read_head(&mut s).expect("read response head");
    assert_switching(&head);
    s
}

/// Header bytes for a client frame (masked with [`MASK`]).
pub fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 6,
        126..=65535 => 8,
        _ => 14,
    }
}

/// Writes a frame into `out` (masked with `mask` when given) without allocating;
/// returns its length. Panics if `out` is too small.
pub fn encode_into(out: &mut [u8], fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> usize {
    let len = payload.len();
    out[0] = (if fin { 0x80 } else { 0 }) | opcode;
    let m = if mask.is_some() { 0x80 } else { 0 };
    let mut i = if len <= 125 {
        out[1] = m | len as u8;
        2
    } else if len <= 65535 {
        out[1] = m | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = m | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[i..i + 4].copy_from_slice(&key);
        i += 4;
        for (j, (o, p)) in out[i..i + len].iter_mut().zip(payload).enumerate() {
            *o = p ^ key[j % 4];
        }
    } else {
        out[i..i + len].copy_from_slice(payload);
    }
    i + len
}

/// A masked client frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; header_len(payload.len()) + payload.len()];
    let n = encode_into(&mut out, fin, opcode, payload, Some(MASK));
    out.truncate(n);
    out
}

/// An unmasked frame (what a client must never send).
pub fn unmasked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; header_len(payload.len()) + payload.len()];
    let n = encode_into(&mut out, fin, opcode, payload, None);
    out.truncate(n);
    out
}

/// Reads one server frame into `buf` without allocating; returns (fin, opcode, payload
/// length). Fails on a masked frame (servers must not mask) or one larger than `buf`.
pub fn read_frame(s: &mut impl Read, buf: &mut [u8]) -> io::Result<(bool, u8, usize)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    if h[1] & 0x80 != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "masked frame from server"));
    }
    let len = match h[1] & 0x7f {
        126 => {
            let mut e = [0u8; 2];
            s.read_exact(&mut e)?;
            u16::from_be_bytes(e) as usize
        }
        127 => {
            let mut e = [0u8; 8];
            s.read_exact(&mut e)?;
            u64::from_be_bytes(e) as usize
        }
        n => n as usize,
    };
    if len > buf.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame larger than the buffer"));
    }
    s.read_exact(&mut buf[..len])?;
    Ok((h[0] & 0x80 != 0, h[0] & 0x0f, len))
}

/// The close code in a close frame's payload (1005 when empty).
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

/// Reads until the peer closes the TCP connection; true on EOF (or reset), false if it
/// stayed open until the read timeout (or 30 s of data). Discards what arrives.
pub fn wait_eof(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}
