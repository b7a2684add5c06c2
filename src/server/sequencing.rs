//! Publishing into rooms with history (`Config::history`): each message is numbered
//! and handed to the workers under the history's lock, so that every worker, and so
//! every client, sees one order; with a bridge that numbers messages (Redis streams),
//! the bridge's numbering is that order.

use super::handler::Message;
use super::history::{Entry, Seq};
use super::pubsub::{frame_message, PublishError, Published, Publisher};
use super::shared::{Cmd, Shared};
use std::sync::Arc;

impl Shared {
    fn bridge_numbers(&self) -> bool {
        self.bridge.get().is_some_and(|b| b.numbers_messages())
    }

    /// A publish to a room with history: numbered here (or, with a numbering bridge and
    /// `forward`, handed to the bridge only: it comes back numbered). Not counted.
    pub(crate) fn publish_history(
        &self,
        history: &std::sync::Mutex<super::history::Store>,
        topic: &str,
        msg: Message<'_>,
        forward: bool,
    ) -> Result<Published, PublishError> {
        if forward && self.bridge_numbers() {
            self.forward(topic, msg);
            return Ok(Published::default());
        }
        let frame = frame_message(msg);
        let mut store = history.lock().unwrap_or_else(|e| e.into_inner());
        // The interest is read under the lock: a worker whose subscriber joined before
        // this point gets the message live, one that joined after reads it from history.
        let entry = self.topic(topic);
        if !self.reserve_publish(entry.mask) {
            return Err(PublishError::QueueFull);
        }
        // A message a numbering bridge hands over without a number (a backend's plain
        // PUBLISH): delivered, not kept; `wsloop.v1` clients see offset 0.
        let seq = match store.is_local() {
            true => store.append(topic, frame.clone(), super::clock::monotonic_ns()),
            false => Seq { offset: 0, epoch: 0 },
        };
        if forward {
            self.forward(topic, msg);
        }
        self.send_numbered(entry.mask, topic, &frame, seq);
        drop(store);
        let (workers, connections) = (entry.mask.count_ones() as usize, entry.subscribers);
        Ok(Published { workers, connections, seq: Some(seq) })
    }

    fn send_numbered(&self, mask: u64, topic: &str, frame: &Arc<[u8]>, seq: Seq) {
        if mask == 0 {
            return;
        }
        let topic: Arc<str> = Arc::from(topic);
        for (i, w) in self.workers.iter().enumerate() {
            if mask & (1 << i) != 0 {
                w.send(Cmd::Publish { topic: topic.clone(), frame: frame.clone(), seq: Some(seq) });
            }
        }
    }
}

impl Publisher {
    /// Delivers a message the bridge numbered (see
    /// [`Bridge::numbers_messages`](super::Bridge::numbers_messages)) to this node's
    /// subscribers and keeps it in this node's history; never forwarded to the bridge.
    /// A message already delivered (same epoch, offset not above the newest) is
    /// dropped. Without `Config::history` it is delivered like
    /// [`Publisher::publish_local`].
    pub fn publish_numbered(&self, topic: &str, msg: Message<'_>, seq: Seq) -> Result<Published, PublishError> {
        let shared = &*self.shared;
        let Some(history) = &shared.history else {
            return self.publish_local(topic, msg);
        };
        let frame = frame_message(msg);
        let mut store = history.lock().unwrap_or_else(|e| e.into_inner());
        let entry = shared.topic(topic);
        // A room this node does not follow (its last subscriber left; the bridge's
        // unsubscribe is on its way) is not cached: its next messages would not be.
        if entry.mask == 0 || !store.insert(topic, seq, frame.clone(), super::clock::monotonic_ns()) {
            return Ok(Published::default());
        }
        // Kept even when refused: the subscribers that miss it find it in the history
        // (the next message shows them the gap).
        if !shared.reserve_publish(entry.mask) {
            shared.publish_stats.count(super::shared::Source::Redis, false);
            return Err(PublishError::QueueFull);
        }
        shared.publish_stats.count(super::shared::Source::Redis, true);
        shared.send_numbered(entry.mask, topic, &frame, seq);
        let (workers, connections) = (entry.mask.count_ones() as usize, entry.subscribers);
        Ok(Published { workers, connections, seq: Some(seq) })
    }

    /// Hands over a read of `topic`'s shared history that
    /// [`Bridge::read_history`](super::Bridge::read_history) asked for: its epoch and
    /// its messages, oldest first, or `None` when it could not be read (the waiting
    /// clients are told `unavailable`).
    pub fn history_read(&self, topic: &str, read: Option<(u64, Vec<(u64, Message<'_>)>)>) {
        let shared = &*self.shared;
        let Some(history) = &shared.history else { return };
        let ok = read.is_some();
        let read = read.map(|(epoch, msgs)| {
            let entries = msgs.into_iter().map(|(offset, m)| Entry { offset, frame: frame_message(m) }).collect();
            (epoch, entries)
        });
        history.lock().unwrap_or_else(|e| e.into_inner()).fill(topic, read, super::clock::monotonic_ns());
        let topic: Arc<str> = Arc::from(topic);
        for w in &shared.workers {
            w.send(Cmd::HistoryRead { topic: topic.clone(), ok });
        }
    }
}
