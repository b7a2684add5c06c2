//! The channel names and the commands the bridge sends, built in one place: a publish
//! command (`PUBLISH`, or `SPUBLISH` in a cluster) can be swapped for another (a script
//! that also keeps history) here without the workers or the driver changing.
//!
//! Channels of topic `t`, with prefix `p` (default `wsloop:`):
//!
//! ```text
//!                 room channel (backends)   node channel (node-to-node envelopes)
//!  one Redis      p t                        p \0 t
//!  Redis Cluster  p t                        {tag} p \0 t    tag: slot::tag(slot of "p t")
//! ```
//!
//! A room channel is the same in both modes, so a backend's `PUBLISH wsloop:news ..`
//! (or `SPUBLISH` in a cluster) reaches room `news`. In a cluster the node channel
//! starts with a hash tag that puts it in the room channel's slot, so one `SSUBSCRIBE`
//! on the shard that owns the room takes both.

use super::envelope;
use super::resp;
use super::slot;
use crate::server::Message;
use std::ops::Range;

/// A publish ready for Redis, made on a worker, finished (numbered) and routed by the
/// bridge's thread.
pub(crate) struct Outgoing {
    /// The hash slot of the topic's channels (0 for one Redis).
    pub slot: u16,
    /// The encoded command.
    pub cmd: Vec<u8>,
    /// Where in `cmd` the envelope's sequence number goes (`None`: the history script,
    /// which Redis numbers).
    pub seq_at: Option<usize>,
    /// Where in `cmd` the topic is (the key of its numbering).
    pub topic: Range<usize>,
}

/// Whether the channels are those of one Redis or of a Redis Cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    Single,
    Cluster,
}

impl Flavor {
    fn publish_verb(self) -> &'static [u8] {
        match self {
            Flavor::Single => b"PUBLISH",
            Flavor::Cluster => b"SPUBLISH",
        }
    }
}

/// The most bytes [`publish`] can make for a payload of `payload` bytes.
pub(crate) fn publish_len(prefix: &str, topic: &str, payload: usize) -> usize {
    let channel = 6 + prefix.len() + envelope::NODE_CHANNEL_MARK.len() + topic.len();
    resp::encoded_len(3, 8 + channel + envelope::HEADER_LEN + payload)
}

/// The slot of topic `topic`'s channels.
pub(crate) fn topic_slot(prefix: &str, topic: &str) -> u16 {
    slot::of_concat(prefix.as_bytes(), topic.as_bytes())
}

/// The hash tag, braces included, that starts a node channel in a cluster.
pub(crate) fn tag(flavor: Flavor, slot: u16) -> ([u8; 6], usize) {
    let mut t = [0u8; 6];
    if flavor == Flavor::Single {
        return (t, 0);
    }
    let body = slot::tag(slot);
    t[0] = b'{';
    t[1..1 + body.len()].copy_from_slice(body);
    t[1 + body.len()] = b'}';
    (t, body.len() + 2)
}

/// Node `node`'s publish of `msg` on `topic`, its sequence number left 0 for the
/// bridge's thread to fill in.
pub(crate) fn publish(flavor: Flavor, prefix: &str, node: u64, topic: &str, msg: Message<'_>) -> Outgoing {
    let payload = msg.as_bytes();
    let slot = if flavor == Flavor::Cluster { topic_slot(prefix, topic) } else { 0 };
    let (tag, tag_len) = tag(flavor, slot);
    let mut cmd = Vec::with_capacity(publish_len(prefix, topic, payload.len()));
    resp::command(&mut cmd, 3);
    resp::arg(&mut cmd, &[flavor.publish_verb()]);
    resp::arg(&mut cmd, &[&tag[..tag_len], prefix.as_bytes(), envelope::NODE_CHANNEL_MARK, topic.as_bytes()]);
    let topic_end = cmd.len() - 2;
    let topic = topic_end - topic.len()..topic_end;
    resp::arg(&mut cmd, &[&envelope::header(node, 0, msg), payload]);
    let seq_at = cmd.len() - 2 - payload.len() - envelope::HEADER_LEN + envelope::SEQ_AT;
    Outgoing { slot, cmd, seq_at: Some(seq_at), topic }
}

/// Subscribing or unsubscribing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Subscribe,
    Unsubscribe,
}

/// Appends the commands that (un)subscribe `topics`' two channels each. One Redis takes
/// many channels per command; a cluster only channels of one slot, so one topic each.
pub(crate) fn subscriptions(out: &mut Vec<u8>, flavor: Flavor, change: Change, prefix: &str, topics: &[Box<str>]) {
    let verb: &[u8] = match (flavor, change) {
        (Flavor::Single, Change::Subscribe) => b"SUBSCRIBE",
        (Flavor::Single, Change::Unsubscribe) => b"UNSUBSCRIBE",
        (Flavor::Cluster, Change::Subscribe) => b"SSUBSCRIBE",
        (Flavor::Cluster, Change::Unsubscribe) => b"SUNSUBSCRIBE",
    };
    let per_command = match flavor {
        Flavor::Single => CHANNELS_PER_COMMAND / 2,
        Flavor::Cluster => 1,
    };
    // UNSUBSCRIBE with no channel means all of them: never send an empty one.
    for chunk in topics.chunks(per_command) {
        resp::command(out, 1 + 2 * chunk.len());
        resp::arg(out, &[verb]);
        for t in chunk {
            let (tag, tag_len) = tag(flavor, if flavor == Flavor::Cluster { topic_slot(prefix, t) } else { 0 });
            resp::arg(out, &[prefix.as_bytes(), t.as_bytes()]);
            resp::arg(out, &[&tag[..tag_len], prefix.as_bytes(), envelope::NODE_CHANNEL_MARK, t.as_bytes()]);
        }
    }
}

/// Channels per SUBSCRIBE / UNSUBSCRIBE command to one Redis.
const CHANNELS_PER_COMMAND: usize = 512;

/// What a channel a message came on carries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Channel<'a> {
    /// A topic's channel: a backend's plain payload.
    Room(&'a [u8]),
    /// A topic's node channel: an envelope from a node.
    Node(&'a [u8]),
}

/// Reads a channel name of either flavor; `None` if it is not one of ours.
pub(crate) fn channel<'a>(prefix: &str, name: &'a [u8]) -> Option<Channel<'a>> {
    let node_form =
        |rest: &'a [u8]| rest.strip_prefix(prefix.as_bytes()).and_then(|r| r.strip_prefix(envelope::NODE_CHANNEL_MARK));
    if let Some(t) = node_form(name) {
        return Some(Channel::Node(t));
    }
    // A cluster's node channel: `{tag}` then the one-Redis form. A room channel whose
    // prefix itself starts with `{` is told apart by the mark after the prefix.
    if let Some(close) = name.strip_prefix(b"{").and_then(|r| r.iter().position(|&b| b == b'}')) {
        if let Some(t) = node_form(&name[close + 2..]) {
            return Some(Channel::Node(t));
        }
    }
    name.strip_prefix(prefix.as_bytes()).map(Channel::Room)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg_at(cmd: &[u8], n: usize) -> Vec<u8> {
        match resp::parse(cmd, &resp::Limits::for_payload(1 << 20)) {
            Ok(resp::Status::Complete((resp::Value::Array(Some(items)), _))) => items[n].bytes().unwrap().to_vec(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cluster_node_channels_share_the_room_channel_slot() {
        for topic in ["news", "a}b", "{x}y", "", "é"] {
            let o = publish(Flavor::Cluster, "wsloop:", 5, topic, Message::Text("hi"));
            let channel = arg_at(&o.cmd, 1);
            assert_eq!(slot::of(&channel), slot::of(format!("wsloop:{topic}").as_bytes()), "{topic:?}");
            assert_eq!(o.slot, slot::of(&channel));
            assert_eq!(arg_at(&o.cmd, 0), b"SPUBLISH");
            assert_eq!(super::channel("wsloop:", &channel), Some(Channel::Node(topic.as_bytes())));
            assert_eq!(&o.cmd[o.topic.clone()], topic.as_bytes());
            assert!(o.cmd.len() <= publish_len("wsloop:", topic, 2));
        }
    }

    #[test]
    fn the_sequence_number_lands_in_the_envelope() {
        let mut o = publish(Flavor::Single, "p:", 9, "room", Message::Binary(b"\x00\xff"));
        o.cmd[o.seq_at.unwrap()..o.seq_at.unwrap() + 8].copy_from_slice(&42u64.to_be_bytes());
        assert_eq!(arg_at(&o.cmd, 0), b"PUBLISH");
        assert_eq!(arg_at(&o.cmd, 1), b"p:\0room");
        let env = arg_at(&o.cmd, 2);
        let e = envelope::decode(&env).unwrap();
        assert_eq!((e.node, e.seq, e.msg), (9, Some(42), Message::Binary(b"\x00\xff")));
    }

    #[test]
    fn channels_are_read_back() {
        assert_eq!(channel("wsloop:", b"wsloop:news"), Some(Channel::Room(b"news")));
        assert_eq!(channel("wsloop:", b"wsloop:\0news"), Some(Channel::Node(b"news")));
        assert_eq!(channel("wsloop:", b"{ab}wsloop:\0news"), Some(Channel::Node(b"news")));
        assert_eq!(channel("{a}:", b"{a}:news"), Some(Channel::Room(b"news")));
        assert_eq!(channel("{a}:", b"{q}{a}:\0news"), Some(Channel::Node(b"news")));
        assert_eq!(channel("wsloop:", b"other:news"), None);
        let mut out = Vec::new();
        subscriptions(&mut out, Flavor::Cluster, Change::Subscribe, "w:", &["a".into(), "b".into()]);
        assert_eq!(out.iter().filter(|&&b| b == b'*').count(), 2, "one SSUBSCRIBE per topic");
    }
}
