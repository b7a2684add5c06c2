//! The part of a worker that callbacks may touch through a [`Connection`]: buffer
//! pools, the timer wheel, topic membership and the flush lists. The connection slab
//! and the handler live beside it in the worker, so both can be borrowed at once.

use super::config::{BackpressurePolicy, Config};
use super::conn::{flag, Core, Phase};
use super::handler::{ConnId, Message, SendStatus};
use super::metrics::WorkerMetrics;
use super::pubsub::{frame_message, LocalTopics, Publisher};
use super::shared::Shared;
use super::sock::Sock;
use super::timer::TimerWheel;
use crate::buf::BufPool;
use crate::proto::frame::{encode_close, OpCode};
use crate::proto::{CloseCode, DecoderConfig, HandshakeLimits};
use std::sync::Arc;
use std::time::Duration;

/// What a timer carries.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TimerEvent {
    /// Re-check the connection's timeouts (one per connection, re-armed lazily).
    Conn { key: u32, generation: u32 },
    /// An application timer.
    /// `slot` indexes `Ctx::app_tokens`: keeping the u64 token out of the wheel entry
    /// keeps every entry (one per connection) at 32 bytes.
    App { key: u32, generation: u32, slot: u32 },
    /// The connection's token expires: close it with 1008.
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))]
    Expire { key: u32, generation: u32 },
}

/// Timeouts in ticks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticks {
    pub handshake: u32,
    pub ping: u32,
    pub idle: u32,
    pub close: u32,
}

pub(crate) struct Ctx {
    pub id: usize,
    pub cfg: Config,
    pub dec: DecoderConfig,
    pub limits: HandshakeLimits,
    pub ticks: Ticks,
    pub shared: Arc<Shared>,
    pub metrics: Arc<WorkerMetrics>,
    pub rpool: BufPool,
    pub wpool: BufPool,
    pub wheel: TimerWheel<TimerEvent>,
    /// `clock::monotonic_ns` when the worker started: the origin of its clock.
    pub start_ns: u64,
    /// Worker clock (ns since `start`) at the start of this loop turn.
    pub now_ns: u64,
    pub now_tick: u32,
    pub tick_ns: u64,
    pub ticks_per_sec: u32,
    pub coalesce_ns: u64,
    /// Connections with output to flush at the end of this loop turn.
    pub dirty: Vec<u32>,
    /// The connection whose readiness event is being handled ([`NO_CONN`] between
    /// events): the loop flushes it right after, so marking it dirty needs no list entry.
    pub current: u32,
    /// Connections with broadcast output, flushed once `broadcast_coalesce` has passed.
    pub deferred: Vec<u32>,
    /// Worker clock (ns) of the first deferred broadcast of the current window.
    pub deferred_since: Option<u64>,
    pub topics: LocalTopics,
    /// Publishes made by handlers on this worker, delivered after the callback returns.
    pub local_pubs: Vec<(Arc<str>, Arc<[u8]>)>,
    /// The verified token of the connection in `on_open`.
    pub claims: Option<Claims>,
    /// Tokens of pending application timers.
    pub app_tokens: slab::Slab<u64>,
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

pub(crate) fn to_ticks(d: Duration, tick: Duration) -> u32 {
    let t = d.as_nanos().div_ceil(tick.as_nanos().max(1));
    t.clamp(1, u32::MAX as u128 / 2) as u32
}

impl Ctx {
    pub fn new(id: usize, shared: Arc<Shared>) -> Self {
        let cfg = shared.cfg.clone();
        let ticks = Ticks {
            handshake: to_ticks(cfg.handshake_timeout, cfg.tick),
            ping: to_ticks(cfg.ping_interval, cfg.tick),
            idle: to_ticks(cfg.idle_timeout, cfg.tick),
            close: to_ticks(cfg.close_timeout, cfg.tick),
        };
        Ctx {
            id,
            dec: cfg.decoder(),
            limits: cfg.handshake_limits(),
            ticks,
            metrics: shared.workers[id].metrics.clone(),
            rpool: BufPool::new(cfg.read_buffer_size, cfg.pool_keep),
            wpool: BufPool::new(cfg.write_buffer_size, cfg.pool_keep),
            wheel: TimerWheel::new(1024),
            start_ns: super::clock::monotonic_ns(),
            now_ns: 0,
            now_tick: 0,
            tick_ns: cfg.tick.as_nanos().clamp(1, u64::MAX as u128) as u64,
            ticks_per_sec: (1_000_000_000 / cfg.tick.as_nanos().max(1)).clamp(1, u32::MAX as u128) as u32,
            coalesce_ns: cfg.broadcast_coalesce.as_nanos().min(u64::MAX as u128) as u64,
            dirty: Vec::new(),
            current: NO_CONN,
            deferred: Vec::new(),
            deferred_since: None,
            topics: LocalTopics::default(),
            local_pubs: Vec::new(),
            claims: None,
            app_tokens: slab::Slab::new(),
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

    #[inline]
    pub fn mark_dirty(&mut self, core: &mut Core, key: u32) {
        if !core.has(flag::DIRTY) {
            core.set(flag::DIRTY, true);
            if key != self.current {
                self.dirty.push(key);
            }
        }
    }

    pub fn mark_deferred(&mut self, core: &mut Core, key: u32) {
        if !core.has(flag::DEFERRED) {
            core.set(flag::DEFERRED, true);
            self.deferred.push(key);
            if self.deferred_since.is_none() {
                self.deferred_since = Some(self.now_ns);
            }
        }
    }

    /// Makes sure the connection's timer fires no later than `tick`.
    pub fn arm(&mut self, core: &mut Core, key: u32, tick: u32) {
        let tick = tick as u64;
        match core.timer {
            Some(id) => {
                if self.wheel.deadline(id).is_some_and(|d| d > tick) {
                    self.wheel.reschedule(id, tick);
                }
            }
            None => {
                core.timer = Some(self.wheel.schedule(tick, TimerEvent::Conn { key, generation: core.generation }));
            }
        }
    }

    /// Bytes appended to the outbox; keeps the write-stall clock honest.
    fn note_queued(&mut self, core: &mut Core, was_empty: bool) {
        if was_empty {
            core.tx_since = self.now_tick;
        }
    }

    /// Queues a data or control frame, applying the backpressure policy to data frames.
    #[inline(always)]
    pub fn send_frame(&mut self, core: &mut Core, key: u32, op: OpCode, payload: &[u8]) -> SendStatus {
        if !matches!(core.phase, Phase::Open | Phase::Handshaking) {
            return SendStatus::Dropped;
        }
        let cap = self.cfg.max_backpressure;
        let before = core.out.len();
        let over = before > 0 && before + payload.len() > cap;
        if over && !op.is_control() {
            if let Some(status) = self.apply_policy(core, key) {
                return status;
            }
        }
        // Before the 101 is written (sends from on_open) nothing may go straight out.
        let direct = core.phase == Phase::Open;
        if core.out.queue_frame(&mut self.wpool, &mut Sock(&core.stream), op, payload, direct).is_err() {
            // The direct write for a large frame failed: the socket is broken. The read
            // side will see the error; keep the status honest meanwhile.
            return SendStatus::Dropped;
        }
        self.note_queued(core, before == 0);
        if !op.is_control() {
            self.metrics.messages_out.inc();
        }
        if !core.out.is_empty() {
            self.mark_dirty(core, key);
        }
        if core.out.len() > cap {
            self.went_over_cap(core, over)
        } else {
            SendStatus::Queued
        }
    }

    /// A data frame would take the outbox over `max_backpressure`: the policy decides.
    /// `Some` is the send's final status; `None` means queue it anyway.
    #[cold]
    fn apply_policy(&mut self, core: &mut Core, key: u32) -> Option<SendStatus> {
        self.over_cap_event(core);
        match self.cfg.backpressure_policy {
            BackpressurePolicy::Close => {
                self.metrics.backpressure_drops.inc();
                self.close(core, key, CloseCode::POLICY_VIOLATION, "slow consumer");
                Some(SendStatus::Dropped)
            }
            BackpressurePolicy::Drop => {
                self.metrics.backpressure_drops.inc();
                Some(SendStatus::Dropped)
            }
            BackpressurePolicy::PauseReading => {
                core.set(flag::READ_PAUSED, true);
                None
            }
        }
    }

    /// A frame was queued and the outbox is now over the cap (`counted`: the event was
    /// already counted before queueing).
    #[cold]
    fn went_over_cap(&mut self, core: &mut Core, counted: bool) -> SendStatus {
        if !counted {
            self.over_cap_event(core);
        }
        if self.cfg.backpressure_policy == BackpressurePolicy::PauseReading {
            core.set(flag::READ_PAUSED, true);
        }
        SendStatus::QueuedOverCap
    }

    fn over_cap_event(&mut self, core: &mut Core) {
        if !core.has(flag::OVER_CAP) {
            core.set(flag::OVER_CAP, true);
            self.metrics.backpressure_events.inc();
        }
    }

    /// Queues a broadcast frame for a subscriber, under the slow-subscriber policy.
    pub fn deliver(&mut self, core: &mut Core, key: u32, frame: &[u8]) {
        if core.phase != Phase::Open {
            return;
        }
        let before = core.out.len();
        if before > 0 && before + frame.len() > self.cfg.max_backpressure {
            self.over_cap_event(core);
            self.metrics.broadcast_drops.inc();
            if self.cfg.backpressure_policy == BackpressurePolicy::Close {
                self.close(core, key, CloseCode::POLICY_VIOLATION, "slow consumer");
            }
            return;
        }
        core.out.push(&mut self.wpool, frame);
        self.note_queued(core, before == 0);
        self.metrics.messages_out.inc();
        self.metrics.broadcast_deliveries.inc();
        self.mark_deferred(core, key);
    }

    /// Starts the close handshake (Open -> Closing) with `code`; no-op in other phases.
    pub fn close(&mut self, core: &mut Core, key: u32, code: CloseCode, reason: &str) {
        if core.phase != Phase::Open {
            return;
        }
        self.queue_close(core, key, Some((code, reason)));
        core.close_code = code.0;
        core.phase = Phase::Closing;
        core.phase_since = self.now_tick;
        let at = self.now_tick.saturating_add(self.ticks.close);
        self.arm(core, key, at);
    }

    /// Fails the connection (RFC 6455 7.1.7): close frame with `code`, then Closed.
    pub fn fail(&mut self, core: &mut Core, key: u32, code: CloseCode, reason: &str) {
        if matches!(core.phase, Phase::Open) {
            self.queue_close(core, key, Some((code, reason)));
        }
        core.close_code = code.0;
        self.enter_closed(core, key);
    }

    /// -> Closed: flush, shut down, linger for the peer's EOF at most `close_timeout`.
    pub fn enter_closed(&mut self, core: &mut Core, key: u32) {
        core.phase = Phase::Closed;
        core.phase_since = self.now_tick;
        core.set(flag::READ_PAUSED, false);
        self.mark_dirty(core, key);
        let at = self.now_tick.saturating_add(self.ticks.close);
        self.arm(core, key, at);
    }

    pub fn queue_close(&mut self, core: &mut Core, key: u32, close: Option<(CloseCode, &str)>) {
        let mut buf = [0u8; 2 + 125];
        if let Ok(n) = encode_close(&mut buf, close, None) {
            let before = core.out.len();
            core.out.push(&mut self.wpool, &buf[..n]);
            self.note_queued(core, before == 0);
            self.mark_dirty(core, key);
        }
    }

    pub fn subscribe(&mut self, core: &mut Core, key: u32, topic: &str) {
        let list = core.topics.get_or_insert_with(Default::default);
        if list.iter().any(|t| &**t == topic) {
            return;
        }
        list.push(topic.into());
        if self.topics.subscribe(topic, key) {
            self.shared.set_topic_bit(topic, self.id, true);
        }
    }

    pub fn unsubscribe(&mut self, core: &mut Core, key: u32, topic: &str) {
        let Some(list) = core.topics.as_mut() else {
            return;
        };
        let Some(i) = list.iter().position(|t| &**t == topic) else {
            return;
        };
        list.swap_remove(i);
        if list.is_empty() {
            core.topics = None;
        }
        if self.topics.unsubscribe(topic, key) {
            self.shared.set_topic_bit(topic, self.id, false);
        }
    }

    pub fn publish(&mut self, topic: &str, msg: Message<'_>) -> usize {
        self.shared.forward(topic, msg);
        let mask = self.shared.topic_mask(topic);
        if mask == 0 {
            return 0;
        }
        let frame = frame_message(msg);
        self.shared.send_to_workers(mask, Some(self.id), topic, &frame);
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
    pub(crate) key: u32,
}

impl Connection<'_> {
    /// This connection's id.
    pub fn id(&self) -> ConnId {
        ConnId { worker: self.ctx.id as u16, key: self.key, generation: self.core.generation }
    }

    /// The peer's IP address.
    pub fn peer_ip(&self) -> std::net::IpAddr {
        self.core.ip
    }

    /// Queues a message. Output is written at the end of the loop turn, coalesced with
    /// everything else queued for this socket.
    #[inline(always)]
    pub fn send(&mut self, msg: Message<'_>) -> SendStatus {
        match msg {
            Message::Text(s) => self.ctx.send_frame(self.core, self.key, OpCode::Text, s.as_bytes()),
            Message::Binary(b) => self.ctx.send_frame(self.core, self.key, OpCode::Binary, b),
        }
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
        self.ctx.send_frame(self.core, self.key, OpCode::Ping, p)
    }

    /// Starts the close handshake with `code` and `reason` (cut to 123 bytes).
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.ctx.close(self.core, self.key, code, reason);
    }

    /// Outgoing bytes queued and not yet written.
    pub fn buffered(&self) -> usize {
        self.core.out.len()
    }

    /// Whether the connection is open (not closing or closed).
    pub fn is_open(&self) -> bool {
        self.core.phase == Phase::Open || self.core.phase == Phase::Handshaking
    }

    /// Subscribes this connection to `topic` (allowed from `on_open`).
    pub fn subscribe(&mut self, topic: &str) {
        self.ctx.subscribe(self.core, self.key, topic);
    }

    /// Unsubscribes this connection from `topic`.
    pub fn unsubscribe(&mut self, topic: &str) {
        self.ctx.unsubscribe(self.core, self.key, topic);
    }

    /// Publishes to every subscriber of `topic` on every worker (this connection too,
    /// if subscribed); returns the number of workers reached.
    pub fn publish(&mut self, topic: &str, msg: Message<'_>) -> usize {
        self.ctx.publish(topic, msg)
    }

    /// The verified JWT claims of this connection; `Some` only inside `on_open` when JWT
    /// auth is on (keep what you need, e.g. `sub`, keyed by [`Connection::id`]).
    pub fn claims(&self) -> Option<&Claims> {
        self.ctx.claims.as_ref()
    }

    /// Topics this connection subscribed to, in order.
    pub fn topics(&self) -> &[Box<str>] {
        self.core.topics.as_deref().map_or(&[], |v| v.as_slice())
    }

    /// A publisher for use outside callbacks (other threads).
    pub fn publisher(&self) -> Publisher {
        Publisher { shared: self.ctx.shared.clone() }
    }

    /// Calls `Handler::on_timer(token)` for this connection after `after` (rounded up to
    /// the tick). Dropped silently if the connection is gone by then.
    pub fn schedule(&mut self, after: Duration, token: u64) {
        // +1: `now_tick` began up to a tick ago, and a timer must never fire early.
        let at = self.ctx.now_tick as u64 + to_ticks(after, self.ctx.cfg.tick) as u64 + 1;
        let slot = self.ctx.app_tokens.insert(token) as u32;
        self.ctx.wheel.schedule(at, TimerEvent::App { key: self.key, generation: self.core.generation, slot });
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
