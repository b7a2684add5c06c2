//! Thousands of connections that come and go, cleanly or not, leave nothing behind:
//! no file descriptor, no open-connection count. One test in this file, since it
//! counts the descriptors of the whole process.

mod common;
mod raw_peer;

use common::{open_fds, wait_until, TestServer};
use raw_peer::{OP_BINARY, OP_CLOSE, OP_TEXT};
use socket2::SockRef;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use wsloop::server::metrics::{WorkerMetrics, CLOSE_CODES};
use wsloop::server::Config;

const TOTAL: usize = 3000;
/// Connections open at once.
const BATCH: usize = 100;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Message, echo, close 1000 both ways, then EOF.
    CleanClose,
    /// Upgraded, then half a frame and a TCP reset.
    ResetMidFrame,
    /// Upgraded, then a plain TCP close without a close frame.
    VanishAfterOpen,
    /// Half the request, then a plain TCP close.
    DropMidHandshake,
    /// Half the request, then a TCP reset.
    ResetMidHandshake,
}

const FATES: [Fate; 5] =
    [Fate::CleanClose, Fate::ResetMidFrame, Fate::VanishAfterOpen, Fate::DropMidHandshake, Fate::ResetMidHandshake];

fn reset(s: TcpStream) {
    SockRef::from(&s).set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    drop(s);
}

fn finish(mut s: TcpStream, fate: Fate, i: usize) {
    let mut buf = [0u8; 256];
    match fate {
        Fate::DropMidHandshake => drop(s),
        Fate::ResetMidHandshake => reset(s),
        Fate::ResetMidFrame => {
            let full = raw_peer::frame(true, OP_BINARY, &[0xEE; 1000]);
            s.write_all(&full[..full.len() / 2]).expect("half a frame");
            reset(s);
        }
        Fate::VanishAfterOpen => drop(s),
        Fate::CleanClose => {
            let text = format!("connection {i}");
            s.write_all(&raw_peer::frame(true, OP_TEXT, text.as_bytes())).unwrap();
            let (_, op, n) = raw_peer::read_frame(&mut s, &mut buf).expect("echo");
            assert_eq!((op, &buf[..n]), (OP_TEXT, text.as_bytes()));
            s.write_all(&raw_peer::frame(true, OP_CLOSE, &1000u16.to_be_bytes())).unwrap();
            let (_, op, n) = raw_peer::read_frame(&mut s, &mut buf).expect("close reply");
            assert_eq!(op, OP_CLOSE);
            assert_eq!(raw_peer::close_code(&buf[..n]), 1000);
            assert!(raw_peer::wait_eof(&mut s), "server did not close TCP");
        }
    }
}

fn total(server: &TestServer, f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
    server.handle().metrics().iter().map(|m| f(m)).sum()
}

#[test]
fn churning_connections_leave_no_descriptor_or_connection_behind() {
    let server = TestServer::echo(Config { workers: 2, ..Config::default() });
    let h = server.handle().clone();
    let baseline = open_fds();
    let request = raw_peer::upgrade_request(server.addr);
    let half = &request.as_bytes()[..request.len() / 2];

    let started = Instant::now();
    let mut counts = [0usize; FATES.len()];
    for batch in 0..TOTAL / BATCH {
        // All of a batch are connected and mid-request before any of them ends.
        let mut open = Vec::with_capacity(BATCH);
        for j in 0..BATCH {
            let i = batch * BATCH + j;
            let fate = FATES[i % FATES.len()];
            counts[i % FATES.len()] += 1;
            let mut s = raw_peer::tcp(server.addr, IO_TIMEOUT);
            match fate {
                Fate::DropMidHandshake | Fate::ResetMidHandshake => s.write_all(half),
                _ => s.write_all(request.as_bytes()),
            }
            .expect("write request");
            open.push((s, fate, i));
        }
        for (s, fate, _) in open.iter_mut() {
            if !matches!(fate, Fate::DropMidHandshake | Fate::ResetMidHandshake) {
                let head = raw_peer::read_head(s).expect("response");
                raw_peer::assert_switching(&head);
            }
        }
        for (s, fate, i) in open {
            finish(s, fate, i);
        }
        // Spread the churn over a few seconds, so it overlaps the server's timer ticks.
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "churn too slow: {batch} batches in {:?}",
            started.elapsed()
        );
    }
    eprintln!("{TOTAL} connections in {:?}", started.elapsed());

    let settled = wait_until(Duration::from_secs(10), || {
        h.open_connections() == 0
            && total(&server, |m| m.closes.iter().map(|c| c.get()).sum::<u64>() + m.never_upgraded.get())
                == TOTAL as u64
            && open_fds() <= baseline + 2
    });
    let closes: Vec<u64> = (0..CLOSE_CODES.len()).map(|i| total(&server, |m| m.closes[i].get())).collect();
    assert!(
        settled,
        "not back to baseline: open_connections {}, fds {} (baseline {baseline}), \
         accepted {}, closes by code {closes:?}",
        h.open_connections(),
        open_fds(),
        total(&server, |m| m.accepted.get()),
    );
    // Every accepted connection was removed exactly once, with the right code.
    assert_eq!(total(&server, |m| m.accepted.get()), TOTAL as u64);
    let by_code = |code: u16| closes[CLOSE_CODES.iter().position(|&c| c == code).unwrap()];
    assert_eq!(by_code(1000), counts[0] as u64, "closes with 1000");
    // Upgraded connections that vanish close with 1006; the ones cut off mid-handshake
    // were never upgraded and are counted apart, not as closes.
    assert_eq!(by_code(1006), (counts[1] + counts[2]) as u64, "closes with 1006");
    assert_eq!(total(&server, |m| m.never_upgraded.get()), (counts[3] + counts[4]) as u64, "never upgraded");
    assert_eq!(total(&server, |m| m.open.get()), 0);
    // Both workers took part (the kernel spreads connections over the listeners).
    for (w, m) in h.metrics().iter().enumerate() {
        assert!(m.accepted.get() > 0, "worker {w} accepted nothing");
    }
    server.shutdown().expect("clean shutdown");
}
