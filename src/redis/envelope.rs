//! The bytes a node puts in a Redis message: who sent it, what kind of WebSocket
//! message it is, and the payload, unchanged.
//!
//! ```text
//!  0      1         2        3 .. 11            11 .. 19            19 ..
//! +------+---------+--------+------------------+-------------------+-----------------+
//! | 'w'  | version | opcode | node id (u64 BE) | sequence (u64 BE) | payload         |
//! | 0x77 |  0x02   | 1 or 2 |                  |                   | (text is UTF-8) |
//! +------+---------+--------+------------------+-------------------+-----------------+
//! ```
//!
//! The opcode is the WebSocket one: 1 text, 2 binary. A node drops messages that carry
//! its own id: Redis echoes a node's publishes back to it, and the node has already
//! delivered them locally. Id 0 belongs to no node.
//!
//! The sequence number counts a node's messages on one topic (1, 2, 3, ...): a receiver
//! delivers each (node, topic) stream in order, drops what arrives late or twice (a
//! publish resent after a `MOVED`, a failover), and counts gaps as lost
//! (`wsloop_redis_messages_lost_total`); see `order.rs`. Version 1 envelopes (no
//! sequence number, from nodes of earlier releases) are still read, and delivered as
//! they come.
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
pub const HEADER_LEN: usize = 19;
/// Where the sequence number sits in the header (the bridge's thread fills it in).
pub const SEQ_AT: usize = 11;
/// Bytes before the payload in a version 1 envelope.
const V1_HEADER_LEN: usize = 11;
const MAGIC: u8 = b'w';
const VERSION: u8 = 2;
const TEXT: u8 = 1;
const BINARY: u8 = 2;

/// A decoded envelope, borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The publishing node (0: not a node).
    pub node: u64,
    /// The message's place in its node's stream on the topic (`None`: version 1).
    pub seq: Option<u64>,
    /// The message, text checked to be UTF-8.
    pub msg: Message<'a>,
}

/// Why bytes from Redis are not an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Shorter than the header.
    Short,
    /// Not 'w' then version 1 or 2.
    BadMagic,
    /// An opcode other than 1 (text) or 2 (binary).
    BadOpcode(u8),
    /// A text message that is not UTF-8 (it would fail every client with 1007).
    BadUtf8,
}

/// The header for `msg` from `node`, number `seq` of its stream; the payload follows it.
pub fn header(node: u64, seq: u64, msg: Message<'_>) -> [u8; HEADER_LEN] {
    let op = match msg {
        Message::Text(_) => TEXT,
        Message::Binary(_) => BINARY,
    };
    let mut h = [0u8; HEADER_LEN];
    h[0] = MAGIC;
    h[1] = VERSION;
    h[2] = op;
    h[3..SEQ_AT].copy_from_slice(&node.to_be_bytes());
    h[SEQ_AT..].copy_from_slice(&seq.to_be_bytes());
    h
}

/// The whole envelope of `msg` from `node`, number `seq` of its stream.
pub fn encode(node: u64, seq: u64, msg: Message<'_>) -> Vec<u8> {
    let p = msg.as_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + p.len());
    out.extend_from_slice(&header(node, seq, msg));
    out.extend_from_slice(p);
    out
}

/// Reads an envelope.
pub fn decode(buf: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    if buf.len() < V1_HEADER_LEN {
        return Err(EnvelopeError::Short);
    }
    let len = match (buf[0], buf[1]) {
        (MAGIC, 1) => V1_HEADER_LEN,
        (MAGIC, VERSION) if buf.len() < HEADER_LEN => return Err(EnvelopeError::Short),
        (MAGIC, VERSION) => HEADER_LEN,
        _ => return Err(EnvelopeError::BadMagic),
    };
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let node = u64_at(3);
    let seq = (len == HEADER_LEN).then(|| u64_at(SEQ_AT));
    let p = &buf[len..];
    let msg = match buf[2] {
        TEXT => Message::Text(std::str::from_utf8(p).map_err(|_| EnvelopeError::BadUtf8)?),
        BINARY => Message::Binary(p),
        other => return Err(EnvelopeError::BadOpcode(other)),
    };
    Ok(Envelope { node, seq, msg })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = encode(0x0102030405060708, 9, Message::Text("héllo"));
        assert_eq!(&e[..HEADER_LEN], b"w\x02\x01\x01\x02\x03\x04\x05\x06\x07\x08\0\0\0\0\0\0\0\x09");
        let want = Envelope { node: 0x0102030405060708, seq: Some(9), msg: Message::Text("héllo") };
        assert_eq!(decode(&e), Ok(want));
        let e = encode(7, 1, Message::Binary(&[0, 255]));
        assert_eq!(decode(&e), Ok(Envelope { node: 7, seq: Some(1), msg: Message::Binary(&[0, 255]) }));
        let e = encode(7, 1, Message::Binary(&[]));
        assert_eq!(e.len(), HEADER_LEN);
        assert_eq!(decode(&e).map(|e| e.msg), Ok(Message::Binary(&[])));
        // Version 1, as nodes before sequence numbers sent it: read, without a number.
        let v1 = b"w\x01\x01\0\0\0\0\0\0\0\x07hi";
        assert_eq!(decode(v1), Ok(Envelope { node: 7, seq: None, msg: Message::Text("hi") }));
    }

    #[test]
    fn refuses_what_is_not_an_envelope() {
        assert_eq!(decode(b"w\x01\x01"), Err(EnvelopeError::Short));
        assert_eq!(decode(b"hello world, plain text"), Err(EnvelopeError::BadMagic));
        assert_eq!(decode(b"w\x03\x01\0\0\0\0\0\0\0\0"), Err(EnvelopeError::BadMagic));
        assert_eq!(decode(b"w\x02\x01\0\0\0\0\0\0\0\0"), Err(EnvelopeError::Short));
        assert_eq!(decode(b"w\x01\x09\0\0\0\0\0\0\0\0"), Err(EnvelopeError::BadOpcode(9)));
        assert_eq!(decode(b"w\x01\x01\0\0\0\0\0\0\0\0\xff"), Err(EnvelopeError::BadUtf8));
    }
}
