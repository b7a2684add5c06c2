//! The history reads of the Redis bridge: a thread of its own (`wsloop-redis-history`)
//! with its own connection, which reads a room's whole stream (`XRANGE`, one per room
//! asked for) and hands it to the server. The workers only queue the room's name; they
//! never wait on Redis.

use super::resp::{self, Limits, Status, Value};
use super::streams;
use super::RedisConfig;
use crate::server::WeakPublisher;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Rooms waiting to be read; more: the read is refused (its clients are told
/// `unavailable`).
const QUEUE: usize = 4096;
/// Longest a history reply may be.
const MAX_REPLY: usize = 256 << 20;
/// Reads and writes on the history connection give up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The workers' side: queues a room to read.
pub(crate) struct HistoryReader {
    tx: SyncSender<Box<str>>,
    /// `XRANGE` commands sent, for `/metrics`.
    pub reads: Arc<AtomicU64>,
}

impl HistoryReader {
    pub fn start(cfg: RedisConfig, server: WeakPublisher) -> io::Result<HistoryReader> {
        let (tx, rx) = sync_channel(QUEUE);
        let reads = Arc::new(AtomicU64::new(0));
        let thread = Thread { cfg, server, rx, conn: None, reads: reads.clone() };
        std::thread::Builder::new().name("wsloop-redis-history".into()).spawn(move || thread.run())?;
        Ok(HistoryReader { tx, reads })
    }

    /// Asks for `room`'s history; when the queue is full, the waiting clients are told
    /// at once.
    pub fn read(&self, room: &str, server: &WeakPublisher) {
        match self.tx.try_send(room.into()) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                if let Some(p) = server.upgrade() {
                    p.history_read(room, None);
                }
            }
        }
    }
}

struct Thread {
    cfg: RedisConfig,
    server: WeakPublisher,
    rx: Receiver<Box<str>>,
    conn: Option<(TcpStream, Vec<u8>)>,
    reads: Arc<AtomicU64>,
}

impl Thread {
    fn run(mut self) {
        loop {
            let room = match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    if self.server.upgrade().is_none() {
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let Some(server) = self.server.upgrade() else { return };
            match self.read_room(&room) {
                Ok(read) => {
                    let msgs = read.1.iter().filter_map(|(o, k, d)| Some((*o, streams::message(k, d)?))).collect();
                    server.history_read(&room, Some((read.0, msgs)));
                }
                Err(e) => {
                    log::warn!("redis: reading the history of room {room:?} failed: {e}");
                    self.conn = None;
                    server.history_read(&room, None);
                }
            }
        }
    }

    /// The room's epoch and entries (offset, kind, payload), oldest first.
    #[allow(clippy::type_complexity)]
    fn read_room(&mut self, room: &str) -> Result<(u64, Vec<(u64, Vec<u8>, Vec<u8>)>), String> {
        let mut cmd = Vec::new();
        resp::command(&mut cmd, 6);
        resp::arg(&mut cmd, &[b"XRANGE"]);
        resp::arg(&mut cmd, &[&streams::stream_key(&self.cfg.prefix, room)]);
        resp::arg(&mut cmd, &[b"-"]);
        resp::arg(&mut cmd, &[b"+"]);
        resp::arg(&mut cmd, &[b"COUNT"]);
        resp::arg(&mut cmd, &[self.cfg.history.to_string().as_bytes()]);
        self.reads.fetch_add(1, Ordering::Relaxed);
        let limits = Limits {
            max_bulk: self.cfg.max_message.saturating_add(resp::BULK_SLACK),
            max_array: self.cfg.history.max(16),
            max_depth: 3,
            max_line: resp::MAX_LINE,
            max_reply: MAX_REPLY,
        };
        let cfg = self.cfg.clone();
        let (stream, buf) = match &mut self.conn {
            Some(c) => c,
            None => self.conn.insert(connect(&cfg)?),
        };
        stream.write_all(&cmd).map_err(|e| format!("write: {e}"))?;
        buf.clear();
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            match resp::parse(buf, &limits) {
                Ok(Status::Complete((v, _))) => return entries(v),
                Ok(Status::Partial) => {}
                Err(e) => return Err(format!("bad reply: {e:?}")),
            }
            let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("Redis closed the connection".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn connect(cfg: &RedisConfig) -> Result<(TcpStream, Vec<u8>), String> {
    let addr = (cfg.host.as_str(), cfg.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", cfg.host))?
        .next()
        .ok_or("the host name has no address")?;
    let mut s = TcpStream::connect_timeout(&addr, cfg.connect_timeout).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    if let Some(p) = &cfg.password {
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
        resp::arg(&mut cmd, &[p.as_bytes()]);
        s.write_all(&cmd).map_err(|e| format!("write: {e}"))?;
        let limits = Limits::for_payload(0);
        let mut chunk = [0u8; 512];
        loop {
            match resp::parse(&buf, &limits) {
                Ok(Status::Complete((Value::Error(e), _))) => {
                    return Err(format!("AUTH refused: {}", String::from_utf8_lossy(e)));
                }
                Ok(Status::Complete(_)) => break,
                Ok(Status::Partial) => {}
                Err(e) => return Err(format!("bad reply to AUTH: {e:?}")),
            }
            let n = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("Redis closed the connection".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.clear();
    }
    Ok((s, buf))
}

/// An `XRANGE` reply as (epoch, entries); an empty stream has epoch 0.
#[allow(clippy::type_complexity)]
fn entries(v: Value<'_>) -> Result<(u64, Vec<(u64, Vec<u8>, Vec<u8>)>), String> {
    let items = match v {
        Value::Array(Some(items)) => items,
        Value::Array(None) => Vec::new(),
        Value::Error(e) => return Err(String::from_utf8_lossy(e).into_owned()),
        other => return Err(format!("unexpected reply to XRANGE: {other:?}")),
    };
    let mut epoch = 0;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(Some(pair)) = item else { return Err("an XRANGE entry is not an array".into()) };
        let (Some(id), Some(Value::Array(Some(fields)))) = (pair.first().and_then(Value::bytes), pair.get(1)) else {
            return Err("an XRANGE entry is not [id, fields]".into());
        };
        let offset = streams::offset_of(id).ok_or("a stream entry id is not <offset>-1")?;
        let (mut e, mut k, mut d) = (None, None, None);
        for kv in fields.chunks(2) {
            match (kv[0].bytes(), kv.get(1).and_then(Value::bytes)) {
                (Some(b"e"), Some(v)) => e = Some(v),
                (Some(b"k"), Some(v)) => k = Some(v),
                (Some(b"d"), Some(v)) => d = Some(v),
                _ => {}
            }
        }
        let (Some(e), Some(k), Some(d)) = (e, k, d) else { return Err("a stream entry lacks e, k or d".into()) };
        epoch =
            std::str::from_utf8(e).ok().and_then(|e| e.parse().ok()).ok_or("a stream entry's epoch is not a number")?;
        out.push((offset, k.to_vec(), d.to_vec()));
    }
    Ok((epoch, out))
}
