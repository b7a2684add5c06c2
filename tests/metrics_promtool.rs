//! The admin listener against the real server: `GET /metrics` after some traffic has the
//! counters that traffic moved and passes `promtool check metrics` (Debian package
//! `prometheus`, which scripts/test.sh installs; a missing promtool fails the test, it is
//! never skipped), and `GET /healthz` turns from 200 to 503 once a shutdown has begun.

mod common;
mod ops;

use common::{wait_until, Echo};
use ops::{connect, http_get, next_data, upgrade_request, Started};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tungstenite::Message;
use wsloop::server::Config;

fn start(mut cfg: Config) -> Started {
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    Started::start(cfg, |_| Echo)
}

fn admin(s: &Started) -> SocketAddr {
    s.admin.expect("admin_addr with admin_listen set")
}

/// `name{labels}` -> value, for every sample line of a text exposition.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample line: {l:?}"));
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

fn sample(all: &HashMap<String, f64>, series: &str) -> f64 {
    *all.get(series).unwrap_or_else(|| panic!("no sample {series}"))
}

/// Pipes `body` into `promtool check metrics`; panics with promtool's output on failure.
fn promtool_check(body: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            panic!(
                "promtool not found{}: install the Debian package `prometheus` \
                 (scripts/test.sh does so) to check the /metrics exposition",
                if ci { " under CI=true" } else { "" }
            );
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child.stdin.take().unwrap().write_all(body.as_bytes()).expect("write to promtool");
    // promtool reads its input to the end and exits; it does not wait on anything else.
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- exposition ---\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_count_traffic_and_pass_promtool() {
    let s = start(Config { workers: 2, ..Config::default() });

    // One client that stays open and exchanges messages.
    let mut kept = connect(s.addr, "/");
    for i in 0..5 {
        kept.send(Message::Text(format!("m{i}"))).unwrap();
        assert_eq!(next_data(&mut kept), Message::Text(format!("m{i}")));
    }
    // One that opens and closes normally (1000).
    let mut closed = connect(s.addr, "/");
    closed.send(Message::Binary(vec![1, 2, 3])).unwrap();
    assert_eq!(next_data(&mut closed), Message::Binary(vec![1, 2, 3]));
    ops::close(closed);
    // One refused handshake: no Sec-WebSocket-Key is a 400.
    let bad =
        upgrade_request(&s.addr.to_string(), "/", &[]).replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    let resp = ops::http_until_eof(s.addr, &bad);
    assert_eq!(ops::status(&resp), 400, "{resp}");
    assert!(wait_until(Duration::from_secs(10), || s.handle().open_connections() == 1));

    let (status, body) = http_get(admin(&s), "/metrics");
    assert_eq!(status, 200, "{body}");
    let m = samples(&body);
    assert!(sample(&m, "wsloop_messages_received_total") >= 6.0, "{body}");
    assert!(sample(&m, "wsloop_messages_sent_total") >= 6.0, "{body}");
    assert!(sample(&m, "wsloop_handshakes_failed_total{status=\"400\"}") >= 1.0, "{body}");
    assert!(sample(&m, "wsloop_connections_rejected_total{reason=\"bad_handshake\"}") >= 1.0, "{body}");
    assert_eq!(sample(&m, "wsloop_connections_open"), 1.0, "{body}");
    assert!(sample(&m, "wsloop_connections_accepted_total") >= 3.0, "{body}");
    assert!(sample(&m, "wsloop_closes_total{code=\"1000\"}") >= 1.0, "{body}");
    assert!(sample(&m, "wsloop_frames_received_total{opcode=\"text\"}") >= 5.0, "{body}");
    assert!(sample(&m, "wsloop_bytes_received_total") > 0.0, "{body}");
    assert_eq!(sample(&m, "wsloop_draining"), 0.0, "{body}");
    promtool_check(&body);

    // The gauge follows the last close.
    ops::close(kept);
    assert!(wait_until(Duration::from_secs(10), || s.handle().open_connections() == 0));
    let (_, body) = http_get(admin(&s), "/metrics");
    let m = samples(&body);
    assert_eq!(sample(&m, "wsloop_connections_open"), 0.0, "{body}");
    assert!(sample(&m, "wsloop_closes_total{code=\"1000\"}") >= 2.0, "{body}");
    promtool_check(&body);
}

#[test]
fn admin_answers_404_and_405_for_other_requests() {
    let s = start(Config { workers: 1, ..Config::default() });
    assert_eq!(http_get(admin(&s), "/nope").0, 404);
    let resp = ops::http_until_eof(admin(&s), "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(ops::status(&resp), 405, "{resp}");
}

#[test]
fn healthz_is_200_then_503_while_draining() {
    // One worker: the admin listener lives on worker 0, which must be the one draining.
    let cfg = Config {
        workers: 1,
        close_timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(60),
        ..Config::default()
    };
    let mut s = start(cfg);
    let (status, body) = http_get(admin(&s), "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // A client that upgrades and then never reads nor answers the server's close.
    let silent = ops::raw_upgrade(s.addr);
    assert!(wait_until(Duration::from_secs(10), || s.handle().open_connections() == 1));

    let join = s.shutdown();
    let (status, body) = http_get(admin(&s), "/healthz");
    assert_eq!((status, body.as_str()), (503, "draining\n"));
    let (_, metrics) = http_get(admin(&s), "/metrics");
    assert_eq!(sample(&samples(&metrics), "wsloop_draining"), 1.0, "{metrics}");
    // The drain lasts while the client stays silent.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(http_get(admin(&s), "/healthz").0, 503);
    assert_eq!(s.handle().open_connections(), 1);

    // Once it goes away the workers finish.
    drop(silent);
    let joined = join.recv_timeout(Duration::from_secs(20)).expect("server did not exit after its last client left");
    joined.expect("join");
}

/// Regression: the admin listener lives on worker 0, which exited as soon as its own
/// connections were drained, so `/healthz` and `/metrics` went away (connection refused)
/// while other workers were still draining.
#[test]
fn regression_healthz_answers_503_while_another_worker_drains() {
    let cfg = Config {
        workers: 2,
        close_timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(60),
        ..Config::default()
    };
    let mut s = start(cfg);
    let per_worker_open = |s: &Started| -> Vec<u64> { s.handle().metrics().iter().map(|m| m.open.get()).collect() };
    // The kernel spreads connections over the workers' listeners: keep the first silent
    // client that lands on worker 1, so worker 0 has nothing of its own to drain.
    let mut silent = None;
    for _ in 0..64 {
        let c = ops::raw_upgrade(s.addr);
        if per_worker_open(&s)[1] == 1 {
            silent = Some(c);
            break;
        }
        drop(c);
        assert!(wait_until(Duration::from_secs(10), || s.handle().open_connections() == 0));
    }
    let silent = silent.expect("64 connections and none on worker 1");
    assert_eq!(per_worker_open(&s), [0, 1]);

    let join = s.shutdown();
    // Worker 0 is drained at once; the admin listener must stay up for worker 1's drain.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(http_get(admin(&s), "/healthz").0, 503);
    }
    let (_, metrics) = http_get(admin(&s), "/metrics");
    assert_eq!(sample(&samples(&metrics), "wsloop_connections_open"), 1.0, "{metrics}");
    drop(silent);
    join.recv_timeout(Duration::from_secs(20)).expect("server did not exit after its last client left").expect("join");
}
