//! The server engine: worker threads, each a mio event loop over its own connections.
//!
//! ```no_run
//! use wsloop::proto::Request;
//! use wsloop::server::{Accept, Config, Connection, Handler, Message, Reject, Server};
//!
//! #[derive(Clone)]
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type State = ();
//!
//!     fn on_open<'r>(&mut self, _: &mut Connection<'_>, _: &Request<'_, 'r>) -> Result<Accept<'r, ()>, Reject> {
//!         Ok(Accept::new(()))
//!     }
//!
//!     fn on_message(&mut self, conn: &mut Connection<'_>, _: &mut (), msg: Message<'_>) {
//!         let _ = conn.send(msg);
//!     }
//! }
//!
//! let server = Server::bind("127.0.0.1:9001", Config::default())?;
//! println!("listening on {}", server.local_addr());
//! server.run(|_worker| Echo)?;
//! # Ok::<(), std::io::Error>(())
//! ```

mod accept;
mod admin;
mod admin_http;
mod apps;
mod batching;
mod bridge;
mod clock;
mod config;
mod conn;
mod connection;
mod delivery;
mod drain;
mod expiry;
mod feed;
mod gate;
mod handler;
mod history;
mod inflate;
pub mod metrics;

/// Fuzzing entry points (see `fuzz/`); not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::admin_http::fuzz_chunked as admin_chunked;
    pub use super::protocol_v1::fuzz_command as v1_command;
}
mod protocol_v1;
mod pubsub;
mod recovery;
mod sequencing;
mod shared;
mod sock;
pub(crate) mod timer;
#[cfg(feature = "tls")]
mod tls_io;
mod worker;

pub use apps::{room_allowed, room_of, rooms_of, Echo, Rooms, RoomsState, MAX_ROOMS_PER_CONNECTION, ROOMS_PROTOCOL};
pub use bridge::Bridge;
pub use config::{AcceptMode, BackpressurePolicy, Compression, Config, ConfigError, PublishKey, MAX_WORKERS};
pub use connection::{Claims, Connection};
pub use gate::Refusal;
pub use handler::{Accept, ConnId, Handler, Message, Reject, SendStatus};
pub use history::{Lost, Seq};
pub use protocol_v1::PROTOCOL_V1;
pub use pubsub::{PublishError, Published, Publisher, WeakPublisher};

/// The page `wsloop rooms --demo` answers a plain `GET /` with (see
/// `Config::http_page`): it joins a room, shows what arrives and sends what the user
/// types; a token (field, or `?token=` in the page's URL) goes in the `bearer.<token>`
/// subprotocol. Self-contained: no external assets.
pub const DEMO_PAGE: &str = include_str!("demo.html");

use metrics::WorkerMetrics;
use shared::{Cmd, Shared, WorkerLink};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;

/// A bound, not yet running server.
pub struct Server {
    shared: Arc<Shared>,
    parts: Vec<(mio::Poll, Option<mio::net::TcpListener>, Receiver<Cmd>)>,
    admin: Option<std::net::TcpListener>,
}

/// Controls a running server from any thread. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

/// A server running on its own threads (see [`Server::start`]).
pub struct Running {
    handle: Handle,
    threads: Vec<JoinHandle<io::Result<()>>>,
    admin: Option<admin::AdminThread>,
}

fn listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // One listener per worker on the same port: the kernel spreads connections over
    // them by 4-tuple hash, so no acceptor thread and no hand-over queue are needed.
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

impl Server {
    /// Binds `addr` (port 0 picks a free port): with [`AcceptMode::Handoff`] (the
    /// default) one listener for the first worker to accept on and deal connections
    /// out from, with [`AcceptMode::ReusePort`] one SO_REUSEPORT listener per worker.
    /// A `config` that fails [`Config::validate`] is an `InvalidInput` error carrying
    /// the [`ConfigError`].
    pub fn bind(addr: impl ToSocketAddrs, config: Config) -> io::Result<Server> {
        config.validate()?;
        let cfg = config;
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))?;
        let cfg_history = cfg.history_limits();
        let reuse_port = cfg.accept_mode == AcceptMode::ReusePort;
        let first = listener(addr, reuse_port)?;
        let local_addr = first.local_addr()?;
        let mut std_listeners = vec![Some(first)];
        for _ in 1..cfg.workers {
            std_listeners.push(if reuse_port { Some(listener(local_addr, true)?) } else { None });
        }
        let mut links = Vec::new();
        let mut parts = Vec::new();
        for l in std_listeners {
            let poll = mio::Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), worker::WAKER)?;
            let (tx, rx) = channel();
            links.push(WorkerLink {
                tx,
                waker,
                metrics: Arc::new(WorkerMetrics::default()),
                pending_publishes: AtomicUsize::new(0),
            });
            parts.push((poll, l.map(mio::net::TcpListener::from_std), rx));
        }
        let shared = Arc::new(Shared {
            cfg,
            local_addr,
            workers: links,
            topics: RwLock::new(Default::default()),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(Default::default()),
            draining: AtomicBool::new(false),
            extra_metrics: Mutex::new(Vec::new()),
            bridge: OnceLock::new(),
            publish_stats: Default::default(),
            history: cfg_history.map(|l| Mutex::new(history::Store::new(l, true))),
        });
        let admin = match shared.cfg.admin_listen {
            Some(a) => {
                let l = std::net::TcpListener::bind(a)?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        };
        Ok(Server { shared, parts, admin })
    }

    /// Links this node to others through `bridge` (see [`Bridge`]): it is told of topics
    /// becoming active or inactive here and of every local publish, and its metrics join
    /// `/metrics`. One bridge per server; a second call is ignored with a warning.
    pub fn with_bridge(self, bridge: Arc<dyn Bridge>) -> Server {
        let metrics = bridge.clone();
        let numbers = bridge.numbers_messages();
        if self.shared.bridge.set(bridge).is_ok() {
            if let Some(h) = &self.shared.history {
                h.lock().unwrap_or_else(|e| e.into_inner()).set_local(!numbers);
            }
            let mut extra = self.shared.extra_metrics.lock().unwrap_or_else(|e| e.into_inner());
            extra.push(Box::new(move |out: &mut String| metrics.write_metrics(out)));
        } else {
            log::warn!("Server::with_bridge: a bridge is already installed; ignoring the new one");
        }
        self
    }

    /// The admin listener's address, when `Config::admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// A handle to stop the server or publish, usable before and while it runs.
    pub fn handle(&self) -> Handle {
        Handle { shared: self.shared.clone() }
    }

    /// Runs the workers on their own threads; `factory(worker_index)` makes each
    /// worker's handler. Returns at once.
    pub fn start<H, F>(self, factory: F) -> io::Result<Running>
    where
        H: Handler,
        F: Fn(usize) -> H,
    {
        let handle = self.handle();
        let mut threads = Vec::new();
        let admin = match self.admin {
            Some(l) => Some(admin::AdminThread::spawn(l, self.shared.clone())?),
            None => None,
        };
        for (i, (poll, l, rx)) in self.parts.into_iter().enumerate() {
            let (shared, handler) = (self.shared.clone(), factory(i));
            // Made on its own thread: connection state (`H::State`) never crosses threads.
            let run = move || worker::Worker::new(i, poll, l, rx, shared, handler)?.run();
            let t = std::thread::Builder::new().name(format!("wsloop-worker-{i}")).spawn(run)?;
            threads.push(t);
        }
        Ok(Running { handle, threads, admin })
    }

    /// Runs the server until it is shut down (see [`Handle::shutdown`]).
    pub fn run<H, F>(self, factory: F) -> io::Result<()>
    where
        H: Handler,
        F: Fn(usize) -> H,
    {
        self.start(factory)?.join()
    }
}

impl Running {
    /// The server's handle.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Waits for every worker to exit; the admin listener answers until then.
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(io::Error::other("a worker panicked")),
            }
        }
        if let Some(admin) = self.admin {
            admin.stop();
        }
        result
    }
}

impl Handle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Graceful shutdown: stop accepting, send close 1001 to every client, wait for the
    /// close handshakes (at most `drain_timeout`), then the workers exit.
    pub fn shutdown(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        for w in &self.shared.workers {
            w.send(Cmd::Shutdown);
        }
    }

    /// Immediate stop: connections are dropped without a close handshake.
    pub fn stop(&self) {
        for w in &self.shared.workers {
            w.send(Cmd::Stop);
        }
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// A publisher for topics.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.shared.clone(), shared::Source::Library)
    }

    /// Upgraded connections open right now, over all workers.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Each worker's counters.
    pub fn metrics(&self) -> Vec<Arc<WorkerMetrics>> {
        self.shared.workers.iter().map(|w| w.metrics.clone()).collect()
    }
}
