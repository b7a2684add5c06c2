//! The `wsloop.v1` subprotocol's messages: each room message with its room, offset and
//! epoch, the recovery outcomes, and the client's commands.
//!
//! Server to client (fields separated by one space, numbers in decimal, the room
//! percent-encoded where it holds `%`, `+`, a space or a control character):
//!
//! ```text
//! m <room> <offset> <epoch>\n<payload>     a room message, same opcode as published
//!                                          (offset 0, epoch 0: not kept, e.g. a
//!                                          backend's plain PUBLISH beside Redis streams)
//! r <room> <offset> <epoch>                recovery done: every message up to <offset>
//!                                          was sent, live ones follow (text)
//! l <room> <offset> <epoch> <why>          history cannot fill the gap; live ones
//!                                          follow <offset> in <epoch> (text); <why> is
//!                                          epoch, gap, slow or unavailable
//! ```
//!
//! Client to server (text unless publishing binary):
//!
//! ```text
//! p\n<payload>                             publish <payload> to every joined room
//! s <room> <since> <epoch>                 recover <room> (joined) after offset <since>
//! ```

use super::apps::percent_decode;
use super::history::{Lost, Seq};
use std::fmt::Write as _;

/// The subprotocol name a client offers for offsets and recovery.
pub const PROTOCOL_V1: &str = "wsloop.v1";

/// The header of a room message: `m <room> <offset> <epoch>\n`.
pub(crate) fn data_header(room: &str, seq: Seq) -> String {
    let mut h = String::with_capacity(room.len() + 32);
    h.push_str("m ");
    encode_room(&mut h, room);
    let _ = writeln!(h, " {} {}", seq.offset, seq.epoch);
    h
}

/// The frame of a room message for a `wsloop.v1` client, from the plain frame every
/// bare subscriber gets (same opcode; payload behind the header).
pub(crate) fn data_frame(room: &str, seq: Seq, plain: &[u8]) -> Vec<u8> {
    use crate::proto::frame::{server_header, OpCode};
    let hl = match plain.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    let op = if plain.first().is_some_and(|b| b & 0x0f == 1) { OpCode::Text } else { OpCode::Binary };
    let payload = plain.get(hl..).unwrap_or(&[]);
    let header = data_header(room, seq);
    let len = header.len() + payload.len();
    let (h, n) = server_header(op, len);
    let mut f = Vec::with_capacity(n + len);
    f.extend_from_slice(&h[..n]);
    f.extend_from_slice(header.as_bytes());
    f.extend_from_slice(payload);
    f
}

/// `r <room> <offset> <epoch>`.
pub(crate) fn recovered(room: &str, seq: Seq) -> String {
    let mut h = String::from("r ");
    encode_room(&mut h, room);
    let _ = write!(h, " {} {}", seq.offset, seq.epoch);
    h
}

/// `l <room> <offset> <epoch> <why>`.
pub(crate) fn lost(room: &str, seq: Seq, why: Lost) -> String {
    let mut h = String::from("l ");
    encode_room(&mut h, room);
    let _ = write!(h, " {} {} {}", seq.offset, seq.epoch, why.label());
    h
}

fn encode_room(out: &mut String, room: &str) {
    for c in room.chars() {
        if c == '%' || c == '+' || c == ' ' || c.is_control() {
            let mut b = [0u8; 4];
            for byte in c.encode_utf8(&mut b).bytes() {
                let _ = write!(out, "%{byte:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// A client's command in `wsloop.v1`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    /// Publish the payload to every joined room.
    Publish(&'a [u8]),
    /// Recover a joined room after `since` in `epoch`.
    Recover { room: String, since: u64, epoch: u64 },
}

/// Reads a client message; `Err` names what is wrong.
pub(crate) fn command(msg: &[u8]) -> Result<Command<'_>, &'static str> {
    if let Some(payload) = msg.strip_prefix(b"p\n") {
        return Ok(Command::Publish(payload));
    }
    let Some(rest) = msg.strip_prefix(b"s ") else {
        return Err("wsloop.v1: a message must start with \"p\\n\" or \"s \"");
    };
    let rest = std::str::from_utf8(rest).map_err(|_| "wsloop.v1: s command is not UTF-8")?;
    let mut f = rest.split(' ');
    let (Some(room), Some(since), Some(epoch), None) = (f.next(), f.next(), f.next(), f.next()) else {
        return Err("wsloop.v1: expected s <room> <since> <epoch>");
    };
    let room = percent_decode(room).ok_or("wsloop.v1: the room is not valid percent-encoded UTF-8")?;
    let since = since.parse().map_err(|_| "wsloop.v1: <since> is not a number")?;
    let epoch = epoch.parse().map_err(|_| "wsloop.v1: <epoch> is not a number")?;
    Ok(Command::Recover { room, since, epoch })
}

/// `since=<offset>` and `epoch=<epoch>` in a request's query: both or neither.
pub(crate) fn resume_of(target: &str) -> Result<Option<Seq>, &'static str> {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let (mut since, mut epoch) = (None, None);
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("since=") {
            since = Some(v.parse::<u64>().map_err(|_| "since= is not a number")?);
        } else if let Some(v) = pair.strip_prefix("epoch=") {
            epoch = Some(v.parse::<u64>().map_err(|_| "epoch= is not a number")?);
        }
    }
    match (since, epoch) {
        (Some(offset), Some(epoch)) => Ok(Some(Seq { offset, epoch })),
        (None, None) => Ok(None),
        _ => Err("since= and epoch= go together"),
    }
}

/// The body of the `v1_command` fuzz target: a `wsloop.v1` client's message, untrusted
/// input. Never panics; a recovery command that parses re-encodes (room percent-encoded,
/// numbers canonical) to a message that parses to the same command; a publish keeps its
/// payload byte for byte.
#[doc(hidden)]
pub fn fuzz_command(data: &[u8]) {
    match command(data) {
        Ok(Command::Publish(p)) => assert_eq!(p, &data[2..]),
        Ok(Command::Recover { room, since, epoch }) => {
            let mut again = String::from("s ");
            encode_room(&mut again, &room);
            let _ = write!(again, " {since} {epoch}");
            assert_eq!(command(again.as_bytes()), Ok(Command::Recover { room, since, epoch }), "{again:?}");
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_documented_form() {
        let seq = Seq { offset: 42, epoch: 1700000000123456 };
        assert_eq!(data_header("news", seq), "m news 42 1700000000123456\n");
        assert_eq!(data_header("", seq), "m  42 1700000000123456\n");
        assert_eq!(data_header("a b%+\n", seq), "m a%20b%25%2B%0A 42 1700000000123456\n");
        assert_eq!(recovered("news", seq), "r news 42 1700000000123456");
        assert_eq!(lost("news", seq, Lost::Gap), "l news 42 1700000000123456 gap");
    }

    #[test]
    fn a_data_frame_wraps_the_plain_one() {
        use crate::server::Message;
        let seq = Seq { offset: 3, epoch: 9 };
        let plain = crate::server::pubsub::frame_message(Message::Text("hi"));
        assert_eq!(data_frame("r", seq, &plain), b"\x81\x0am r 3 9\nhi");
        let big = vec![7u8; 300];
        let plain = crate::server::pubsub::frame_message(Message::Binary(&big));
        let f = data_frame("r", seq, &plain);
        assert_eq!(&f[..4], &[0x82, 126, 0x01, 0x34]);
        assert_eq!(&f[4..12], b"m r 3 9\n");
        assert_eq!(&f[12..], &big[..]);
    }

    #[test]
    fn an_encoded_room_decodes_back() {
        let mut enc = String::new();
        encode_room(&mut enc, "a b%+\n\u{e9}");
        assert_eq!(percent_decode(&enc).as_deref(), Some("a b%+\n\u{e9}"));
    }

    #[test]
    fn client_commands() {
        assert_eq!(command(b"p\nhello"), Ok(Command::Publish(b"hello")));
        assert_eq!(command(b"p\n"), Ok(Command::Publish(b"")));
        assert_eq!(command(b"s a%20b 10 7"), Ok(Command::Recover { room: "a b".into(), since: 10, epoch: 7 }));
        assert!(command(b"hello").is_err());
        assert!(command(b"s a 10").is_err());
        assert!(command(b"s a x 7").is_err());
        assert!(command(b"s a 1 2 3").is_err());
    }

    #[test]
    fn resume_parameters() {
        assert_eq!(resume_of("/a?since=5&epoch=9"), Ok(Some(Seq { offset: 5, epoch: 9 })));
        assert_eq!(resume_of("/a?room=b"), Ok(None));
        assert!(resume_of("/a?since=5").is_err());
        assert!(resume_of("/a?since=x&epoch=1").is_err());
    }
}
