//! The two handlers the `wsloop` binary serves, in the library so that tests and
//! embedders run exactly what the binary runs.

use super::connection::Connection;
use super::handler::{Accept, Handler, Message, Reject};
use super::history::Seq;
use super::protocol_v1::{self, Command, PROTOCOL_V1};
use crate::proto::Request;
use crate::session::CloseCause;

/// Echoes every message with its opcode, on any path (`wsloop echo`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    type State = ();

    fn on_open<'r>(&mut self, _: &mut Connection<'_>, _: &Request<'_, 'r>) -> Result<Accept<'r, ()>, Reject> {
        Ok(Accept::new(()))
    }

    #[inline(always)]
    fn on_message(&mut self, conn: &mut Connection<'_>, _: &mut (), msg: Message<'_>) {
        // The server's backpressure policy decides what a full queue means; under the
        // default PauseReading the queue stays bounded, so the status needs no action.
        let _ = conn.send(msg);
    }
}

/// Rooms (`wsloop rooms`): a client on `/<room>` joins `<room>` (`/` is the room ""),
/// and `?room=a&room=b` in the query joins each of those too (`/?room=a` joins only
/// `a`). Every data message a client sends is published as is to each room it joined,
/// sender included.
///
/// Policy comes from the server's [`Config`](super::Config): with `rooms_claim` (and
/// JWT auth) a token may join only the rooms its claim lists, names or `prefix*`
/// patterns, else 403 before the upgrade; with `client_publish` false a client's data
/// message closes it with 1008 (push-only rooms, fed by `POST /publish/<room>`, Redis
/// or a [`Publisher`](super::Publisher)).
///
/// With `Config::history`, a client that offers the subprotocol
/// [`PROTOCOL_V1`](super::PROTOCOL_V1) (`wsloop.v1`) gets each message with its room,
/// offset and epoch, and may resume with `since=<offset>&epoch=<epoch>` in the query
/// (every joined room) or an `s` command; its messages are then commands (see the
/// README). `since=` without `wsloop.v1`: 400.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rooms;

/// How a [`Rooms`] client talks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RoomsState {
    /// Bare payloads both ways.
    #[default]
    Bare,
    /// `wsloop.v1`: offsets and commands.
    V1,
}

/// The subprotocol [`Rooms`] confirms when offered (beside a `bearer.<token>` entry,
/// which is never echoed: a browser needs some subprotocol confirmed).
pub const ROOMS_PROTOCOL: &str = "wsloop";

/// Most rooms one connection may ask for; more: 400.
pub const MAX_ROOMS_PER_CONNECTION: usize = 64;

impl Handler for Rooms {
    type State = RoomsState;

    fn on_open<'r>(
        &mut self,
        conn: &mut Connection<'_>,
        req: &Request<'_, 'r>,
    ) -> Result<Accept<'r, RoomsState>, Reject> {
        let rooms = rooms_of(req.target()).map_err(|e| Reject::new(400, e))?;
        let resume = protocol_v1::resume_of(req.target()).map_err(|e| Reject::new(400, e))?;
        let history = conn.ctx.cfg.history > 0;
        // `bearer.<token>` entries are not listed here: they are never confirmed.
        let mut offered = crate::auth::bearer::client_protocols(req);
        let v1 = history && crate::auth::bearer::client_protocols(req).any(|p| p == PROTOCOL_V1);
        if resume.is_some() && !v1 {
            let why =
                if history { "since= needs the wsloop.v1 subprotocol" } else { "since=: this server keeps no history" };
            return Err(Reject::new(400, why));
        }
        if let Some(claim) = conn.ctx.cfg.rooms_claim.as_deref() {
            check_rooms(conn, claim, &rooms)?;
        }
        for r in &rooms {
            if v1 {
                conn.subscribe_numbered(r, resume);
            } else {
                conn.subscribe(r);
            }
        }
        if v1 {
            return Ok(Accept::new(RoomsState::V1).with_protocol(PROTOCOL_V1));
        }
        // Browsers fail a handshake that offered subprotocols and got none back; one that
        // carries its token as `bearer.<token>` offers `wsloop` beside it to be confirmed.
        let accept = Accept::new(RoomsState::Bare);
        match offered.find(|p| *p == ROOMS_PROTOCOL) {
            Some(p) => Ok(accept.with_protocol(p)),
            None => Ok(accept),
        }
    }

    fn on_message(&mut self, conn: &mut Connection<'_>, state: &mut RoomsState, msg: Message<'_>) {
        let msg = match *state {
            RoomsState::Bare => msg,
            RoomsState::V1 => match protocol_v1::command(msg.as_bytes()) {
                Ok(Command::Publish(_)) => match msg {
                    // "p\n" is ASCII: the rest of a text message is still UTF-8.
                    Message::Text(s) => Message::Text(&s[2..]),
                    Message::Binary(b) => Message::Binary(&b[2..]),
                },
                Ok(Command::Recover { room, since, epoch }) => {
                    if conn.topics().iter().any(|t| **t == *room) {
                        conn.subscribe_numbered(&room, Some(Seq { offset: since, epoch }));
                    } else {
                        log::debug!("wsloop.v1: recovery of room {room:?}, which this client has not joined");
                        conn.close_for(CloseCause::BadCommand);
                    }
                    return;
                }
                Err(e) => {
                    log::debug!("{e}");
                    conn.close_for(CloseCause::BadCommand);
                    return;
                }
            },
        };
        if !conn.ctx.cfg.client_publish {
            conn.close_for(CloseCause::PublishDenied);
            return;
        }
        // Taken out for the loop (publishing does not touch membership): no copy.
        let topics = conn.meta.topics.take();
        for room in topics.iter().flat_map(|t| t.names.iter()) {
            conn.ctx.publish(room, msg);
        }
        conn.meta.topics = topics;
    }
}

/// 403 unless the token's `claim` lists every room in `rooms`.
#[cfg(feature = "jwt")]
fn check_rooms(conn: &Connection<'_>, claim: &str, rooms: &[String]) -> Result<(), Reject> {
    let Some(claims) = conn.claims() else {
        // No JWT verifier configured: nothing to check against.
        return Ok(());
    };
    let Some(serde_json::Value::Array(allowed)) = claims.get(claim) else {
        return Err(Reject::new(403, format!("token has no \"{claim}\" array of rooms")));
    };
    let allowed: Vec<&str> = allowed.iter().filter_map(|v| v.as_str()).collect();
    for room in rooms {
        if !allowed.iter().any(|p| room_allowed(p, room)) {
            return Err(Reject::new(403, format!("room {room:?} not in the token's \"{claim}\" claim")));
        }
    }
    Ok(())
}

#[cfg(not(feature = "jwt"))]
fn check_rooms(_: &Connection<'_>, _: &str, _: &[String]) -> Result<(), Reject> {
    Ok(())
}

/// Whether one entry of a rooms claim lets `room` in: the exact name, or a prefix
/// ending in `*` (`"news:*"` matches `news:` and every room starting with it; `"*"`
/// matches every room).
pub fn room_allowed(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// Path `/<room>` is room `<room>`; `/` is the room "". The query is not part of it.
pub fn room_of(path: &str) -> &str {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    path.strip_prefix('/').unwrap_or(path)
}

/// Every room a request path asks for: the path's own (unless it is `/` and the query
/// names rooms), then each `room=` of the query, in order, without repeats. Both are
/// percent-decoded (`+` as a space), as `POST /publish/<room>` decodes its room.
pub fn rooms_of(path: &str) -> Result<Vec<String>, &'static str> {
    let mut rooms: Vec<String> = Vec::new();
    let (base, query) = path.split_once('?').map_or((path, ""), |(p, q)| (p, q));
    for pair in query.split('&') {
        let Some(v) = pair.strip_prefix("room=") else { continue };
        let room = percent_decode(v).ok_or("a room= value is not valid percent-encoded UTF-8")?;
        if !rooms.contains(&room) {
            rooms.push(room);
        }
    }
    let own = percent_decode(room_of(base)).ok_or("the path is not valid percent-encoded UTF-8")?;
    if (!own.is_empty() || rooms.is_empty()) && !rooms.contains(&own) {
        rooms.insert(0, own);
    }
    if rooms.len() > MAX_ROOMS_PER_CONNECTION {
        return Err("too many rooms in one request");
    }
    Ok(rooms)
}

/// `application/x-www-form-urlencoded` value decoding; `None` for a bad escape or
/// bytes that are not UTF-8.
pub(crate) fn percent_decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_of_strips_one_slash() {
        assert_eq!(room_of("/chat"), "chat");
        assert_eq!(room_of("/"), "");
        assert_eq!(room_of("//x"), "/x");
        assert_eq!(room_of("/chat?room=b"), "chat");
    }

    #[test]
    fn rooms_of_reads_the_path_and_the_query() {
        assert_eq!(rooms_of("/a").unwrap(), ["a"]);
        assert_eq!(rooms_of("/").unwrap(), [""]);
        assert_eq!(rooms_of("/?room=a&room=b").unwrap(), ["a", "b"]);
        assert_eq!(rooms_of("/a?room=b").unwrap(), ["a", "b"]);
        assert_eq!(rooms_of("/a?room=a&token=x&room=b&room=b").unwrap(), ["a", "b"]);
        assert_eq!(rooms_of("/?room=news%3Asports&room=a+b").unwrap(), ["news:sports", "a b"]);
        assert!(rooms_of("/?room=%zz").is_err());
        assert!(rooms_of("/?room=%ff").is_err());
        assert_eq!(rooms_of("/a%20b").unwrap(), ["a b"]);
        let many: String = (0..65).map(|i| format!("room=r{i}&")).collect();
        assert!(rooms_of(&format!("/?{many}")).is_err());
    }

    #[test]
    fn claim_patterns() {
        assert!(room_allowed("news:*", "news:sports"));
        assert!(room_allowed("news:*", "news:"));
        assert!(!room_allowed("news:*", "new"));
        assert!(room_allowed("lobby", "lobby"));
        assert!(!room_allowed("lobby", "lobby2"));
        assert!(room_allowed("*", "anything"));
    }
}
