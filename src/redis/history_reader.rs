//! The history reads of the Redis bridge: a thread of its own (`wsloop-redis-history`)
//! with its own blocking connection (plain or TLS, as the bridge's), which reads a room's whole stream (`XRANGE`, one per room
//! asked for) and hands it to the server. The workers only queue the room's name; they
//! never wait on Redis. The publish API's requests, which answer with the message's
//! offset, run their script here too.

use super::blocking::Blocking;
use super::resp::{self, Limits, Status, Value};
use super::streams;
use super::{Endpoint, RedisConfig, TlsClient};
use crate::server::{Message, Seq, WeakPublisher};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

/// Rooms waiting to be read; more: the read is refused (its clients are told
/// `unavailable`).
const QUEUE: usize = 4096;
/// What the thread is asked.
enum Job {
    /// Read a room's stream and hand it to the server.
    Read(Box<str>),
    /// Run the history script (an `EVAL` made by [`streams::append_command`]) and answer
    /// with the message's place.
    Publish { command: Vec<u8>, reply: SyncSender<Result<Seq, String>> },
}

/// Longest a history reply may be.
const MAX_REPLY: usize = 256 << 20;
/// Reads and writes on the history connection give up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The workers' side: queues a room to read.
pub(crate) struct HistoryReader {
    tx: SyncSender<Job>,
    /// `XRANGE` commands sent, for `/metrics`.
    pub reads: Arc<AtomicU64>,
}

impl HistoryReader {
    /// Starts the thread; it connects to Redis (over TLS when `tls` is given) when first
    /// asked.
    pub fn start(cfg: RedisConfig, tls: Option<TlsClient>, server: WeakPublisher) -> io::Result<HistoryReader> {
        let (tx, rx) = sync_channel(QUEUE);
        let reads = Arc::new(AtomicU64::new(0));
        let at = match &cfg.deployment {
            super::Deployment::Cluster { seeds } if !seeds.is_empty() => seeds[0].clone(),
            _ => cfg.endpoint(),
        };
        let thread = Thread { cfg, tls, server, rx, conn: None, at, reads: reads.clone() };
        std::thread::Builder::new().name("wsloop-redis-history".into()).spawn(move || thread.run())?;
        Ok(HistoryReader { tx, reads })
    }

    /// Asks for `room`'s history; false when the queue is full (or the thread gone).
    pub fn read(&self, room: &str) -> bool {
        self.tx.try_send(Job::Read(room.into())).is_ok()
    }
}

impl HistoryReader {
    /// Publishes through the history script and waits (at most the connection's I/O
    /// timeout, twice) for the message's place.
    pub fn publish(&self, cfg: &RedisConfig, room: &str, msg: Message<'_>) -> Result<Seq, String> {
        let mut command = Vec::new();
        let ttl_ms = cfg.history_ttl.map_or(0, |t| t.as_millis().max(1) as u64);
        let flavor = match cfg.deployment {
            super::Deployment::Cluster { .. } => super::command::Flavor::Cluster,
            _ => super::command::Flavor::Single,
        };
        streams::append_command(&mut command, flavor, &cfg.prefix, room, msg, cfg.history, ttl_ms);
        let (reply, rx) = sync_channel(1);
        self.tx.try_send(Job::Publish { command, reply }).map_err(|_| "the history thread is busy".to_string())?;
        rx.recv_timeout(2 * IO_TIMEOUT).map_err(|_| "no answer from Redis".to_string())?
    }
}

struct Thread {
    cfg: RedisConfig,
    tls: Option<TlsClient>,
    server: WeakPublisher,
    rx: Receiver<Job>,
    /// The connection, and the buffer of the last reply (kept for its capacity).
    conn: Option<(Blocking, Vec<u8>)>,
    /// Where `conn` goes: the Redis, or in a cluster the shard the last `MOVED` named.
    at: Endpoint,
    reads: Arc<AtomicU64>,
}

impl Thread {
    fn run(mut self) {
        loop {
            let room = match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Job::Read(r)) => r,
                Ok(Job::Publish { command, reply }) => {
                    let r = self.exchange(&command, &Limits::for_payload(0)).and_then(|v| appended(&v));
                    if r.is_err() {
                        self.conn = None;
                    }
                    let _ = reply.send(r);
                    continue;
                }
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
        let buf = self.exchange(&cmd, &limits)?;
        let parsed = match resp::parse(&buf, &limits) {
            Ok(Status::Complete((v, _))) => entries(v),
            _ => Err("bad reply".into()),
        };
        if let Some((_, b)) = &mut self.conn {
            *b = buf;
        }
        parsed
    }

    /// Sends one command and returns the bytes of its whole reply; in a cluster, follows
    /// `MOVED` to the shard that owns the key (a few times at most).
    fn exchange(&mut self, cmd: &[u8], limits: &Limits) -> Result<Vec<u8>, String> {
        for _ in 0..4 {
            let buf = self.exchange_once(cmd, limits)?;
            let moved = match resp::parse(&buf, limits) {
                Ok(Status::Complete((Value::Error(e), _))) => moved_to(e),
                _ => None,
            };
            match moved {
                Some(at) => {
                    self.at = at;
                    self.conn = None;
                }
                None => return Ok(buf),
            }
        }
        Err("too many MOVED redirections".into())
    }

    fn exchange_once(&mut self, cmd: &[u8], limits: &Limits) -> Result<Vec<u8>, String> {
        let (conn, buf) = match &mut self.conn {
            Some(c) => c,
            None => {
                let (cfg, tls, at) = (&self.cfg, self.tls.as_ref(), &self.at);
                let conn = Blocking::open_with(cfg, tls, at, cfg.connect_timeout, IO_TIMEOUT)?;
                self.conn.insert((conn, Vec::new()))
            }
        };
        let mut buf = std::mem::take(buf);
        conn.exchange(cmd, limits, &mut buf)?;
        Ok(buf)
    }
}

/// `MOVED <slot> <host>:<port>`: where the key lives now.
fn moved_to(e: &[u8]) -> Option<Endpoint> {
    let e = std::str::from_utf8(e).ok()?;
    let addr = e.strip_prefix("MOVED ")?.split(' ').nth(1)?;
    let (host, port) = addr.rsplit_once(':')?;
    Some(Endpoint { host: host.to_string(), port: port.parse().ok()? })
}

/// The history script's reply: `[offset, epoch]`.
fn appended(buf: &[u8]) -> Result<Seq, String> {
    let v = match resp::parse(buf, &Limits::for_payload(0)) {
        Ok(Status::Complete((v, _))) => v,
        _ => return Err("bad reply".into()),
    };
    match v {
        Value::Array(Some(items)) => match items.as_slice() {
            [Value::Int(offset), epoch] => {
                let epoch = epoch.bytes().and_then(|e| std::str::from_utf8(e).ok()?.parse().ok());
                Ok(Seq { offset: *offset as u64, epoch: epoch.ok_or("the script's epoch is not a number")? })
            }
            _ => Err("the script's reply is not [offset, epoch]".into()),
        },
        Value::Error(e) => Err(String::from_utf8_lossy(e).into_owned()),
        other => Err(format!("unexpected reply to the history script: {other:?}")),
    }
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
