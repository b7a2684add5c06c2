//! Room history in a Redis Cluster of 3 primaries this test starts on loopback ports:
//! rooms on every shard; each room's stream `{wsloop:<room>}:h` lives on the shard of
//! the room's channels (the script's `SPUBLISH` and `XADD` in one slot), and a client
//! that missed 100 messages on one node recovers exactly those on another node, which
//! reads each room's stream once (following `MOVED` to its shard).
//!
//! redis-server and redis-cli come from Debian (scripts/test.sh installs them); without
//! them the test is skipped, except under CI=true, where it fails.
#![cfg(all(feature = "redis", feature = "cli", feature = "jwt"))]

mod ops;
mod redis_util;
mod v1client;

use redis_util::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use v1client::{connect_v1, read_v1, V1};
use wsloop::redis::{Deployment, Endpoint, RedisBridge, RedisConfig};
use wsloop::server::{Config, Message, Publisher, Rooms, Running, Server};

fn start_cluster_node(bin: &Path, dir: &Path, n: usize) -> (u16, Proc) {
    let (port, bus) = (free_port(), free_port());
    let nd = dir.join(format!("r{n}"));
    std::fs::create_dir_all(&nd).unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string()])
        .args(["--cluster-config-file", "nodes.conf", "--daemonize", "no", "--dir"])
        .arg(&nd);
    let mut proc = Proc::spawn(&format!("redis-{n}"), &mut cmd, &dir.join(format!("redis-{n}.log")));
    let up = wait_until(Duration::from_secs(10), || {
        proc.assert_running();
        redis_str(port, &["PING"]).is_ok_and(|r| r == Reply::Simple("PONG".into()))
    });
    assert!(up, "redis-server did not answer PING on {port}");
    (port, proc)
}

struct Node {
    addr: std::net::SocketAddr,
    bridge: std::sync::Arc<RedisBridge>,
    publisher: Publisher,
    running: Option<Running>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.handle().stop();
            let _ = r.join();
        }
    }
}

fn start_node(seeds: &[u16]) -> Node {
    let server = Server::bind("127.0.0.1:0", Config { workers: 2, history: 1000, ..Config::default() }).unwrap();
    let mut rc = RedisConfig::from_url(&format!("redis://127.0.0.1:{}/", seeds[0])).unwrap();
    rc.deployment =
        Deployment::Cluster { seeds: seeds.iter().map(|&port| Endpoint { host: "127.0.0.1".into(), port }).collect() };
    rc.history = 1000;
    let publisher = server.handle().publisher();
    let bridge = RedisBridge::start(rc, &publisher).unwrap();
    let server = server.with_bridge(bridge.clone());
    let addr = server.local_addr();
    let running = server.start(|_| Rooms).unwrap();
    let node = Node { addr, bridge, publisher, running: Some(running) };
    assert!(wait_until(Duration::from_secs(15), || node.bridge.is_connected()), "bridge did not connect");
    node
}

/// Entries of `key` as the shard that owns it counts them (the others answer MOVED).
fn xlen(primaries: &[u16], key: &str) -> Option<(u16, i64)> {
    primaries.iter().find_map(|&p| match redis_str(p, &["XLEN", key]) {
        Ok(Reply::Int(n)) => Some((p, n)),
        _ => None,
    })
}

fn calls(port: u16, command: &str) -> u64 {
    let info = redis_str(port, &["INFO", "commandstats"]).map(|r| r.text()).unwrap_or_default();
    let key = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn rooms_on_every_shard_recover_on_another_node_with_one_read_each() {
    let (Some(server_bin), Some(cli_bin)) = (tool("redis-server"), tool("redis-cli")) else {
        return;
    };
    let tmp = TempDir::new("history-cluster");
    let dir = tmp.0.as_path();
    let nodes: Vec<(u16, Proc)> = (0..3).map(|n| start_cluster_node(&server_bin, dir, n)).collect();
    let ports: Vec<u16> = nodes.iter().map(|n| n.0).collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new(&cli_bin)
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create");
    assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
    let ok = |p: u16| redis_str(p, &["CLUSTER", "INFO"]).is_ok_and(|r| r.text().contains("cluster_state:ok"));
    assert!(wait_until(Duration::from_secs(30), || ports.iter().all(|&p| ok(p))), "the cluster did not become ok");

    let a = start_node(&ports);
    let b = start_node(&ports);
    // Two rooms per shard, by where Redis keeps their streams after a first message.
    let mut rooms: Vec<(String, u16)> = Vec::new();
    for i in 0..60 {
        let room = format!("room{i}");
        a.publisher.publish(&room, Message::Text("msg1")).unwrap();
        let key = format!("{{wsloop:{room}}}:h");
        assert!(wait_until(Duration::from_secs(10), || xlen(&ports, &key).is_some_and(|(_, n)| n == 1)), "{key}");
        let owner = xlen(&ports, &key).unwrap().0;
        if rooms.iter().filter(|(_, p)| *p == owner).count() < 2 {
            rooms.push((room, owner));
        }
        if rooms.len() == 6 {
            break;
        }
    }
    assert_eq!(rooms.len(), 6, "rooms on every shard: {rooms:?}");
    // Each room: 100 more while the client is away, from node A.
    for (room, _) in &rooms {
        for i in 2..=101 {
            let text = format!("msg{i}");
            let end = Instant::now() + Duration::from_secs(10);
            while a.publisher.publish(room, Message::Text(&text)).is_err() {
                assert!(Instant::now() < end);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let key = format!("{{wsloop:{room}}}:h");
        assert!(wait_until(Duration::from_secs(10), || xlen(&ports, &key).is_some_and(|(_, n)| n == 101)), "{key}");
    }
    let before: u64 = ports.iter().map(|&p| calls(p, "xrange")).sum();
    for (room, _) in &rooms {
        // The epoch, as a client told `l` learns it.
        let mut probe = connect_v1(b.addr, &format!("/{room}?since=1&epoch=1"), "");
        let V1::Lost { epoch, offset: 101, .. } = read_v1(&mut probe) else { panic!("{room}: expected l") };
        drop(probe);
        let mut c = connect_v1(b.addr, &format!("/{room}?since=1&epoch={epoch}"), "");
        for i in 2..=101u64 {
            assert_eq!(read_v1(&mut c), V1::Msg { room: room.clone(), offset: i, epoch, payload: format!("msg{i}") });
        }
        assert_eq!(read_v1(&mut c), V1::Recovered { room: room.clone(), offset: 101, epoch });
        // Live from here, through SPUBLISH on the room's shard.
        a.publisher.publish(room, Message::Text("msg102")).unwrap();
        assert_eq!(read_v1(&mut c), V1::Msg { room: room.clone(), offset: 102, epoch, payload: "msg102".into() });
    }
    let reads: u64 = ports.iter().map(|&p| calls(p, "xrange")).sum::<u64>() - before;
    // The probe and the client of each room: node B forgets a room between them (its
    // last client left), so at most two reads per room, one per visit.
    assert!(reads <= 2 * rooms.len() as u64, "{reads} XRANGE for {} rooms", rooms.len());
    for (_, owner) in &rooms {
        assert!(calls(*owner, "xrange") > 0, "the shard {owner} served its rooms' reads");
    }
}
