//! Topics across workers against independent clients (tungstenite, sync): order from
//! one publisher, the cross-thread `Publisher`, and subscribe/unsubscribe racing with
//! publishes.

mod common;

use common::{wait_until, TestServer};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::{Message as WsMessage, WebSocket};
use wsloop::server::{BackpressurePolicy, Config, Connection, Handler, Message};

/// The longest any single blocking read or write in these tests may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

type Ws = WebSocket<TcpStream>;

/// Greets each client with `worker N`; path `/sub/<topic>` subscribes at open. Text
/// commands: `sub T` and `unsub T` (acked with `subbed T` / `unsubbed T` in the same
/// callback), `pub T payload`.
struct Topics {
    worker: usize,
}

impl Handler for Topics {
    type State = ();

    fn on_open<'r>(
        &mut self,
        conn: &mut Connection<'_>,
        req: &wsloop::proto::Request<'_, 'r>,
    ) -> Result<wsloop::server::Accept<'r, ()>, wsloop::server::Reject> {
        if let Some(topic) = req.path().strip_prefix("/sub/") {
            conn.subscribe(topic);
        }
        let _ = conn.send_text(&format!("worker {}", self.worker));
        Ok(Default::default())
    }

    fn on_message(&mut self, conn: &mut Connection<'_>, _: &mut (), msg: Message<'_>) {
        let Message::Text(text) = msg else { return };
        let (cmd, rest) = text.split_once(' ').unwrap_or((text, ""));
        match cmd {
            "sub" => {
                conn.subscribe(rest);
                let _ = conn.send_text(&format!("subbed {rest}"));
            }
            "unsub" => {
                conn.unsubscribe(rest);
                let _ = conn.send_text(&format!("unsubbed {rest}"));
            }
            "pub" => {
                let (topic, payload) = rest.split_once(' ').unwrap_or((rest, ""));
                conn.publish(topic, Message::Text(payload));
            }
            _ => {
                let _ = conn.send_text("unknown command");
            }
        }
    }
}

fn start(cfg: Config) -> TestServer {
    TestServer::start(Config { workers: 2, ..cfg }, |worker| Topics { worker })
}

/// Connects and returns the socket with the worker that serves it.
fn connect(addr: SocketAddr, path: &str) -> (Ws, usize) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let (mut ws, resp) = tungstenite::client(format!("ws://{addr}{path}"), stream).expect("handshake");
    assert_eq!(resp.status(), 101);
    let worker = match ws.read() {
        Ok(WsMessage::Text(t)) => t.strip_prefix("worker ").and_then(|w| w.parse().ok()),
        _ => None,
    };
    (ws, worker.expect("greeting"))
}

/// Subscribers to `path` until both workers have at least `per_worker` of them (the
/// kernel spreads connections over the workers' listeners by hash; at most 64 tries).
fn subscribers_on_both_workers(addr: SocketAddr, path: &str, per_worker: usize) -> Vec<(Ws, usize)> {
    let mut subs = Vec::new();
    let mut count = [0usize; 2];
    for _ in 0..64 {
        if count.iter().all(|&n| n >= per_worker) {
            return subs;
        }
        let (ws, w) = connect(addr, path);
        count[w] += 1;
        subs.push((ws, w));
    }
    panic!("64 connections did not reach both workers: {count:?}");
}

fn text(ws: &mut Ws) -> String {
    match ws.read() {
        Ok(WsMessage::Text(t)) => t,
        other => panic!("expected a text message, got {other:?}"),
    }
}

fn is_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

/// Sends a close frame and reads until the server's answer.
fn close(mut ws: Ws) {
    let _ = ws.close(None);
    for _ in 0..100_000 {
        if ws.read().is_err() {
            return;
        }
    }
}

/// Each subscriber reads `n` messages on its own thread and checks they are `0..n`.
fn expect_in_order(subs: Vec<(Ws, usize)>, n: usize) -> Vec<std::thread::JoinHandle<Ws>> {
    subs.into_iter()
        .map(|(mut ws, w)| {
            std::thread::spawn(move || {
                for i in 0..n {
                    let t = text(&mut ws);
                    assert_eq!(t, i.to_string(), "subscriber on worker {w}: out of order or lost");
                }
                ws
            })
        })
        .collect()
}

#[test]
fn messages_from_one_client_publisher_arrive_in_order_on_both_workers() {
    let server = start(Config::default());
    let subs = subscribers_on_both_workers(server.addr, "/sub/seq", 3);
    // Subscribers on both workers: one path is the publisher's own worker, one the hand-over.
    let (mut publ, _) = connect(server.addr, "/");
    let readers = expect_in_order(subs, 1000);
    for i in 0..1000 {
        publ.write(WsMessage::Text(format!("pub seq {i}"))).unwrap();
        if i % 50 == 49 {
            publ.flush().unwrap();
        }
    }
    publ.flush().unwrap();
    for r in readers {
        close(r.join().expect("subscriber"));
    }
    close(publ);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn messages_from_a_cross_thread_publisher_arrive_in_order_on_both_workers() {
    let server = start(Config::default());
    let subs = subscribers_on_both_workers(server.addr, "/sub/seq", 3);
    let readers = expect_in_order(subs, 1000);
    let publisher = server.handle().publisher();
    std::thread::spawn(move || {
        for i in 0..1000 {
            assert_eq!(publisher.publish("seq", Message::Text(&i.to_string())).unwrap().workers, 2);
        }
    })
    .join()
    .expect("publisher thread");
    for r in readers {
        close(r.join().expect("subscriber"));
    }
    server.shutdown().expect("clean shutdown");
}

#[test]
fn publisher_on_another_thread_reaches_subscribers_on_both_workers() {
    let server = start(Config::default());
    let mut subs = subscribers_on_both_workers(server.addr, "/sub/readings", 1);
    let publisher = server.handle().publisher();
    // No subscriber, no worker to hand it to.
    assert_eq!(publisher.publish("nobody-listens", Message::Text("x")).unwrap().workers, 0);
    let reached = std::thread::spawn(move || {
        publisher.publish("readings", Message::Text("21.5 C")).unwrap().workers
            + publisher.publish("readings", Message::Binary(&[1, 2])).unwrap().workers
    })
    .join()
    .expect("publisher thread");
    assert_eq!(reached, 4, "each publish goes to both workers");
    for (ws, w) in &mut subs {
        assert_eq!(text(ws), "21.5 C", "subscriber on worker {w}");
        assert_eq!(ws.read().expect("read"), WsMessage::Binary(vec![1, 2]), "subscriber on worker {w}");
    }
    for (ws, _) in subs {
        close(ws);
    }
    server.shutdown().expect("clean shutdown");
}

/// A small deterministic generator for the toggling clients' choices.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// What a topic message `X n` / `Y n` carries: its topic and number.
fn topic_msg(t: &str) -> Option<(char, u64)> {
    let (topic, n) = t.split_once(' ')?;
    let topic = match topic {
        "X" => 'X',
        "Y" => 'Y',
        _ => return None,
    };
    Some((topic, n.parse().ok()?))
}

/// One toggling client: stays on `Y`, toggles `X` `rounds` times, sometimes waiting for
/// each ack, sometimes sending `sub X` and `unsub X` back to back. Between an `unsubbed X`
/// and the next `subbed X` no `X` message may arrive; each topic's numbers only grow.
/// Returns the X and Y messages seen.
fn toggle_client(addr: SocketAddr, id: u64, rounds: usize) -> (u64, u64) {
    let (mut ws, _) = connect(addr, "/sub/Y");
    let mut rng = Lcg(id + 1);
    let mut last = [None::<u64>; 2];
    let (mut seen_x, mut seen_y) = (0u64, 0u64);
    let mut on_x = false;
    // Reads until `ack`, checking every topic message on the way.
    let mut until = |ws: &mut Ws, ack: &str, on_x: &mut bool| loop {
        let t = text(ws);
        if t == ack {
            return;
        }
        match topic_msg(&t) {
            Some((topic, n)) => {
                let slot = &mut last[(topic == 'Y') as usize];
                assert!(slot.is_none_or(|p| n > p), "client {id}: {topic} {n} after {topic} {slot:?}");
                *slot = Some(n);
                if topic == 'X' {
                    assert!(*on_x, "client {id}: `{t}` after an acknowledged unsub");
                    seen_x += 1;
                } else {
                    seen_y += 1;
                }
            }
            None if t == "subbed X" => *on_x = true,
            None if t == "unsubbed X" => *on_x = false,
            None => panic!("client {id}: unexpected `{t}`"),
        }
    };
    for _ in 0..rounds {
        if rng.next(4) == 0 {
            // Back to back: both commands in one write, handled in one read.
            ws.write(WsMessage::Text("sub X".into())).unwrap();
            ws.write(WsMessage::Text("unsub X".into())).unwrap();
            ws.flush().unwrap();
            until(&mut ws, "unsubbed X", &mut on_x);
        } else {
            ws.send(WsMessage::Text("sub X".into())).unwrap();
            until(&mut ws, "subbed X", &mut on_x);
            on_x = true;
            std::thread::sleep(Duration::from_micros(rng.next(2000)));
            ws.send(WsMessage::Text("unsub X".into())).unwrap();
            until(&mut ws, "unsubbed X", &mut on_x);
        }
        on_x = false;
    }
    // Unsubscribed from X: for a while only Y may come.
    ws.get_mut().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let quiet = Instant::now() + Duration::from_millis(200);
    while Instant::now() < quiet {
        match ws.read() {
            Ok(WsMessage::Text(t)) => {
                assert!(t.starts_with("Y "), "client {id}: `{t}` after the last unsub");
                seen_y += 1;
            }
            Ok(other) => panic!("client {id}: unexpected {other:?}"),
            Err(e) if is_timeout(&e) => {}
            Err(e) => panic!("client {id}: {e}"),
        }
    }
    ws.get_mut().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    close(ws);
    (seen_x, seen_y)
}

#[test]
fn subscribe_and_unsubscribe_race_with_publishes_without_stray_messages() {
    let cfg = Config { backpressure_policy: BackpressurePolicy::Drop, ..Config::default() };
    let server = start(cfg);
    let addr = server.addr;
    // A publisher thread: X and Y, about 5 each per millisecond, for at most 60 s.
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, published, p) = (stop.clone(), published.clone(), server.handle().publisher());
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                for _ in 0..5 {
                    // A full queue refuses (counted); this load test only needs traffic.
                    let _ = p.publish("X", Message::Text(&format!("X {n}")));
                    let _ = p.publish("Y", Message::Text(&format!("Y {n}")));
                    n += 1;
                }
                published.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let clients: Vec<_> = (0..16).map(|id| std::thread::spawn(move || toggle_client(addr, id, 500))).collect();
    let (mut seen_x, mut seen_y) = (0, 0);
    for c in clients {
        let (x, y) = c.join().expect("toggling client");
        seen_x += x;
        seen_y += y;
    }
    eprintln!("published {} per topic; seen X {seen_x}, Y {seen_y}", published.load(Ordering::Relaxed));
    assert!(seen_x > 0 && seen_y > 0, "the clients saw no traffic: X {seen_x}, Y {seen_y}");
    assert!(wait_until(Duration::from_secs(5), || server.handle().open_connections() == 0));

    // Still serving: a new subscriber gets X traffic.
    let (mut ws, _) = connect(addr, "/");
    ws.send(WsMessage::Text("sub X".into())).unwrap();
    assert_eq!(text(&mut ws), "subbed X");
    assert!(text(&mut ws).starts_with("X "));
    close(ws);
    stop.store(true, Ordering::Relaxed);
    publisher.join().expect("publisher thread");
    assert!(wait_until(Duration::from_secs(5), || server.handle().open_connections() == 0));
    server.shutdown().expect("clean shutdown");
}
