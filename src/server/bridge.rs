//! The hook that links one node's topics to other nodes (the Redis bridge in
//! `wsloop::redis`, or anything else that carries messages between processes).
//!
//! The engine tells a bridge two things: when a topic becomes active or inactive on this
//! node (its first local subscriber arrived, its last one left, over all workers), and
//! every message published on this node ([`Connection::publish`], [`Publisher::publish`]).
//! A bridge hands messages from other nodes back with [`Publisher::publish_local`], which
//! delivers to this node's subscribers and is never forwarded to the bridge again.
//!
//! Both calls run on the publishing or subscribing thread, a worker's event loop among
//! them: they must not block. Queue the work for a thread of the bridge's own.
//!
//! [`Connection::publish`]: super::Connection::publish
//! [`Publisher::publish`]: super::Publisher::publish
//! [`Publisher::publish_local`]: super::Publisher::publish_local

use super::handler::Message;

/// Carries a node's publishes to other nodes and their topics' interest back.
/// Installed with [`Server::with_bridge`](super::Server::with_bridge).
pub trait Bridge: Send + Sync + 'static {
    /// `topic` got its first subscriber on this node (`active`), or lost its last one.
    ///
    /// Called with the server's topic map locked, so calls for one topic arrive in the
    /// order of the transitions; it must not block nor call back into the server.
    fn topic_changed(&self, topic: &str, active: bool);

    /// `msg` was published to `topic` on this node (whether or not it has local
    /// subscribers). Must not block: drop and count rather than wait.
    fn published(&self, topic: &str, msg: Message<'_>);

    /// Whether the bridge numbers messages itself, keeping each room's history where
    /// every node reads it (Redis streams). Then, with `Config::history`, a publish on
    /// this node goes to the bridge only, and reaches this node's subscribers when the
    /// bridge hands it back, numbered, with [`Publisher::publish_numbered`]: every node
    /// sees one order.
    ///
    /// [`Publisher::publish_numbered`]: super::Publisher::publish_numbered
    fn numbers_messages(&self) -> bool {
        false
    }

    /// Reads `topic`'s shared history, off the calling thread, and hands it over with
    /// [`Publisher::history_read`]; called at most once per room at a time, when a
    /// client's position is older than what this node holds, with the history locked:
    /// it must not block nor call back into the server. False: the read cannot be
    /// queued (the waiting clients are told `unavailable`).
    ///
    /// [`Publisher::history_read`]: super::Publisher::history_read
    fn read_history(&self, topic: &str) -> bool {
        let _ = topic;
        false
    }

    /// With [`Bridge::numbers_messages`]: publishes `msg` through the bridge and waits
    /// (bounded) for its place in the room's history, for callers that answer with it
    /// (`POST /publish/<room>`, on the admin thread, never a worker). `None`: not
    /// supported, publish as usual.
    fn publish_and_number(&self, topic: &str, msg: Message<'_>) -> Option<Result<super::Seq, String>> {
        let _ = (topic, msg);
        None
    }

    /// Appends the bridge's metric families, in Prometheus text format, to the admin
    /// listener's `/metrics` page.
    fn write_metrics(&self, out: &mut String) {
        let _ = out;
    }
}
