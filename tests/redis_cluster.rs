//! Two `wsloop rooms --redis-cluster` nodes and a Redis Cluster of 3 primaries and 3
//! replicas that this test starts on loopback ports: rooms chosen so that every shard
//! owns some carry every message exactly once and in each sender's order across the
//! nodes, node traffic and a backend's `SPUBLISH` alike; then one primary is killed
//! with SIGKILL while publishing goes on: local delivery never stops, delivery across
//! nodes resumes within the cluster's node timeout plus 5 s once its replica is
//! promoted, nothing arrives twice or out of order, and what was lost is exactly what
//! the receiving node counts in `wsloop_redis_messages_lost_total`. Before that, one
//! room's slot is moved to another shard (resharding) and the room follows it.
//!
//! redis-server and redis-cli come from Debian (scripts/test.sh installs them); without
//! them the test is skipped, except under CI=true, where it fails.
#![cfg(all(feature = "redis", feature = "cli"))]

mod redis_util;

use redis_util::*;
use std::collections::HashMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

const NODE_TIMEOUT_MS: u64 = 2000;

/// The port of the primary that takes `SPUBLISH` on `channel` (the others answer MOVED).
fn owner(primaries: &[u16], channel: &str) -> Option<u16> {
    primaries.iter().copied().find(|&p| matches!(redis_str(p, &["SPUBLISH", channel, "probe"]), Ok(Reply::Int(_))))
}

/// The primaries in `CLUSTER NODES` of the node on `port`, by port.
fn primaries_seen_by(port: u16) -> Vec<u16> {
    let text = redis_str(port, &["CLUSTER", "NODES"]).map(|r| r.text()).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("master") && !l.contains("fail"))
        .filter_map(|l| l.split(' ').nth(1)?.split('@').next()?.rsplit(':').next()?.parse().ok())
        .collect()
}

struct Client {
    name: String,
    ws: WebSocket<TcpStream>,
}

impl Client {
    fn connect(name: &str, port: u16, room: &str) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/{room}"), stream)
            .unwrap_or_else(|e| panic!("{name}: handshake: {e}"));
        ws.get_ref().set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        Client { name: name.into(), ws }
    }

    fn send(&mut self, phase: u32, seq: u32) {
        let body = format!("{phase}:{}:{seq}", self.name);
        self.ws.send(Message::text(body)).unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// Every data message waiting now, as (phase, sender, seq); plain payloads as
    /// (0, payload, 0).
    fn drain(&mut self) -> Vec<(u32, String, u32)> {
        let mut out = Vec::new();
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let mut it = t.as_str().splitn(3, ':');
                    match (it.next().and_then(|p| p.parse().ok()), it.next(), it.next().and_then(|s| s.parse().ok())) {
                        (Some(p), Some(from), Some(seq)) => out.push((p, from.to_string(), seq)),
                        _ => out.push((0, t.as_str().to_string(), 0)),
                    }
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return out
                }
                Err(e) => panic!("{}: read: {e}", self.name),
            }
        }
    }
}

/// `POST /publish/<room>` on a node's admin listener; the status code.
fn api_publish(admin: u16, room: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", admin)).expect("admin");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "POST /publish/{room} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer cluster-test-key\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Every member (one per room per node) sends `PER_CLIENT` messages of `phase`, and a
/// backend SPUBLISHes one plain payload per room to the room's shard; every member
/// must get all of its room's, each sender's in order, none twice, none of another room.
fn exchange(on_a: &mut [Client], on_b: &mut [Client], rooms: &[(String, u16)], phase: u32, backend_too: bool) {
    const PER_CLIENT: u32 = 30;
    for seq in 0..PER_CLIENT {
        for c in on_a.iter_mut().chain(on_b.iter_mut()) {
            c.send(phase, seq);
        }
    }
    if backend_too {
        for (room, p) in rooms {
            let r = redis_str(*p, &["SPUBLISH", &format!("wsloop:{room}"), &format!("backend {room}")]).unwrap();
            assert_eq!(r, Reply::Int(2), "two nodes subscribed to wsloop:{room}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, (room, _)) in rooms.iter().enumerate() {
        for c in [&mut on_a[i], &mut on_b[i]] {
            let mut next: HashMap<String, u32> = HashMap::new();
            let mut backend = 0;
            let want = 2 * PER_CLIENT as usize;
            let mut got = 0;
            while got < want || (backend_too && backend == 0) {
                assert!(
                    Instant::now() < deadline,
                    "phase {phase}: {}: {got} of {want} messages, next per sender {next:?}",
                    c.name
                );
                for (p, from, seq) in c.drain() {
                    if p == 0 {
                        assert_eq!(from, format!("backend {room}"), "{}", c.name);
                        backend += 1;
                        continue;
                    }
                    assert_eq!(p, phase, "{}: a message of phase {p}", c.name);
                    let n = next.entry(from.clone()).or_insert(0);
                    assert_eq!(seq, *n, "phase {phase}: {}: {from}'s #{seq}, expected #{n}", c.name);
                    assert!(from.ends_with(&format!("-{room}")), "{}: a message of another room: {from}", c.name);
                    *n += 1;
                    got += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
            let extra = c.drain();
            assert!(extra.is_empty() && backend <= 1, "{}: arrived twice: {extra:?} (backend {backend})", c.name);
        }
    }
}

#[test]
fn rooms_on_every_shard_of_a_redis_cluster_survive_a_primary_failover() {
    let (Some(server_bin), Some(cli_bin)) = (tool("redis-server"), tool("redis-cli")) else {
        return;
    };
    let tmp = TempDir::new("redis-cluster");
    let dir = tmp.0.as_path();
    let timeout = NODE_TIMEOUT_MS.to_string();
    let mut nodes: Vec<(u16, Proc)> =
        (0..6).map(|n| start_cluster_node(&server_bin, dir, n, &["--cluster-node-timeout", &timeout])).collect();
    let ports: Vec<u16> = nodes.iter().map(|n| n.0).collect();
    create_cluster(&cli_bin, &ports, 1);
    assert!(
        wait_until(Duration::from_secs(30), || ports.iter().all(|&p| cluster_ok(p))
            && primaries_seen_by(ports[0]).len() == 3),
        "the cluster did not show 3 primaries"
    );
    let primaries = primaries_seen_by(ports[0]);

    // Two rooms on each shard, found by asking Redis, not by our own slot code.
    let mut rooms: Vec<(String, u16)> = Vec::new();
    for i in 0..200 {
        let room = format!("room{i}");
        let Some(p) = owner(&primaries, &format!("wsloop:{room}")) else { continue };
        if rooms.iter().filter(|(_, q)| *q == p).count() < 2 {
            rooms.push((room, p));
        }
        if rooms.len() == 6 {
            break;
        }
    }
    assert_eq!(rooms.len(), 6, "rooms on every shard: {rooms:?}");

    // Seeds: two of the nodes are enough to find the rest.
    let seeds = format!("redis://127.0.0.1:{},redis://127.0.0.1:{}", ports[0], ports[3]);
    std::fs::write(dir.join("publish.key"), "cluster-test-key\n").unwrap();
    let key_file = dir.join("publish.key");
    let a = start_node("node-a", &["--redis-cluster", &seeds, "--publish-key-file", key_file.to_str().unwrap()], dir);
    let b = start_node("node-b", &["--redis-cluster", &seeds], dir);
    let mut on_a: Vec<Client> = rooms.iter().map(|(r, _)| Client::connect(&format!("a-{r}"), a.port, r)).collect();
    let mut on_b: Vec<Client> = rooms.iter().map(|(r, _)| Client::connect(&format!("b-{r}"), b.port, r)).collect();
    for (room, p) in &rooms {
        assert!(
            wait_until(Duration::from_secs(15), || shard_numsub(*p, &format!("wsloop:{room}")) == 2),
            "both nodes should SSUBSCRIBE to wsloop:{room} on its shard (port {p}); it reports {}",
            shard_numsub(*p, &format!("wsloop:{room}"))
        );
    }
    for n in [&a, &b] {
        assert_eq!(metric(n.admin, "wsloop_redis_shards"), 3.0);
        assert!(wait_until(Duration::from_secs(10), || metric(n.admin, "wsloop_redis_connected") == 1.0));
    }

    // Phase 1: both nodes publish on every room; everyone gets everything once, in order.
    exchange(&mut on_a, &mut on_b, &rooms, 1, true);

    // Resharding: one room's slot moves to another shard. Its old owner drops the
    // sharded subscriptions (a `sunsubscribe` push); the bridges read the map again and
    // subscribe on the new owner, and publishes sent on the old map are redirected.
    let victim = rooms[0].1;
    let moving = rooms.iter().position(|(_, p)| *p != victim).unwrap();
    let (from, to) = (rooms[moving].1, *primaries.iter().find(|&&p| p != victim && p != rooms[moving].1).unwrap());
    let channel = format!("wsloop:{}", rooms[moving].0);
    let slot = match redis_str(from, &["CLUSTER", "KEYSLOT", &channel]).unwrap() {
        Reply::Int(n) => n.to_string(),
        other => panic!("CLUSTER KEYSLOT: {other:?}"),
    };
    let id = |port: u16| redis_str(port, &["CLUSTER", "MYID"]).unwrap().text();
    let (from_id, to_id) = (id(from), id(to));
    let ok = |r: std::io::Result<Reply>| assert_eq!(r.unwrap(), Reply::Simple("OK".into()));
    ok(redis_str(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]));
    ok(redis_str(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]));
    // Mid-migration the old owner still serves the room's shard channels (Redis answers
    // sharded pub/sub there until `SETSLOT NODE`, never with ASK): a publish arrives.
    on_a[moving].send(9, 0);
    let end = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < end {
        got = on_b[moving].drain();
    }
    assert_eq!(got, [(9, on_a[moving].name.clone(), 0)], "mid-migration, node B gets the message once");
    assert_eq!(metric(a.admin, r#"wsloop_redis_redirects_total{kind="ask"}"#), 0.0);
    for p in [to, from] {
        ok(redis_str(p, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]));
    }
    rooms[moving].1 = to;
    // Well within the bridge's periodic map read (15 s): it is the push that moves it.
    assert!(
        wait_until(Duration::from_secs(5), || shard_numsub(to, &channel) == 2),
        "both nodes should follow {channel} to its new shard (port {to}); it reports {}",
        shard_numsub(to, &channel)
    );
    assert_eq!(shard_numsub(from, &channel), 0, "the old shard dropped {channel}");
    // A's own member got it too, locally.
    assert_eq!(on_a[moving].drain(), [(9, on_a[moving].name.clone(), 0)]);
    assert_eq!(on_b[moving].drain(), [], "nothing twice");
    exchange(&mut on_a, &mut on_b, &rooms, 3, true);

    // A stale map: a room with members on node B only, fed through node A's HTTP API.
    // Node A subscribes to nothing there, so no push tells it the slot moved: its
    // publish comes back MOVED, and it sends it on to the new owner.
    let lone = (0..200)
        .map(|i| format!("lone{i}"))
        .find(|r| owner(&primaries, &format!("wsloop:{r}")) == Some(from))
        .expect("a room on the shard the first room left");
    let lone_channel = format!("wsloop:{lone}");
    let mut lone_b = Client::connect("b-lone", b.port, &lone);
    assert!(wait_until(Duration::from_secs(10), || shard_numsub(from, &lone_channel) == 1));
    let lone_slot = match redis_str(from, &["CLUSTER", "KEYSLOT", &lone_channel]).unwrap() {
        Reply::Int(n) => n.to_string(),
        other => panic!("CLUSTER KEYSLOT: {other:?}"),
    };
    assert_eq!(api_publish(a.admin, &lone, "before"), 200);
    let end = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < end {
        got = lone_b.drain();
    }
    assert_eq!(got, [(0, "before".to_string(), 0)]);
    ok(redis_str(to, &["CLUSTER", "SETSLOT", &lone_slot, "IMPORTING", &from_id]));
    ok(redis_str(from, &["CLUSTER", "SETSLOT", &lone_slot, "MIGRATING", &to_id]));
    for p in [to, from] {
        ok(redis_str(p, &["CLUSTER", "SETSLOT", &lone_slot, "NODE", &to_id]));
    }
    assert!(wait_until(Duration::from_secs(5), || shard_numsub(to, &lone_channel) == 1), "node B follows");
    let moved = r#"wsloop_redis_redirects_total{kind="moved"}"#;
    let moved_before = metric(a.admin, moved);
    assert_eq!(api_publish(a.admin, &lone, "after"), 200);
    let end = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < end {
        got = lone_b.drain();
    }
    assert_eq!(got, [(0, "after".to_string(), 0)], "the MOVED publish reaches node B once");
    assert_eq!(metric(a.admin, moved), moved_before + 1.0, "node A followed one MOVED");

    // Phase 2: node A's clients publish on every room, one message each per turn of
    // this loop (every 20 ms plus the reads), while the primary of the first room is
    // killed.
    let victim_rooms: Vec<usize> = (0..rooms.len()).filter(|&i| rooms[i].1 == victim).collect();
    let lost_before = metric(b.admin, "wsloop_redis_messages_lost_total");
    let mut sent = 0u32;
    let mut killed_at: Option<(Instant, u32)> = None;
    let mut resumed_at: Option<Duration> = None;
    // Per room: what B's member got (seqs of A's member), what A's own member got.
    let mut got_b: Vec<Vec<u32>> = vec![Vec::new(); rooms.len()];
    let mut got_a: Vec<Vec<u32>> = vec![Vec::new(); rooms.len()];
    let start = Instant::now();
    let limit = Duration::from_secs(40);
    loop {
        for c in on_a.iter_mut() {
            c.send(2, sent);
        }
        sent += 1;
        if killed_at.is_none() && sent == 50 {
            nodes.iter_mut().find(|n| n.0 == victim).unwrap().1.kill();
            killed_at = Some((Instant::now(), sent));
        }
        for (i, c) in on_b.iter_mut().enumerate() {
            got_b[i].extend(c.drain().into_iter().filter(|m| m.0 == 2).map(|m| m.2));
        }
        for (i, c) in on_a.iter_mut().enumerate() {
            got_a[i].extend(c.drain().into_iter().filter(|m| m.0 == 2).map(|m| m.2));
        }
        if let (Some((t, at)), None) = (killed_at, resumed_at) {
            // Resumed: B got a message on every room of the dead shard sent after the kill.
            if victim_rooms.iter().all(|&i| got_b[i].iter().any(|&s| s > at)) {
                resumed_at = Some(t.elapsed());
            }
        }
        if resumed_at.is_some_and(|r| killed_at.unwrap().0.elapsed() > r + Duration::from_secs(2)) {
            break;
        }
        if start.elapsed() >= limit {
            let m = |n: &Node| {
                let mut v: Vec<_> =
                    metrics(n.admin).into_iter().filter(|(k, _)| k.starts_with("wsloop_redis")).collect();
                v.sort_by(|x, y| x.0.cmp(&y.0));
                v
            };
            let last: Vec<_> = got_b.iter().map(|g| (g.len(), g.last().copied())).collect();
            panic!(
                "delivery to node B did not resume on the rooms of the killed primary ({victim_rooms:?}); sent {sent}, \
                 B got (count, last) {last:?}\nA: {:?}\nB: {:?}",
                m(&a),
                m(&b)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The last ones in flight.
    std::thread::sleep(Duration::from_millis(500));
    for (i, c) in on_b.iter_mut().enumerate() {
        got_b[i].extend(c.drain().into_iter().filter(|m| m.0 == 2).map(|m| m.2));
    }
    for (i, c) in on_a.iter_mut().enumerate() {
        got_a[i].extend(c.drain().into_iter().filter(|m| m.0 == 2).map(|m| m.2));
    }
    let resumed = resumed_at.unwrap();
    let budget = Duration::from_millis(NODE_TIMEOUT_MS) + Duration::from_secs(5);
    assert!(resumed <= budget, "delivery resumed {resumed:?} after the kill, more than {budget:?}");

    let mut gaps = 0u64;
    for (i, (room, _)) in rooms.iter().enumerate() {
        // Local delivery never stopped: A's member got every message of its own room.
        assert_eq!(got_a[i], (0..sent).collect::<Vec<_>>(), "local delivery on node A, room {room}");
        let g = &got_b[i];
        assert!(g.windows(2).all(|w| w[0] < w[1]), "room {room}: out of order or twice on node B: {g:?}");
        assert_eq!(g.last(), Some(&(sent - 1)), "room {room}: node B got the last message");
        let interior = u64::from(g.last().unwrap() - g.first().unwrap() + 1) - g.len() as u64;
        assert_eq!(g.first(), Some(&0), "room {room}: node B got the first message");
        if rooms[i].1 != victim {
            assert_eq!(interior, 0, "room {room} is on a shard that did not fail: nothing lost");
        }
        gaps += interior;
    }
    let counted = metric(b.admin, "wsloop_redis_messages_lost_total") - lost_before;
    assert_eq!(counted, gaps as f64, "node B counts exactly the messages it missed");
    eprintln!(
        "failover: resumed after {resumed:?}; {gaps} of {} messages on the killed shard's rooms lost, none twice",
        sent as usize * victim_rooms.len()
    );
    for n in [&a, &b] {
        assert!(wait_until(Duration::from_secs(10), || metric(n.admin, "wsloop_redis_connected") == 1.0));
        assert_eq!(metric(n.admin, "wsloop_redis_shards"), 3.0, "the promoted replica is a shard");
        assert_eq!(metric(n.admin, "wsloop_redis_messages_late_total"), 0.0);
    }
    drop((a, b));
}
