//! One generator thread: a mio loop over its share of the connections.
//!
//! The main thread moves every worker through the same phases and only ever talks to
//! them through [`Shared`] (and a [`mio::Waker`] to cut a poll short):
//!
//! ```text
//!   Connect --all workers done connecting--> Run --window (+ grace) over--> Close
//!   open the planned connections,            echo / publish / subscribe /   close frames,
//!   `batch` at a time, answer pings          hold; count what lands in      wait for replies,
//!                                            the measured window            then exit
//! ```
//!
//! Each worker returns a [`WorkerReport`]; counters for the progress line are mirrored
//! into its slot of [`Shared::counters`] once per loop turn.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use wsloop::proto::frame::Role as WireRole;
use wsloop::proto::handshake::ClientHandshakeError;
use wsloop::proto::{CloseCode, DecoderConfig, Event, OpCode};

use crate::client::{start_connect, Conn, ConnectStatus, Outbox, ReadOutcome, Role, Session, State};
use crate::payload::{self, Kind, Rng};
use crate::report::{latency_histogram, ErrorKind, Errors};

/// The token of each worker's waker; connections use their slab keys.
pub const WAKER: Token = Token(usize::MAX);

/// Reads per connection per loop turn, so one busy connection cannot starve the rest.
const MAX_READS_PER_TURN: usize = 16;
/// Frames the publisher writes per loop turn at most.
const MAX_SENDS_PER_TURN: usize = 4096;
/// The publisher stops queueing while this much is unwritten.
const MAX_PUBLISH_BACKLOG: usize = 4 << 20;
/// A publisher further behind its schedule than this skips the missed sends.
const MAX_PUBLISH_LAG: Duration = Duration::from_millis(100);
/// After every close reply is in, how long to wait for the servers' FINs.
const CLOSE_LINGER: Duration = Duration::from_millis(200);
/// Longest poll, so a missed wake-up costs at most this much.
const MAX_POLL: Duration = Duration::from_millis(100);

/// The run's phases (see the module diagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Connect = 0,
    Run = 1,
    Close = 2,
}

/// A worker's counters for the progress line, on their own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Counters {
    /// Connections that completed the handshake.
    pub opened: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Messages received (echoes, deliveries, pings in idle mode).
    pub msgs: AtomicU64,
    /// Messages counted in the measured window.
    pub window_msgs: AtomicU64,
    /// Publisher: messages sent in the measured window.
    pub window_sent: AtomicU64,
    pub errors: AtomicU64,
    /// Nanoseconds after `Shared::base` when this worker's connect phase ended; 0 before.
    pub connect_done_ns: AtomicU64,
}

/// What the main thread and the workers share.
#[derive(Debug)]
pub struct Shared {
    pub base: Instant,
    phase: AtomicU8,
    window_start_ns: AtomicU64,
    window_end_ns: AtomicU64,
    pub counters: Box<[Counters]>,
}

impl Shared {
    pub fn new(threads: usize) -> Shared {
        Shared {
            base: Instant::now(),
            phase: AtomicU8::new(Phase::Connect as u8),
            window_start_ns: AtomicU64::new(u64::MAX),
            window_end_ns: AtomicU64::new(u64::MAX),
            counters: (0..threads).map(|_| Counters::default()).collect(),
        }
    }

    pub fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Connect,
            1 => Phase::Run,
            _ => Phase::Close,
        }
    }

    /// Sets the measured window; call before [`Shared::set_phase`]`(Run)`.
    pub fn set_window(&self, start: Instant, end: Instant) {
        self.window_start_ns.store(self.ns(start), Ordering::Relaxed);
        self.window_end_ns.store(self.ns(end), Ordering::Relaxed);
    }

    /// Ends the window early (SIGINT); workers see it within a loop turn.
    pub fn cut_window(&self, at: Instant) {
        self.window_end_ns.fetch_min(self.ns(at), Ordering::Relaxed);
    }

    pub fn window(&self) -> (u64, u64) {
        (self.window_start_ns.load(Ordering::Relaxed), self.window_end_ns.load(Ordering::Relaxed))
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }

    pub fn sum(&self, f: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.counters.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
    }
}

/// What one worker is asked to do.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub index: usize,
    pub target: SocketAddr,
    pub host: String,
    pub path: String,
    /// The connections to open: role and source address.
    pub plan: Vec<(Role, Option<SocketAddr>)>,
    pub size: usize,
    pub kind: Kind,
    /// Offer permessage-deflate.
    pub deflate: bool,
    pub inflight: usize,
    /// Broadcast publishing rate, messages per second.
    pub rate: f64,
    pub rbuf_len: usize,
    pub connect_batch: usize,
    pub connect_timeout: Duration,
    /// The connect phase ends here whatever is still pending.
    pub connect_deadline: Instant,
    pub close_timeout: Duration,
    pub seed: u64,
    /// wss://: the TLS client configuration.
    pub tls: Option<crate::tls::TlsClient>,
}

/// What one worker measured.
#[derive(Debug)]
pub struct WorkerReport {
    /// Echo round trips or broadcast fan-out latencies in the window, in µs.
    pub latency: Histogram<u64>,
    /// TCP connect to validated 101, in µs.
    pub handshake: Histogram<u64>,
    pub errors: Errors,
    pub opened: u64,
    pub negotiated: u64,
    pub window_msgs: u64,
    pub window_bytes: u64,
    /// Bytes read from the server in the window.
    pub window_wire: u64,
    pub window_sent: u64,
    /// Publisher: sends skipped because it fell behind its schedule.
    pub skipped_sends: u64,
}

/// State the event handlers update, apart from the connection slab.
struct Ctx {
    base: Instant,
    kind: Kind,
    size: usize,
    inflight: usize,
    rng: Rng,
    scratch: Vec<u8>,
    /// The echo pipeline refills (Run phase only).
    sending: bool,
    window: (u64, u64),
    errors: Errors,
    latency: Histogram<u64>,
    handshake: Histogram<u64>,
    opened: u64,
    /// Connections whose offer of permessage-deflate was accepted.
    negotiated: u64,
    msgs: u64,
    window_msgs: u64,
    window_bytes: u64,
    /// Bytes read from the server in the window (frames and all).
    window_wire: u64,
    window_sent: u64,
    /// Connections in `Closing { acked: false }`.
    unacked: usize,
}

impl Ctx {
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    fn in_window(&self, ns: u64) -> bool {
        ns >= self.window.0 && ns < self.window.1
    }

    fn data_opcode(&self) -> OpCode {
        if self.kind.is_text() {
            OpCode::Text
        } else {
            OpCode::Binary
        }
    }

    /// Queues one echo request with a fresh payload.
    fn send_echo(&mut self, out: &mut Outbox, s: &mut Session, now: Instant) {
        let seed = self.rng.next_u64();
        let size = self.size;
        payload::fill(seed, self.kind, &mut self.scratch[..size]);
        let mask = self.rng.mask_key();
        out.frame(self.data_opcode(), &self.scratch[..size], mask);
        s.inflight.push_back((now, seed));
    }

    /// Handles one event from the server; `false` drops the connection.
    fn on_event(&mut self, now: Instant, ev: Event<'_>, out: &mut Outbox, s: &mut Session) -> bool {
        let (bytes, is_text) = match ev {
            Event::Ping(p) => {
                self.count_idle_msg(now, s);
                if s.state == State::Open {
                    let mask = self.rng.mask_key();
                    out.frame(OpCode::Pong, p, mask);
                }
                return true;
            }
            Event::Pong(_) => return true,
            // Inflated by the connection when --deflate negotiated it; otherwise the
            // decoder refuses RSV1 before this.
            Event::Deflated { .. } => return false,
            Event::Close(c) => {
                if let State::Closing { acked: false } = s.state {
                    s.state = State::Closing { acked: true };
                    self.unacked -= 1;
                    return true;
                }
                if s.state == State::Open {
                    self.errors.add(ErrorKind::UnexpectedClose, || match c {
                        Some((code, reason)) => format!("server closed with {code} {reason:?}"),
                        None => "server closed without a status code".into(),
                    });
                    let mask = self.rng.mask_key();
                    out.close(CloseCode::NORMAL, mask);
                }
                return false;
            }
            Event::Text(t) => (t.as_bytes(), true),
            Event::Binary(b) => (b, false),
        };
        match s.role {
            Role::Echo => self.on_echo(now, bytes, is_text, out, s),
            Role::Subscriber => self.on_delivery(now, bytes, is_text, s),
            Role::Publisher => {}
            Role::Idle => self.count_idle_msg(now, s),
        }
        true
    }

    fn count_idle_msg(&mut self, now: Instant, s: &Session) {
        if s.role == Role::Idle {
            self.msgs += 1;
            if self.in_window(self.ns(now)) {
                self.window_msgs += 1;
            }
        }
    }

    fn on_echo(&mut self, now: Instant, bytes: &[u8], is_text: bool, out: &mut Outbox, s: &mut Session) {
        let Some((sent, seed)) = s.inflight.pop_front() else {
            self.errors
                .add(ErrorKind::UnexpectedMessage, || format!("{}-byte message with nothing in flight", bytes.len()));
            return;
        };
        if is_text != self.kind.is_text() {
            let text = self.kind.is_text();
            self.errors.add(ErrorKind::OpcodeMismatch, || format!("sent text={text} got text={is_text}"));
        } else if !payload::matches(seed, self.kind, self.size, bytes) {
            let size = self.size;
            self.errors.add(ErrorKind::PayloadMismatch, || format!("sent {size} bytes, got {} different", bytes.len()));
        } else if s.state == State::Open {
            self.msgs += 1;
            if self.in_window(self.ns(now)) {
                self.window_msgs += 1;
                self.window_bytes += bytes.len() as u64;
                self.latency.saturating_record(now.saturating_duration_since(sent).as_micros() as u64);
            }
        }
        if self.sending && s.state == State::Open {
            self.send_echo(out, s, now);
        }
    }

    fn on_delivery(&mut self, now: Instant, bytes: &[u8], is_text: bool, s: &mut Session) {
        if is_text != self.kind.is_text() {
            let text = self.kind.is_text();
            self.errors.add(ErrorKind::OpcodeMismatch, || format!("sent text={text} got text={is_text}"));
            return;
        }
        let Some((sent_ns, seq)) = payload::read_stamped(bytes, self.kind, self.size) else {
            let size = self.size;
            self.errors.add(ErrorKind::PayloadMismatch, || format!("sent {size} bytes, got {} different", bytes.len()));
            return;
        };
        if seq < s.next_seq {
            let want = s.next_seq;
            self.errors.add(ErrorKind::SequenceError, || format!("got seq {seq} after {}", want - 1));
        } else {
            s.next_seq = seq + 1;
        }
        self.msgs += 1;
        if self.in_window(sent_ns) {
            self.window_msgs += 1;
            self.window_bytes += bytes.len() as u64;
            let lat_ns = self.ns(now).saturating_sub(sent_ns);
            self.latency.saturating_record(lat_ns / 1000);
        }
    }
}

struct Worker {
    cfg: WorkerConfig,
    shared: Arc<Shared>,
    poll: Poll,
    conns: Slab<Conn>,
    ctx: Ctx,
    dec_cfg: DecoderConfig,
    phase: Phase,
    /// Next entry of `cfg.plan` to connect.
    plan_next: usize,
    /// Connects in progress: slab key, connection id, deadline (FIFO = deadline order).
    pending: VecDeque<(usize, u64, Instant)>,
    /// Connections still in Connecting or Handshaking.
    connecting: usize,
    next_id: u64,
    /// Connection ids by slab key, to tell a reused key from the one `pending` meant.
    ids: Vec<u64>,
    connect_done: bool,
    /// Connections whose read budget ran out with data possibly left.
    again: Vec<usize>,
    publisher: Option<usize>,
    next_send_ns: u64,
    interval_ns: u64,
    seq: u64,
    skipped_sends: u64,
    close_deadline: Option<Instant>,
    linger_deadline: Option<Instant>,
}

/// Runs a worker to completion.
pub fn run(cfg: WorkerConfig, shared: Arc<Shared>, poll: Poll) -> io::Result<WorkerReport> {
    let ctx = Ctx {
        base: shared.base,
        kind: cfg.kind,
        size: cfg.size,
        inflight: cfg.inflight,
        rng: Rng::new(cfg.seed),
        scratch: vec![0u8; cfg.size],
        sending: false,
        window: (u64::MAX, u64::MAX),
        errors: Errors::default(),
        latency: latency_histogram(),
        handshake: latency_histogram(),
        opened: 0,
        negotiated: 0,
        msgs: 0,
        window_msgs: 0,
        window_bytes: 0,
        window_wire: 0,
        window_sent: 0,
        unacked: 0,
    };
    let dec_cfg = DecoderConfig { role: WireRole::Client, inline_limit: cfg.rbuf_len, ..DecoderConfig::default() };
    let interval_ns = (1e9 / cfg.rate.max(1e-9)).max(1.0) as u64;
    let mut w = Worker {
        conns: Slab::with_capacity(cfg.plan.len()),
        ids: Vec::new(),
        cfg,
        shared,
        poll,
        ctx,
        dec_cfg,
        phase: Phase::Connect,
        plan_next: 0,
        pending: VecDeque::new(),
        connecting: 0,
        next_id: 0,
        connect_done: false,
        again: Vec::new(),
        publisher: None,
        next_send_ns: 0,
        interval_ns,
        seq: 0,
        skipped_sends: 0,
        close_deadline: None,
        linger_deadline: None,
    };
    w.run_loop()?;
    let ctx = w.ctx;
    Ok(WorkerReport {
        latency: ctx.latency,
        handshake: ctx.handshake,
        errors: ctx.errors,
        opened: ctx.opened,
        negotiated: ctx.negotiated,
        window_msgs: ctx.window_msgs,
        window_bytes: ctx.window_bytes,
        window_wire: ctx.window_wire,
        window_sent: ctx.window_sent,
        skipped_sends: w.skipped_sends,
    })
}

impl Worker {
    fn run_loop(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let phase = self.shared.phase();
            if phase != self.phase {
                self.enter(phase, now);
            }
            if self.phase == Phase::Connect || !self.connect_done {
                self.connect_step(now);
            }
            if self.phase == Phase::Run {
                // Re-read: SIGINT may have cut the window short.
                self.ctx.window = self.shared.window();
                self.publish(now);
            }
            self.mirror_counters();
            if self.phase == Phase::Close && self.close_step(now) {
                break;
            }
            let timeout = self.poll_timeout(now);
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let again = std::mem::take(&mut self.again);
            for key in again {
                self.service(key, false, true);
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                let drain = ev.is_read_closed() || ev.is_error();
                self.service(ev.token().0, ev.is_writable(), drain);
            }
        }
        self.mirror_counters();
        Ok(())
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        match phase {
            Phase::Connect => {}
            Phase::Run => {
                self.ctx.window = self.shared.window();
                match self.cfg.plan.first().map(|p| p.0) {
                    Some(Role::Echo) => {
                        self.ctx.sending = true;
                        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                        for key in keys {
                            let Conn { out, session, .. } = &mut self.conns[key];
                            if session.state == State::Open {
                                for _ in 0..self.ctx.inflight {
                                    self.ctx.send_echo(out, session, now);
                                }
                            }
                            self.flush(key);
                        }
                    }
                    Some(Role::Publisher) => self.next_send_ns = self.shared.ns(now),
                    _ => {}
                }
            }
            Phase::Close => {
                // Nothing more is started, even if the connect phase was cut short.
                self.plan_next = self.cfg.plan.len();
                self.connect_done = true;
                self.ctx.sending = false;
                self.ctx.window = self.shared.window();
                self.close_deadline = Some(now + self.cfg.close_timeout);
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    let conn = &mut self.conns[key];
                    match conn.session.state {
                        State::Open => {
                            let mask = self.ctx.rng.mask_key();
                            conn.out.close(CloseCode::NORMAL, mask);
                            conn.session.state = State::Closing { acked: false };
                            self.ctx.unacked += 1;
                            self.flush(key);
                        }
                        State::Connecting | State::Handshaking { .. } => {
                            // Only after the connect phase was cut short; already counted.
                            self.drop_conn(key);
                        }
                        State::Closing { .. } => {}
                    }
                }
            }
        }
    }

    /// Starts connects up to the batch size and times out slow ones.
    fn connect_step(&mut self, now: Instant) {
        if self.connect_done {
            return;
        }
        if now >= self.cfg.connect_deadline {
            let left = self.cfg.plan.len() - self.plan_next;
            for _ in 0..left {
                self.ctx
                    .errors
                    .add(ErrorKind::ConnectTimeout, || "connect phase ended before this connection was tried".into());
            }
            self.plan_next = self.cfg.plan.len();
            while let Some((key, id, _)) = self.pending.pop_front() {
                self.expire(key, id);
            }
        }
        while let Some(&(key, id, deadline)) = self.pending.front() {
            if !self.is_connecting(key, id) {
                self.pending.pop_front();
            } else if deadline <= now {
                self.pending.pop_front();
                self.expire(key, id);
            } else {
                break;
            }
        }
        while self.connecting < self.cfg.connect_batch && self.plan_next < self.cfg.plan.len() {
            let (role, source) = self.cfg.plan[self.plan_next];
            self.plan_next += 1;
            self.open_one(role, source, now);
        }
        if self.plan_next == self.cfg.plan.len() && self.connecting == 0 {
            self.connect_done = true;
            let ns = self.shared.ns(now).max(1);
            self.shared.counters[self.cfg.index].connect_done_ns.store(ns, Ordering::Release);
        }
    }

    fn is_connecting(&self, key: usize, id: u64) -> bool {
        self.ids.get(key) == Some(&id)
            && self
                .conns
                .get(key)
                .is_some_and(|c| matches!(c.session.state, State::Connecting | State::Handshaking { .. }))
    }

    fn expire(&mut self, key: usize, id: u64) {
        if self.is_connecting(key, id) {
            let state = self.conns[key].session.state;
            self.ctx.errors.add(ErrorKind::ConnectTimeout, || match state {
                State::Connecting => "TCP connect did not complete in time".into(),
                _ => "no handshake response in time".into(),
            });
            self.drop_conn(key);
        }
    }

    fn open_one(&mut self, role: Role, source: Option<SocketAddr>, now: Instant) {
        let stream = match start_connect(self.cfg.target, source) {
            Ok(s) => s,
            Err(e) => {
                let kind = if e.kind() == io::ErrorKind::ConnectionRefused {
                    ErrorKind::ConnectRefused
                } else {
                    ErrorKind::ConnectFailed
                };
                self.ctx.errors.add(kind, || format!("connect from {source:?}: {e}"));
                return;
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let tls = match self.cfg.tls.as_ref().map(|t| t.connect()).transpose() {
            Ok(t) => t,
            Err(e) => {
                self.ctx.errors.add(ErrorKind::ConnectFailed, || format!("TLS: {e}"));
                return;
            }
        };
        let mut conn = Conn::new(stream, tls, role, self.cfg.rbuf_len, now, self.cfg.deflate);
        if let Err(e) =
            self.poll.registry().register(&mut conn.stream, Token(key), Interest::READABLE | Interest::WRITABLE)
        {
            self.ctx.errors.add(ErrorKind::ConnectFailed, || format!("register: {e}"));
            return;
        }
        entry.insert(conn);
        if role == Role::Publisher {
            self.publisher = Some(key);
        }
        if self.ids.len() <= key {
            self.ids.resize(key + 1, u64::MAX);
        }
        self.next_id += 1;
        self.ids[key] = self.next_id;
        self.connecting += 1;
        self.pending.push_back((key, self.next_id, now + self.cfg.connect_timeout));
    }

    /// Handles readiness of connection `key` (or a retry from `again`); `drain` when the
    /// event also reported the peer's FIN or an error, so reads go on to WouldBlock.
    fn service(&mut self, key: usize, writable: bool, drain: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.session.state == State::Connecting {
            match conn.check_connect() {
                ConnectStatus::Pending => return,
                ConnectStatus::Failed(e) => {
                    let kind = if e.kind() == io::ErrorKind::ConnectionRefused {
                        ErrorKind::ConnectRefused
                    } else {
                        ErrorKind::ConnectFailed
                    };
                    self.ctx.errors.add(kind, || format!("connect: {e}"));
                    self.drop_conn(key);
                    return;
                }
                ConnectStatus::Connected => {
                    let nonce = self.ctx.rng.nonce();
                    conn.send_request(&self.cfg.host, &self.cfg.path, nonce);
                    self.flush(key);
                    return;
                }
            }
        }
        if writable && !self.flush(key) {
            return;
        }
        let now = Instant::now();
        let dec_cfg = self.dec_cfg;
        let mut budget_left = true;
        let mut stop = false;
        for i in 0.. {
            if stop {
                break;
            }
            if i == MAX_READS_PER_TURN {
                budget_left = false;
                break;
            }
            let conn = &mut self.conns[key];
            match conn.read_once() {
                ReadOutcome::WouldBlock => break,
                // A short read emptied the receive queue: stop here rather than spend
                // a second read on WouldBlock (half the generator's reads at inflight 1).
                // Edge-triggered epoll reports every later arrival as a new event; an
                // EOF or error that came with the data is drained (`drain`) instead.
                ReadOutcome::Data { short, n } => {
                    stop = short && !drain;
                    // What the server put on the wire for the measured messages (the
                    // publisher's copies are not counted as deliveries, so not here).
                    if conn.session.role != Role::Publisher && self.ctx.in_window(self.ctx.ns(now)) {
                        self.ctx.window_wire += n as u64;
                    }
                }
                ReadOutcome::Eof => return self.on_eof(key, None),
                ReadOutcome::Error(e) => return self.on_eof(key, Some(e)),
            }
            if let State::Handshaking { .. } = conn.session.state {
                match conn.parse_handshake() {
                    Ok(false) => continue,
                    Ok(true) => {
                        self.connecting -= 1;
                        self.ctx.opened += 1;
                        self.ctx.negotiated += conn.deflate_negotiated() as u64;
                        let us = now.saturating_duration_since(conn.session.started).as_micros() as u64;
                        self.ctx.handshake.saturating_record(us);
                    }
                    Err(e) => {
                        let (kind, detail) = match e {
                            ClientHandshakeError::Status(code) => {
                                (ErrorKind::HandshakeRejected, format!("HTTP status {code}"))
                            }
                            ClientHandshakeError::BadAccept => {
                                (ErrorKind::HandshakeInvalid, "wrong Sec-WebSocket-Accept".to_string())
                            }
                            ClientHandshakeError::Malformed => {
                                (ErrorKind::HandshakeInvalid, "malformed HTTP response".to_string())
                            }
                        };
                        self.ctx.errors.add(kind, || detail);
                        return self.drop_conn(key);
                    }
                }
            }
            let ctx = &mut self.ctx;
            match conn.decode_events(&dec_cfg, |ev, out, s| ctx.on_event(now, ev, out, s)) {
                Ok(true) => {}
                Ok(false) => {
                    // The server closed: our reply is queued; send it if we can.
                    let _ = conn.flush();
                    return self.drop_conn(key);
                }
                Err(e) => {
                    self.ctx.errors.add(ErrorKind::ProtocolError, || format!("server frame: {e}"));
                    return self.drop_conn(key);
                }
            }
        }
        if !self.flush(key) {
            return;
        }
        if !budget_left {
            self.again.push(key);
        }
    }

    /// Writes what is queued; `false` when the connection was dropped.
    fn flush(&mut self, key: usize) -> bool {
        let conn = &mut self.conns[key];
        if conn.pending() == 0 {
            return true;
        }
        match conn.flush() {
            Ok(()) => true,
            Err(e) => {
                self.on_eof(key, Some(e));
                false
            }
        }
    }

    /// The stream ended (`err` is `None`) or failed: classify by state and drop.
    fn on_eof(&mut self, key: usize, err: Option<io::Error>) {
        let state = self.conns[key].session.state;
        let what = match &err {
            None => "connection closed by the server".to_string(),
            Some(e) => e.to_string(),
        };
        let reset = match &err {
            None => true,
            Some(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
            ),
        };
        let kind = match state {
            State::Connecting => Some(ErrorKind::ConnectFailed),
            State::Handshaking { .. } => Some(ErrorKind::HandshakeInvalid),
            State::Open if reset => Some(ErrorKind::Disconnected),
            State::Open => Some(ErrorKind::IoError),
            State::Closing { acked: true } => None,
            State::Closing { acked: false } => Some(ErrorKind::NoCloseReply),
        };
        if let Some(kind) = kind {
            self.ctx.errors.add(kind, || what);
        }
        self.drop_conn(key);
    }

    fn drop_conn(&mut self, key: usize) {
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        match conn.session.state {
            State::Connecting | State::Handshaking { .. } => self.connecting -= 1,
            State::Closing { acked: false } => self.ctx.unacked -= 1,
            _ => {}
        }
        if self.publisher == Some(key) {
            self.publisher = None;
        }
    }

    /// Broadcast: sends what the schedule asks for, until the window ends.
    fn publish(&mut self, now: Instant) {
        let Some(key) = self.publisher else { return };
        let now_ns = self.shared.ns(now);
        if now_ns >= self.ctx.window.1 {
            return;
        }
        let conn = &mut self.conns[key];
        if conn.session.state != State::Open {
            return;
        }
        let size = self.ctx.size;
        let op = self.ctx.data_opcode();
        let mut sent = 0;
        while self.next_send_ns <= now_ns && sent < MAX_SENDS_PER_TURN && conn.out.pending() < MAX_PUBLISH_BACKLOG {
            payload::write_stamped(&mut self.ctx.scratch[..size], self.ctx.kind, now_ns, self.seq);
            let mask = self.ctx.rng.mask_key();
            conn.out.frame(op, &self.ctx.scratch[..size], mask);
            self.seq += 1;
            if self.ctx.in_window(now_ns) {
                self.ctx.window_sent += 1;
            }
            self.next_send_ns += self.interval_ns;
            sent += 1;
        }
        let lag = now_ns.saturating_sub(self.next_send_ns);
        if lag > MAX_PUBLISH_LAG.as_nanos() as u64 {
            self.skipped_sends += lag / self.interval_ns;
            self.next_send_ns = now_ns;
        }
        self.flush(key);
    }

    /// Close phase bookkeeping; `true` when the worker is done.
    fn close_step(&mut self, now: Instant) -> bool {
        if self.conns.is_empty() {
            return true;
        }
        if self.ctx.unacked == 0 {
            let linger = *self.linger_deadline.get_or_insert(now + CLOSE_LINGER);
            if now >= linger {
                self.drop_all();
                return true;
            }
        }
        if self.close_deadline.is_some_and(|d| now >= d) {
            let unacked = self.ctx.unacked;
            for _ in 0..unacked {
                self.ctx.errors.add(ErrorKind::CloseTimeout, || "no close reply in time".into());
            }
            self.drop_all();
            return true;
        }
        false
    }

    fn drop_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.drop_conn(key);
        }
    }

    fn poll_timeout(&self, now: Instant) -> Duration {
        if !self.again.is_empty() {
            return Duration::ZERO;
        }
        let mut t = MAX_POLL;
        if !self.connect_done {
            if let Some(&(_, _, d)) = self.pending.front() {
                t = t.min(d.saturating_duration_since(now));
            }
            t = t.min(self.cfg.connect_deadline.saturating_duration_since(now));
        }
        if self.phase == Phase::Run && self.publisher.is_some() {
            let now_ns = self.shared.ns(now);
            t = t.min(Duration::from_nanos(self.next_send_ns.saturating_sub(now_ns)));
        }
        if self.phase == Phase::Close {
            for d in [self.close_deadline, self.linger_deadline].into_iter().flatten() {
                t = t.min(d.saturating_duration_since(now));
            }
        }
        t
    }

    fn mirror_counters(&self) {
        let c = &self.shared.counters[self.cfg.index];
        let ctx = &self.ctx;
        c.opened.store(ctx.opened, Ordering::Relaxed);
        c.open.store((self.conns.len() - self.connecting) as u64, Ordering::Relaxed);
        c.msgs.store(ctx.msgs, Ordering::Relaxed);
        c.window_msgs.store(ctx.window_msgs, Ordering::Relaxed);
        c.window_sent.store(ctx.window_sent, Ordering::Relaxed);
        c.errors.store(ctx.errors.total(), Ordering::Relaxed);
    }
}
