//! The two handlers the `wsloop` binary serves, in the library so that tests and
//! embedders run exactly what the binary runs.

use super::connection::Connection;
use super::handler::{Accept, Handler, Message, Reject};
use crate::proto::Request;

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

/// A room per path (`wsloop rooms`): a client on `/<room>` joins `<room>` (`/` is the
/// room ""), and every data message it sends is published to the room as is, sender
/// included.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rooms;

impl Handler for Rooms {
    type State = ();

    fn on_open<'r>(&mut self, conn: &mut Connection<'_>, req: &Request<'_, 'r>) -> Result<Accept<'r, ()>, Reject> {
        conn.subscribe(room_of(req.path()));
        Ok(Accept::new(()))
    }

    fn on_message(&mut self, conn: &mut Connection<'_>, _: &mut (), msg: Message<'_>) {
        // The connection knows its one room: the first (only) topic it joined.
        if let Some(room) = conn.topics().first().cloned() {
            conn.publish(&room, msg);
        }
    }
}

/// Path `/<room>` is room `<room>`; `/` is the room "".
pub fn room_of(path: &str) -> &str {
    path.strip_prefix('/').unwrap_or(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn room_of_strips_one_slash() {
        assert_eq!(super::room_of("/chat"), "chat");
        assert_eq!(super::room_of("/"), "");
        assert_eq!(super::room_of("//x"), "/x");
    }
}
