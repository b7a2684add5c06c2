//! Room history in Redis: one stream per room, appended and published in one Lua
//! script ([`APPEND_SCRIPT`]), and the numbered envelope that script publishes.
//!
//! Keys: room `R`'s stream is `{<prefix>R}:h`. Its hash tag is the room's channel name
//! (`<prefix>R`, unchanged), so in Redis Cluster the stream and the room's channels
//! hash to one slot. Entry `N-1` is the room's message at offset `N`, with fields `e`
//! (epoch), `k` (`t` text, `b` binary) and `d` (payload).
//!
//! The script publishes on the room's node channel (`<prefix>\0R`), in the same atomic
//! step, a numbered envelope:
//!
//! ```text
//! w2 <k> <epoch> <offset>\n<payload>
//! ```
//!
//! `w` then `2` never begins a node envelope of version 1 (`w`, 0x01), so both share the
//! channel.

use super::command::{Flavor, Outgoing};
use super::resp;
use crate::server::{Message, Seq};

/// The script every publish to a room with history goes through (see the README for the
/// `EVALSHA` call a backend makes).
pub const APPEND_SCRIPT: &str = include_str!("append.lua");

/// Room `room`'s stream key: `{<prefix><room>}:h`.
pub fn stream_key(prefix: &str, room: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + room.len() + 4);
    k.push(b'{');
    k.extend_from_slice(prefix.as_bytes());
    k.extend_from_slice(room.as_bytes());
    k.extend_from_slice(b"}:h");
    k
}

/// The publish of `msg` to `room` through [`APPEND_SCRIPT`], for the bridge's queue.
pub(crate) fn append(
    flavor: Flavor,
    prefix: &str,
    room: &str,
    msg: Message<'_>,
    keep: usize,
    ttl: Option<std::time::Duration>,
) -> Outgoing {
    let mut cmd = Vec::with_capacity(append_len(prefix, room, msg.as_bytes().len()));
    let ttl_ms = ttl.map_or(0, |t| t.as_millis().max(1) as u64);
    append_command(&mut cmd, flavor, prefix, room, msg, keep, ttl_ms);
    let slot = if flavor == Flavor::Cluster { super::command::topic_slot(prefix, room) } else { 0 };
    let key_end = cmd.len();
    Outgoing { slot, cmd, seq_at: None, topic: key_end..key_end }
}

/// The most bytes [`append`] makes for a payload of `payload` bytes.
pub(crate) fn append_len(prefix: &str, room: &str, payload: usize) -> usize {
    APPEND_OVERHEAD + 2 * (prefix.len() + room.len() + 6) + payload
}

/// The `EVAL` of [`APPEND_SCRIPT`] for `msg` in `room`, keeping `keep` messages that live
/// `ttl_ms` after the last one (0: for ever). Its reply is `[offset, epoch]` (an integer
/// and a decimal string).
/// In a cluster, the room's node channel starts with the hash tag of the room
/// channel's slot (as `command::publish` makes it), and the script uses `SPUBLISH`.
pub(crate) fn append_command(
    out: &mut Vec<u8>,
    flavor: Flavor,
    prefix: &str,
    room: &str,
    msg: Message<'_>,
    keep: usize,
    ttl_ms: u64,
) {
    let kind: &[u8] = match msg {
        Message::Text(_) => b"t",
        Message::Binary(_) => b"b",
    };
    let cluster = flavor == Flavor::Cluster;
    let slot = if cluster { super::command::topic_slot(prefix, room) } else { 0 };
    let (tag, tag_len) = super::command::tag(flavor, slot);
    resp::command(out, if cluster { 10 } else { 9 });
    resp::arg(out, &[b"EVAL"]);
    resp::arg(out, &[APPEND_SCRIPT.as_bytes()]);
    resp::arg(out, &[b"1"]);
    resp::arg(out, &[&stream_key(prefix, room)]);
    resp::arg(out, &[&tag[..tag_len], prefix.as_bytes(), super::envelope::NODE_CHANNEL_MARK, room.as_bytes()]);
    resp::arg(out, &[kind]);
    resp::arg(out, &[msg.as_bytes()]);
    resp::arg(out, &[keep.to_string().as_bytes()]);
    resp::arg(out, &[ttl_ms.to_string().as_bytes()]);
    if cluster {
        resp::arg(out, &[b"SPUBLISH"]);
    }
}

/// Bytes of [`append_command`] beyond the payload and room (twice: key and channel).
pub(crate) const APPEND_OVERHEAD: usize = 10 * 16 + APPEND_SCRIPT.len() + 64;

/// Whether node-channel bytes are a numbered envelope.
pub fn is_numbered(data: &[u8]) -> bool {
    data.starts_with(b"w2 ")
}

/// Reads a numbered envelope: the message and its place. `None`: malformed.
pub fn decode_numbered(data: &[u8]) -> Option<(Message<'_>, Seq)> {
    let rest = data.strip_prefix(b"w2 ")?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&rest[..nl]).ok()?;
    let payload = &rest[nl + 1..];
    let mut f = head.split(' ');
    let (kind, epoch, offset) = (f.next()?, f.next()?, f.next()?);
    if f.next().is_some() {
        return None;
    }
    let seq = Seq { offset: offset.parse().ok()?, epoch: epoch.parse().ok()? };
    if !valid_offset(seq.offset) {
        return None;
    }
    Some((message(kind.as_bytes(), payload)?, seq))
}

/// A message from its kind field (`t` or `b`) and payload; text must be UTF-8.
pub(crate) fn message<'a>(kind: &[u8], payload: &'a [u8]) -> Option<Message<'a>> {
    match kind {
        b"t" => std::str::from_utf8(payload).ok().map(Message::Text),
        b"b" => Some(Message::Binary(payload)),
        _ => None,
    }
}

/// A stream entry id `N-1` as offset `N`.
pub(crate) fn offset_of(id: &[u8]) -> Option<u64> {
    let id = std::str::from_utf8(id).ok()?;
    id.split('-').next()?.parse().ok().filter(|&o| valid_offset(o))
}

/// Offsets the script makes: from 1, below 2^53 (Lua counts in doubles). Anything else
/// from Redis is not ours.
fn valid_offset(o: u64) -> bool {
    (1..1 << 53).contains(&o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_channels_hash_tag() {
        assert_eq!(stream_key("wsloop:", "news"), b"{wsloop:news}:h");
    }

    #[test]
    fn numbered_envelopes() {
        let (m, s) = decode_numbered(b"w2 t 1700000000123456 42\nhello").unwrap();
        assert_eq!((m, s), (Message::Text("hello"), Seq { offset: 42, epoch: 1700000000123456 }));
        let (m, _) = decode_numbered(b"w2 b 1 1\n\xff\n").unwrap();
        assert_eq!(m, Message::Binary(b"\xff\n"));
        assert!(decode_numbered(b"w2 t 1 1\n\xff").is_none(), "text must be UTF-8");
        assert!(decode_numbered(b"w2 x 1 1\n").is_none());
        assert!(decode_numbered(b"w2 t 1\nhi").is_none());
        assert!(decode_numbered(b"w2 t 1 0\nhi").is_none(), "offsets start at 1");
        assert!(decode_numbered(b"w2 t 1 18446744073709551615\nhi").is_none());
        assert!(!is_numbered(b"w\x01\x01........"));
        assert_eq!(offset_of(b"17-1"), Some(17));
    }

    #[test]
    fn the_append_command_is_one_eval() {
        let mut out = Vec::new();
        append_command(&mut out, Flavor::Single, "p:", "r", Message::Text("hi"), 100, 0);
        let s = String::from_utf8_lossy(&out);
        assert!(s.starts_with("*9\r\n$4\r\nEVAL\r\n"));
        assert!(s.contains("{p:r}:h"));
        assert!(s.contains("p:\0r"));
        // The bridge reserves this much: the room and prefix twice (key, channel), the payload.
        assert!(out.len() <= APPEND_OVERHEAD + 2 * ("p:".len() + 1 + 1 + 2) + 2);
    }
}
