//! The session alone, in simulated time: a test clock (`now`), a test pool, a fake
//! client that masks its frames. No socket, no sleep.

use super::*;
use crate::proto::encode_frame;
use crate::proto::frame::{FrameHeader, Parsed, Role};

/// A session under test with the clock, pool and wire around it.
struct Rig {
    s: Session<u32>,
    cfg: SessionConfig,
    pool: BufPool,
    now: Tick,
    /// What the session wrote so far.
    wire: Vec<u8>,
    /// Messages the application saw.
    got: Vec<(bool, Vec<u8>)>,
    /// Echo every message back (the application's behaviour).
    echo: bool,
    /// Transport accepts at most this many bytes per flush.
    budget: usize,
}

impl Rig {
    fn with(cfg: SessionConfig) -> Rig {
        let mut r = Rig {
            s: Session::new(0),
            cfg,
            pool: BufPool::new(4096, 4),
            now: 0,
            wire: Vec::new(),
            got: Vec::new(),
            echo: false,
            budget: usize::MAX,
        };
        r.s.accept(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", 7, None, &r.cfg, &mut r.pool, 0);
        r.flush();
        r.wire.clear();
        r
    }

    fn new() -> Rig {
        Rig::with(SessionConfig::default())
    }

    /// Feeds client bytes; returns how many the session took.
    fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut data = bytes.to_vec();
        self.s.handle_received(self.now);
        let mut pos = 0;
        let (reader, core, user) = self.s.split();
        loop {
            let (n, r) = reader.handle_frames(core, &mut data[pos..], &self.cfg, &mut self.pool, self.now);
            pos += n;
            match r {
                Received::Message(msg) => {
                    assert_eq!(*user, 7, "the state made at accept");
                    self.got.push((matches!(msg, Message::Text(_)), msg.as_bytes().to_vec()));
                    if self.echo {
                        let op = msg.opcode();
                        let payload = msg.as_bytes().to_vec();
                        let _ = core.send(op, &payload, &self.cfg, &mut self.pool, self.now);
                    }
                }
                Received::Nothing if n == 0 => break,
                _ => {}
            }
        }
        pos
    }

    /// Writes what the session hands out, up to `budget` bytes.
    fn flush(&mut self) -> Flushed {
        let mut left = self.budget;
        loop {
            let mut iov = [IoSlice::new(&[]); MAX_TRANSMIT_SLICES];
            let k = self.s.poll_transmit(&mut iov);
            if k == 0 {
                return Flushed::Empty;
            }
            let mut n = 0;
            for sl in &iov[..k] {
                let m = sl.len().min(left - n);
                self.wire.extend_from_slice(&sl[..m]);
                n += m;
            }
            left -= n;
            if n == 0 {
                self.s.handle_write_blocked(self.now);
                return Flushed::Pending;
            }
            match self.s.consume(n, &mut self.pool, self.now) {
                Flushed::Pending if left == 0 => {
                    self.s.handle_write_blocked(self.now);
                    return Flushed::Pending;
                }
                Flushed::Pending => {}
                done => return done,
            }
        }
    }

    /// Moves the clock to `to`, running every deadline that falls on the way.
    fn advance_to(&mut self, to: Tick) -> Vec<Timeout> {
        let mut fired = Vec::new();
        while let Some(at) = self.s.poll_timeout(&self.cfg) {
            if at > to {
                break;
            }
            self.now = self.now.max(at);
            if let Some(t) = self.s.handle_timeout(&self.cfg, &mut self.pool, self.now) {
                fired.push(t);
            }
            self.flush();
            if matches!(self.s.core.phase, Phase::Ended(_) | Phase::Done) {
                break;
            }
            if self.s.poll_timeout(&self.cfg) == Some(at) {
                break;
            }
        }
        self.now = to;
        fired
    }

    /// Server frames on the wire so far: (opcode, payload).
    fn frames(&self) -> Vec<(OpCode, Vec<u8>)> {
        let mut out = Vec::new();
        let mut b = &self.wire[..];
        while !b.is_empty() {
            let Ok(Parsed::Complete(h, hl)) = FrameHeader::parse(b, Role::Client, 0) else {
                panic!("bad server framing: {b:?}");
            };
            assert!(h.fin && h.mask.is_none());
            let end = hl + h.payload_len as usize;
            out.push((h.opcode, b[hl..end].to_vec()));
            b = &b[end..];
        }
        out
    }

    fn closes(&self) -> Vec<u16> {
        self.frames()
            .iter()
            .filter(|(op, _)| *op == OpCode::Close)
            .map(|(_, p)| if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 })
            .collect()
    }
}

/// A masked client frame.
fn client(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; payload.len() + 14];
    let n = encode_frame(&mut out, true, op, payload, Some([1, 2, 3, 4])).unwrap();
    out.truncate(n);
    out
}

fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    client(OpCode::Close, &p)
}

fn finished(r: &mut Rig) -> Option<Closed> {
    loop {
        match r.s.poll_end() {
            Some(Ending::Finished(end)) => return end,
            Some(Ending::ShutdownWrite) => continue,
            None => panic!("the session has not ended: {:?}", r.s.core.phase),
        }
    }
}

#[test]
fn we_close_and_the_peer_answers() {
    let mut r = Rig::new();
    r.s.core().close(CloseCause::Application, CloseCode(4001), "bye", &mut r.pool, 0);
    r.flush();
    assert_eq!(r.closes(), [4001]);
    assert!(r.s.poll_end().is_none(), "waits for the peer's close");
    r.feed(&close_frame(4001, b""));
    r.flush();
    assert_eq!(finished(&mut r), Some(Closed { code: CloseCode(4001), cause: CloseCause::Application }));
    assert_eq!(r.closes(), [4001], "one close frame from us");
}

#[test]
fn peer_closes_and_we_echo_its_code() {
    let mut r = Rig::new();
    r.feed(&close_frame(4000, b"going"));
    r.flush();
    assert_eq!(r.closes(), [4000]);
    assert_eq!(finished(&mut r), Some(Closed { code: CloseCode(4000), cause: CloseCause::PeerClosed }));
}

#[test]
fn an_empty_close_is_answered_with_an_empty_close_and_reported_as_1005() {
    let mut r = Rig::new();
    r.feed(&client(OpCode::Close, b""));
    r.flush();
    assert_eq!(r.frames(), [(OpCode::Close, vec![])]);
    assert_eq!(finished(&mut r).unwrap().code, CloseCode::NO_STATUS);
}

#[test]
fn both_close_at_once_and_each_sends_one_close_frame() {
    let mut r = Rig::new();
    r.s.core().close(CloseCause::Application, CloseCode::NORMAL, "", &mut r.pool, 0);
    // The peer's close crosses ours on the wire, before ours was even written.
    r.feed(&close_frame(1001, b""));
    r.flush();
    assert_eq!(r.closes(), [1000], "ours only: the peer's close is not echoed a second time");
    assert_eq!(finished(&mut r), Some(Closed { code: CloseCode::NORMAL, cause: CloseCause::Application }));
}

#[test]
fn close_while_reading_is_paused_for_backpressure_still_reads_the_peers_close() {
    let cfg = SessionConfig { max_backpressure: 100, ..SessionConfig::default() };
    let mut r = Rig::with(cfg);
    r.budget = 0; // the peer reads nothing
    let big = vec![b'x'; 200];
    let sent = r.s.core().send(OpCode::Binary, &big, &r.cfg, &mut r.pool, 0);
    assert_eq!(sent.status(), SendStatus::QueuedOverCap);
    assert!(!r.s.wants_read(), "paused");
    assert_eq!(r.feed(&client(OpCode::Text, b"held")), 0, "input left alone while paused");
    r.s.core().close(CloseCause::ShuttingDown, CloseCode::GOING_AWAY, "bye", &mut r.pool, 0);
    assert!(r.s.wants_read(), "a closing connection reads again, for the peer's close");
    r.feed(&close_frame(1001, b""));
    r.budget = usize::MAX;
    r.flush();
    assert_eq!(r.frames().iter().filter(|(op, _)| *op == OpCode::Binary).count(), 1);
    assert_eq!(finished(&mut r).unwrap().cause, CloseCause::ShuttingDown);
}

#[test]
fn close_frames_with_bad_payloads_fail_with_the_rfc_codes() {
    let cases: [(Vec<u8>, u16); 4] = [
        (close_frame(1000, &[0xff, 0xfe]), 1007), // reason not UTF-8
        (close_frame(1005, b""), 1002),           // a code never sent on the wire
        (close_frame(999, b""), 1002),            // out of range
        (client(OpCode::Close, &[3]), 1002),      // one byte
    ];
    for (frame, code) in cases {
        let mut r = Rig::new();
        r.feed(&frame);
        r.flush();
        assert_eq!(r.closes(), [code], "{frame:?}");
        // We failed the connection: no wait for another close, shut down and linger.
        assert_eq!(r.s.poll_end(), Some(Ending::ShutdownWrite));
        r.s.handle_eof();
        assert_eq!(
            r.s.poll_end(),
            Some(Ending::Finished(Some(Closed {
                code: CloseCode(code),
                cause: CloseCause::Protocol(match code {
                    1007 => ProtocolError::CloseReasonNotUtf8,
                    _ => r_err(&frame),
                })
            })))
        );
    }
}

/// The protocol error the decoder reports for a bad close frame.
fn r_err(frame: &[u8]) -> ProtocolError {
    let mut d = Decoder::new();
    let mut buf = frame.to_vec();
    d.decode(&mut buf, &DecoderConfig::default()).unwrap_err()
}

use crate::proto::ProtocolError;

#[test]
fn nothing_is_sent_after_our_close_frame() {
    let mut r = Rig::new();
    r.echo = true;
    r.s.core().close(CloseCause::Application, CloseCode::NORMAL, "", &mut r.pool, 0);
    let sent = r.s.core().send(OpCode::Text, b"late", &r.cfg, &mut r.pool, 0);
    assert_eq!(sent.status(), SendStatus::Dropped);
    // Data from the peer after our close is read and ignored; pings get no pong.
    r.feed(&client(OpCode::Text, b"hello"));
    r.feed(&client(OpCode::Ping, b"p"));
    r.flush();
    assert_eq!(r.frames().len(), 1);
    assert!(r.got.is_empty());
}

#[test]
fn handshake_timeout_ends_an_unfinished_handshake() {
    let cfg = SessionConfig::default();
    let mut s: Session<()> = Session::new(5);
    let mut pool = BufPool::new(512, 1);
    assert_eq!(s.poll_timeout(&cfg), Some(5 + cfg.handshake_timeout));
    assert_eq!(s.handle_timeout(&cfg, &mut pool, 5 + cfg.handshake_timeout - 1), None, "never early");
    assert_eq!(s.handle_timeout(&cfg, &mut pool, 5 + cfg.handshake_timeout), Some(Timeout::Handshake));
    assert_eq!(s.poll_end(), Some(Ending::Finished(None)));
    assert_eq!(s.poll_end(), None, "Finished comes once");
}

#[test]
fn silence_brings_a_ping_each_interval_then_1001_at_idle_then_the_close_timeout() {
    let cfg = SessionConfig { ping_interval: 10, idle_timeout: 25, close_timeout: 5, ..SessionConfig::default() };
    let mut r = Rig::with(cfg);
    assert_eq!(r.advance_to(9), []);
    assert_eq!(r.advance_to(10), [Timeout::Pinged]);
    assert_eq!(r.frames(), [(OpCode::Ping, vec![])]);
    assert_eq!(r.advance_to(20), [Timeout::Pinged]);
    assert_eq!(r.advance_to(25), [Timeout::Idle]);
    assert_eq!(r.closes(), [1001]);
    assert_eq!(r.advance_to(29), []);
    assert_eq!(r.advance_to(30), [Timeout::Close]);
    assert_eq!(finished(&mut r), Some(Closed { code: CloseCode::GOING_AWAY, cause: CloseCause::CloseTimeout }));
}

#[test]
fn incoming_data_counts_as_life() {
    let cfg = SessionConfig { ping_interval: 10, idle_timeout: 25, ..SessionConfig::default() };
    let mut r = Rig::with(cfg);
    for t in (8..100).step_by(8) {
        r.advance_to(t);
        r.feed(&client(OpCode::Text, b"tick"));
    }
    assert!(r.frames().is_empty(), "no ping, no close while the peer talks");
    assert!(r.s.is_open());
}

#[test]
fn a_pong_reply_keeps_the_connection_open_past_idle_timeout() {
    let cfg = SessionConfig { ping_interval: 10, idle_timeout: 25, ..SessionConfig::default() };
    let mut r = Rig::with(cfg);
    for t in [10, 20, 30, 40, 50] {
        assert_eq!(r.advance_to(t), [Timeout::Pinged], "at {t}");
        r.feed(&client(OpCode::Pong, b""));
    }
    assert!(r.s.is_open());
}

#[test]
fn output_that_does_not_drain_is_dropped_as_a_write_stall() {
    let cfg = SessionConfig { idle_timeout: 25, ping_interval: 1000, ..SessionConfig::default() };
    let mut r = Rig::with(cfg);
    r.budget = 0;
    let _ = r.s.core().send(OpCode::Text, b"stuck", &r.cfg, &mut r.pool, 0);
    assert_eq!(r.flush(), Flushed::Pending);
    // The peer keeps talking, so idle never fires; the stall does.
    for t in (5..25).step_by(5) {
        r.advance_to(t);
        r.feed(&client(OpCode::Text, b"alive"));
    }
    assert_eq!(r.advance_to(25), [Timeout::WriteStall]);
    assert_eq!(finished(&mut r), Some(Closed { code: CloseCode::ABNORMAL, cause: CloseCause::WriteStall }));
}

#[test]
fn progress_on_the_write_side_restarts_the_stall_clock() {
    let cfg = SessionConfig { idle_timeout: 25, ping_interval: 1000, ..SessionConfig::default() };
    let mut r = Rig::with(cfg);
    let _ = r.s.core().send(OpCode::Binary, &[0u8; 1000], &r.cfg, &mut r.pool, 0);
    r.budget = 100;
    for t in (10..100).step_by(10) {
        r.advance_to(t);
        r.feed(&client(OpCode::Text, b"alive"));
        r.flush();
    }
    assert!(r.s.is_open(), "100 bytes every 10 ticks is slow, not stalled");
}

#[test]
fn the_rate_limit_closes_with_1008_and_refills_over_time() {
    // 2 messages per second at 100 ms ticks.
    let cfg = SessionConfig { max_msg_rate: Some(2), ..SessionConfig::default() };
    let mut r = Rig::with(cfg);
    r.feed(&client(OpCode::Text, b"1"));
    r.feed(&client(OpCode::Text, b"2"));
    r.now = 10; // one second later: the bucket is full again
    r.feed(&client(OpCode::Text, b"3"));
    r.feed(&client(OpCode::Text, b"4"));
    assert!(r.s.is_open());
    r.feed(&client(OpCode::Text, b"5"));
    r.flush();
    assert_eq!(r.got.len(), 4, "the message over the limit is not delivered");
    assert_eq!(r.closes(), [1008]);
    r.feed(&close_frame(1008, b""));
    r.flush();
    assert_eq!(finished(&mut r).unwrap().cause, CloseCause::RateLimit);
}

#[test]
fn an_expired_token_closes_with_1008() {
    let cfg = SessionConfig::default();
    let mut s: Session<()> = Session::new(0);
    let mut pool = BufPool::new(512, 1);
    s.accept(b"HTTP/1.1 101\r\n\r\n", (), Some(40), &cfg, &mut pool, 3);
    assert_eq!(s.poll_timeout(&cfg), Some(40));
    assert_eq!(s.handle_timeout(&cfg, &mut pool, 39), None);
    assert!(s.is_open());
    s.handle_timeout(&cfg, &mut pool, 40);
    assert!(!s.is_open());
    let mut iov = [IoSlice::new(&[]); MAX_TRANSMIT_SLICES];
    let k = s.poll_transmit(&mut iov);
    let out: Vec<u8> = iov[..k].iter().flat_map(|s| s.to_vec()).collect();
    let tail = &out[out.len() - (4 + "token expired".len())..];
    assert_eq!(&tail[..4], &[0x88, 15, 0x03, 0xf0], "close 1008");
}

#[test]
fn a_refusal_is_written_then_lingers_until_eof_and_owes_no_on_close() {
    let cfg = SessionConfig::default();
    let mut s: Session<()> = Session::new(0);
    let mut pool = BufPool::new(512, 1);
    s.refuse(b"HTTP/1.1 403 Forbidden\r\n\r\n", &mut pool, 2);
    assert!(s.poll_end().is_none(), "the response is not written yet");
    let n = s.buffered();
    assert_eq!(s.consume(n, &mut pool, 2), Flushed::Written);
    assert_eq!(s.poll_end(), Some(Ending::ShutdownWrite));
    assert_eq!(s.poll_timeout(&cfg), Some(2 + cfg.close_timeout));
    s.handle_eof();
    assert_eq!(s.poll_end(), Some(Ending::Finished(None)));
}

#[test]
fn backpressure_pauses_reading_and_drained_resumes_it() {
    let cfg = SessionConfig { max_backpressure: 64, ..SessionConfig::default() };
    let mut r = Rig::with(cfg);
    r.echo = true;
    r.budget = 0;
    r.feed(&client(OpCode::Binary, &[1u8; 100]));
    assert!(!r.s.wants_read());
    assert_eq!(r.flush(), Flushed::Pending);
    r.budget = usize::MAX;
    assert_eq!(r.flush(), Flushed::Drained);
    assert!(r.s.wants_read());
    assert_eq!(r.flush(), Flushed::Empty);
}

#[test]
fn drop_policy_hands_the_message_back_and_close_policy_closes_with_1008() {
    for (policy, closes) in [(BackpressurePolicy::Drop, false), (BackpressurePolicy::Close, true)] {
        let cfg = SessionConfig { max_backpressure: 64, backpressure_policy: policy, ..SessionConfig::default() };
        let mut r = Rig::with(cfg);
        let a = r.s.core().send(OpCode::Binary, &[0u8; 50], &r.cfg, &mut r.pool, 0);
        let b = r.s.core().send(OpCode::Binary, &[0u8; 50], &r.cfg, &mut r.pool, 0);
        assert_eq!((a.status(), b.status()), (SendStatus::Queued, SendStatus::Dropped), "{policy:?}");
        assert!(b.capped() && b.went_over());
        r.flush();
        assert_eq!(r.closes(), if closes { vec![1008] } else { vec![] }, "{policy:?}");
    }
}

#[test]
fn going_over_the_cap_after_the_transport_blocked_is_a_new_episode() {
    // The socket blocks first (bytes queued, under the cap), then the queue grows past the
    // cap: that is the connection going over, counted once, for every policy. (Found by the
    // echo test of a client that never reads: a blocked write used to take the episode's
    // "first", so the pause went uncounted.)
    for policy in [BackpressurePolicy::Drop, BackpressurePolicy::Close, BackpressurePolicy::PauseReading] {
        let cfg = SessionConfig { max_backpressure: 64, backpressure_policy: policy, ..SessionConfig::default() };
        let mut r = Rig::with(cfg);
        let a = r.s.core().send(OpCode::Binary, &[0u8; 40], &r.cfg, &mut r.pool, 0);
        assert_eq!(a, Sent::Queued);
        r.s.handle_write_blocked(1);
        let b = r.s.core().send(OpCode::Binary, &[0u8; 40], &r.cfg, &mut r.pool, 2);
        assert!(b.went_over(), "{policy:?}: {b:?}");
        let c = r.s.core().send(OpCode::Binary, &[0u8; 40], &r.cfg, &mut r.pool, 3);
        assert!(!c.went_over(), "{policy:?}: counted twice: {c:?}");
        if policy == BackpressurePolicy::PauseReading {
            assert!(!r.s.wants_read());
        }
    }
}

#[test]
fn a_reset_reports_1006_for_an_open_connection_and_nothing_for_a_handshaking_one() {
    let mut r = Rig::new();
    r.s.handle_reset();
    assert_eq!(finished(&mut r), Some(Closed { code: CloseCode::ABNORMAL, cause: CloseCause::Reset }));
    let mut s: Session<()> = Session::new(0);
    s.handle_reset();
    assert_eq!(s.poll_end(), Some(Ending::Finished(None)));
}

#[test]
fn eof_without_a_close_frame_is_1006_peer_gone() {
    let mut r = Rig::new();
    r.s.handle_eof();
    assert_eq!(finished(&mut r), Some(Closed { code: CloseCode::ABNORMAL, cause: CloseCause::PeerGone }));
}

#[test]
fn messages_split_at_every_byte_arrive_whole_and_in_order() {
    let mut input = Vec::new();
    for i in 0..20u8 {
        input.extend(client(if i % 2 == 0 { OpCode::Text } else { OpCode::Binary }, &vec![b'a' + i; i as usize * 7]));
    }
    for cut in 1..input.len() {
        let mut r = Rig::new();
        r.echo = true;
        let mut pending = input[..cut].to_vec();
        let n = r.feed(&pending);
        pending.drain(..n);
        pending.extend_from_slice(&input[cut..]);
        let n = r.feed(&pending);
        assert_eq!(n, pending.len());
        assert_eq!(r.got.len(), 20, "cut at {cut}");
        r.flush();
        assert_eq!(r.frames().len(), 20);
    }
}

#[test]
fn pings_are_answered_with_their_payload() {
    let mut r = Rig::new();
    r.feed(&client(OpCode::Ping, b"abc"));
    r.flush();
    assert_eq!(r.frames(), [(OpCode::Pong, b"abc".to_vec())]);
}

#[test]
fn zero_sized_state_costs_no_bytes() {
    #[derive(Default)]
    struct Counter(#[allow(dead_code)] u64);
    assert_eq!(std::mem::size_of::<Session<Counter>>(), std::mem::size_of::<Session<()>>() + 8);
}

#[test]
fn a_protocol_error_after_our_close_reports_the_code_we_sent() {
    let mut r = Rig::new();
    r.s.core().close(CloseCause::SlowConsumer, CloseCode::POLICY_VIOLATION, "slow", &mut r.pool, 0);
    // An unmasked frame from the client: a protocol error, but our close is on the wire.
    r.feed(&[0x81, 0x02, b'h', b'i']);
    r.flush();
    assert_eq!(r.closes(), [1008], "no second close frame");
    assert_eq!(r.s.poll_end(), Some(Ending::ShutdownWrite));
    r.s.handle_eof();
    let end = finished(&mut r).unwrap();
    assert_eq!(end.code, CloseCode::POLICY_VIOLATION);
    assert!(matches!(end.cause, CloseCause::Protocol(_)));
}

#[test]
fn a_peer_that_pings_without_reading_cannot_grow_the_outbox() {
    for policy in [BackpressurePolicy::Drop, BackpressurePolicy::Close, BackpressurePolicy::PauseReading] {
        let cfg = SessionConfig { max_backpressure: 256, backpressure_policy: policy, ..SessionConfig::default() };
        let mut r = Rig::with(cfg);
        // 1000 pings of 125 bytes, never reading our side (no flush in between).
        let ping = client(OpCode::Ping, &[7u8; 125]);
        for _ in 0..1000 {
            if !r.s.is_open() {
                break;
            }
            r.feed(&ping);
        }
        let bound = 256 + 2 * (2 + 125);
        assert!(r.s.buffered() <= bound, "{policy:?}: {} bytes queued", r.s.buffered());
        r.flush();
        let closes = r.closes();
        if policy == BackpressurePolicy::Close {
            assert_eq!(closes, [1008], "a slow consumer under Close");
        } else {
            assert!(closes.is_empty(), "{policy:?}: {closes:?}");
            assert!(!r.frames().is_empty(), "{policy:?}: the first pings were answered");
        }
    }
}
