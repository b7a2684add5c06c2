//! A backend feeding rooms through Redis, against a redis-server this test starts and
//! two in-process nodes bridged by it: `PUBLISH <prefix><room> <payload>` from any
//! Redis client reaches the room on every node unchanged (text when UTF-8, binary
//! otherwise), including payloads that begin with the node envelope's magic bytes and a
//! node's own id; an API publish and a client's publish reach every node exactly once.
//!
//! redis-server comes from Debian (scripts/test.sh installs it). Without it the test is
//! skipped, except under CI=true, where it fails.
#![cfg(all(feature = "redis", feature = "jwt"))]

mod ops;
mod redis_util;

use ops::{connect, next_data, status, tcp, Ws};
use redis_util::{numsub, redis, start_bridged, Bridged, LocalRedis};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tungstenite::Message;
use wsloop::redis::{envelope, RedisConfig, SubscribeMode};
use wsloop::server::{Config, PublishKey};

const KEY: &str = "redis-push-test-key";

fn start_node(redis_port: u16, mode: SubscribeMode) -> Bridged {
    let cfg = Config {
        workers: 2,
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        publish_key: PublishKey::new(KEY.as_bytes()),
        ..Config::default()
    };
    let mut rc = RedisConfig::from_url(&format!("redis://127.0.0.1:{redis_port}/")).unwrap();
    rc.mode = mode;
    start_bridged(cfg, rc)
}

fn api_publish(admin: SocketAddr, room: &str, body: &str) -> String {
    let mut s = tcp(admin);
    let req = format!(
        "POST /publish/{room} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The next data messages on each socket are exactly `want`, in order, and then the
/// sentinel `end` (so nothing arrived twice).
fn expect_exactly(clients: &mut [&mut Ws], want: &[Message], end_port: u16, room: &str) {
    redis(end_port, &[b"PUBLISH", format!("wsloop:{room}").as_bytes(), b"--end--"]).unwrap();
    for c in clients.iter_mut() {
        for w in want {
            assert_eq!(&next_data(c), w);
        }
        assert_eq!(next_data(c), Message::text("--end--"), "a message arrived twice");
    }
}

#[test]
fn a_backend_publishes_plain_payloads_through_redis_to_every_node_exactly_once() {
    backend_feeds_both_nodes(SubscribeMode::PerTopic);
}

#[test]
fn plain_payloads_and_node_traffic_stay_apart_in_pattern_mode_too() {
    backend_feeds_both_nodes(SubscribeMode::Pattern);
}

fn backend_feeds_both_nodes(mode: SubscribeMode) {
    let Some(redis_server) = LocalRedis::start_new(&format!("redis-push-{mode:?}")) else { return };
    let port = redis_server.port;
    let (a, b) = (start_node(port, mode), start_node(port, mode));
    let mut on_a = connect(a.addr, "/news");
    let mut on_b = connect(b.addr, "/news");
    let node_channel = [b"wsloop:".as_slice(), envelope::NODE_CHANNEL_MARK, b"news"].concat();
    let end = Instant::now() + Duration::from_secs(10);
    let subscribed = || match mode {
        SubscribeMode::PerTopic => numsub(port, b"wsloop:news") == 2 && numsub(port, &node_channel) == 2,
        // Redis counts distinct patterns: ask each node what Redis last confirmed.
        SubscribeMode::Pattern => [a.admin, b.admin]
            .iter()
            .all(|ad| ops::http_get(ad.unwrap(), "/metrics").1.contains("\nwsloop_redis_channels 1\n")),
    };
    while !subscribed() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(subscribed(), "both nodes subscribe to the room's channels ({mode:?})");

    // Plain text, as `redis-cli PUBLISH wsloop:news hello` sends it.
    redis(port, &[b"PUBLISH", b"wsloop:news", b"hello"]).unwrap();
    // Not UTF-8: binary, unchanged.
    redis(port, &[b"PUBLISH", b"wsloop:news", b"\xff\x00\xfe"]).unwrap();
    // Envelope lookalikes: the magic, version, opcode and node A's own id (which A drops
    // as node traffic), and one from "node 0". Delivered as sent, header included.
    let mut own = envelope::header(a.bridge.node_id(), 1, wsloop::server::Message::Text("x")).to_vec();
    own.extend_from_slice(b"x");
    let zero = envelope::encode(0, 1, wsloop::server::Message::Binary(b"\xff"));
    redis(port, &[b"PUBLISH", b"wsloop:news", &own]).unwrap();
    redis(port, &[b"PUBLISH", b"wsloop:news", &zero]).unwrap();
    let want = [
        Message::text("hello"),
        Message::binary(b"\xff\x00\xfe".to_vec()),
        Message::binary(own.clone()), // the node id's bytes are not UTF-8 in general
        Message::binary(zero.clone()),
    ];
    // The lookalike with A's id may happen to be UTF-8; the comparison is by bytes.
    for c in [&mut on_a, &mut on_b] {
        for w in &want {
            let got = next_data(c);
            assert_eq!(got.clone().into_data(), w.clone().into_data(), "{got:?}");
        }
    }
    expect_exactly(&mut [&mut on_a, &mut on_b], &[], port, "news");

    // An API publish on A, and a client's message on B: every node once.
    let r = api_publish(a.admin.unwrap(), "news", "from the api");
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.contains("\"connections\":1"), "{r}");
    on_b.send(Message::text("from a client")).unwrap();
    // Both are in flight; each socket sees each exactly once (order across the two
    // sources is not fixed), then the sentinel.
    for c in [&mut on_a, &mut on_b] {
        let mut got = vec![next_data(c), next_data(c)];
        got.sort_by_key(|m| m.to_string());
        assert_eq!(got, [Message::text("from a client"), Message::text("from the api")]);
    }
    expect_exactly(&mut [&mut on_a, &mut on_b], &[], port, "news");
}
