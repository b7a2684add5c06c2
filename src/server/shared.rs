//! What the workers share: their inboxes, the topic view, admission counters and the
//! shutdown flag. Touched on accept, subscribe and publish, never per message.

use super::config::Config;
use super::metrics::WorkerMetrics;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// A message to a worker.
pub(crate) enum Cmd {
    /// Deliver a framed message to the worker's subscribers of `topic`.
    Publish { topic: Arc<str>, frame: Arc<[u8]> },
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
}

impl WorkerLink {
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
    /// Topic -> bit set of workers with local subscribers.
    pub topics: RwLock<HashMap<Box<str>, u64>>,
    /// Upgraded connections over all workers.
    pub open: AtomicUsize,
    /// Upgraded connections per client IP (only when `max_conns_per_ip` is set).
    pub per_ip: Mutex<HashMap<IpAddr, u32>>,
    pub draining: AtomicBool,
    /// More metric families appended to the exposition (e.g. the Redis bridge's).
    pub extra_metrics: Mutex<Vec<ExtraMetrics>>,
    /// Links this node's topics to other nodes (set once, before the workers start).
    pub bridge: OnceLock<Arc<dyn super::Bridge>>,
}

/// Writes extra metric families in Prometheus text format.
pub(crate) type ExtraMetrics = Box<dyn Fn(&mut String) + Send + Sync>;

impl Shared {
    pub fn topic_mask(&self, topic: &str) -> u64 {
        self.topics.read().map(|m| m.get(topic).copied().unwrap_or(0)).unwrap_or(0)
    }

    pub fn set_topic_bit(&self, topic: &str, worker: usize, on: bool) {
        let Ok(mut m) = self.topics.write() else {
            return;
        };
        let was_active = m.contains_key(topic);
        if on {
            *m.entry(topic.into()).or_insert(0) |= 1 << worker;
        } else if let Some(bits) = m.get_mut(topic) {
            *bits &= !(1 << worker);
            if *bits == 0 {
                m.remove(topic);
            }
        }
        // Told under the lock, so a bridge sees one topic's transitions in order.
        if was_active != m.contains_key(topic) {
            if let Some(b) = self.bridge.get() {
                b.topic_changed(topic, !was_active);
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
