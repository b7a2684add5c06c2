//! The echo server against Python's `websockets` client (tests/py/echo_client.py): an
//! implementation written by other people, from the same RFC.
//!
//! Needs `python3` with `websockets` 11 or newer (`python3 -m pip install websockets`).
//! Missing, the test fails: it never passes without having run.

mod common;

use common::TestServer;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wsloop::server::Config;

const INSTALL: &str = "install it with: python3 -m pip install websockets";

/// Fails with an install hint when python3 or its websockets package is missing.
fn require_websockets() {
    let out = Command::new("python3").args(["-c", "import websockets.sync.client"]).output();
    let why = match out {
        Err(e) => format!("python3 could not be run ({e}); install Python 3 and websockets"),
        Ok(o) if o.status.success() => return,
        Ok(o) => format!(
            "python3 cannot import websockets.sync.client ({}); {INSTALL}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and the Python peer is unavailable: {why}");
    }
    panic!("the Python peer is unavailable: {why}");
}

/// Runs `cmd`, killing it after `limit`; returns (success, stdout, stderr).
fn run_bounded(mut cmd: Command, limit: Duration) -> (bool, String, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn python3");
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    match status {
        Some(st) => (st.success(), out, err),
        None => (false, out, format!("{err}\nkilled after {limit:?}")),
    }
}

#[test]
fn python_websockets_client_gets_echoes_pongs_and_a_clean_close() {
    require_websockets();
    let server = TestServer::echo(Config::default());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/echo_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(server.url("/py"));
    let (ok, out, err) = run_bounded(cmd, Duration::from_secs(60));
    assert!(ok, "echo_client.py failed\n--- stdout\n{out}\n--- stderr\n{err}");

    // The server saw the same conversation: four messages (two of them fragmented),
    // one ping, one close with 1000, and nothing left open.
    let h = server.handle();
    assert!(common::wait_until(Duration::from_secs(5), || h.open_connections() == 0));
    let sum =
        |f: &dyn Fn(&wsloop::server::metrics::WorkerMetrics) -> u64| -> u64 { h.metrics().iter().map(|m| f(m)).sum() };
    assert_eq!(sum(&|m| m.messages_in()), 4);
    assert_eq!(sum(&|m| m.frames_in[4].get()), 1, "pings");
    assert_eq!(sum(&|m| m.closes[0].get()), 1, "closes with 1000");
}
