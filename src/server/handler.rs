//! The application's side of the server: the [`Handler`] trait and what it is given.

use crate::proto::{CloseCode, Request};
use std::borrow::Cow;

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

/// A complete data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// UTF-8 text (validated).
    Text(&'a str),
    /// Binary data.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }
}

/// What a send did with the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum SendStatus {
    /// Queued within `max_backpressure`.
    Queued,
    /// Queued, but the connection's buffer is now over `max_backpressure` (under the
    /// `PauseReading` policy reading stops until it drains).
    QueuedOverCap,
    /// Not queued: the connection is over its cap (policy `Drop` or `Close`) or not open.
    /// The caller still owns the message and may retry after `on_drain`.
    Dropped,
}

/// The handshake is accepted; optionally with a subprotocol the client offered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accept<'r> {
    /// The subprotocol to confirm (must be one of `Request::protocols()`).
    pub protocol: Option<&'r str>,
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
/// Every callback runs on the event loop: do not block in them.
pub trait Handler: Send + 'static {
    /// A valid upgrade request arrived. Return `Ok` to upgrade (sends from here follow
    /// the 101 response) or `Err` to answer with an HTTP error and close.
    fn on_open<'r>(&mut self, conn: &mut super::Connection<'_>, req: &Request<'_, 'r>) -> Result<Accept<'r>, Reject> {
        let _ = (conn, req);
        Ok(Accept::default())
    }

    /// A complete message arrived.
    fn on_message(&mut self, conn: &mut super::Connection<'_>, msg: Message<'_>);

    /// The connection is gone: after a close handshake, a timeout, an error or a reset
    /// (code 1006 when no close frame was exchanged). Called once per opened connection.
    fn on_close(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        let _ = (id, code, reason);
    }

    /// The connection's outgoing buffer became empty after having been non-empty.
    fn on_drain(&mut self, conn: &mut super::Connection<'_>) {
        let _ = conn;
    }

    /// A timer set with `Connection::schedule` fired.
    fn on_timer(&mut self, conn: &mut super::Connection<'_>, token: u64) {
        let _ = (conn, token);
    }
}
