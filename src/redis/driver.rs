//! The bridge's thread: one mio loop over the Redis connections, two per shard (one
//! Redis is a cluster of one shard).
//!
//! Each shard's publishing link takes the publishes for its slots off the queue and
//! pipelines them; each reply is one acknowledged publish, or a `MOVED`/`ASK` that
//! sends it on to the node named. Each subscribed link keeps its node's channel set
//! equal to the wanted topics whose slots the shard owns, and hands incoming messages
//! from other nodes to the server, in order and once per (node, topic) stream
//! (`order.rs`).
//!
//! In a cluster the slot map comes from `CLUSTER SLOTS`, read again when a link fails,
//! when a reply or a sharded-unsubscribe push says a slot moved, and every
//! [`TOPOLOGY_EVERY`]. A failover is a link failure, then a new map in which a replica
//! has become the primary: the bridge connects to it and subscribes again.

use super::command::{self, Change, Channel, Flavor, Outgoing};
use super::link::{Awaited, Link, Phase, Read_, READ_CHUNK};
use super::order::{Numbering, Streams, Verdict};
use super::resp::{self, Limits, Status, Value};
use super::slot::SLOTS;
use super::topology::{self, SlotRange};
use super::{envelope, Deployment, Endpoint, Inner, SubscribeMode, TlsClient};
use crate::server::{Message, WeakPublisher};
use mio::{Events, Poll, Token};
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const WAKER: Token = Token(0);

/// Queue entries moved per loop turn, read rounds per link per turn: bounded work, so
/// one busy direction cannot starve the other.
const MAX_QUEUE_PER_TURN: usize = 4096;
const MAX_READS_PER_TURN: usize = 64;
/// The loop wakes at least this often for its bookkeeping (lost-message warnings).
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Warnings about lost messages or an outage repeat at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// A cluster's topology is read again this often even when nothing failed.
pub(crate) const TOPOLOGY_EVERY: Duration = Duration::from_secs(15);
/// After a link failure or a failed read, the topology is read again this soon (the
/// wait doubles while every node fails, up to the backoff's cap).
const TOPOLOGY_RETRY: Duration = Duration::from_millis(250);
/// Forgotten sequence state is swept this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// No shard owns the slot.
const NO_SHARD: u16 = u16::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Pub,
    Sub,
}

/// A shard: its primary, and the two links to it.
struct Shard {
    publ: Link,
    subl: Link,
    /// Topics subscribed to on the current subscribed connection (per-topic mode).
    subscribed: HashSet<Box<str>>,
    /// Channels Redis last said this connection has.
    channels: u64,
}

/// Where the cluster's slot map stands.
struct Topology {
    /// When to read it next (`None`: one Redis, never).
    due: Option<Instant>,
    wait: Duration,
    /// Nodes to ask: the seeds, then every node of the last map.
    known: Vec<Endpoint>,
    /// Whom to ask first next time (rotated so a dead node is not always first).
    next: usize,
    last_warn: Option<Instant>,
}

pub(crate) struct Driver {
    poll: Poll,
    inner: Arc<Inner>,
    queue: Receiver<Outgoing>,
    server: WeakPublisher,
    flavor: Flavor,
    tls: Option<TlsClient>,
    /// Shard `i` has tokens `1 + 2i` (publishing) and `2 + 2i` (subscribed).
    shards: Vec<Option<Shard>>,
    /// Cluster: the shard of each slot. One Redis: empty.
    slots: Vec<u16>,
    topo: Topology,
    numbering: Numbering,
    streams: Streams,
    /// A publish taken off the queue whose link had enough output: sent first.
    held: Option<Outgoing>,
    limits: Limits,
    scratch: Box<[u8]>,
    /// The queue was left non-empty at the per-turn cap.
    queue_more: bool,
    /// The queue was left non-empty because a publishing link had enough output.
    output_full: bool,
    rng: u64,
    lost_seen: u64,
    lost_warned_at: Option<Instant>,
    malformed_warned_at: Option<Instant>,
    pruned_at: Instant,
}

impl Driver {
    pub fn new(
        poll: Poll,
        inner: Arc<Inner>,
        queue: Receiver<Outgoing>,
        server: WeakPublisher,
        tls: Option<TlsClient>,
    ) -> Driver {
        let now = Instant::now();
        let limits = Limits::for_payload(inner.cfg.max_message);
        let (flavor, shards, slots, topo) = match &inner.cfg.deployment {
            Deployment::Single => {
                let shard = Self::shard(0, inner.cfg.endpoint(), inner.cfg.backoff_min, now);
                let topo = Topology { due: None, wait: TOPOLOGY_RETRY, known: vec![], next: 0, last_warn: None };
                (Flavor::Single, vec![Some(shard)], Vec::new(), topo)
            }
            Deployment::Cluster { seeds } => {
                let topo =
                    Topology { due: Some(now), wait: TOPOLOGY_RETRY, known: seeds.clone(), next: 0, last_warn: None };
                (Flavor::Cluster, Vec::new(), vec![NO_SHARD; SLOTS], topo)
            }
        };
        Driver {
            poll,
            queue,
            server,
            flavor,
            tls,
            shards,
            slots,
            topo,
            numbering: Numbering::default(),
            streams: Streams::default(),
            held: None,
            limits,
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            queue_more: false,
            output_full: false,
            rng: inner.node | 1,
            lost_seen: 0,
            lost_warned_at: None,
            malformed_warned_at: None,
            pruned_at: now,
            inner,
        }
    }

    fn shard(i: usize, at: Endpoint, backoff: Duration, now: Instant) -> Shard {
        Shard {
            publ: Link::new(Token(1 + 2 * i), "publish", at.clone(), backoff, now),
            subl: Link::new(Token(2 + 2 * i), "subscribe", at, backoff, now),
            subscribed: HashSet::new(),
            channels: 0,
        }
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(64);
        let mut ready: Vec<(usize, Role)> = Vec::new();
        loop {
            if self.inner.closed.load(Ordering::Acquire) || self.server.upgrade().is_none() {
                break;
            }
            let now = Instant::now();
            let timeout = self.timeout(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("redis: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            // Cleared before the queue is drained: a publish after this point wakes us.
            self.inner.wake_pending.store(false, Ordering::SeqCst);
            let now = Instant::now();
            ready.clear();
            for ev in events.iter() {
                if let Some(t) = ev.token().0.checked_sub(1) {
                    ready.push((t / 2, if t % 2 == 0 { Role::Pub } else { Role::Sub }));
                }
            }
            for (i, s) in self.shards.iter().enumerate() {
                if let Some(s) = s {
                    if s.publ.read_more {
                        ready.push((i, Role::Pub));
                    }
                    if s.subl.read_more {
                        ready.push((i, Role::Sub));
                    }
                }
            }
            ready.sort_unstable_by_key(|&(i, r)| (i, r == Role::Sub));
            ready.dedup();
            for &(i, role) in &ready {
                self.drive(i, role, now);
            }
            self.maintain(now);
            if self.topo.due.is_some_and(|t| now >= t) {
                self.refresh_topology(Instant::now());
            }
            self.sync_subscriptions();
            self.pump(now);
            let now = Instant::now();
            for i in 0..self.shards.len() {
                for role in [Role::Pub, Role::Sub] {
                    let Some(link) = self.link(i, role) else { continue };
                    if link.phase == Phase::Ready {
                        if let Err(e) = link.flush() {
                            self.fail(i, role, now, &format!("write: {e}"));
                        }
                    }
                }
            }
            // The sockets took all the output without filling: no writable event will
            // come, so come back at once for the rest of the queue.
            if self.output_full {
                self.queue_more = true;
            }
            let up = !self.shards.iter().all(Option::is_none)
                && self.shards.iter().flatten().all(|s| s.publ.is_up() && s.subl.is_up());
            self.inner.stats.connected.store(up, Ordering::Relaxed);
            self.housekeeping(now);
        }
        log::debug!("redis: bridge thread exits");
    }

    fn timeout(&self, now: Instant) -> Duration {
        let links = self.shards.iter().flatten().flat_map(|s| [&s.publ, &s.subl]);
        if self.queue_more || links.clone().any(|l| l.read_more) {
            return Duration::ZERO;
        }
        let mut t = HOUSEKEEPING;
        for l in links {
            if l.phase != Phase::Ready {
                t = t.min(l.deadline.saturating_duration_since(now));
            }
        }
        if let Some(due) = self.topo.due {
            t = t.min(due.saturating_duration_since(now));
        }
        t
    }

    fn link(&mut self, i: usize, role: Role) -> Option<&mut Link> {
        let s = self.shards.get_mut(i)?.as_mut()?;
        Some(if role == Role::Pub { &mut s.publ } else { &mut s.subl })
    }

    /// Starts connections whose retry time has come; gives up on slow ones.
    fn maintain(&mut self, now: Instant) {
        for i in 0..self.shards.len() {
            for role in [Role::Pub, Role::Sub] {
                let Some(link) = self.link(i, role) else { continue };
                if now < link.deadline {
                    continue;
                }
                match link.phase {
                    Phase::Down => {
                        let Some(s) = self.shards[i].as_mut() else { continue };
                        let link = if role == Role::Pub { &mut s.publ } else { &mut s.subl };
                        if let Err(why) = link.connect(self.poll.registry(), &self.inner.cfg, self.tls.as_ref(), now) {
                            self.fail(i, role, now, &why);
                        }
                    }
                    Phase::Connecting => self.fail(i, role, now, "connect timed out"),
                    Phase::Ready => {}
                }
            }
        }
    }

    /// Connected: AUTH first (before anything queued meanwhile) and, on the subscribed
    /// link, the subscriptions.
    fn on_ready(&mut self, i: usize, role: Role, now: Instant) {
        let auth = super::blocking::auth_command(&self.inner.cfg);
        let inner = self.inner.clone();
        let Some(link) = self.link(i, role) else { return };
        link.phase = Phase::Ready;
        link.inbuf.clear();
        link.auth_pending = auth.is_some();
        if let Some(mut cmd) = auth {
            cmd.extend_from_slice(&link.out);
            link.out = cmd;
        }
        let server = link.at.server();
        match link.down_since.take() {
            Some(since) => log::info!(
                "redis: {} connection to {server} is back after {:.1}s",
                link.name,
                now.duration_since(since).as_secs_f64()
            ),
            None if !link.ever_up => log::info!("redis: {} connection to {server} is up", link.name),
            None => {}
        }
        if link.ever_up {
            inner.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        link.ever_up = true;
        if role == Role::Sub {
            let Some(s) = self.shards[i].as_mut() else { return };
            s.subscribed.clear();
            match inner.cfg.mode {
                SubscribeMode::Pattern => {
                    let pattern = glob_escape(&inner.cfg.prefix);
                    resp::command(&mut s.subl.out, 2);
                    resp::arg(&mut s.subl.out, &[b"PSUBSCRIBE"]);
                    resp::arg(&mut s.subl.out, &[pattern.as_bytes(), b"*"]);
                }
                SubscribeMode::PerTopic => {
                    inner.desired.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
                }
            }
        }
    }

    /// Drops the connection; retries after the backoff.
    fn fail(&mut self, i: usize, role: Role, now: Instant, why: &str) {
        let jitter = self.next_jitter();
        let (backoff_min, backoff_max) = (self.inner.cfg.backoff_min, self.inner.cfg.backoff_max);
        let registry = self.poll.registry();
        let Some(s) = self.shards.get_mut(i).and_then(Option::as_mut) else { return };
        let link = if role == Role::Pub { &mut s.publ } else { &mut s.subl };
        let was_ready = link.phase == Phase::Ready;
        let unanswered = link.close(registry);
        if link.healthy {
            link.backoff = backoff_min;
        }
        link.healthy = false;
        // 75% to 125% of the backoff, so that nodes do not reconnect in lockstep.
        let wait = link.backoff.mul_f64(0.75 + 0.5 * jitter);
        link.deadline = now + wait;
        link.backoff = (link.backoff * 2).min(backoff_max);
        let server = link.at.server();
        if link.down_since.is_none() && (was_ready || !link.ever_up) {
            link.down_since = Some(now);
            link.last_warn = Some(now);
            let missed = if role == Role::Pub {
                "other nodes miss this node's messages"
            } else {
                "this node misses other nodes' messages"
            };
            log::warn!(
                "redis: {} connection to {server} failed: {why}; local delivery goes on, \
                 {missed} until it is back (retrying)",
                link.name
            );
        } else if link.last_warn.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            link.last_warn = Some(now);
            let down = link.down_since.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
            log::warn!("redis: {} connection to {server} still down after {down:.0}s: {why}", link.name);
        } else {
            log::debug!("redis: {} connection to {server}: {why}; retry in {wait:?}", link.name);
        }
        if role == Role::Pub {
            // Sent or not, nobody confirmed them: count them lost (a few may have made it).
            let lost = unanswered.iter().filter(|a| matches!(a, Awaited::Publish(_))).count() as u64;
            self.inner.stats.lost_disconnected.fetch_add(lost, Ordering::Relaxed);
        } else {
            s.subscribed.clear();
            s.channels = 0;
            self.update_channels();
        }
        // A node that fails may have failed over: read the map again soon.
        self.refresh_soon(now);
    }

    fn refresh_soon(&mut self, now: Instant) {
        if let Some(due) = self.topo.due.as_mut() {
            *due = (*due).min(now + TOPOLOGY_RETRY);
        }
    }

    fn update_channels(&self) {
        let n = self.shards.iter().flatten().map(|s| s.channels).sum();
        self.inner.stats.channels.store(n, Ordering::Relaxed);
    }

    fn next_jitter(&mut self) -> f64 {
        // xorshift64: spreading retries needs no more.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Handles an event (or a pending read) on a link: completes the connection, reads
    /// and handles replies.
    fn drive(&mut self, i: usize, role: Role, now: Instant) {
        let Some(link) = self.link(i, role) else { return };
        if link.phase == Phase::Connecting {
            match link.check_connected() {
                Ok(true) => self.on_ready(i, role, now),
                Ok(false) => return,
                Err(e) => return self.fail(i, role, now, &format!("connect: {e}")),
            }
        }
        for _ in 0..MAX_READS_PER_TURN {
            let Some(s) = self.shards[i].as_mut() else { return };
            let link = if role == Role::Pub { &mut s.publ } else { &mut s.subl };
            if link.phase != Phase::Ready {
                return;
            }
            let eof = match link.read(&mut self.scratch) {
                Ok(Read_::Eof) => true,
                Ok(Read_::Data) => false,
                Err(e) => return self.fail(i, role, now, &format!("read: {e}")),
            };
            let handled = if role == Role::Pub { self.publish_replies(i, now) } else { self.pushes(i, now) };
            if let Err(why) = handled {
                return self.fail(i, role, now, &why);
            }
            if eof {
                return self.fail(i, role, now, "Redis closed the connection");
            }
            if !self.link(i, role).is_some_and(|l| l.read_more) {
                return;
            }
        }
    }

    /// Counts the replies to publishes (and AUTH) in a publishing link's input; sends
    /// redirected publishes on.
    fn publish_replies(&mut self, i: usize, now: Instant) -> Result<(), String> {
        let Some(s) = self.shards[i].as_mut() else { return Ok(()) };
        let link = &mut s.publ;
        let stats = &self.inner.stats;
        let mut used = 0;
        let mut redirects = Vec::new();
        let result = loop {
            match resp::parse(&link.inbuf[used..], &self.limits) {
                Ok(Status::Complete((v, n))) => {
                    used += n;
                    if std::mem::take(&mut link.auth_pending) {
                        if let Value::Error(e) = v {
                            break Err(format!("AUTH refused: {}", String::from_utf8_lossy(e)));
                        }
                        continue;
                    }
                    link.healthy = true;
                    let sent = match link.awaiting.pop_front() {
                        Some(Awaited::Publish(o)) => o,
                        Some(Awaited::Asking) => {
                            if let Value::Error(e) = v {
                                log::debug!("redis: ASKING refused: {}", String::from_utf8_lossy(e));
                            }
                            continue;
                        }
                        None => break Err(format!("a reply to nothing: {v:?}")),
                    };
                    match v {
                        // An integer from PUBLISH, {offset, epoch} from the history script.
                        Value::Int(_) | Value::Array(_) => {
                            stats.published.fetch_add(1, Ordering::Relaxed);
                        }
                        Value::Error(e) => match Redirect::parse(e) {
                            Some(r) => redirects.push((sent, r)),
                            None => {
                                stats.lost_rejected.fetch_add(1, Ordering::Relaxed);
                                log::debug!("redis: publish refused: {}", String::from_utf8_lossy(e));
                            }
                        },
                        other => break Err(format!("unexpected reply to a publish: {other:?}")),
                    }
                }
                Ok(Status::Partial) => break Ok(()),
                Err(e) => break Err(format!("bad reply: {e:?}")),
            }
        };
        link.inbuf.drain(..used);
        for (sent, r) in redirects {
            self.redirect(sent, r, now);
        }
        result
    }

    /// Sends a publish where `MOVED` or `ASK` points; one `MOVED` also updates the
    /// slot's owner and asks for the whole map again.
    fn redirect(&mut self, sent: Outgoing, r: Redirect, now: Instant) {
        let inner = self.inner.clone();
        let stats = &inner.stats;
        let target = self.shards.iter().position(|s| s.as_ref().is_some_and(|s| s.publ.at == r.to));
        if r.ask {
            stats.asks.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.moves.fetch_add(1, Ordering::Relaxed);
            if let (Some(t), Some(slot)) = (target, self.slots.get_mut(usize::from(r.slot))) {
                *slot = t as u16;
            }
            self.refresh_soon(now);
            if let Some(due) = self.topo.due.as_mut() {
                *due = now;
            }
        }
        let link = target.and_then(|t| self.shards[t].as_mut()).map(|s| &mut s.publ);
        match link {
            Some(l) if l.phase != Phase::Down => {
                if r.ask {
                    resp::command(&mut l.out, 1);
                    resp::arg(&mut l.out, &[b"ASKING"]);
                    l.awaiting.push_back(Awaited::Asking);
                }
                l.out.extend_from_slice(&sent.cmd);
                l.awaiting.push_back(Awaited::Publish(sent));
            }
            _ => {
                // A node not in the map yet: the next read of the map finds it.
                stats.lost_disconnected.fetch_add(1, Ordering::Relaxed);
                self.refresh_soon(now);
            }
        }
    }

    /// Handles what arrived on a subscribed link: messages, subscription counts.
    fn pushes(&mut self, i: usize, now: Instant) -> Result<(), String> {
        let server = self.server.upgrade();
        let Driver { shards, inner, streams, limits, .. } = self;
        let inner = &**inner;
        let prefix = inner.cfg.prefix.as_str();
        let Some(s) = shards[i].as_mut() else { return Ok(()) };
        let link = &mut s.subl;
        let mut used = 0;
        let mut malformed = 0u64;
        // A slot moved: read the map again, subscribe again where it went.
        let mut moved = false;
        let result = loop {
            let v = match resp::parse(&link.inbuf[used..], limits) {
                Ok(Status::Complete((v, n))) => {
                    used += n;
                    v
                }
                Ok(Status::Partial) => break Ok(()),
                Err(e) => break Err(format!("bad reply: {e:?}")),
            };
            let items = match v {
                Value::Array(Some(items)) => items,
                Value::Simple(_) if link.auth_pending => {
                    link.auth_pending = false;
                    continue;
                }
                Value::Error(e) if std::mem::take(&mut link.auth_pending) => {
                    break Err(format!("AUTH refused: {}", String::from_utf8_lossy(e)));
                }
                Value::Error(e) if Redirect::parse(e).is_some() => {
                    // An SSUBSCRIBE sent on a stale map: subscribe everything again once
                    // the map is read (subscribing twice is harmless).
                    log::debug!("redis: subscribe link: {}", String::from_utf8_lossy(e));
                    s.subscribed.clear();
                    moved = true;
                    continue;
                }
                Value::Error(e) => {
                    log::warn!("redis: subscribe link: {}", String::from_utf8_lossy(e));
                    continue;
                }
                other => break Err(format!("unexpected reply on the subscribed link: {other:?}")),
            };
            link.healthy = true;
            let kind = items.first().and_then(Value::bytes).unwrap_or(b"");
            let (name, data) = match (kind, items.len()) {
                (b"message" | b"smessage", 3) => (items[1].bytes(), items[2].bytes()),
                (b"pmessage", 4) => (items[2].bytes(), items[3].bytes()),
                (b"sunsubscribe", 3) => {
                    // Unasked (the topic is still ours here): its slot moved away.
                    let topic = items[1].bytes().and_then(|c| command::channel(prefix, c)).map(|c| match c {
                        Channel::Room(t) | Channel::Node(t) => t,
                    });
                    if let Some(t) = topic.and_then(|t| std::str::from_utf8(t).ok()) {
                        if s.subscribed.remove(t) {
                            log::info!("redis: {} dropped room {t:?} (its slot moved): following it", link.at.server());
                            moved = true;
                        }
                    }
                    if let Value::Int(n) = items[2] {
                        s.channels = n.max(0) as u64;
                    }
                    continue;
                }
                (b"subscribe" | b"unsubscribe" | b"psubscribe" | b"punsubscribe" | b"ssubscribe", 3) => {
                    if let Value::Int(n) = items[2] {
                        s.channels = n.max(0) as u64;
                    }
                    continue;
                }
                _ => continue,
            };
            let (node_traffic, topic) = match name.and_then(|c| command::channel(prefix, c)) {
                Some(Channel::Node(t)) => (true, t),
                Some(Channel::Room(t)) => (false, t),
                None => {
                    malformed += 1;
                    continue;
                }
            };
            let data = data.unwrap_or(b"");
            let Ok(topic) = std::str::from_utf8(topic) else {
                malformed += 1;
                continue;
            };
            if node_traffic && super::streams::is_numbered(data) {
                // From the history script: every node, this one too, delivers it now.
                match (super::streams::decode_numbered(data), &server) {
                    (Some((msg, seq)), Some(p)) => match p.publish_numbered(topic, msg, seq) {
                        Ok(_) => inner.stats.received.fetch_add(1, Ordering::Relaxed),
                        Err(_) => inner.stats.refused.fetch_add(1, Ordering::Relaxed),
                    },
                    (Some(_), None) => 0,
                    (None, _) => {
                        malformed += 1;
                        0
                    }
                };
                continue;
            }
            let msg = if node_traffic {
                match envelope::decode(data) {
                    Ok(env) if env.node == inner.node => continue, // our own, delivered locally already
                    Ok(env) => {
                        if let Some(seq) = env.seq {
                            match streams.check(topic, env.node, seq, now) {
                                Verdict::Deliver { lost } => {
                                    inner.stats.messages_lost.fetch_add(lost, Ordering::Relaxed);
                                }
                                Verdict::Late => {
                                    inner.stats.late.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                            }
                        }
                        env.msg
                    }
                    Err(_) => {
                        malformed += 1;
                        continue;
                    }
                }
            } else {
                if data.len() > inner.cfg.max_message {
                    malformed += 1;
                    continue;
                }
                match std::str::from_utf8(data) {
                    Ok(text) => Message::Text(text),
                    Err(_) => Message::Binary(data),
                }
            };
            if let Some(p) = &server {
                match p.publish_local(topic, msg) {
                    Ok(_) => {
                        inner.stats.received.fetch_add(1, Ordering::Relaxed);
                        if !node_traffic {
                            inner.stats.plain.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        };
        link.inbuf.drain(..used);
        self.update_channels();
        if moved {
            self.inner.desired.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
            if let Some(due) = self.topo.due.as_mut() {
                *due = now;
            }
        }
        if malformed > 0 {
            self.inner.stats.malformed.fetch_add(malformed, Ordering::Relaxed);
            if self.malformed_warned_at.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                self.malformed_warned_at = Some(now);
                log::warn!("redis: dropped {malformed} message(s): node traffic that is not a wsloop envelope, or over --max-message");
            }
        }
        result
    }

    /// The shard that owns `slot` now, if any.
    fn shard_of(&self, slot: u16) -> Option<usize> {
        match self.flavor {
            Flavor::Single => Some(0),
            Flavor::Cluster => self.slots.get(usize::from(slot)).copied().filter(|&s| s != NO_SHARD).map(usize::from),
        }
    }

    /// Makes each shard's channel set match the wanted topics it owns (per-topic mode).
    fn sync_subscriptions(&mut self) {
        if self.inner.cfg.mode != SubscribeMode::PerTopic {
            return;
        }
        let prefix = self.inner.cfg.prefix.clone();
        let inner = self.inner.clone();
        let mut d = inner.desired.lock().unwrap_or_else(|e| e.into_inner());
        if !std::mem::take(&mut d.dirty) {
            return;
        }
        // Each wanted topic's shard, looked up once per change of the wanted set.
        let owner: HashMap<&str, Option<usize>> =
            d.topics.iter().map(|t| (&**t, self.shard_of(command::topic_slot(&prefix, t)))).collect();
        for (i, s) in self.shards.iter_mut().enumerate() {
            let Some(s) = s.as_mut() else { continue };
            if s.subl.phase != Phase::Ready {
                continue;
            }
            let add: Vec<Box<str>> = owner
                .iter()
                .filter(|(t, o)| **o == Some(i) && !s.subscribed.contains(**t))
                .map(|(t, _)| Box::from(*t))
                .collect();
            let remove: Vec<Box<str>> =
                s.subscribed.iter().filter(|t| owner.get(&***t).copied().flatten() != Some(i)).cloned().collect();
            command::subscriptions(&mut s.subl.out, self.flavor, Change::Subscribe, &prefix, &add);
            command::subscriptions(&mut s.subl.out, self.flavor, Change::Unsubscribe, &prefix, &remove);
            for t in remove {
                if !d.topics.contains(&t) {
                    self.streams.forget(&t);
                }
                s.subscribed.remove(&t);
            }
            s.subscribed.extend(add);
        }
    }

    /// Moves queued publishes to their shard's publishing link (numbering each), or
    /// counts them lost while that link is down.
    fn pump(&mut self, now: Instant) {
        self.queue_more = false;
        self.output_full = false;
        let max_output = self.inner.cfg.max_output;
        for _ in 0..MAX_QUEUE_PER_TURN {
            let o = match self.held.take() {
                Some(o) => o,
                None => match self.queue.try_recv() {
                    Ok(mut o) => {
                        self.inner.queued_bytes.fetch_sub(o.cmd.len(), Ordering::Relaxed);
                        if let Some(at) = o.seq_at {
                            let seq = self.numbering.next(&o.cmd[o.topic.clone()], now);
                            o.cmd[at..at + 8].copy_from_slice(&seq.to_be_bytes());
                        }
                        o
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
                },
            };
            let target = self.shard_of(o.slot);
            let link = target.and_then(|t| self.shards[t].as_mut()).map(|s| &mut s.publ);
            match link {
                Some(l) if l.phase != Phase::Down => {
                    if l.pending_output() >= max_output {
                        // Redis is not keeping up: leave the rest in the queue, which
                        // fills and then drops (counted) at the workers.
                        self.held = Some(o);
                        self.output_full = true;
                        return;
                    }
                    l.out.extend_from_slice(&o.cmd);
                    l.awaiting.push_back(Awaited::Publish(o));
                }
                _ => {
                    self.inner.stats.lost_disconnected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.queue_more = true;
    }

    /// Reads the cluster's slot map from the first node that answers, and moves the
    /// shards to it: new primaries get links, former ones lose theirs.
    fn refresh_topology(&mut self, now: Instant) {
        let cfg = &self.inner.cfg;
        let timeout = cfg.connect_timeout.min(Duration::from_secs(1));
        let n = self.topo.known.len();
        let mut errors = Vec::new();
        let mut map = None;
        for k in 0..n {
            let at = &self.topo.known[(self.topo.next + k) % n];
            match topology::fetch(cfg, self.tls.as_ref(), at, timeout) {
                Ok(m) => {
                    self.topo.next = (self.topo.next + k) % n;
                    map = Some(m);
                    break;
                }
                Err(e) => errors.push(format!("{}: {e}", at.server())),
            }
        }
        self.inner.stats.topology_reads.fetch_add(1, Ordering::Relaxed);
        let Some(map) = map else {
            self.topo.due = Some(now + self.topo.wait);
            self.topo.wait = (self.topo.wait * 2).min(self.inner.cfg.backoff_max);
            self.topo.next = (self.topo.next + 1) % n.max(1);
            if self.topo.last_warn.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                self.topo.last_warn = Some(now);
                log::warn!("redis: cannot read the cluster's slot map: {}", errors.join("; "));
            }
            return;
        };
        self.topo.wait = TOPOLOGY_RETRY;
        let down = self.shards.iter().flatten().any(|s| s.publ.phase != Phase::Ready || s.subl.phase != Phase::Ready);
        // While a link is down the map is read often: that is how a failover is seen.
        self.topo.due = Some(now + if down { TOPOLOGY_RETRY * 2 } else { TOPOLOGY_EVERY });
        self.apply(&map, now);
    }

    fn apply(&mut self, map: &[SlotRange], now: Instant) {
        let mut slots = vec![NO_SHARD; SLOTS];
        let mut used = vec![false; self.shards.len()];
        for r in map {
            let i = match self.shards.iter().position(|s| s.as_ref().is_some_and(|s| s.publ.at == r.primary)) {
                Some(i) => i,
                None => {
                    let i = self.shards.iter().position(Option::is_none).unwrap_or(self.shards.len());
                    if i == self.shards.len() {
                        self.shards.push(None);
                        used.push(false);
                    }
                    log::info!("redis: shard primary {} (slots {}-{} ...)", r.primary.server(), r.start, r.end);
                    self.shards[i] = Some(Self::shard(i, r.primary.clone(), self.inner.cfg.backoff_min, now));
                    i
                }
            };
            used[i] = true;
            slots[usize::from(r.start)..=usize::from(r.end)].fill(i as u16);
        }
        for (i, u) in used.iter().enumerate() {
            if !u {
                if let Some(mut s) = self.shards[i].take() {
                    log::info!("redis: {} is no longer a primary: its links close", s.publ.at.server());
                    let registry = self.poll.registry();
                    let lost = s.publ.close(registry).iter().filter(|a| matches!(a, Awaited::Publish(_))).count();
                    s.subl.close(registry);
                    self.inner.stats.lost_disconnected.fetch_add(lost as u64, Ordering::Relaxed);
                }
            }
        }
        if slots != self.slots {
            self.slots = slots;
            self.inner.desired.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
        }
        self.update_channels();
        let shards = self.shards.iter().flatten().count();
        self.inner.stats.shards.store(shards as u64, Ordering::Relaxed);
        // Every node of the map can answer next time, the seeds too.
        let mut known: Vec<Endpoint> = match &self.inner.cfg.deployment {
            Deployment::Cluster { seeds } => seeds.clone(),
            Deployment::Single => Vec::new(),
        };
        for r in map {
            for e in std::iter::once(&r.primary).chain(&r.replicas) {
                if !known.contains(e) {
                    known.push(e.clone());
                }
            }
        }
        self.topo.known = known;
    }

    /// Lost-message warnings; sweeps of forgotten sequence state.
    fn housekeeping(&mut self, now: Instant) {
        if now.duration_since(self.pruned_at) >= PRUNE_EVERY {
            self.pruned_at = now;
            self.numbering.prune(now);
            self.streams.prune(now);
        }
        let s = &self.inner.stats;
        let lost = s.lost_queue_full.load(Ordering::Relaxed)
            + s.lost_disconnected.load(Ordering::Relaxed)
            + s.lost_rejected.load(Ordering::Relaxed);
        if lost == self.lost_seen || self.lost_warned_at.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return;
        }
        log::warn!(
            "redis: {} publish(es) did not reach Redis (delivered on this node only); {} lost so far",
            lost - self.lost_seen,
            lost
        );
        self.lost_seen = lost;
        self.lost_warned_at = Some(now);
    }
}

/// A cluster's `-MOVED <slot> <host>:<port>` or `-ASK <slot> <host>:<port>`.
#[derive(Debug, PartialEq, Eq)]
struct Redirect {
    ask: bool,
    slot: u16,
    to: Endpoint,
}

impl Redirect {
    fn parse(e: &[u8]) -> Option<Redirect> {
        let text = std::str::from_utf8(e).ok()?;
        let mut it = text.split(' ');
        let ask = match it.next()? {
            "MOVED" => false,
            "ASK" => true,
            _ => return None,
        };
        let slot = it.next()?.parse().ok().filter(|&s: &u16| usize::from(s) < SLOTS)?;
        let (host, port) = it.next()?.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some(Redirect { ask, slot, to: Endpoint { host: host.to_string(), port: port.parse().ok()? } })
    }
}

/// Escapes Redis glob characters in a channel prefix.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_are_read() {
        let ep = |h: &str, p| Endpoint { host: h.into(), port: p };
        assert_eq!(
            Redirect::parse(b"MOVED 3999 127.0.0.1:6381"),
            Some(Redirect { ask: false, slot: 3999, to: ep("127.0.0.1", 6381) })
        );
        assert_eq!(Redirect::parse(b"ASK 1 [::1]:7000"), Some(Redirect { ask: true, slot: 1, to: ep("::1", 7000) }));
        assert_eq!(Redirect::parse(b"MOVED 16384 h:1"), None);
        assert_eq!(Redirect::parse(b"ERR unknown command"), None);
        assert_eq!(Redirect::parse(b"MOVED 1 h"), None);
    }
}
