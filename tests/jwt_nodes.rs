//! JWT against the `wsloop` binary.
//!
//! Key rotation without a restart: SIGHUP re-reads the key files and the JWKS; a new
//! `kid` is refused before and accepted after; a removed key's tokens are refused after
//! the next SIGHUP; a file that no longer parses (or holds one bad key) is rejected whole
//! and the old keys stay; open connections stay open.
//!
//! Replay across nodes: two `wsloop echo --jwt-require-jti --redis` nodes share the
//! `jti` check through a redis-server this test starts; a token used on one is refused
//! on the other; with Redis gone, tokens are refused with 503, counted and logged.
//! redis-server comes from Debian (scripts/test.sh installs it). Without it the Redis
//! test is skipped, except under CI=true, where it fails.
#![cfg(all(feature = "jwt", feature = "cli"))]

mod ops;
#[path = "common/spawn.rs"]
mod spawn;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use ops::{status, upgrade_request};
use sha2::Sha256;
use spawn::spawn_wsloop;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tungstenite::Message;

const OLD: &[u8] = b"the old secret, 32 bytes or more, 2026-11";
const NEW: &[u8] = b"the new secret, 32 bytes or more, 2026-12";

fn b64(b: impl AsRef<[u8]>) -> String {
    B64URL.encode(b)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(kid: Option<&str>, secret: &[u8]) -> String {
    let header = match kid {
        Some(k) => format!(r#"{{"alg":"HS256","kid":"{k}"}}"#),
        None => r#"{"alg":"HS256"}"#.to_string(),
    };
    let input = format!("{}.{}", b64(header), b64(format!(r#"{{"sub":"u","exp":{}}}"#, now() + 3600)));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(mac.finalize().into_bytes()))
}

fn jwks(keys: &[(&str, &[u8])]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|(kid, k)| format!(r#"{{"kty":"oct","kid":"{kid}","alg":"HS256","k":"{}"}}"#, b64(k)))
        .collect();
    format!(r#"{{"keys":[{}]}}"#, keys.join(","))
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("wsloop-rotation-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `wsloop echo`, killed (by its own pid) on drop.
struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: SocketAddr,
}

impl Node {
    fn start(args: &[&str]) -> Node {
        Self::start_mode("echo", args)
    }

    fn start_mode(mode: &str, args: &[&str]) -> Node {
        let base = [mode, "--listen", "127.0.0.1:0", "--workers", "1"];
        let all: Vec<&str> = base.iter().chain(args).copied().collect();
        let (child, lines) = spawn_wsloop(&all, &[] as &[(&str, &str)]);
        let mut node = Node { child, lines, addr: "0.0.0.0:0".parse().unwrap() };
        let line = node.line_with("listening on ws://");
        let addr = line.split("ws://").nth(1).unwrap().split_whitespace().next().unwrap();
        node.addr = addr.parse().unwrap();
        node
    }

    /// The next log line containing `needle`, within 20 s.
    fn line_with(&self, needle: &str) -> String {
        let mut seen = Vec::new();
        for _ in 0..200 {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => seen.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no log line with {needle:?}; got {seen:?}");
    }

    /// Sends SIGHUP and waits for the reload's log line (`reloaded` or `not reloaded`).
    fn sighup(&self, want: &str) -> String {
        // Our own child, by its pid (as tests/cluster.rs stops nginx).
        let sent = Command::new("kill").args(["-HUP", &self.child.id().to_string()]).status().expect("kill");
        assert!(sent.success());
        self.line_with(want)
    }

    fn status_for(&self, token: &str) -> u16 {
        let auth = format!("Authorization: Bearer {token}");
        let req = upgrade_request(&self.addr.to_string(), "/", &[&auth]);
        status(&ops::raw_exchange(self.addr, &req, false).0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_adds_a_new_kid_then_removes_the_old_key_and_open_connections_stay() {
    let dir = Dir::new("add");
    let path = dir.0.join("keys.json");
    std::fs::write(&path, jwks(&[("2026-11", OLD)])).unwrap();
    let node = Node::start(&["--jwt-jwks", path.to_str().unwrap()]);
    let (old, new) = (token(Some("2026-11"), OLD), token(Some("2026-12"), NEW));
    assert_eq!(node.status_for(&old), 101);
    assert_eq!(node.status_for(&new), 401, "new kid before SIGHUP");
    let url = format!("ws://{}/?access_token={old}", node.addr);
    let (mut ws, _) = ops::handshake(ops::tcp(node.addr), url).expect("upgrade with the old key");

    // Step 1: publish the new key next to the old one.
    std::fs::write(&path, jwks(&[("2026-11", OLD), ("2026-12", NEW)])).unwrap();
    assert!(node.sighup("JWT keys reloaded").contains("2 keys"));
    assert_eq!(node.status_for(&new), 101, "new kid after SIGHUP");
    assert_eq!(node.status_for(&old), 101, "old kid still valid during the overlap");

    // Step 2: retire the old key.
    std::fs::write(&path, jwks(&[("2026-12", NEW)])).unwrap();
    node.sighup("JWT keys reloaded");
    assert_eq!(node.status_for(&old), 401, "removed key after SIGHUP");
    assert_eq!(node.status_for(&token(None, OLD)), 401, "removed key, token without kid");
    assert_eq!(node.status_for(&new), 101);
    // The connection opened with the old key stays open.
    ws.send(Message::Text("still open".into())).unwrap();
    assert_eq!(ops::next_data(&mut ws), Message::Text("still open".into()));
    ops::close(ws);
}

#[test]
fn sighup_with_a_broken_jwks_or_secret_file_keeps_the_old_keys() {
    let dir = Dir::new("broken");
    let (jwks_path, secret) = (dir.0.join("keys.json"), dir.0.join("hs.key"));
    std::fs::write(&jwks_path, jwks(&[("2026-11", OLD)])).unwrap();
    std::fs::write(&secret, NEW).unwrap();
    let kid_secret = format!("file={}", secret.display());
    let node = Node::start(&["--jwt-jwks", jwks_path.to_str().unwrap(), "--jwt-secret-file", &kid_secret]);
    let (old, file) = (token(Some("2026-11"), OLD), token(Some("file"), NEW));
    assert_eq!((node.status_for(&old), node.status_for(&file)), (101, 101));

    // Not JSON any more.
    std::fs::write(&jwks_path, "{\"keys\": [").unwrap();
    let line = node.sighup("JWT keys not reloaded");
    assert!(line.contains("--jwt-jwks") && line.contains("not a JSON Web Key Set"), "{line}");
    assert_eq!((node.status_for(&old), node.status_for(&file)), (101, 101));

    // Valid JSON with one key too weak: the whole file is refused, the good new key too.
    let brand_new = token(Some("2027-01"), b"yet another secret of 32 bytes or more");
    let bad = r#"{"keys":[{"kty":"oct","kid":"2027-01","k":"eWV0IGFub3RoZXIgc2VjcmV0IG9mIDMyIGJ5dGVzIG9yIG1vcmU"},{"kty":"oct","kid":"weak","k":"c2hvcnQ"}]}"#;
    std::fs::write(&jwks_path, bad).unwrap();
    let line = node.sighup("JWT keys not reloaded");
    assert!(line.contains("JWKS key 1: the HS256 secret has 5 bytes"), "{line}");
    assert_eq!(node.status_for(&brand_new), 401);
    assert_eq!(node.status_for(&old), 101);

    // A secret file cut short: refused too, with the file named.
    std::fs::write(&jwks_path, jwks(&[("2026-11", OLD)])).unwrap();
    std::fs::write(&secret, "short").unwrap();
    let line = node.sighup("JWT keys not reloaded");
    assert!(line.contains(&format!("--jwt-secret-file {}", secret.display())), "{line}");
    assert_eq!(node.status_for(&file), 101, "the old secret stays in use");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// redis-server's path, or `None` (a failure under CI=true).
fn redis_server() -> Option<PathBuf> {
    let dirs = std::env::var("PATH").unwrap_or_default();
    let found = dirs
        .split(':')
        .chain(["/usr/bin", "/usr/sbin"])
        .map(|d| PathBuf::from(d).join("redis-server"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "redis-server is not installed (scripts/test.sh installs it): CI must not skip this test"
        );
        eprintln!("jwt_nodes: redis-server not installed, skipping (scripts/test.sh installs it)");
    }
    found
}

/// A redis-server on `port`, killed (by its own pid) on drop.
struct Redis(Child);

impl Redis {
    fn start(bin: &PathBuf, port: u16) -> Redis {
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let up = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "redis-server did not start on port {port}");
        Redis(child)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn jti_token(jti: &str) -> String {
    let claims = format!(r#"{{"sub":"u","jti":"{jti}","exp":{}}}"#, now() + 3600);
    let input = format!("{}.{}", b64(r#"{"alg":"HS256"}"#), b64(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(OLD).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(mac.finalize().into_bytes()))
}

/// `GET /metrics` from the admin listener.
fn metrics(addr: SocketAddr) -> String {
    ops::http_until_eof(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

#[test]
fn a_token_used_on_one_node_is_refused_on_the_other_and_redis_down_is_503() {
    let Some(bin) = redis_server() else {
        return;
    };
    let dir = Dir::new("redis");
    let secret = dir.0.join("hs.key");
    std::fs::write(&secret, OLD).unwrap();
    let port = free_port();
    let redis = Redis::start(&bin, port);
    let url = format!("redis://127.0.0.1:{port}/");
    let prefix = format!("t{}:", std::process::id());
    let admin = format!("127.0.0.1:{}", free_port());
    let common = [
        "--jwt-secret-file",
        secret.to_str().unwrap(),
        "--jwt-require-jti",
        "--redis",
        &url,
        "--redis-prefix",
        &prefix,
    ];
    let a = Node::start(&[&common[..], &["--admin-listen", &admin]].concat());
    // The other node runs `rooms`: both modes share the check.
    let b = Node::start_mode("rooms", &common);
    let (t1, t2) = (jti_token("one"), jti_token("two"));
    assert_eq!(a.status_for(&t1), 101);
    assert_eq!(b.status_for(&t1), 401, "replayed on the other node");
    assert_eq!(a.status_for(&t1), 401, "replayed on the same node");
    assert_eq!(b.status_for(&t2), 101);
    assert_eq!(a.status_for(&t2), 401);
    // The key in Redis, with the token's expiry.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let key = format!("{prefix}jti:one");
    let cmd = format!("*2\r\n$4\r\nPTTL\r\n${}\r\n{key}\r\n", key.len());
    std::io::Write::write_all(&mut c, cmd.as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut c, &mut buf).unwrap();
    let ttl: i64 = std::str::from_utf8(&buf[1..n]).unwrap().trim().parse().unwrap();
    assert!(ttl > 3_500_000 && ttl <= 3_631_000, "PTTL {ttl}");

    // Redis goes away: fail closed.
    drop(c);
    drop(redis);
    let admin_addr: SocketAddr = admin.parse().unwrap();
    let req = upgrade_request(&a.addr.to_string(), "/", &[&format!("Authorization: Bearer {}", jti_token("three"))]);
    let resp = ops::http_until_eof(a.addr, &req);
    assert_eq!(status(&resp), 503, "{resp}");
    assert_eq!(ops::header(&resp, "Retry-After"), Some("1"), "{resp}");
    a.line_with("jti replay check: Redis at 127.0.0.1");
    let m = metrics(admin_addr);
    assert!(m.contains("wsloop_connections_rejected_total{reason=\"replay_check\"} 1"), "{m}");
    // A token without jti is still refused as such (401), not let in.
    let plain = token(None, OLD);
    assert_eq!(a.status_for(&plain), 401);
}
