//! The engine's side of a multi-node setup, without Redis: a bridge is told when a topic
//! becomes active or inactive on the node (over all workers) and of every local publish;
//! `Publisher::publish_local` delivers without going back to the bridge; the bridge's
//! metrics join `/metrics`. With the `redis` feature: a bridge whose Redis is unreachable
//! never blocks a publisher and counts what it drops.

mod common;

use common::wait_until;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wsloop::server::{Bridge, Config, Message, Rooms, Server};

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Topic(String, bool),
    Published(String, Vec<u8>, bool),
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Bridge for Recorder {
    fn topic_changed(&self, topic: &str, active: bool) {
        self.0.lock().unwrap().push(Event::Topic(topic.into(), active));
    }

    fn published(&self, topic: &str, msg: Message<'_>) {
        let text = matches!(msg, Message::Text(_));
        self.0.lock().unwrap().push(Event::Published(topic.into(), msg.as_bytes().to_vec(), text));
    }

    fn write_metrics(&self, out: &mut String) {
        out.push_str("# HELP test_bridge_up A test bridge.\n# TYPE test_bridge_up gauge\ntest_bridge_up 1\n");
    }
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn connect(addr: std::net::SocketAddr, path: &str) -> Ws {
    let (ws, _) = tungstenite::connect(format!("ws://{addr}{path}")).expect("connect");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    ws
}

fn read_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("read") {
            tungstenite::Message::Text(t) => return t.to_string(),
            tungstenite::Message::Binary(b) => return format!("bin:{}", String::from_utf8_lossy(&b)),
            _ => continue,
        }
    }
}

#[test]
fn bridge_sees_topic_transitions_and_local_publishes_only() {
    let rec = Arc::new(Recorder::default());
    let cfg = Config { workers: 2, admin_listen: Some("127.0.0.1:0".parse().unwrap()), ..Config::default() };
    let server = Server::bind("127.0.0.1:0", cfg).unwrap().with_bridge(rec.clone());
    let (addr, admin) = (server.local_addr(), server.admin_addr().unwrap());
    let running = server.start(|_| Rooms).unwrap();
    let publisher = running.handle().publisher();

    // Several members, spread over both workers: one activation for the node.
    let mut members: Vec<Ws> = (0..6).map(|_| connect(addr, "/x")).collect();
    assert!(wait_until(Duration::from_secs(5), || rec.0.lock().unwrap().len() == 1));
    assert_eq!(rec.take(), vec![Event::Topic("x".into(), true)]);

    // A member's message: forwarded once, delivered locally.
    members[0].send(tungstenite::Message::text("hi")).unwrap();
    for m in members.iter_mut() {
        assert_eq!(read_text(m), "hi");
    }
    assert_eq!(rec.take(), vec![Event::Published("x".into(), b"hi".to_vec(), true)]);

    // Publisher::publish forwards even with no local subscriber (other nodes may have some).
    assert_eq!(publisher.publish("nobody-here", Message::Binary(b"b")).unwrap().workers, 0);
    assert_eq!(rec.take(), vec![Event::Published("nobody-here".into(), b"b".to_vec(), false)]);

    // What a bridge brings in is delivered here and not forwarded again.
    assert!(publisher.publish_local("x", Message::Binary(b"remote")).unwrap().workers >= 1);
    for m in members.iter_mut() {
        assert_eq!(read_text(m), "bin:remote");
    }
    assert_eq!(rec.take(), vec![]);

    // The bridge's metrics are on the admin page.
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    assert!(page.contains("\ntest_bridge_up 1\n"), "{page}");

    // The last member leaving deactivates the topic, once.
    for mut m in members.drain(..) {
        let _ = m.close(None);
        let _ = m.flush();
    }
    assert!(wait_until(Duration::from_secs(5), || !rec.0.lock().unwrap().is_empty()));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rec.take(), vec![Event::Topic("x".into(), false)]);

    // A weak publisher does not keep the server alive.
    let weak = publisher.downgrade();
    assert!(weak.upgrade().is_some());
    running.handle().stop();
    running.join().unwrap();
    drop(publisher);
    assert!(weak.upgrade().is_none(), "only the bridge side should be left, and it holds no server");
}

#[cfg(feature = "redis")]
#[test]
fn unreachable_redis_never_blocks_publishers_and_counts_losses() {
    use wsloop::redis::{RedisBridge, RedisConfig};
    // A port nothing listens on: every connection attempt is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg =
        RedisConfig { queue_messages: 8, ..RedisConfig::from_url(&format!("redis://127.0.0.1:{port}/")).unwrap() };
    let server = Server::bind("127.0.0.1:0", Config { workers: 1, ..Config::default() }).unwrap();
    let bridge = RedisBridge::start(cfg, &server.handle().publisher()).unwrap();
    let server = server.with_bridge(bridge.clone());
    let publisher = server.handle().publisher();
    let start = Instant::now();
    for i in 0..1000 {
        publisher.publish("t", Message::Text(&format!("m{i}"))).unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(1), "publishing must not wait for Redis");
    let lost = || {
        let mut out = String::new();
        bridge.write_metrics(&mut out);
        out.lines()
            .filter(|l| l.starts_with("wsloop_redis_lost_total"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };
    assert!(wait_until(Duration::from_secs(5), || lost() == 1000), "lost: {}", lost());
    assert!(!bridge.is_connected());
}
