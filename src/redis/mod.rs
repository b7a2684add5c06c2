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
//! With a Redis Cluster ([`Deployment::Cluster`]) the thread keeps a publishing and a
//! subscribed connection per shard, reads the slot map with `CLUSTER SLOTS`, and uses
//! sharded pub/sub (`SPUBLISH`, `SSUBSCRIBE`) so that each room's traffic stays on the
//! shard that owns its slot; it follows `MOVED`, `ASK`, slot moves and failovers
//! (`driver.rs`). `rediss://` puts TLS (rustls) under any of these connections.
//!
//! Node-to-node messages travel in an [`envelope`] (the publishing node's id, the
//! WebSocket opcode, a sequence number, the payload) on each topic's node channel,
//! `<prefix>\0<topic>` (in a cluster with a hash tag in front: `command.rs`). A
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

mod blocking;
mod command;
mod config;
mod driver;
pub mod envelope;
#[doc(hidden)]
pub mod fuzzing;
mod history_reader;
#[cfg(feature = "jwt")]
mod jti;
mod link;
mod order;
mod resp;
mod slot;
pub mod streams;
#[cfg(feature = "tls")]
mod tls;
mod topology;

pub use config::{Deployment, Endpoint, RedisConfig, SubscribeMode, TlsRoots};

/// The TLS client configuration of `rediss://` links (nothing without the `tls` feature,
/// where `rediss://` is refused at start).
#[cfg(feature = "tls")]
pub(crate) type TlsClient = Arc<rustls::ClientConfig>;
#[cfg(not(feature = "tls"))]
pub(crate) type TlsClient = std::convert::Infallible;
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
    queue: SyncSender<command::Outgoing>,
    flavor: command::Flavor,
    /// With `RedisConfig::history`: the thread that reads rooms' streams.
    history: Option<history_reader::HistoryReader>,
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
    /// Other nodes' messages that never arrived: gaps in their sequence numbers.
    pub messages_lost: AtomicU64,
    /// Other nodes' messages dropped for arriving late or twice.
    pub late: AtomicU64,
    /// Publishes a cluster node redirected.
    pub moves: AtomicU64,
    pub asks: AtomicU64,
    /// Reads of a cluster's slot map, and the shards it had.
    pub topology_reads: AtomicU64,
    pub shards: AtomicU64,
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
    ///
    /// Fails at once on what cannot work: a `rediss://` URL without the `tls` feature or
    /// with an unusable CA file, pattern subscriptions in a cluster (sharded pub/sub has
    /// no patterns).
    pub fn start(cfg: RedisConfig, publisher: &Publisher) -> io::Result<Arc<RedisBridge>> {
        let flavor = match cfg.deployment {
            Deployment::Single => command::Flavor::Single,
            Deployment::Cluster { .. } if cfg.mode == SubscribeMode::Pattern => {
                return Err(io::Error::other(
                    "a Redis Cluster has no pattern subscriptions for sharded channels: use per-topic mode",
                ));
            }
            Deployment::Cluster { ref seeds } if seeds.is_empty() => {
                return Err(io::Error::other("a Redis Cluster needs at least one seed node"));
            }
            Deployment::Cluster { .. } => command::Flavor::Cluster,
        };
        let tls: Option<TlsClient> = match &cfg.tls {
            None => None,
            #[cfg(feature = "tls")]
            Some(roots) => Some(tls::client_config(roots).map_err(io::Error::other)?),
            #[cfg(not(feature = "tls"))]
            Some(_) => return Err(io::Error::other("rediss://: built without TLS (cargo feature `tls`)")),
        };
        if flavor == command::Flavor::Cluster {
            // Built before the first publish needs it, not on a worker.
            let _ = slot::tag(0);
        }
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
            "redis: bridging topics through {}{} (channels {}*, {:?}), node id {:016x}",
            inner.cfg.server(),
            if inner.cfg.tls.is_some() { " over TLS" } else { "" },
            inner.cfg.prefix,
            inner.cfg.mode,
            inner.node
        );
        let history = match inner.cfg.history {
            0 => None,
            _ => Some(history_reader::HistoryReader::start(inner.cfg.clone(), tls.clone(), publisher.downgrade())?),
        };
        let driver = driver::Driver::new(poll, inner.clone(), rx, publisher.downgrade(), tls);
        std::thread::Builder::new().name("wsloop-redis".into()).spawn(move || driver.run())?;
        Ok(Arc::new(RedisBridge { inner, queue, flavor, history }))
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
        self.history.as_ref().is_some_and(|reader| reader.read(topic))
    }

    fn publish_and_number(&self, topic: &str, msg: Message<'_>) -> Option<Result<crate::server::Seq, String>> {
        let reader = self.history.as_ref()?;
        Some(reader.publish(&self.inner.cfg, topic, msg))
    }

    fn published(&self, topic: &str, msg: Message<'_>) {
        let cfg = &self.inner.cfg;
        let len = match cfg.history {
            0 => command::publish_len(&cfg.prefix, topic, msg.as_bytes().len()),
            _ => streams::append_len(&cfg.prefix, topic, msg.as_bytes().len()),
        };
        // Both bounds are checked before anything is allocated.
        let before = self.inner.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before + len > cfg.queue_bytes {
            self.lose_queue_full(len);
            return;
        }
        let cmd = match cfg.history {
            0 => command::publish(self.flavor, &cfg.prefix, self.inner.node, topic, msg),
            // Appended to the room's stream and published in one step: one order for
            // every node, which all deliver it when it comes back numbered.
            _ => streams::append(self.flavor, &cfg.prefix, topic, msg, cfg.history, cfg.history_ttl),
        };
        // The estimate reserved room; the queue accounts the exact size from here on.
        self.inner.queued_bytes.fetch_sub(len.saturating_sub(cmd.cmd.len()), Ordering::Relaxed);
        let len = cmd.cmd.len();
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
            "1 while both connections to Redis (publishing, subscribed) are up, to every shard of a cluster.",
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
            "wsloop_redis_messages_lost_total",
            "counter",
            "Other nodes' messages that never reached this node (gaps in their sequence numbers: a failover, a lost publish).",
            &[("", get(&s.messages_lost))],
        );
        family(
            "wsloop_redis_messages_late_total",
            "counter",
            "Other nodes' messages dropped for arriving after a later one, or twice (never delivered out of order).",
            &[("", get(&s.late))],
        );
        family(
            "wsloop_redis_redirects_total",
            "counter",
            "Publishes a Redis Cluster node sent elsewhere (MOVED: the slot has a new owner; ASK: it is migrating).",
            &[("{kind=\"moved\"}", get(&s.moves)), ("{kind=\"ask\"}", get(&s.asks))],
        );
        family(
            "wsloop_redis_topology_reads_total",
            "counter",
            "Times the bridge read a Redis Cluster's slot map (CLUSTER SLOTS).",
            &[("", get(&s.topology_reads))],
        );
        family(
            "wsloop_redis_shards",
            "gauge",
            "Shards (primaries) of the Redis Cluster in the last slot map (0 with one Redis).",
            &[("", get(&s.shards))],
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
        if let Some(reader) = &self.history {
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
