//! permessage-deflate in `shared` and `dedicated` mode against independent peers:
//! Python's `websockets` (which compresses by default) and raw frames compressed with
//! Python's zlib for the 1002, 1007 and 1009 rules (tests/py/deflate_client.py); Node's
//! `ws` (tests/node/deflate_client.mjs); and a raw client here that inflates the way a
//! context-keeping browser does, to see `dedicated` mode's context at work and freed.
//! Needs `python3` with `websockets` and `node` with `ws` (scripts/test.sh installs them;
//! the Node test runs `npm install` itself when `ws` is missing): without them these
//! tests fail.
#![cfg(feature = "deflate")]

mod common;
mod raw_peer;

use common::{wait_until, TestServer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use wsloop::server::{Compression, Config};

fn dir(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn mode_name(mode: Compression) -> &'static str {
    if mode == Compression::Dedicated {
        "dedicated"
    } else {
        "shared"
    }
}

/// An echo server with `cfg`, and a client program run against it in `cwd`, bounded by
/// `timeout 60`: `argv.. <url> extra.. <mode>`. It must succeed and print "all ok".
fn run_client(cfg: Config, cwd: &str, argv: &[&str], extra: &[&str]) {
    let mode = mode_name(cfg.compression);
    let server = TestServer::echo(cfg);
    let name = argv[argv.len() - 1];
    let out = Command::new("timeout")
        .arg("60")
        .args(argv)
        .arg(server.url("/"))
        .args(extra)
        .arg(mode)
        .current_dir(dir(cwd))
        .output()
        .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(stdout.contains("all ok"), "{stdout}");
}

fn python_client(mode: Compression) {
    let max = 100_000;
    let cfg = Config { compression: mode, max_message: max, ..Config::default() };
    run_client(cfg, "tests/py", &["python3", "deflate_client.py"], &[&max.to_string()]);
}

#[test]
fn python_clients_exchange_compressed_messages_and_bad_input_gets_its_close_code() {
    python_client(Compression::Shared);
}

#[test]
fn python_clients_exchange_compressed_messages_with_dedicated_contexts() {
    python_client(Compression::Dedicated);
}

fn node_client(mode: Compression) {
    let node_dir = dir("tests/node");
    if !node_dir.join("node_modules/ws").is_dir() {
        let ok = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&node_dir)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "npm install of ws in tests/node failed (scripts/test.sh installs it)");
    }
    run_client(Config { compression: mode, ..Config::default() }, "tests/node", &["node", "deflate_client.mjs"], &[]);
}

#[test]
fn node_ws_exchanges_compressed_messages_in_shared_mode() {
    node_client(Compression::Shared);
}

#[test]
fn node_ws_exchanges_compressed_messages_in_dedicated_mode() {
    node_client(Compression::Dedicated);
}

/// Inflates a server's compressed messages as one stream, keeping the window between
/// them, as a client that allows context takeover does.
struct ClientInflater(flate2::Decompress);

impl ClientInflater {
    /// For a server whose window is `window_bits` (9 to 15).
    fn new(window_bits: u8) -> ClientInflater {
        ClientInflater(flate2::Decompress::new_with_window_bits(false, window_bits))
    }

    fn message(&mut self, z: &[u8]) -> Vec<u8> {
        let mut input = z.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(1 << 16);
        self.0.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync).expect("server stream inflates");
        out
    }
}

#[test]
fn dedicated_context_shrinks_repeats_and_is_freed_when_quiet() {
    let cfg = Config {
        workers: 1,
        compression: Compression::Dedicated,
        compression_idle: Duration::from_millis(300),
        ..Config::default()
    };
    let server = TestServer::echo(cfg);
    let gauges = || {
        let m = &server.handle().metrics()[0];
        (m.deflate_dedicated_contexts.get(), m.deflate_dedicated_bytes.get())
    };
    let (mut s, extensions) = upgrade_offering(server.addr, "permessage-deflate; server_max_window_bits=12");
    assert_eq!(
        extensions.as_deref(),
        Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=12")
    );
    assert_eq!(gauges(), (0, 0), "nothing held before the first send");
    let msg = br#"{"type":"quote","symbol":"ACME","bid":101.25,"ask":101.27,"venue":"XNYS","seq":1}"#.repeat(4);
    let mut client = ClientInflater::new(12);
    let mut echo = |s: &mut TcpStream| {
        // Sent plain (RSV1 clear): a client need not compress; the echo comes compressed.
        s.write_all(&raw_peer::frame(true, raw_peer::OP_TEXT, &msg)).unwrap();
        let (first_byte, z) = read_message(s);
        assert_eq!(first_byte, 0x80 | 0x40 | raw_peer::OP_TEXT, "a compressed text frame");
        let out = client.message(&z);
        assert_eq!(out, msg);
        z.len()
    };
    let first = echo(&mut s);
    let second = echo(&mut s);
    assert!(second * 3 < first, "the repeat refers back to the first: {second} vs {first} bytes");
    assert_eq!(gauges(), (1, wsloop::deflate::dedicated_context_bytes(12)));
    // Quiet for compression_idle: freed (the sweep runs about once a second).
    assert!(wait_until(Duration::from_secs(5), || gauges() == (0, 0)), "{:?}", gauges());
    // The next message starts a new context: the client's stream still inflates it,
    // and it is about as long as the very first.
    let third = echo(&mut s);
    assert!(third * 3 >= first, "{third} vs {first}");
    assert_eq!(gauges().0, 1);
    drop(s);
    assert!(wait_until(Duration::from_secs(5), || gauges() == (0, 0)), "freed when the connection closes");
}

/// Upgrades offering `offer` in Sec-WebSocket-Extensions; asserts the 101 and returns
/// the socket and the extensions the server answered with.
fn upgrade_offering(addr: std::net::SocketAddr, offer: &str) -> (TcpStream, Option<String>) {
    let mut s = raw_peer::tcp(addr, Duration::from_secs(10));
    let req =
        raw_peer::upgrade_request(addr).replace("\r\n\r\n", &format!("\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n"));
    s.write_all(req.as_bytes()).unwrap();
    let head = raw_peer::read_head(&mut s).unwrap();
    raw_peer::assert_switching(&head);
    (s, raw_peer::header(&head, "sec-websocket-extensions"))
}

/// Upgrades offering plain permessage-deflate, which the server must accept; and a
/// context-keeping inflater for what it sends.
fn deflate_client(server: &TestServer) -> (TcpStream, ClientInflater) {
    let (s, extensions) = upgrade_offering(server.addr, "permessage-deflate");
    assert!(extensions.is_some());
    (s, ClientInflater::new(15))
}

/// A closed connection's dedicated compressor and half-inflated message went with it:
/// the next connection on the same slab key (one worker, one connection at a time)
/// started clean. Once, a session that had closed no longer said it negotiated
/// deflate, the state stayed, and the key's next client got back-references into a
/// stranger's messages (corrupt) or a stale partial message (1007).
#[test]
fn a_closed_connection_leaves_no_deflate_state_to_its_key() {
    let cfg = Config { workers: 1, compression: Compression::Dedicated, ..Config::default() };
    let server = TestServer::echo(cfg);
    let msg = br#"{"user":"ada","text":"the same words, again and again and again"}"#.repeat(3);
    let mut buf = vec![0u8; 1 << 16];
    let mut z = flate2::Compress::new(flate2::Compression::default(), false);
    let mut compressed = Vec::with_capacity(4096);
    z.compress_vec(&msg, &mut compressed, flate2::FlushCompress::Sync).unwrap();
    compressed.truncate(compressed.len() - 4);
    for round in 0..3 {
        let (mut s, mut client) = deflate_client(&server);
        // A compressed message from the client, and its echo inflated by a client
        // that never saw an earlier connection's stream.
        let mut f = raw_peer::frame(true, raw_peer::OP_TEXT, &compressed);
        f[0] |= 0x40;
        for _ in 0..2 {
            s.write_all(&f).unwrap();
            let (first_byte, z) = read_message(&mut s);
            assert_eq!(first_byte & 0x40, 0x40, "round {round}: compressed echo");
            assert!(z.len() < 126);
            assert_eq!(client.message(&z), msg, "round {round}");
        }
        // Then a first fragment left half inflated, and a protocol error (RSV1 on a
        // continuation): 1002, the connection gone, its key free for the next round.
        let mut first = raw_peer::frame(false, raw_peer::OP_TEXT, &compressed[..compressed.len() / 2]);
        first[0] |= 0x40;
        let mut cont = raw_peer::frame(true, 0, &compressed[compressed.len() / 2..]);
        cont[0] |= 0x40;
        s.write_all(&[first, cont].concat()).unwrap();
        let (_, op, n) = raw_peer::read_frame(&mut s, &mut buf).unwrap();
        assert_eq!((op, raw_peer::close_code(&buf[..n])), (raw_peer::OP_CLOSE, 1002), "round {round}");
        drop(s);
        assert!(wait_until(Duration::from_secs(5), || server.handle().open_connections() == 0));
    }
}

/// Echoes every message and, for one starting with "all:", also publishes it to every
/// connection (itself included): a connection's own sends and broadcasts interleave.
struct EchoAndPublish;

impl wsloop::server::Handler for EchoAndPublish {
    type State = ();

    fn on_open<'r>(
        &mut self,
        conn: &mut wsloop::server::Connection<'_>,
        _req: &wsloop::proto::handshake::Request<'_, 'r>,
    ) -> Result<wsloop::server::Accept<'r, ()>, wsloop::server::Reject> {
        conn.subscribe("all");
        Ok(wsloop::server::Accept::default())
    }

    fn on_message(&mut self, conn: &mut wsloop::server::Connection<'_>, _: &mut (), msg: wsloop::server::Message<'_>) {
        if msg.as_bytes().starts_with(b"all:") {
            conn.publish("all", msg);
        } else {
            let _ = conn.send(msg);
        }
    }
}

/// Reads one frame of up to 64 KiB; returns its first byte (FIN, RSV1 to 3, opcode) and
/// its payload.
fn read_message(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let n = match h[1] & 0x7f {
        126 => {
            let mut e = [0u8; 2];
            s.read_exact(&mut e).unwrap();
            u16::from_be_bytes(e) as usize
        }
        n => n as usize,
    };
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    (h[0], buf)
}

/// In dedicated mode a compressed broadcast (made without the connection's context)
/// lands in the client's window between the context's own messages; the context is
/// dropped then, so the echoes after it still inflate in a context-keeping client.
#[test]
fn dedicated_context_survives_broadcasts_between_its_messages() {
    let cfg = Config { workers: 1, compression: Compression::Dedicated, ..Config::default() };
    let server = TestServer::start(cfg, |_| EchoAndPublish);
    let (mut s, mut client) = deflate_client(&server);
    let own = br#"{"own":"message","n":12345,"text":"repeated repeated repeated repeated"}"#.repeat(2);
    let all = [b"all:".as_slice(), br#"{"broadcast":"to everyone","n":678,"pad":"xxxxxxxxxxxxxxxxxxxxxxxx"}"#].concat();
    for (round, msg) in [&own[..], &own, &all, &own, &all, &all, &own, &own].iter().enumerate() {
        s.write_all(&raw_peer::frame(true, raw_peer::OP_TEXT, msg)).unwrap();
        let (first_byte, z) = read_message(&mut s);
        assert!(first_byte & 0x40 != 0, "round {round}");
        assert_eq!(client.message(&z), *msg, "round {round}");
    }
}

/// `compression_max_contexts` bounds a worker's compressors: the second connection
/// gets none while the first holds the only one, and its echoes still inflate.
#[test]
fn dedicated_contexts_stop_at_the_cap() {
    let cfg =
        Config { workers: 1, compression: Compression::Dedicated, compression_max_contexts: 1, ..Config::default() };
    let server = TestServer::echo(cfg);
    let contexts = || server.handle().metrics()[0].deflate_dedicated_contexts.get();
    let msg = br#"{"a":"json-like","b":[1,2,3],"c":"more words more words more words"}"#.repeat(2);
    let mut conns: Vec<_> = (0..2).map(|_| deflate_client(&server)).collect();
    for round in 0..3 {
        for (i, (s, client)) in conns.iter_mut().enumerate() {
            s.write_all(&raw_peer::frame(true, raw_peer::OP_TEXT, &msg)).unwrap();
            let (first_byte, z) = read_message(s);
            assert!(first_byte & 0x40 != 0, "conn {i} round {round}");
            assert_eq!(client.message(&z), msg, "conn {i} round {round}");
        }
        assert_eq!(contexts(), 1, "round {round}");
    }
}
