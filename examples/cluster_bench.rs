//! Cross-node broadcast through Redis: publishers on node A, many subscribers on node B,
//! in one room or spread over `--rooms N` (one publisher each, the subscribers dealt out
//! in turn, the total `--rate` shared): rooms land on different shards of a Redis
//! Cluster. Reports delivered messages per second and the publish-to-receive latency. Bounded: it runs for `--secs` (at most 25, under the server's 30 s ping
//! interval: it never answers pings) and stops by itself.
//!
//! ```text
//! scripts/cluster-bench.sh      # starts Redis and two nodes, then runs this
//! cargo run --release --example cluster_bench -- --pub 127.0.0.1:9001 --sub 127.0.0.1:9002 \
//!     [--room bench] [--rooms 1] [--subs 100] [--rate 10000] [--size 64] [--secs 10] \
//!     [--noise-rooms 0] [--noise-rate 0]
//! ```
//!
//! `--noise-rooms N` adds N publishers on node A, each in a room of its own that nobody on
//! node B joined, sending `--noise-rate` messages per second each: traffic that node B
//! receives only when it subscribes by pattern.

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    publ: SocketAddr,
    sub: SocketAddr,
    room: String,
    rooms: usize,
    subs: usize,
    rate: u64,
    size: usize,
    secs: u64,
    noise_rooms: usize,
    noise_rate: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        publ: "127.0.0.1:9001".parse().unwrap(),
        sub: "127.0.0.1:9002".parse().unwrap(),
        room: "bench".into(),
        rooms: 1,
        subs: 100,
        rate: 10_000,
        size: 64,
        secs: 10,
        noise_rooms: 0,
        noise_rate: 0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag}: bad value {v}");
        match flag.as_str() {
            "--pub" => a.publ = v.parse().map_err(|_| format!("--pub: not an address: {v}"))?,
            "--sub" => a.sub = v.parse().map_err(|_| format!("--sub: not an address: {v}"))?,
            "--room" => a.room = v.clone(),
            "--rooms" => a.rooms = v.parse().map_err(bad)?,
            "--subs" => a.subs = v.parse().map_err(bad)?,
            "--rate" => a.rate = v.parse().map_err(bad)?,
            "--size" => a.size = v.parse().map_err(bad)?,
            "--secs" => a.secs = v.parse().map_err(bad)?,
            "--noise-rooms" => a.noise_rooms = v.parse().map_err(bad)?,
            "--noise-rate" => a.noise_rate = v.parse().map_err(bad)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.size < 16 || a.size > 125 {
        return Err("--size: 16 to 125 bytes (timestamp and sequence number, one-byte length)".into());
    }
    if a.secs == 0 || a.secs > 25 || a.rate == 0 || a.subs == 0 {
        return Err("--secs 1..=25, --rate and --subs above 0".into());
    }
    if a.rooms == 0 || a.rooms > a.subs {
        return Err("--rooms: 1 to --subs (every room needs a subscriber)".into());
    }
    Ok(a)
}

/// Opens a WebSocket to `addr` on `/room`; returns the stream and bytes read past the
/// handshake response.
fn handshake(addr: SocketAddr, room: &str) -> io::Result<(TcpStream, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /{room} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                return Err(io::Error::other(String::from_utf8_lossy(&buf).into_owned()));
            }
            return Ok((s, buf.split_off(end + 4)));
        }
    }
}

/// A masked (zero key) binary frame, as a client must send.
fn client_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x82);
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// One complete server frame at the start of `buf`: (opcode, payload range, frame length).
fn server_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let op = buf[0] & 0x0f;
    let (len, at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (buf.len() >= at + len).then_some((op, at..at + len, at + len))
}

/// Latencies in microseconds, 1 µs buckets up to 1 s.
struct Hist {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Hist {
    fn new() -> Hist {
        Hist { counts: vec![0; 1_000_000], total: 0, max: 0 }
    }

    fn record(&mut self, us: u64) {
        self.counts[us.min(999_999) as usize] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    fn quantile(&self, q: f64) -> u64 {
        let want = ((self.total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (us, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want.max(1) {
                return us as u64;
            }
        }
        self.max
    }
}

struct SubResult {
    hist: Hist,
    delivered: u64,
    out_of_order: u64,
}

/// Reads every subscriber's socket on one mio loop until `stop`, recording latencies of
/// messages with a sequence number of at least `measure_from`.
fn subscribers(
    conns: Vec<(TcpStream, Vec<u8>)>,
    base: Instant,
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    measure_from: Arc<AtomicU64>,
) -> io::Result<SubResult> {
    let mut poll = Poll::new()?;
    let mut socks = Vec::new();
    for (i, (s, left)) in conns.into_iter().enumerate() {
        s.set_nonblocking(true)?;
        let mut m = MioStream::from_std(s);
        poll.registry().register(&mut m, Token(i), Interest::READABLE)?;
        socks.push((m, left, None::<u64>));
    }
    let mut events = Events::with_capacity(256);
    let mut r = SubResult { hist: Hist::new(), delivered: 0, out_of_order: 0 };
    let mut chunk = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for ev in events.iter() {
            let (sock, buf, last) = &mut socks[ev.token().0];
            loop {
                match sock.read(&mut chunk) {
                    Ok(0) => return Err(io::Error::other("a subscriber was disconnected")),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let now = base.elapsed().as_nanos() as u64;
            let mut used = 0;
            while let Some((op, payload, len)) = server_frame(&buf[used..]) {
                let p = &buf[used + payload.start..used + payload.end];
                used += len;
                if op != 2 || p.len() < 16 {
                    continue;
                }
                let sent = u64::from_be_bytes(p[..8].try_into().unwrap());
                let seq = u64::from_be_bytes(p[8..16].try_into().unwrap());
                if last.is_none() {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                if last.is_some_and(|l| seq <= l) {
                    r.out_of_order += 1;
                }
                *last = Some(seq);
                if seq >= measure_from.load(Ordering::Relaxed) {
                    r.delivered += 1;
                    r.hist.record(now.saturating_sub(sent) / 1000);
                }
            }
            buf.drain(..used);
        }
    }
    Ok(r)
}

/// Sends `rate` messages per second of `size` bytes, dealt out in turn over `streams`,
/// until `until`, starting at sequence `seq`; returns the next sequence number.
fn publish(streams: &mut [TcpStream], base: Instant, rate: u64, size: usize, until: Instant, mut seq: u64) -> u64 {
    let start = Instant::now();
    let first = seq;
    let mut outs = vec![Vec::new(); streams.len()];
    let mut payload = vec![0u8; size];
    while Instant::now() < until {
        let due = first + (start.elapsed().as_nanos() as u64 * rate / 1_000_000_000);
        outs.iter_mut().for_each(Vec::clear);
        while seq < due {
            payload[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
            payload[8..16].copy_from_slice(&seq.to_be_bytes());
            client_frame(&mut outs[seq as usize % streams.len()], &payload);
            seq += 1;
        }
        for (s, out) in streams.iter_mut().zip(&outs) {
            if !out.is_empty() && s.write_all(out).is_err() {
                return seq;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    seq
}

/// Reads and discards what the server sends back to a publisher (rooms echo to members).
fn drain(mut s: TcpStream, stop: Arc<AtomicBool>) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn main() -> Result<(), String> {
    let a = parse_args()?;
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let room = |i: usize| if a.rooms == 1 { a.room.clone() } else { format!("{}-{i}", a.room) };
    let mut conns = Vec::new();
    for i in 0..a.subs {
        conns.push(handshake(a.sub, &room(i % a.rooms)).map_err(|e| format!("subscriber: {e}"))?);
    }
    let mut publ = Vec::new();
    let mut echo_drains = Vec::new();
    for i in 0..a.rooms {
        let (s, _) = handshake(a.publ, &room(i)).map_err(|e| format!("publisher: {e}"))?;
        let (d, stop) = (s.try_clone().map_err(|e| e.to_string())?, stop.clone());
        echo_drains.push(std::thread::spawn(move || drain(d, stop)));
        publ.push(s);
    }
    let seen = Arc::new(AtomicU64::new(0));
    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let subs = std::thread::spawn({
        let (stop, seen, measure_from) = (stop.clone(), seen.clone(), measure_from.clone());
        move || subscribers(conns, base, stop, seen, measure_from)
    });

    // Until node B has subscribed through Redis, probes are lost: send one to every room
    // every 50 ms until every subscriber has had one.
    let mut seq: u64 = 0;
    let probe_deadline = Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::Relaxed) < a.subs as u64 {
        if Instant::now() > probe_deadline {
            stop.store(true, Ordering::Relaxed);
            return Err("probes did not reach all of node B's subscribers within 10 s".into());
        }
        for p in publ.iter_mut() {
            let mut probe = vec![0u8; a.size];
            probe[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
            probe[8..16].copy_from_slice(&seq.to_be_bytes());
            let mut frame = Vec::new();
            client_frame(&mut frame, &probe);
            p.write_all(&frame).map_err(|e| format!("publisher: {e}"))?;
            seq += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));

    // Noise: other rooms on node A that nobody on node B wants.
    let mut noise = Vec::new();
    for i in 0..a.noise_rooms {
        let (s, _) = handshake(a.publ, &format!("{}-noise-{i}", a.room)).map_err(|e| format!("noise: {e}"))?;
        let (s2, stop2) = (s.try_clone().map_err(|e| e.to_string())?, stop.clone());
        noise.push((s, std::thread::spawn(move || drain(s2, stop2))));
    }
    let until = Instant::now() + Duration::from_secs(a.secs);
    let noise_threads: Vec<_> = noise
        .into_iter()
        .map(|(mut s, d)| {
            let (rate, size) = (a.noise_rate, a.size);
            (std::thread::spawn(move || publish(std::slice::from_mut(&mut s), base, rate.max(1), size, until, 0)), d)
        })
        .collect();

    // Aligned to the rooms, so that the measured messages are dealt out evenly.
    let first = (seq + 1_000).next_multiple_of(a.rooms as u64);
    measure_from.store(first, Ordering::Relaxed);
    let started = Instant::now();
    let end = publish(&mut publ, base, a.rate, a.size, until, first);
    let elapsed = started.elapsed().as_secs_f64();
    // Stragglers: give the pipeline a moment to empty.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let r = subs.join().map_err(|_| "subscriber thread panicked")?.map_err(|e| e.to_string())?;
    for (t, d) in noise_threads {
        let _ = t.join();
        let _ = d.join();
    }
    for d in echo_drains {
        let _ = d.join();
    }
    let sent = end - first;
    // Room i gets the messages whose number is i modulo rooms, and has every rooms-th
    // subscriber.
    let expected: u64 = (0..a.rooms as u64)
        .map(|i| {
            let msgs = (sent + a.rooms as u64 - 1 - i) / a.rooms as u64;
            let subs = (a.subs as u64 + a.rooms as u64 - 1 - i) / a.rooms as u64;
            msgs * subs
        })
        .sum();
    println!(
        "published {sent} msgs of {} B in {elapsed:.2} s ({:.0}/s) on node A in {} room(s); {} subscribers on node B",
        a.size,
        sent as f64 / elapsed,
        a.rooms,
        a.subs
    );
    if a.noise_rooms > 0 {
        println!("noise: {} rooms on node A at {} msgs/s each", a.noise_rooms, a.noise_rate);
    }
    println!(
        "delivered {} of {expected} ({:.3}%), {:.0} deliveries/s, out of order {}",
        r.delivered,
        100.0 * r.delivered as f64 / expected.max(1) as f64,
        r.delivered as f64 / elapsed,
        r.out_of_order
    );
    let h = &r.hist;
    println!(
        "latency publish->receive: p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
        h.quantile(0.50),
        h.quantile(0.90),
        h.quantile(0.99),
        h.quantile(0.999),
        h.max
    );
    Ok(())
}
