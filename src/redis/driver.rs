//! The bridge's thread: one mio loop over two Redis connections.
//!
//! The publishing link takes ready-made `PUBLISH` commands off the queue and pipelines
//! them; each integer reply is one acknowledged publish. The subscribed link keeps
//! Redis's channel set equal to the topics this node wants and hands incoming messages
//! from other nodes to the server.
//!
//! Each link goes through these states; every failure leads to `Down`, every success
//! to `Ready`:
//!
//! ```text
//!          retry time passed             connected (AUTH, SUBSCRIBE queued)
//!   Down ---------------------> Connecting ----------------------------> Ready
//!    ^  <------------------------'   timeout / refused                   |
//!    '-------------------------------------------------------------------'
//!          error, EOF, bad reply: wait the backoff (doubling, capped), retry
//! ```

use super::envelope;
use super::resp::{self, Limits, Status, Value};
use super::{Inner, SubscribeMode};
use crate::server::{Message, WeakPublisher};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PUB: Token = Token(0);
const SUB: Token = Token(1);
pub(crate) const WAKER: Token = Token(2);

/// Queue entries moved per loop turn, reads per link per turn: bounded work, so one
/// busy direction cannot starve the other.
const MAX_QUEUE_PER_TURN: usize = 4096;
const MAX_READS_PER_TURN: usize = 64;
const READ_CHUNK: usize = 64 * 1024;
/// Channels per SUBSCRIBE / UNSUBSCRIBE command.
const CHANNELS_PER_COMMAND: usize = 512;
/// The loop wakes at least this often for its bookkeeping (lost-message warnings).
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Warnings about lost messages or an outage repeat at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Down,
    Connecting,
    Ready,
}

/// One connection to Redis and its buffers.
struct Link {
    token: Token,
    name: &'static str,
    phase: Phase,
    stream: Option<TcpStream>,
    /// Down: when to retry. Connecting: when to give up.
    deadline: Instant,
    backoff: Duration,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    /// The first reply on this connection answers AUTH.
    auth_pending: bool,
    /// PUBLISH commands sent or queued and not yet answered.
    awaiting: u64,
    /// Read stopped at the per-turn cap: read again without waiting for an event.
    read_more: bool,
    /// Has been Ready once: later connections are reconnects.
    ever_up: bool,
    /// Got a good reply on this connection: the next failure starts the backoff over.
    healthy: bool,
    /// When the link went down after having been up, for the recovery log.
    down_since: Option<Instant>,
    last_warn: Option<Instant>,
}

impl Link {
    fn new(token: Token, name: &'static str, backoff: Duration) -> Link {
        Link {
            token,
            name,
            phase: Phase::Down,
            stream: None,
            deadline: Instant::now(),
            backoff,
            inbuf: Vec::new(),
            out: Vec::new(),
            written: 0,
            auth_pending: false,
            awaiting: 0,
            read_more: false,
            ever_up: false,
            healthy: false,
            down_since: None,
            last_warn: None,
        }
    }

    fn pending_output(&self) -> usize {
        self.out.len() - self.written
    }

    /// Writes queued output until done or the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        while self.written < self.out.len() {
            match stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        } else if self.written > self.out.len() / 2 {
            self.out.drain(..self.written);
            self.written = 0;
        }
        Ok(())
    }
}

/// Outcome of reading a link.
enum Read_ {
    /// Bytes were appended to the link's input (maybe none).
    Data,
    /// The peer closed the connection.
    Eof,
}

pub(crate) struct Driver {
    poll: Poll,
    inner: Arc<Inner>,
    queue: Receiver<Vec<u8>>,
    server: WeakPublisher,
    publ: Link,
    subl: Link,
    /// Channels requested on the current subscribed connection (per-topic mode).
    subscribed: HashSet<Box<str>>,
    limits: Limits,
    scratch: Box<[u8]>,
    /// The queue was left non-empty at the per-turn cap.
    queue_more: bool,
    /// The queue was left non-empty because the publishing link had enough output.
    output_full: bool,
    rng: u64,
    lost_seen: u64,
    lost_warned_at: Option<Instant>,
    malformed_warned_at: Option<Instant>,
}

impl Driver {
    pub fn new(poll: Poll, inner: Arc<Inner>, queue: Receiver<Vec<u8>>, server: WeakPublisher) -> Driver {
        let backoff = inner.cfg.backoff_min;
        let limits = Limits::for_payload(inner.cfg.max_message);
        let rng = inner.node | 1;
        Driver {
            poll,
            queue,
            server,
            publ: Link::new(PUB, "publish", backoff),
            subl: Link::new(SUB, "subscribe", backoff),
            subscribed: HashSet::new(),
            limits,
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            queue_more: false,
            output_full: false,
            rng,
            lost_seen: 0,
            lost_warned_at: None,
            malformed_warned_at: None,
            inner,
        }
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(16);
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
            let (mut pub_ev, mut sub_ev) = (false, false);
            for ev in events.iter() {
                match ev.token() {
                    PUB => pub_ev = true,
                    SUB => sub_ev = true,
                    _ => {}
                }
            }
            if pub_ev || self.publ.read_more {
                self.drive(PUB, now);
            }
            if sub_ev || self.subl.read_more {
                self.drive(SUB, now);
            }
            self.maintain(now);
            self.sync_subscriptions();
            self.pump();
            for which in [PUB, SUB] {
                let link = self.link(which);
                if link.phase == Phase::Ready {
                    if let Err(e) = link.flush() {
                        self.fail(which, now, &format!("write: {e}"));
                    }
                }
            }
            // The socket took all the output without filling: no writable event will
            // come, so come back at once for the rest of the queue.
            if self.output_full && self.publ.pending_output() < self.inner.cfg.max_output {
                self.queue_more = true;
            }
            let up = self.publ.phase == Phase::Ready && self.subl.phase == Phase::Ready;
            self.inner.stats.connected.store(up, Ordering::Relaxed);
            self.warn_losses(now);
        }
        log::debug!("redis: bridge thread exits");
    }

    fn timeout(&self, now: Instant) -> Duration {
        if self.queue_more || self.publ.read_more || self.subl.read_more {
            return Duration::ZERO;
        }
        let mut t = HOUSEKEEPING;
        for l in [&self.publ, &self.subl] {
            if l.phase != Phase::Ready {
                t = t.min(l.deadline.saturating_duration_since(now));
            }
        }
        t
    }

    fn link(&mut self, which: Token) -> &mut Link {
        if which == PUB {
            &mut self.publ
        } else {
            &mut self.subl
        }
    }

    /// Starts connections whose retry time has come; gives up on slow ones.
    fn maintain(&mut self, now: Instant) {
        for which in [PUB, SUB] {
            let link = self.link(which);
            match link.phase {
                Phase::Down if now >= link.deadline => self.connect(which, now),
                Phase::Connecting if now >= link.deadline => self.fail(which, now, "connect timed out"),
                _ => {}
            }
        }
    }

    fn connect(&mut self, which: Token, now: Instant) {
        let cfg = &self.inner.cfg;
        let addr = match (cfg.host.as_str(), cfg.port).to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => a,
            Ok(None) => return self.fail(which, now, "the host name has no address"),
            Err(e) => return self.fail(which, now, &format!("resolving {}: {e}", cfg.host)),
        };
        let timeout = cfg.connect_timeout;
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return self.fail(which, now, &format!("connect: {e}")),
        };
        // Publishes are small and pipelined: no Nagle delay. Keepalive notices a Redis
        // host that vanished without a reset.
        let _ = stream.set_nodelay(true);
        let ka = socket2::TcpKeepalive::new().with_time(Duration::from_secs(15)).with_interval(Duration::from_secs(5));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
        let token = self.link(which).token;
        if let Err(e) = self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
            return self.fail(which, now, &format!("register: {e}"));
        }
        let link = self.link(which);
        link.stream = Some(stream);
        link.phase = Phase::Connecting;
        link.deadline = now + timeout;
    }

    /// Checks a connection in progress (mio: on a writable event, a pending error or a
    /// peer address tells whether it completed).
    fn check_connected(&mut self, which: Token, now: Instant) -> bool {
        let link = self.link(which);
        let Some(stream) = link.stream.as_ref() else {
            return false;
        };
        let result = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(true) => {
                self.on_ready(which, now);
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.fail(which, now, &format!("connect: {e}"));
                false
            }
        }
    }

    /// Connected: queue AUTH and, on the subscribed link, the subscriptions.
    fn on_ready(&mut self, which: Token, now: Instant) {
        let (user, pass) = (self.inner.cfg.username.clone(), self.inner.cfg.password.clone());
        let server = self.inner.cfg.server();
        let inner = self.inner.clone();
        let link = self.link(which);
        link.phase = Phase::Ready;
        link.inbuf.clear();
        link.out.clear();
        link.written = 0;
        link.awaiting = 0;
        link.auth_pending = pass.is_some();
        if let Some(p) = pass {
            match user {
                Some(u) => {
                    resp::command(&mut link.out, 3);
                    resp::arg(&mut link.out, &[b"AUTH"]);
                    resp::arg(&mut link.out, &[u.as_bytes()]);
                }
                None => {
                    resp::command(&mut link.out, 2);
                    resp::arg(&mut link.out, &[b"AUTH"]);
                }
            }
            resp::arg(&mut link.out, &[p.as_bytes()]);
        }
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
        if which == SUB {
            self.subscribed.clear();
            match self.inner.cfg.mode {
                SubscribeMode::Pattern => {
                    let pattern = glob_escape(&self.inner.cfg.prefix);
                    resp::command(&mut self.subl.out, 2);
                    resp::arg(&mut self.subl.out, &[b"PSUBSCRIBE"]);
                    resp::arg(&mut self.subl.out, &[pattern.as_bytes(), b"*"]);
                }
                SubscribeMode::PerTopic => {
                    self.inner.desired.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
                }
            }
        }
    }

    /// Drops the connection; retries after the backoff.
    fn fail(&mut self, which: Token, now: Instant, why: &str) {
        let jitter = self.next_jitter();
        let server = self.inner.cfg.server();
        let backoff_min = self.inner.cfg.backoff_min;
        let backoff_max = self.inner.cfg.backoff_max;
        let registry: &Registry = self.poll.registry();
        let link = if which == PUB { &mut self.publ } else { &mut self.subl };
        if let Some(mut s) = link.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        let was_ready = link.phase == Phase::Ready;
        if link.healthy {
            link.backoff = backoff_min;
        }
        link.healthy = false;
        link.phase = Phase::Down;
        // 75% to 125% of the backoff, so that nodes do not reconnect in lockstep.
        let wait = link.backoff.mul_f64(0.75 + 0.5 * jitter);
        link.deadline = now + wait;
        link.backoff = (link.backoff * 2).min(backoff_max);
        link.inbuf = Vec::new();
        link.out = Vec::new();
        link.written = 0;
        link.read_more = false;
        let unanswered = std::mem::take(&mut link.awaiting);
        if link.down_since.is_none() && (was_ready || !link.ever_up) {
            link.down_since = Some(now);
            link.last_warn = Some(now);
            let missed = if which == PUB {
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
        if which == PUB {
            // Sent or not, nobody confirmed them: count them lost (a few may have made it).
            self.inner.stats.lost_disconnected.fetch_add(unanswered, Ordering::Relaxed);
        } else {
            self.subscribed.clear();
            self.inner.stats.channels.store(0, Ordering::Relaxed);
        }
    }

    fn next_jitter(&mut self) -> f64 {
        // xorshift64: spreading retries needs no more.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Reads what the link has (up to the per-turn cap) into its input buffer.
    fn read(&mut self, which: Token) -> io::Result<Read_> {
        let link = if which == PUB { &mut self.publ } else { &mut self.subl };
        link.read_more = false;
        let Some(stream) = link.stream.as_mut() else {
            return Ok(Read_::Data);
        };
        for _ in 0..MAX_READS_PER_TURN {
            match stream.read(&mut self.scratch) {
                Ok(0) => return Ok(Read_::Eof),
                Ok(n) => {
                    link.inbuf.extend_from_slice(&self.scratch[..n]);
                    if link.inbuf.len() >= READ_CHUNK {
                        // Parse before reading more: the buffer holds at most one
                        // partial reply beyond this.
                        link.read_more = true;
                        return Ok(Read_::Data);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read_::Data),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        link.read_more = true;
        Ok(Read_::Data)
    }

    /// Handles an event (or a pending read) on a link: completes the connection, reads
    /// and handles replies.
    fn drive(&mut self, which: Token, now: Instant) {
        if self.link(which).phase == Phase::Connecting && !self.check_connected(which, now) {
            return;
        }
        if self.link(which).phase != Phase::Ready {
            return;
        }
        for _ in 0..MAX_READS_PER_TURN {
            let eof = match self.read(which) {
                Ok(Read_::Eof) => true,
                Ok(Read_::Data) => false,
                Err(e) => return self.fail(which, now, &format!("read: {e}")),
            };
            let handled = if which == PUB { self.publish_replies() } else { self.pushes(now) };
            if let Err(why) = handled {
                return self.fail(which, now, &why);
            }
            if eof {
                return self.fail(which, now, "Redis closed the connection");
            }
            if !self.link(which).read_more {
                return;
            }
        }
    }

    /// Counts the replies to PUBLISH (and AUTH) in the publishing link's input.
    fn publish_replies(&mut self) -> Result<(), String> {
        let link = &mut self.publ;
        let stats = &self.inner.stats;
        let mut used = 0;
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
                    link.awaiting = link.awaiting.saturating_sub(1);
                    link.healthy = true;
                    match v {
                        // An integer from PUBLISH, {offset, epoch} from the history script.
                        Value::Int(_) | Value::Array(_) => {
                            stats.published.fetch_add(1, Ordering::Relaxed);
                        }
                        Value::Error(e) => {
                            stats.lost_rejected.fetch_add(1, Ordering::Relaxed);
                            log::debug!("redis: PUBLISH refused: {}", String::from_utf8_lossy(e));
                        }
                        other => break Err(format!("unexpected reply to PUBLISH: {other:?}")),
                    }
                }
                Ok(Status::Partial) => break Ok(()),
                Err(e) => break Err(format!("bad reply: {e:?}")),
            }
        };
        link.inbuf.drain(..used);
        result
    }

    /// Handles what arrived on the subscribed link: messages, subscription counts.
    fn pushes(&mut self, now: Instant) -> Result<(), String> {
        let server = self.server.upgrade();
        let inner = &*self.inner;
        let prefix = inner.cfg.prefix.as_bytes();
        let link = &mut self.subl;
        let mut used = 0;
        let mut malformed = 0u64;
        let result = loop {
            let v = match resp::parse(&link.inbuf[used..], &self.limits) {
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
                Value::Error(e) => {
                    log::warn!("redis: subscribe link: {}", String::from_utf8_lossy(e));
                    continue;
                }
                other => break Err(format!("unexpected reply on the subscribed link: {other:?}")),
            };
            link.healthy = true;
            let kind = items.first().and_then(Value::bytes).unwrap_or(b"");
            let (channel, data) = match (kind, items.len()) {
                (b"message", 3) => (items[1].bytes(), items[2].bytes()),
                (b"pmessage", 4) => (items[2].bytes(), items[3].bytes()),
                (b"subscribe" | b"unsubscribe" | b"psubscribe" | b"punsubscribe", 3) => {
                    if let Value::Int(n) = items[2] {
                        inner.stats.channels.store(n.max(0) as u64, Ordering::Relaxed);
                    }
                    continue;
                }
                _ => continue,
            };
            let Some(rest) = channel.and_then(|c| c.strip_prefix(prefix)) else {
                malformed += 1;
                continue;
            };
            let data = data.unwrap_or(b"");
            // Node traffic has a channel of its own per topic: a backend's plain payload
            // on the topic's channel is never read as an envelope, whatever its bytes.
            let (node_traffic, topic) = match rest.strip_prefix(envelope::NODE_CHANNEL_MARK) {
                Some(t) => (true, t),
                None => (false, rest),
            };
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
                    Ok(env) => env.msg,
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
        if malformed > 0 {
            inner.stats.malformed.fetch_add(malformed, Ordering::Relaxed);
            if self.malformed_warned_at.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                self.malformed_warned_at = Some(now);
                log::warn!("redis: dropped {malformed} message(s): node traffic that is not a wsloop envelope, or over --max-message");
            }
        }
        result
    }

    /// Makes Redis's channel set match the wanted topics (per-topic mode).
    fn sync_subscriptions(&mut self) {
        if self.inner.cfg.mode != SubscribeMode::PerTopic || self.subl.phase != Phase::Ready {
            return;
        }
        let (add, remove) = {
            let mut d = self.inner.desired.lock().unwrap_or_else(|e| e.into_inner());
            if !std::mem::take(&mut d.dirty) {
                return;
            }
            let add: Vec<Box<str>> = d.topics.iter().filter(|t| !self.subscribed.contains(*t)).cloned().collect();
            let remove: Vec<Box<str>> = self.subscribed.iter().filter(|t| !d.topics.contains(*t)).cloned().collect();
            (add, remove)
        };
        let prefix = self.inner.cfg.prefix.as_bytes();
        for (verb, topics) in [(&b"SUBSCRIBE"[..], &add), (&b"UNSUBSCRIBE"[..], &remove)] {
            // UNSUBSCRIBE with no channel means all of them: never send an empty one.
            for chunk in topics.chunks(CHANNELS_PER_COMMAND / 2) {
                resp::command(&mut self.subl.out, 1 + 2 * chunk.len());
                resp::arg(&mut self.subl.out, &[verb]);
                for t in chunk {
                    // The topic's channel (backends' plain payloads) and its node channel.
                    resp::arg(&mut self.subl.out, &[prefix, t.as_bytes()]);
                    resp::arg(&mut self.subl.out, &[prefix, envelope::NODE_CHANNEL_MARK, t.as_bytes()]);
                }
            }
        }
        for t in remove {
            self.subscribed.remove(&t);
        }
        self.subscribed.extend(add);
    }

    /// Moves queued publishes to the publishing link, or counts them lost while Redis is
    /// down. While connecting they wait in the queue.
    fn pump(&mut self) {
        self.queue_more = false;
        self.output_full = false;
        let max_output = self.inner.cfg.max_output;
        let phase = self.publ.phase;
        if phase == Phase::Connecting {
            return;
        }
        for _ in 0..MAX_QUEUE_PER_TURN {
            if phase == Phase::Ready && self.publ.pending_output() >= max_output {
                // Redis is not keeping up: leave the rest in the queue, which fills and
                // then drops (counted) at the workers.
                self.output_full = true;
                return;
            }
            let cmd = match self.queue.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => return,
            };
            self.inner.queued_bytes.fetch_sub(cmd.len(), Ordering::Relaxed);
            if phase == Phase::Ready {
                self.publ.out.extend_from_slice(&cmd);
                self.publ.awaiting += 1;
            } else {
                self.inner.stats.lost_disconnected.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.queue_more = true;
    }

    /// A warning, at most every few seconds, while publishes are being lost.
    fn warn_losses(&mut self, now: Instant) {
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
