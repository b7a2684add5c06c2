//! Admission and rate limits against the real server over loopback: `max_conns` and
//! `max_conns_per_ip` answer 503 before any upgrade and free their slot when a
//! connection ends; `max_msg_rate` closes a flooding connection with 1008.

mod common;
mod ops;

use common::{wait_until, TestServer};
use ops::{connect, handshake, next_data, read_until_close, refused_status, set_timeouts, tcp, IO_TIMEOUT};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;
use tungstenite::Message;
use wsloop::server::Config;

/// How long the server may take to notice a closed connection.
const SETTLE: Duration = Duration::from_secs(10);

fn rejected(s: &TestServer, index: usize) -> u64 {
    s.handle().metrics().iter().map(|m| m.rejected[index].get()).sum()
}

/// RejectReason::ALL indexes.
const MAX_CONNS: usize = 0;
const MAX_CONNS_PER_IP: usize = 1;

/// A TCP connection to `server` from the loopback address `from`.
fn tcp_from(from: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(from), 0))).expect("bind the client to its source address");
    socket.connect_timeout(&server.into(), IO_TIMEOUT).expect("connect");
    let stream: TcpStream = socket.into();
    set_timeouts(&stream);
    stream
}

fn echo_once(ws: &mut ops::Ws, text: &str) {
    ws.send(Message::Text(text.into())).unwrap();
    assert_eq!(next_data(ws), Message::Text(text.into()));
}

#[test]
fn max_conns_refuses_the_excess_with_503_until_a_slot_frees() {
    let s = TestServer::echo(Config { workers: 2, max_conns: 3, ..Config::default() });
    let mut open: Vec<_> = (0..3).map(|_| connect(s.addr, "/")).collect();
    assert_eq!(s.handle().open_connections(), 3);
    for _ in 0..2 {
        let result = handshake(tcp(s.addr), s.url("/"));
        match result.map_err(|e| *e) {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503);
                assert!(resp.headers().contains_key("Retry-After"), "{resp:?}");
            }
            Ok(_) => panic!("a 4th connection was upgraded over max_conns = 3"),
            Err(e) => panic!("expected 503, got {e}"),
        }
    }
    assert_eq!(rejected(&s, MAX_CONNS), 2);
    // The refused ones never held a slot; the open ones still work.
    for (i, ws) in open.iter_mut().enumerate() {
        echo_once(ws, &format!("still open {i}"));
    }
    // Close one: after the close handshake its slot is free again.
    ops::close(open.remove(0));
    assert!(wait_until(SETTLE, || s.handle().open_connections() == 2), "slot not released");
    let mut ws = connect(s.addr, "/");
    echo_once(&mut ws, "took the freed slot");
    assert_eq!(refused_status(handshake(tcp(s.addr), s.url("/"))), 503);
    // A connection that vanishes without a close handshake frees its slot too.
    drop(open.remove(0));
    assert!(wait_until(SETTLE, || s.handle().open_connections() == 2), "slot of a dropped connection not released");
    let ws2 = connect(s.addr, "/");
    ops::close(ws2);
    ops::close(ws);
}

#[test]
fn max_conns_per_ip_counts_each_source_address() {
    let s = TestServer::echo(Config { workers: 2, max_conns_per_ip: 2, ..Config::default() });
    let a = Ipv4Addr::new(127, 0, 0, 1);
    let b = Ipv4Addr::new(127, 0, 0, 2);
    let connect_from = |ip| handshake(tcp_from(ip, s.addr), s.url("/"));
    let mut from_a: Vec<_> = (0..2).map(|_| connect_from(a).expect("upgrade from .1").0).collect();
    assert_eq!(refused_status(connect_from(a)), 503);
    assert_eq!(rejected(&s, MAX_CONNS_PER_IP), 1);
    // Another address has its own allowance.
    let mut from_b: Vec<_> = (0..2).map(|_| connect_from(b).expect("upgrade from .2").0).collect();
    assert_eq!(refused_status(connect_from(b)), 503);
    assert_eq!(rejected(&s, MAX_CONNS_PER_IP), 2);
    assert_eq!(s.handle().open_connections(), 4);
    for ws in from_a.iter_mut().chain(from_b.iter_mut()) {
        echo_once(ws, "ok");
    }
    // Closing one from .1 lets .1 in again, and .2 is still full.
    ops::close(from_a.pop().unwrap());
    assert!(wait_until(SETTLE, || s.handle().open_connections() == 3));
    let mut again = connect_from(a).expect("upgrade from .1 after a close").0;
    echo_once(&mut again, "back");
    assert_eq!(refused_status(connect_from(b)), 503);
    for ws in from_a.into_iter().chain(from_b).chain([again]) {
        ops::close(ws);
    }
    assert!(wait_until(SETTLE, || s.handle().open_connections() == 0));
}

#[test]
fn max_msg_rate_closes_a_flooding_connection_with_1008() {
    let s = TestServer::echo(Config { workers: 1, max_msg_rate: Some(10), ..Config::default() });
    let mut ws = connect(s.addr, "/");
    for i in 0..100 {
        // The server may have closed already; later frames are ignored by it, and a write
        // error after its close is acceptable.
        if ws.send(Message::Text(format!("m{i}"))).is_err() {
            break;
        }
    }
    let (code, echoed) = read_until_close(&mut ws);
    assert_eq!(code, 1008);
    // One second of burst (10 messages) plus whatever refilled while sending.
    assert!(echoed.len() >= 10 && echoed.len() < 100, "{} messages echoed", echoed.len());
    // In order, from the first.
    for (i, m) in echoed.iter().enumerate() {
        assert_eq!(*m, Message::Text(format!("m{i}")));
    }
    assert!(wait_until(SETTLE, || s.handle().open_connections() == 0));
    let limited: u64 = s.handle().metrics().iter().map(|m| m.rate_limited.get()).sum();
    assert_eq!(limited, 1);
}

#[test]
fn max_msg_rate_lets_a_client_under_the_rate_through() {
    let s = TestServer::echo(Config { workers: 1, max_msg_rate: Some(10), ..Config::default() });
    let mut ws = connect(s.addr, "/");
    // 15 messages over ~2 s: within 10/s with its one-second burst.
    for i in 0..15 {
        echo_once(&mut ws, &format!("slow {i}"));
        std::thread::sleep(Duration::from_millis(130));
    }
    let limited: u64 = s.handle().metrics().iter().map(|m| m.rate_limited.get()).sum();
    assert_eq!(limited, 0);
    ops::close(ws);
}
