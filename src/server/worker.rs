//! One worker's event loop, as plain as mio's `tcp_server.rs`: wait for readiness, read
//! into a ring, feed the session, call the handler, write what the session hands back,
//! re-arm the connection's one timer.

use super::conn::Conn;
use super::connection::{Connection, Ctx, TimerEvent, NO_CONN};
use super::handler::{ConnId, Handler, Message};
use super::shared::{Cmd, Shared};
use super::sock::Sock;
use super::timer::TimerId;
use crate::buf::Ring;
use crate::proto::frame::OpCode;
use crate::session::{CloseCause, Ending, Flushed, ReadTarget, Received, MAX_TRANSMIT_SLICES};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io::{self, IoSlice, Write};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const LISTENER: Token = Token(usize::MAX - 1);
pub(crate) const WAKER: Token = Token(usize::MAX - 2);

pub(crate) struct Worker<H: Handler> {
    pub(super) poll: Poll,
    pub(super) listener: Option<TcpListener>,
    /// With `AcceptMode::Handoff`: the worker the next accepted connection goes to.
    pub(super) next_worker: usize,
    pub(super) inbox: Receiver<Cmd>,
    pub(super) conns: Slab<Conn<H::State>>,
    pub(super) handler: H,
    pub(super) ctx: Ctx,
    pub(super) next_generation: u32,
    /// Worker clock (ns, see `Ctx::clock_ns`) at which accepting resumes.
    pub(super) accept_paused_until: Option<u64>,
    pub(super) accept_more: bool,
    pub(super) fd_exhaustion_logged: bool,
    pub(super) drain_deadline: Option<u64>,
    pub(super) stop: bool,
    pub(super) expired: Vec<(TimerId, TimerEvent)>,
    work: Vec<u32>,
    /// The read ring of whichever open connection is being read, lent to that
    /// connection only if it leaves bytes undecoded: the usual read (whole messages)
    /// then costs no pool traffic at all.
    pub(super) scratch: Ring,
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
    ) -> io::Result<Self> {
        if let Some(l) = listener.as_mut() {
            poll.registry().register(l, LISTENER, Interest::READABLE)?;
        }
        let mut ctx = Ctx::new(id, shared);
        let scratch = ctx.rpool.take();
        Ok(Worker {
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
            let woke = self.ctx.clock_ns();
            self.ctx.batching.polled(woke.saturating_sub(now));
            self.ctx.set_now(woke);
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => self.drain_inbox(),
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
                            if c.meta.dirty || ev.is_writable() {
                                c.meta.dirty = false;
                                if let Some(res) = flush_conn(c, &mut self.ctx, key) {
                                    self.flushed(key, res);
                                }
                            }
                        }
                    }
                }
            }
            now = self.after_events();
            self.ctx.batching.worked(now.saturating_sub(woke));
            if self.stop {
                break;
            }
        }
        self.close_all();
        Ok(())
    }

    /// How long the poll may sleep: until the earliest of the next timer tick, the end
    /// of the broadcast coalescing window, accept resumption and the drain deadline.
    fn poll_timeout(&mut self, now: u64) -> Option<Duration> {
        // Work left for the next turn (output queued by a connection whose reading
        // resumed during this turn's flushes, more to accept, local publishes, the next
        // batch of a replay): look at the sockets and come straight back.
        if self.accept_more || !self.ctx.local_pubs.is_empty() || !self.ctx.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut at = u64::MAX;
        if let Some(ticks) = self.ctx.wheel.ticks_until_next(self.ctx.now_tick as u64) {
            at = (self.ctx.now_tick as u64 + ticks).saturating_mul(self.ctx.tick_ns);
        }
        if let Some(due) = self.ctx.batching.due() {
            at = at.min(due);
        }
        if let Some(t) = self.accept_paused_until {
            at = at.min(t);
        }
        if let Some(t) = self.drain_deadline {
            at = at.min(t);
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
        if self.ctx.batching.due().is_some_and(|due| now >= due) {
            self.flush_deferred();
        }
        // After the flushes, so that each connection's queue is as low as it gets this
        // turn; what it queues goes out next turn (it marks the connection: no sleep).
        if !self.ctx.replaying.is_empty() {
            self.pump_replays();
        }
        if let Some(deadline) = self.drain_deadline {
            if self.conns.is_empty() {
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
            #[cfg(feature = "tls")]
            self.ctx.tls_pool.trim();
        }
        let end = self.ctx.clock_ns();
        let m = &self.ctx.metrics;
        m.loop_iterations.inc();
        self.ctx.sample_latency = m.loop_iterations.get() & 63 == 0;
        m.loop_busy_ns.add(end.saturating_sub(now));
        end
    }

    // ---- reading -----------------------------------------------------------------

    /// Reads until the socket is drained (a short read means it is: edge-triggered
    /// epoll reports the next arrival as a new event), feeding the session after each
    /// read. `to_end`: the peer's FIN or RST came with this event and no new edge will
    /// announce it, so read on past a short read until the socket says so.
    fn read(&mut self, key: u32, to_end: bool) {
        #[cfg(feature = "tls")]
        if self.ctx.tls_on {
            return self.read_tls(key, to_end);
        }
        loop {
            let Worker { conns, ctx, handler, scratch, .. } = self;
            let Some(conn) = conns.get_mut(key as usize) else {
                return;
            };
            // An open connection with nothing left over reads into the scratch ring;
            // anything else into its own (a partial frame continues where it is).
            let use_scratch = match conn.session.read_target() {
                ReadTarget::Paused => {
                    conn.meta.maybe_readable = true;
                    return;
                }
                ReadTarget::Scratch => true,
                ReadTarget::Own => false,
            };
            conn.meta.maybe_readable = false;
            let ring = if use_scratch { &mut *scratch } else { conn.session.input_ring(&mut ctx.rpool) };
            let free = ring.free();
            if free == 0 {
                // A full ring the decoder could not use: cannot happen with
                // inline_limit == ring size, but never spin on it.
                log::error!("read buffer full without progress; dropping connection");
                conn.session.handle_reset();
                self.end(key);
                return;
            }
            match ring.read_from(&mut Sock(&conn.meta.stream)) {
                Ok(0) => {
                    self.on_eof(key);
                    return;
                }
                Ok(n) => {
                    ctx.metrics.bytes_in.add(n as u64);
                    conn.session.handle_received(ctx.now_tick);
                    if use_scratch {
                        Self::decode(scratch, conn, ctx, handler, key);
                        if !scratch.is_empty() {
                            // Undecoded bytes (a partial frame, or reading paused):
                            // the ring becomes the connection's, the worker takes another.
                            let ring = std::mem::replace(scratch, ctx.rpool.take());
                            conn.session.keep_leftover(ring, &mut ctx.rpool);
                        }
                    } else {
                        self.process(key);
                    }
                    if n < free && !to_end {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("read: {e}");
                    conn.session.handle_reset();
                    self.end(key);
                    return;
                }
            }
        }
    }

    pub(super) fn on_eof(&mut self, key: u32) {
        if self.conns.get(key as usize).is_some_and(|c| c.session.buffered() > 0) {
            // The peer's last bytes (a close frame, a bad request) came with its FIN and
            // were answered in this same read: write the answer before dropping.
            self.flush(key);
        }
        if let Some(conn) = self.conns.get_mut(key as usize) {
            conn.session.handle_eof();
            self.end(key);
        }
    }

    /// Feeds the connection's own input ring to the session: the request while
    /// handshaking, frames after.
    pub(super) fn process(&mut self, key: u32) {
        let Worker { conns, ctx, handler, .. } = self;
        let Some(conn) = conns.get_mut(key as usize) else {
            return;
        };
        let Some(mut ring) = conn.session.take_leftover() else {
            return;
        };
        if conn.session.is_handshaking() {
            let consumed = super::gate::handshake(conn, &mut ring, ctx, handler, key);
            ring.consume(consumed);
            if conn.session.is_open() {
                ctx.arm_session(conn, key);
            }
        }
        // A client may pipeline its first frames behind the request.
        Self::decode(&mut ring, conn, ctx, handler, key);
        conn.session.keep_leftover(ring, &mut ctx.rpool);
    }

    /// Decodes `ring` through the session and hands each message to the handler.
    #[inline(always)]
    pub(super) fn decode(ring: &mut Ring, conn: &mut Conn<H::State>, ctx: &mut Ctx, handler: &mut H, key: u32) {
        let data = ring.make_contiguous();
        let mut pos = 0;
        let mut msgs = 0u64;
        let started = ctx.sample_latency.then(Instant::now);
        // Decoded to the end with nothing pending: the usual way out, without one more call.
        let (reader, core, user) = conn.session.split();
        while pos < data.len() || !reader.is_idle() {
            let (n, received) = reader.handle_frames(core, &mut data[pos..], &ctx.scfg, &mut ctx.wpool, ctx.now_tick);
            pos += n;
            match received {
                Received::Message(msg) => {
                    let i = if matches!(msg, Message::Text(_)) { 1 } else { 2 };
                    ctx.metrics.frames_in[i].inc();
                    msgs += 1;
                    let mut c = Connection { core, ctx: &mut *ctx, meta: &mut conn.meta, key };
                    handler.on_message(&mut c, user, msg);
                }
                Received::Deflated { text, end: false, payload } => {
                    Self::inflate_part(ctx, core, &mut conn.meta, key, text, payload)
                }
                Received::Deflated { text, end: true, payload } => {
                    ctx.metrics.frames_in[if text { 1 } else { 2 }].inc();
                    msgs += 1;
                    Self::inflated(ctx, core, &mut conn.meta, user, handler, key, text, payload);
                }
                Received::Control(op) => {
                    // Indexes of `metrics::OPCODES`.
                    let i = match op {
                        OpCode::Close => 3,
                        OpCode::Ping => 4,
                        _ => 5,
                    };
                    ctx.metrics.frames_in[i].inc();
                    if op != OpCode::Pong {
                        ctx.mark_dirty(&mut conn.meta, key);
                    }
                }
                Received::Closing(cause) => {
                    let (ip, code) = (conn.meta.ip(), cause.code().0);
                    log::info!(peer:% = ip, code = code, cause = cause.label(); "closing {ip}: {}", cause.reason());
                    if cause == CloseCause::RateLimit {
                        ctx.metrics.rate_limited.inc();
                    }
                    ctx.mark_dirty(&mut conn.meta, key);
                }
                Received::Nothing if n == 0 => break,
                Received::Nothing => {}
            }
        }
        ring.consume(pos);
        if let Some(ns) = started.and_then(|t| (t.elapsed().as_nanos() as u64).checked_div(msgs)) {
            ctx.metrics.observe_latency_ns(ns);
        }
    }

    // ---- writing -----------------------------------------------------------------

    pub(super) fn flush_dirty(&mut self) {
        let mut work = std::mem::take(&mut self.work);
        std::mem::swap(&mut work, &mut self.ctx.dirty);
        for &key in &work {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            // One flushed right after its read has lost the mark, and a slot reused
            // by a new connection never had it.
            if conn.meta.dirty {
                conn.meta.dirty = false;
                self.flush(key);
            }
        }
        work.clear();
        self.work = work;
    }

    /// Writes the pending broadcast batch, and tells the batching policy what it cost.
    fn flush_deferred(&mut self) {
        let started = self.ctx.clock_ns();
        let mut work = std::mem::take(&mut self.work);
        std::mem::swap(&mut work, &mut self.ctx.deferred);
        for &key in &work {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            if conn.meta.deferred {
                conn.meta.deferred = false;
                self.flush(key);
            }
        }
        work.clear();
        self.work = work;
        let ended = self.ctx.clock_ns();
        self.ctx.batching.flushed(ended, ended.saturating_sub(started));
    }

    /// Writes what the session has queued and deals with the outcome.
    #[inline(always)]
    pub(super) fn flush(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if let Some(res) = flush_conn(conn, &mut self.ctx, key) {
            self.flushed(key, res);
        }
    }

    /// The outcome of a flush other than the usual one: errors, a socket that would
    /// block, draining after backpressure, finishing a close.
    #[inline(never)]
    fn flushed(&mut self, key: u32, res: io::Result<Flushed>) {
        let Worker { conns, ctx, handler, poll, .. } = self;
        let Some(conn) = conns.get_mut(key as usize) else {
            return;
        };
        match res {
            Err(e) => {
                log::debug!("write: {e}");
                conn.session.handle_reset();
            }
            Ok(Flushed::Pending) => {
                conn.session.handle_write_blocked(ctx.now_tick);
                if !conn.meta.write_interest {
                    conn.meta.write_interest = true;
                    let _ = poll.registry().reregister(
                        &mut conn.meta.stream,
                        Token(key as usize),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                }
            }
            Ok(done) => {
                if conn.meta.write_interest {
                    conn.meta.write_interest = false;
                    let _ = poll.registry().reregister(&mut conn.meta.stream, Token(key as usize), Interest::READABLE);
                }
                if done == Flushed::Drained {
                    if let Some((core, user)) = conn.session.parts() {
                        handler.on_drain(&mut Connection { core, ctx: &mut *ctx, meta: &mut conn.meta, key }, user);
                    }
                    // Bytes may be waiting in the ring or the socket; no new readiness
                    // edge will announce them.
                    let pending = conn.session.has_leftover();
                    let maybe = conn.meta.maybe_readable;
                    if pending {
                        self.process(key);
                    }
                    if maybe || pending {
                        // The event that found reading paused may have carried the
                        // peer's FIN: read to the end.
                        self.read(key, true);
                    }
                }
            }
        }
        self.end(key);
    }

    /// Applies what the session says about the transport's end, and re-arms its timer.
    pub(super) fn end(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        match conn.session.poll_end() {
            Some(Ending::ShutdownWrite) => {
                #[cfg(feature = "tls")]
                super::tls_io::close_notify(conn, &mut self.ctx, key);
                let _ = conn.meta.stream.shutdown(std::net::Shutdown::Write);
            }
            Some(Ending::Finished(end)) => {
                #[cfg(feature = "tls")]
                super::tls_io::close_notify(conn, &mut self.ctx, key);
                self.remove(key, end);
                return;
            }
            None => {}
        }
        self.ctx.arm_session(conn, key);
    }

    /// Drops a connection: the one exit. Gives its buffers back, leaves its topics,
    /// releases its admission slot and tells the handler.
    pub(super) fn remove(&mut self, key: u32, end: Option<crate::session::Closed>) {
        if !self.conns.contains(key as usize) {
            return;
        }
        let mut conn = self.conns.remove(key as usize);
        let ctx = &mut self.ctx;
        if let Some(id) = conn.meta.timer.take() {
            ctx.wheel.cancel(id);
        }
        #[cfg(feature = "deflate")]
        ctx.forget_deflate(key);
        conn.session.release(&mut ctx.rpool, &mut ctx.wpool);
        #[cfg(feature = "tls")]
        if let Some(t) = ctx.tls.get_mut(key as usize).and_then(Option::take) {
            t.release(&mut ctx.tls_pool);
        }
        ctx.leave_all(&mut conn.meta, key);
        let Some(end) = end else {
            ctx.metrics.never_upgraded.inc();
            return;
        };
        let ip = conn.meta.ip();
        log::debug!(peer:% = ip, code = end.code.0, cause = end.cause.label();
            "connection from {ip} ended: {} ({})", end.code, end.cause.reason());
        {
            ctx.metrics.closed(&end);
            ctx.metrics.open.sub(1);
            ctx.shared.release(conn.meta.ip());
            let id = ConnId { worker: ctx.id as u16, key, generation: conn.meta.generation };
            self.handler.on_close(id, conn.session.take_user(), end.code, end.cause.reason());
        }
        // Dropping the stream closes the socket; epoll forgets a closed descriptor.
    }
}

impl Ctx {
    /// Arms the connection's wheel entry for the session's next deadline.
    pub(super) fn arm_session<S: Default>(&mut self, conn: &mut Conn<S>, key: u32) {
        if let Some(at) = conn.session.poll_timeout(&self.scfg) {
            self.arm(&mut conn.meta, key, at);
        }
    }
}

/// Writes what the session has queued. `None` is the usual outcome (all written by an
/// open connection that was not waiting for POLLOUT, so nothing changes state);
/// anything else goes to `Worker::flushed`.
#[inline(always)]
fn flush_conn<S: Default>(conn: &mut Conn<S>, ctx: &mut Ctx, key: u32) -> Option<io::Result<Flushed>> {
    let res = write_out(conn, ctx, key);
    if matches!(res, Ok(Flushed::Empty)) && !conn.meta.write_interest {
        return None;
    }
    Some(res)
}

/// Writes what the session hands out until it is all written or the socket would block.
#[inline(always)]
fn write_out<S: Default>(conn: &mut Conn<S>, ctx: &mut Ctx, key: u32) -> io::Result<Flushed> {
    #[cfg(feature = "tls")]
    if ctx.tls_on {
        return super::tls_io::write_out_tls(conn, ctx, key);
    }
    let _ = key;
    let mut total = 0;
    let res = loop {
        let mut sock = Sock(&conn.meta.stream);
        let res = match conn.session.poll_transmit_one() {
            Some(bytes) => sock.write(bytes),
            None => {
                let mut iov = [IoSlice::new(&[]); MAX_TRANSMIT_SLICES];
                match conn.session.poll_transmit(&mut iov) {
                    0 => break Ok(if conn.session.is_open() { Flushed::Empty } else { Flushed::Written }),
                    k => sock.write_vectored(&iov[..k]),
                }
            }
        };
        match res {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                total += n;
                match conn.session.consume(n, &mut ctx.wpool, ctx.now_tick) {
                    Flushed::Pending => {}
                    done => break Ok(done),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flushed::Pending),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    ctx.metrics.bytes_out.add(total as u64);
    res
}
