//! Topics: per-worker membership, the cluster-wide view of which workers care about a
//! topic, and the [`Publisher`] that frames a message once and hands every interested
//! worker one shared copy.

use super::handler::Message;
use super::shared::{Cmd, Shared, Source};
use crate::proto::frame::{encode_frame, header_len, OpCode};
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// Which local connections (slab keys) subscribed to each topic, on one worker.
#[derive(Debug, Default)]
pub(crate) struct LocalTopics {
    map: HashMap<Box<str>, Vec<u32>>,
}

impl LocalTopics {
    /// Adds `key`; returns true when it is the topic's first local subscriber.
    pub fn subscribe(&mut self, topic: &str, key: u32) -> bool {
        match self.map.get_mut(topic) {
            Some(keys) => {
                if !keys.contains(&key) {
                    keys.push(key);
                }
                false
            }
            None => {
                self.map.insert(topic.into(), vec![key]);
                true
            }
        }
    }

    /// Removes `key`; returns true when the topic has no local subscriber left.
    pub fn unsubscribe(&mut self, topic: &str, key: u32) -> bool {
        let Some(keys) = self.map.get_mut(topic) else {
            return false;
        };
        if let Some(i) = keys.iter().position(|&k| k == key) {
            keys.swap_remove(i);
        }
        if keys.is_empty() {
            self.map.remove(topic);
            return true;
        }
        false
    }

    /// Takes the subscriber list out (for iteration while connections are mutated).
    pub fn take(&mut self, topic: &str) -> Option<Vec<u32>> {
        self.map.get_mut(topic).map(std::mem::take)
    }

    /// Puts a list taken with [`LocalTopics::take`] back, merging anything added meanwhile.
    pub fn restore(&mut self, topic: &str, mut keys: Vec<u32>) {
        if let Some(slot) = self.map.get_mut(topic) {
            keys.append(slot);
            *slot = keys;
        }
    }
}

/// Frames `msg` once into a shared buffer.
pub(crate) fn frame_message(msg: Message<'_>) -> Arc<[u8]> {
    let (op, payload) = match msg {
        Message::Text(s) => (OpCode::Text, s.as_bytes()),
        Message::Binary(b) => (OpCode::Binary, b),
    };
    let mut buf = vec![0u8; header_len(payload.len() as u64, false) + payload.len()];
    // The buffer is sized exactly for the frame.
    let n = encode_frame(&mut buf, true, op, payload, None).unwrap_or(0);
    buf.truncate(n);
    buf.into()
}

/// Publishes to topics from any thread (an appliance thread pushing readings, a Redis
/// bridge). Cheap to clone.
///
/// Each worker takes at most `Config::publish_queue` publishes waiting in its inbox: a
/// publish that does not fit is refused with [`PublishError::QueueFull`] (and counted
/// in `wsloop_publishes_refused_total`), never queued without limit.
#[derive(Clone)]
pub struct Publisher {
    pub(crate) shared: Arc<Shared>,
    source: Source,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

/// A [`Publisher`] that does not keep the server alive, for a [`Bridge`](super::Bridge)
/// (which the server itself holds): [`WeakPublisher::upgrade`] fails once it is gone.
#[derive(Clone)]
pub struct WeakPublisher {
    shared: Weak<Shared>,
    source: Source,
}

impl std::fmt::Debug for WeakPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakPublisher")
    }
}

impl WeakPublisher {
    /// The publisher, while the server still exists.
    pub fn upgrade(&self) -> Option<Publisher> {
        self.shared.upgrade().map(|shared| Publisher { shared, source: self.source })
    }
}

/// Where a publish was handed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Local workers with subscribers of the topic.
    pub workers: usize,
    /// Local connections subscribed to the topic when it was published.
    pub connections: usize,
    /// The message's place in the room's history (with `Config::history`; `None`
    /// when a bridge numbers it: it is handed to the bridge, not yet delivered).
    pub seq: Option<super::history::Seq>,
}

/// A publish that was not handed to the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// A worker with subscribers of the topic already has `Config::publish_queue`
    /// publishes waiting: nothing was delivered, locally or to the bridge. Retry
    /// later, or drop.
    QueueFull,
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::QueueFull => f.write_str("a worker's publish queue is full"),
        }
    }
}

impl std::error::Error for PublishError {}

impl Publisher {
    pub(crate) fn new(shared: Arc<Shared>, source: Source) -> Publisher {
        Publisher { shared, source }
    }

    /// A handle that does not keep the server alive.
    pub fn downgrade(&self) -> WeakPublisher {
        WeakPublisher { shared: Arc::downgrade(&self.shared), source: self.source }
    }

    /// Sends `msg` to every subscriber of `topic` on every worker, and to the other nodes
    /// through the bridge if one is installed. Messages from one publisher on one topic
    /// arrive in order. `Err` when a worker's publish queue is full: then the message
    /// went nowhere.
    pub fn publish(&self, topic: &str, msg: Message<'_>) -> Result<Published, PublishError> {
        self.publish_as(self.source, topic, msg, true)
    }

    /// Sends `msg` to this node's subscribers of `topic` only, never to the bridge: the
    /// path for messages a [`Bridge`](super::Bridge) brings in from other nodes
    /// (counted as source `redis`).
    pub fn publish_local(&self, topic: &str, msg: Message<'_>) -> Result<Published, PublishError> {
        self.publish_as(Source::Redis, topic, msg, false)
    }

    pub(crate) fn publish_as(
        &self,
        source: Source,
        topic: &str,
        msg: Message<'_>,
        forward: bool,
    ) -> Result<Published, PublishError> {
        self.shared.publish_from(source, topic, msg, forward)
    }
}

impl Shared {
    /// A publish made off the workers: reserved on every interested worker or refused,
    /// then handed to the bridge (`forward`) and the workers.
    pub(crate) fn publish_from(
        &self,
        source: Source,
        topic: &str,
        msg: Message<'_>,
        forward: bool,
    ) -> Result<Published, PublishError> {
        if let Some(history) = &self.history {
            let r = self.publish_history(history, topic, msg, forward);
            self.publish_stats.count(source, r.is_ok());
            return r;
        }
        let entry = self.topic(topic);
        if !self.reserve_publish(entry.mask) {
            self.publish_stats.count(source, false);
            return Err(PublishError::QueueFull);
        }
        self.publish_stats.count(source, true);
        if forward {
            self.forward(topic, msg);
        }
        if entry.mask != 0 {
            let frame = frame_message(msg);
            self.send_to_workers(entry.mask, topic, &frame);
        }
        Ok(Published { workers: entry.mask.count_ones() as usize, connections: entry.subscribers, seq: None })
    }

    /// Reserves a publish slot on every worker in `mask`: all or none.
    pub(crate) fn reserve_publish(&self, mask: u64) -> bool {
        let cap = self.cfg.publish_queue;
        for (i, w) in self.workers.iter().enumerate() {
            if mask & (1 << i) != 0 && !w.reserve_publish(cap) {
                for w in self.workers.iter().take(i).enumerate().filter(|(j, _)| mask & (1 << j) != 0) {
                    w.1.release_publish();
                }
                return false;
            }
        }
        true
    }

    /// Hands `frame` to the workers in `mask`, each holding a reservation from
    /// [`Shared::reserve_publish`].
    pub(crate) fn send_to_workers(&self, mask: u64, topic: &str, frame: &Arc<[u8]>) {
        if mask == 0 {
            return;
        }
        let topic: Arc<str> = Arc::from(topic);
        for (i, w) in self.workers.iter().enumerate() {
            if mask & (1 << i) != 0 {
                w.send(Cmd::Publish { topic: topic.clone(), frame: frame.clone(), seq: None });
            }
        }
    }
}
