//! The sans-IO session: one WebSocket connection's life, from the upgrade request to
//! the end of the TCP connection, as a state machine with no socket and no clock.
//!
//! Modelled on quinn-proto's `Connection`. The driver (the worker loop, or a test)
//! feeds it inputs and takes outputs; the session never reads a clock (`now` is a tick
//! number passed in) and imports nothing from mio or `std::net`.
//!
//! Order of calls, as the worker makes them:
//! 1. bytes read: [`Session::handle_received`] once per read, then
//!    [`Session::handle_frames`] until it returns `(0, _)`; while handshaking, the
//!    driver parses the request itself and answers with [`Session::accept`] or
//!    [`Session::refuse`];
//! 2. application sends and closes through [`Core`] (what a callback's handle wraps);
//! 3. [`Session::poll_transmit`] for the bytes to write, [`Session::consume`] for
//!    what was written, [`Session::handle_write_blocked`] when the transport would
//!    block with bytes left;
//! 4. [`Session::poll_end`] after any of the above: shut down the write side, or drop
//!    the connection and report how it ended;
//! 5. [`Session::poll_timeout`] for the one deadline to arm; at that tick,
//!    [`Session::handle_timeout`] (firing early is harmless: it re-checks).
//!
//! ```text
//!                   accept                  we close (close())
//!  +-------------+ -------> +------+ ------------------------> +---------+
//!  | Handshaking |          | Open |                           | Closing |
//!  +-------------+          +------+ --+                       +---------+
//!     |      | refuse          |       | peer's close: echoed,    |  peer's close
//!     |      v                 |       | or protocol error: 1002  v
//!     |  +---------+           |       +-----------------> +--------+
//!     |  | Refused |           |                           | Closed |  flush, then
//!     |  +---------+           |                           +--------+  end or linger
//!     |      | flushed         |                                |
//!     |      v                 |     flushed, peer not closed   |
//!     |  +-----------+ <------------------------------------------+
//!     |  | Lingering |  write side shut; waits for EOF or close_timeout
//!     |  +-----------+
//!     v      v             v   EOF, reset, timeout
//!  +------------------------------------+       poll_end()       +------+
//!  | Ended: how it ended, not yet taken | --------------------> | Done |
//!  +------------------------------------+                        +------+
//! ```

pub mod cause;
#[doc(hidden)]
pub mod fuzzing;
mod outbox;
#[cfg(test)]
mod tests;

pub use cause::CloseCause;
pub(crate) use outbox::MAX_TRANSMIT_SLICES;

use crate::buf::{BufPool, Ring};
use crate::proto::frame::{encode_close, OpCode};
use crate::proto::{CloseCode, Decoder, DecoderConfig, Event, HandshakeLimits};
use outbox::Outbox;
use std::io::IoSlice;

/// The session's unit of time: a tick number of the driver's clock (the worker's timer
/// wheel resolution, 100 ms by default). Deadlines are rounded up to whole ticks.
pub type Tick = u32;

/// A deadline that never comes.
const NEVER: Tick = Tick::MAX;

/// What happens when a connection's outgoing buffer is over `max_backpressure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackpressurePolicy {
    /// Close the slow client with 1008.
    Close,
    /// Drop the message for that client (counted).
    Drop,
    /// Stop reading from the client until its buffer drains; messages are still
    /// queued (one over the cap at most). Broadcasts to such a client are dropped,
    /// since a publisher cannot be paused for one subscriber.
    PauseReading,
}

/// Limits and timeouts every session of a worker shares, in ticks where they are times.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Frame and message limits.
    pub decoder: DecoderConfig,
    /// Request head limits (used by the driver's parser).
    pub handshake_limits: HandshakeLimits,
    /// Ticks to complete the upgrade.
    pub handshake_timeout: Tick,
    /// Ticks of silence before a ping.
    pub ping_interval: Tick,
    /// Ticks of silence before closing with 1001; also the write-stall limit.
    pub idle_timeout: Tick,
    /// Ticks to wait for the peer's close frame, and for its EOF after ours.
    pub close_timeout: Tick,
    /// Outgoing bytes before the backpressure policy applies.
    pub max_backpressure: usize,
    /// What over `max_backpressure` means.
    pub backpressure_policy: BackpressurePolicy,
    /// Messages per second (token bucket, one second of burst).
    pub max_msg_rate: Option<u32>,
    /// Microseconds per tick (refills the rate limit bucket).
    pub tick_us: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            decoder: DecoderConfig::default(),
            handshake_limits: HandshakeLimits::default(),
            handshake_timeout: 100,
            ping_interval: 300,
            idle_timeout: 750,
            close_timeout: 50,
            max_backpressure: 1 << 20,
            backpressure_policy: BackpressurePolicy::PauseReading,
            max_msg_rate: None,
            tick_us: 100_000,
        }
    }
}

/// How a connection that had been upgraded ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The code for `on_close`: the one exchanged in close frames, 1005 for an empty
    /// close frame, 1006 when the connection dropped without one.
    pub code: CloseCode,
    /// Why.
    pub cause: CloseCause,
}

/// What the driver must do with the transport (see [`Session::poll_end`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Everything is written and nothing more will be: shut down the write side and
    /// keep reading until the peer's EOF (so unread input does not turn into a reset
    /// that destroys what is in flight).
    ShutdownWrite,
    /// Drop the connection. `Some` for an upgraded connection (the handler's
    /// `on_close` is owed), `None` for one refused or lost during the handshake.
    Finished(Option<Closed>),
}

/// What a timeout did, for the driver's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// The upgrade took longer than `handshake_timeout`.
    Handshake,
    /// Silence for `idle_timeout`: closing with 1001.
    Idle,
    /// The peer did not answer our close frame.
    Close,
    /// Outgoing bytes did not drain.
    WriteStall,
    /// A ping was queued.
    Pinged,
}

/// What a write did to the outgoing queue (see [`Session::consume`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Bytes remain.
    Pending,
    /// Everything is written.
    Empty,
    /// Everything is written after the queue had been over the cap or blocked: the
    /// handler's `on_drain` is owed, and reading resumes if it was paused.
    Drained,
}

/// A complete data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// UTF-8 text (validated).
    Text(&'a str),
    /// Binary data.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// The frame opcode that carries it.
    #[inline]
    pub fn opcode(&self) -> OpCode {
        match self {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        }
    }
}

/// What a send did with the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum SendStatus {
    /// Queued within `max_backpressure`.
    Queued,
    /// Queued, but the connection's buffer is now over `max_backpressure` (under the
    /// `PauseReading` policy reading stops until it drains).
    QueuedOverCap,
    /// Not queued: the connection is over its cap (policy `Drop` or `Close`) or not open.
    /// The caller still owns the message and may retry after `on_drain`.
    Dropped,
}

/// A send's status and what the driver counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sent {
    pub status: SendStatus,
    /// The connection went over its cap with this send (once per episode).
    pub went_over: bool,
    /// Dropped because the connection is over its cap (not because it is closed).
    pub capped: bool,
}

impl Sent {
    const QUEUED: Sent = Sent { status: SendStatus::Queued, went_over: false, capped: false };
    const NOT_OPEN: Sent = Sent { status: SendStatus::Dropped, went_over: false, capped: false };

    fn capped(went_over: bool) -> Sent {
        Sent { status: SendStatus::Dropped, went_over, capped: true }
    }
}

/// What one [`Session::handle_frames`] step produced.
#[derive(Debug)]
pub enum Received<'a, S> {
    /// Nothing for the application.
    Nothing,
    /// A control frame (answered already, where an answer is due).
    Control(OpCode),
    /// The session started closing on its own: a protocol error, the rate limit.
    Closing(CloseCause),
    /// A complete data message, with the connection's sending half and user state.
    Message {
        /// The message, borrowed from the input.
        msg: Message<'a>,
        /// The sending half, for the callback's handle.
        core: &'a mut Core,
        /// The application's state for this connection.
        user: &'a mut S,
    },
}

#[derive(Clone, Copy, Debug)]
struct Open {
    last_rx: Tick,
    last_ping: Tick,
    /// When the outgoing queue last became non-empty or made progress.
    tx_since: Tick,
    /// The token's expiry, or `NEVER`.
    expires: Tick,
    tokens: u32,
    tokens_tick: Tick,
    /// Reading stops until the queue drains (`PauseReading`).
    paused: bool,
    /// Over the cap or blocked since the queue last drained: `on_drain` is owed.
    congested: bool,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Handshaking { since: Tick },
    Open(Open),
    Closing { since: Tick, code: CloseCode, cause: CloseCause },
    Closed { since: Tick, end: Closed, peer_closed: bool },
    Refused { since: Tick },
    Lingering { since: Tick, end: Option<Closed> },
    Ended(Option<Closed>),
    Done,
}

/// The sending half of a session: its phase and outgoing bytes. Callbacks get it
/// (wrapped in a `Connection`) while the message they handle borrows the read side.
#[derive(Debug)]
pub struct Core {
    phase: Phase,
    out: Outbox,
}

/// One connection's WebSocket life. `S` is the application's per-connection state,
/// set when the upgrade is accepted; until then it is `S::default()`, so a zero-sized
/// state costs no byte (an `Option<S>` would cost a tag, eight bytes with padding).
#[derive(Debug)]
pub struct Session<S> {
    /// Input left over from the last read (a partial frame, or reading paused).
    leftover: Option<Ring>,
    decoder: Decoder,
    core: Core,
    user: S,
}

impl<S: Default> Session<S> {
    /// A connection whose upgrade request is still to come.
    pub fn new(now: Tick) -> Self {
        Session {
            leftover: None,
            decoder: Decoder::new(),
            core: Core { phase: Phase::Handshaking { since: now }, out: Outbox::default() },
            user: S::default(),
        }
    }

    /// The sending half.
    #[inline]
    pub fn core(&mut self) -> &mut Core {
        &mut self.core
    }

    /// Whether the upgrade was accepted (the application's state is its own).
    fn was_accepted(&self) -> bool {
        match self.core.phase {
            Phase::Handshaking { .. } | Phase::Refused { .. } | Phase::Done => false,
            Phase::Lingering { end, .. } | Phase::Ended(end) => end.is_some(),
            Phase::Open(_) | Phase::Closing { .. } | Phase::Closed { .. } => true,
        }
    }

    /// The sending half and the application's state together, for a callback outside
    /// a message; `None` before the upgrade.
    pub fn parts(&mut self) -> Option<(&mut Core, &mut S)> {
        self.was_accepted().then_some((&mut self.core, &mut self.user))
    }

    /// Still reading the upgrade request.
    #[inline]
    pub fn is_handshaking(&self) -> bool {
        matches!(self.core.phase, Phase::Handshaking { .. })
    }

    /// Upgraded and neither closing nor closed.
    #[inline]
    pub fn is_open(&self) -> bool {
        self.core.is_open()
    }

    /// Input should be read and fed in: false while paused for backpressure.
    #[inline]
    pub fn wants_read(&self) -> bool {
        !matches!(self.core.phase, Phase::Open(Open { paused: true, .. }) | Phase::Ended(_) | Phase::Done)
    }

    /// Whether an unfinished frame or message waits for more input.
    #[inline]
    pub fn has_leftover(&self) -> bool {
        self.leftover.is_some()
    }

    /// The input ring to read into: the leftover one, else a new one from `pool`.
    pub fn input_ring(&mut self, pool: &mut BufPool) -> &mut Ring {
        self.leftover.get_or_insert_with(|| pool.take())
    }

    /// Takes the leftover ring out (to decode it beside the session).
    pub fn take_leftover(&mut self) -> Option<Ring> {
        self.leftover.take()
    }

    /// Keeps `ring` as leftover input if it holds bytes; gives it back otherwise.
    pub fn keep_leftover(&mut self, ring: Ring, pool: &mut BufPool) {
        if ring.is_empty() {
            pool.give(ring);
        } else {
            self.leftover = Some(ring);
        }
    }

    /// Gives back everything pooled (the connection is gone).
    pub fn release(&mut self, pool_in: &mut BufPool, pool_out: &mut BufPool) {
        if let Some(r) = self.leftover.take() {
            pool_in.give(r);
        }
        self.core.out.discard(pool_out);
    }

    /// The application's state, for `on_close` (`S::default()` is left behind).
    pub fn take_user(&mut self) -> S {
        std::mem::take(&mut self.user)
    }

    // ---- inputs ------------------------------------------------------------------

    /// Bytes arrived (call once per read, before decoding them).
    #[inline(always)]
    pub fn handle_received(&mut self, now: Tick) {
        if let Phase::Open(o) = &mut self.core.phase {
            o.last_rx = now;
        }
    }

    /// The upgrade is accepted: `response` (the 101) goes out ahead of anything
    /// `on_open` queued, and `user` is the application's state from now on. `expires`
    /// is the tick the client's token runs out, if it has one.
    pub fn accept(
        &mut self,
        response: &[u8],
        user: S,
        expires: Option<Tick>,
        cfg: &SessionConfig,
        pool: &mut BufPool,
        now: Tick,
    ) {
        if !self.is_handshaking() {
            return;
        }
        self.core.out.push_front(pool, response);
        self.user = user;
        self.core.phase = Phase::Open(Open {
            last_rx: now,
            last_ping: now,
            tx_since: now,
            expires: expires.unwrap_or(NEVER),
            tokens: cfg.max_msg_rate.unwrap_or(0),
            tokens_tick: now,
            paused: false,
            congested: false,
        });
    }

    /// The upgrade is refused: whatever `on_open` queued is discarded and `response`
    /// (an HTTP error) is sent instead; then the connection ends.
    pub fn refuse(&mut self, response: &[u8], pool: &mut BufPool, now: Tick) {
        if !self.is_handshaking() {
            return;
        }
        self.core.out.discard(pool);
        self.core.out.push(pool, response);
        self.core.phase = Phase::Refused { since: now };
    }

    /// Decodes from the front of `data` (the input, at most up to one event). Returns
    /// the bytes consumed and what they were. `(0, _)`: call again with more input.
    /// Control frames are answered here (pong, the close echo); protocol errors close
    /// with the right code.
    #[inline(always)]
    pub fn handle_frames<'a>(
        &'a mut self,
        data: &'a mut [u8],
        cfg: &SessionConfig,
        pool: &mut BufPool,
        now: Tick,
    ) -> (usize, Received<'a, S>) {
        let Session { decoder, core, user, .. } = self;
        match core.phase {
            Phase::Open(Open { paused: false, .. }) | Phase::Closing { .. } => {}
            Phase::Open(_) | Phase::Handshaking { .. } => return (0, Received::Nothing),
            // Lingering after a close or a refusal: the peer's bytes are of no interest.
            _ => return (data.len(), Received::Nothing),
        }
        let len = data.len();
        if len == 0 && decoder.is_idle() {
            return (0, Received::Nothing);
        }
        let (n, ev) = match decoder.decode(data, &cfg.decoder) {
            Ok(r) => r,
            Err(e) => {
                core.fail(CloseCause::Protocol(e), pool, now);
                return (len, Received::Closing(CloseCause::Protocol(e)));
            }
        };
        let Some(ev) = ev else {
            return (n, Received::Nothing);
        };
        let msg = match ev {
            Event::Text(s) => Message::Text(s),
            Event::Binary(b) => Message::Binary(b),
            Event::Ping(p) => {
                if core.is_open() {
                    let _ = core.send(OpCode::Pong, p, cfg, pool, now);
                }
                return (n, Received::Control(OpCode::Ping));
            }
            Event::Pong(_) => return (n, Received::Control(OpCode::Pong)),
            Event::Close(close) => {
                core.peer_closed(close.map(|(c, _)| c), pool, now);
                return (len, Received::Control(OpCode::Close));
            }
        };
        let Phase::Open(o) = &mut core.phase else {
            // Data after our close frame is ignored (RFC 6455 5.5.1).
            return (n, Received::Nothing);
        };
        if cfg.max_msg_rate.is_some() && !o.take_token(cfg, now) {
            let c = CloseCause::RateLimit;
            core.close(c, c.code(), c.reason(), pool, now);
            return (n, Received::Closing(c));
        }
        (n, Received::Message { msg, core, user })
    }

    /// The peer's end of the stream arrived (EOF).
    pub fn handle_eof(&mut self) {
        self.core.phase = Phase::Ended(match self.core.phase {
            Phase::Closed { end, .. } => Some(end),
            Phase::Lingering { end, .. } => end,
            Phase::Ended(end) => end,
            Phase::Open(_) | Phase::Closing { .. } => {
                Some(Closed { code: CloseCode::ABNORMAL, cause: CloseCause::PeerGone })
            }
            Phase::Handshaking { .. } | Phase::Refused { .. } => None,
            Phase::Done => return,
        });
    }

    /// A read or write failed: the connection is gone.
    pub fn handle_reset(&mut self) {
        self.handle_abort(CloseCause::Reset);
    }

    /// Ends the connection now, without a close handshake (`Handle::stop`, a
    /// connection dropped while handshaking at shutdown).
    pub fn handle_abort(&mut self, cause: CloseCause) {
        let opened = !matches!(
            self.core.phase,
            Phase::Handshaking { .. } | Phase::Refused { .. } | Phase::Lingering { end: None, .. }
        );
        let end = match self.core.phase {
            Phase::Done => return,
            Phase::Ended(end) => end,
            // A close handshake that had completed keeps its code.
            Phase::Closed { end, peer_closed: true, .. } => Some(end),
            _ if opened => Some(Closed { code: CloseCode::ABNORMAL, cause }),
            _ => None,
        };
        self.core.phase = Phase::Ended(end);
    }

    /// The transport would block with bytes still queued.
    pub fn handle_write_blocked(&mut self) {
        if let Phase::Open(o) = &mut self.core.phase {
            o.congested = true;
        }
    }

    /// The deadline from [`Session::poll_timeout`] came (or any earlier tick: the
    /// session re-checks and does nothing early). Returns what fired.
    pub fn handle_timeout(&mut self, cfg: &SessionConfig, pool: &mut BufPool, now: Tick) -> Option<Timeout> {
        let core = &mut self.core;
        match core.phase {
            Phase::Handshaking { since } if now >= since.saturating_add(cfg.handshake_timeout) => {
                core.phase = Phase::Ended(None);
                Some(Timeout::Handshake)
            }
            Phase::Open(o) => {
                if !core.out.is_empty() && now >= o.tx_since.saturating_add(cfg.idle_timeout) {
                    core.phase =
                        Phase::Ended(Some(Closed { code: CloseCode::ABNORMAL, cause: CloseCause::WriteStall }));
                    return Some(Timeout::WriteStall);
                }
                if now >= o.expires {
                    let c = CloseCause::TokenExpired;
                    core.close(c, c.code(), c.reason(), pool, now);
                    return None;
                }
                if now >= o.last_rx.saturating_add(cfg.idle_timeout) {
                    let c = CloseCause::IdleTimeout;
                    core.close(c, c.code(), c.reason(), pool, now);
                    return Some(Timeout::Idle);
                }
                // Ping after ping_interval of silence, then every ping_interval until
                // something arrives or idle_timeout closes it.
                if now >= o.last_rx.max(o.last_ping).saturating_add(cfg.ping_interval) {
                    let _ = core.send(OpCode::Ping, b"", cfg, pool, now);
                    if let Phase::Open(o) = &mut core.phase {
                        o.last_ping = now;
                    }
                    return Some(Timeout::Pinged);
                }
                None
            }
            Phase::Closing { since, code, .. } if now >= since.saturating_add(cfg.close_timeout) => {
                core.phase = Phase::Ended(Some(Closed { code, cause: CloseCause::CloseTimeout }));
                Some(Timeout::Close)
            }
            Phase::Closed { since, end, .. } if now >= since.saturating_add(cfg.close_timeout) => {
                core.phase = Phase::Ended(Some(end));
                None
            }
            Phase::Lingering { since, end } if now >= since.saturating_add(cfg.close_timeout) => {
                core.phase = Phase::Ended(end);
                None
            }
            Phase::Refused { since } if now >= since.saturating_add(cfg.close_timeout) => {
                core.phase = Phase::Ended(None);
                None
            }
            _ => None,
        }
    }

    // ---- outputs -----------------------------------------------------------------

    /// The bytes to write, in order, as up to [`MAX_TRANSMIT_SLICES`] slices in `out`;
    /// returns how many (0: nothing to write).
    #[must_use]
    #[inline(always)]
    pub fn poll_transmit<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_TRANSMIT_SLICES]) -> usize {
        self.core.out.transmit(out)
    }

    /// `n` bytes of what [`Session::poll_transmit`] gave were written.
    #[inline(always)]
    pub fn consume(&mut self, n: usize, pool: &mut BufPool, now: Tick) -> Flushed {
        let empty = self.core.out.consume(pool, n);
        let Phase::Open(o) = &mut self.core.phase else {
            return if empty { Flushed::Empty } else { Flushed::Pending };
        };
        if !empty {
            if n > 0 {
                o.tx_since = now;
            }
            return Flushed::Pending;
        }
        if o.congested || o.paused {
            o.congested = false;
            o.paused = false;
            return Flushed::Drained;
        }
        Flushed::Empty
    }

    /// Outgoing bytes queued and not yet consumed.
    #[inline]
    pub fn buffered(&self) -> usize {
        self.core.out.len()
    }

    /// What the driver must do with the transport now, if anything. `ShutdownWrite`
    /// comes once; `Finished` comes once and is the session's last output.
    #[must_use]
    pub fn poll_end(&mut self) -> Option<Ending> {
        let core = &mut self.core;
        match core.phase {
            Phase::Closed { since, end, peer_closed } if core.out.is_empty() => {
                if peer_closed {
                    core.phase = Phase::Done;
                    Some(Ending::Finished(Some(end)))
                } else {
                    // The linger counts from the close, as close_timeout promises.
                    core.phase = Phase::Lingering { since, end: Some(end) };
                    Some(Ending::ShutdownWrite)
                }
            }
            Phase::Refused { since } if core.out.is_empty() => {
                core.phase = Phase::Lingering { since, end: None };
                Some(Ending::ShutdownWrite)
            }
            Phase::Ended(end) => {
                core.phase = Phase::Done;
                Some(Ending::Finished(end))
            }
            _ => None,
        }
    }

    /// The tick by which [`Session::handle_timeout`] must be called; `None`: no
    /// deadline (the session has ended).
    #[must_use]
    pub fn poll_timeout(&self, cfg: &SessionConfig) -> Option<Tick> {
        let due = match self.core.phase {
            Phase::Handshaking { since } => since.saturating_add(cfg.handshake_timeout),
            Phase::Open(o) => {
                let mut due = o.last_rx.saturating_add(cfg.idle_timeout);
                due = due.min(o.last_rx.max(o.last_ping).saturating_add(cfg.ping_interval));
                due = due.min(o.expires);
                if !self.core.out.is_empty() {
                    due = due.min(o.tx_since.saturating_add(cfg.idle_timeout));
                }
                due
            }
            Phase::Closing { since, .. }
            | Phase::Closed { since, .. }
            | Phase::Refused { since }
            | Phase::Lingering { since, .. } => since.saturating_add(cfg.close_timeout),
            Phase::Ended(_) | Phase::Done => return None,
        };
        Some(due)
    }
}

impl Open {
    /// Token bucket: refills by elapsed ticks, takes one; false when empty.
    #[inline]
    fn take_token(&mut self, cfg: &SessionConfig, now: Tick) -> bool {
        let Some(rate) = cfg.max_msg_rate else {
            return true;
        };
        let elapsed = now.wrapping_sub(self.tokens_tick) as u64;
        if elapsed > 0 {
            let add = (elapsed * rate as u64 * cfg.tick_us / 1_000_000).min(u32::MAX as u64) as u32;
            if add > 0 {
                self.tokens = self.tokens.saturating_add(add).min(rate);
                self.tokens_tick = now;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl Core {
    /// Upgraded and neither closing nor closed.
    #[inline]
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_))
    }

    /// Outgoing bytes queued and not yet written.
    #[inline]
    pub fn buffered(&self) -> usize {
        self.out.len()
    }

    /// Queues a data or control frame, applying the backpressure policy to data frames.
    /// Sends during the handshake (from `on_open`) follow the 101 response.
    #[inline(always)]
    pub(crate) fn send(
        &mut self,
        op: OpCode,
        payload: &[u8],
        cfg: &SessionConfig,
        pool: &mut BufPool,
        now: Tick,
    ) -> Sent {
        let before = self.out.len();
        let o = match &mut self.phase {
            Phase::Open(o) => o,
            Phase::Handshaking { .. } => {
                self.out.queue_frame(pool, op, payload);
                return Sent::QUEUED;
            }
            _ => return Sent::NOT_OPEN,
        };
        let cap = cfg.max_backpressure;
        let mut went_over = false;
        if before > 0 && before + payload.len() > cap && !op.is_control() {
            went_over = !o.congested;
            o.congested = true;
            match cfg.backpressure_policy {
                BackpressurePolicy::Close => {
                    let c = CloseCause::SlowConsumer;
                    self.close(c, c.code(), c.reason(), pool, now);
                    return Sent::capped(went_over);
                }
                BackpressurePolicy::Drop => return Sent::capped(went_over),
                BackpressurePolicy::PauseReading => o.paused = true,
            }
        }
        if before == 0 {
            o.tx_since = now;
        }
        self.out.queue_frame(pool, op, payload);
        if self.out.len() > cap {
            went_over |= !o.congested;
            o.congested = true;
            if cfg.backpressure_policy == BackpressurePolicy::PauseReading {
                o.paused = true;
            }
            return Sent { status: SendStatus::QueuedOverCap, went_over, capped: false };
        }
        Sent { status: SendStatus::Queued, went_over, capped: false }
    }

    /// Queues a pre-encoded broadcast frame for a subscriber, under the slow-subscriber
    /// policy: a subscriber over its cap misses the frame (and is closed under `Close`).
    #[inline]
    pub(crate) fn deliver(&mut self, frame: &[u8], cfg: &SessionConfig, pool: &mut BufPool, now: Tick) -> Sent {
        let before = self.out.len();
        let Phase::Open(o) = &mut self.phase else {
            return Sent::NOT_OPEN;
        };
        if before > 0 && before + frame.len() > cfg.max_backpressure {
            let went_over = !o.congested;
            o.congested = true;
            if cfg.backpressure_policy == BackpressurePolicy::Close {
                let c = CloseCause::SlowConsumer;
                self.close(c, c.code(), c.reason(), pool, now);
            }
            return Sent::capped(went_over);
        }
        if before == 0 {
            o.tx_since = now;
        }
        self.out.push(pool, frame);
        if self.out.len() > cfg.max_backpressure {
            // A frame larger than the cap, into an empty queue: over the cap as a send
            // would be (PauseReading stops reading, so the peer's messages cannot queue
            // a second frame over the cap behind it).
            let went_over = !o.congested;
            o.congested = true;
            if cfg.backpressure_policy == BackpressurePolicy::PauseReading {
                o.paused = true;
            }
            return Sent { status: SendStatus::QueuedOverCap, went_over, capped: false };
        }
        Sent::QUEUED
    }

    /// Starts the close handshake (Open -> Closing) with `code` and `reason` (cut to
    /// 123 bytes); nothing in other phases.
    pub(crate) fn close(&mut self, cause: CloseCause, code: CloseCode, reason: &str, pool: &mut BufPool, now: Tick) {
        if !self.is_open() {
            return;
        }
        self.queue_close(Some((code, reason)), pool);
        self.phase = Phase::Closing { since: now, code, cause };
    }

    /// Fails the connection (RFC 6455 7.1.7): close frame with the cause's code, then
    /// Closed without waiting for the peer's.
    fn fail(&mut self, cause: CloseCause, pool: &mut BufPool, now: Tick) {
        let code = cause.code();
        match self.phase {
            Phase::Open(_) => self.queue_close(Some((code, cause.reason())), pool),
            Phase::Closing { .. } => {}
            _ => return,
        }
        self.phase = Phase::Closed { since: now, end: Closed { code, cause }, peer_closed: false };
    }

    /// The peer's close frame arrived: echo its code if we had not closed (RFC 6455
    /// 5.5.1; an empty close gets an empty one), then Closed.
    fn peer_closed(&mut self, code: Option<CloseCode>, pool: &mut BufPool, now: Tick) {
        let end = match self.phase {
            Phase::Open(_) => {
                self.queue_close(code.map(|c| (c, "")), pool);
                Closed { code: code.unwrap_or(CloseCode::NO_STATUS), cause: CloseCause::PeerClosed }
            }
            // Our close was answered: the code is ours.
            Phase::Closing { code, cause, .. } => Closed { code, cause },
            _ => return,
        };
        self.phase = Phase::Closed { since: now, end, peer_closed: true };
    }

    fn queue_close(&mut self, close: Option<(CloseCode, &str)>, pool: &mut BufPool) {
        let mut buf = [0u8; 2 + 125];
        if let Ok(n) = encode_close(&mut buf, close, None) {
            self.out.push(pool, &buf[..n]);
        }
    }
}
