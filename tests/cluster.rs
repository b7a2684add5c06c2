//! Two `wsloop rooms --redis` nodes behind nginx (deploy/nginx/wsloop.conf), sharing one
//! room through a redis-server this test starts: every message reaches every client
//! exactly once and in each publisher's order, across nodes; Redis dies and comes back
//! on the same port, local delivery goes on meanwhile, and delivery is complete again
//! once the bridge has reconnected.
//!
//! redis-server and nginx come from Debian (scripts/test.sh installs them). Without them
//! the test is skipped, except under CI=true, where it fails.
#![cfg(all(feature = "redis", feature = "cli"))]

mod redis_util;

use redis_util::{accepts, free_port, metric, metrics, start_node, start_redis, tool, wait_until, Proc, TempDir};
use std::collections::HashMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

const ROOM: &str = "lobby";
const CHANNEL: &str = "wsloop:lobby";

/// Nodes subscribed to the room's channel, as Redis sees it.
fn numsub(port: u16) -> i64 {
    redis_util::numsub(port, CHANNEL.as_bytes())
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
    let tmp = TempDir::new("cluster");
    let dir = tmp.0.as_path();
    let redis_port = free_port();
    let mut redis = start_redis(&redis_bin, redis_port, dir, "redis-1");
    let url = format!("redis://127.0.0.1:{redis_port}/");
    let a = start_node("node-a", &["--redis", &url], dir);
    let b = start_node("node-b", &["--redis", &url], dir);
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
    let _redis = start_redis(&redis_bin, redis_port, dir, "redis-2");
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
