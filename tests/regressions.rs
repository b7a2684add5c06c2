//! Regression tests, each named after what broke.

mod common;
mod raw_peer;

use common::{wait_until, TestServer};
use raw_peer::{OP_BINARY, OP_CLOSE};
use socket2::SockRef;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;
use wsloop::server::Config;

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const ROUNDS: usize = 100;

fn reset(s: TcpStream) {
    SockRef::from(&s).set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
}

/// Every timeout far beyond the test, so only noticing the peer's FIN or RST can
/// remove a connection in time.
fn patient() -> Config {
    Config {
        workers: 1,
        handshake_timeout: Duration::from_secs(120),
        idle_timeout: Duration::from_secs(120),
        ping_interval: Duration::from_secs(119),
        close_timeout: Duration::from_secs(120),
        ..Config::default()
    }
}

/// Before the fix, a read that returned the peer's last bytes short of the ring's
/// free space was taken to mean "drained", even when the same readiness event also
/// carried its FIN or RST. No new edge follows, so the end of stream went unseen and
/// the connection (and its descriptor) stayed until a timeout: about half of the
/// connections reset right after half a frame, and of those dropped mid-handshake.
#[test]
fn fin_or_reset_arriving_with_the_last_bytes_is_noticed() {
    let server = TestServer::echo(patient());
    let h = server.handle();
    let request = raw_peer::upgrade_request(server.addr);
    let half_request = &request.as_bytes()[..request.len() / 2];
    let full = raw_peer::frame(true, OP_BINARY, &[0xEE; 1000]);
    let half_frame = &full[..full.len() / 2];
    for i in 0..ROUNDS {
        match i % 4 {
            0 | 1 => {
                let mut s = raw_peer::tcp(server.addr, IO_TIMEOUT);
                s.write_all(half_request).unwrap();
                if i % 4 == 0 {
                    drop(s);
                } else {
                    reset(s);
                }
            }
            _ => {
                let mut s = raw_peer::connect(server.addr, IO_TIMEOUT);
                s.write_all(half_frame).unwrap();
                if i % 4 == 2 {
                    drop(s);
                } else {
                    reset(s);
                }
            }
        }
    }
    // Upgraded connections end as closes; the ones cut off in their handshake as
    // never upgraded.
    let removed = || -> u64 {
        h.metrics().iter().map(|m| m.closes.iter().map(|c| c.get()).sum::<u64>() + m.never_upgraded.get()).sum()
    };
    let done = wait_until(Duration::from_secs(5), || h.open_connections() == 0 && removed() == ROUNDS as u64);
    assert!(done, "{} of {ROUNDS} connections still there, {} open", ROUNDS as u64 - removed(), h.open_connections());
}

/// The flip side of reading on to the end of stream: a close frame followed at once
/// by the client's FIN (a half-close) must still get its close reply, although the
/// server now sees the EOF in the same read loop as the close frame.
#[test]
fn close_frame_or_bad_request_followed_by_half_close_still_gets_its_answer() {
    let server = TestServer::echo(patient());
    for _ in 0..ROUNDS / 4 {
        let mut s = raw_peer::connect(server.addr, IO_TIMEOUT);
        s.write_all(&raw_peer::frame(true, OP_CLOSE, &1000u16.to_be_bytes())).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut buf = [0u8; 128];
        let (_, op, n) = raw_peer::read_frame(&mut s, &mut buf).expect("close reply");
        assert_eq!(op, OP_CLOSE);
        assert_eq!(raw_peer::close_code(&buf[..n]), 1000);
        assert!(raw_peer::wait_eof(&mut s));
    }
    // Likewise an HTTP error answering a bad request that came with the FIN.
    for _ in 0..ROUNDS / 4 {
        let mut s = raw_peer::tcp(server.addr, IO_TIMEOUT);
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let head = raw_peer::read_head(&mut s).expect("error response");
        assert_eq!(raw_peer::status(&head), 405);
    }
    let h = server.handle();
    assert!(wait_until(Duration::from_secs(5), || h.open_connections() == 0));
}
