//! The session's halves at work: the reader decoding input, the sending half queueing
//! frames under the backpressure policy and running the close handshake.

use super::*;
use crate::proto::frame::MAX_HEADER_LEN;

impl Reader {
    /// Nothing pending: no partial frame, no message in progress.
    #[inline(always)]
    pub fn is_idle(&self) -> bool {
        self.decoder.is_idle()
    }

    /// Decodes from the front of `data` (the input) for the session whose sending half
    /// is `core`, at most up to one event. Returns
    /// the bytes consumed and what they were. `(0, _)`: call again with more input.
    /// Control frames are answered here (pong, the close echo); protocol errors close
    /// with the right code.
    #[inline(always)]
    pub fn handle_frames<'a>(
        &'a mut self,
        core: &mut Core,
        data: &'a mut [u8],
        cfg: &SessionConfig,
        pool: &mut BufPool,
        now: Tick,
    ) -> (usize, Received<'a>) {
        let decoder = &mut self.decoder;
        match core.phase {
            Phase::Open(Open { backlog: Backlog::Clear | Backlog::Blocked | Backlog::Congested, .. })
            | Phase::Closing { .. } => {}
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
            Event::Deflated { text, end, payload } => return (n, deflated(core, text, end, payload, cfg, pool, now)),
            Event::Ping(p) => {
                if core.is_open() {
                    if core.out.len() > cfg.max_backpressure {
                        // A peer that pings but does not read: queueing every pong
                        // would grow the outbox without bound. RFC 6455 5.5.3 lets an
                        // endpoint answer only the latest of several pings, and this
                        // peer reads none of them; under `Close` it is a slow consumer
                        // like any other.
                        if cfg.backpressure_policy == BackpressurePolicy::Close {
                            let c = CloseCause::SlowConsumer;
                            core.close(c, c.code(), c.reason(), pool, now);
                            return (n, Received::Closing(c));
                        }
                        return (n, Received::Control(OpCode::Ping));
                    }
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
        (n, Received::Message(msg))
    }
}

/// A compressed message, for the driver to inflate: the same rules as for a plain one
/// (ignored after our close, counted by the rate limit, at its end). Apart, off the
/// plain path. A part before the end goes to the driver as it is.
#[cold]
#[inline(never)]
fn deflated<'a>(
    core: &mut Core,
    text: bool,
    end: bool,
    payload: &'a [u8],
    cfg: &SessionConfig,
    pool: &mut BufPool,
    now: Tick,
) -> Received<'a> {
    if !end {
        return Received::Deflated { text, end, payload };
    }
    let Phase::Open(o) = &mut core.phase else {
        return Received::Nothing;
    };
    if cfg.max_msg_rate.is_some() && !o.take_token(cfg, now) {
        let c = CloseCause::RateLimit;
        core.close(c, c.code(), c.reason(), pool, now);
        return Received::Closing(c);
    }
    Received::Deflated { text, end: true, payload }
}

impl Open {
    /// Marks the queue over its cap; true if it was not (a new episode, counted once; the
    /// write-stall clock starts unless the transport had already blocked).
    #[inline]
    pub(super) fn congest(&mut self, now: Tick) -> bool {
        match self.backlog {
            Backlog::Clear => {
                self.backlog = Backlog::Congested;
                self.tx_since = now;
                true
            }
            // Already stalled on the transport: the clock keeps its start, and going over
            // the cap is this episode's first time.
            Backlog::Blocked => {
                self.backlog = Backlog::Congested;
                true
            }
            Backlog::Congested | Backlog::Paused => false,
        }
    }

    /// Token bucket: refills by elapsed ticks, takes one; false when empty.
    #[inline]
    pub(super) fn take_token(&mut self, cfg: &SessionConfig, now: Tick) -> bool {
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

    /// Whether permessage-deflate was negotiated (see [`Session::set_deflate`]): the
    /// send path's one test.
    #[inline(always)]
    pub fn compresses(&self) -> bool {
        self.deflate_byte() != 0
    }

    /// What permessage-deflate negotiated, if it was.
    #[inline]
    pub fn deflate(&self) -> Option<crate::deflate::Agreed> {
        crate::deflate::Agreed::from_byte(self.deflate_byte())
    }

    #[inline(always)]
    fn deflate_byte(&self) -> u8 {
        match self.phase {
            Phase::Open(Open { deflate, .. }) | Phase::Handshaking { deflate, .. } => deflate,
            _ => 0,
        }
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
        self.send_frame::<false>(op, payload, cfg, pool, now)
    }

    #[cfg(feature = "deflate")]
    /// Queues a permessage-deflate message: `payload` is compressed already, and its
    /// frame goes out with RSV1 set.
    pub(crate) fn send_compressed(
        &mut self,
        op: OpCode,
        payload: &[u8],
        cfg: &SessionConfig,
        pool: &mut BufPool,
        now: Tick,
    ) -> Sent {
        self.send_frame::<true>(op, payload, cfg, pool, now)
    }

    /// A protocol error found outside the decoder (in inflating a message): fails the
    /// connection with the error's close code.
    pub(crate) fn fail_protocol(&mut self, e: crate::proto::ProtocolError, pool: &mut BufPool, now: Tick) {
        self.fail(CloseCause::Protocol(e), pool, now);
    }

    #[inline(always)]
    fn send_frame<const RSV1: bool>(
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
                self.out.queue_frame::<RSV1>(pool, op, payload);
                return Sent::Queued;
            }
            _ => return Sent::NotOpen,
        };
        let cap = cfg.max_backpressure;
        // Far below the cap (the usual case), neither check below can trip: one
        // comparison instead of two around the queueing.
        if before + payload.len() + MAX_HEADER_LEN <= cap {
            self.out.queue_frame::<RSV1>(pool, op, payload);
            return Sent::Queued;
        }
        let mut went_over = false;
        if before > 0 && before + payload.len() > cap && !op.is_control() {
            went_over = o.congest(now);
            match cfg.backpressure_policy {
                BackpressurePolicy::Close => {
                    let c = CloseCause::SlowConsumer;
                    self.close(c, c.code(), c.reason(), pool, now);
                    return Sent::Capped { first: went_over };
                }
                BackpressurePolicy::Drop => return Sent::Capped { first: went_over },
                BackpressurePolicy::PauseReading => o.backlog = Backlog::Paused,
            }
        }
        self.out.queue_frame::<RSV1>(pool, op, payload);
        if self.out.len() > cap {
            went_over |= o.congest(now);
            if cfg.backpressure_policy == BackpressurePolicy::PauseReading {
                o.backlog = Backlog::Paused;
            }
            return Sent::OverCap { first: went_over };
        }
        Sent::Queued
    }

    /// Queues a pre-encoded broadcast frame for a subscriber, under the slow-subscriber
    /// policy: a subscriber over its cap misses the frame (and is closed under `Close`).
    #[inline]
    pub(crate) fn deliver(&mut self, frame: &[u8], cfg: &SessionConfig, pool: &mut BufPool, now: Tick) -> Sent {
        let before = self.out.len();
        let Phase::Open(o) = &mut self.phase else {
            return Sent::NotOpen;
        };
        if before > 0 && before + frame.len() > cfg.max_backpressure {
            let went_over = o.congest(now);
            if cfg.backpressure_policy == BackpressurePolicy::Close {
                let c = CloseCause::SlowConsumer;
                self.close(c, c.code(), c.reason(), pool, now);
            }
            return Sent::Capped { first: went_over };
        }
        self.out.push(pool, frame);
        if self.out.len() > cfg.max_backpressure {
            // A frame larger than the cap, into an empty queue: over the cap as a send
            // would be (PauseReading stops reading, so the peer's messages cannot queue
            // a second frame over the cap behind it). Found by the session fuzz target.
            let first = o.congest(now);
            if cfg.backpressure_policy == BackpressurePolicy::PauseReading {
                o.backlog = Backlog::Paused;
            }
            return Sent::OverCap { first };
        }
        Sent::Queued
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
    pub(super) fn fail(&mut self, cause: CloseCause, pool: &mut BufPool, now: Tick) {
        let code = match self.phase {
            Phase::Open(_) => {
                let code = cause.code();
                self.queue_close(Some((code, cause.reason())), pool);
                code
            }
            // Our close frame is out already: its code is the one on the wire, and the
            // one reported (found by the session fuzz target).
            Phase::Closing { code, .. } => code,
            _ => return,
        };
        self.phase = Phase::Closed { since: now, end: Closed { code, cause }, peer_closed: false };
    }

    /// The peer's close frame arrived: echo its code if we had not closed (RFC 6455
    /// 5.5.1; an empty close gets an empty one), then Closed.
    pub(super) fn peer_closed(&mut self, code: Option<CloseCode>, pool: &mut BufPool, now: Tick) {
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

    pub(super) fn queue_close(&mut self, close: Option<(CloseCode, &str)>, pool: &mut BufPool) {
        let mut buf = [0u8; 2 + 125];
        if let Ok(n) = encode_close(&mut buf, close, None) {
            self.out.push(pool, &buf[..n]);
        }
    }
}
