//! Graceful shutdown against the real server over loopback: `Handle::shutdown` with a
//! thousand clients open (each gets its queued echo, then close 1001, and the workers
//! exit within `drain_timeout`), and the `wsloop` binary on SIGTERM (exit 0 once the
//! clients are gone) and on a second SIGTERM during a drain that would last (exit now).

mod common;
mod ops;

use common::{wait_until, Echo};
use ops::{read_until_close, set_timeouts, tcp, Started, IO_TIMEOUT};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tungstenite::Message;
use wsloop::server::Config;

/// These tests hold thousands of sockets or a child process each: one at a time, so a
/// slow machine does not run them against each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn messages_in(server: &Started) -> u64 {
    server.handle().metrics().iter().map(|m| m.messages_in()).sum()
}

/// A client whose receive buffer is small, so the server must hold most of a large echo
/// in its own write buffer until the client reads.
fn slow_reader(addr: SocketAddr) -> ops::Ws {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    socket.connect_timeout(&SockAddr::from(addr), IO_TIMEOUT).expect("connect");
    let stream: TcpStream = socket.into();
    set_timeouts(&stream);
    ops::handshake(stream, format!("ws://{addr}/")).expect("handshake").0
}

#[test]
fn shutdown_with_1000_clients_flushes_queued_echoes_then_closes_1001() {
    let _serial = serial();
    const CLIENTS: usize = 1000;
    const BIG: usize = 8 << 20;
    let drain_timeout = Duration::from_secs(30);
    let cfg =
        Config { workers: 2, drain_timeout, close_timeout: drain_timeout, max_message: 2 * BIG, ..Config::default() };
    let mut server = Started::start(cfg, |_| Echo);
    let addr = server.addr;

    let mut clients: Vec<ops::Ws> = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let (ws, _) = ops::handshake(tcp(addr), format!("ws://{addr}/c{i}"))
            .unwrap_or_else(|e| panic!("client {i} of {CLIENTS}: {e}"));
        clients.push(ws);
    }
    assert!(wait_until(Duration::from_secs(30), || server.handle().open_connections() == CLIENTS));
    // Every client has an echo in flight: sent, not read.
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::Text(format!("hello {i}"))).unwrap();
    }
    // Two more with an echo far larger than the socket buffers, so most of it is still
    // in the server's write buffer when the shutdown starts.
    let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    let mut heavy: Vec<ops::Ws> = (0..2).map(|_| slow_reader(addr)).collect();
    for ws in &mut heavy {
        ws.send(Message::Binary(big.clone())).unwrap();
    }
    let all = (CLIENTS + heavy.len()) as u64;
    assert!(
        wait_until(Duration::from_secs(60), || messages_in(&server) == all),
        "server received {} of {all} messages",
        messages_in(&server)
    );

    let started = Instant::now();
    let rx = server.shutdown();

    for (i, ws) in heavy.iter_mut().enumerate() {
        let (code, data) = read_until_close(ws);
        assert_eq!(data.len(), 1, "heavy client {i}: {} messages before the close", data.len());
        assert!(data[0] == Message::Binary(big.clone()), "heavy client {i}: echo corrupted or cut");
        assert_eq!(code, 1001, "heavy client {i}");
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        let (code, data) = read_until_close(ws);
        assert_eq!(data, [Message::Text(format!("hello {i}"))], "client {i}");
        assert_eq!(code, 1001, "client {i}");
    }
    let joined = rx
        .recv_timeout(drain_timeout + Duration::from_secs(30))
        .expect("workers still running well after drain_timeout");
    joined.expect("join");
    // Everyone answered the close, so the drain ended without waiting for its timeout.
    assert!(started.elapsed() < drain_timeout, "drain took {:?}", started.elapsed());
}

#[test]
fn shutdown_gives_up_on_silent_clients_after_drain_timeout() {
    let _serial = serial();
    let drain_timeout = Duration::from_secs(2);
    let cfg = Config { workers: 2, drain_timeout, close_timeout: Duration::from_secs(60), ..Config::default() };
    let mut server = Started::start(cfg, |_| Echo);
    // Clients that never read: they never answer the server's close.
    let silent: Vec<TcpStream> = (0..4).map(|_| ops::raw_upgrade(server.addr)).collect();
    assert!(wait_until(Duration::from_secs(10), || server.handle().open_connections() == 4));
    let started = Instant::now();
    let rx = server.shutdown();
    let joined = rx.recv_timeout(drain_timeout + Duration::from_secs(20)).expect("drain_timeout not enforced");
    joined.expect("join");
    let took = started.elapsed();
    assert!(took >= drain_timeout - Duration::from_millis(100), "gave up after {took:?}, before drain_timeout");
    drop(silent);
}

/// Regression: a connection whose reading was paused for backpressure (PauseReading)
/// stayed paused after the server closed it, even once its output had drained, so the
/// client's close reply went unread and the drain waited for `close_timeout`.
#[test]
fn regression_backpressured_connection_reads_the_close_reply_after_shutdown() {
    let _serial = serial();
    let close_timeout = Duration::from_secs(60);
    let cfg = Config {
        workers: 1,
        max_backpressure: 64 << 10,
        close_timeout,
        drain_timeout: close_timeout,
        ..Config::default()
    };
    let mut server = Started::start(cfg, |_| Echo);
    let mut ws = slow_reader(server.addr);
    // Far more than the socket buffers hold: the rest waits in the server, over the cap.
    let big: Vec<u8> = (0..8 << 20).map(|i| (i % 253) as u8).collect();
    ws.send(Message::Binary(big.clone())).unwrap();
    assert!(wait_until(Duration::from_secs(30), || messages_in(&server) == 1));
    let started = Instant::now();
    let joined = server.shutdown();
    let (code, data) = read_until_close(&mut ws);
    assert_eq!(code, 1001);
    assert!(data.len() == 1 && data[0] == Message::Binary(big), "echo lost or cut");
    joined
        .recv_timeout(Duration::from_secs(20))
        .expect("the drain waited for close_timeout: the client's close reply was not read")
        .expect("join");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[cfg(feature = "cli")]
mod cli {
    //! The `wsloop` binary under SIGTERM.

    use super::*;
    use ops::http_get;
    use std::io::Read;
    use std::net::TcpListener;
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::sync::Arc;

    /// The `wsloop echo` process; killed (SIGKILL) if a test fails before it exits.
    struct Wsloop {
        child: Child,
        addr: SocketAddr,
        admin: SocketAddr,
        log: Arc<Mutex<String>>,
    }

    impl Wsloop {
        /// Starts `wsloop echo` on free loopback ports and waits until /healthz answers.
        fn start(extra: &[&str]) -> Wsloop {
            // A port picked here could be taken by someone else before the child binds
            // it; try a few times.
            let mut last = String::new();
            for _ in 0..3 {
                let (addr, admin) = (free_port(), free_port());
                let mut child = Command::new(env!("CARGO_BIN_EXE_wsloop"))
                    .args(["echo", "--listen", &addr.to_string(), "--admin-listen", &admin.to_string()])
                    .args(["--workers", "2"])
                    .args(extra)
                    .env("RUST_LOG", "info")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn wsloop");
                let log = Arc::new(Mutex::new(String::new()));
                let mut stderr = child.stderr.take().unwrap();
                let sink = log.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stderr.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                });
                let mut w = Wsloop { child, addr, admin, log };
                let up = wait_until(Duration::from_secs(30), || {
                    w.exited().is_some() || TcpStream::connect_timeout(&admin, IO_TIMEOUT).is_ok()
                });
                if up && w.exited().is_none() && http_get(admin, "/healthz").0 == 200 {
                    return w;
                }
                last = w.log();
            }
            panic!("wsloop did not start:\n{last}");
        }

        fn pid(&self) -> String {
            self.child.id().to_string()
        }

        /// `kill -TERM` to this child only.
        fn sigterm(&self) {
            let st = Command::new("kill").args(["-TERM", &self.pid()]).status().expect("run kill");
            assert!(st.success(), "kill -TERM {} failed", self.pid());
        }

        fn exited(&mut self) -> Option<ExitStatus> {
            self.child.try_wait().expect("try_wait")
        }

        /// Waits at most `timeout` for the process to exit.
        fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
            let end = Instant::now() + timeout;
            loop {
                if let Some(st) = self.exited() {
                    return Some(st);
                }
                if Instant::now() >= end {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        fn log(&self) -> String {
            self.log.lock().unwrap().clone()
        }
    }

    impl Drop for Wsloop {
        fn drop(&mut self) {
            if self.exited().is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }

    fn free_port() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
    }

    #[test]
    fn sigterm_closes_clients_with_1001_and_exits_0() {
        let _serial = serial();
        let mut w = Wsloop::start(&["--drain-timeout", "20"]);
        let mut clients: Vec<ops::Ws> = (0..5).map(|_| ops::connect(w.addr, "/")).collect();
        for (i, ws) in clients.iter_mut().enumerate() {
            ws.send(Message::Text(format!("before {i}"))).unwrap();
            assert_eq!(ops::next_data(ws), Message::Text(format!("before {i}")));
        }
        // One more with an echo in flight when the signal arrives.
        clients[0].send(Message::Text("in flight".into())).unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || {
                let (_, m) = http_get(w.admin, "/metrics");
                m.lines().any(|l| l == "wsloop_messages_received_total 6")
            }),
            "the in-flight message never arrived"
        );
        w.sigterm();
        for (i, ws) in clients.iter_mut().enumerate() {
            let (code, data) = read_until_close(ws);
            assert_eq!(code, 1001, "client {i}\n{}", w.log());
            if i == 0 {
                assert_eq!(data, [Message::Text("in flight".into())]);
            }
        }
        let st = w.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("still running:\n{}", w.log()));
        assert!(st.success(), "exit status {st}\n{}", w.log());
        // The listener is gone.
        assert!(TcpStream::connect_timeout(&w.addr, Duration::from_secs(2)).is_err());
    }

    #[test]
    fn second_sigterm_during_a_lasting_drain_exits_at_once() {
        let _serial = serial();
        let mut w = Wsloop::start(&["--drain-timeout", "120", "--close-timeout", "120"]);
        let mut polite = ops::connect(w.addr, "/");
        // Never reads, so never answers the close: the drain would last two minutes.
        let silent = ops::raw_upgrade(w.addr);
        w.sigterm();
        let (code, _) = read_until_close(&mut polite);
        assert_eq!(code, 1001);
        // Still up and draining.
        assert_eq!(http_get(w.admin, "/healthz").0, 503, "{}", w.log());
        std::thread::sleep(Duration::from_millis(500));
        assert!(w.exited().is_none(), "exited before the silent client closed:\n{}", w.log());

        let second = Instant::now();
        w.sigterm();
        let st = w.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("second SIGTERM ignored:\n{}", w.log()));
        // It exits by itself (a status code, not killed by the signal), promptly.
        assert!(st.code().is_some(), "killed by a signal: {st}");
        assert!(second.elapsed() < Duration::from_secs(10));
        drop(silent);
    }
}
