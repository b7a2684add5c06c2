//! The `jti` replay check shared by every node: `SET <prefix>jti:<id> 1 NX PXAT <ms>`.
//! `OK` means the id was new; a null reply means another node (or this one) has used it.
//!
//! Cost, and why it is acceptable: the check is a synchronous round trip made by the
//! worker that runs the handshake, on a small pool of blocking connections of its own
//! (not the bridge's): while it waits (one Redis round trip, well under a millisecond on
//! a LAN) that worker's other connections wait too. Each wait is bounded by
//! [`RedisReplayStore::timeout`] (default 200 ms); after a failure the store is taken as
//! down for [`DOWN_FOR`] and answers at once, so an outage costs one timeout per
//! worker per second, not one per handshake. Only handshakes whose token passed every
//! other check reach Redis. While Redis is unreachable the check fails closed: tokens
//! that need it are refused with 503 (`wsloop_connections_rejected_total{reason=
//! "replay_check"}`), and the outage and the recovery are logged once each.

use super::blocking::Blocking;
use super::resp::{self, Limits, Value};
use super::{RedisConfig, TlsClient};
use crate::auth::{AuthError, ReplayStore};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the store is taken as down after a failed round trip.
pub const DOWN_FOR: Duration = Duration::from_secs(1);

/// Replies to SET and AUTH are short lines.
const LIMITS: Limits = Limits { max_bulk: 1024, max_array: 0, max_depth: 0, max_line: 1024, max_reply: 2048 };

/// Idle connections kept, at most (one per worker is the most used at once).
const MAX_IDLE: usize = 64;

/// A [`ReplayStore`] in Redis, shared by every node pointed at the same server and
/// prefix.
pub struct RedisReplayStore {
    /// Where and how to connect (host, port, credentials, TLS), and the key prefix.
    cfg: RedisConfig,
    /// The TLS client of a `rediss://` URL, or why it could not be set up.
    tls: Result<Option<TlsClient>, String>,
    timeout: Duration,
    idle: Mutex<Vec<Blocking>>,
    down_until: Mutex<Option<Instant>>,
    down: AtomicBool,
}

impl RedisReplayStore {
    /// A store on the server, credentials and key prefix of `cfg` (keys are
    /// `<prefix>jti:<id>`). No connection is made until the first check.
    pub fn new(cfg: &RedisConfig) -> Self {
        let tls = match &cfg.tls {
            None => Ok(None),
            #[cfg(feature = "tls")]
            Some(roots) => super::tls::client_config(roots).map(Some),
            #[cfg(not(feature = "tls"))]
            Some(_) => Err("rediss://: built without TLS (cargo feature `tls`)".to_string()),
        };
        RedisReplayStore {
            cfg: cfg.clone(),
            tls,
            timeout: Duration::from_millis(200),
            idle: Mutex::new(Vec::new()),
            down_until: Mutex::new(None),
            down: AtomicBool::new(false),
        }
    }

    /// The longest a connection, a write or a reply is waited for (default 200 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn connect(&self) -> Result<Blocking, String> {
        let tls = self.tls.as_ref().map_err(Clone::clone)?;
        Blocking::open(&self.cfg, tls.as_ref(), &self.cfg.endpoint(), self.timeout)
    }

    /// One `SET NX PXAT` on a pooled connection.
    fn set_nx(&self, jti: &str, until_unix: u64) -> Result<Reply, String> {
        let prefix = &self.cfg.prefix;
        let mut cmd = Vec::with_capacity(resp::encoded_len(6, prefix.len() + jti.len() + 40));
        resp::command(&mut cmd, 6);
        resp::arg(&mut cmd, &[b"SET"]);
        resp::arg(&mut cmd, &[prefix.as_bytes(), b"jti:", jti.as_bytes()]);
        resp::arg(&mut cmd, &[b"1"]);
        resp::arg(&mut cmd, &[b"NX"]);
        resp::arg(&mut cmd, &[b"PXAT"]);
        resp::arg(&mut cmd, &[until_unix.saturating_mul(1000).to_string().as_bytes()]);
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let reply = conn.call(&cmd, &LIMITS, |v| {
            Ok(match v {
                Value::Simple(b"OK") => Reply::Ok,
                Value::Bulk(None) => Reply::Null,
                Value::Error(e) => Reply::Other(String::from_utf8_lossy(e).into_owned()),
                other => Reply::Other(format!("unexpected reply {other:?}")),
            })
        })?;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        Ok(reply)
    }

    fn mark_down(&self, why: &str) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + DOWN_FOR);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if !self.down.swap(true, Ordering::Relaxed) {
            let at = self.cfg.endpoint().server();
            log::warn!(redis = at.as_str();
                "jti replay check: Redis at {at} failed ({why}); refusing tokens that need the check with 503 until it answers");
        }
    }
}

impl ReplayStore for RedisReplayStore {
    fn claim(&self, jti: &str, until_unix: u64, _now_unix: u64) -> Result<(), AuthError> {
        if self.down_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| Instant::now() < t) {
            return Err(AuthError::ReplayCheckUnavailable);
        }
        match self.set_nx(jti, until_unix) {
            Ok(reply @ (Reply::Ok | Reply::Null)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    log::info!("jti replay check: Redis at {} answers again", self.cfg.endpoint().server());
                }
                if reply == Reply::Ok {
                    Ok(())
                } else {
                    Err(AuthError::Replayed)
                }
            }
            Ok(Reply::Other(what)) => {
                self.mark_down(&what);
                Err(AuthError::ReplayCheckUnavailable)
            }
            Err(e) => {
                self.mark_down(&e);
                Err(AuthError::ReplayCheckUnavailable)
            }
        }
    }
}

impl fmt::Debug for RedisReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No password.
        f.debug_struct("RedisReplayStore")
            .field("host", &self.cfg.host)
            .field("port", &self.cfg.port)
            .field("tls", &self.cfg.tls.is_some())
            .field("prefix", &self.cfg.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Ok,
    Null,
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn unreachable_redis_fails_closed_and_then_answers_at_once() {
        // A port with nothing listening: connection refused.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = RedisConfig { port, ..RedisConfig::default() };
        let store = RedisReplayStore::new(&cfg);
        assert_eq!(store.claim("a", u64::MAX / 2000, 0), Err(AuthError::ReplayCheckUnavailable));
        let t = Instant::now();
        assert_eq!(store.claim("b", u64::MAX / 2000, 0), Err(AuthError::ReplayCheckUnavailable));
        assert!(t.elapsed() < Duration::from_millis(50), "the second check should not wait");
    }

    #[test]
    fn replies_are_read_whole() {
        // A fake Redis answering OK, then null, then an error.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut seen = Vec::new();
            for answer in [&b"+OK\r\n"[..], b"$-1\r\n", b"-ERR syntax error\r\n"] {
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                // Split the reply in two writes: partial input is not an error.
                s.write_all(&answer[..1]).unwrap();
                std::thread::sleep(Duration::from_millis(5));
                s.write_all(&answer[1..]).unwrap();
            }
            seen
        });
        let cfg = RedisConfig { port, prefix: "p:".into(), ..RedisConfig::default() };
        let store = RedisReplayStore::new(&cfg).timeout(Duration::from_secs(2));
        assert_eq!(store.claim("id1", 1_700_000_600, 0), Ok(()));
        assert_eq!(store.claim("id1", 1_700_000_600, 0), Err(AuthError::Replayed));
        assert_eq!(store.claim("id2", 1_700_000_600, 0), Err(AuthError::ReplayCheckUnavailable));
        let seen = server.join().unwrap();
        assert_eq!(
            seen[0],
            "*6\r\n$3\r\nSET\r\n$9\r\np:jti:id1\r\n$1\r\n1\r\n$2\r\nNX\r\n$4\r\nPXAT\r\n$13\r\n1700000600000\r\n"
        );
    }
}
