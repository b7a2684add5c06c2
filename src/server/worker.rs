//! One worker: a mio event loop that owns its connections, buffers and timers. A thin
//! driver around the sans-IO core: read into the ring, decode, call the handler, flush.

use super::admin::Admin;
use super::config::AcceptMode;
use super::conn::{flag, Conn, Core, Flushed, Phase};
use super::ctx::Claims;
use super::ctx::{Connection, Ctx, TimerEvent, NO_CONN};
use super::handler::{Accept, ConnId, Handler, Message, Reject};
use super::metrics::{RejectReason, TimeoutKind};
use super::shared::{Cmd, Shared};
use super::sock::Sock;
use crate::buf::Ring;
use crate::proto::frame::OpCode;
use crate::proto::handshake::{header_storage, parse_request, write_accept, write_error, write_reject, ParseStatus};
use crate::proto::{CloseCode, Decoder, Event};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const LISTENER: Token = Token(usize::MAX - 1);
pub(crate) const WAKER: Token = Token(usize::MAX - 2);

/// Work bounds per loop turn, so one busy source cannot starve the others.
const MAX_ACCEPTS_PER_TURN: usize = 256;
const MAX_INBOX_PER_TURN: usize = 4096;
const MAX_TIMERS_PER_TURN: usize = 8192;

/// How often the admin worker, drained itself, checks whether the others are done.
const ADMIN_DRAIN_POLL: Duration = Duration::from_millis(20);

/// errno values for "too many open files" (process, system).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

pub(crate) struct Worker<H: Handler> {
    poll: Poll,
    admin: Option<Admin>,
    listener: Option<TcpListener>,
    /// With `AcceptMode::Handoff`: the worker the next accepted connection goes to.
    next_worker: usize,
    inbox: Receiver<Cmd>,
    conns: Slab<Conn>,
    handler: H,
    ctx: Ctx,
    next_generation: u32,
    /// Worker clock (ns, see `Ctx::clock_ns`) at which accepting resumes.
    accept_paused_until: Option<u64>,
    accept_more: bool,
    fd_exhaustion_logged: bool,
    drain_deadline: Option<u64>,
    stop: bool,
    expired: Vec<(super::timer::TimerId, TimerEvent)>,
    work: Vec<u32>,
    /// The read ring of whichever open connection is being read, lent to that
    /// connection only if it leaves bytes undecoded: the usual read (whole messages)
    /// then costs no pool traffic at all.
    scratch: Ring,
    last_trim: u32,
}

impl<H: Handler> Worker<H> {
    pub fn new(
        id: usize,
        poll: Poll,
        mut listener: Option<TcpListener>,
        inbox: Receiver<Cmd>,
        shared: Arc<Shared>,
        handler: H,
        admin: Option<TcpListener>,
    ) -> io::Result<Self> {
        if let Some(l) = listener.as_mut() {
            poll.registry().register(l, LISTENER, Interest::READABLE)?;
        }
        let mut ctx = Ctx::new(id, shared);
        let scratch = ctx.rpool.take();
        let admin = match admin {
            Some(l) => Some(Admin::new(l, poll.registry())?),
            None => None,
        };
        Ok(Worker {
            admin,
            poll,
            listener,
            next_worker: 0,
            inbox,
            conns: Slab::new(),
            handler,
            ctx,
            next_generation: 1,
            accept_paused_until: None,
            accept_more: false,
            fd_exhaustion_logged: false,
            drain_deadline: None,
            stop: false,
            expired: Vec::new(),
            work: Vec::new(),
            scratch,
            last_trim: 0,
        })
    }

    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // Two clock reads per loop turn: at the start of its work and at its end (the
        // latter also dates the next poll timeout). Times are nanoseconds since the
        // worker started, so the per-turn arithmetic is plain integer math.
        let mut now = self.ctx.clock_ns();
        loop {
            let timeout = self.poll_timeout(now);
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.ctx.set_now(self.ctx.clock_ns());
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => self.drain_inbox(),
                    t if Admin::owns(t) => {
                        if let Some(a) = self.admin.as_mut() {
                            a.event(t, self.poll.registry(), &self.ctx.shared);
                        }
                    }
                    Token(k) => {
                        let key = k as u32;
                        self.ctx.current = key;
                        let hup = ev.is_read_closed() || ev.is_error();
                        if ev.is_readable() || hup {
                            self.read(key, hup);
                        }
                        // From here on, output this connection queues (reading resumed
                        // by the flush below) must go on the dirty list: nothing else
                        // would flush it this turn.
                        self.ctx.current = NO_CONN;
                        // Flush what the read produced now, while the ring is hot and
                        // before the next connection takes one from the pool: echo
                        // then needs one write ring per worker, not one per event.
                        if let Some(c) = self.conns.get_mut(k) {
                            if c.core.has(flag::DIRTY) || ev.is_writable() {
                                c.core.set(flag::DIRTY, false);
                                self.flush(key);
                            }
                        }
                    }
                }
            }
            now = self.after_events();
            if self.stop {
                break;
            }
        }
        self.close_all("server stopped");
        Ok(())
    }

    /// How long the poll may sleep: until the earliest of the next timer tick, the end
    /// of the broadcast coalescing window, accept resumption and the drain deadline.
    fn poll_timeout(&mut self, now: u64) -> Option<Duration> {
        // Work left for the next turn (output queued by a connection whose reading
        // resumed during this turn's flushes, more to accept, local publishes): look at
        // the sockets and come straight back.
        if self.accept_more || !self.ctx.local_pubs.is_empty() || !self.ctx.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut at = u64::MAX;
        if let Some(ticks) = self.ctx.wheel.ticks_until_next(self.ctx.now_tick as u64) {
            at = (self.ctx.now_tick as u64 + ticks).saturating_mul(self.ctx.tick_ns);
        }
        if let Some(since) = self.ctx.deferred_since {
            at = at.min(since.saturating_add(self.ctx.coalesce_ns));
        }
        if let Some(t) = self.accept_paused_until {
            at = at.min(t);
        }
        if let Some(t) = self.drain_deadline {
            at = at.min(t);
            if self.conns.is_empty() && self.admin.is_some() {
                // Only here for the admin listener: look again for the others' progress.
                at = at.min(now.saturating_add(ADMIN_DRAIN_POLL.as_nanos() as u64));
            }
        }
        (at != u64::MAX).then(|| Duration::from_nanos(at.saturating_sub(now)))
    }

    /// Everything that runs once per loop turn after the events: local publishes,
    /// timers, flushes, accept resumption, drain progress, metrics.
    /// Its checks use the time the turn's work began (`ctx.now_ns`). Returns when it
    /// ended.
    fn after_events(&mut self) -> u64 {
        self.deliver_local_pubs();
        let now = self.ctx.now_ns;
        if self.accept_more || self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            self.accept();
        }
        if self.ctx.wheel.current_tick() <= self.ctx.now_tick as u64 {
            self.run_timers();
        }
        self.deliver_local_pubs();
        if !self.ctx.dirty.is_empty() {
            self.flush_dirty();
        }
        if let Some(since) = self.ctx.deferred_since {
            if now.saturating_sub(since) >= self.ctx.coalesce_ns {
                self.flush_deferred();
            }
        }
        if let Some(deadline) = self.drain_deadline {
            if self.conns.is_empty() && !self.serves_admin_for_others() {
                self.stop = true;
            } else if now >= deadline {
                log::warn!("worker {}: drain timeout, dropping {} connections", self.ctx.id, self.conns.len());
                self.stop = true;
            }
        }
        // About once a second, let the buffer pools shrink to what recent load needed.
        if self.ctx.now_tick.wrapping_sub(self.last_trim) >= self.ctx.ticks_per_sec {
            self.last_trim = self.ctx.now_tick;
            self.ctx.rpool.trim();
            self.ctx.wpool.trim();
        }
        let end = self.ctx.clock_ns();
        let m = &self.ctx.metrics;
        m.loop_iterations.inc();
        m.loop_busy_ns.add(end.saturating_sub(now));
        end
    }

    /// While the server drains, the worker with the admin listener keeps answering
    /// `/healthz` (503) and `/metrics` until every worker's connections are gone, not
    /// only its own.
    fn serves_admin_for_others(&self) -> bool {
        self.admin.is_some() && self.ctx.shared.open.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    // ---- accepting ---------------------------------------------------------------

    fn accept(&mut self) {
        self.accept_more = false;
        for _ in 0..MAX_ACCEPTS_PER_TURN {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => self.dispatch(stream, addr.ip()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) => {
                    // EMFILE / ENFILE: keep serving, retry accepting shortly.
                    if !self.fd_exhaustion_logged {
                        log::warn!(
                            "worker {}: out of file descriptors ({e}) with {} connections; pausing accept for {:?}",
                            self.ctx.id,
                            self.conns.len(),
                            self.ctx.cfg.accept_pause
                        );
                        self.fd_exhaustion_logged = true;
                    }
                    self.accept_paused_until =
                        Some(self.ctx.now_ns.saturating_add(self.ctx.cfg.accept_pause.as_nanos() as u64));
                    return;
                }
                Err(e) => log::debug!("accept: {e}"),
            }
        }
        self.accept_more = true;
    }

    /// Serves an accepted connection here, or with `AcceptMode::Handoff` on the next
    /// worker in turn.
    fn dispatch(&mut self, stream: mio::net::TcpStream, ip: std::net::IpAddr) {
        let n = self.ctx.shared.workers.len();
        if self.ctx.cfg.accept_mode == AcceptMode::Handoff && n > 1 {
            let target = self.next_worker % n;
            self.next_worker = (target + 1) % n;
            if target != self.ctx.id {
                self.ctx.shared.workers[target].send(Cmd::Adopt { stream, ip });
                return;
            }
        }
        self.adopt(stream, ip);
    }

    /// Takes on an accepted connection (counted in this worker's `accepted`).
    fn adopt(&mut self, stream: mio::net::TcpStream, ip: std::net::IpAddr) {
        if self.drain_deadline.is_some() {
            // Handed over while this worker began to drain: refuse by closing.
            self.ctx.metrics.reject(RejectReason::Draining);
            return;
        }
        self.ctx.metrics.accepted.inc();
        self.add_conn(stream, ip);
    }

    fn add_conn(&mut self, mut stream: mio::net::TcpStream, ip: std::net::IpAddr) {
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= u32::MAX as usize - 4 {
            return;
        }
        if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE) {
            log::warn!("register: {e}");
            return;
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let now = self.ctx.now_tick;
        let conn = entry.insert(Conn::new(stream, ip, generation, now));
        self.fd_exhaustion_logged = false;
        let at = now.saturating_add(self.ctx.ticks.handshake);
        self.ctx.arm(&mut conn.core, key as u32, at);
    }

    // ---- reading -----------------------------------------------------------------

    /// Reads until the socket is drained (a short read means it is: edge-triggered
    /// epoll reports the next arrival as a new event), decoding after each read.
    /// `to_end`: the peer's FIN or RST came with this event and no new edge will
    /// announce it, so read on past a short read until the socket says so.
    fn read(&mut self, key: u32, to_end: bool) {
        loop {
            let Worker { conns, ctx, handler, scratch, .. } = self;
            let Some(conn) = conns.get_mut(key as usize) else {
                return;
            };
            if conn.core.has(flag::READ_PAUSED | flag::MAYBE_READABLE) {
                if conn.core.has(flag::READ_PAUSED) {
                    conn.core.set(flag::MAYBE_READABLE, true);
                    return;
                }
                conn.core.set(flag::MAYBE_READABLE, false);
            }
            // An open connection with nothing left over reads into the scratch ring;
            // anything else into its own (a partial frame continues where it is).
            let use_scratch = conn.rbuf.is_none() && conn.core.phase == Phase::Open;
            let ring = if use_scratch { &mut *scratch } else { conn.rbuf.get_or_insert_with(|| ctx.rpool.take()) };
            let free = ring.free();
            if free == 0 {
                // A full ring the decoder could not use: cannot happen with
                // inline_limit == ring size, but never spin on it.
                log::error!("read buffer full without progress; dropping connection");
                self.remove(key, CloseCode::INTERNAL_ERROR, "read buffer stalled");
                return;
            }
            match ring.read_from(&mut Sock(&conn.core.stream)) {
                Ok(0) => {
                    self.on_eof(key);
                    return;
                }
                Ok(n) => {
                    ctx.metrics.bytes_in.add(n as u64);
                    conn.core.last_rx = ctx.now_tick;
                    if use_scratch {
                        Self::decode_ring(scratch, &mut conn.decoder, &mut conn.core, ctx, handler, key);
                        if !scratch.is_empty() {
                            // Undecoded bytes (a partial frame, or reading paused):
                            // the ring becomes the connection's, the worker takes another.
                            conn.rbuf = Some(std::mem::replace(scratch, ctx.rpool.take()));
                        }
                    } else if conn.core.phase == Phase::Open {
                        Self::frames(conn, ctx, handler, key);
                    } else {
                        self.process(key);
                    }
                    if n < free && !to_end {
                        if !use_scratch {
                            self.release_rbuf(key);
                        }
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !use_scratch {
                        self.release_rbuf(key);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("read: {e}");
                    self.remove(key, CloseCode::ABNORMAL, "connection reset");
                    return;
                }
            }
        }
    }

    #[inline]
    fn release_rbuf(&mut self, key: u32) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            if conn.rbuf.as_ref().is_some_and(|r| r.is_empty()) {
                if let Some(r) = conn.rbuf.take() {
                    self.ctx.rpool.give(r);
                }
            }
        }
    }

    fn on_eof(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.core.phase == Phase::Closed && !conn.core.out.is_empty() {
            // The peer's last bytes (a close frame, a bad request) came with its FIN and
            // were answered in this same read: write the answer before dropping.
            self.flush(key);
        }
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let closed_cleanly = match conn.core.phase {
            Phase::Closed => true,
            Phase::Closing => conn.core.has(flag::PEER_CLOSED),
            Phase::Handshaking | Phase::Open => false,
        };
        let (code, why) = if closed_cleanly {
            (CloseCode(conn.core.close_code), "closed")
        } else {
            (CloseCode::ABNORMAL, "peer went away without a close frame")
        };
        self.remove(key, code, why);
    }

    fn process(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        match conn.core.phase {
            Phase::Handshaking => self.handshake(key),
            Phase::Open | Phase::Closing => Self::frames(conn, &mut self.ctx, &mut self.handler, key),
            Phase::Closed => {
                // Lingering after our close: the peer's bytes are of no interest.
                if let Some(r) = conn.rbuf.as_mut() {
                    let n = r.len();
                    r.consume(n);
                }
            }
        }
    }

    fn handshake(&mut self, key: u32) {
        let Worker { conns, ctx, handler, .. } = self;
        let Some(conn) = conns.get_mut(key as usize) else {
            return;
        };
        let Some(mut ring) = conn.rbuf.take() else {
            return;
        };
        let mut storage = header_storage();
        let data = ring.make_contiguous();
        let outcome = parse_request(data, &mut storage, &ctx.limits);
        let consumed = match outcome {
            Ok(ParseStatus::Partial) => 0,
            Err(e) => {
                log::debug!("handshake refused from {}: {e}", conn.core.ip);
                ctx.metrics.handshake_failed(e.status());
                ctx.metrics.reject(RejectReason::BadHandshake);
                let mut resp = [0u8; 512];
                if let Ok(n) = write_error(&mut resp, e) {
                    conn.core.out.push(&mut ctx.wpool, &resp[..n]);
                }
                ctx.enter_closed(&mut conn.core, key);
                data.len()
            }
            Ok(ParseStatus::Complete(req, head_len)) => {
                let gate = gate(ctx, &req);
                if let Err(reject) = gate {
                    let reason = if reject.status == 403 { RejectReason::Origin } else { RejectReason::Auth };
                    ctx.metrics.reject(reason);
                    ctx.metrics.handshake_failed(reject.status);
                    log::info!("handshake from {} refused: {} {}", conn.core.ip, reject.status, reject.reason);
                    write_refusal(ctx, &mut conn.core, key, &reject);
                    data.len()
                } else if let Err(reason) = ctx.shared.admit(conn.core.ip) {
                    ctx.metrics.reject(reason);
                    ctx.metrics.handshake_failed(503);
                    log::info!("refusing {}: {}", conn.core.ip, reason.label());
                    let mut resp = [0u8; 512];
                    if let Ok(n) = write_reject(&mut resp, 503, "server busy, try again later", b"Retry-After: 1\r\n") {
                        conn.core.out.push(&mut ctx.wpool, &resp[..n]);
                    }
                    ctx.enter_closed(&mut conn.core, key);
                    data.len()
                } else {
                    ctx.claims = gate.ok().flatten();
                    let mut c = Connection { core: &mut conn.core, ctx: &mut *ctx, key };
                    let decision = handler.on_open(&mut c, &req);
                    match decision {
                        Ok(accept) => accept_upgrade(ctx, &mut conn.core, key, &req, accept),
                        Err(reject) => refuse(ctx, &mut conn.core, key, reject),
                    }
                    #[cfg(feature = "jwt")]
                    if conn.core.phase == Phase::Open && ctx.cfg.close_on_token_expiry {
                        if let Some(exp) = ctx.claims.as_ref().and_then(|c| c.exp) {
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs());
                            let after = std::time::Duration::from_secs(exp.saturating_sub(now));
                            let at = ctx.now_tick as u64 + super::ctx::to_ticks(after, ctx.cfg.tick) as u64;
                            let generation = conn.core.generation;
                            ctx.wheel.schedule(at, TimerEvent::Expire { key, generation });
                        }
                    }
                    ctx.claims = None;
                    head_len
                }
            }
        };
        ring.consume(consumed);
        conn.rbuf = Some(ring);
        if conn.core.phase == Phase::Open && conn.rbuf.as_ref().is_some_and(|r| !r.is_empty()) {
            // A client may pipeline its first frames behind the request.
            Self::frames(conn, ctx, handler, key);
        }
    }

    /// Decodes the read ring and hands each event to the handler. An associated
    /// function over the parts it needs, so the read loop calls it on the connection
    /// it already holds.
    fn frames(conn: &mut Conn, ctx: &mut Ctx, handler: &mut H, key: u32) {
        let Conn { rbuf, decoder, core } = conn;
        if let Some(ring) = rbuf.as_mut() {
            Self::decode_ring(ring, decoder, core, ctx, handler, key);
        }
    }

    /// `frames` over a given ring: the connection's own, or the worker's scratch ring.
    #[inline(always)]
    fn decode_ring(ring: &mut Ring, decoder: &mut Decoder, core: &mut Core, ctx: &mut Ctx, handler: &mut H, key: u32) {
        let data = ring.make_contiguous();
        let mut pos = 0;
        let mut msgs = 0u64;
        // Handling latency is sampled in one loop turn of 64: two clock reads per batch
        // are a visible share of a 32-byte echo.
        let started = (ctx.metrics.loop_iterations.get() & 63 == 0).then(Instant::now);
        loop {
            if core.phase == Phase::Closed {
                pos = data.len();
                break;
            }
            if core.has(flag::READ_PAUSED) {
                break;
            }
            if pos == data.len() && decoder.is_idle() {
                // Everything consumed and no frame pending: nothing more to decode.
                break;
            }
            let (n, ev) = match decoder.decode(&mut data[pos..], &ctx.dec) {
                Ok(r) => r,
                Err(e) => {
                    log::debug!("protocol error from {}: {e}", core.ip);
                    ctx.fail(core, key, e.close_code(), e.reason());
                    pos = data.len();
                    break;
                }
            };
            pos += n;
            let Some(ev) = ev else {
                if n == 0 {
                    break;
                }
                continue;
            };
            let m = &ctx.metrics;
            match ev {
                Event::Text(_) | Event::Binary(_) if core.phase != Phase::Open => {}
                Event::Text(s) => {
                    m.frames_in[1].inc();
                    msgs += 1;
                    if ctx.cfg.max_msg_rate.is_some() && rate_limited(ctx, core, key) {
                        continue;
                    }
                    handler.on_message(&mut Connection { core, ctx, key }, Message::Text(s));
                }
                Event::Binary(b) => {
                    m.frames_in[2].inc();
                    msgs += 1;
                    if ctx.cfg.max_msg_rate.is_some() && rate_limited(ctx, core, key) {
                        continue;
                    }
                    handler.on_message(&mut Connection { core, ctx, key }, Message::Binary(b));
                }
                Event::Ping(p) => {
                    m.frames_in[4].inc();
                    if core.phase == Phase::Open {
                        let _ = ctx.send_frame(core, key, OpCode::Pong, p);
                    }
                }
                Event::Pong(_) => m.frames_in[5].inc(),
                Event::Close(close) => {
                    m.frames_in[3].inc();
                    core.set(flag::PEER_CLOSED, true);
                    if core.phase == Phase::Open {
                        // Echo the code (RFC 6455 5.5.1); an empty close gets an empty one.
                        ctx.queue_close(core, key, close.map(|(c, _)| (c, "")));
                    }
                    if core.phase != Phase::Closing {
                        core.close_code = close.map_or(CloseCode::NO_STATUS.0, |(c, _)| c.0);
                    }
                    ctx.enter_closed(core, key);
                    pos = data.len();
                    break;
                }
            }
        }
        ring.consume(pos);
        if msgs > 0 {
            let m = &ctx.metrics;
            m.messages_in.add(msgs);
            if let Some(t) = started {
                m.observe_latency_ns(t.elapsed().as_nanos() as u64 / msgs);
            }
        }
    }

    // ---- writing -----------------------------------------------------------------

    fn flush_dirty(&mut self) {
        self.flush_marked(flag::DIRTY);
    }

    fn flush_deferred(&mut self) {
        self.ctx.deferred_since = None;
        self.flush_marked(flag::DEFERRED);
    }

    /// Flushes the connections on the list that goes with `mark` (`DIRTY`: end of turn;
    /// `DEFERRED`: broadcast window) that still carry it: one flushed right after its
    /// read has lost the mark, and a slot reused by a new connection never had it.
    fn flush_marked(&mut self, mark: u16) {
        let mut work = std::mem::take(&mut self.work);
        let list = if mark == flag::DEFERRED { &mut self.ctx.deferred } else { &mut self.ctx.dirty };
        std::mem::swap(&mut work, list);
        for &key in &work {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            if conn.core.has(mark) {
                conn.core.set(mark, false);
                self.flush(key);
            }
        }
        work.clear();
        self.work = work;
    }

    /// Writes what the connection has queued and deals with the outcome.
    #[inline(always)]
    fn flush(&mut self, key: u32) {
        let Worker { conns, ctx, .. } = self;
        let Some(conn) = conns.get_mut(key as usize) else {
            return;
        };
        let core = &mut conn.core;
        let res = core.out.flush(&mut ctx.wpool, &mut Sock(&core.stream));
        if let Ok((n, Flushed::Empty)) = res {
            // The usual outcome: all written by an open connection that was neither
            // waiting for POLLOUT nor over its cap, so nothing changes state.
            if core.phase == Phase::Open && !core.has(flag::WRITE_INTEREST | flag::OVER_CAP | flag::READ_PAUSED) {
                ctx.metrics.bytes_out.add(n as u64);
                return;
            }
        }
        self.flushed(key, res);
    }

    /// The outcome of a flush other than the usual one: errors, a socket that would
    /// block, draining after backpressure, finishing a close.
    #[inline(never)]
    fn flushed(&mut self, key: u32, res: io::Result<(usize, Flushed)>) {
        let Worker { conns, ctx, handler, poll, .. } = self;
        let Some(conn) = conns.get_mut(key as usize) else {
            return;
        };
        let core = &mut conn.core;
        match res {
            Err(e) => {
                log::debug!("write: {e}");
                self.remove(key, CloseCode::ABNORMAL, "connection reset");
            }
            Ok((n, Flushed::Pending)) => {
                ctx.metrics.bytes_out.add(n as u64);
                if n > 0 {
                    core.tx_since = ctx.now_tick;
                }
                if !core.has(flag::WRITE_INTEREST) {
                    core.set(flag::WRITE_INTEREST, true);
                    let _ = poll.registry().reregister(
                        &mut core.stream,
                        Token(key as usize),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    // The write-stall clock runs from now.
                    let at = ctx.now_tick.saturating_add(ctx.ticks.idle);
                    ctx.arm(core, key, at);
                }
            }
            Ok((n, Flushed::Empty)) => {
                ctx.metrics.bytes_out.add(n as u64);
                let was_blocked = core.has(flag::WRITE_INTEREST) || core.has(flag::OVER_CAP);
                if core.has(flag::WRITE_INTEREST) {
                    core.set(flag::WRITE_INTEREST, false);
                    let _ = poll.registry().reregister(&mut core.stream, Token(key as usize), Interest::READABLE);
                }
                core.set(flag::OVER_CAP, false);
                match core.phase {
                    Phase::Closed => self.finish_closed(key),
                    // Closing too: a connection paused for backpressure when the server
                    // closed it must read again, or the peer's close reply goes unseen
                    // until close_timeout.
                    Phase::Open | Phase::Closing => {
                        if was_blocked && core.phase == Phase::Open {
                            handler.on_drain(&mut Connection { core, ctx, key });
                        }
                        if core.has(flag::READ_PAUSED) && core.out.len() <= ctx.cfg.max_backpressure {
                            core.set(flag::READ_PAUSED, false);
                            // Bytes may be waiting in the ring or the socket; no new
                            // readiness edge will announce them.
                            let pending = conn.rbuf.as_ref().is_some_and(|r| !r.is_empty());
                            let maybe = core.has(flag::MAYBE_READABLE);
                            if pending {
                                self.process(key);
                            }
                            if maybe || pending {
                                // The event that found reading paused may have carried
                                // the peer's FIN: read to the end.
                                self.read(key, true);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Closed and flushed: drop now if the peer already closed, else shut our side
    /// down and linger for its EOF (so unread input does not turn into a reset that
    /// destroys the close frame in flight).
    fn finish_closed(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.core.has(flag::PEER_CLOSED) {
            let code = CloseCode(conn.core.close_code);
            self.remove(key, code, "closed");
            return;
        }
        if !conn.core.has(flag::WRITE_SHUT) {
            conn.core.set(flag::WRITE_SHUT, true);
            let _ = conn.core.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    // ---- timers ------------------------------------------------------------------

    fn run_timers(&mut self) {
        let now = self.ctx.now_tick as u64;
        let mut expired = std::mem::take(&mut self.expired);
        self.ctx.wheel.advance(now, MAX_TIMERS_PER_TURN, &mut expired);
        for (id, ev) in expired.drain(..) {
            match ev {
                TimerEvent::Conn { key, generation } => {
                    let Some(conn) = self.conns.get_mut(key as usize) else {
                        continue;
                    };
                    if conn.core.generation != generation || conn.core.timer != Some(id) {
                        continue;
                    }
                    conn.core.timer = None;
                    self.check_timeouts(key);
                }
                TimerEvent::Expire { key, generation } => {
                    let Some(conn) = self.conns.get_mut(key as usize) else { continue };
                    if conn.core.generation == generation && conn.core.phase == Phase::Open {
                        log::info!("closing {}: token expired", conn.core.ip);
                        self.ctx.close(&mut conn.core, key, CloseCode::POLICY_VIOLATION, "token expired");
                    }
                }
                TimerEvent::App { key, generation, slot } => {
                    let Worker { conns, ctx, handler, .. } = self;
                    let token = ctx.app_tokens.remove(slot as usize);
                    let Some(conn) = conns.get_mut(key as usize) else {
                        continue;
                    };
                    if conn.core.generation != generation || conn.core.phase != Phase::Open {
                        continue;
                    }
                    handler.on_timer(&mut Connection { core: &mut conn.core, ctx, key }, token);
                }
            }
        }
        self.expired = expired;
    }

    /// The one place timeouts are decided; re-arms the connection's single timer for
    /// whatever is due next (last activity is stored, not rescheduled per message).
    fn check_timeouts(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let ctx = &mut self.ctx;
        let core = &mut conn.core;
        let now = ctx.now_tick;
        let t = ctx.ticks;
        let next = match core.phase {
            Phase::Handshaking => {
                let due = core.phase_since.saturating_add(t.handshake);
                if now >= due {
                    ctx.metrics.timeout(TimeoutKind::Handshake);
                    log::debug!("handshake timeout from {}", core.ip);
                    self.remove(key, CloseCode::ABNORMAL, "handshake timeout");
                    return;
                }
                due
            }
            Phase::Open => {
                if !core.out.is_empty() && now >= core.tx_since.saturating_add(t.idle) {
                    ctx.metrics.timeout(TimeoutKind::WriteStall);
                    log::info!("closing {}: outgoing buffer did not drain for {:?}", core.ip, ctx.cfg.idle_timeout);
                    self.remove(key, CloseCode::ABNORMAL, "write stall");
                    return;
                }
                let idle_due = core.last_rx.saturating_add(t.idle);
                if now >= idle_due {
                    ctx.metrics.timeout(TimeoutKind::Idle);
                    log::debug!("closing {}: idle for {:?}", core.ip, ctx.cfg.idle_timeout);
                    ctx.close(core, key, CloseCode::GOING_AWAY, "idle timeout");
                    return;
                }
                // Ping after ping_interval of silence, then every ping_interval until
                // something arrives or idle_timeout closes it.
                let quiet_since = core.last_rx.max(core.last_ping);
                let mut ping_due = quiet_since.saturating_add(t.ping);
                let pinged = now >= ping_due;
                if pinged {
                    let _ = ctx.send_frame(core, key, OpCode::Ping, b"");
                    core.last_ping = now;
                    ping_due = now.saturating_add(t.ping);
                }
                let mut next = idle_due.min(ping_due);
                if !core.out.is_empty() {
                    next = next.min(core.tx_since.saturating_add(t.idle));
                }
                if pinged {
                    ctx.arm(core, key, next);
                    core.set(flag::DIRTY, false);
                    // Written now, not with the rest of the turn's output: until it is
                    // written the ping holds a pooled ring, and the thousands of connections
                    // pinged in one tick would each take one, most newly allocated.
                    self.flush(key);
                    return;
                }
                next
            }
            Phase::Closing | Phase::Closed => {
                let due = core.phase_since.saturating_add(t.close);
                if now >= due {
                    if core.phase == Phase::Closing {
                        ctx.metrics.timeout(TimeoutKind::Close);
                    }
                    let code = CloseCode(core.close_code);
                    self.remove(key, code, "close handshake timed out");
                    return;
                }
                due
            }
        };
        ctx.arm(core, key, next);
    }

    // ---- inbox and pub/sub -------------------------------------------------------

    fn drain_inbox(&mut self) {
        for _ in 0..MAX_INBOX_PER_TURN {
            match self.inbox.try_recv() {
                Ok(Cmd::Publish { topic, frame }) => self.deliver(&topic, &frame),
                Ok(Cmd::Adopt { stream, ip }) => self.adopt(stream, ip),
                Ok(Cmd::Shutdown) => self.begin_drain(),
                Ok(Cmd::Stop) => self.stop = true,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.stop = true;
                    return;
                }
            }
        }
        // More left: come back next turn without waiting for a new wake-up.
        let _ = self.ctx.shared.workers[self.ctx.id].waker.wake();
    }

    #[inline(always)]
    fn deliver_local_pubs(&mut self) {
        if !self.ctx.local_pubs.is_empty() {
            self.deliver_local_pubs_slow();
        }
    }

    fn deliver_local_pubs_slow(&mut self) {
        while !self.ctx.local_pubs.is_empty() {
            let pubs = std::mem::take(&mut self.ctx.local_pubs);
            for (topic, frame) in &pubs {
                self.deliver(topic, frame);
            }
        }
    }

    fn deliver(&mut self, topic: &str, frame: &[u8]) {
        let Some(keys) = self.ctx.topics.take(topic) else {
            return;
        };
        for &key in &keys {
            if let Some(conn) = self.conns.get_mut(key as usize) {
                self.ctx.deliver(&mut conn.core, key, frame);
            }
        }
        self.ctx.topics.restore(topic, keys);
    }

    // ---- shutdown and removal ----------------------------------------------------

    fn begin_drain(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(self.ctx.clock_ns().saturating_add(self.ctx.cfg.drain_timeout.as_nanos() as u64));
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            match conn.core.phase {
                Phase::Handshaking => self.remove(key, CloseCode::ABNORMAL, "server shutting down"),
                Phase::Open => self.ctx.close(&mut conn.core, key, CloseCode::GOING_AWAY, "server shutting down"),
                _ => {}
            }
        }
        self.flush_dirty();
    }

    fn close_all(&mut self, why: &str) {
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            self.remove(key, CloseCode::ABNORMAL, why);
        }
    }

    /// Drops a connection from any phase: the one exit. Gives its buffers back, leaves
    /// its topics, releases its admission slot and tells the handler.
    fn remove(&mut self, key: u32, code: CloseCode, reason: &str) {
        if !self.conns.contains(key as usize) {
            return;
        }
        let mut conn = self.conns.remove(key as usize);
        let ctx = &mut self.ctx;
        if let Some(id) = conn.core.timer.take() {
            ctx.wheel.cancel(id);
        }
        if let Some(r) = conn.rbuf.take() {
            ctx.rpool.give(r);
        }
        conn.core.out.discard(&mut ctx.wpool);
        if let Some(topics) = conn.core.topics.take() {
            for t in topics.iter() {
                if ctx.topics.unsubscribe(t, key) {
                    ctx.shared.set_topic_bit(t, ctx.id, false);
                }
            }
        }
        ctx.metrics.close(code.0);
        if conn.core.has(flag::OPENED) {
            ctx.metrics.open.sub(1);
            ctx.shared.release(conn.core.ip);
            let id = ConnId { worker: ctx.id as u16, key, generation: conn.core.generation };
            self.handler.on_close(id, code, reason);
        }
        // Dropping the stream closes the socket; epoll forgets a closed descriptor.
    }
}

/// Token bucket check for one incoming message; closes with 1008 when empty.
#[inline]
fn rate_limited(ctx: &mut Ctx, core: &mut Core, key: u32) -> bool {
    let Some(rate) = ctx.cfg.max_msg_rate else {
        return false;
    };
    let now = ctx.now_tick;
    let elapsed = now.wrapping_sub(core.tokens_tick) as u64;
    if elapsed > 0 {
        let per_tick = rate as u64 * ctx.cfg.tick.as_micros() as u64;
        let add = (elapsed * per_tick / 1_000_000) as u32;
        if add > 0 || core.tokens_tick == 0 {
            core.tokens = core.tokens.saturating_add(add).min(rate);
            core.tokens_tick = now;
        }
    }
    if core.tokens == 0 {
        ctx.metrics.rate_limited.inc();
        log::info!("closing {}: message rate over {rate}/s", core.ip);
        ctx.close(core, key, CloseCode::POLICY_VIOLATION, "message rate limit exceeded");
        return true;
    }
    core.tokens -= 1;
    false
}

fn accept_upgrade(ctx: &mut Ctx, core: &mut Core, key: u32, req: &crate::proto::Request<'_, '_>, accept: Accept<'_>) {
    // Only a subprotocol the client really offered; never a `bearer.<token>` entry.
    let protocol = accept.protocol.filter(|p| crate::auth::bearer::client_protocols(req).any(|o| o == *p));
    let mut resp = [0u8; 1024];
    match write_accept(&mut resp, req, protocol, b"") {
        Ok(n) => {
            core.out.send_first(&mut ctx.wpool, &mut Sock(&core.stream), &resp[..n]);
            core.phase = Phase::Open;
            core.set(flag::OPENED, true);
            core.phase_since = ctx.now_tick;
            core.last_rx = ctx.now_tick;
            core.last_ping = ctx.now_tick;
            core.tokens = ctx.cfg.max_msg_rate.unwrap_or(0);
            core.tokens_tick = ctx.now_tick;
            ctx.metrics.open.add(1);
            ctx.mark_dirty(core, key);
            let at = ctx.now_tick.saturating_add(ctx.ticks.ping.min(ctx.ticks.idle));
            if let Some(id) = core.timer {
                ctx.wheel.reschedule(id, at as u64);
            } else {
                ctx.arm(core, key, at);
            }
        }
        Err(_) => refuse(ctx, core, key, Reject::new(500, "response too large")),
    }
}

/// Answers a refused upgrade with its HTTP status. Called only after admission was
/// granted, which it gives back.
fn refuse(ctx: &mut Ctx, core: &mut Core, key: u32, reject: Reject) {
    // Whatever on_open queued must not follow an error response.
    core.out.discard(&mut ctx.wpool);
    ctx.shared.release(core.ip);
    log::info!("handshake from {} refused: {} {}", core.ip, reject.status, reject.reason);
    ctx.metrics.handshake_failed(reject.status);
    ctx.metrics.reject(RejectReason::Application);
    write_refusal(ctx, core, key, &reject);
}

/// The server's own checks before `on_open`: origin policy (403), then the token (401).
/// `Ok` carries the verified claims when JWT auth is on.
fn gate(ctx: &Ctx, req: &crate::proto::Request<'_, '_>) -> Result<Option<Claims>, Reject> {
    if let Err(e) = ctx.cfg.origin_policy.check(req) {
        return Err(Reject::new(e.status(), e.reason()));
    }
    #[cfg(feature = "jwt")]
    if let Some(v) = &ctx.cfg.jwt {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        return match v.verify_request(req, now) {
            Ok(claims) => Ok(Some(claims)),
            Err(e) => {
                let line = e.www_authenticate().trim_end().to_string();
                Err(Reject::new(e.status(), e.reason()).with_header(line))
            }
        };
    }
    Ok(None)
}

/// Queues the HTTP error response for `reject` and moves to Closed.
fn write_refusal(ctx: &mut Ctx, core: &mut Core, key: u32, reject: &Reject) {
    let mut extra = String::new();
    for h in &reject.headers {
        extra.push_str(h);
        extra.push_str("\r\n");
    }
    let mut resp = vec![0u8; 512 + reject.reason.len() + extra.len()];
    if let Ok(n) = write_reject(&mut resp, reject.status, &reject.reason, extra.as_bytes()) {
        core.out.push(&mut ctx.wpool, &resp[..n]);
    }
    ctx.enter_closed(core, key);
}
