//! The publish API's benchmark (README, "Push from your backend"): an in-process
//! `Rooms` server with its admin listener, N subscribers of one room (raw WebSocket
//! clients on one mio loop), and one HTTP client publishing with keep-alive.
//!
//! 1. throughput: POST /publish/<room> back to back on one kept-alive connection for
//!    `--secs`, with the room empty (requests/s).
//! 2. latency: N subscribers join; `--rate` publishes/s for `--secs`, each body stamped
//!    with the send time; every subscriber notes arrival - stamp (p50/p99/max over all
//!    deliveries).
//! 3. throughput again with the N subscribers reading (accepted, and refused with 503
//!    once the workers' publish queues are full).
//!
//! cargo run --release --example publish_bench -- [--subs 1000] [--rate 1000] [--secs 5] [--workers 2] [--readers 2]

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wsloop::server::{Config, PublishKey, Rooms, Server};

const KEY: &str = "bench-key";
const ROOM: &str = "bench";

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One kept-alive HTTP/1.1 connection to the admin listener.
struct Http {
    s: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Http {
    fn new(addr: SocketAddr) -> Http {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Http { s, buf: Vec::with_capacity(4096) }
    }

    /// POSTs `body`, reads the whole response; returns its status.
    fn post(&mut self, body: &[u8]) -> u16 {
        let head = format!(
            "POST /publish/{ROOM} HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.s.write_all(&[head.as_bytes(), body].concat()).unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 1024];
        loop {
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "admin closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    return head[9..12].parse().unwrap_or(0);
                }
            }
        }
    }
}

/// Opens `n` subscribers (blocking handshakes), then makes them non-blocking.
fn subscribers(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let req = format!(
                "GET /{ROOM} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            s.write_all(req.as_bytes()).unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(s.read(&mut b).unwrap(), 1);
                head.push(b[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 101"));
            s.set_nonblocking(true).unwrap();
            TcpStream::from_std(s)
        })
        .collect()
}

/// Reads every subscriber's frames on one mio loop until `stop`; records, for each
/// stamped text frame ("t=<ns since base>;..."), arrival - stamp in µs.
fn reader(mut socks: Vec<TcpStream>, base: Instant, stop: Arc<AtomicBool>, out: Arc<Mutex<Vec<u32>>>) {
    let mut poll = Poll::new().unwrap();
    for (i, s) in socks.iter_mut().enumerate() {
        poll.registry().register(s, Token(i), Interest::READABLE).unwrap();
    }
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); socks.len()];
    let mut events = Events::with_capacity(1024);
    let mut lat = Vec::with_capacity(1 << 20);
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(50))).unwrap();
        for ev in events.iter() {
            let i = ev.token().0;
            loop {
                match socks[i].read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => pending[i].extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("subscriber read: {e}"),
                }
            }
            let now = base.elapsed().as_nanos() as u64;
            let p = &mut pending[i];
            let mut at = 0;
            // Server frames: unmasked, payloads under 126 bytes here.
            while p.len() >= at + 2 && p.len() >= at + 2 + (p[at + 1] & 0x7f) as usize {
                let len = (p[at + 1] & 0x7f) as usize;
                let payload = &p[at + 2..at + 2 + len];
                if p[at] == 0x81 {
                    if let Some(ns) = payload
                        .strip_prefix(b"t=")
                        .and_then(|r| r.split(|&b| b == b';').next())
                        .and_then(|d| std::str::from_utf8(d).ok())
                        .and_then(|d| d.parse::<u64>().ok())
                    {
                        lat.push((now.saturating_sub(ns) / 1000) as u32);
                    }
                }
                at += 2 + len;
            }
            p.drain(..at);
        }
    }
    out.lock().unwrap().extend(lat);
}

/// Back-to-back publishes: (accepted/s, refused with 503/s).
fn throughput(admin: SocketAddr, secs: u64) -> (f64, f64) {
    let mut h = Http::new(admin);
    let body = [b'x'; 64];
    let start = Instant::now();
    let (mut ok, mut full) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        match h.post(&body) {
            200 => ok += 1,
            503 => full += 1,
            s => panic!("publish answered {s}"),
        }
    }
    let t = start.elapsed().as_secs_f64();
    (ok as f64 / t, full as f64 / t)
}

fn main() {
    let (subs, rate, secs, workers) = (arg("--subs", 1000), arg("--rate", 1000), arg("--secs", 5), arg("--workers", 2));
    let cfg = Config {
        workers: workers as usize,
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        publish_key: PublishKey::new(KEY.as_bytes()),
        ..Config::default()
    };
    let server = Server::bind("127.0.0.1:0", cfg).unwrap();
    let (addr, admin) = (server.local_addr(), server.admin_addr().unwrap());
    let handle = server.handle();
    let running = server.start(|_| Rooms).unwrap();

    let (empty, _) = throughput(admin, secs);
    println!("POST /publish keep-alive, 1 client, 64 B, empty room: {empty:.0} requests/s");

    let socks = subscribers(addr, subs as usize);
    while handle.open_connections() < subs as usize {
        std::thread::sleep(Duration::from_millis(10));
    }
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let lat = Arc::new(Mutex::new(Vec::new()));
    // Reading 1000 sockets per publish is a read call each: spread over `--readers`
    // threads so the measuring side is not the bottleneck.
    let readers = arg("--readers", 2).max(1) as usize;
    let mut socks = socks;
    let per = socks.len().div_ceil(readers);
    let mut threads = Vec::new();
    while !socks.is_empty() {
        let part: Vec<TcpStream> = socks.drain(..per.min(socks.len())).collect();
        let (stop, lat) = (stop.clone(), lat.clone());
        threads.push(std::thread::spawn(move || reader(part, base, stop, lat)));
    }
    let mut h = Http::new(admin);
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    let mut next = start;
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        let stamp = base.elapsed().as_nanos() as u64;
        let body = format!("t={stamp};{}", "p".repeat(40));
        assert_eq!(h.post(body.as_bytes()), 200);
        sent += 1;
        next += interval;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // The stamped messages drain before the throughput run queues behind them.
    std::thread::sleep(Duration::from_secs(2));
    let (ok, full) = throughput(admin, secs);
    println!(
        "POST /publish keep-alive, 1 client, 64 B, {subs} subscribers: {ok:.0} requests/s accepted, handed to the workers ({:.0} deliveries/s asked), {full:.0}/s refused with 503 (publish queue full)",
        ok * subs as f64
    );

    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let mut l = std::mem::take(&mut *lat.lock().unwrap());
    l.sort_unstable();
    let pct = |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or(0);
    println!(
        "latency, request to {subs} subscribers, {:.0} publishes/s for {secs} s: {} deliveries of {} expected; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        sent as f64 / elapsed,
        l.len(),
        sent * subs,
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        l.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    handle.stop();
    let _ = running.join();
}
