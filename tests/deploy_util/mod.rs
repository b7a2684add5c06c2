//! For the deploy/ tests: the real `wsloop` binary started with given args and env on
//! loopback, its admin address read from its log, killed on drop; and `promtool`, which
//! is required (scripts/test.sh installs it): a missing one fails, it is never skipped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[path = "../common/spawn.rs"]
mod spawn;
use spawn::spawn_wsloop;

pub struct Wsloop {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

/// The address after `marker` in `line`, up to the next `/` or space.
fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = line.split(marker).nth(1)?;
    rest.split(['/', ' ', '"']).next()?.parse().ok()
}

impl Wsloop {
    /// Starts `wsloop args..` with exactly the `WSLOOP_*` variables in `env`; waits (at
    /// most 20 s) for its "admin: http://ADDR/metrics" and "listening on ws://ADDR" lines.
    pub fn start(args: &[String], env: &[(String, String)]) -> Wsloop {
        let (mut child, rx) = spawn_wsloop(args, env);
        let (mut addr, mut admin, mut log) = (None, None, Vec::new());
        for _ in 0..200 {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    admin = admin.or(addr_after(&line, "admin: http://"));
                    addr = addr.or(addr_after(&line, "listening on ws://"));
                    log.push(line);
                    if addr.is_some() && admin.is_some() {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let (Some(addr), Some(admin)) = (addr, admin) else {
            let _ = child.kill();
            let status = child.wait();
            panic!("wsloop {args:?} did not start ({status:?}):\n{}", log.join("\n"));
        };
        Wsloop { child, addr, admin }
    }
}

impl Drop for Wsloop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `promtool args..` in `dir`; panics if it is not installed or fails.
pub fn promtool(dir: &std::path::Path, args: &[&str]) -> Output {
    let out = match Command::new("promtool").args(args).current_dir(dir).stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            panic!(
                "promtool not found{}: install the Debian package `prometheus` (scripts/test.sh does so)",
                if ci { " under CI=true" } else { "" }
            );
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every `wsloop_*` metric name in `text` (PromQL or anything else).
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("wsloop_") {
        let boundary = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        if boundary {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}
