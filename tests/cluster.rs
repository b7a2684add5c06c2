//! Two `wsloop rooms --redis` nodes behind nginx (deploy/nginx/wsloop.conf), sharing one
//! room through a redis-server this test starts: every message reaches every client
//! exactly once and in each publisher's order, across nodes; Redis dies and comes back
//! on the same port, local delivery goes on meanwhile, and delivery is complete again
//! once the bridge has reconnected.
//!
//! redis-server and nginx come from Debian (scripts/test.sh installs them). Without them
//! the test is skipped, except under CI=true, where it fails.
#![cfg(all(feature = "redis", feature = "cli"))]

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

const ROOM: &str = "lobby";
const CHANNEL: &str = "wsloop:lobby";

/// A child process stopped (by its own pid) when dropped.
struct Proc {
    name: String,
    child: Child,
    /// Stop with SIGTERM first: nginx's master then ends its workers, which a SIGKILL
    /// to the master would leave running.
    graceful: bool,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let out = File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.into(), child, graceful: false }
    }

    fn kill(&mut self) {
        if self.graceful && matches!(self.child.try_wait(), Ok(None)) {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            wait_until(Duration::from_secs(5), || !matches!(self.child.try_wait(), Ok(None)));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early: {status}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A scratch directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("wsloop-cluster-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The processes' logs explain most failures.
            for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    eprintln!("---- {} ----\n{text}", e.path().display());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The path of a Debian-installed tool, or `None` (a failure under CI=true).
fn tool(name: &str) -> Option<PathBuf> {
    let dirs = std::env::var("PATH").unwrap_or_default();
    let found = dirs
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is not installed (scripts/test.sh installs it): CI must not skip this test"
        );
        eprintln!("cluster: {name} not installed, skipping (scripts/test.sh installs it)");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// One command to Redis in RESP; the raw reply (small replies only).
fn redis_cmd(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).ok()?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Nodes subscribed to the room's channel, as Redis sees it.
fn numsub(port: u16) -> i64 {
    redis_cmd(port, &["PUBSUB", "NUMSUB", CHANNEL])
        .and_then(|r| r.lines().last().and_then(|l| l.strip_prefix(':')).and_then(|n| n.parse().ok()))
        .unwrap_or(-1)
}

fn start_redis(bin: &Path, port: u16, dir: &Path, n: usize) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--dir"])
        .arg(dir);
    let mut p = Proc::spawn("redis-server", &mut cmd, &dir.join(format!("redis-{n}.log")));
    let up = wait_until(Duration::from_secs(10), || {
        p.assert_running();
        redis_cmd(port, &["PING"]).is_some_and(|r| r.starts_with("+PONG"))
    });
    assert!(up, "redis-server did not answer PING on port {port}");
    p
}

/// The admin page of a node, as (series -> value).
fn metrics(admin: u16) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)) else {
        return out;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    for line in body.lines().filter(|l| l.starts_with("wsloop_redis_")) {
        if let Some((k, v)) = line.rsplit_once(' ') {
            out.insert(k.to_string(), v.parse().unwrap_or(f64::NAN));
        }
    }
    out
}

fn metric(admin: u16, series: &str) -> f64 {
    metrics(admin).get(series).copied().unwrap_or(f64::NAN)
}

struct Node {
    port: u16,
    admin: u16,
    _proc: Proc,
}

fn start_node(name: &str, redis_port: u16, dir: &Path) -> Node {
    let (port, admin) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsloop"));
    cmd.args(["rooms", "--workers", "2"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--redis", &format!("redis://127.0.0.1:{redis_port}/")])
        .env("RUST_LOG", "info");
    let mut p = Proc::spawn(name, &mut cmd, &dir.join(format!("{name}.log")));
    let up = wait_until(Duration::from_secs(10), || {
        p.assert_running();
        accepts(port) && accepts(admin)
    });
    assert!(up, "{name} did not start listening");
    Node { port, admin, _proc: p }
}

fn start_nginx(bin: &Path, dir: &Path, upstreams: [u16; 2]) -> (Proc, u16) {
    let port = free_port();
    let site = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx/wsloop.conf"))
        .expect("deploy/nginx/wsloop.conf");
    assert!(site.contains("127.0.0.1:9001") && site.contains("127.0.0.1:9002") && site.contains("listen 80;"));
    let site = site
        .replace("127.0.0.1:9001", &format!("127.0.0.1:{}", upstreams[0]))
        .replace("127.0.0.1:9002", &format!("127.0.0.1:{}", upstreams[1]))
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    std::fs::write(dir.join("wsloop.conf"), site).unwrap();
    let d = dir.display();
    let main = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         include {d}/wsloop.conf;\n}}\n"
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf).arg("-p").arg(dir).arg("-e").arg(dir.join("nginx-error.log"));
    let mut p = Proc::spawn("nginx", &mut cmd, &dir.join("nginx.log"));
    p.graceful = true;
    let up = wait_until(Duration::from_secs(10), || {
        p.assert_running();
        accepts(port)
    });
    assert!(up, "nginx did not start listening on {port}");
    (p, port)
}

/// A room member: a blocking client with a short read timeout.
struct Client {
    name: String,
    ws: WebSocket<TcpStream>,
}

impl Client {
    fn connect(name: &str, port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let url = format!("ws://127.0.0.1:{port}/{ROOM}");
        let (ws, _) = tungstenite::client(url, stream).unwrap_or_else(|e| panic!("{name}: handshake: {e}"));
        ws.get_ref().set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        Client { name: name.into(), ws }
    }

    /// Message `seq` of phase `phase` from this client: text when even, binary when odd,
    /// so opcodes are checked across nodes too.
    fn send(&mut self, phase: u32, seq: u32) {
        let body = format!("{phase}:{}:{seq}", self.name);
        let msg = if seq.is_multiple_of(2) { Message::text(body) } else { Message::binary(body.into_bytes()) };
        self.ws.send(msg).unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// The next data message as (phase, sender, seq, was text), or None after a timeout.
    fn recv(&mut self) -> Option<(u32, String, u32, bool)> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Some(parse(t.as_str(), true)),
                Ok(Message::Binary(b)) => return Some(parse(std::str::from_utf8(&b).expect("utf-8 body"), false)),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return None
                }
                Err(e) => panic!("{}: read: {e}", self.name),
            }
        }
    }
}

fn parse(s: &str, text: bool) -> (u32, String, u32, bool) {
    let mut it = s.splitn(3, ':');
    let phase = it.next().unwrap().parse().unwrap();
    let from = it.next().unwrap().to_string();
    let seq = it.next().unwrap().parse().unwrap();
    (phase, from, seq, text)
}

/// Every client sends `per_client` messages of `phase`; every client must then receive
/// all of them, exactly once, each sender's in order, opcodes kept. Messages of other
/// phases that arrive meanwhile are ignored.
fn round(clients: &mut [Client], phase: u32, per_client: u32) {
    for seq in 0..per_client {
        for c in clients.iter_mut() {
            c.send(phase, seq);
        }
    }
    let senders: Vec<String> = clients.iter().map(|c| c.name.clone()).collect();
    let expected = senders.len() * per_client as usize;
    let deadline = Instant::now() + Duration::from_secs(20);
    for c in clients.iter_mut() {
        let mut next: HashMap<String, u32> = senders.iter().map(|s| (s.clone(), 0)).collect();
        let mut got = 0;
        while got < expected {
            assert!(
                Instant::now() < deadline,
                "phase {phase}: {} received {got} of {expected} messages; next expected per sender: {next:?}",
                c.name
            );
            let Some((p, from, seq, text)) = c.recv() else { continue };
            if p != phase {
                continue;
            }
            let want = next.get_mut(&from).unwrap_or_else(|| panic!("{}: message from unknown {from}", c.name));
            assert_eq!(seq, *want, "phase {phase}: {} got {from}'s #{seq}, expected #{want}", c.name);
            assert_eq!(text, seq.is_multiple_of(2), "phase {phase}: opcode of {from}'s #{seq} changed on the way");
            *want += 1;
            got += 1;
        }
        // Nothing more of this phase: a duplicate would show up here.
        let quiet_until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < quiet_until {
            if let Some((p, from, seq, _)) = c.recv() {
                assert_ne!(p, phase, "phase {phase}: {} got {from}'s #{seq} twice", c.name);
            }
        }
    }
}

#[test]
fn rooms_span_nodes_through_redis_and_survive_a_redis_restart() {
    let (Some(redis_bin), Some(nginx_bin)) = (tool("redis-server"), tool("nginx")) else {
        return;
    };
    let tmp = TempDir::new();
    let dir = tmp.0.as_path();
    let redis_port = free_port();
    let mut redis = start_redis(&redis_bin, redis_port, dir, 1);
    let a = start_node("node-a", redis_port, dir);
    let b = start_node("node-b", redis_port, dir);
    let (_nginx, lb) = start_nginx(&nginx_bin, dir, [a.port, b.port]);

    // Direct clients guarantee both nodes have members; the rest come through nginx.
    let mut clients = vec![
        Client::connect("a0", a.port),
        Client::connect("a1", a.port),
        Client::connect("b0", b.port),
        Client::connect("b1", b.port),
        Client::connect("lb0", lb),
        Client::connect("lb1", lb),
        Client::connect("lb2", lb),
    ];
    assert!(
        wait_until(Duration::from_secs(10), || numsub(redis_port) == 2),
        "both nodes should subscribe to {CHANNEL}; Redis reports {}",
        numsub(redis_port)
    );
    round(&mut clients, 1, 40);

    // Redis dies. Local delivery goes on; publishes to the cluster are counted lost.
    redis.kill();
    for n in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(10), || metric(n.admin, "wsloop_redis_connected") == 0.0),
            "a node should notice that Redis is gone"
        );
    }
    for seq in 0..5 {
        clients[0].send(2, seq);
    }
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while next < 5 {
        assert!(Instant::now() < deadline, "a1 got {next} of a0's 5 messages while Redis was down");
        if let Some((p, from, seq, _)) = clients[1].recv() {
            assert_eq!((p, from.as_str(), seq), (2, "a0", next), "local delivery while Redis is down");
            next += 1;
        }
    }
    let lost = r#"wsloop_redis_lost_total{reason="disconnected"}"#;
    assert!(
        wait_until(Duration::from_secs(10), || metric(a.admin, lost) >= 5.0),
        "publishes while Redis is down are counted lost: {}",
        metric(a.admin, lost)
    );

    // Redis is back on the same port: the bridges reconnect and subscribe again.
    let _redis = start_redis(&redis_bin, redis_port, dir, 2);
    for n in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(20), || metric(n.admin, "wsloop_redis_connected") == 1.0),
            "a node should reconnect to Redis"
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || numsub(redis_port) == 2),
        "both nodes should subscribe again; Redis reports {}",
        numsub(redis_port)
    );
    round(&mut clients, 3, 40);

    for n in [&a, &b] {
        let m = metrics(n.admin);
        assert!(m["wsloop_redis_received_total"] > 0.0, "{m:?}");
        assert!(m["wsloop_redis_published_total"] > 0.0, "{m:?}");
        assert!(m["wsloop_redis_reconnects_total"] >= 2.0, "{m:?}");
        assert_eq!(m[r#"wsloop_redis_lost_total{reason="queue_full"}"#], 0.0, "{m:?}");
    }
}
