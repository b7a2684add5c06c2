//! The echo server against an independent client: tungstenite (sync, over a std
//! TcpStream) for what a normal client does, and hand-written frames (`raw_peer`) for
//! what it will not do (split writes, unmasked frames, broken handshakes).

mod common;
mod raw_peer;

use common::{wait_until, TestServer};
use raw_peer::{OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};
use wsloop::server::metrics::WorkerMetrics;
use wsloop::server::Config;

/// The longest any single blocking read or write in these tests may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

type Ws = WebSocket<TcpStream>;

fn connect(server: &TestServer) -> Ws {
    let stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let (ws, resp) = tungstenite::client(server.url("/echo"), stream).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// Reads the next data message, skipping pongs; panics on anything else.
fn next_data(ws: &mut Ws) -> Message {
    for _ in 0..100 {
        match ws.read().expect("read") {
            Message::Pong(_) => continue,
            m @ (Message::Text(_) | Message::Binary(_)) => return m,
            other => panic!("expected a data message, got {other:?}"),
        }
    }
    panic!("no data message among 100 frames");
}

/// Reads until the server's close frame and returns its code (1005 when it has none).
fn server_close_code(ws: &mut Ws) -> u16 {
    for _ in 0..100 {
        match ws.read() {
            Ok(Message::Close(Some(cf))) => return cf.code.into(),
            Ok(Message::Close(None)) => return 1005,
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
    panic!("no close frame among 100 frames");
}

fn total(server: &TestServer, f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
    server.handle().metrics().iter().map(|m| f(m)).sum()
}

#[test]
fn text_and_binary_messages_echo_with_their_opcode() {
    let server = TestServer::echo(Config::default());
    let mut ws = connect(&server);
    ws.send(Message::Text("héllo, wörld ✓".into())).unwrap();
    assert_eq!(next_data(&mut ws), Message::Text("héllo, wörld ✓".into()));
    let bin: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    ws.send(Message::Binary(bin.clone())).unwrap();
    assert_eq!(next_data(&mut ws), Message::Binary(bin));
    // Empty messages keep their type too.
    ws.send(Message::Text(String::new())).unwrap();
    assert_eq!(next_data(&mut ws), Message::Text(String::new()));
    ws.send(Message::Binary(Vec::new())).unwrap();
    assert_eq!(next_data(&mut ws), Message::Binary(Vec::new()));
    // A text that looks like binary data, and binary that is valid UTF-8, are not swapped.
    ws.send(Message::Binary(b"plain ascii".to_vec())).unwrap();
    assert_eq!(next_data(&mut ws), Message::Binary(b"plain ascii".to_vec()));
}

#[test]
fn fragmented_message_is_echoed_whole_with_a_ping_between_fragments() {
    let server = TestServer::echo(Config::default());
    let mut ws = connect(&server);
    let frag = |data: &[u8], op: OpCode, fin: bool| Message::Frame(Frame::message(data.to_vec(), op, fin));
    // "añb" with the two bytes of 'ñ' split across fragments: validation must be
    // streaming, not per frame.
    ws.write(frag(b"frag a\xc3", OpCode::Data(Data::Text), false)).unwrap();
    ws.write(Message::Ping(b"between".to_vec())).unwrap();
    ws.write(frag(b"\xb1 ", OpCode::Data(Data::Continue), false)).unwrap();
    ws.write(frag(b"b", OpCode::Data(Data::Continue), true)).unwrap();
    ws.flush().unwrap();
    assert_eq!(ws.read().unwrap(), Message::Pong(b"between".to_vec()));
    assert_eq!(ws.read().unwrap(), Message::Text("frag añ b".into()));

    let parts: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1000 + i as usize]).collect();
    for (i, p) in parts.iter().enumerate() {
        let op = if i == 0 { Data::Binary } else { Data::Continue };
        ws.write(frag(p, OpCode::Data(op), i == parts.len() - 1)).unwrap();
    }
    ws.flush().unwrap();
    assert_eq!(ws.read().unwrap(), Message::Binary(parts.concat()));
}

#[test]
fn ping_gets_a_pong_with_the_same_payload() {
    let server = TestServer::echo(Config::default());
    let mut ws = connect(&server);
    for payload in [Vec::new(), b"ping-1".to_vec(), vec![0xAB; 125]] {
        ws.send(Message::Ping(payload.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Pong(payload));
    }
}

#[test]
fn close_handshake_answers_1000_and_the_server_closes_tcp() {
    let server = TestServer::echo(Config::default());
    let mut ws = connect(&server);
    ws.send(Message::Text("before close".into())).unwrap();
    assert_eq!(next_data(&mut ws), Message::Text("before close".into()));
    assert!(wait_until(Duration::from_secs(5), || server.handle().open_connections() == 1));
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).unwrap();
    assert_eq!(server_close_code(&mut ws), 1000);
    // Nothing follows the close frame: the server closes its side of the TCP connection.
    assert!(raw_peer::wait_eof(ws.get_mut()), "server kept the TCP connection open");
    assert!(wait_until(Duration::from_secs(5), || server.handle().open_connections() == 0));
    assert!(wait_until(Duration::from_secs(5), || total(&server, |m| m.closes[0].get()) == 1));
}

#[test]
fn thousand_pipelined_messages_come_back_in_order() {
    let server = TestServer::echo(Config::default());
    let mut ws = connect(&server);
    let mut burst = Vec::new();
    for i in 0..1000 {
        let text = format!("message {i:04}");
        let op = if i % 2 == 0 { OP_TEXT } else { OP_BINARY };
        burst.extend_from_slice(&raw_peer::frame(true, op, text.as_bytes()));
    }
    // One write for all of them.
    ws.get_mut().write_all(&burst).unwrap();
    for i in 0..1000 {
        let text = format!("message {i:04}");
        let want = if i % 2 == 0 { Message::Text(text) } else { Message::Binary(text.into_bytes()) };
        assert_eq!(next_data(&mut ws), want, "message {i}");
    }
}

#[test]
fn four_mib_message_is_echoed_intact() {
    let server = TestServer::echo(Config::default());
    let mut ws = connect(&server);
    let mut data = vec![0u8; 4 << 20];
    let mut x: u32 = 0x1234_5678;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    ws.send(Message::Binary(data.clone())).unwrap();
    match next_data(&mut ws) {
        Message::Binary(got) => {
            assert_eq!(got.len(), data.len());
            assert!(got == data, "payload differs");
        }
        other => panic!("expected binary, got {other:?}"),
    }
}

#[test]
fn handshake_and_frame_delivered_byte_by_byte_are_understood() {
    let server = TestServer::echo(Config::default());
    let mut s = raw_peer::tcp(server.addr, IO_TIMEOUT);
    let dribble = |s: &mut TcpStream, bytes: &[u8]| {
        for b in bytes {
            s.write_all(std::slice::from_ref(b)).unwrap();
            s.flush().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    dribble(&mut s, raw_peer::upgrade_request(server.addr).as_bytes());
    let head = raw_peer::read_head(&mut s).unwrap();
    raw_peer::assert_switching(&head);

    // A 16-bit length frame, so the extended length and the mask are split too.
    let payload: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
    dribble(&mut s, &raw_peer::frame(true, OP_TEXT, &payload));
    let mut buf = [0u8; 512];
    let (fin, op, n) = raw_peer::read_frame(&mut s, &mut buf).unwrap();
    assert!(fin);
    assert_eq!(op, OP_TEXT);
    assert_eq!(&buf[..n], &payload[..]);
}

#[test]
fn client_that_never_reads_is_paused_while_others_are_served() {
    // One worker, so the well-behaved client shares the loop with the slow one.
    let cfg = Config { workers: 1, ..Config::default() };
    let max_backpressure = cfg.max_backpressure as u64;
    let server = TestServer::echo(cfg);
    let mut slow = raw_peer::connect(server.addr, IO_TIMEOUT);
    slow.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let frame = raw_peer::frame(true, OP_BINARY, &vec![0x5a; 64 << 10]);

    // Whatever the server buffers, plus both sockets' kernel buffers (at most a few
    // MiB each here), stays far below this; an unbounded server would pass it in ~3 s.
    const LIMIT: u64 = 64 << 20;
    // Write until the server reports the pause, then on for a second to see the writes
    // block. How much is written before the pause depends on the kernel's buffers and on
    // how fast a loaded machine lets the server run, so the phase ends on the server's
    // event (bounded by 30 s and LIMIT), not after a fixed time.
    let h = server.handle();
    let started = Instant::now();
    let mut paused_at: Option<Instant> = None;
    let mut written: u64 = 0;
    let mut off = 0;
    let mut stalled_after: Option<u64> = None;
    let mut writes = 0u32;
    while started.elapsed() < Duration::from_secs(30) && written < LIMIT && writes < 10_000_000 {
        if paused_at.is_none() && total(&server, |m| m.backpressure_events.get()) >= 1 {
            paused_at = Some(Instant::now());
        }
        if paused_at.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
            break;
        }
        writes += 1;
        match slow.write(&frame[off..]) {
            Ok(0) => panic!("socket closed by the server"),
            Ok(n) => {
                written += n as u64;
                off = (off + n) % frame.len();
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                // A stall before the pause only means a loaded machine did not run the
                // server for 200 ms; the one that counts is the one after it.
                if paused_at.is_some() {
                    stalled_after.get_or_insert(written);
                }
            }
            Err(e) => panic!("write failed after {written} bytes: {e}"),
        }
    }
    assert!(written < LIMIT, "server kept reading from a client that never reads: {written} bytes accepted");
    // Server side: the connection went over its cap and reading from it stopped.
    assert!(
        paused_at.is_some(),
        "no backpressure event after {written} bytes in {:?} (server read {}, wrote {}, {} messages out)",
        started.elapsed(),
        total(&server, |m| m.bytes_in.get()),
        total(&server, |m| m.bytes_out.get()),
        total(&server, |m| m.messages_out.get()),
    );
    let stalled_after = stalled_after.expect("the client's writes did not block once the server paused");
    eprintln!("slow client: blocked after {stalled_after} bytes, {written} accepted in {:?}", started.elapsed());
    assert!(stalled_after > max_backpressure, "blocked after only {stalled_after} bytes");

    let mut stable = false;
    for _ in 0..10 {
        let before = total(&server, |m| m.bytes_in.get());
        std::thread::sleep(Duration::from_millis(300));
        if total(&server, |m| m.bytes_in.get()) == before {
            stable = true;
            break;
        }
    }
    assert!(stable, "the server kept reading from the paused connection");

    // Meanwhile another client on the same worker is served normally.
    let mut other = connect(&server);
    for i in 0..20 {
        let text = format!("still served {i}");
        other.send(Message::Text(text.clone())).unwrap();
        assert_eq!(next_data(&mut other), Message::Text(text));
    }
    other.send(Message::Binary(vec![7; 100 << 10])).unwrap();
    assert_eq!(next_data(&mut other), Message::Binary(vec![7; 100 << 10]));
    // The slow client is paused, not dropped.
    assert_eq!(h.open_connections(), 2);

    drop(slow);
    drop(other);
    assert!(wait_until(Duration::from_secs(5), || h.open_connections() == 0));
}

#[test]
fn unmasked_frame_is_closed_with_1002() {
    let server = TestServer::echo(Config::default());
    let mut ws = connect(&server);
    ws.get_mut().write_all(&raw_peer::unmasked_frame(true, OP_TEXT, b"no mask")).unwrap();
    assert_eq!(server_close_code(&mut ws), 1002);
}

#[test]
fn invalid_utf8_text_is_closed_with_1007() {
    let server = TestServer::echo(Config::default());
    let mut ws = connect(&server);
    let bad = Frame::message(b"ok \xff\xfe".to_vec(), OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(bad)).unwrap();
    assert_eq!(server_close_code(&mut ws), 1007);

    // The same bytes split over fragments, with the bad byte in the last one.
    let mut ws = connect(&server);
    let first = Frame::message(b"ok \xe2\x82".to_vec(), OpCode::Data(Data::Text), false);
    let last = Frame::message(b"\x28".to_vec(), OpCode::Data(Data::Continue), true);
    ws.write(Message::Frame(first)).unwrap();
    ws.send(Message::Frame(last)).unwrap();
    assert_eq!(server_close_code(&mut ws), 1007);
}

#[test]
fn oversized_message_is_closed_with_1009() {
    let server = TestServer::echo(Config { max_message: 1024, ..Config::default() });
    let mut ws = connect(&server);
    ws.send(Message::Binary(vec![1; 1024])).unwrap();
    assert_eq!(next_data(&mut ws), Message::Binary(vec![1; 1024]));
    ws.send(Message::Binary(vec![1; 4096])).unwrap();
    assert_eq!(server_close_code(&mut ws), 1009);

    // Over the limit only in total, over several fragments.
    let mut ws = connect(&server);
    for i in 0..3 {
        let op = if i == 0 { Data::Text } else { Data::Continue };
        ws.write(Message::Frame(Frame::message(vec![b'x'; 500], OpCode::Data(op), i == 2))).unwrap();
    }
    ws.flush().unwrap();
    assert_eq!(server_close_code(&mut ws), 1009);
}

/// A handshake the server must refuse, and how.
struct BadHandshake {
    what: &'static str,
    request: String,
    status: u16,
    /// A header the response must carry, with its value.
    must_have: Option<(&'static str, &'static str)>,
}

#[test]
fn bad_handshakes_get_their_http_status() {
    let server = TestServer::echo(Config::default());
    let addr = server.addr;
    let req =
        |method: &str, version: &str, headers: &str| format!("{method} / {version}\r\nHost: {addr}\r\n{headers}\r\n");
    let case = |what, request, status| BadHandshake { what, request, status, must_have: None };
    let key = format!("Sec-WebSocket-Key: {}\r\n", raw_peer::KEY);
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let v13 = "Sec-WebSocket-Version: 13\r\n";
    let filler = format!("X-Filler: {}\r\n", "a".repeat(9 << 10));
    let cases = [
        case("missing key", req("GET", "HTTP/1.1", &format!("{upgrade}{v13}")), 400),
        case(
            "key not 16 bytes",
            req("GET", "HTTP/1.1", &format!("{upgrade}Sec-WebSocket-Key: c2hvcnQ=\r\n{v13}")),
            400,
        ),
        BadHandshake {
            must_have: Some(("sec-websocket-version", "13")),
            ..case("version 8", req("GET", "HTTP/1.1", &format!("{upgrade}{key}Sec-WebSocket-Version: 8\r\n")), 426)
        },
        case("POST", req("POST", "HTTP/1.1", &format!("{upgrade}{key}{v13}")), 405),
        case("no Upgrade header", req("GET", "HTTP/1.1", &format!("Connection: Upgrade\r\n{key}{v13}")), 400),
        case("HTTP/1.0", req("GET", "HTTP/1.0", &format!("{upgrade}{key}{v13}")), 400),
        case("9 KiB header", req("GET", "HTTP/1.1", &format!("{upgrade}{key}{v13}{filler}")), 431),
        case("not HTTP", "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03\r\n\r\n".to_string(), 400),
    ];
    for c in cases {
        let what = c.what;
        let mut s = raw_peer::tcp(addr, IO_TIMEOUT);
        s.write_all(c.request.as_bytes()).unwrap();
        let head = raw_peer::read_head(&mut s).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(raw_peer::status(&head), c.status, "{what}: {}", String::from_utf8_lossy(&head));
        if let Some((name, value)) = c.must_have {
            assert_eq!(raw_peer::header(&head, name).as_deref(), Some(value), "{what}");
        }
        assert!(raw_peer::wait_eof(&mut s), "{what}: connection left open");
    }
    assert_eq!(server.handle().open_connections(), 0);
}

#[test]
fn control_frames_from_raw_client_are_answered_between_fragments() {
    // The same interleaving as the tungstenite test, from the raw client, with the
    // whole sequence in one write: a pong and the assembled message come back.
    let server = TestServer::echo(Config::default());
    let mut s = raw_peer::connect(server.addr, IO_TIMEOUT);
    let mut burst = raw_peer::frame(false, OP_TEXT, b"one ");
    burst.extend(raw_peer::frame(true, OP_PING, b"p"));
    burst.extend(raw_peer::frame(false, OP_CONT, b"two "));
    burst.extend(raw_peer::frame(true, OP_CONT, b"three"));
    burst.extend(raw_peer::frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
    s.write_all(&burst).unwrap();
    let mut buf = [0u8; 256];
    let (_, op, n) = raw_peer::read_frame(&mut s, &mut buf).unwrap();
    assert_eq!((op, &buf[..n]), (OP_PONG, &b"p"[..]));
    let (fin, op, n) = raw_peer::read_frame(&mut s, &mut buf).unwrap();
    assert!(fin);
    assert_eq!((op, &buf[..n]), (OP_TEXT, &b"one two three"[..]));
    let (_, op, n) = raw_peer::read_frame(&mut s, &mut buf).unwrap();
    assert_eq!(op, OP_CLOSE);
    assert_eq!(raw_peer::close_code(&buf[..n]), 1000);
    let mut rest = [0u8; 16];
    assert_eq!(s.read(&mut rest).unwrap(), 0, "bytes after the close frame");
}

/// Reading paused mid-batch leaves decoded-but-unhandled bytes in the read ring (a
/// pooled ring, or the worker's scratch ring handed to the connection); when the client
/// reads again, every message still comes back once, whole and in order.
#[test]
fn paused_reading_resumes_without_losing_or_reordering_messages() {
    const N: u32 = 20_000;
    // A small cap, so reading pauses and resumes many times over the run.
    let cfg = Config { workers: 1, max_backpressure: 16 << 10, ..Config::default() };
    let server = TestServer::echo(cfg);
    let mut reader = raw_peer::connect(server.addr, IO_TIMEOUT);
    let mut writer = reader.try_clone().unwrap();
    // Frames of 50-249 bytes, so they straddle read boundaries at every offset.
    let payload = |i: u32| -> Vec<u8> {
        let mut p = i.to_be_bytes().to_vec();
        p.resize(50 + (i as usize * 37) % 200, (i % 251) as u8);
        p
    };
    let sender = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for i in 0..N {
            batch.extend_from_slice(&raw_peer::frame(true, OP_BINARY, &payload(i)));
            if batch.len() > 32 << 10 {
                writer.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        writer.write_all(&batch).unwrap();
    });
    // Let the server fill its outbox and pause before anything is read.
    std::thread::sleep(Duration::from_millis(300));
    let mut buf = vec![0u8; 1 << 10];
    for i in 0..N {
        let (fin, op, n) =
            raw_peer::read_frame(&mut reader, &mut buf).unwrap_or_else(|e| panic!("echo {i} of {N}: {e}"));
        assert!(fin && op == OP_BINARY, "message {i}: fin {fin} opcode {op}");
        assert_eq!(&buf[..n], &payload(i)[..], "message {i}");
    }
    sender.join().unwrap();
    assert!(total(&server, |m| m.backpressure_events.get()) >= 1, "reading never paused");
}

/// Frames cut into TCP writes of random sizes (so reads end at every offset of a
/// header or payload, and the read ring changes hands between the worker and the
/// connection), some larger than a read ring: every echo comes back whole and in order.
#[test]
fn frames_split_at_random_points_echo_intact() {
    let server = TestServer::echo(Config { workers: 1, ..Config::default() });
    split_stream_client(server.addr, 1, 2_000);
}

/// The same from several clients at once on two workers (connections handed from the
/// accepting worker to the other). The cap is small, so reading may pause and resume
/// when a client falls behind; `paused_reading_resumes_...` makes sure of a pause.
#[test]
fn concurrent_split_streams_on_two_workers_echo_intact() {
    let cfg = Config { workers: 2, max_backpressure: 8 << 10, ..Config::default() };
    let server = TestServer::echo(cfg);
    let addr = server.addr;
    let clients: Vec<_> =
        (0..6u64).map(|seed| std::thread::spawn(move || split_stream_client(addr, seed + 1, 600))).collect();
    for c in clients {
        c.join().expect("client");
    }
    let per_worker: Vec<u64> = server.handle().metrics().iter().map(|m| m.accepted.get()).collect();
    assert_eq!(per_worker, vec![3, 3], "six clients dealt to two workers in turn");
}

/// Sends `n` frames cut at pseudo-random points (fixed by `seed`) and checks every echo.
fn split_stream_client(addr: std::net::SocketAddr, seed: u64, n: u32) {
    let mut reader = raw_peer::connect(addr, IO_TIMEOUT);
    let mut writer = reader.try_clone().unwrap();
    writer.set_nodelay(true).unwrap();
    // xorshift: the same cuts on every run.
    let mut x = 0x2545_f491_4f6c_dd1du64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut sent = Vec::new();
    let mut stream = Vec::new();
    for i in 0..n {
        let len = match next() % 100 {
            0 => 20_000 + (next() % 5_000) as usize, // over the 16 KiB ring
            1..=9 => 126 + (next() % 1_000) as usize,
            _ => (next() % 126) as usize,
        };
        let mut p = vec![(i % 251) as u8; len];
        if len >= 4 {
            p[..4].copy_from_slice(&i.to_be_bytes());
        }
        stream.extend_from_slice(&raw_peer::frame(true, OP_BINARY, &p));
        sent.push(p);
    }
    let cuts: Vec<usize> = (0..stream.len()).map(|_| 1 + (next() % 700) as usize).collect();
    let sender = std::thread::spawn(move || {
        let (mut at, mut k) = (0, 0);
        while at < stream.len() {
            let end = (at + cuts[k]).min(stream.len());
            writer.write_all(&stream[at..end]).unwrap();
            if k % 16 == 0 {
                // Let the server read what it has, so the next bytes come in a new read.
                std::thread::sleep(Duration::from_micros(200));
            }
            at = end;
            k += 1;
        }
    });
    let mut buf = vec![0u8; 32 << 10];
    for (i, want) in sent.iter().enumerate() {
        let (fin, op, len) = raw_peer::read_frame(&mut reader, &mut buf)
            .unwrap_or_else(|e| panic!("client {seed}: echo {i} of {n}: {e}"));
        assert!(fin && op == OP_BINARY, "client {seed}: message {i}: fin {fin} opcode {op}");
        assert_eq!(&buf[..len], &want[..], "client {seed}: message {i} ({} bytes)", want.len());
    }
    sender.join().unwrap();
}
