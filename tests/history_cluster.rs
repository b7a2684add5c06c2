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
use std::time::{Duration, Instant};
use v1client::{connect_v1, read_v1, V1};
use wsloop::redis::{Deployment, Endpoint, RedisConfig};
use wsloop::server::{Config, Message};

fn start_node(seeds: &[u16]) -> Bridged {
    let mut rc = RedisConfig::from_url(&format!("redis://127.0.0.1:{}/", seeds[0])).unwrap();
    rc.deployment =
        Deployment::Cluster { seeds: seeds.iter().map(|&port| Endpoint { host: "127.0.0.1".into(), port }).collect() };
    rc.history = 1000;
    let node = start_bridged(Config { workers: 2, history: 1000, ..Config::default() }, rc);
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

#[test]
fn rooms_on_every_shard_recover_on_another_node_with_one_read_each() {
    let (Some(server_bin), Some(cli_bin)) = (tool("redis-server"), tool("redis-cli")) else {
        return;
    };
    let tmp = TempDir::new("history-cluster");
    let dir = tmp.0.as_path();
    let nodes: Vec<(u16, Proc)> = (0..3).map(|n| start_cluster_node(&server_bin, dir, n, &[])).collect();
    let ports: Vec<u16> = nodes.iter().map(|n| n.0).collect();
    create_cluster(&cli_bin, &ports, 0);

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
