//! Sequence numbers per (node, topic): the sending side numbers each topic's messages,
//! the receiving side delivers each stream in order, once, and counts the gaps.
//!
//! Redis pub/sub itself never delivers twice, but the bridge resends a publish that a
//! cluster node answered with `MOVED` or `ASK` (after later ones may have gone to the
//! new owner), and a failover drops what the dead primary had not passed on. With the
//! numbers a receiver can tell: a message at or below the last one delivered from that
//! node on that topic is late or a duplicate and is dropped; one beyond the next
//! expected means the ones in between were lost, and they are counted.
//!
//! State is kept per topic and forgotten after a quiet spell: [`SENDER_IDLE`] on the
//! sending side (the topic's numbers then start again at 1), the shorter
//! [`RECEIVER_IDLE`] on the receiving side, so a receiver has always forgotten a stream
//! before its sender starts it over. A receiver's first message of a stream is taken as
//! it comes: what was published before it subscribed is not a loss.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A sender forgets a topic's numbering after this long without a publish on it.
pub(crate) const SENDER_IDLE: Duration = Duration::from_secs(600);
/// A receiver forgets a stream after this long without a message from it.
pub(crate) const RECEIVER_IDLE: Duration = Duration::from_secs(300);

/// The sending side: the next number of each topic this node publishes on.
#[derive(Default)]
pub(crate) struct Numbering {
    next: HashMap<Box<[u8]>, (u64, Instant)>,
}

impl Numbering {
    /// The number of the next message on `topic`.
    pub fn next(&mut self, topic: &[u8], now: Instant) -> u64 {
        if let Some((n, seen)) = self.next.get_mut(topic) {
            *n += 1;
            *seen = now;
            return *n;
        }
        self.next.insert(topic.into(), (1, now));
        1
    }

    /// Forgets topics quiet for [`SENDER_IDLE`].
    pub fn prune(&mut self, now: Instant) {
        self.next.retain(|_, (_, seen)| now.duration_since(*seen) < SENDER_IDLE);
    }
}

/// What to do with a numbered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Deliver it; `lost` messages of the stream before it never arrived.
    Deliver { lost: u64 },
    /// At or below the last one delivered: drop it.
    Late,
}

/// The receiving side: the last number delivered per (topic, node).
#[derive(Default)]
pub(crate) struct Streams {
    /// Per topic, per sending node: the last number delivered and when.
    last: HashMap<Box<str>, Vec<(u64, u64, Instant)>>,
}

impl Streams {
    /// Judges message `seq` from `node` on `topic`.
    pub fn check(&mut self, topic: &str, node: u64, seq: u64, now: Instant) -> Verdict {
        let nodes = match self.last.get_mut(topic) {
            Some(v) => v,
            None => self.last.entry(topic.into()).or_default(),
        };
        match nodes.iter_mut().find(|(n, _, _)| *n == node) {
            None => {
                nodes.push((node, seq, now));
                Verdict::Deliver { lost: 0 }
            }
            Some((_, last, _)) if seq <= *last => Verdict::Late,
            Some((_, last, seen)) => {
                let lost = seq - *last - 1;
                *last = seq;
                *seen = now;
                Verdict::Deliver { lost }
            }
        }
    }

    /// Forgets a topic (no longer subscribed).
    pub fn forget(&mut self, topic: &str) {
        self.last.remove(topic);
    }

    /// Forgets streams quiet for [`RECEIVER_IDLE`].
    pub fn prune(&mut self, now: Instant) {
        self.last.retain(|_, nodes| {
            nodes.retain(|(_, _, seen)| now.duration_since(*seen) < RECEIVER_IDLE);
            !nodes.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_count_per_topic_and_start_over_when_forgotten() {
        let t0 = Instant::now();
        let mut n = Numbering::default();
        assert_eq!([n.next(b"a", t0), n.next(b"a", t0), n.next(b"b", t0), n.next(b"a", t0)], [1, 2, 1, 3]);
        n.prune(t0 + SENDER_IDLE);
        assert_eq!(n.next(b"a", t0 + SENDER_IDLE), 1);
    }

    #[test]
    fn streams_deliver_in_order_once_and_count_gaps() {
        let t0 = Instant::now();
        let mut s = Streams::default();
        // Joined mid-stream: nothing counted for what came before.
        assert_eq!(s.check("r", 7, 5, t0), Verdict::Deliver { lost: 0 });
        assert_eq!(s.check("r", 7, 6, t0), Verdict::Deliver { lost: 0 });
        assert_eq!(s.check("r", 7, 6, t0), Verdict::Late, "a duplicate");
        assert_eq!(s.check("r", 7, 9, t0), Verdict::Deliver { lost: 2 });
        assert_eq!(s.check("r", 7, 8, t0), Verdict::Late, "behind one already delivered");
        // Other nodes and topics are streams of their own.
        assert_eq!(s.check("r", 8, 1, t0), Verdict::Deliver { lost: 0 });
        assert_eq!(s.check("q", 7, 1, t0), Verdict::Deliver { lost: 0 });
        s.forget("r");
        assert_eq!(s.check("r", 7, 1, t0), Verdict::Deliver { lost: 0 });
        s.prune(t0 + RECEIVER_IDLE);
        assert_eq!(s.check("q", 7, 1, t0 + RECEIVER_IDLE), Verdict::Deliver { lost: 0 });
        assert!(RECEIVER_IDLE < SENDER_IDLE, "a receiver forgets a stream before its sender starts it over");
    }
}
