//! Timeouts end to end, against the real server over loopback with short values (tick
//! 10 ms, timeouts of 100-500 ms): the handshake timeout and slowloris, one idle close,
//! pings in bulk, the application's timers and the wheel's per-turn limit. Each timeout's
//! rules (ping, idle, close, write stall, token expiry, rate limit) are tested on the
//! session alone in simulated time, in `src/session/tests.rs`.
//!
//! Bounds are generous so the tests hold on a loaded two-core machine: a timeout may
//! fire up to one tick early (deadlines count from the start of the tick an event fell
//! in) and arbitrarily late under load, so each check is "not much before, not absurdly
//! after". The tests of this file run one at a time (`serial()`), so one test's 10,000
//! sockets do not delay another's deadlines.
//!
//! `slowloris_does_not_delay_a_normal_client` needs the `wsloop` binary (feature `cli`):
//! run with `cargo test --all-features` (as `scripts/test.sh` does).

mod common;

use common::{wait_until, TestServer};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tungstenite::Message as WsMessage;
use wsloop::proto::Request;
use wsloop::server::metrics::TimeoutKind;
use wsloop::server::{Accept, Config, ConnId, Connection, Handler, Message, Reject};

use common::counting::{Counting, ALLOCS};

#[global_allocator]
static GLOBAL: Counting = Counting;

const TICK: Duration = Duration::from_millis(10);
const MS: Duration = Duration::from_millis(1);

/// Timing tests run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// One worker, a 10 ms tick, and every timeout long unless a test shortens it.
fn cfg() -> Config {
    Config {
        workers: 1,
        tick: TICK,
        handshake_timeout: Duration::from_secs(10),
        ping_interval: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(20),
        close_timeout: Duration::from_secs(10),
        ..Config::default()
    }
}

/// The server's count of `kind` timeouts.
fn timeouts(server: &TestServer, kind: TimeoutKind) -> u64 {
    server.handle().metrics().iter().map(|m| m.timeouts[kind as usize].get()).sum()
}

fn all_timeouts(server: &TestServer) -> [u64; 4] {
    TimeoutKind::ALL.map(|k| timeouts(server, k))
}

/// Asserts `d` is at least `min` less one tick (and a little) and under `max`.
fn assert_around(what: &str, d: Duration, min: Duration, max: Duration) {
    eprintln!("{what}: {d:?} (expected {min:?})");
    assert!(d + TICK + 5 * MS >= min && d <= max, "{what}: took {d:?}, expected about {min:?} (at most {max:?})");
}

// ---- a raw client: nothing automatic, every byte explicit -------------------------

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
enum Got {
    Frame(u8, Vec<u8>),
    Eof,
    Timeout,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }

    /// Connects and completes the upgrade; frames that follow the 101 stay buffered.
    fn open(addr: SocketAddr, path_request: &[u8]) -> Raw {
        let mut r = Raw::connect(addr);
        r.s.write_all(path_request).unwrap();
        r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = r.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = r.s.read(&mut chunk).expect("read the 101");
            assert!(n > 0, "EOF during the handshake");
            r.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&r.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        r.buf.drain(..end);
        r
    }

    /// The next server frame (unmasked), EOF, or a timeout after `wait`.
    fn next(&mut self, wait: Duration) -> Got {
        let end = Instant::now() + wait;
        loop {
            if let Some((op, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Got::Frame(op, payload);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Timeout;
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return Got::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Reads until EOF; panics on anything else or after `wait`.
    fn expect_eof(&mut self, wait: Duration) {
        let end = Instant::now() + wait;
        self.s.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0u8; 4096];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => panic!("expected EOF, got {n} bytes"),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("expected EOF within {wait:?}: {e}"),
            }
            assert!(Instant::now() < end, "no EOF within {wait:?}");
        }
    }
}

/// One complete unmasked frame at the start of `b`: (opcode, payload, bytes used).
fn parse_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
    let (len, hl) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if b.len() < hl + len {
        return None;
    }
    Some((b[0] & 0x0f, b[hl..hl + len].to_vec(), hl + len))
}

const PING: u8 = 0x9;
const CLOSE: u8 = 0x8;

fn close_code(payload: &[u8]) -> u16 {
    assert!(payload.len() >= 2, "close frame without a code");
    u16::from_be_bytes([payload[0], payload[1]])
}

// ---- a tungstenite client --------------------------------------------------------

type Ws = tungstenite::WebSocket<TcpStream>;

fn ws_connect(server: &TestServer, path: &str) -> Ws {
    ws_over(server, path, TcpStream::connect(server.addr).expect("connect"))
}

fn ws_over(server: &TestServer, path: &str, stream: TcpStream) -> Ws {
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (ws, _) = tungstenite::client(server.url(path), stream).expect("handshake");
    ws
}

/// Reads one message, `None` on a read timeout.
fn ws_read(ws: &mut Ws, wait: Duration) -> Option<WsMessage> {
    ws.get_mut().set_read_timeout(Some(wait)).unwrap();
    match ws.read() {
        Ok(m) => Some(m),
        Err(tungstenite::Error::Io(e)) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            None
        }
        Err(e) => panic!("read: {e}"),
    }
}

fn ws_echo(ws: &mut Ws, text: &str) {
    ws.send(WsMessage::Text(text.into())).unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        match ws_read(ws, Duration::from_secs(1)) {
            Some(WsMessage::Text(t)) => {
                assert_eq!(t, text);
                return;
            }
            Some(WsMessage::Ping(_) | WsMessage::Pong(_)) | None => {}
            Some(other) => panic!("expected the echo, got {other:?}"),
        }
    }
    panic!("no echo of {text:?}");
}

// ---- handshake timeout -----------------------------------------------------------

#[test]
fn handshake_timeout_closes_silent_and_half_request_clients() {
    let _g = serial();
    let server = TestServer::echo(Config { handshake_timeout: Duration::from_millis(200), ..cfg() });
    let start = Instant::now();
    let mut silent = Raw::connect(server.addr);
    let mut half = Raw::connect(server.addr);
    half.s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webso").unwrap();
    // A normal client on the same server is not touched by the handshake timer.
    let mut ws = ws_connect(&server, "/");

    silent.expect_eof(Duration::from_secs(3));
    assert_around("silent client closed", start.elapsed(), 200 * MS, 1500 * MS);
    half.expect_eof(Duration::from_secs(3));
    assert_around("half request closed", start.elapsed(), 200 * MS, 1500 * MS);

    assert!(wait_until(Duration::from_secs(2), || timeouts(&server, TimeoutKind::Handshake) == 2));
    std::thread::sleep(Duration::from_millis(100));
    ws_echo(&mut ws, "still here");
    assert_eq!(all_timeouts(&server), [2, 0, 0, 0]);
}

/// 10,000 connections that never finish their handshake must not slow a normal client.
/// The server runs as its own process (the `wsloop` binary): this process holds the
/// 10,000 client sockets, and with the server's as many again one process would pass
/// the 20,000 descriptor limit.
#[cfg(feature = "cli")]
#[test]
fn slowloris_does_not_delay_a_normal_client() {
    use std::io::BufRead;
    use std::process::{Child, Command, Stdio};

    /// Kills the server we started, by its own handle, whatever happens in the test.
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let _g = serial();
    let limit = soft_fd_limit();
    let want = 10_000;
    // Keep 100 descriptors spare for everything else this process has open.
    let n = want.min(limit.saturating_sub(common::open_fds() + 100));
    if n < want {
        eprintln!("open-file limit {limit}: using {n} slow clients instead of {want} (raise `ulimit -n`)");
    }

    let mut child = Command::new(env!("CARGO_BIN_EXE_wsloop"))
        .args(["echo", "--listen", "127.0.0.1:0", "--workers", "2"])
        .args(["--handshake-timeout", "60", "--idle-timeout", "60"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the wsloop binary");
    let stderr = child.stderr.take().unwrap();
    let server = Kill(child);
    // The binary logs "listening on ws://ADDR"; keep draining its log afterwards so a
    // full pipe never blocks it.
    let mut lines = io::BufReader::new(stderr).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("wsloop exited before listening").unwrap();
        if let Some(rest) = line.split("listening on ws://").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));

    let started = Instant::now();
    let mut slow = Vec::with_capacity(n);
    for i in 0..n {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        // Reset on close: no TIME_WAIT left behind to eat the ephemeral ports.
        s.set_linger(Some(Duration::ZERO)).unwrap();
        s.connect(&addr.into()).expect("slow client connect");
        let mut s: TcpStream = s.into();
        if i % 2 == 1 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgra").unwrap();
        }
        slow.push(s);
    }
    eprintln!("{n} slow clients connected in {:?}", started.elapsed());
    // Wait until the server has accepted them all (its descriptors, from /proc).
    let pid = server.0.id();
    let server_fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    assert!(
        wait_until(Duration::from_secs(10), || server_fds() >= n),
        "the server holds {} descriptors, expected {n}",
        server_fds()
    );

    let mut worst = Duration::ZERO;
    for i in 0..5 {
        let t = Instant::now();
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).expect("handshake");
        ws_echo(&mut ws, &format!("hello {i}"));
        worst = worst.max(t.elapsed());
        let _ = ws.close(None);
    }
    eprintln!("normal client handshake + echo with {n} slow clients open: worst {worst:?}");
    assert!(worst < Duration::from_millis(500), "normal client took {worst:?}");

    // The slow clients are still connected (the handshake timeout is 60 s).
    for s in slow.iter_mut().step_by(997) {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => panic!("slow client closed early: {other:?}"),
        }
    }
    drop(server);
    drop(slow);
}

/// The soft RLIMIT_NOFILE, from /proc (no libc in the tests).
#[cfg(feature = "cli")]
fn soft_fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

// ---- heartbeat -------------------------------------------------------------------

#[test]
fn unresponsive_client_gets_1001_after_idle_timeout_then_tcp_closes_after_close_timeout() {
    let _g = serial();
    let server = TestServer::echo(Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        close_timeout: Duration::from_millis(300),
        ..cfg()
    });
    // Reads but never writes: the pings go unanswered, so does the close.
    let mut raw = Raw::open(server.addr, UPGRADE);
    let t = Instant::now();
    let mut pings = 0;
    let closed_at = loop {
        match raw.next(Duration::from_secs(3)) {
            Got::Frame(PING, _) => pings += 1,
            Got::Frame(CLOSE, p) => {
                assert_eq!(close_code(&p), 1001);
                break t.elapsed();
            }
            other => panic!("expected pings then a close, got {other:?}"),
        }
    };
    assert_around("close 1001", closed_at, 400 * MS, 2000 * MS);
    // Unanswered pings keep coming every ping_interval until then.
    assert!((2..=5).contains(&pings), "{pings} pings before the close");
    assert_eq!(all_timeouts(&server), [0, 1, 0, 0]);

    assert_eq!(raw.next(Duration::from_secs(3)), Got::Eof);
    assert_around("EOF after the close frame", t.elapsed() - closed_at, 300 * MS, 2000 * MS);
    assert!(wait_until(Duration::from_secs(2), || timeouts(&server, TimeoutKind::Close) == 1));
    assert_eq!(all_timeouts(&server), [0, 1, 1, 0]);
}

/// Regression: a ping queued by the timer waited for the end of the loop turn to be
/// written, holding a pooled write ring until then. Every connection pinged in the same
/// tick held one, so past the pool's few idle rings each ping allocated (and zeroed) a
/// fresh 16 KiB ring: 19,500 idle connections cost 640 MB/s of allocation, 70 MB of RSS,
/// and a fifth of a core at a 1 s ping interval.
#[test]
fn pings_due_in_the_same_tick_allocate_nothing() {
    let _g = serial();
    let server = TestServer::echo(Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(10),
        // One idle ring per pool: a second ring lent out at once means an allocation.
        pool_keep: 1,
        ..cfg()
    });
    // Opened within a few ticks, so each tick pings a dozen or more of them. They never
    // answer: unanswered pings repeat every ping_interval.
    let mut clients: Vec<Raw> = (0..64).map(|_| Raw::open(server.addr, UPGRADE)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = ALLOCS.load(Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    let allocs = ALLOCS.load(Relaxed) - before;
    let mut pings = 0;
    for c in &mut clients {
        while let Got::Frame(PING, _) = c.next(Duration::from_millis(1)) {
            pings += 1;
        }
    }
    assert!(pings >= 64 * 5, "only {pings} pings");
    // A few for the test harness; one per ping (hundreds) before the fix.
    eprintln!("{allocs} allocations in 1 s; {pings} pings in 1.3 s");
    assert!(allocs < 32, "{allocs} allocations in 1 s of pings ({pings} pings in 1.3 s)");
    assert_eq!(all_timeouts(&server), [0; 4]);
}

// ---- close handshake timeout -----------------------------------------------------

// ---- write stall -----------------------------------------------------------------

// ---- application timers ----------------------------------------------------------

/// Path `/after/<ms>` schedules a timer of that many ms in `on_open` (token = ms); each
/// firing is recorded with the time since `on_open` and sent to the client.
#[derive(Clone, Default)]
struct Timers {
    opened: Arc<Mutex<Vec<(ConnId, Instant)>>>,
    fired: Arc<Mutex<Vec<(u64, Duration)>>>,
}

impl Handler for Timers {
    type State = ();

    fn on_open<'r>(&mut self, conn: &mut Connection<'_>, req: &Request<'_, 'r>) -> Result<Accept<'r, ()>, Reject> {
        if let Some(ms) = req.path().strip_prefix("/after/") {
            let ms: u64 = ms.parse().unwrap();
            conn.schedule(Duration::from_millis(ms), ms);
        }
        self.opened.lock().unwrap().push((conn.id(), Instant::now()));
        Ok(Accept::default())
    }

    fn on_message(&mut self, conn: &mut Connection<'_>, _: &mut (), msg: Message<'_>) {
        let _ = conn.send(msg);
    }

    fn on_timer(&mut self, conn: &mut Connection<'_>, _: &mut (), token: u64) {
        let id = conn.id();
        let opened = self.opened.lock().unwrap();
        let at = opened.iter().find(|(c, _)| *c == id).expect("a timer for an opened connection").1;
        self.fired.lock().unwrap().push((token, at.elapsed()));
        let _ = conn.send_text(&format!("timer {token}"));
    }
}

#[test]
fn app_timer_fires_after_its_delay() {
    let _g = serial();
    let h = Timers::default();
    let server = TestServer::start(cfg(), {
        let h = h.clone();
        move |_| h.clone()
    });
    let mut ws = ws_connect(&server, "/after/50");
    match ws_read(&mut ws, Duration::from_secs(3)) {
        Some(WsMessage::Text(t)) => assert_eq!(t, "timer 50"),
        other => panic!("expected the timer's message, got {other:?}"),
    }
    let fired = h.fired.lock().unwrap().clone();
    assert_eq!(fired.len(), 1);
    assert_around("on_timer", fired[0].1, 50 * MS, 1000 * MS);
    assert_eq!(all_timeouts(&server), [0; 4]);
}

#[test]
fn app_timer_of_a_closed_connection_does_not_fire() {
    let _g = serial();
    let h = Timers::default();
    let server = TestServer::start(cfg(), {
        let h = h.clone();
        move |_| h.clone()
    });
    // Schedules 200 ms, then goes away at once.
    let mut gone = ws_connect(&server, "/after/200");
    gone.close(None).unwrap();
    while gone.read().is_ok() {}
    assert!(wait_until(Duration::from_secs(2), || server.handle().open_connections() == 0));
    // A new connection takes the freed slot (same key, new generation).
    let mut next = ws_connect(&server, "/after/100");
    let opened = h.opened.lock().unwrap().clone();
    assert_eq!(opened[0].0.key, opened[1].0.key, "the slab key is reused");
    std::thread::sleep(Duration::from_millis(400));
    // Only the live connection's timer fired, and it reached that connection.
    let tokens: Vec<u64> = h.fired.lock().unwrap().iter().map(|f| f.0).collect();
    assert_eq!(tokens, vec![100]);
    match ws_read(&mut next, Duration::from_secs(1)) {
        Some(WsMessage::Text(t)) => assert_eq!(t, "timer 100"),
        other => panic!("expected the timer's message, got {other:?}"),
    }
    assert_eq!(all_timeouts(&server), [0; 4]);
}

/// Path `/many` schedules `MANY` timers for 100 ms ahead; "sleep" blocks the event loop
/// for 150 ms (on purpose: it makes the loop reach those timers late).
#[derive(Clone, Default)]
struct Many {
    fired: Arc<AtomicUsize>,
}

const MANY: usize = 10_000;

impl Handler for Many {
    type State = ();

    fn on_open<'r>(&mut self, conn: &mut Connection<'_>, req: &Request<'_, 'r>) -> Result<Accept<'r, ()>, Reject> {
        if req.path() == "/many" {
            for i in 0..MANY {
                conn.schedule(Duration::from_millis(100), i as u64);
            }
        }
        Ok(Accept::default())
    }

    fn on_message(&mut self, _conn: &mut Connection<'_>, _: &mut (), msg: Message<'_>) {
        if msg.as_bytes() == b"sleep" {
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn on_timer(&mut self, _conn: &mut Connection<'_>, _: &mut (), _token: u64) {
        self.fired.fetch_add(1, Relaxed);
    }
}

/// Regression: more timers due at once than one loop turn handles (8,192), on a loop
/// that woke late. The rest were left in a slot behind the current tick, and the poll
/// timeout only looked ahead, so they waited for an unrelated timer (here ~10 s).
#[test]
fn timers_over_the_per_turn_limit_fire_promptly_when_the_loop_ran_late() {
    let _g = serial();
    let h = Many::default();
    let server = TestServer::start(cfg(), {
        let h = h.clone();
        move |_| h.clone()
    });
    let _many = ws_connect(&server, "/many");
    let t = Instant::now();
    let mut sleeper = ws_connect(&server, "/");
    std::thread::sleep(Duration::from_millis(50));
    sleeper.send(WsMessage::Text("sleep".into())).unwrap();
    let fired = &h.fired;
    let all = wait_until(Duration::from_secs(3), || fired.load(Relaxed) == MANY);
    let n = fired.load(Relaxed);
    assert!(all, "{n} of {MANY} timers fired after {:?}", t.elapsed());
    assert_around("all timers", t.elapsed(), 100 * MS, 1500 * MS);
    assert_eq!(all_timeouts(&server), [0; 4]);
}
