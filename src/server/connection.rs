//! What callbacks touch: the [`Connection`] handle, and the worker context behind it
//! (buffer pools, the timer wheel, topic membership, the flush lists). The connection
//! slab and the handler live beside the context in the worker, so both can be borrowed
//! at once.

use super::batching::Batching;
use super::config::Config;
use super::conn::Meta;
use super::handler::{ConnId, Message, SendStatus};
use super::metrics::WorkerMetrics;
use super::pubsub::{frame_message, LocalTopics, Publisher};
use super::shared::{Shared, Source};
use super::timer::TimerWheel;
use crate::buf::BufPool;
use crate::proto::frame::OpCode;
use crate::proto::CloseCode;
use crate::session::{CloseCause, Core, Sent, SessionConfig, Tick};
use std::sync::Arc;
use std::time::Duration;

/// What a timer carries.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TimerEvent {
    /// The connection's session deadline (one per connection, re-armed lazily).
    Conn { key: u32, generation: u32 },
    /// An application timer. `slot` indexes `Ctx::app_tokens`: keeping the u64 token
    /// out of the wheel entry keeps every entry (one per connection) at 32 bytes.
    App { key: u32, generation: u32, slot: u32 },
    /// Time to free the dedicated compressors gone quiet (armed while any is held).
    #[cfg(feature = "deflate")]
    DeflateSweep,
}

/// The worker's state that callbacks reach through a [`Connection`].
pub(crate) struct Ctx {
    pub id: usize,
    pub cfg: Config,
    pub scfg: SessionConfig,
    pub shared: Arc<Shared>,
    pub metrics: Arc<WorkerMetrics>,
    pub rpool: BufPool,
    pub wpool: BufPool,
    /// wss:// (`Config::tls` set): every connection of this worker speaks TLS, and its
    /// state is here by slab key, so that a plain connection's `Conn` has no field for
    /// it (`conn_stays_small`).
    #[cfg(feature = "tls")]
    pub tls_on: bool,
    #[cfg(feature = "tls")]
    pub tls: Vec<Option<Box<crate::tls::TlsConn>>>,
    pub wheel: TimerWheel<TimerEvent>,
    /// `clock::monotonic_ns` when the worker started: the origin of its clock.
    pub start_ns: u64,
    /// Worker clock (ns since `start`) at the start of this loop turn.
    pub now_ns: u64,
    pub now_tick: Tick,
    /// Handling latency is sampled in one loop turn of 64 (two clock reads per batch are
    /// a visible share of a 32-byte echo); decided once per turn.
    pub sample_latency: bool,
    pub tick_ns: u64,
    pub ticks_per_sec: u32,
    /// Connections with output to flush at the end of the turn.
    pub dirty: Vec<u32>,
    /// The connection being read (flushed right after its read, so not listed).
    pub current: u32,
    /// Connections with broadcast output waiting for its batch (see `batching`).
    pub deferred: Vec<u32>,
    pub batching: Batching,
    pub topics: LocalTopics,
    /// Publishes made by handlers on this worker, delivered after the callback returns.
    pub local_pubs: Vec<(Arc<str>, Arc<[u8]>)>,
    /// The verified token of the connection in `on_open`.
    pub claims: Option<Claims>,
    /// Tokens of pending application timers.
    pub app_tokens: slab::Slab<u64>,
    /// The worker's one compressor and decompressor (`compression` not `Off`).
    #[cfg(feature = "deflate")]
    pub deflate: Option<Box<crate::deflate::codec::Codec>>,
    /// Ciphertext buffers, lent to a TLS connection only while it has bytes in flight.
    /// (Last: the plain path's fields keep their places.)
    #[cfg(feature = "tls")]
    pub tls_pool: BufPool,
    /// Where several outgoing slices are gathered into one record.
    #[cfg(feature = "tls")]
    pub tls_stage: Box<[u8]>,
    /// `dedicated` mode's per-connection compressors, by key (only while they send).
    #[cfg(feature = "deflate")]
    pub dedicated: Option<Box<crate::deflate::dedicated::Contexts>>,
    /// Connections being served from history (see `feed`). Last, with the TLS fields:
    /// the echo path's fields keep their places.
    pub replaying: Vec<u32>,
}

/// Frees connection `key`'s dedicated compressor, if it holds one, and updates the
/// gauges (it closed, or was sent a message made without its context).
#[cfg(feature = "deflate")]
pub(crate) fn forget_context(
    dedicated: &mut Option<Box<crate::deflate::dedicated::Contexts>>,
    metrics: &WorkerMetrics,
    key: u32,
) {
    if let Some(d) = dedicated.as_mut() {
        d.release(key);
        metrics.deflate_dedicated_contexts.set(d.len() as u64);
        metrics.deflate_dedicated_bytes.set(d.bytes());
    }
}

/// Verified JWT claims (with the `jwt` feature).
#[cfg(feature = "jwt")]
pub use crate::auth::Claims;

/// Without the `jwt` feature there are never claims.
#[cfg(not(feature = "jwt"))]
#[derive(Clone, Debug)]
pub enum Claims {}

/// No connection (see [`Ctx::current`]).
pub(crate) const NO_CONN: u32 = u32::MAX;

/// `d` in ticks of `tick`, rounded up, at least one.
pub(crate) fn to_ticks(d: Duration, tick: Duration) -> u32 {
    let t = d.as_nanos().div_ceil(tick.as_nanos().max(1));
    t.clamp(1, u32::MAX as u128 / 2) as u32
}

impl Ctx {
    pub fn new(id: usize, shared: Arc<Shared>) -> Self {
        let cfg = shared.cfg.clone();
        Ctx {
            id,
            scfg: cfg.session(),
            metrics: shared.workers[id].metrics.clone(),
            rpool: BufPool::new(cfg.read_buffer_size, cfg.pool_keep),
            wpool: BufPool::new(cfg.write_buffer_size, cfg.pool_keep),
            #[cfg(feature = "tls")]
            tls_on: cfg.tls.is_some(),
            #[cfg(feature = "tls")]
            tls: Vec::new(),
            #[cfg(feature = "tls")]
            tls_pool: BufPool::new(crate::tls::layer::TLS_BUF, cfg.pool_keep),
            #[cfg(feature = "tls")]
            tls_stage: vec![0u8; if cfg.tls.is_some() { crate::tls::layer::MAX_FRAGMENT } else { 0 }]
                .into_boxed_slice(),
            wheel: TimerWheel::new(1024),
            start_ns: super::clock::monotonic_ns(),
            now_ns: 0,
            now_tick: 0,
            sample_latency: false,
            tick_ns: cfg.tick.as_nanos().clamp(1, u64::MAX as u128) as u64,
            ticks_per_sec: (1_000_000_000 / cfg.tick.as_nanos().max(1)).clamp(1, u32::MAX as u128) as u32,
            batching: Batching::new(cfg.broadcast_coalesce.as_nanos().min(u64::MAX as u128) as u64),
            dirty: Vec::new(),
            current: NO_CONN,
            deferred: Vec::new(),
            topics: LocalTopics::default(),
            local_pubs: Vec::new(),
            replaying: Vec::new(),
            claims: None,
            app_tokens: slab::Slab::new(),
            #[cfg(feature = "deflate")]
            deflate: (cfg.compression != crate::deflate::Compression::Off)
                .then(|| Box::new(crate::deflate::codec::Codec::new())),
            #[cfg(feature = "deflate")]
            dedicated: (cfg.compression == crate::deflate::Compression::Dedicated).then(|| {
                let idle = cfg.compression_idle.as_nanos().min(u64::MAX as u128) as u64;
                Box::new(crate::deflate::dedicated::Contexts::new(idle, cfg.compression_max_contexts))
            }),
            cfg,
            shared,
        }
    }

    /// Nanoseconds since the worker started (reads the clock).
    #[inline]
    pub fn clock_ns(&self) -> u64 {
        super::clock::monotonic_ns().saturating_sub(self.start_ns)
    }

    /// Sets this turn's time (`clock_ns`) and the tick it falls in.
    #[inline]
    pub fn set_now(&mut self, ns: u64) {
        self.now_ns = ns;
        self.now_tick = (ns / self.tick_ns).min(u32::MAX as u64) as u32;
    }

    /// Puts the connection on the end-of-turn flush list (unless it is the one being
    /// read, which is flushed right after its read).
    #[inline]
    pub fn mark_dirty(&mut self, meta: &mut Meta, key: u32) {
        if !meta.dirty {
            meta.dirty = true;
            if key != self.current {
                self.dirty.push(key);
            }
        }
    }

    /// Puts the connection on the broadcast flush list, written when the batching
    /// policy says.
    pub fn mark_deferred(&mut self, meta: &mut Meta, key: u32) {
        if !meta.deferred {
            meta.deferred = true;
            self.deferred.push(key);
            self.batching.queued(self.now_ns);
        }
    }

    /// Makes sure the connection's timer fires no later than `tick` (an earlier entry
    /// stays: when it fires, the session re-checks and the timer is re-armed).
    pub fn arm(&mut self, meta: &mut Meta, key: u32, tick: Tick) {
        let tick = tick as u64;
        match meta.timer {
            Some(id) => {
                if self.wheel.deadline(id).is_some_and(|d| d > tick) {
                    self.wheel.reschedule(id, tick);
                }
            }
            None => {
                meta.timer = Some(self.wheel.schedule(tick, TimerEvent::Conn { key, generation: meta.generation }));
            }
        }
    }

    /// Counts what a send did; lists the connection for flushing.
    #[inline(always)]
    pub fn sent(&mut self, core: &Core, meta: &mut Meta, key: u32, sent: Sent, data: bool) -> SendStatus {
        if sent == Sent::Queued {
            // The usual outcome: bytes queued within the cap.
            if data {
                self.metrics.messages_out.inc();
            }
            self.mark_dirty(meta, key);
            return SendStatus::Queued;
        }
        self.sent_unusual(core, meta, key, sent, data)
    }

    #[inline(never)]
    fn sent_unusual(&mut self, core: &Core, meta: &mut Meta, key: u32, sent: Sent, data: bool) -> SendStatus {
        if sent.went_over() {
            self.metrics.backpressure_events.inc();
        }
        if sent.status() == SendStatus::Dropped {
            if sent.capped() {
                self.metrics.backpressure_drops.inc();
            }
        } else if data {
            self.metrics.messages_out.inc();
        }
        if core.buffered() > 0 {
            self.mark_dirty(meta, key);
        }
        sent.status()
    }

    /// Queues a pre-encoded broadcast frame for a subscriber; false when it was dropped.
    pub fn deliver(&mut self, core: &mut Core, meta: &mut Meta, key: u32, frame: &[u8]) -> bool {
        let sent = core.deliver(frame, &self.scfg, &mut self.wpool, self.now_tick);
        if sent.went_over() {
            self.metrics.backpressure_events.inc();
        }
        match sent.status() {
            SendStatus::Dropped if sent.capped() => {
                self.metrics.broadcast_drops.inc();
                if core.buffered() > 0 {
                    // Closed for being slow: the close frame goes out with the turn.
                    self.mark_dirty(meta, key);
                }
                false
            }
            SendStatus::Dropped => false,
            _ => {
                self.metrics.messages_out.inc();
                self.metrics.broadcast_deliveries.inc();
                self.mark_deferred(meta, key);
                true
            }
        }
    }

    /// The compressed form of the plain broadcast frame `plain` for a subscriber whose
    /// window is `bits`, made once per publish and kept in `cache` (a frame compressed
    /// with a smaller window suits every larger one). `None`: below
    /// `compression_min_size`, send it plain.
    #[cfg(feature = "deflate")]
    pub fn compressed_frame<'c>(
        &mut self,
        plain: &[u8],
        bits: u8,
        cache: &'c mut Option<(u8, Vec<u8>)>,
    ) -> Option<&'c [u8]> {
        use crate::proto::frame::server_header;
        let codec = self.deflate.as_mut()?;
        let hl = match plain.get(1)? & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let payload = plain.get(hl..)?;
        if payload.len() < self.cfg.compression_min_size {
            return None;
        }
        if cache.as_ref().is_none_or(|(b, _)| *b > bits) {
            let op = if plain[0] & 0x0f == 1 { OpCode::Text } else { OpCode::Binary };
            let z = codec.compress(payload, bits);
            let (mut h, n) = server_header(op, z.len());
            h[0] |= 0x40;
            let mut f = Vec::with_capacity(n + z.len());
            f.extend_from_slice(&h[..n]);
            f.extend_from_slice(z);
            *cache = Some((bits, f));
        }
        cache.as_ref().map(|(_, f)| f.as_slice())
    }

    /// Subscribes; false when already subscribed.
    pub fn subscribe(&mut self, meta: &mut Meta, key: u32, topic: &str) -> bool {
        let list = meta.topics.get_or_insert_with(Default::default);
        if list.names.iter().any(|t| &**t == topic) {
            return false;
        }
        list.names.push(topic.into());
        list.cursors.push(super::recovery::Cursor::Bare);
        let first = self.topics.subscribe(topic, key);
        self.shared.count_subscriber(topic, self.id, true, first);
        true
    }

    pub fn unsubscribe(&mut self, meta: &mut Meta, key: u32, topic: &str) {
        let Some(list) = meta.topics.as_mut() else {
            return;
        };
        let Some(i) = list.names.iter().position(|t| &**t == topic) else {
            return;
        };
        list.names.swap_remove(i);
        list.cursors.swap_remove(i);
        if list.names.is_empty() {
            meta.topics = None;
        }
        let last = self.topics.unsubscribe(topic, key);
        self.shared.count_subscriber(topic, self.id, false, last);
    }

    /// Leaves every topic of a connection that is going away.
    pub fn leave_all(&mut self, meta: &mut Meta, key: u32) {
        if let Some(topics) = meta.topics.take() {
            for t in topics.names.iter() {
                let last = self.topics.unsubscribe(t, key);
                self.shared.count_subscriber(t, self.id, false, last);
            }
        }
    }

    /// A client's publish: this worker's subscribers get it after the callback, the
    /// other workers through their bounded queues (a full one refuses the whole
    /// publish, counted), the bridge after them.
    pub fn publish(&mut self, topic: &str, msg: Message<'_>) -> usize {
        if let Some(history) = &self.shared.history {
            // Numbered under the history's lock and delivered through every worker's
            // inbox, this one's too: one order for all.
            return match self.shared.publish_history(history, topic, msg, true) {
                Ok(p) => {
                    self.metrics.publishes.inc();
                    p.workers
                }
                Err(_) => {
                    self.metrics.publishes_refused.inc();
                    0
                }
            };
        }
        let mask = self.shared.topic_mask(topic);
        let others = mask & !(1u64 << self.id);
        if !self.shared.reserve_publish(others) {
            self.metrics.publishes_refused.inc();
            return 0;
        }
        self.metrics.publishes.inc();
        self.shared.forward(topic, msg);
        if mask == 0 {
            return 0;
        }
        let frame = frame_message(msg);
        self.shared.send_to_workers(others, topic, &frame);
        if mask & (1 << self.id) != 0 {
            self.local_pubs.push((Arc::from(topic), frame));
        }
        mask.count_ones() as usize
    }
}

/// The application's handle on one connection, valid during a callback.
pub struct Connection<'a> {
    pub(crate) core: &'a mut Core,
    pub(crate) ctx: &'a mut Ctx,
    pub(crate) meta: &'a mut Meta,
    pub(crate) key: u32,
}

impl Connection<'_> {
    /// This connection's id.
    pub fn id(&self) -> ConnId {
        ConnId { worker: self.ctx.id as u16, key: self.key, generation: self.meta.generation }
    }

    /// The peer's IP address.
    pub fn peer_ip(&self) -> std::net::IpAddr {
        self.meta.ip()
    }

    /// Queues a message. Output is written at the end of the loop turn, coalesced with
    /// everything else queued for this socket. On a connection that negotiated
    /// permessage-deflate, messages of at least `compression_min_size` bytes go out
    /// compressed.
    #[inline(always)]
    pub fn send(&mut self, msg: Message<'_>) -> SendStatus {
        // A server without compression has no codec: one test, not a look at the phase.
        #[cfg(feature = "deflate")]
        if self.ctx.deflate.is_some() && self.core.compresses() {
            return self.send_deflated(msg);
        }
        let ctx = &mut *self.ctx;
        let sent = self.core.send(msg.opcode(), msg.as_bytes(), &ctx.scfg, &mut ctx.wpool, ctx.now_tick);
        ctx.sent(self.core, self.meta, self.key, sent, true)
    }

    #[cfg(feature = "deflate")]
    #[inline(never)]
    fn send_deflated(&mut self, msg: Message<'_>) -> SendStatus {
        let ctx = &mut *self.ctx;
        let payload = msg.as_bytes();
        let agreed = self.core.deflate();
        let sent = match (agreed, ctx.deflate.as_mut(), ctx.dedicated.as_mut()) {
            (Some(a), Some(codec), dedicated) if payload.len() >= ctx.cfg.compression_min_size => {
                let bits = a.server_max_window_bits;
                let z = match dedicated {
                    Some(d) if a.server_context_takeover && d.has_room_for(self.key) => {
                        d.compress(self.key, bits, payload, ctx.now_ns);
                        ctx.metrics.deflate_dedicated_contexts.set(d.len() as u64);
                        ctx.metrics.deflate_dedicated_bytes.set(d.bytes());
                        if !d.sweep_armed {
                            d.sweep_armed = true;
                            let at = ctx.now_tick as u64 + to_ticks(ctx.cfg.compression_idle, ctx.cfg.tick) as u64;
                            ctx.wheel.schedule(at, TimerEvent::DeflateSweep);
                        }
                        d.out()
                    }
                    _ => codec.compress(payload, bits),
                };
                self.core.send_compressed(msg.opcode(), z, &ctx.scfg, &mut ctx.wpool, ctx.now_tick)
            }
            _ => self.core.send(msg.opcode(), payload, &ctx.scfg, &mut ctx.wpool, ctx.now_tick),
        };
        ctx.sent(self.core, self.meta, self.key, sent, true)
    }

    /// What this connection negotiated for permessage-deflate (known from `on_open` on).
    pub fn deflate(&self) -> Option<crate::deflate::Agreed> {
        self.core.deflate()
    }

    /// Queues a text message.
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.send(Message::Text(text))
    }

    /// Queues a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> SendStatus {
        self.send(Message::Binary(data))
    }

    /// Queues a ping (at most 125 bytes of payload; longer is cut).
    pub fn ping(&mut self, payload: &[u8]) -> SendStatus {
        let p = &payload[..payload.len().min(125)];
        let ctx = &mut *self.ctx;
        let sent = self.core.send(OpCode::Ping, p, &ctx.scfg, &mut ctx.wpool, ctx.now_tick);
        ctx.sent(self.core, self.meta, self.key, sent, false)
    }

    /// Starts the close handshake with `code` and `reason` (cut to 123 bytes). A code
    /// that may not be sent (1005, 1006, 1015, below 1000, 1016-2999, 5000 and up) is
    /// sent as 1011 and logged: the peer must never see it.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        let code = if code.is_valid_on_wire() {
            code
        } else {
            log::warn!("Connection::close({code}): not a code that may be sent; closing with 1011");
            CloseCode::INTERNAL_ERROR
        };
        let ctx = &mut *self.ctx;
        self.core.close(CloseCause::Application, code, reason, &mut ctx.wpool, ctx.now_tick);
        if self.core.buffered() > 0 {
            ctx.mark_dirty(self.meta, self.key);
        }
    }

    /// Outgoing bytes queued and not yet written.
    pub fn buffered(&self) -> usize {
        self.core.buffered()
    }

    /// Whether the connection is upgraded and open (false during the handshake, while
    /// closing and after).
    pub fn is_open(&self) -> bool {
        self.core.is_open()
    }

    /// Subscribes this connection to `topic` (allowed from `on_open`).
    pub fn subscribe(&mut self, topic: &str) {
        self.ctx.subscribe(self.meta, self.key, topic);
    }

    /// Subscribes this connection to `topic` with offsets (needs `Config::history`;
    /// without it, a plain [`Connection::subscribe`]): each message then reaches it in
    /// the `wsloop.v1` form, and with `since` it first gets every message after that
    /// position, then live ones, or an `l` message saying why it cannot. On a topic
    /// already subscribed, starts that recovery.
    pub fn subscribe_numbered(&mut self, topic: &str, since: Option<super::history::Seq>) {
        self.ctx.subscribe_numbered(self.meta, self.key, topic, since);
    }

    /// Unsubscribes this connection from `topic`.
    pub fn unsubscribe(&mut self, topic: &str) {
        self.ctx.unsubscribe(self.meta, self.key, topic);
    }

    /// Publishes to every subscriber of `topic` on every worker (this connection too,
    /// if subscribed); returns the number of workers reached, 0 when another worker's
    /// publish queue (`Config::publish_queue`) was full and the publish was refused
    /// (counted in `wsloop_publishes_refused_total{source="client"}`); 0 too when a
    /// bridge that numbers messages took it (it comes back through the bridge).
    pub fn publish(&mut self, topic: &str, msg: Message<'_>) -> usize {
        self.ctx.publish(topic, msg)
    }

    /// The verified JWT claims of this connection; `Some` only inside `on_open` when JWT
    /// auth is on (keep what you need in the connection's state).
    pub fn claims(&self) -> Option<&Claims> {
        self.ctx.claims.as_ref()
    }

    /// Topics this connection subscribed to, in order.
    pub fn topics(&self) -> &[Box<str>] {
        self.meta.topics.as_deref().map_or(&[], |v| v.names.as_slice())
    }

    /// A publisher for use outside callbacks (other threads).
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.ctx.shared.clone(), Source::Library)
    }

    /// Starts the close handshake for one of the server's own causes.
    pub(crate) fn close_for(&mut self, cause: CloseCause) {
        let ctx = &mut *self.ctx;
        let (code, reason) = (cause.code(), cause.reason());
        self.core.close(cause, code, reason, &mut ctx.wpool, ctx.now_tick);
        if self.core.buffered() > 0 {
            ctx.mark_dirty(self.meta, self.key);
        }
    }

    /// Calls `Handler::on_timer(token)` for this connection after `after` (rounded up to
    /// the tick). Dropped silently if the connection is gone by then.
    pub fn schedule(&mut self, after: Duration, token: u64) {
        // +1: `now_tick` began up to a tick ago, and a timer must never fire early.
        let at = self.ctx.now_tick as u64 + to_ticks(after, self.ctx.cfg.tick) as u64 + 1;
        let slot = self.ctx.app_tokens.insert(token) as u32;
        self.ctx.wheel.schedule(at, TimerEvent::App { key: self.key, generation: self.meta.generation, slot });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timer_event_stays_small() {
        // One wheel entry per connection: 8 (deadline) + 8 (links) + this.
        assert!(std::mem::size_of::<super::TimerEvent>() <= 16);
    }
}
