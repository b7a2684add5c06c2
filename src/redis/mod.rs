//! Many nodes: a Redis pub/sub bridge (feature `redis`).
//!
//! Each node subscribes to the Redis channels of the topics it has subscribers for,
//! publishes every local publish to Redis, and delivers what other nodes publish to its
//! own subscribers, exactly once:
//!
//! ```text
//!  client -> worker --publish--> local subscribers           (at once, as without Redis)
//!               \--try_send--> [bounded queue] -> wsloop-redis thread -> PUBLISH wsloop:\0<topic>
//!  Redis -> wsloop-redis thread -> wsloop:\0<topic>: envelope from another node? -> Publisher::publish_local
//!                                                    from this node?  -> dropped (already delivered)
//!                               -> wsloop:<topic>: a backend's plain payload  -> Publisher::publish_local
//! ```
//!
//! One thread per node talks to Redis over two connections (publishing, subscribed),
//! with its own mio loop: a slow or absent Redis never stalls a worker. Workers hand it
//! ready-encoded `PUBLISH` commands through a bounded queue; when the queue is full or
//! Redis is down, the message still reaches this node's subscribers and is counted as
//! lost for the others (`wsloop_redis_lost_total`). The thread reconnects with
//! exponential backoff and subscribes again.
//!
//! Node-to-node messages travel in an [`envelope`] (the publishing node's id, the
//! WebSocket opcode, the payload) on each topic's node channel, `<prefix>\0<topic>`. A
//! backend publishes into the cluster with any Redis client on the topic's own channel:
//! `PUBLISH wsloop:news hello` reaches room `news` on every node unchanged, as text when
//! it is UTF-8 and as binary otherwise.
//!
//! ```no_run
//! use wsloop::redis::{RedisBridge, RedisConfig};
//! use wsloop::server::{Config, Rooms, Server};
//!
//! let server = Server::bind("0.0.0.0:9001", Config::default())?;
//! let cfg = RedisConfig::from_url("redis://127.0.0.1:6379/").map_err(std::io::Error::other)?;
//! let bridge = RedisBridge::start(cfg, &server.handle().publisher())?;
//! server.with_bridge(bridge).run(|_| Rooms)?;
//! # Ok::<(), std::io::Error>(())
//! ```

mod config;
mod driver;
pub mod envelope;
#[doc(hidden)]
pub mod fuzzing;
mod history_reader;
#[cfg(feature = "jwt")]
mod jti;
mod resp;
pub mod streams;

pub use config::{RedisConfig, SubscribeMode};
#[cfg(feature = "jwt")]
pub use jti::RedisReplayStore;

use crate::server::{Bridge, Message, Publisher};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// Links a server to other nodes through Redis; install with
/// [`Server::with_bridge`](crate::Server::with_bridge). Dropping the server stops it.
pub struct RedisBridge {
    inner: Arc<Inner>,
    queue: SyncSender<Vec<u8>>,
    /// With `RedisConfig::history`: the thread that reads rooms' streams.
    history: Option<(history_reader::HistoryReader, crate::server::WeakPublisher)>,
}

/// What the bridge (called on worker threads) and its Redis thread share.
pub(crate) struct Inner {
    pub node: u64,
    pub cfg: RedisConfig,
    pub waker: mio::Waker,
    /// A wake-up is on its way: further publishes need not wake the thread again.
    pub wake_pending: AtomicBool,
    /// The bridge is gone: the thread exits.
    pub closed: AtomicBool,
    /// The topics this node wants (per-topic mode), and whether they changed.
    pub desired: Mutex<Desired>,
    /// Bytes in the queue.
    pub queued_bytes: AtomicUsize,
    pub stats: Stats,
}

#[derive(Default)]
pub(crate) struct Desired {
    pub topics: HashSet<Box<str>>,
    pub dirty: bool,
}

/// The bridge's counters, shown on `/metrics`.
#[derive(Default)]
pub(crate) struct Stats {
    pub published: AtomicU64,
    pub received: AtomicU64,
    pub lost_queue_full: AtomicU64,
    pub lost_disconnected: AtomicU64,
    pub lost_rejected: AtomicU64,
    pub malformed: AtomicU64,
    /// Backends' plain payloads delivered (also in `received`).
    pub plain: AtomicU64,
    /// Messages from Redis the workers refused (publish queue full).
    pub refused: AtomicU64,
    pub reconnects: AtomicU64,
    pub connected: AtomicBool,
    pub channels: AtomicU64,
}

impl Inner {
    pub fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::warn!("redis: waking the bridge thread failed: {e}");
            }
        }
    }
}

impl RedisBridge {
    /// Starts the bridge's thread, which connects to Redis (and keeps reconnecting) in the
    /// background; remote messages go to `publisher`'s server, which the bridge does not
    /// keep alive.
    pub fn start(cfg: RedisConfig, publisher: &Publisher) -> io::Result<Arc<RedisBridge>> {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), driver::WAKER)?;
        let (queue, rx) = sync_channel(cfg.queue_messages.max(1));
        let inner = Arc::new(Inner {
            node: node_id(),
            cfg,
            waker,
            wake_pending: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            desired: Mutex::new(Desired::default()),
            queued_bytes: AtomicUsize::new(0),
            stats: Stats::default(),
        });
        log::info!(
            "redis: bridging topics through {} (channels {}*, {:?}), node id {:016x}",
            inner.cfg.server(),
            inner.cfg.prefix,
            inner.cfg.mode,
            inner.node
        );
        let history = match inner.cfg.history {
            0 => None,
            _ => Some((
                history_reader::HistoryReader::start(inner.cfg.clone(), publisher.downgrade())?,
                publisher.downgrade(),
            )),
        };
        let driver = driver::Driver::new(poll, inner.clone(), rx, publisher.downgrade());
        std::thread::Builder::new().name("wsloop-redis".into()).spawn(move || driver.run())?;
        Ok(Arc::new(RedisBridge { inner, queue, history }))
    }

    /// This node's id in the envelopes it publishes.
    pub fn node_id(&self) -> u64 {
        self.inner.node
    }

    /// True while both connections to Redis are up.
    pub fn is_connected(&self) -> bool {
        self.inner.stats.connected.load(Ordering::Relaxed)
    }

    fn lose_queue_full(&self, bytes: usize) {
        self.inner.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.inner.stats.lost_queue_full.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for RedisBridge {
    fn drop(&mut self) {
        // Not joined: the last reference to the server may be dropped on the bridge's
        // own thread (while it delivers), which would then wait for itself.
        self.inner.closed.store(true, Ordering::Release);
        let _ = self.inner.waker.wake();
    }
}

impl Bridge for RedisBridge {
    fn topic_changed(&self, topic: &str, active: bool) {
        if self.inner.cfg.mode == SubscribeMode::Pattern {
            return;
        }
        {
            let mut d = self.inner.desired.lock().unwrap_or_else(|e| e.into_inner());
            if active {
                d.topics.insert(topic.into());
            } else {
                d.topics.remove(topic);
            }
            d.dirty = true;
        }
        self.inner.wake();
    }

    fn numbers_messages(&self) -> bool {
        self.history.is_some()
    }

    fn read_history(&self, topic: &str) -> bool {
        self.history.as_ref().is_some_and(|(reader, _)| reader.read(topic))
    }

    fn publish_and_number(&self, topic: &str, msg: Message<'_>) -> Option<Result<crate::server::Seq, String>> {
        let (reader, _) = self.history.as_ref()?;
        Some(reader.publish(&self.inner.cfg, topic, msg))
    }

    fn published(&self, topic: &str, msg: Message<'_>) {
        let cfg = &self.inner.cfg;
        let payload = msg.as_bytes();
        let channel_len = cfg.prefix.len() + envelope::NODE_CHANNEL_MARK.len() + topic.len();
        let len = match cfg.history {
            0 => resp::encoded_len(3, 7 + channel_len + envelope::HEADER_LEN + payload.len()),
            _ => streams::APPEND_OVERHEAD + 2 * (channel_len + 2) + payload.len(),
        };
        // Both bounds are checked before anything is allocated.
        let before = self.inner.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before + len > cfg.queue_bytes {
            self.lose_queue_full(len);
            return;
        }
        let mut cmd = Vec::with_capacity(len);
        if cfg.history > 0 {
            // Appended to the room's stream and published in one step: one order for
            // every node, which all deliver it when it comes back numbered.
            let ttl_ms = cfg.history_ttl.map_or(0, |t| t.as_millis().max(1) as u64);
            streams::append_command(&mut cmd, &cfg.prefix, topic, msg, cfg.history, ttl_ms);
        } else {
            resp::command(&mut cmd, 3);
            resp::arg(&mut cmd, &[b"PUBLISH"]);
            resp::arg(&mut cmd, &[cfg.prefix.as_bytes(), envelope::NODE_CHANNEL_MARK, topic.as_bytes()]);
            resp::arg(&mut cmd, &[&envelope::header(self.inner.node, msg), payload]);
        }
        // The estimate reserved room; the queue accounts the exact size from here on.
        self.inner.queued_bytes.fetch_sub(len.saturating_sub(cmd.len()), Ordering::Relaxed);
        let len = cmd.len();
        match self.queue.try_send(cmd) {
            Ok(()) => self.inner.wake(),
            Err(TrySendError::Full(_)) => self.lose_queue_full(len),
            Err(TrySendError::Disconnected(_)) => {
                self.inner.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                self.inner.stats.lost_disconnected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn write_metrics(&self, o: &mut String) {
        let s = &self.inner.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut family = |name: &str, kind: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(o, "{name}{labels} {v}");
            }
        };
        family(
            "wsloop_redis_connected",
            "gauge",
            "1 while both connections to Redis (publishing, subscribed) are up.",
            &[("", s.connected.load(Ordering::Relaxed) as u64)],
        );
        family(
            "wsloop_redis_published_total",
            "counter",
            "Local publishes Redis acknowledged.",
            &[("", get(&s.published))],
        );
        family(
            "wsloop_redis_received_total",
            "counter",
            "Messages from Redis (other nodes' and backends' plain payloads) handed to this node's subscribers.",
            &[("", get(&s.received))],
        );
        family(
            "wsloop_redis_plain_received_total",
            "counter",
            "Backends' plain payloads (PUBLISH <prefix><room> <payload>) handed to this node's subscribers.",
            &[("", get(&s.plain))],
        );
        family(
            "wsloop_redis_refused_total",
            "counter",
            "Messages from Redis this node's workers refused (publish queue full).",
            &[("", get(&s.refused))],
        );
        family(
            "wsloop_redis_lost_total",
            "counter",
            "Local publishes that did not reach Redis (other nodes miss them; local subscribers got them).",
            &[
                ("{reason=\"queue_full\"}", get(&s.lost_queue_full)),
                ("{reason=\"disconnected\"}", get(&s.lost_disconnected)),
                ("{reason=\"rejected\"}", get(&s.lost_rejected)),
            ],
        );
        family(
            "wsloop_redis_malformed_total",
            "counter",
            "Messages dropped: node traffic that was not a wsloop envelope, or a payload over max_message.",
            &[("", get(&s.malformed))],
        );
        family(
            "wsloop_redis_reconnects_total",
            "counter",
            "Connections to Redis re-established after a failure.",
            &[("", get(&s.reconnects))],
        );
        family(
            "wsloop_redis_channels",
            "gauge",
            "Channels (or patterns) this node is subscribed to, as Redis last reported.",
            &[("", get(&s.channels))],
        );
        if let Some((reader, _)) = &self.history {
            family(
                "wsloop_redis_history_reads_total",
                "counter",
                "Rooms' streams read from Redis (XRANGE), to serve clients older than this node's history.",
                &[("", reader.reads.load(Ordering::Relaxed))],
            );
        }
        family(
            "wsloop_redis_queue_bytes",
            "gauge",
            "Bytes of publishes waiting for the Redis thread.",
            &[("", self.inner.queued_bytes.load(Ordering::Relaxed) as u64)],
        );
    }
}

/// A random, nonzero id for this node (0 marks publishers that are not nodes).
fn node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's random source; the time and pid separate nodes
    // even if that seed were ever fixed.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.finish().max(1)
}
