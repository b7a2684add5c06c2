//! Every limit and timeout of a server, with its default.

#[cfg(feature = "jwt")]
use crate::auth::JwtVerifier;
use crate::auth::OriginPolicy;
use crate::proto::{DecoderConfig, HandshakeLimits, Role};
use std::net::SocketAddr;
#[cfg(feature = "jwt")]
use std::sync::Arc;
use std::time::Duration;

/// What happens when a connection's outgoing buffer is over `max_backpressure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackpressurePolicy {
    /// Close the slow client with 1008.
    Close,
    /// Drop the message for that client (counted).
    Drop,
    /// Stop reading from the client until its buffer drains; messages are still
    /// queued (one over the cap at most). Broadcasts to such a client are dropped,
    /// since a publisher cannot be paused for one subscriber.
    PauseReading,
}

/// How accepted connections are spread over the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptMode {
    /// One SO_REUSEPORT listener per worker; the kernel picks a worker by hashing each
    /// connection's addresses. No hand-over, no cross-thread traffic per connection,
    /// and accepting scales with the workers; but the spread is statistical (1 and 4 of
    /// 5 connections on two workers in our runs), and a busy worker still gets its share.
    ReusePort,
    /// One listener on the first worker, which hands each accepted socket to the
    /// workers in turn through their inbox and waker: an exact round robin, at the
    /// cost of a channel send and a wake-up per connection. The default: on this
    /// project's 2-core measurements it connected as fast or faster (32-35k against
    /// 29-32k connections/s, the load generator being the limit) and echoed at the same
    /// rate. Its ceiling is one thread's accept rate, which `ReusePort` does not have.
    Handoff,
}

/// Server configuration. `Config::default()` is what `wsloop echo` runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Worker threads, each with its own event loop (default: number of cores).
    pub workers: usize,
    /// How connections are spread over the workers (default `Handoff`; see
    /// [`AcceptMode`] and the README's measurements).
    pub accept_mode: AcceptMode,
    /// Largest message, over all its fragments (default 16 MiB). Over it: close 1009.
    pub max_message: usize,
    /// Most fragments in one message (default 100,000). Over it: close 1009.
    pub max_fragments: u32,
    /// Outgoing bytes buffered per connection before the policy applies (default 1 MiB).
    pub max_backpressure: usize,
    /// What to do with a connection over `max_backpressure` (default `PauseReading`).
    pub backpressure_policy: BackpressurePolicy,
    /// Capacity of each pooled read ring; frames up to this size are handed out without
    /// a copy (default 16 KiB, at least 512).
    pub read_buffer_size: usize,
    /// Capacity of each pooled write ring (default 16 KiB, at least 512).
    pub write_buffer_size: usize,
    /// Idle rings each worker keeps for reuse, per pool (default 64: enough for the
    /// rings in flight in one loop turn of a busy worker, little when idle).
    pub pool_keep: usize,
    /// Largest HTTP request head (default 8 KiB). Over it: 431.
    pub max_header_bytes: usize,
    /// Most request header fields (default 64). Over it: 431.
    pub max_headers: usize,
    /// Open connections over all workers (default 1,000,000); excess gets 503.
    pub max_conns: usize,
    /// Open connections per client IP (default unlimited); excess gets 503.
    pub max_conns_per_ip: usize,
    /// Messages per second per connection, as a token bucket with one second of burst
    /// (default unlimited). Over it: close 1008.
    pub max_msg_rate: Option<u32>,
    /// A connection that has not completed its handshake by then is dropped (default 10 s).
    pub handshake_timeout: Duration,
    /// Ping after this much silence from the peer (default 30 s).
    pub ping_interval: Duration,
    /// Close with 1001 when nothing arrived for this long; also the limit for a write
    /// buffer that does not drain (default 75 s).
    pub idle_timeout: Duration,
    /// After sending a close frame, wait this long for the peer's (default 5 s).
    pub close_timeout: Duration,
    /// On shutdown, wait this long for close handshakes and queued bytes (default 10 s).
    pub drain_timeout: Duration,
    /// Timer wheel resolution (default 100 ms).
    pub tick: Duration,
    /// Broadcast deliveries to one socket within this window share one write
    /// (default 2 ms; zero writes at the end of every loop turn).
    pub broadcast_coalesce: Duration,
    /// Pause after EMFILE/ENFILE before accepting again (default 100 ms).
    pub accept_pause: Duration,
    /// Which `Origin` headers are let in (default: same host as `Host`). Refusal: 403.
    pub origin_policy: OriginPolicy,
    /// Require a valid JWT on every upgrade (default: none). Refusal: 401.
    #[cfg(feature = "jwt")]
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Close a connection with 1008 when its token's `exp` passes (default true; only
    /// with `jwt`).
    #[cfg(feature = "jwt")]
    pub close_on_token_expiry: bool,
    /// Serve `GET /metrics` and `GET /healthz` on this address (default: off).
    pub admin_listen: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            accept_mode: AcceptMode::Handoff,
            max_message: 16 << 20,
            max_fragments: 100_000,
            max_backpressure: 1 << 20,
            backpressure_policy: BackpressurePolicy::PauseReading,
            read_buffer_size: 16 << 10,
            write_buffer_size: 16 << 10,
            pool_keep: 64,
            max_header_bytes: 8 << 10,
            max_headers: 64,
            max_conns: 1_000_000,
            max_conns_per_ip: usize::MAX,
            max_msg_rate: None,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            close_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            tick: Duration::from_millis(100),
            broadcast_coalesce: Duration::from_millis(2),
            accept_pause: Duration::from_millis(100),
            origin_policy: OriginPolicy::default(),
            #[cfg(feature = "jwt")]
            jwt: None,
            #[cfg(feature = "jwt")]
            close_on_token_expiry: true,
            admin_listen: None,
        }
    }
}

impl Config {
    pub(crate) fn decoder(&self) -> DecoderConfig {
        DecoderConfig {
            role: Role::Server,
            max_message: self.max_message,
            max_fragments: self.max_fragments,
            inline_limit: self.read_buffer_size,
        }
    }

    pub(crate) fn handshake_limits(&self) -> HandshakeLimits {
        HandshakeLimits { max_header_bytes: self.max_header_bytes, max_headers: self.max_headers }
    }

    /// Clamps values that would make the server unable to work.
    pub(crate) fn sanitized(mut self) -> Self {
        self.workers = self.workers.clamp(1, 64);
        self.read_buffer_size = self.read_buffer_size.max(512);
        // The request head must fit in one read ring.
        self.read_buffer_size = self.read_buffer_size.max(self.max_header_bytes + 1);
        self.write_buffer_size = self.write_buffer_size.max(512);
        self.tick = self.tick.max(Duration::from_millis(1));
        self.max_headers = self.max_headers.clamp(1, crate::proto::handshake::MAX_HEADERS);
        self
    }
}
