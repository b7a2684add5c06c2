//! `rediss://`: two `wsloop rooms --redis rediss://app:...@127.0.0.1:PORT/ --redis-ca
//! ca.pem` nodes share a room through a redis-server that speaks only TLS
//! (`--port 0 --tls-port PORT`) and knows only the ACL user `app`, with a CA and a
//! certificate for 127.0.0.1 made here with `openssl`. A node that trusts only the
//! system's roots, and one with a wrong password, never connect, and say why. The same
//! over a Redis Cluster of 3 TLS-only primaries (`tls-cluster yes`) with
//! `--redis-cluster rediss://...`: rooms on every shard, both directions, once each.
//!
//! redis-server (built with TLS, as Debian's is) and openssl come from Debian
//! (scripts/test.sh installs them); without them the test is skipped, except under
//! CI=true, where it fails.
#![cfg(all(feature = "redis", feature = "cli", feature = "tls"))]

#[path = "common/certs.rs"]
mod certs;
mod redis_util;

use redis_util::*;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// A test CA (`ca.pem`) and a leaf for 127.0.0.1 and localhost (`leaf.pem`, `key.pem`) in
/// `dir`, made by the shared test-certificate helper.
fn make_certs(dir: &Path) {
    let made = certs::make_cert(&format!("redis-{}", dir.file_name().unwrap().to_string_lossy()), "ec");
    for f in ["ca.pem", "leaf.pem", "key.pem"] {
        std::fs::copy(made.join(f), dir.join(f)).unwrap();
    }
    let _ = std::fs::remove_dir_all(made);
}

/// The TLS-only redis-server arguments: certificates, no plain port, only user `app`.
fn tls_args(cmd: &mut Command, dir: &Path, port: u16) {
    cmd.args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--tls-cert-file")
        .arg(dir.join("leaf.pem"))
        .arg("--tls-key-file")
        .arg(dir.join("key.pem"))
        .arg("--tls-ca-cert-file")
        .arg(dir.join("ca.pem"))
        .args(["--tls-auth-clients", "no"])
        // Only the ACL user `app` may do anything; the default user is off.
        .args(["--user", "default", "off"])
        .args(["--user", "app", "on", ">s3cret", "~*", "&*", "+@all"]);
}

fn log_has(dir: &Path, name: &str, needle: &str) -> bool {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default().contains(needle)
}

#[test]
fn rooms_span_nodes_through_a_tls_only_redis_with_an_acl_user() {
    let (Some(server_bin), Some(_)) = (tool("redis-server"), tool("openssl")) else {
        return;
    };
    let tmp = TempDir::new("redis-tls");
    let dir = tmp.0.as_path();
    make_certs(dir);
    let port = free_port();
    let mut cmd = Command::new(&server_bin);
    tls_args(&mut cmd, dir, port);
    cmd.arg("--dir").arg(dir);
    let mut redis = Proc::spawn("redis-server", &mut cmd, &dir.join("redis.log"));
    assert!(
        wait_until(Duration::from_secs(10), || {
            redis.assert_running();
            accepts(port)
        }),
        "redis-server did not listen on its TLS port {port}"
    );
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let url = format!("rediss://app:s3cret@127.0.0.1:{port}/");
    let a = start_node("node-a", &["--redis", &url, "--redis-ca", ca], dir);
    let b = start_node("node-b", &["--redis", &url, "--redis-ca", ca], dir);
    // System roots do not vouch for the test CA; a wrong password is refused.
    let c = start_node("node-c", &["--redis", &url], dir);
    let bad = format!("rediss://app:wrong@127.0.0.1:{port}/");
    let d = start_node("node-d", &["--redis", &bad, "--redis-ca", ca], dir);
    for n in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(10), || metric(n.admin, "wsloop_redis_channels") == 0.0
                && metric(n.admin, "wsloop_redis_connected") == 1.0),
            "a node with the right CA and password connects over TLS"
        );
    }

    let join = |port: u16| {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/news"), s).unwrap();
        ws
    };
    let (mut on_a, mut on_b) = (join(a.port), join(b.port));
    assert!(
        wait_until(Duration::from_secs(10), || [&a, &b]
            .iter()
            .all(|n| metric(n.admin, "wsloop_redis_channels") == 2.0)),
        "both nodes subscribe to the room's two channels over TLS"
    );
    for i in 0..20 {
        on_a.send(Message::text(format!("a{i}"))).unwrap();
        on_b.send(Message::binary(format!("b{i}").into_bytes())).unwrap();
    }
    on_a.send(Message::text("end-a")).unwrap();
    on_b.send(Message::text("end-b")).unwrap();
    for ws in [&mut on_a, &mut on_b] {
        let (mut next_a, mut next_b, mut ends) = (0, 0, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while ends < 2 {
            assert!(Instant::now() < deadline, "got a0..a{next_a} and b0..b{next_b}, {ends} ends");
            let m = ws.read().expect("read");
            let text = String::from_utf8(m.clone().into_data().to_vec()).unwrap();
            match text.as_bytes()[0] {
                _ if text.starts_with("end-") => ends += 1,
                b'a' => {
                    assert!(m.is_text() && text == format!("a{next_a}"), "{text} out of order or twice");
                    next_a += 1;
                }
                b'b' => {
                    assert!(m.is_binary() && text == format!("b{next_b}"), "{text} out of order or twice");
                    next_b += 1;
                }
                _ => panic!("unexpected {text}"),
            }
        }
        assert_eq!((next_a, next_b), (20, 20), "every message once");
    }
    for n in [&a, &b] {
        let m = metrics(n.admin);
        assert_eq!(m["wsloop_redis_published_total"], 21.0, "{m:?}");
        assert_eq!(m["wsloop_redis_received_total"], 21.0, "{m:?}");
    }

    assert_eq!(metric(c.admin, "wsloop_redis_connected"), 0.0);
    assert!(
        wait_until(Duration::from_secs(5), || log_has(dir, "node-c", "invalid peer certificate")),
        "node-c should log why the certificate is refused"
    );
    assert_eq!(metric(d.admin, "wsloop_redis_connected"), 0.0);
    assert!(
        wait_until(Duration::from_secs(5), || log_has(dir, "node-d", "AUTH refused")),
        "node-d should log that AUTH was refused"
    );

    // The --jwt-require-jti check over the same TLS connection setup: a jti is claimed once.
    #[cfg(feature = "jwt")]
    {
        use wsloop::auth::{AuthError, ReplayStore};
        let mut cfg = wsloop::redis::RedisConfig::from_url(&url).unwrap();
        cfg.tls = Some(wsloop::redis::TlsRoots::CaFile(dir.join("ca.pem")));
        let store = wsloop::redis::RedisReplayStore::new(&cfg).timeout(Duration::from_secs(2));
        let until = 4_000_000_000;
        assert_eq!(store.claim("tls-jti", until, 0), Ok(()));
        assert_eq!(store.claim("tls-jti", until, 0), Err(AuthError::Replayed));
        cfg.tls = Some(wsloop::redis::TlsRoots::System);
        let untrusting = wsloop::redis::RedisReplayStore::new(&cfg).timeout(Duration::from_secs(2));
        assert_eq!(untrusting.claim("other", until, 0), Err(AuthError::ReplayCheckUnavailable));
    }
}

#[test]
fn rooms_span_nodes_through_a_tls_only_redis_cluster() {
    let (Some(server_bin), Some(cli_bin), Some(_)) = (tool("redis-server"), tool("redis-cli"), tool("openssl")) else {
        return;
    };
    let tmp = TempDir::new("redis-tls-cluster");
    let dir = tmp.0.as_path();
    make_certs(dir);
    let mut shards = Vec::new();
    for n in 0..3 {
        let (port, bus) = (free_port(), free_port());
        let nd = dir.join(format!("r{n}"));
        std::fs::create_dir_all(&nd).unwrap();
        let mut cmd = Command::new(&server_bin);
        tls_args(&mut cmd, dir, port);
        cmd.args(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string(), "--tls-cluster", "yes"])
            .args(["--cluster-config-file", "nodes.conf", "--dir"])
            .arg(&nd);
        let mut p = Proc::spawn(&format!("redis-{n}"), &mut cmd, &dir.join(format!("redis-{n}.log")));
        assert!(wait_until(Duration::from_secs(10), || {
            p.assert_running();
            accepts(port)
        }));
        shards.push((port, p));
    }
    let ca = dir.join("ca.pem");
    let tls_cli = |args: &[&str]| {
        Command::new(&cli_bin)
            .args(["--tls", "--cacert"])
            .arg(&ca)
            .args(["--user", "app", "--pass", "s3cret", "--no-auth-warning"])
            .args(args)
            .output()
            .expect("redis-cli")
    };
    let addrs: Vec<String> = shards.iter().map(|(p, _)| format!("127.0.0.1:{p}")).collect();
    let out = tls_cli(
        &[&["--cluster", "create"][..], &addrs.iter().map(String::as_str).collect::<Vec<_>>(), &["--cluster-yes"]]
            .concat(),
    );
    assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
    let port0 = shards[0].0.to_string();
    assert!(
        wait_until(Duration::from_secs(20), || String::from_utf8_lossy(
            &tls_cli(&["-p", &port0, "cluster", "info"]).stdout
        )
        .contains("cluster_state:ok")),
        "the TLS cluster did not become ok"
    );
    // A room on every shard, as the shards themselves say (the others answer MOVED).
    let mut rooms: Vec<(String, u16)> = Vec::new();
    for i in 0..100 {
        let room = format!("t{i}");
        for (p, _) in &shards {
            let out = tls_cli(&["-p", &p.to_string(), "spublish", &format!("wsloop:{room}"), "probe"]);
            if String::from_utf8_lossy(&out.stdout).trim().parse::<i64>().is_ok() && !rooms.iter().any(|(_, q)| q == p)
            {
                rooms.push((room.clone(), *p));
            }
        }
        if rooms.len() == 3 {
            break;
        }
    }
    assert_eq!(rooms.len(), 3, "a room on every shard: {rooms:?}");
    let ca_s = ca.to_str().unwrap();
    let seeds = format!("rediss://app:s3cret@127.0.0.1:{}", shards[1].0);
    let a = start_node("node-a", &["--redis-cluster", &seeds, "--redis-ca", ca_s], dir);
    let b = start_node("node-b", &["--redis-cluster", &seeds, "--redis-ca", ca_s], dir);
    for n in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(15), || metric(n.admin, "wsloop_redis_connected") == 1.0
                && metric(n.admin, "wsloop_redis_shards") == 3.0),
            "a node connects to every shard over TLS"
        );
    }
    let join = |port: u16, room: &str| {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tungstenite::client(format!("ws://127.0.0.1:{port}/{room}"), s).unwrap().0
    };
    let mut pairs: Vec<_> = rooms.iter().map(|(r, _)| (join(a.port, r), join(b.port, r))).collect();
    assert!(
        wait_until(Duration::from_secs(15), || [&a, &b]
            .iter()
            .all(|n| metric(n.admin, "wsloop_redis_channels") == 6.0)),
        "both nodes subscribe to two channels per room"
    );
    for (i, (on_a, on_b)) in pairs.iter_mut().enumerate() {
        for k in 0..10 {
            on_a.send(Message::text(format!("a{i}.{k}"))).unwrap();
            on_b.send(Message::text(format!("b{i}.{k}"))).unwrap();
        }
        for ws in [on_a, on_b] {
            let mut got: Vec<String> = (0..20).map(|_| ws.read().unwrap().into_text().unwrap().to_string()).collect();
            let from_a: Vec<_> = got.iter().filter(|m| m.starts_with('a')).cloned().collect();
            got.retain(|m| m.starts_with('b'));
            assert_eq!(from_a, (0..10).map(|k| format!("a{i}.{k}")).collect::<Vec<_>>(), "room {i}, in order");
            assert_eq!(got, (0..10).map(|k| format!("b{i}.{k}")).collect::<Vec<_>>(), "room {i}, in order");
        }
    }
    for n in [&a, &b] {
        let m = metrics(n.admin);
        assert_eq!(m["wsloop_redis_published_total"], 30.0, "{m:?}");
        assert_eq!(m["wsloop_redis_received_total"], 30.0, "{m:?}");
    }
}
