//! The bytes a node puts in a Redis message: who sent it, what kind of WebSocket
//! message it is, and the payload, unchanged.
//!
//! ```text
//!  0      1         2        3 .. 11            11 ..
//! +------+---------+--------+------------------+-----------------+
//! | 'w'  | version | opcode | node id (u64 BE) | payload         |
//! | 0x77 |  0x01   | 1 or 2 |                  | (text is UTF-8) |
//! +------+---------+--------+------------------+-----------------+
//! ```
//!
//! The opcode is the WebSocket one: 1 text, 2 binary. A node drops messages that carry
//! its own id: Redis echoes a node's publishes back to it, and the node has already
//! delivered them locally. Id 0 belongs to no node.
//!
//! Envelopes travel on a channel of their own per topic, the prefix, then
//! [`NODE_CHANNEL_MARK`] (a NUL byte, which no room name from a request path contains),
//! then the topic; never on the topic's channel (the prefix, then the topic): that one carries what backends publish with any
//! Redis client, delivered unchanged (text when it is UTF-8, binary otherwise). So a
//! backend's payload is never taken for an envelope, whatever bytes it starts with.

use crate::server::Message;

/// Between the prefix and the topic in a node channel's name.
pub const NODE_CHANNEL_MARK: &[u8] = b"\0";

/// Bytes before the payload.
pub const HEADER_LEN: usize = 11;
const MAGIC: u8 = b'w';
const VERSION: u8 = 1;
const TEXT: u8 = 1;
const BINARY: u8 = 2;

/// A decoded envelope, borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The publishing node (0: not a node).
    pub node: u64,
    /// The message, text checked to be UTF-8.
    pub msg: Message<'a>,
}

/// Why bytes from Redis are not an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Shorter than the header.
    Short,
    /// Not 'w' then version 1.
    BadMagic,
    /// An opcode other than 1 (text) or 2 (binary).
    BadOpcode(u8),
    /// A text message that is not UTF-8 (it would fail every client with 1007).
    BadUtf8,
}

/// The header for `msg` from `node`; the payload follows it.
pub fn header(node: u64, msg: Message<'_>) -> [u8; HEADER_LEN] {
    let op = match msg {
        Message::Text(_) => TEXT,
        Message::Binary(_) => BINARY,
    };
    let mut h = [0u8; HEADER_LEN];
    h[0] = MAGIC;
    h[1] = VERSION;
    h[2] = op;
    h[3..].copy_from_slice(&node.to_be_bytes());
    h
}

/// The whole envelope of `msg` from `node`.
pub fn encode(node: u64, msg: Message<'_>) -> Vec<u8> {
    let p = msg.as_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + p.len());
    out.extend_from_slice(&header(node, msg));
    out.extend_from_slice(p);
    out
}

/// Reads an envelope.
pub fn decode(buf: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    if buf.len() < HEADER_LEN {
        return Err(EnvelopeError::Short);
    }
    if buf[0] != MAGIC || buf[1] != VERSION {
        return Err(EnvelopeError::BadMagic);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&buf[3..HEADER_LEN]);
    let node = u64::from_be_bytes(id);
    let p = &buf[HEADER_LEN..];
    let msg = match buf[2] {
        TEXT => Message::Text(std::str::from_utf8(p).map_err(|_| EnvelopeError::BadUtf8)?),
        BINARY => Message::Binary(p),
        other => return Err(EnvelopeError::BadOpcode(other)),
    };
    Ok(Envelope { node, msg })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = encode(0x0102030405060708, Message::Text("héllo"));
        assert_eq!(&e[..HEADER_LEN], b"w\x01\x01\x01\x02\x03\x04\x05\x06\x07\x08");
        assert_eq!(decode(&e), Ok(Envelope { node: 0x0102030405060708, msg: Message::Text("héllo") }));
        let e = encode(7, Message::Binary(&[0, 255]));
        assert_eq!(decode(&e), Ok(Envelope { node: 7, msg: Message::Binary(&[0, 255]) }));
        let e = encode(7, Message::Binary(&[]));
        assert_eq!(e.len(), HEADER_LEN);
        assert_eq!(decode(&e).map(|e| e.msg), Ok(Message::Binary(&[])));
    }

    #[test]
    fn refuses_what_is_not_an_envelope() {
        assert_eq!(decode(b"w\x01\x01"), Err(EnvelopeError::Short));
        assert_eq!(decode(b"hello world, plain text"), Err(EnvelopeError::BadMagic));
        assert_eq!(decode(b"w\x02\x01\0\0\0\0\0\0\0\0"), Err(EnvelopeError::BadMagic));
        assert_eq!(decode(b"w\x01\x09\0\0\0\0\0\0\0\0"), Err(EnvelopeError::BadOpcode(9)));
        assert_eq!(decode(b"w\x01\x01\0\0\0\0\0\0\0\0\xff"), Err(EnvelopeError::BadUtf8));
    }
}
