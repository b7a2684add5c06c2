//! Topics: per-worker membership, the cluster-wide view of which workers care about a
//! topic, and the [`Publisher`] that frames a message once and hands every interested
//! worker one shared copy.

use super::handler::Message;
use super::shared::{Cmd, Shared};
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
#[derive(Clone)]
pub struct Publisher {
    pub(crate) shared: Arc<Shared>,
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
}

impl std::fmt::Debug for WeakPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakPublisher")
    }
}

impl WeakPublisher {
    /// The publisher, while the server still exists.
    pub fn upgrade(&self) -> Option<Publisher> {
        self.shared.upgrade().map(|shared| Publisher { shared })
    }
}

impl Publisher {
    /// A handle that does not keep the server alive.
    pub fn downgrade(&self) -> WeakPublisher {
        WeakPublisher { shared: Arc::downgrade(&self.shared) }
    }

    /// Sends `msg` to every subscriber of `topic` on every worker, and to the other nodes
    /// through the bridge if one is installed; returns the number of local workers it was
    /// handed to. Messages from one publisher on one topic arrive in order.
    pub fn publish(&self, topic: &str, msg: Message<'_>) -> usize {
        self.shared.forward(topic, msg);
        self.publish_local(topic, msg)
    }

    /// Sends `msg` to this node's subscribers of `topic` only, never to the bridge: the
    /// path for messages a [`Bridge`](super::Bridge) brings in from other nodes.
    pub fn publish_local(&self, topic: &str, msg: Message<'_>) -> usize {
        let mask = self.shared.topic_mask(topic);
        if mask == 0 {
            return 0;
        }
        let frame = frame_message(msg);
        self.shared.send_to_workers(mask, None, topic, &frame);
        mask.count_ones() as usize
    }
}

impl Shared {
    /// Hands `frame` to the workers in `mask` except `skip` (the caller's own worker,
    /// which delivers locally).
    pub(crate) fn send_to_workers(&self, mask: u64, skip: Option<usize>, topic: &str, frame: &Arc<[u8]>) {
        let topic: Arc<str> = Arc::from(topic);
        for (i, w) in self.workers.iter().enumerate() {
            if mask & (1 << i) != 0 && Some(i) != skip {
                w.send(Cmd::Publish { topic: topic.clone(), frame: frame.clone() });
            }
        }
    }
}
