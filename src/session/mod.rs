//! The sans-IO session: one WebSocket connection's life, from the upgrade request to
//! the end of the TCP connection, as a state machine with no socket and no clock.
//!
//! Modelled on quinn-proto's `Connection`. The driver (the worker loop, or a test)
//! feeds it inputs and takes outputs; the session never reads a clock (`now` is a tick
//! number passed in) and imports nothing from mio or `std::net`.
//!
//! Order of calls, as the worker makes them:
//! 1. bytes read: [`Session::handle_received`] once per read, then
//!    [`Session::split`] and [`Reader::handle_frames`] until it returns
//!    `(0, _)` or the input is used up with the reader idle; while handshaking, the
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
mod core;
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
    /// Everything is written by an open connection, and nothing is owed.
    Empty,
    /// Everything is written by a connection that is not open (handshaking, closing,
    /// closed): see [`Session::poll_end`].
    Written,
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

/// A send's status and what the driver counts: one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Sent {
    /// Queued within the cap.
    Queued,
    /// Queued, now over the cap; `first`: the connection just went over.
    OverCap { first: bool },
    /// Dropped because the connection is over its cap; `first` as above.
    Capped { first: bool },
    /// Dropped: the connection is not open.
    NotOpen,
}

impl Sent {
    /// What the caller is told.
    #[inline]
    pub fn status(self) -> SendStatus {
        match self {
            Sent::Queued => SendStatus::Queued,
            Sent::OverCap { .. } => SendStatus::QueuedOverCap,
            Sent::Capped { .. } | Sent::NotOpen => SendStatus::Dropped,
        }
    }

    /// The connection went over its cap with this send (once per episode).
    #[inline]
    pub fn went_over(self) -> bool {
        matches!(self, Sent::OverCap { first: true } | Sent::Capped { first: true })
    }

    /// Dropped because the connection is over its cap (not because it is closed).
    #[inline]
    pub fn capped(self) -> bool {
        matches!(self, Sent::Capped { .. })
    }
}

/// Where input should be read into (see [`Session::read_target`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadTarget {
    /// Not now: paused for backpressure, or the session has ended.
    Paused,
    /// Open with nothing left over: any ring will do (the worker's scratch ring), and
    /// only undecoded bytes need to stay with the session.
    Scratch,
    /// The session's own input ring ([`Session::input_ring`]): the request while
    /// handshaking, or after a partial frame.
    Own,
}

/// What one [`Reader::handle_frames`] step produced.
#[derive(Debug)]
pub enum Received<'a> {
    /// Nothing for the application.
    Nothing,
    /// A control frame (answered already, where an answer is due).
    Control(OpCode),
    /// The session started closing on its own: a protocol error, the rate limit.
    Closing(CloseCause),
    /// A complete data message, borrowed from the input, for the application.
    Message(Message<'a>),
    /// A complete permessage-deflate message, still compressed: the driver inflates it
    /// (and fails the connection through [`Core::fail_protocol`] if that fails).
    ///
    /// A message that arrives in parts comes as several, `end` on the last: the driver
    /// inflates each part at once (so bad UTF-8 closes as early as in a plain message).
    Deflated {
        /// Text (else binary).
        text: bool,
        /// The message is complete with this part.
        end: bool,
        /// The compressed bytes since the last part (all of them for a message that
        /// came whole).
        payload: &'a [u8],
    },
}

/// The read half of a session: the frame decoder. Apart from [`Core`] so that a
/// message borrowed from the input can be handed to the application together with the
/// sending half (see [`Session::split`]).
#[derive(Debug)]
pub struct Reader {
    decoder: Decoder,
}

#[derive(Clone, Copy, Debug)]
struct Open {
    last_rx: Tick,
    last_ping: Tick,
    /// When the outgoing queue became congested or last made progress while congested
    /// (the write-stall clock; a queue that is written as fast as it fills has none).
    tx_since: Tick,
    /// The token's expiry, or `NEVER`.
    expires: Tick,
    tokens: u32,
    tokens_tick: Tick,
    backlog: Backlog,
    /// A negotiated permessage-deflate packed in one byte ([`Agreed::to_byte`]), 0
    /// without: all a connection keeps for it (compressors are the worker's). In
    /// padding: no byte added.
    ///
    /// [`Agreed::to_byte`]: crate::deflate::Agreed::to_byte
    deflate: u8,
}

/// How the outgoing queue of an open connection stands since it last drained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Backlog {
    /// Written as fast as it is queued.
    Clear,
    /// The transport blocked with bytes queued, still within the cap: the write-stall
    /// clock runs and `on_drain` is owed, but the connection has not gone over its cap
    /// (so going over it later is still a new backpressure episode, and counted).
    Blocked,
    /// Went over the cap: `on_drain` is owed.
    Congested,
    /// Congested, and reading stops until the queue drains (`PauseReading`).
    Paused,
}

// A plain tag byte first: the hot path matches on the phase a few times per message.
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
enum Phase {
    Handshaking { since: Tick, deflate: u8 },
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
    reader: Reader,
    core: Core,
    user: S,
}

impl<S: Default> Session<S> {
    /// A connection whose upgrade request is still to come.
    pub fn new(now: Tick) -> Self {
        Session {
            leftover: None,
            reader: Reader { decoder: Decoder::new() },
            core: Core { phase: Phase::Handshaking { since: now, deflate: 0 }, out: Outbox::default() },
            user: S::default(),
        }
    }

    /// permessage-deflate was negotiated (`Some`): known to `on_open`
    /// ([`Core::deflate`]), and once accepted, compressed messages (RSV1) are let in.
    /// Call while handshaking, before [`Session::accept`].
    pub fn set_deflate(&mut self, agreed: Option<crate::deflate::Agreed>) {
        if let Phase::Handshaking { deflate, .. } = &mut self.core.phase {
            *deflate = agreed.map_or(0, |a| a.to_byte());
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
        self.read_target() != ReadTarget::Paused
    }

    /// The decoder holds nothing: no partial frame, no message in progress.
    #[inline(always)]
    pub fn decoder_is_idle(&self) -> bool {
        self.reader.decoder.is_idle()
    }

    /// The read half, the sending half and the application's state, to decode input
    /// ([`Reader::handle_frames`]) and hand each message to the application.
    #[inline(always)]
    pub fn split(&mut self) -> (&mut Reader, &mut Core, &mut S) {
        (&mut self.reader, &mut self.core, &mut self.user)
    }

    /// Where the driver should read input into, if anywhere: one look at the phase for
    /// what the read path asks each time.
    #[inline(always)]
    pub fn read_target(&self) -> ReadTarget {
        match self.core.phase {
            Phase::Open(Open { backlog: Backlog::Paused, .. }) | Phase::Ended(_) | Phase::Done => ReadTarget::Paused,
            Phase::Open(_) if self.leftover.is_none() => ReadTarget::Scratch,
            _ => ReadTarget::Own,
        }
    }

    /// Bytes arrived (call once per read, before decoding them): input is life, it
    /// puts off the ping and the idle timeout.
    #[inline(always)]
    pub fn handle_received(&mut self, now: Tick) {
        if let Phase::Open(o) = &mut self.core.phase {
            o.last_rx = now;
        }
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
        let Phase::Handshaking { deflate, .. } = self.core.phase else {
            return;
        };
        self.reader.decoder.set_deflate(deflate != 0);
        self.core.out.push_front(pool, response);
        self.user = user;
        self.core.phase = Phase::Open(Open {
            last_rx: now,
            last_ping: now,
            tx_since: now,
            expires: expires.unwrap_or(NEVER),
            tokens: cfg.max_msg_rate.unwrap_or(0),
            tokens_tick: now,
            backlog: Backlog::Clear,
            deflate,
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
    pub fn handle_write_blocked(&mut self, now: Tick) {
        if let Phase::Open(o) = &mut self.core.phase {
            if o.backlog == Backlog::Clear {
                o.backlog = Backlog::Blocked;
                o.tx_since = now;
            }
        }
    }

    /// The deadline from [`Session::poll_timeout`] came (or any earlier tick: the
    /// session re-checks and does nothing early). Returns what fired.
    pub fn handle_timeout(&mut self, cfg: &SessionConfig, pool: &mut BufPool, now: Tick) -> Option<Timeout> {
        let core = &mut self.core;
        match core.phase {
            Phase::Handshaking { since, .. } if now >= since.saturating_add(cfg.handshake_timeout) => {
                core.phase = Phase::Ended(None);
                Some(Timeout::Handshake)
            }
            Phase::Open(o) => {
                let stalled = o.backlog != Backlog::Clear && !core.out.is_empty();
                if stalled && now >= o.tx_since.saturating_add(cfg.idle_timeout) {
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

    /// All the bytes to write when they are one slice (the usual case); `None`: use
    /// [`Session::poll_transmit`].
    #[must_use]
    #[inline(always)]
    pub fn poll_transmit_one(&self) -> Option<&[u8]> {
        self.core.out.transmit_one()
    }

    /// `n` bytes of what [`Session::poll_transmit`] gave were written.
    #[inline(always)]
    pub fn consume(&mut self, n: usize, pool: &mut BufPool, now: Tick) -> Flushed {
        let empty = self.core.out.consume(pool, n);
        let Phase::Open(o) = &mut self.core.phase else {
            return if empty { Flushed::Written } else { Flushed::Pending };
        };
        if !empty {
            if n > 0 {
                o.tx_since = now;
            }
            return Flushed::Pending;
        }
        if o.backlog != Backlog::Clear {
            o.backlog = Backlog::Clear;
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
            Phase::Handshaking { since, .. } => since.saturating_add(cfg.handshake_timeout),
            Phase::Open(o) => {
                let mut due = o.last_rx.saturating_add(cfg.idle_timeout);
                due = due.min(o.last_rx.max(o.last_ping).saturating_add(cfg.ping_interval));
                due = due.min(o.expires);
                if o.backlog != Backlog::Clear && !self.core.out.is_empty() {
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
