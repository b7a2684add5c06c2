//! Room history in Redis streams, against a redis-server this test starts on a free
//! loopback port and in-process nodes bridged by it: a client that missed 100 messages
//! recovers exactly those, on the node it left and on another one; many clients of one
//! room coming back at once cost one `XRANGE` per room per node; a backend's `EVALSHA`
//! of the script gets an offset and reaches every node; Redis restarted without
//! persistence shows as an epoch change; a recovering client slower than the publisher
//! ends up complete or is told it is not; over `rediss://` (a TLS port besides the plain
//! one, certificates made at test time) history is read through TLS too.
//!
//! redis-server comes from Debian (scripts/test.sh installs it). Without it the test is
//! skipped, except under CI=true, where it fails.
#![cfg(all(feature = "redis", feature = "jwt"))]

#[cfg(feature = "tls")]
#[path = "common/certs.rs"]
mod certs;
mod ops;
mod redis_util;
mod v1client;

use ops::{next_data, Ws};
use redis_util::{calls, numsub, redis, start_bridged, Bridged, LocalRedis, Reply};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use v1client::{connect_v1, read_v1, V1};
use wsloop::redis::{streams, RedisConfig};
use wsloop::server::{Config, Message, Publisher};

const KEY: &str = "history-redis-test-key";

fn start_node(redis_port: u16, history: usize, max_backpressure: usize) -> Bridged {
    let rc = RedisConfig::from_url(&format!("redis://127.0.0.1:{redis_port}/")).unwrap();
    start_node_with(rc, history, max_backpressure)
}

/// A node bridged as `rc` says, with `history` messages kept per room.
fn start_node_with(mut rc: RedisConfig, history: usize, max_backpressure: usize) -> Bridged {
    let cfg = Config {
        workers: 2,
        history,
        max_backpressure,
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        publish_key: wsloop::server::PublishKey::new(KEY.as_bytes()),
        ..Config::default()
    };
    rc.history = history;
    rc.backoff_max = Duration::from_millis(200);
    let node = start_bridged(cfg, rc);
    assert!(wait(|| node.bridge.is_connected()), "bridge did not connect");
    node
}

/// The integer reply of one command, or None (no answer, or another reply).
fn int(port: u16, args: &[&[u8]]) -> Option<i64> {
    match redis(port, args) {
        Ok(Reply::Int(n)) => Some(n),
        _ => None,
    }
}

fn wait(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn publish(p: &Publisher, room: &str, range: std::ops::RangeInclusive<u32>) {
    for i in range {
        let text = format!("msg{i}");
        let end = Instant::now() + Duration::from_secs(10);
        while p.publish(room, Message::Text(&text)).is_err() {
            assert!(Instant::now() < end, "publish queue stayed full");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Reads `m` messages `first..=last` of `room`, then `r <room> <last>`.
fn expect_recovery(ws: &mut Ws, room: &str, first: u64, last: u64, epoch: u64) {
    for i in first..=last {
        let got = read_v1(ws);
        assert_eq!(got, V1::Msg { room: room.into(), offset: i, epoch, payload: format!("msg{i}") });
    }
    assert_eq!(read_v1(ws), V1::Recovered { room: room.into(), offset: last, epoch });
}

/// Reads the `m` messages `first..=last` of `room` (their payloads, in order), then
/// `r <room> <last>`.
fn recovery(ws: &mut Ws, room: &str, first: u64, last: u64, epoch: u64) -> Vec<String> {
    let mut payloads = Vec::new();
    for i in first..=last {
        let got = read_v1(ws);
        let V1::Msg { room: r, offset, epoch: e, payload } = got else { panic!("expected m {i}, got {got:?}") };
        assert_eq!((r.as_str(), offset, e), (room, i, epoch));
        payloads.push(payload);
    }
    assert_eq!(read_v1(ws), V1::Recovered { room: room.into(), offset: last, epoch });
    payloads
}

/// A v1 client on `node` in `room` whose subscription has reached Redis.
fn live_client(node: &Bridged, redis_port: u16, room: &str) -> Ws {
    let ws = connect_v1(node.addr, &format!("/{room}"), "");
    let channel = format!("wsloop:\0{room}");
    assert!(wait(|| numsub(redis_port, channel.as_bytes()) >= 1), "no subscription to {channel:?}");
    ws
}

/// A live client of `room` on `on` gets messages 1 to 5 published on `from`, in order,
/// and leaves; their epoch.
fn five_live(on: &Bridged, from: &Bridged, redis_port: u16, room: &str) -> u64 {
    let mut c = live_client(on, redis_port, room);
    publish(&from.publisher, room, 1..=5);
    let mut epoch = 0;
    for i in 1..=5u64 {
        let V1::Msg { offset, epoch: e, payload, .. } = read_v1(&mut c) else { panic!() };
        assert_eq!((offset, payload), (i, format!("msg{i}")));
        epoch = e;
    }
    epoch
}

#[test]
fn a_client_that_missed_100_messages_recovers_exactly_those_on_its_node_and_on_another() {
    let Some(redis_server) = LocalRedis::start_new("history-redis") else { return };
    let port = redis_server.port;
    let a = start_node(port, 1000, 1 << 20);
    let b = start_node(port, 1000, 1 << 20);
    let epoch = five_live(&a, &b, port, "news");
    assert!(epoch > 1_600_000_000_000_000, "the script's epoch is Redis's clock in µs: {epoch}");
    // 100 messages while away, from both nodes (in turn: one order through Redis).
    for i in 6..=105 {
        let node = if i % 2 == 0 { &a } else { &b };
        publish(&node.publisher, "news", i..=i);
    }
    // Published means queued for Redis: wait until Redis has appended them all.
    assert!(wait(|| int(port, &[b"XLEN", b"{wsloop:news}:h"]) == Some(105)));
    let target = format!("/news?since=5&epoch={epoch}");
    // On the node it left: node A was still subscribed (another client): from memory;
    // on node B, which never had a client of the room: one XRANGE.
    let xrange_before = calls(port, "xrange");
    let mut back_a = connect_v1(a.addr, &target, "");
    // A unsubscribed when its last client left: it reads Redis too.
    let got_a = recovery(&mut back_a, "news", 6, 105, epoch);
    let mut back_b = connect_v1(b.addr, &target, "");
    let got_b = recovery(&mut back_b, "news", 6, 105, epoch);
    // Two publishing nodes race to Redis: its order is the one order, the same on both.
    assert_eq!(got_a, got_b);
    let mut payloads = got_a.clone();
    payloads.sort();
    let mut want: Vec<String> = (6..=105).map(|i| format!("msg{i}")).collect();
    want.sort();
    assert_eq!(payloads, want, "each missed message exactly once");
    let xranges = calls(port, "xrange") - xrange_before;
    assert!((1..=2).contains(&xranges), "{xranges} XRANGE for two nodes");
    // Live from here, on both, in one order.
    publish(&a.publisher, "news", 106..=106);
    for ws in [&mut back_a, &mut back_b] {
        assert_eq!(read_v1(ws), V1::Msg { room: "news".into(), offset: 106, epoch, payload: "msg106".into() });
    }
    // The stream holds what the nodes published.
    assert_eq!(int(port, &[b"XLEN", b"{wsloop:news}:h"]), Some(106));
}

#[test]
fn many_clients_coming_back_at_once_cost_one_xrange_per_room_per_node() {
    let Some(redis_server) = LocalRedis::start_new("history-redis") else { return };
    let port = redis_server.port;
    let feeder = start_node(port, 500, 1 << 20);
    let rooms = ["r0", "r1", "r2"];
    for room in rooms {
        publish(&feeder.publisher, room, 1..=150);
    }
    for room in rooms {
        let key = format!("{{wsloop:{room}}}:h");
        assert!(wait(|| int(port, &[b"XLEN", key.as_bytes()]) == Some(150)), "{room} not appended");
    }
    let epoch_of = |room: &str| -> u64 {
        let key = format!("{{wsloop:{room}}}:h");
        let reply = redis(port, &[b"XRANGE", key.as_bytes(), b"-", b"+", b"COUNT", b"1"]).unwrap();
        // [[id, [field, value, ...]]]: the value of field `e`.
        let Reply::Array(entries) = &reply else { panic!("{reply:?}") };
        let Some(Reply::Array(entry)) = entries.first() else { panic!("an entry: {reply:?}") };
        let Some(Reply::Array(fields)) = entry.get(1) else { panic!("{reply:?}") };
        let e = fields.chunks(2).find(|f| f[0] == Reply::Bulk(Some(b"e".to_vec()))).expect("field e");
        e[1].text().parse().unwrap()
    };
    // A fresh node: nothing of these rooms in memory.
    let fresh = start_node(port, 500, 1 << 20);
    let before = calls(port, "xrange");
    let mut clients = Vec::new();
    for i in 0..60 {
        let room = rooms[i % 3];
        let target = format!("/{room}?since=50&epoch={}", epoch_of(room));
        clients.push((room, connect_v1(fresh.addr, &target, "")));
    }
    for (room, ws) in &mut clients {
        expect_recovery(ws, room, 51, 150, epoch_of(room));
    }
    // epoch_of itself runs XRANGE, twice per client.
    let reads = calls(port, "xrange") - before - 2 * 60;
    assert_eq!(reads, 3, "one history read per room on the fresh node");
}

#[test]
fn a_backend_evalsha_gets_an_offset_and_reaches_every_node() {
    let Some(redis_server) = LocalRedis::start_new("history-redis") else { return };
    let port = redis_server.port;
    let a = start_node(port, 100, 1 << 20);
    let mut c = live_client(&a, port, "feed");
    let load = redis(port, &[b"SCRIPT", b"LOAD", streams::APPEND_SCRIPT.as_bytes()]).unwrap();
    let Reply::Bulk(Some(sha)) = load else { panic!("a sha: {load:?}") };
    for want in 1..=3u64 {
        let reply = redis(
            port,
            &[b"EVALSHA", &sha, b"1", b"{wsloop:feed}:h", b"wsloop:\0feed", b"t", b"from the backend", b"100", b"0"],
        );
        // [offset, epoch]
        let reply = reply.unwrap();
        let Reply::Array(items) = &reply else { panic!("{reply:?}") };
        assert_eq!((items.len(), &items[0]), (2, &Reply::Int(want as i64)), "{reply:?}");
        assert!(matches!(&items[1], Reply::Bulk(Some(_))) && items[1].text().parse::<u64>().is_ok(), "{reply:?}");
        let V1::Msg { offset, payload, .. } = read_v1(&mut c) else { panic!() };
        assert_eq!((offset, payload.as_str()), (want, "from the backend"));
    }
    // A bare client of the room gets the payload as is.
    let mut bare = ops::connect(a.addr, "/feed");
    assert!(wait(|| numsub(port, b"wsloop:\0feed") >= 1));
    redis(port, &[b"EVALSHA", &sha, b"1", b"{wsloop:feed}:h", b"wsloop:\0feed", b"b", b"\x00\x01", b"100", b"0"])
        .unwrap();
    assert_eq!(next_data(&mut bare), tungstenite::Message::Binary(vec![0, 1]));
    let tungstenite::Message::Binary(b) = next_data(&mut c) else { panic!("binary stays binary") };
    assert!(b.starts_with(b"m feed 4 ") && b.ends_with(b"\n\x00\x01"), "{b:?}");
    // A plain PUBLISH on the room channel: delivered, kept nowhere (offset 0).
    redis(port, &[b"PUBLISH", b"wsloop:feed", b"plain"]).unwrap();
    assert_eq!(next_data(&mut bare), tungstenite::Message::Text("plain".into()));
    assert_eq!(read_v1(&mut c), V1::Msg { room: "feed".into(), offset: 0, epoch: 0, payload: "plain".into() });
    assert_eq!(int(port, &[b"XLEN", b"{wsloop:feed}:h"]), Some(4), "not kept");
}

fn api_publish(admin: SocketAddr, room: &str, body: &str) -> String {
    let mut s = ops::tcp(admin);
    let req = format!(
        "POST /publish/{room} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn the_publish_api_goes_through_the_script_and_answers_with_the_offset() {
    let Some(redis_server) = LocalRedis::start_new("history-redis") else { return };
    let port = redis_server.port;
    let a = start_node(port, 100, 1 << 20);
    let b = start_node(port, 100, 1 << 20);
    let mut c = live_client(&b, port, "api");
    for want in 1..=3u64 {
        let resp = api_publish(a.admin.unwrap(), "api", &format!("hello {want}"));
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let body = resp.split("\r\n\r\n").nth(1).unwrap();
        let V1::Msg { offset, epoch, payload, .. } = read_v1(&mut c) else { panic!() };
        assert_eq!(body.trim(), format!("{{\"offset\":{offset},\"epoch\":{epoch}}}"));
        assert_eq!((offset, payload), (want, format!("hello {want}")));
    }
}

#[test]
fn redis_restarted_without_persistence_shows_as_a_new_epoch() {
    let Some(mut redis_server) = LocalRedis::start_new("history-redis") else { return };
    let port = redis_server.port;
    let a = start_node(port, 100, 1 << 20);
    let mut live = live_client(&a, port, "r");
    publish(&a.publisher, "r", 1..=10);
    let mut old = 0;
    for _ in 1..=10 {
        let V1::Msg { epoch, .. } = read_v1(&mut live) else { panic!() };
        old = epoch;
    }
    redis_server.kill();
    assert!(wait(|| !a.bridge.is_connected()), "the bridge did not notice");
    redis_server.start();
    assert!(wait(|| a.bridge.is_connected() && numsub(port, b"wsloop:\0r") >= 1), "no reconnect");
    publish(&a.publisher, "r", 1..=3);
    // The client that stayed: told, then the new epoch's messages.
    let V1::Lost { offset: 0, epoch: new, why, .. } = read_v1(&mut live) else { panic!("expected l") };
    assert_eq!(why, "epoch");
    assert_ne!(new, old);
    for i in 1..=3 {
        assert_eq!(read_v1(&mut live), V1::Msg { room: "r".into(), offset: i, epoch: new, payload: format!("msg{i}") });
    }
    // One coming back with the old epoch: told, then live.
    let mut back = connect_v1(a.addr, &format!("/r?since=10&epoch={old}"), "");
    assert_eq!(read_v1(&mut back), V1::Lost { room: "r".into(), offset: 3, epoch: new, why: "epoch".into() });
    publish(&a.publisher, "r", 4..=4);
    assert_eq!(read_v1(&mut back), V1::Msg { room: "r".into(), offset: 4, epoch: new, payload: "msg4".into() });
}

#[test]
fn a_recovering_client_slower_than_the_publisher_ends_complete_or_is_told() {
    let Some(redis_server) = LocalRedis::start_new("history-redis") else { return };
    let port = redis_server.port;
    let a = start_node(port, 200, 16 << 10);
    let b = start_node(port, 200, 16 << 10);
    publish(&b.publisher, "r", 1..=100);
    // Published means queued for Redis: the probe must find them there.
    assert!(wait(|| int(port, &[b"XLEN", b"{wsloop:r}:h"]) == Some(100)));
    let epoch = {
        let mut probe = connect_v1(a.addr, "/r?since=1&epoch=1", "");
        let V1::Lost { epoch, .. } = read_v1(&mut probe) else { panic!() };
        epoch
    };
    let publisher = {
        let p = b.publisher.clone();
        std::thread::spawn(move || {
            for chunk in 0..20u32 {
                let base = 101 + chunk * 100;
                publish(&p, "r", base..=base + 99);
            }
        })
    };
    let mut c = connect_v1(a.addr, &format!("/r?since=20&epoch={epoch}"), "");
    let (mut next, mut told) = (21u64, 0);
    while next <= 2100 {
        match read_v1(&mut c) {
            V1::Msg { offset, payload, .. } => {
                assert_eq!(offset, next, "a gap nobody was told of");
                assert_eq!(payload, format!("msg{offset}"));
                next += 1;
            }
            V1::Lost { why, offset, epoch: e, .. } => {
                // `gap` when the stream was trimmed past the client before its read.
                assert!(
                    why == "slow" || (why == "gap" && told == 0),
                    "{why} at {offset} (epoch {e}, was {epoch}), next {next}, told {told}"
                );
                assert!(offset + 1 >= next);
                told += 1;
                next = offset + 1;
            }
            V1::Recovered { offset, .. } => assert_eq!(offset, next - 1),
        }
        if next % 20 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    publisher.join().unwrap();
    eprintln!("slow client over Redis: told slow {told} times");
}

/// `rediss://` with an ACL user: the history thread's own connection is TLS too (and
/// authenticates). The redis-server has a TLS port for the nodes, which know only that
/// one, and a plain port for this test's own checks. A client that missed 100 messages
/// recovers them on a node that never had the room (its `XRANGE` over TLS), and the
/// publish API gets the message's offset (the script run on that connection).
#[cfg(feature = "tls")]
#[test]
fn history_over_rediss_is_read_through_tls() {
    let Some(_) = redis_util::tool("openssl") else { return };
    let certs = redis_util::TempDir(certs::make_cert("history-rediss", "ec"));
    let tls_port = redis_util::free_port().to_string();
    let file = |f: &str| certs.0.join(f).to_str().unwrap().to_string();
    let (cert, key, ca) = (file("leaf.pem"), file("key.pem"), file("ca.pem"));
    let tls = ["--tls-port", &tls_port, "--tls-cert-file", &cert, "--tls-key-file", &key, "--tls-ca-cert-file", &ca];
    let acl = ["--tls-auth-clients", "no", "--user", "app", "on", ">s3cret", "~*", "&*", "+@all"];
    let Some(redis_server) = LocalRedis::start_with("history-rediss", &[&tls[..], &acl].concat()) else { return };
    let port = redis_server.port;
    let mut rc = RedisConfig::from_url(&format!("rediss://app:s3cret@127.0.0.1:{tls_port}/")).unwrap();
    rc.tls = Some(wsloop::redis::TlsRoots::CaFile(ca.clone().into()));
    let a = start_node_with(rc.clone(), 1000, 1 << 20);
    let b = start_node_with(rc, 1000, 1 << 20);
    let epoch = five_live(&a, &b, port, "news");
    publish(&a.publisher, "news", 6..=105);
    assert!(wait(|| int(port, &[b"XLEN", b"{wsloop:news}:h"]) == Some(105)));
    let before = calls(port, "xrange");
    let mut back = connect_v1(b.addr, &format!("/news?since=5&epoch={epoch}"), "");
    expect_recovery(&mut back, "news", 6, 105, epoch);
    assert_eq!(calls(port, "xrange") - before, 1, "node B read the stream once");
    let resp = api_publish(b.admin.unwrap(), "news", "msg106");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(body.trim(), format!("{{\"offset\":106,\"epoch\":{epoch}}}"));
    assert_eq!(read_v1(&mut back), V1::Msg { room: "news".into(), offset: 106, epoch, payload: "msg106".into() });
}

/// Without TLS built in, `rediss://` is refused at start, history or not.
#[cfg(not(feature = "tls"))]
#[test]
fn history_over_rediss_without_tls_is_refused_with_the_reason() {
    let cfg = Config { workers: 1, history: 10, ..Config::default() };
    let server = wsloop::server::Server::bind("127.0.0.1:0", cfg).unwrap();
    let mut rc = RedisConfig::from_url("rediss://127.0.0.1:1/").unwrap();
    rc.history = 10;
    let err = wsloop::redis::RedisBridge::start(rc, &server.handle().publisher()).err().expect("refused");
    assert!(err.to_string().contains("built without TLS"), "{err}");
}
