//! Key rotation without a restart, against the `wsloop` binary: SIGHUP re-reads the key
//! files and the JWKS; a new `kid` is refused before and accepted after; a removed key's
//! tokens are refused after the next SIGHUP; a file that no longer parses (or holds one
//! bad key) is rejected whole and the old keys stay; open connections stay open.
#![cfg(all(feature = "jwt", feature = "cli"))]

mod ops;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use ops::{status, upgrade_request};
use sha2::Sha256;
use std::io::{BufRead, BufReader};
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
    let keys: Vec<String> =
        keys.iter().map(|(kid, k)| format!(r#"{{"kty":"oct","kid":"{kid}","alg":"HS256","k":"{}"}}"#, b64(k))).collect();
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsloop"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WSLOOP_")) {
            cmd.env_remove(k);
        }
        let mut child = cmd
            .args(["echo", "--listen", "127.0.0.1:0", "--workers", "1"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsloop");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
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
