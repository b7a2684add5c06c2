//! Helpers for the tests that start their own redis-server processes: processes stopped
//! by their own pid, redis-servers and Redis Clusters on free loopback ports, a small
//! RESP client, wsloop nodes as child processes or in this process, and a scratch
//! directory that shows the processes' logs when a test fails.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wsloop::redis::{RedisBridge, RedisConfig};
use wsloop::server::{Config, Publisher, Rooms, Running, Server};

/// A child process killed (SIGKILL, by its own pid) when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// Stop with SIGTERM first: nginx's master then ends its workers, which a SIGKILL
    /// to the master would leave running.
    pub graceful: bool,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
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

    /// SIGKILL (std's `Child::kill`), after up to 5 s of SIGTERM when `graceful`; then
    /// reaped.
    pub fn kill(&mut self) {
        if self.graceful && matches!(self.child.try_wait(), Ok(None)) {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            wait_until(Duration::from_secs(5), || !matches!(self.child.try_wait(), Ok(None)));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn assert_running(&mut self) {
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

/// A scratch directory removed when dropped; on a failing test it prints the logs.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("wsloop-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(60).collect();
                    eprintln!("---- {} (last lines) ----", e.path().display());
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The path of an installed tool, or `None` (a failure under CI=true).
pub fn tool(name: &str) -> Option<PathBuf> {
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
        eprintln!("{name} not installed, skipping (scripts/test.sh installs it)");
    }
    found
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
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

pub fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A RESP reply, as far as these tests need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    pub fn text(&self) -> String {
        match self {
            Reply::Simple(s) | Reply::Error(s) => s.clone(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        }
    }
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1.min(line.len()));
    let bad = || std::io::Error::other(format!("bad reply line {line:?}"));
    Ok(match kind {
        "+" => Reply::Simple(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut b = vec![0u8; n as usize + 2];
                r.read_exact(&mut b)?;
                b.truncate(n as usize);
                Reply::Bulk(Some(b))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_reply(r)?);
            }
            Reply::Array(items)
        }
        _ => return Err(bad()),
    })
}

/// One command (binary-safe arguments) to the Redis on `port`; its reply.
pub fn redis(port: u16, args: &[&[u8]]) -> std::io::Result<Reply> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        cmd.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        cmd.extend_from_slice(a);
        cmd.extend_from_slice(b"\r\n");
    }
    (&s).write_all(&cmd)?;
    read_reply(&mut BufReader::new(s))
}

pub fn redis_str(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
    redis(port, &a)
}

/// Subscribers of `channel` as Redis counts them (`PUBSUB NUMSUB`), or -1 without an answer.
pub fn numsub(port: u16, channel: &[u8]) -> i64 {
    subscribers(port, b"NUMSUB", channel)
}

/// Sharded subscribers of `channel` on the shard on `port` (`PUBSUB SHARDNUMSUB`), or -1.
pub fn shard_numsub(port: u16, channel: &str) -> i64 {
    subscribers(port, b"SHARDNUMSUB", channel.as_bytes())
}

fn subscribers(port: u16, which: &[u8], channel: &[u8]) -> i64 {
    match redis(port, &[b"PUBSUB", which, channel]) {
        Ok(Reply::Array(items)) => match items.get(1) {
            Some(Reply::Int(n)) => *n,
            _ => -1,
        },
        _ => -1,
    }
}

/// Calls of `command` (lower case) in the `INFO commandstats` of the Redis on `port`.
pub fn calls(port: u16, command: &str) -> u64 {
    let info = redis_str(port, &["INFO", "commandstats"]).map(|r| r.text()).unwrap_or_default();
    let key = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A redis-server on loopback `port`, without persistence, in the foreground: its files
/// in `data`, its output in `log`, `extra` arguments last. Returns once it answers PING.
fn spawn_redis(bin: &Path, name: &str, port: u16, data: &Path, log: &Path, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--dir"])
        .arg(data)
        .args(extra);
    let mut p = Proc::spawn(name, &mut cmd, log);
    let up = wait_until(Duration::from_secs(10), || {
        p.assert_running();
        redis_str(port, &["PING"]).is_ok_and(|r| r == Reply::Simple("PONG".into()))
    });
    assert!(up, "{name} did not answer PING on port {port}");
    p
}

/// A redis-server on loopback `port` (see `spawn_redis`), its files and `<name>.log` in
/// `dir`.
pub fn start_redis(bin: &Path, port: u16, dir: &Path, name: &str) -> Proc {
    spawn_redis(bin, name, port, dir, &dir.join(format!("{name}.log")), &[])
}

/// A redis-server of one test's own on a free loopback port; killed, and its scratch
/// directory removed, when dropped.
pub struct LocalRedis {
    pub port: u16,
    bin: PathBuf,
    /// `None` between `kill` and `start`.
    proc: Option<Proc>,
    starts: usize,
    /// redis-server arguments after ours.
    extra: Vec<String>,
    /// Declared last: dropped after the process.
    pub dir: TempDir,
}

impl LocalRedis {
    /// Starts one, or `None` when redis-server is not installed (a failure under CI=true).
    pub fn start_new(what: &str) -> Option<LocalRedis> {
        Self::start_with(what, &[])
    }

    /// `start_new` with `extra` redis-server arguments (e.g. a `--tls-port` besides the
    /// plain one).
    pub fn start_with(what: &str, extra: &[&str]) -> Option<LocalRedis> {
        let bin = tool("redis-server")?;
        let extra = extra.iter().map(|a| a.to_string()).collect();
        let mut r = LocalRedis { port: free_port(), bin, proc: None, starts: 0, extra, dir: TempDir::new(what) };
        r.start();
        Some(r)
    }

    /// Starts it again on the same port (after `kill`); returns once it answers PING.
    pub fn start(&mut self) {
        self.kill();
        self.starts += 1;
        let name = format!("redis-{}", self.starts);
        let (dir, extra) = (&self.dir.0, self.extra.iter().map(String::as_str).collect::<Vec<_>>());
        self.proc = Some(spawn_redis(&self.bin, &name, self.port, dir, &dir.join(format!("{name}.log")), &extra));
    }

    /// SIGKILL: gone at once, with nothing saved.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Cluster node `n`: a cluster-enabled redis-server on a free port (and a free bus
/// port), its files in `dir/r<n>`, its log `dir/redis-<n>.log`, `extra` arguments added.
pub fn start_cluster_node(bin: &Path, dir: &Path, n: usize, extra: &[&str]) -> (u16, Proc) {
    let (port, bus) = (free_port(), free_port());
    let data = dir.join(format!("r{n}"));
    std::fs::create_dir_all(&data).unwrap();
    let bus = bus.to_string();
    let cluster = ["--cluster-enabled", "yes", "--cluster-port", &bus, "--cluster-config-file", "nodes.conf"];
    let args = [&cluster[..], extra].concat();
    let name = format!("redis-{n}");
    let p = spawn_redis(bin, &name, port, &data, &dir.join(format!("{name}.log")), &args);
    (port, p)
}

pub fn cluster_ok(port: u16) -> bool {
    redis_str(port, &["CLUSTER", "INFO"]).is_ok_and(|r| r.text().contains("cluster_state:ok"))
}

/// `redis-cli --cluster create` over the nodes on `ports`, `replicas` replicas per
/// primary; returns once every node says `cluster_state:ok` (within 30 s).
pub fn create_cluster(cli: &Path, ports: &[u16], replicas: usize) {
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new(cli)
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create");
    assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
    let ok = wait_until(Duration::from_secs(30), || ports.iter().all(|&p| cluster_ok(p)));
    assert!(ok, "the cluster did not become ok");
}

/// The `wsloop_*` series of a node's /metrics, as (series -> value).
pub fn metrics(admin: u16) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)) else {
        return out;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    for line in body.lines().filter(|l| l.starts_with("wsloop_")) {
        if let Some((k, v)) = line.rsplit_once(' ') {
            out.insert(k.to_string(), v.parse().unwrap_or(f64::NAN));
        }
    }
    out
}

pub fn metric(admin: u16, series: &str) -> f64 {
    metrics(admin).get(series).copied().unwrap_or(f64::NAN)
}

/// A `wsloop rooms` process (the binary needs the `cli` feature).
#[cfg(feature = "cli")]
pub struct Node {
    pub port: u16,
    pub admin: u16,
    pub proc: Proc,
}

/// Starts `wsloop rooms` with `redis_args` (e.g. `--redis-cluster URL,...`).
#[cfg(feature = "cli")]
pub fn start_node(name: &str, redis_args: &[&str], dir: &Path) -> Node {
    let (port, admin) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsloop"));
    cmd.args(["rooms", "--workers", "2"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(redis_args)
        .env("RUST_LOG", "info");
    let mut p = Proc::spawn(name, &mut cmd, &dir.join(format!("{name}.log")));
    let up = wait_until(Duration::from_secs(10), || {
        p.assert_running();
        accepts(port) && accepts(admin)
    });
    assert!(up, "{name} did not start listening");
    Node { port, admin, proc: p }
}

/// A `Rooms` server in this process, bridged by Redis; stopped when dropped.
pub struct Bridged {
    pub addr: SocketAddr,
    /// The admin listener, when `cfg.admin_listen` asked for one.
    pub admin: Option<SocketAddr>,
    pub bridge: Arc<RedisBridge>,
    pub publisher: Publisher,
    running: Option<Running>,
}

impl Drop for Bridged {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.handle().stop();
            let _ = r.join();
        }
    }
}

/// Starts `Rooms` with `cfg` on a free loopback port, bridged by Redis as `rc` says.
/// Returns at once: the bridge may not have connected yet.
pub fn start_bridged(cfg: Config, rc: RedisConfig) -> Bridged {
    let server = Server::bind("127.0.0.1:0", cfg).unwrap();
    let publisher = server.handle().publisher();
    let bridge = RedisBridge::start(rc, &publisher).unwrap();
    let server = server.with_bridge(bridge.clone());
    let (addr, admin) = (server.local_addr(), server.admin_addr());
    let running = server.start(|_| Rooms).unwrap();
    Bridged { addr, admin, bridge, publisher, running: Some(running) }
}
