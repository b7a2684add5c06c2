//! The application's side of the server: the [`Handler`] trait and what it is given.

use super::Connection;
use crate::proto::{CloseCode, Request};
use std::borrow::Cow;

pub use crate::session::{Message, SendStatus};

/// Identifies a connection for its whole life, across workers. Never reused while the
/// server runs (the slab key is paired with a generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// The worker that owns the connection.
    pub worker: u16,
    /// Slab key within the worker.
    pub key: u32,
    /// Generation: distinguishes connections that reused the same key.
    pub generation: u32,
}

/// The handshake is accepted, with the connection's state and optionally a subprotocol
/// the client offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accept<'r, S> {
    /// The subprotocol to confirm (must be one of `Request::protocols()`; anything else
    /// is left out of the response).
    pub protocol: Option<&'r str>,
    /// The application's state for this connection, handed to every later callback.
    pub state: S,
}

impl<'r, S> Accept<'r, S> {
    /// Accepts with `state` and no subprotocol.
    pub fn new(state: S) -> Self {
        Accept { protocol: None, state }
    }

    /// Confirms `protocol` (one the client offered).
    pub fn with_protocol(mut self, protocol: &'r str) -> Self {
        self.protocol = Some(protocol);
        self
    }
}

impl<S: Default> Default for Accept<'_, S> {
    fn default() -> Self {
        Accept::new(S::default())
    }
}

/// The handshake is refused with an HTTP status; nothing is upgraded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// HTTP status, e.g. 401, 403, 404, 503.
    pub status: u16,
    /// Short text for the response body and the log line.
    pub reason: Cow<'static, str>,
    /// Extra header lines, without CRLF, e.g. `WWW-Authenticate: Bearer`.
    pub headers: Vec<String>,
}

impl Reject {
    /// A refusal with `status` and a short reason.
    pub fn new(status: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        Reject { status, reason: reason.into(), headers: Vec::new() }
    }

    /// Adds a header line (`Name: value`).
    pub fn with_header(mut self, line: impl Into<String>) -> Self {
        self.headers.push(line.into());
        self
    }
}

/// Callbacks of one worker. Each worker gets its own handler (from the factory passed to
/// `Server::run`), so a handler needs no locks; share state across workers yourself.
///
/// Each connection carries a [`Handler::State`], made by `on_open` and handed to every
/// later callback, `on_close` included (by value): no `HashMap<ConnId, _>` needed. A
/// zero-sized state (`()`) costs nothing per connection.
///
/// Every callback runs on the event loop: do not block in them.
pub trait Handler: Send + 'static {
    /// Per-connection application state. It is `Default` so that a connection holds
    /// one before `on_open` makes the real one: a zero-sized state then costs no byte
    /// per connection. A state with no sensible default can be an `Option`.
    type State: Default;

    /// A valid upgrade request arrived and passed the server's own checks. Return `Ok`
    /// with the connection's state to upgrade (sends from here follow the 101
    /// response), or `Err` to answer with an HTTP error and close.
    fn on_open<'r>(
        &mut self,
        conn: &mut Connection<'_>,
        req: &Request<'_, 'r>,
    ) -> Result<Accept<'r, Self::State>, Reject>;

    /// A complete message arrived.
    fn on_message(&mut self, conn: &mut Connection<'_>, state: &mut Self::State, msg: Message<'_>);

    /// The connection is gone: after a close handshake, a timeout, an error or a reset
    /// (code 1006 when no close frame was exchanged). Called once per upgraded
    /// connection, with its state.
    fn on_close(&mut self, id: ConnId, state: Self::State, code: CloseCode, reason: &str) {
        let _ = (id, state, code, reason);
    }

    /// The connection's outgoing buffer drained after having been over its cap or
    /// blocked by the peer.
    fn on_drain(&mut self, conn: &mut Connection<'_>, state: &mut Self::State) {
        let _ = (conn, state);
    }

    /// A timer set with `Connection::schedule` fired.
    fn on_timer(&mut self, conn: &mut Connection<'_>, state: &mut Self::State, token: u64) {
        let _ = (conn, state, token);
    }
}
