//! The bodies of the session fuzz targets, and a driver that runs a [`Session`] the
//! way the worker does, with a simulated client, clock and transport.
//!
//! `fuzz/fuzz_targets/session.rs` hands libFuzzer's bytes to [`session`];
//! `fuzz/fuzz_targets/session_differential.rs` compares [`run_client_stream`] with
//! tungstenite. `tests/fuzz_corpus.rs` replays both corpora under plain `cargo test`.
//! The driver lives inside the crate because the application's half of the session
//! (`Core::send`, `Core::close`, `Core::deliver`) is `pub(crate)`.
//!
//! [`Driver`] mirrors `src/server/worker.rs`: a read goes into the worker's scratch
//! ring when nothing is left over (and becomes the connection's ring if bytes remain),
//! else into the connection's own; a flush writes until the transport takes no more
//! and then reports `handle_write_blocked`; a drain resumes reading; every step ends
//! with `poll_end` and `poll_timeout`, as `Worker::end` does.

use super::{
    BackpressurePolicy, Closed, Ending, Flushed, Message, Received, SendStatus, Session, SessionConfig, Tick,
    MAX_TRANSMIT_SLICES,
};
use super::{CloseCause, Core};
use crate::buf::{BufPool, Ring};
use crate::proto::frame::{server_header, OpCode, MAX_CONTROL_PAYLOAD};
use crate::proto::{CloseCode, DecoderConfig, ProtocolError};
use std::io::IoSlice;

/// The 101 the driver answers an upgrade with (its content does not matter to the
/// session: it is written ahead of everything else).
pub const UPGRADE_RESPONSE: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
/// The refusal the driver answers with.
pub const REFUSAL_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";

/// Close codes the fuzzed application closes with: every one the application may put
/// on the wire. (`Core::close` does not check the code: an application that passes
/// 1005 or 1006 sends it. See the report on this target.)
const APP_CODES: [u16; 8] = [1000, 1001, 1003, 1008, 1011, 1014, 3000, 4999];

/// What the server wrote, checked as it arrives: an HTTP response first where the
/// connection started with a handshake, then valid server frames, nothing after the
/// close frame.
#[derive(Debug, Default)]
pub struct Wire {
    /// Every byte transmitted.
    pub bytes: Vec<u8>,
    /// The HTTP response expected in front of the frames (once answered).
    response: Option<&'static [u8]>,
    /// Still waiting for the handshake's answer: nothing may be written.
    handshaking: bool,
    /// The response was a refusal: nothing follows it.
    refused: bool,
    /// Bytes of `bytes` parsed into frames.
    pos: usize,
    /// Data message in progress: (text, payload so far).
    partial: Option<(bool, Vec<u8>)>,
    /// The close frame's code (1005 when empty), once sent.
    pub close: Option<u16>,
    /// Data messages sent, whole.
    pub messages: usize,
}

impl Wire {
    fn push(&mut self, data: &[u8]) {
        assert!(!self.handshaking || data.is_empty(), "bytes written before the handshake was answered");
        self.bytes.extend_from_slice(data);
        self.absorb();
    }

    /// Checks every complete frame written so far.
    fn absorb(&mut self) {
        if let Some(resp) = self.response {
            let n = self.bytes.len().min(resp.len());
            assert_eq!(&self.bytes[..n], &resp[..n], "the HTTP response comes first, whole");
            if self.refused {
                assert!(self.bytes.len() <= resp.len(), "bytes after a refusal");
                return;
            }
            if self.bytes.len() < resp.len() {
                return;
            }
            self.pos = self.pos.max(resp.len());
        }
        loop {
            let b = &self.bytes[self.pos..];
            if b.is_empty() {
                return;
            }
            assert!(self.close.is_none(), "{} bytes after the close frame", b.len());
            let Some((fin, op, payload, len)) = parse_server_frame(b) else {
                return;
            };
            let payload = payload.to_vec();
            self.pos += len;
            self.frame(fin, op, payload);
        }
    }

    fn frame(&mut self, fin: bool, op: u8, payload: Vec<u8>) {
        match op {
            0x8..=0xA => {
                assert!(fin, "fragmented control frame {op:#x}");
                assert!(payload.len() <= MAX_CONTROL_PAYLOAD, "control payload of {}", payload.len());
                if op == 0x8 {
                    assert!(payload.len() != 1, "close payload of one byte");
                    let code = if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                    if payload.len() >= 2 {
                        assert!(CloseCode(code).is_valid_on_wire(), "close code {code} on the wire");
                        assert!(std::str::from_utf8(&payload[2..]).is_ok(), "close reason not UTF-8: {payload:?}");
                    }
                    self.close = Some(code);
                }
            }
            0x0 => {
                let (_, buf) = self.partial.as_mut().expect("continuation without a message");
                buf.extend_from_slice(&payload);
                if fin {
                    self.end_message();
                }
            }
            0x1 | 0x2 => {
                assert!(self.partial.is_none(), "new message inside a fragmented one");
                self.partial = Some((op == 0x1, payload));
                if fin {
                    self.end_message();
                }
            }
            _ => panic!("reserved opcode {op:#x} from the server"),
        }
    }

    fn end_message(&mut self) {
        let (text, payload) = self.partial.take().expect("a message in progress");
        if text {
            assert!(std::str::from_utf8(&payload).is_ok(), "text message not UTF-8");
        }
        self.messages += 1;
    }

    /// Frames written after the HTTP response: (FIN, opcode, payload).
    pub fn frames(&self) -> Vec<(bool, u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut b = &self.bytes[self.response.map_or(0, |r| r.len().min(self.bytes.len()))..];
        while let Some((fin, op, payload, len)) = parse_server_frame(b) {
            out.push((fin, op, payload.to_vec()));
            b = &b[len..];
        }
        out
    }
}

/// One server frame from the front of `b`: (FIN, opcode, payload, frame length), or
/// `None` if incomplete. Panics on what a server must never write: a mask, reserved
/// bits, a length not in its shortest form or with the top bit set.
fn parse_server_frame(b: &[u8]) -> Option<(bool, u8, &[u8], usize)> {
    if b.len() < 2 {
        return None;
    }
    let (b0, b1) = (b[0], b[1]);
    assert_eq!(b0 & 0x70, 0, "reserved bits in a server frame: {b0:#x}");
    assert_eq!(b1 & 0x80, 0, "masked server frame");
    let (len, hl) = match b1 & 0x7F {
        126 => {
            if b.len() < 4 {
                return None;
            }
            let l = u16::from_be_bytes([b[2], b[3]]) as u64;
            assert!(l >= 126, "16-bit length {l} not minimal");
            (l, 4)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            let l = u64::from_be_bytes(b[2..10].try_into().unwrap());
            assert!(l > 0xFFFF && l >> 63 == 0, "64-bit length {l} not minimal");
            (l, 10)
        }
        l => (l as u64, 2),
    };
    let end = hl + usize::try_from(len).ok()?;
    if b.len() < end {
        return None;
    }
    Some((b0 & 0x80 != 0, b0 & 0x0F, &b[hl..end], end))
}

/// The fuzzed application's answer to an upgrade request.
#[derive(Clone, Debug)]
pub struct OnOpen {
    /// Refuse instead of accepting.
    pub refuse: bool,
    /// Sends made from `on_open`, before the answer (discarded by a refusal).
    pub sends: Vec<(OpCode, Vec<u8>)>,
    /// Ticks until the client's token expires.
    pub expires_in: Option<Tick>,
}

/// Everything around the session: configuration, pools, clock, application.
struct Env {
    cfg: SessionConfig,
    rpool: BufPool,
    wpool: BufPool,
    now: Tick,
    /// Echo every message back.
    echo: bool,
    /// Messages the application saw: (text, payload).
    got: Vec<(bool, Vec<u8>)>,
    /// Closes the session started on its own.
    closing: Vec<CloseCause>,
    /// The peer's close frame arrived.
    peer_close_seen: bool,
    /// A protocol error came after our close frame was queued (the close frame on
    /// the wire carries our code; the session reports the error's: see the report).
    failed_while_closing: bool,
    /// For the bound on buffered bytes: the largest data frame queued, and the
    /// control bytes (responses, pongs, pings, close frames) queued since the outbox
    /// was last empty.
    max_data_frame: usize,
    ctrl_since_empty: usize,
}

impl Env {
    /// Accounts for what a step added to the outbox.
    fn queued(&mut self, before: usize, after: usize, data: bool) {
        let added = after.saturating_sub(before);
        if data {
            self.max_data_frame = self.max_data_frame.max(added);
        } else {
            self.ctrl_since_empty += added;
        }
    }

    fn app_send(&mut self, core: &mut Core, op: OpCode, payload: &[u8]) {
        let before = core.buffered();
        let sent = core.send(op, payload, &self.cfg, &mut self.wpool, self.now);
        // A dropped send may have queued a close frame (the Close policy).
        self.queued(before, core.buffered(), !op.is_control() && sent.status() != SendStatus::Dropped);
    }
}

/// A session driven the way the worker drives one, with invariants checked at every
/// step (see [`session`]).
pub struct Driver {
    s: Session<u8>,
    scratch: Ring,
    env: Env,
    /// Bytes the client has sent; `client_pos` of them were read.
    client: Vec<u8>,
    client_pos: usize,
    /// The client's FIN follows its bytes.
    client_eof: bool,
    /// Bytes the transport takes before it would block.
    pub room: usize,
    /// What the server wrote.
    pub wire: Wire,
    /// The answer to the upgrade request, while handshaking.
    on_open: Option<OnOpen>,
    /// A read found reading paused (the worker's `maybe_readable`).
    maybe_readable: bool,
    /// The write side was shut (`Ending::ShutdownWrite`).
    shut_write: bool,
    /// How the connection ended, once `Finished` came.
    pub finished: Option<Option<Closed>>,
}

impl Driver {
    /// A session on a fresh connection. `on_open`: the connection starts with a
    /// handshake (the request is client bytes up to a blank line) answered so;
    /// `None`: it starts accepted at tick 0, its 101 already written.
    pub fn new(cfg: SessionConfig, ring_size: usize, echo: bool, on_open: Option<OnOpen>) -> Driver {
        let mut rpool = BufPool::new(ring_size, 4);
        let wpool = BufPool::new(ring_size, 4);
        let scratch = rpool.take();
        let env = Env {
            cfg,
            rpool,
            wpool,
            now: 0,
            echo,
            got: Vec::new(),
            closing: Vec::new(),
            peer_close_seen: false,
            failed_while_closing: false,
            max_data_frame: 0,
            ctrl_since_empty: 0,
        };
        let handshaking = on_open.is_some();
        let mut d = Driver {
            s: Session::new(0),
            scratch,
            env,
            client: Vec::new(),
            client_pos: 0,
            client_eof: false,
            room: usize::MAX,
            wire: Wire { handshaking, ..Wire::default() },
            on_open,
            maybe_readable: false,
            shut_write: false,
            finished: None,
        };
        if !handshaking {
            let env = &mut d.env;
            d.s.accept(UPGRADE_RESPONSE, 7, None, &env.cfg, &mut env.wpool, 0);
            d.wire.response = Some(UPGRADE_RESPONSE);
            d.flush();
        }
        d.check();
        d
    }

    /// The messages the application received: (text, payload).
    pub fn received(&self) -> &[(bool, Vec<u8>)] {
        &self.env.got
    }

    /// The closes the session started on its own (protocol errors, the rate limit).
    pub fn closing_causes(&self) -> &[CloseCause] {
        &self.env.closing
    }

    /// Whether the decoder holds an unfinished frame or message, or input waits.
    pub fn waiting_for_input(&self) -> bool {
        self.s.has_leftover() || !self.s.decoder_is_idle()
    }

    /// The client sends `bytes` (read when [`Driver::read`] is called).
    pub fn client_sends(&mut self, bytes: &[u8]) {
        if !self.client_eof {
            self.client.extend_from_slice(bytes);
        }
    }

    /// One read of at most `max` bytes, as the worker makes it when the socket is
    /// readable; `to_end`: read on until the client's bytes (and its FIN) are taken.
    pub fn read(&mut self, max: usize, to_end: bool) {
        loop {
            if self.finished.is_some() {
                return;
            }
            if !self.s.wants_read() {
                self.maybe_readable = true;
                return;
            }
            self.maybe_readable = false;
            let pending = self.client.len() - self.client_pos;
            if pending == 0 {
                if self.client_eof {
                    self.on_eof();
                }
                return;
            }
            let use_scratch = !self.s.has_leftover() && self.s.is_open();
            let ring = if use_scratch { &mut self.scratch } else { self.s.input_ring(&mut self.env.rpool) };
            let free = ring.free();
            if free == 0 {
                // The worker drops such a connection; with inline_limit == ring size
                // it cannot happen.
                panic!("read ring full without progress");
            }
            let n = free.min(max.max(1)).min(pending);
            let pushed = ring.push(&self.client[self.client_pos..self.client_pos + n]);
            assert_eq!(pushed, n);
            self.client_pos += n;
            self.s.handle_received(self.env.now);
            if use_scratch {
                decode(&mut self.scratch, &mut self.s, &mut self.env);
                if !self.scratch.is_empty() {
                    let ring = std::mem::replace(&mut self.scratch, self.env.rpool.take());
                    self.s.keep_leftover(ring, &mut self.env.rpool);
                }
            } else {
                self.process();
            }
            self.after_read();
            if n < free && !to_end {
                return;
            }
        }
    }

    /// What the worker does after a read: write what it produced, apply the ending.
    fn after_read(&mut self) {
        if self.s.buffered() > 0 {
            self.flush();
        } else {
            self.end();
        }
    }

    fn on_eof(&mut self) {
        if self.s.buffered() > 0 {
            self.flush();
        }
        if self.finished.is_none() {
            self.s.handle_eof();
            self.end();
        }
    }

    /// The client's FIN (after what it sent), read to the end.
    pub fn client_eof(&mut self) {
        self.client_eof = true;
        self.read(usize::MAX, true);
    }

    /// The connection's own ring: the request while handshaking, frames after.
    fn process(&mut self) {
        let Some(mut ring) = self.s.take_leftover() else {
            return;
        };
        if self.s.is_handshaking() {
            let consumed = self.handshake(&mut ring);
            ring.consume(consumed);
        }
        decode(&mut ring, &mut self.s, &mut self.env);
        self.s.keep_leftover(ring, &mut self.env.rpool);
    }

    /// The gate: a request is the bytes up to a blank line; a full ring without one
    /// is refused (the parser's 431). Returns the bytes taken.
    fn handshake(&mut self, ring: &mut Ring) -> usize {
        let full = ring.free() == 0;
        let data = ring.make_contiguous();
        let head = data.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
        let len = data.len();
        let Some(head) = head else {
            if full {
                self.answer(OnOpen { refuse: true, sends: Vec::new(), expires_in: None });
                return len;
            }
            return 0;
        };
        let on_open = self.on_open.take().expect("answered once");
        let refuse = on_open.refuse;
        self.answer(on_open);
        if refuse {
            len
        } else {
            head
        }
    }

    fn answer(&mut self, on_open: OnOpen) {
        let env = &mut self.env;
        for (op, payload) in &on_open.sends {
            // Sends from on_open are queued whatever the cap (the session applies no
            // policy while handshaking, nor at accept: see the report), so they are
            // outside the bound, as control bytes are.
            let before = self.s.buffered();
            let _ = self.s.core().send(*op, payload, &env.cfg, &mut env.wpool, env.now);
            env.queued(before, self.s.buffered(), false);
        }
        self.wire.handshaking = false;
        if on_open.refuse {
            self.s.refuse(REFUSAL_RESPONSE, &mut env.wpool, env.now);
            self.wire.response = Some(REFUSAL_RESPONSE);
            self.wire.refused = true;
            env.ctrl_since_empty = REFUSAL_RESPONSE.len();
            env.max_data_frame = 0;
        } else {
            let before = self.s.buffered();
            let expires = on_open.expires_in.map(|t| env.now.saturating_add(t));
            self.s.accept(UPGRADE_RESPONSE, 7, expires, &env.cfg, &mut env.wpool, env.now);
            self.wire.response = Some(UPGRADE_RESPONSE);
            env.queued(before, self.s.buffered(), false);
        }
    }

    /// The transport takes `n` more bytes; write.
    pub fn writable(&mut self, n: usize) {
        self.room = self.room.saturating_add(n);
        self.flush();
    }

    /// The transport takes only what `room` allows from now on.
    pub fn set_room(&mut self, n: usize) {
        self.room = n;
    }

    /// Writes what the session hands out, as far as the transport takes it, then what
    /// the worker does with the outcome.
    pub fn flush(&mut self) {
        if self.finished.is_some() {
            return;
        }
        let res = loop {
            let mut iov = [IoSlice::new(&[]); MAX_TRANSMIT_SLICES];
            let k = self.s.poll_transmit(&mut iov);
            if k == 0 {
                break Flushed::Empty;
            }
            assert!(!self.shut_write, "bytes to write after the write side was shut");
            let mut n = 0;
            for sl in &iov[..k] {
                assert!(!sl.is_empty(), "an empty slice from poll_transmit");
                let m = sl.len().min(self.room - n);
                self.wire.push(&sl[..m]);
                n += m;
            }
            self.room -= n;
            if n == 0 {
                break Flushed::Pending;
            }
            let before = self.s.buffered();
            match self.s.consume(n, &mut self.env.wpool, self.env.now) {
                Flushed::Pending => assert_eq!(self.s.buffered(), before - n),
                done => {
                    assert_eq!(self.s.buffered(), 0, "{done:?} with bytes left");
                    break done;
                }
            }
        };
        if self.s.buffered() == 0 {
            self.env.ctrl_since_empty = 0;
            self.env.max_data_frame = 0;
        }
        self.check();
        match res {
            Flushed::Pending => self.s.handle_write_blocked(self.env.now),
            Flushed::Empty | Flushed::Written => {}
            Flushed::Drained => {
                let pending = self.s.has_leftover();
                let maybe = self.maybe_readable;
                if pending {
                    self.process();
                }
                if maybe || pending {
                    self.read(usize::MAX, true);
                    if self.finished.is_some() {
                        return;
                    }
                }
            }
        }
        self.end();
    }

    /// `Worker::end`: what the session says about the transport's end.
    fn end(&mut self) {
        if self.finished.is_some() {
            return;
        }
        self.check();
        match self.s.poll_end() {
            Some(Ending::ShutdownWrite) => {
                assert!(!self.shut_write, "ShutdownWrite twice");
                assert_eq!(self.s.buffered(), 0, "ShutdownWrite with bytes to write");
                self.shut_write = true;
            }
            Some(Ending::Finished(end)) => self.finish(end),
            None => {}
        }
        if self.finished.is_none() && self.s.poll_timeout(&self.env.cfg).is_none() {
            panic!("no deadline for a session that has not finished: {:?}", self.s.core.phase);
        }
    }

    fn finish(&mut self, end: Option<Closed>) {
        assert_eq!(end.is_some(), self.wire.response == Some(UPGRADE_RESPONSE), "on_close owed iff upgraded: {end:?}");
        if let Some(end) = end {
            if end.cause == CloseCause::PeerClosed {
                assert!(self.env.peer_close_seen, "PeerClosed without the peer's close");
            }
            let exchanged =
                end.cause.sends_frame() || matches!(end.cause, CloseCause::PeerClosed | CloseCause::CloseTimeout);
            if exchanged {
                // The code reported is the one in the close frame we wrote (if it got out).
                if let Some(sent) = self.wire.close.filter(|_| !self.env.failed_while_closing) {
                    assert_eq!(sent, end.code.0, "reported {end:?}, sent {sent}");
                }
            } else {
                assert_eq!(end.code, CloseCode::ABNORMAL, "{end:?}");
            }
        }
        self.finished = Some(end);
        let env = &mut self.env;
        self.s.release(&mut env.rpool, &mut env.wpool);
        assert_eq!(env.rpool.lent(), 1, "read rings lent after release (the scratch ring is the driver's)");
        assert_eq!(env.wpool.lent(), 0, "write rings lent after release");
        assert_eq!(self.s.poll_end(), None, "output after Finished");
        assert_eq!(self.s.poll_timeout(&env.cfg), None, "a deadline after Finished");
        let mut iov = [IoSlice::new(&[]); MAX_TRANSMIT_SLICES];
        assert_eq!(self.s.poll_transmit(&mut iov), 0, "bytes after Finished");
    }

    /// The invariants that hold between any two steps.
    fn check(&self) {
        let buffered = self.s.buffered();
        let cfg = &self.env.cfg;
        let bound = cfg.max_backpressure + self.env.max_data_frame + self.env.ctrl_since_empty;
        assert!(
            buffered <= bound,
            "{buffered} bytes buffered over max_backpressure {} + largest data frame {} + control {} ({:?})",
            cfg.max_backpressure,
            self.env.max_data_frame,
            self.env.ctrl_since_empty,
            cfg.backpressure_policy
        );
        if let Some(ring) = &self.s.leftover {
            assert!(ring.len() <= ring.capacity());
        }
    }

    /// The clock moves to the session's deadline and the deadline is handled, as the
    /// worker's timer does; the deadline must then move on or the phase change.
    pub fn timeout_at_deadline(&mut self) {
        for _ in 0..16 {
            if self.finished.is_some() {
                return;
            }
            let Some(at) = self.s.poll_timeout(&self.env.cfg) else {
                return;
            };
            self.env.now = self.env.now.max(at);
            let before = format!("{:?}", self.s.core.phase);
            self.timeout();
            if self.finished.is_some() {
                return;
            }
            match self.s.poll_timeout(&self.env.cfg) {
                Some(next) if next <= self.env.now => {
                    assert_ne!(before, format!("{:?}", self.s.core.phase), "deadline {next} never passes");
                }
                _ => return,
            }
        }
        panic!("deadline still due after 16 timeouts: {:?}", self.s.core.phase);
    }

    /// The clock moves on by `ticks` and the timer fires (early or late: the session
    /// re-checks).
    pub fn tick(&mut self, ticks: Tick) {
        self.env.now = self.env.now.saturating_add(ticks);
        self.timeout();
    }

    fn timeout(&mut self) {
        if self.finished.is_some() {
            return;
        }
        let env = &mut self.env;
        let before = self.s.buffered();
        let _ = self.s.handle_timeout(&env.cfg, &mut env.wpool, env.now);
        env.queued(before, self.s.buffered(), false);
        if self.s.buffered() > 0 {
            self.flush();
        } else {
            self.end();
        }
    }

    /// The application sends a message (from a timer or another connection), as a
    /// well-behaved application under `PauseReading`: not while over the cap (the
    /// session would queue it: that policy bounds what the peer's messages cause).
    pub fn app_send(&mut self, op: OpCode, payload: &[u8]) {
        if self.finished.is_some() {
            return;
        }
        let cfg = &self.env.cfg;
        if cfg.backpressure_policy == BackpressurePolicy::PauseReading && self.s.buffered() > cfg.max_backpressure {
            return;
        }
        let env = &mut self.env;
        if let Some((core, _)) = self.s.parts() {
            env.app_send(core, op, payload);
        }
        self.flush();
    }

    /// A broadcast arrives for this subscriber (a frame encoded once for all).
    pub fn deliver(&mut self, op: OpCode, payload: &[u8]) {
        if self.finished.is_some() {
            return;
        }
        let (h, hl) = server_header(op, payload.len());
        let mut frame = h[..hl].to_vec();
        frame.extend_from_slice(payload);
        let env = &mut self.env;
        if let Some((core, _)) = self.s.parts() {
            let before = core.buffered();
            let sent = core.deliver(&frame, &env.cfg, &mut env.wpool, env.now);
            env.queued(before, core.buffered(), sent.status() != SendStatus::Dropped);
        }
        self.flush();
    }

    /// The application closes with `code` and `reason`.
    pub fn app_close(&mut self, code: CloseCode, reason: &str) {
        if self.finished.is_some() {
            return;
        }
        let env = &mut self.env;
        if let Some((core, _)) = self.s.parts() {
            let before = core.buffered();
            core.close(CloseCause::Application, code, reason, &mut env.wpool, env.now);
            env.queued(before, core.buffered(), false);
        }
        self.flush();
    }

    /// A read or write failed.
    pub fn reset(&mut self) {
        if self.finished.is_some() {
            return;
        }
        self.s.handle_reset();
        self.end();
    }
}

/// `Worker::decode`: hands each message in `ring` to the application.
fn decode(ring: &mut Ring, s: &mut Session<u8>, env: &mut Env) {
    let data = ring.make_contiguous();
    let mut pos = 0;
    let (reader, core, user) = s.split();
    loop {
        let before = core.buffered();
        let left = data.len() - pos;
        let (n, received) = reader.handle_frames(core, &mut data[pos..], &env.cfg, &mut env.wpool, env.now);
        assert!(n <= left, "consumed past the input");
        pos += n;
        match received {
            Received::Message(msg) => {
                assert_eq!(*user, 7, "the state given at accept");
                let (text, payload) = match msg {
                    Message::Text(t) => (true, t.as_bytes()),
                    Message::Binary(b) => (false, b),
                };
                env.got.push((text, payload.to_vec()));
                if env.echo {
                    let op = if text { OpCode::Text } else { OpCode::Binary };
                    let payload = payload.to_vec();
                    env.app_send(core, op, &payload);
                }
            }
            Received::Control(op) => {
                if op == OpCode::Close {
                    env.peer_close_seen = true;
                }
                env.queued(before, core.buffered(), false);
            }
            Received::Closing(cause) => {
                if matches!(cause, CloseCause::Protocol(_)) && core.buffered() == before && !core.is_open() {
                    env.failed_while_closing = true;
                }
                env.closing.push(cause);
                env.queued(before, core.buffered(), false);
            }
            Received::Deflated { .. } => {
                panic!("a compressed message without permessage-deflate negotiated")
            }
            Received::Nothing if n == 0 => break,
            Received::Nothing => assert_eq!(core.buffered(), before, "bytes queued for nothing"),
        }
    }
    ring.consume(pos);
}

/// Reads input bytes front to back.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// A masked client frame: `flags` is FIN (bit 7), RSV (bits 4-6) and the opcode (low
/// nibble) as on the wire; the mask key is fixed unless `unmasked`.
pub fn client_frame(flags: u8, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mut out = vec![flags];
    let mask_bit = if unmasked { 0 } else { 0x80 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x37, 0xFA, 0x21, 0x3D];
    if unmasked {
        out.extend_from_slice(payload);
    } else {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
    }
    out
}

const BACKPRESSURE: [usize; 8] = [0, 1, 64, 200, 512, 1000, 4096, 1 << 20];
const MAX_MESSAGE: [usize; 8] = [0, 1, 16, 125, 300, 1000, 4096, 1 << 20];
const RING_SIZE: [usize; 4] = [512, 512, 1024, 4096];

/// The `session` target. Input: two configuration bytes, then operations.
///
/// Byte 0: bits 0-1 the backpressure policy (Close, Drop, PauseReading x2), bit 2 the
/// connection starts with a handshake (the request is client bytes up to a blank line),
/// bit 3 a rate limit (1 to 4 messages a second, from bits 6-7), bits 4-5 the ring
/// size (512, 512, 1024, 4096). Byte 1: bits 0-2 `max_backpressure` (0 B to 1 MiB),
/// bits 3-5 `max_message` (0 B to 1 MiB), bit 6 the application echoes every message,
/// bit 7 long timeouts (tens of ticks instead of a few). With a handshake, byte 2
/// answers it: bit 0 refuse, bits 1-2 sends from `on_open`, bit 3 a token that expires
/// after bits 4-7 ticks.
///
/// Operations, by first byte modulo 14: client bytes (raw, or a frame the driver
/// masks, of up to 255 B or a filled payload of up to 4 KiB), a read of some bytes,
/// the transport taking some bytes (0 makes it block), the clock moving to the
/// deadline or by some ticks, application sends, pings and closes, broadcast
/// deliveries, the client's EOF, a reset.
///
/// Checked: no panic; every byte written is valid server framing after the HTTP
/// response (unmasked, no RSV, minimal lengths, FIN on control frames, control
/// payloads of at most 125 B, close codes valid on the wire with UTF-8 reasons, whole
/// text messages UTF-8); nothing after a refusal or the close frame, so at most one
/// close frame; nothing to write after `ShutdownWrite`; buffered bytes at most
/// `max_backpressure` plus the largest data frame plus the control bytes (and sends
/// from `on_open`) queued since the outbox was last empty; a deadline always moves on once handled; `Finished` once
/// with `Some` exactly when upgraded, its code the one sent (for closes the server
/// starts) and nothing after it; every pooled ring given back by `release`.
pub fn session(data: &[u8]) {
    let mut input = Input(data);
    let (Some(c0), Some(c1)) = (input.byte(), input.byte()) else {
        return;
    };
    let long = c1 & 0x80 != 0;
    let scale = if long { 10 } else { 1 };
    let ring_size = RING_SIZE[(c0 as usize >> 4) & 3];
    let cfg = SessionConfig {
        decoder: DecoderConfig {
            max_message: MAX_MESSAGE[(c1 as usize >> 3) & 7],
            max_fragments: 8,
            inline_limit: ring_size,
            ..DecoderConfig::default()
        },
        handshake_timeout: 3 * scale,
        ping_interval: 4 * scale,
        idle_timeout: 9 * scale,
        close_timeout: 2 * scale,
        max_backpressure: BACKPRESSURE[c1 as usize & 7],
        backpressure_policy: match c0 & 3 {
            0 => BackpressurePolicy::Close,
            1 => BackpressurePolicy::Drop,
            _ => BackpressurePolicy::PauseReading,
        },
        max_msg_rate: (c0 & 8 != 0).then_some(1 + (c0 as u32 >> 6)),
        tick_us: 100_000,
        ..SessionConfig::default()
    };
    let on_open = if c0 & 4 != 0 {
        let a = input.byte().unwrap_or(0);
        let sends = (0..(a >> 1) & 3)
            .map(|i| if i & 1 == 0 { (OpCode::Text, b"welcome".to_vec()) } else { (OpCode::Binary, vec![i; 300]) })
            .collect();
        Some(OnOpen { refuse: a & 1 != 0, sends, expires_in: (a & 8 != 0).then_some(a as Tick >> 4) })
    } else {
        None
    };
    let mut d = Driver::new(cfg, ring_size, c1 & 0x40 != 0, on_open);
    while let Some(op) = input.byte() {
        match op % 14 {
            0 => {
                let n = input.byte().unwrap_or(0) as usize;
                let bytes = input.bytes(n).to_vec();
                d.client_sends(&bytes);
            }
            1 => {
                let flags = input.byte().unwrap_or(0x82);
                let n = input.byte().unwrap_or(0) as usize;
                let payload = input.bytes(n).to_vec();
                d.client_sends(&client_frame(flags, &payload, op & 0x80 != 0));
            }
            2 => {
                // A large frame: a filled payload of up to 4 KiB.
                let flags = input.byte().unwrap_or(0x82);
                let n = input.byte().unwrap_or(0) as usize * 16;
                let fill = input.byte().unwrap_or(b'a');
                d.client_sends(&client_frame(flags, &vec![fill; n], false));
            }
            3 => {
                let n = input.byte().unwrap_or(0) as usize;
                d.read(if n == 0 { usize::MAX } else { n * 4 }, n == 0);
            }
            4 => {
                let n = input.byte().unwrap_or(0) as usize;
                d.writable(if n == 255 { usize::MAX } else { n * n });
            }
            5 => d.set_room(0),
            6 => d.timeout_at_deadline(),
            7 => d.tick(input.byte().unwrap_or(1) as Tick % 32),
            8 | 9 => {
                let n = input.byte().unwrap_or(0) as usize;
                let text = op & 0x10 != 0;
                let payload = input.bytes(n).to_vec();
                let (op_code, payload) = if text {
                    (OpCode::Text, String::from_utf8_lossy(&payload).into_owned().into_bytes())
                } else {
                    (OpCode::Binary, payload)
                };
                if op % 14 == 8 {
                    d.app_send(op_code, &payload);
                } else {
                    d.deliver(op_code, &payload);
                }
            }
            10 => {
                let n = input.byte().unwrap_or(0) as usize;
                let payload = input.bytes(n.min(MAX_CONTROL_PAYLOAD)).to_vec();
                d.app_send(OpCode::Ping, &payload);
            }
            11 => {
                let code = APP_CODES[input.byte().unwrap_or(0) as usize & 7];
                let n = input.byte().unwrap_or(0) as usize;
                let reason = String::from_utf8_lossy(input.bytes(n)).into_owned();
                d.app_close(CloseCode(code), &reason);
            }
            12 => d.client_eof(),
            _ => d.reset(),
        }
        if d.finished.is_some() {
            return;
        }
    }
    // Whatever was left: the client reads everything, then the clock runs out.
    d.set_room(usize::MAX);
    d.read(usize::MAX, true);
    d.flush();
    for _ in 0..64 {
        if d.finished.is_some() {
            return;
        }
        d.timeout_at_deadline();
    }
    panic!("the session never ended: {:?}", d.s.core.phase);
}

/// What the session made of a client's bytes, for comparison with another server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Data messages delivered, in order: (text, payload).
    pub messages: Vec<(bool, Vec<u8>)>,
    /// The code of the close frame the server sent (1005 for an empty one), if any.
    pub close_sent: Option<u16>,
    /// The protocol error that failed the connection, if one did.
    pub error: Option<ProtocolError>,
    /// The peer's close frame was received.
    pub peer_closed: bool,
    /// Input ran out inside a frame or message.
    pub waiting: bool,
}

/// Feeds `stream` (masked client frames, or anything) to an accepted session with
/// `max_message` and a ring of `ring_size` bytes, in reads of the sizes `cuts` gives
/// (cycled; 0 means "all that fits"), everything written at once. Returns what it
/// delivered and sent.
pub fn run_client_stream(stream: &[u8], cuts: &[u8], max_message: usize, ring_size: usize) -> Outcome {
    let cfg = SessionConfig {
        decoder: DecoderConfig { max_message, inline_limit: ring_size, ..DecoderConfig::default() },
        ..SessionConfig::default()
    };
    let mut d = Driver::new(cfg, ring_size, false, None);
    d.client_sends(stream);
    let mut i = 0;
    while d.client_pos < d.client.len() && d.finished.is_none() && d.s.wants_read() {
        let cut = cuts.get(i % cuts.len().max(1)).copied().unwrap_or(0) as usize;
        i += 1;
        d.read(if cut == 0 { usize::MAX } else { cut }, false);
        if d.env.peer_close_seen || !d.env.closing.is_empty() {
            break;
        }
    }
    let error = d.env.closing.iter().find_map(|c| match c {
        CloseCause::Protocol(e) => Some(*e),
        _ => None,
    });
    Outcome {
        messages: d.env.got.clone(),
        close_sent: d.wire.close,
        error,
        peer_closed: d.env.peer_close_seen,
        waiting: d.finished.is_none() && d.waiting_for_input(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_session_writes_its_echo_and_closes_once() {
        let mut stream = client_frame(0x81, b"hello", false);
        stream.extend(client_frame(0x88, &1000u16.to_be_bytes(), false));
        let out = run_client_stream(&stream, &[3], 1 << 20, 512);
        assert_eq!(out.messages, [(true, b"hello".to_vec())]);
        assert_eq!(out.close_sent, Some(1000));
        assert!(out.peer_closed && out.error.is_none() && !out.waiting);
    }

    #[test]
    fn the_wire_check_refuses_what_a_server_must_not_write() {
        for bad in [
            &[0x81u8, 0x81, 0, 0, 0, 0, b'a'][..], // masked
            &[0x09, 0x00],                         // fragmented ping
            &[0x88, 0x01, 0x03],                   // one-byte close payload
            &[0x88, 0x02, 0x03, 0xED],             // close code 1005
            &[0x81, 0x01, 0xFF],                   // text not UTF-8
            &[0x82, 126, 0, 5, 1, 2, 3, 4, 5],     // 16-bit length for 5 bytes
        ] {
            let r = std::panic::catch_unwind(|| Wire::default().push(bad));
            assert!(r.is_err(), "accepted {bad:?}");
        }
        let r = std::panic::catch_unwind(|| {
            let mut w = Wire::default();
            w.push(&[0x88, 0x00]);
            w.push(&[0x8A, 0x00]);
        });
        assert!(r.is_err(), "accepted a frame after the close frame");
    }

    #[test]
    fn a_broadcast_over_the_cap_into_an_empty_queue_pauses_reading() {
        // Found by the session target: the broadcast went in without pausing reading,
        // and the echo of the next message queued a second frame over the cap.
        let cfg = SessionConfig {
            max_backpressure: 64,
            backpressure_policy: BackpressurePolicy::PauseReading,
            ..SessionConfig::default()
        };
        let mut d = Driver::new(cfg, 512, true, None);
        d.set_room(0);
        d.deliver(OpCode::Text, &[b'a'; 100]);
        assert!(!d.s.wants_read(), "over the cap: reading paused");
        d.client_sends(&client_frame(0x82, &[b'y'; 100], false));
        d.read(usize::MAX, false);
        assert!(d.received().is_empty(), "nothing read while paused");
        d.writable(usize::MAX);
        assert_eq!(d.received().len(), 1, "drained: reading resumed");
        assert_eq!(d.wire.messages, 2, "the broadcast, then the echo");
    }

    #[test]
    fn a_refused_handshake_writes_only_the_refusal() {
        let on_open = OnOpen { refuse: true, sends: vec![(OpCode::Text, b"lost".to_vec())], expires_in: None };
        let mut d = Driver::new(SessionConfig::default(), 512, false, Some(on_open));
        d.client_sends(b"GET / HTTP/1.1\r\n\r\n");
        d.read(usize::MAX, false);
        assert_eq!(d.wire.bytes, REFUSAL_RESPONSE);
        d.client_eof();
        assert_eq!(d.finished, Some(None));
    }
}
