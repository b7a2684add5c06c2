//! One blocking request-and-reply connection to a Redis node, plain or TLS, with AUTH:
//! what the bridge's thread uses to read a cluster's topology, the history thread to
//! read rooms' streams, and the `jti` check to claim ids.

use super::resp::{self, Limits, Status, Value};
use super::{Endpoint, RedisConfig, TlsClient};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// A connection whose every read and write is bounded by a timeout.
pub(crate) struct Blocking {
    stream: Box<dyn Duplex>,
}

impl Blocking {
    /// Connects to `at` (TLS when `tls` is given) and authenticates as `cfg` says; the
    /// connection, each read and each write within `timeout`.
    pub fn open(cfg: &RedisConfig, tls: Option<&TlsClient>, at: &Endpoint, timeout: Duration) -> Result<Self, String> {
        Self::open_with(cfg, tls, at, timeout, timeout)
    }

    /// `open`, connecting within `connect_timeout` and then bounding each read and write
    /// by `io_timeout`.
    pub fn open_with(
        cfg: &RedisConfig,
        tls: Option<&TlsClient>,
        at: &Endpoint,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Self, String> {
        let addr = (at.host.as_str(), at.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {}: {e}", at.host))?
            .next()
            .ok_or_else(|| format!("{}: the host name has no address", at.host))?;
        let s = TcpStream::connect_timeout(&addr, connect_timeout).map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(io_timeout)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(io_timeout)).map_err(|e| e.to_string())?;
        let stream: Box<dyn Duplex> = match tls {
            None => Box::new(s),
            #[cfg(feature = "tls")]
            Some(cfg) => Box::new(rustls::StreamOwned::new(super::tls::session(cfg, &at.host)?, s)),
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
        };
        let mut conn = Blocking { stream };
        if let Some(cmd) = auth_command(cfg) {
            let limits = Limits { max_bulk: 1024, max_array: 0, max_depth: 0, max_line: 1024, max_reply: 2048 };
            conn.call(&cmd, &limits, |v| match v {
                Value::Error(e) => Err(format!("AUTH refused: {}", String::from_utf8_lossy(e))),
                _ => Ok(()),
            })?;
        }
        Ok(conn)
    }

    /// Sends `cmd` and hands its one reply to `f`.
    pub fn call<T>(
        &mut self,
        cmd: &[u8],
        limits: &Limits,
        f: impl FnOnce(Value<'_>) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut buf = Vec::with_capacity(1024);
        self.exchange(cmd, limits, &mut buf)?;
        match resp::parse(&buf, limits) {
            Ok(Status::Complete((v, _))) => f(v),
            _ => Err("bad reply".into()),
        }
    }

    /// Sends `cmd` and reads the bytes of its one whole reply into `buf` (cleared first,
    /// so that a caller reading large replies keeps one allocation).
    pub fn exchange(&mut self, cmd: &[u8], limits: &Limits, buf: &mut Vec<u8>) -> Result<(), String> {
        self.stream.write_all(cmd).and_then(|()| self.stream.flush()).map_err(|e| format!("write: {e}"))?;
        buf.clear();
        let mut chunk = [0u8; 16 << 10];
        loop {
            let n = self.stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("Redis closed the connection".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            match resp::parse(buf, limits) {
                Ok(Status::Partial) => continue,
                Ok(Status::Complete(_)) => return Ok(()),
                Err(e) => return Err(format!("bad reply: {e:?}")),
            }
        }
    }
}

/// `AUTH [user] password` when `cfg` has a password.
pub(crate) fn auth_command(cfg: &RedisConfig) -> Option<Vec<u8>> {
    let pass = cfg.password.as_ref()?;
    let mut cmd = Vec::new();
    match &cfg.username {
        Some(u) => {
            resp::command(&mut cmd, 3);
            resp::arg(&mut cmd, &[b"AUTH"]);
            resp::arg(&mut cmd, &[u.as_bytes()]);
        }
        None => {
            resp::command(&mut cmd, 2);
            resp::arg(&mut cmd, &[b"AUTH"]);
        }
    }
    resp::arg(&mut cmd, &[pass.as_bytes()]);
    Some(cmd)
}
