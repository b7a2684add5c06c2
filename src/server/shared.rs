//! What the workers share: their inboxes, the topic view, admission counters and the
//! shutdown flag. Touched on accept, subscribe and publish, never per message.

use super::config::Config;
use super::history::{Seq, Store};
use super::metrics::WorkerMetrics;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// A message to a worker.
pub(crate) enum Cmd {
    /// Deliver a framed message to the worker's subscribers of `topic`; `seq`: its
    /// place in the room's history, when history is on.
    Publish { topic: Arc<str>, frame: Arc<[u8]>, seq: Option<Seq> },
    /// A read of `topic`'s shared history is in (`ok`) or failed: its waiting
    /// connections go on.
    HistoryRead { topic: Arc<str>, ok: bool },
    /// Take over a connection the accepting worker handed out (`AcceptMode::Handoff`).
    Adopt { stream: mio::net::TcpStream, ip: IpAddr },
    /// Stop accepting, close every client with 1001, exit when drained.
    Shutdown,
    /// Exit now.
    Stop,
}

/// One worker's inbox and waker.
pub(crate) struct WorkerLink {
    pub tx: Sender<Cmd>,
    pub waker: mio::Waker,
    pub metrics: Arc<WorkerMetrics>,
    /// `Cmd::Publish` entries in the inbox and not yet delivered: publishes are
    /// bounded by `Config::publish_queue` through this count, while hand-overs and
    /// shutdown share the inbox and are never refused.
    pub pending_publishes: AtomicUsize,
}

impl WorkerLink {
    /// Reserves room for one publish; false when the worker already has `cap` waiting.
    pub fn reserve_publish(&self, cap: usize) -> bool {
        if self.pending_publishes.fetch_add(1, Ordering::AcqRel) >= cap {
            self.pending_publishes.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives back one reservation (the publish was delivered or not sent).
    pub fn release_publish(&self) {
        self.pending_publishes.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn send(&self, cmd: Cmd) {
        if self.tx.send(cmd).is_ok() {
            if let Err(e) = self.waker.wake() {
                log::warn!("waking a worker failed: {e}");
            }
        }
    }
}

/// State shared by all workers of a server.
pub(crate) struct Shared {
    pub cfg: Config,
    pub local_addr: SocketAddr,
    pub workers: Vec<WorkerLink>,
    /// Topic -> which workers have local subscribers, and how many there are.
    pub topics: RwLock<HashMap<Box<str>, TopicEntry>>,
    /// Upgraded connections over all workers.
    pub open: AtomicUsize,
    /// Upgraded connections per client IP (only when `max_conns_per_ip` is set).
    pub per_ip: Mutex<HashMap<IpAddr, u32>>,
    pub draining: AtomicBool,
    /// More metric families appended to the exposition (e.g. the Redis bridge's).
    pub extra_metrics: Mutex<Vec<ExtraMetrics>>,
    /// Links this node's topics to other nodes (set once, before the workers start).
    pub bridge: OnceLock<Arc<dyn super::Bridge>>,
    /// Publishes made off the workers (API, Redis, library), by source.
    pub publish_stats: PublishStats,
    /// Every room's history (`Config::history` > 0). Publishes to rooms are numbered
    /// and handed to the workers under this lock, so all workers see one order.
    pub history: Option<Mutex<Store>>,
}

/// One topic's local interest.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TopicEntry {
    /// Bit set of workers with local subscribers.
    pub mask: u64,
    /// Local subscribers over all workers.
    pub subscribers: usize,
}

/// Where a publish came from (the `source` label of `wsloop_publishes_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A client's data message (`wsloop rooms`, `Connection::publish`).
    Client,
    /// `POST /publish/<room>` on the admin listener.
    Api,
    /// A message from Redis: another node's, or a backend's plain payload.
    Redis,
    /// `Publisher::publish` from the embedding program.
    Library,
}

impl Source {
    pub const ALL: [Source; 4] = [Source::Client, Source::Api, Source::Redis, Source::Library];

    pub fn label(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Api => "api",
            Source::Redis => "redis",
            Source::Library => "library",
        }
    }
}

/// Counters for publishes made on threads other than the workers (several writers:
/// atomic adds, off the per-message path). Client publishes are counted per worker.
#[derive(Debug, Default)]
pub(crate) struct PublishStats {
    /// Publishes by [`Source`] (the client slot stays 0: see `WorkerMetrics`).
    pub published: [AtomicU64; 4],
    /// Publishes refused because a worker's publish queue was full, by [`Source`].
    pub refused: [AtomicU64; 4],
}

impl PublishStats {
    pub fn count(&self, source: Source, ok: bool) {
        let slot = if ok { &self.published } else { &self.refused };
        slot[source as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes extra metric families in Prometheus text format.
pub(crate) type ExtraMetrics = Box<dyn Fn(&mut String) + Send + Sync>;

impl Shared {
    pub fn topic(&self, topic: &str) -> TopicEntry {
        self.topics.read().map(|m| m.get(topic).copied().unwrap_or_default()).unwrap_or_default()
    }

    pub fn topic_mask(&self, topic: &str) -> u64 {
        self.topic(topic).mask
    }

    /// One local subscriber of `topic` on `worker` came (`joined`) or went; `edge`: it
    /// was the worker's first or last one.
    pub fn count_subscriber(&self, topic: &str, worker: usize, joined: bool, edge: bool) {
        let Ok(mut m) = self.topics.write() else {
            return;
        };
        let was_active = m.contains_key(topic);
        if joined {
            let e = m.entry(topic.into()).or_default();
            e.subscribers += 1;
            if edge {
                e.mask |= 1 << worker;
            }
        } else if let Some(e) = m.get_mut(topic) {
            e.subscribers = e.subscribers.saturating_sub(1);
            if edge {
                e.mask &= !(1 << worker);
            }
            if e.mask == 0 {
                m.remove(topic);
            }
        }
        // Told under the lock, so a bridge sees one topic's transitions in order.
        let changed = was_active != m.contains_key(topic);
        if changed {
            if let Some(b) = self.bridge.get() {
                b.topic_changed(topic, !was_active);
            }
        }
        drop(m);
        // A cache of a shared history is kept current by the room's live messages,
        // which stop with its last subscriber here: forget it (after the topic lock,
        // which publishing takes inside the history's).
        if changed && was_active {
            if let Some(h) = &self.history {
                h.lock().unwrap_or_else(|e| e.into_inner()).forget(topic);
            }
        }
    }

    /// Hands a local publish to the bridge, if there is one.
    pub fn forward(&self, topic: &str, msg: super::Message<'_>) {
        if let Some(b) = self.bridge.get() {
            b.published(topic, msg);
        }
    }

    /// Reserves a slot for a new open connection from `ip`; `Err` names the limit hit.
    pub fn admit(&self, ip: IpAddr) -> Result<(), super::gate::Refusal> {
        use super::gate::Refusal;
        if self.draining.load(Ordering::Relaxed) {
            return Err(Refusal::Draining);
        }
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_conns {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::MaxConns);
        }
        if self.cfg.max_conns_per_ip != usize::MAX {
            let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(ip).or_insert(0);
            if *n as usize >= self.cfg.max_conns_per_ip {
                drop(m);
                self.open.fetch_sub(1, Ordering::Relaxed);
                return Err(Refusal::MaxConnsPerIp);
            }
            *n += 1;
        }
        Ok(())
    }

    /// Gives back what [`Shared::admit`] reserved.
    pub fn release(&self, ip: IpAddr) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if self.cfg.max_conns_per_ip != usize::MAX {
            let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}
