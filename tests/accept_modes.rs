//! Both ways of spreading connections over workers serve every client, and the
//! hand-over mode spreads them in exact turn.

mod common;

use common::{open_fds, wait_until, TestServer};
use std::net::TcpStream;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tungstenite::{Message, WebSocket};
use wsloop::server::{AcceptMode, Config};

/// The tests in this file run one at a time: the descriptor count checked by one must
/// not see the sockets of another.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

const WORKERS: usize = 3;
const CLIENTS: usize = 60;

fn echo_round_trip(server: &TestServer, i: usize) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut ws, resp) = tungstenite::client(server.url("/"), stream).expect("handshake");
    assert_eq!(resp.status(), 101);
    let text = format!("client {i}");
    ws.send(Message::text(text.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text(text));
    ws
}

fn accepted_per_worker(server: &TestServer) -> Vec<u64> {
    server.handle().metrics().iter().map(|m| m.accepted.get()).collect()
}

fn serve_clients(mode: AcceptMode) -> Vec<u64> {
    let cfg = Config { workers: WORKERS, accept_mode: mode, ..Config::default() };
    let server = TestServer::echo(cfg);
    // Kept open until all have been served, so each worker holds its share at once.
    let clients: Vec<_> = (0..CLIENTS).map(|i| echo_round_trip(&server, i)).collect();
    let per_worker = accepted_per_worker(&server);
    assert_eq!(per_worker.iter().sum::<u64>(), CLIENTS as u64, "{mode:?}: {per_worker:?}");
    assert!(wait_until(Duration::from_secs(5), || server.handle().open_connections() == CLIENTS));
    drop(clients);
    assert!(
        wait_until(Duration::from_secs(10), || server.handle().open_connections() == 0),
        "{mode:?}: connections left open after the clients went away"
    );
    server.shutdown().expect("clean shutdown");
    per_worker
}

#[test]
fn handoff_deals_connections_out_in_turn() {
    let _g = serial();
    let per_worker = serve_clients(AcceptMode::Handoff);
    assert_eq!(per_worker, vec![(CLIENTS / WORKERS) as u64; WORKERS], "exact round robin");
}

#[test]
fn reuseport_serves_every_client() {
    let _g = serial();
    let per_worker = serve_clients(AcceptMode::ReusePort);
    assert_eq!(per_worker.len(), WORKERS);
}

/// Connections still in a worker's inbox when the server stops are closed with the
/// inbox, not leaked.
#[test]
fn handoff_during_stop_leaks_no_socket() {
    let _g = serial();
    let before = open_fds();
    for _ in 0..5 {
        let cfg = Config { workers: WORKERS, accept_mode: AcceptMode::Handoff, ..Config::default() };
        let server = TestServer::echo(cfg);
        let addr = server.addr;
        let connector =
            std::thread::spawn(move || (0..200).filter_map(|_| TcpStream::connect(addr).ok()).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(5));
        drop(server); // Stop, while connections are being handed out.
        drop(connector.join().unwrap());
    }
    assert!(
        wait_until(Duration::from_secs(5), || open_fds() <= before + 2),
        "descriptors before {before}, after {}",
        open_fds()
    );
}
