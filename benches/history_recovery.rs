//! A reconnect storm: N clients of R rooms come back at once, each 100 messages behind,
//! and ask to recover (`since=`, `wsloop.v1`). Measures the time until every client has
//! its 100 messages and its `r` (live), the server's CPU time (its threads only), and
//! with Redis the commands Redis ran (`INFO commandstats`). Three runs in one process,
//! the same clients each time:
//!
//! - `baseline`: the same clients connect without `since=` (live only, nothing to send):
//!   the cost of the reconnect alone, the peer the other two are compared with;
//! - `memory`: one node, history in memory;
//! - `redis`: a node just started (nothing in memory) with its history in a Redis stream
//!   per room, which the storm makes it read.
//!
//! The server runs in a process of its own (this program, `serve`) pinned to core 0 with
//! redis-server; the clients run on one thread pinned to core 1 (mio, raw frames).
//!
//! `cargo bench --bench history_recovery --features redis -- [clients] [rooms]`
//! (default 10000 10; scripts/history-bench.sh runs it).

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wsloop::redis::{RedisBridge, RedisConfig};
use wsloop::server::{Config, Message, Rooms, Server};

const BEHIND: u64 = 100;
const PUBLISHED: u64 = 200;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if args.first().map(String::as_str) == Some("serve") {
        return serve(&args[1..]);
    }
    let clients: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rooms: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    raise_fd_limit(clients + 1000);
    pin(1);
    println!("{clients} clients of {rooms} rooms, {BEHIND} messages behind; server on core 0, clients on core 1");
    let redis_bin =
        ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].into_iter().find(|p| std::path::Path::new(p).exists());

    let base = run(clients, rooms, None, false);
    report("baseline (live only)", &base, None);
    let mem = run(clients, rooms, None, true);
    report("memory", &mem, Some(&base));
    match redis_bin {
        Some(bin) => {
            let r = run(clients, rooms, Some(bin), true);
            report("redis", &r, Some(&base));
        }
        None => println!("redis: redis-server not installed, skipped"),
    }
}

struct Outcome {
    all_live: Duration,
    p50: Duration,
    recovered: usize,
    lost: usize,
    failed: usize,
    server_cpu: Duration,
    redis_calls: Vec<(String, u64)>,
}

fn report(name: &str, o: &Outcome, base: Option<&Outcome>) {
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    print!(
        "{name:>22}: all live in {:7.1} ms (p50 {:6.1} ms), server CPU {:7.1} ms; recovered {}, told lost {}, failed {}",
        o.all_live.as_secs_f64() * 1e3,
        o.p50.as_secs_f64() * 1e3,
        o.server_cpu.as_secs_f64() * 1e3,
        o.recovered,
        o.lost,
        o.failed
    );
    if let Some(b) = base {
        print!(
            " | x{:.2} time, x{:.2} CPU vs baseline",
            ratio(o.all_live, b.all_live),
            ratio(o.server_cpu, b.server_cpu)
        );
    }
    println!();
    if !o.redis_calls.is_empty() {
        let calls: Vec<String> = o.redis_calls.iter().map(|(c, n)| format!("{c}={n}")).collect();
        println!("{:>22}  Redis commands during the storm: {}", "", calls.join(" "));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One run: redis-server and a server process (this program, `serve`), both on core 0,
/// the rooms filled, then the storm. (The server runs in a process of its own: the
/// clients' and the server's sockets would not fit one process's 20,000 files.)
fn run(clients: usize, rooms: usize, redis_bin: Option<&str>, recover: bool) -> Outcome {
    let redis = redis_bin.map(|bin| {
        let port = free_port();
        let child = Command::new("taskset")
            .args([
                "-c",
                "0",
                bin,
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let r = RedisProc(child, port);
        let end = Instant::now() + Duration::from_secs(10);
        while redis_cmd(port, &[b"PING"]).is_none() {
            assert!(Instant::now() < end, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    });
    let exe = std::env::current_exe().unwrap();
    let redis_arg = redis.as_ref().map_or("0".to_string(), |r| r.1.to_string());
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg(exe)
        .args(["serve", &rooms.to_string(), &clients.to_string(), &redis_arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the server");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"ready"), "server: {line:?}");
    let addr: SocketAddr = f[1].parse().unwrap();
    let epochs: Vec<u64> = f[2..].iter().map(|e| e.parse().unwrap()).collect();
    let room_names: Vec<String> = (0..rooms).map(|i| format!("room{i}")).collect();
    let before_calls = redis.as_ref().map(|r| commandstats(r.1)).unwrap_or_default();
    let cpu_before = cpu_of(child.id());
    let targets: Vec<String> = (0..clients)
        .map(|i| {
            let r = i % rooms;
            if recover {
                format!("/{}?since={}&epoch={}", room_names[r], PUBLISHED - BEHIND, epochs[r])
            } else {
                format!("/{}", room_names[r])
            }
        })
        .collect();
    let (all_live, p50, recovered, lost, failed) = storm(addr, &targets, recover);
    let cpu = cpu_of(child.id()).saturating_sub(cpu_before);
    let redis_calls = match &redis {
        Some(r) => {
            let after = commandstats(r.1);
            after
                .into_iter()
                .filter_map(|(c, n)| {
                    let b = before_calls.iter().find(|(x, _)| *x == c).map_or(0, |x| x.1);
                    (n > b && c != "info").then(|| (c, n - b))
                })
                .collect()
        }
        None => Vec::new(),
    };
    drop(child.stdin.take());
    let _ = child.wait();
    drop(redis);
    Outcome { all_live, p50, recovered, lost, failed, server_cpu: cpu, redis_calls }
}

/// The server process: fills the rooms, serves, prints `ready <addr> <epoch>...`, and
/// exits when its standard input closes. With a Redis port, a first node fills the
/// streams and is gone before this one (nothing in memory) serves.
fn serve(args: &[String]) {
    let rooms: usize = args[0].parse().unwrap();
    let clients: usize = args[1].parse().unwrap();
    let redis_port: u16 = args[2].parse().unwrap();
    raise_fd_limit(clients + 1000);
    let room_names: Vec<String> = (0..rooms).map(|i| format!("room{i}")).collect();
    let cfg = Config { workers: 1, history: 1000, max_conns: clients + 100, ..Config::default() };
    let fill = |server: &Server| {
        let p = server.handle().publisher();
        for room in &room_names {
            for i in 0..PUBLISHED {
                let text = format!("message {i} of {room}");
                while p.publish(room, Message::Text(&text)).is_err() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    };
    let connected = |bridge: &RedisBridge| {
        let end = Instant::now() + Duration::from_secs(10);
        while !bridge.is_connected() {
            assert!(Instant::now() < end, "bridge did not connect");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let mut epochs = Vec::new();
    let server = Server::bind("127.0.0.1:0", cfg.clone()).unwrap();
    let server = if redis_port != 0 {
        let first = Server::bind("127.0.0.1:0", cfg.clone()).unwrap();
        let bridge = RedisBridge::start(redis_config(redis_port), &first.handle().publisher()).unwrap();
        let first = first.with_bridge(bridge.clone());
        connected(&bridge);
        fill(&first);
        for room in &room_names {
            let key = format!("{{wsloop:{room}}}:h");
            let end = Instant::now() + Duration::from_secs(30);
            while redis_cmd(redis_port, &[b"XLEN", key.as_bytes()]).as_deref() != Some(&format!(":{PUBLISHED}")) {
                assert!(Instant::now() < end, "stream {key} not filled");
                std::thread::sleep(Duration::from_millis(10));
            }
            let reply = redis_cmd(redis_port, &[b"XRANGE", key.as_bytes(), b"-", b"+", b"COUNT", b"1"]).unwrap();
            let i = reply.find("\r\ne\r\n").unwrap() + 5;
            epochs.push(reply[i..].lines().nth(1).unwrap().parse::<u64>().unwrap());
        }
        drop(first);
        drop(bridge);
        let bridge = RedisBridge::start(redis_config(redis_port), &server.handle().publisher()).unwrap();
        connected(&bridge);
        server.with_bridge(bridge)
    } else {
        fill(&server);
        server
    };
    let addr = server.local_addr();
    let handle = server.handle();
    let running = server.start(|_| Rooms).unwrap();
    if redis_port == 0 {
        for room in &room_names {
            epochs.push(probe_epoch(addr, room));
        }
    }
    let epochs: Vec<String> = epochs.iter().map(u64::to_string).collect();
    println!("ready {addr} {}", epochs.join(" "));
    let _ = std::io::stdout().flush();
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
    handle.stop();
    let _ = running.join();
}

fn redis_config(port: u16) -> RedisConfig {
    let mut rc = RedisConfig::from_url(&format!("redis://127.0.0.1:{port}/")).unwrap();
    rc.history = 1000;
    rc
}

struct RedisProc(Child, u16);

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One command; the reply as text (the first read), `None` when Redis is not there.
fn redis_cmd(port: u16, args: &[&[u8]]) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        cmd.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        cmd.extend_from_slice(a);
        cmd.extend_from_slice(b"\r\n");
    }
    s.write_all(&cmd).ok()?;
    let mut buf = vec![0u8; 1 << 16];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
}

fn commandstats(port: u16) -> Vec<(String, u64)> {
    let info = redis_cmd(port, &[b"INFO", b"commandstats"]).unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_string(), rest.split(',').next()?.parse().ok()?))
        })
        .collect()
}

/// The room's epoch, from the `l` a client with a made-up position is told.
fn probe_epoch(addr: SocketAddr, room: &str) -> u64 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request(addr, &format!("/{room}?since=1&epoch=1")).as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "probe closed");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let mut frames = Frames { buf: buf[end + 4..].to_vec() };
            while let Some((_, p)) = frames.next_frame() {
                let t = String::from_utf8_lossy(&p).to_string();
                if let Some(rest) = t.strip_prefix("l ") {
                    return rest.split(' ').nth(2).unwrap().parse().unwrap();
                }
            }
        }
    }
}

fn request(addr: SocketAddr, target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: wsloop.v1\r\n\r\n"
    )
}

/// Unmasked server frames out of a byte buffer.
struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let (len, hl) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < hl + len {
            return None;
        }
        let op = b[0] & 0x0f;
        let payload = b[hl..hl + len].to_vec();
        self.buf.drain(..hl + len);
        Some((op, payload))
    }
}

enum Phase {
    Connecting,
    Upgrading,
    Open,
    Done,
}

struct Client {
    stream: TcpStream,
    phase: Phase,
    buf: Vec<u8>,
    msgs: u64,
}

/// Connects every client at once; returns when each is live (or failed, or 60 s).
fn storm(addr: SocketAddr, targets: &[String], recover: bool) -> (Duration, Duration, usize, usize, usize) {
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(4096);
    let start = Instant::now();
    let mut clients = Vec::with_capacity(targets.len());
    for (i, _) in targets.iter().enumerate() {
        if i % 1000 == 999 {
            // Paced, so that no connect overflows the listen backlog (its drops cost a
            // 1 s SYN retry) and the server has accepted every one when the clock starts.
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut stream = TcpStream::connect(addr).expect("connect");
        poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE).unwrap();
        clients.push(Client { stream, phase: Phase::Connecting, buf: Vec::new(), msgs: 0 });
    }
    // TCP first: the SYN storm of 10,000 connects (listen backlog, SYN retries) is the
    // kernel's; the clock starts when every socket is connected (and accepted: half a
    // second later) and all the upgrade requests go out at once.
    let mut connected = 0;
    let end = Instant::now() + Duration::from_secs(60);
    while connected < targets.len() && Instant::now() < end {
        poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
        for ev in events.iter() {
            let c = &mut clients[ev.token().0];
            if matches!(c.phase, Phase::Connecting) && ev.is_writable() && c.stream.peer_addr().is_ok() {
                c.phase = Phase::Upgrading;
                connected += 1;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let tcp_time = start.elapsed();
    let start = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        if matches!(c.phase, Phase::Upgrading) {
            c.stream.write_all(request(addr, &targets[i]).as_bytes()).expect("request fits");
        }
    }
    eprintln!("    ({connected} TCP connections in {:.0} ms before the clock starts)", tcp_time.as_secs_f64() * 1e3);
    let (mut done, mut recovered, mut lost, mut failed) = (0, 0, 0, 0);
    let mut times = Vec::with_capacity(targets.len());
    let deadline = start + Duration::from_secs(60);
    let mut chunk = vec![0u8; 64 << 10];
    while done < targets.len() && Instant::now() < deadline {
        poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut clients[i];
            if !ev.is_readable() || matches!(c.phase, Phase::Connecting) {
                continue;
            }
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        if !matches!(c.phase, Phase::Done) {
                            c.phase = Phase::Done;
                            failed += 1;
                            done += 1;
                        }
                        break;
                    }
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        if !matches!(c.phase, Phase::Done) {
                            c.phase = Phase::Done;
                            failed += 1;
                            done += 1;
                        }
                        break;
                    }
                }
            }
            if matches!(c.phase, Phase::Upgrading) {
                if let Some(end) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    if !c.buf.starts_with(b"HTTP/1.1 101") {
                        c.phase = Phase::Done;
                        failed += 1;
                        done += 1;
                        continue;
                    }
                    c.buf.drain(..end + 4);
                    c.phase = Phase::Open;
                    if !recover {
                        // Live only: upgraded is live.
                        c.phase = Phase::Done;
                        times.push(start.elapsed());
                        recovered += 1;
                        done += 1;
                        continue;
                    }
                }
            }
            if matches!(c.phase, Phase::Open) {
                let mut frames = Frames { buf: std::mem::take(&mut c.buf) };
                while let Some((_, p)) = frames.next_frame() {
                    match p.first() {
                        Some(b'm') => c.msgs += 1,
                        Some(b'r') => {
                            c.phase = Phase::Done;
                            times.push(start.elapsed());
                            if c.msgs == BEHIND {
                                recovered += 1;
                            } else {
                                failed += 1;
                            }
                            done += 1;
                            break;
                        }
                        Some(b'l') => {
                            c.phase = Phase::Done;
                            times.push(start.elapsed());
                            lost += 1;
                            done += 1;
                            break;
                        }
                        _ => {}
                    }
                }
                c.buf = frames.buf;
            }
        }
    }
    failed += targets.len() - done;
    times.sort();
    let all = times.last().copied().unwrap_or(Duration::MAX);
    let p50 = times.get(times.len() / 2).copied().unwrap_or(Duration::MAX);
    (all, p50, recovered, lost, failed)
}

fn raise_fd_limit(want: usize) {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = (want as libc::rlim_t).min(l.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

/// Pins the calling thread to `core`.
fn pin(core: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; sched_setaffinity
    // reads it for the given size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// User plus system time of process `pid`.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(ticks as f64 / hz)
}
