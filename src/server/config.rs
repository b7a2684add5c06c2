//! Every limit and timeout of a server, with its default.

#[cfg(feature = "jwt")]
use crate::auth::JwtVerifier;
use crate::auth::OriginPolicy;
pub use crate::deflate::Compression;
use crate::proto::{DecoderConfig, HandshakeLimits, Role};
use crate::session::SessionConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::session::BackpressurePolicy;

/// How accepted connections are spread over the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptMode {
    /// One SO_REUSEPORT listener per worker; the kernel picks a worker by hashing each
    /// connection's addresses. No hand-over, no cross-thread traffic per connection,
    /// and accepting scales with the workers; but the spread is statistical (uneven for
    /// a handful of connections), and a busy worker still gets its share.
    ReusePort,
    /// One listener on the first worker, which hands each accepted socket to the
    /// workers in turn through their inbox and waker: an exact round robin, at the
    /// cost of a channel send and a wake-up per connection. The default: it connects
    /// as fast and echoes at the same rate in the README's measurements. Its ceiling is
    /// one thread's accept rate, which `ReusePort` does not have.
    Handoff,
}

/// Server configuration. `Config::default()` is what `wsloop echo` runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Worker threads, each with its own event loop (default: number of cores; 1 to
    /// [`MAX_WORKERS`]).
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
    /// a copy (default 16 KiB; at least 512 and more than `max_header_bytes`, since a
    /// request head must fit in one ring).
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
    /// The longest a broadcast waits to share a write with later ones (default 2 ms).
    /// A worker with idle time (busy less than 95% of the last 20 ms) writes each
    /// broadcast at the end of the loop turn it arrives in; a saturated one, after a
    /// write that took `t`, lets broadcasts wait up to `t` (at most this) for the next
    /// batch, so batching grows with the load. Zero writes every turn.
    pub broadcast_coalesce: Duration,
    /// Pause after EMFILE/ENFILE before accepting again (default 100 ms).
    pub accept_pause: Duration,
    /// Which `Origin` headers are let in (default: same host as `Host`). Refusal: 403.
    pub origin_policy: OriginPolicy,
    /// Require a valid JWT on every upgrade (default: none). Refusal: 401 (503 when its
    /// `jti` replay check cannot be made). Its key set can be replaced while the server
    /// runs ([`JwtVerifier::replace_keys`]; the binary does it on SIGHUP).
    #[cfg(feature = "jwt")]
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Close a connection with 1008 when its token's `exp` passes (default true; only
    /// with `jwt`).
    #[cfg(feature = "jwt")]
    pub close_on_token_expiry: bool,
    /// Serve `GET /metrics` and `GET /healthz` on this address (default: off). The
    /// admin listener is always plain http, also when `tls` is set.
    pub admin_listen: Option<SocketAddr>,
    /// Publishes waiting in one worker's inbox before [`Publisher::publish`] refuses more
    /// with [`PublishError::QueueFull`] (default 8192; at least 1). Connection
    /// hand-overs and shutdown share the inbox and are never refused.
    ///
    /// [`Publisher::publish`]: super::Publisher::publish
    /// [`PublishError::QueueFull`]: super::PublishError::QueueFull
    pub publish_queue: usize,
    /// Enables `POST /publish/<room>` on the admin listener: requests must carry
    /// `Authorization: Bearer <key>` with this key (default: off, the endpoint is 404).
    pub publish_key: Option<PublishKey>,
    /// Whether clients may publish to their rooms in [`Rooms`](super::Rooms) (default
    /// true). When false, a client's data message closes it with 1008.
    pub client_publish: bool,
    /// With JWT auth, the claim that lists the rooms a token may join in
    /// [`Rooms`](super::Rooms): an array of room names and `prefix*` patterns. A
    /// request for any other room is refused with 403 (default: none, any room).
    pub rooms_claim: Option<String>,
    /// Answer a plain `GET /` (no upgrade) on the main listener with this HTML page
    /// (default: none, 426). `wsloop rooms --demo` sets [`DEMO_PAGE`](super::DEMO_PAGE).
    pub http_page: Option<&'static str>,
    /// Serve wss:// only on the main listener with this rustls configuration (default:
    /// off, ws://). [`CertStore::server_config`](crate::tls::CertStore::server_config)
    /// makes one from PEM files; pass your own for SNI, client certificates or another
    /// resolver. The handshake timeout covers the TLS handshake.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<crate::tls::ServerConfig>>,
    /// permessage-deflate (default `Off`; needs the `deflate` feature otherwise).
    pub compression: Compression,
    /// The largest LZ77 window the server compresses with, 9 to 15 bits (default 15);
    /// offers that allow it less get what they allow.
    pub compression_window_bits: u8,
    /// Messages shorter than this go out uncompressed, RSV1 clear (default 64 bytes:
    /// deflate's block overhead makes shorter text barely shrink).
    pub compression_min_size: usize,
    /// `dedicated` mode: a connection's compressor (~245 to 371 KiB, see
    /// [`dedicated_context_bytes`](crate::deflate::dedicated_context_bytes)) is freed
    /// once the connection has sent nothing compressed for this long (default 5 s; it
    /// is checked every this long, so freed within twice it). Its next message starts
    /// a new context.
    pub compression_idle: Duration,
    /// `dedicated` mode: per-connection compressors a worker holds at most (default
    /// 512, at most ~186 MiB per worker with 15-bit windows); past it, connections
    /// without one get their messages compressed without context.
    pub compression_max_contexts: usize,
    /// Messages kept per room for clients that reconnect (default 0: no history, no
    /// offsets). With it, clients speaking `wsloop.v1` get each message's room, offset
    /// and epoch and may resume with `since=`/`epoch=` (see `protocol_v1`).
    pub history: usize,
    /// Bytes of frames kept per room (default 1 MiB; the newest message is always kept).
    pub history_bytes: usize,
    /// A room with no message for this long loses its history, and its epoch changes
    /// (default 300 s; `None`: never).
    pub history_ttl: Option<Duration>,
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
            publish_queue: 8192,
            publish_key: None,
            client_publish: true,
            rooms_claim: None,
            http_page: None,
            #[cfg(feature = "tls")]
            tls: None,
            compression: Compression::Off,
            compression_window_bits: 15,
            compression_min_size: 64,
            compression_idle: Duration::from_secs(5),
            compression_max_contexts: 512,
            history: 0,
            history_bytes: 1 << 20,
            history_ttl: Some(Duration::from_secs(300)),
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

    /// The history's limits, when it is on.
    pub(crate) fn history_limits(&self) -> Option<super::history::Limits> {
        (self.history > 0).then_some(super::history::Limits {
            messages: self.history,
            bytes: self.history_bytes,
            ttl: self.history_ttl,
        })
    }

    /// The per-connection limits and timeouts, in ticks.
    pub(crate) fn session(&self) -> SessionConfig {
        SessionConfig {
            decoder: self.decoder(),
            handshake_limits: self.handshake_limits(),
            handshake_timeout: to_ticks(self.handshake_timeout, self.tick),
            ping_interval: to_ticks(self.ping_interval, self.tick),
            idle_timeout: to_ticks(self.idle_timeout, self.tick),
            close_timeout: to_ticks(self.close_timeout, self.tick),
            max_backpressure: self.max_backpressure,
            backpressure_policy: self.backpressure_policy,
            max_msg_rate: self.max_msg_rate,
            tick_us: self.tick.as_micros().clamp(1, u64::MAX as u128) as u64,
        }
    }

    /// Checks that the server can work with these values; the error names the field
    /// and says what is allowed. [`Server::bind`](super::Server::bind) calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: &'static str, problem: String| Err(ConfigError { field, problem });
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return err("workers", format!("is {}; allowed: 1 to {MAX_WORKERS}", self.workers));
        }
        if self.read_buffer_size < MIN_BUFFER {
            return err("read_buffer_size", format!("is {}; allowed: at least {MIN_BUFFER}", self.read_buffer_size));
        }
        if self.read_buffer_size <= self.max_header_bytes {
            return err(
                "read_buffer_size",
                format!(
                    "is {}; must be larger than max_header_bytes ({}), since a request head must fit in one read ring",
                    self.read_buffer_size, self.max_header_bytes
                ),
            );
        }
        if self.write_buffer_size < MIN_BUFFER {
            return err("write_buffer_size", format!("is {}; allowed: at least {MIN_BUFFER}", self.write_buffer_size));
        }
        if self.tick < Duration::from_millis(1) {
            return err("tick", format!("is {:?}; allowed: at least 1 ms", self.tick));
        }
        let max_headers = crate::proto::handshake::MAX_HEADERS;
        if self.max_headers == 0 || self.max_headers > max_headers {
            return err("max_headers", format!("is {}; allowed: 1 to {max_headers}", self.max_headers));
        }
        if self.max_header_bytes < 64 {
            return err("max_header_bytes", format!("is {}; allowed: at least 64", self.max_header_bytes));
        }
        if !(9..=15).contains(&self.compression_window_bits) {
            return err("compression_window_bits", format!("is {}; allowed: 9 to 15", self.compression_window_bits));
        }
        if self.compression != Compression::Off && !cfg!(feature = "deflate") {
            return err("compression", "needs the `deflate` feature".into());
        }
        if self.compression_idle.is_zero() {
            return err("compression_idle", "is 0; allowed: more than 0".into());
        }
        if self.max_message == 0 {
            return err("max_message", "is 0; allowed: at least 1".into());
        }
        if self.max_fragments == 0 {
            return err("max_fragments", "is 0; allowed: at least 1".into());
        }
        if self.publish_queue == 0 {
            return err("publish_queue", "is 0; allowed: at least 1".into());
        }
        if self.max_msg_rate == Some(0) {
            return err("max_msg_rate", "is 0; allowed: at least 1, or None for no limit".into());
        }
        if self.ping_interval >= self.idle_timeout {
            return err(
                "ping_interval",
                format!(
                    "is {:?}; must be below idle_timeout ({:?}), or a quiet client is closed as idle before it is pinged",
                    self.ping_interval, self.idle_timeout
                ),
            );
        }
        for (field, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("ping_interval", self.ping_interval),
            ("idle_timeout", self.idle_timeout),
            ("close_timeout", self.close_timeout),
        ] {
            if d.is_zero() {
                return err(field, "is 0; allowed: a positive duration".into());
            }
        }
        Ok(())
    }
}

/// The publish API's key. Its `Debug` form never shows it; [`PublishKey::matches`]
/// compares in constant time.
#[derive(Clone)]
pub struct PublishKey(Arc<[u8]>);

impl PublishKey {
    /// A key from its bytes (surrounding whitespace, e.g. a file's final newline, is
    /// trimmed); `None` when nothing is left.
    pub fn new(key: &[u8]) -> Option<PublishKey> {
        let k = key.trim_ascii();
        (!k.is_empty()).then(|| PublishKey(k.into()))
    }

    /// Whether `candidate` is the key, in time that depends on the lengths only.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.ct_eq(candidate))
    }
}

impl std::fmt::Debug for PublishKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublishKey(***)")
    }
}

/// Most worker threads: topic interest is a 64-bit mask of workers.
pub const MAX_WORKERS: usize = 64;

/// Smallest read or write ring.
const MIN_BUFFER: usize = 512;

/// A [`Config`] field with a value the server cannot work with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field, as named in [`Config`].
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Config::{} {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for std::io::Error {
    fn from(e: ConfigError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// `d` in ticks of `tick`, rounded up, at least one.
fn to_ticks(d: Duration, tick: Duration) -> u32 {
    super::connection::to_ticks(d, tick)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases: [(Config, &str); 6] = [
            (Config { workers: 65, ..Config::default() }, "workers"),
            (Config { workers: 0, ..Config::default() }, "workers"),
            (Config { read_buffer_size: 100, ..Config::default() }, "read_buffer_size"),
            (Config { max_header_bytes: 32 << 10, ..Config::default() }, "read_buffer_size"),
            (Config { tick: Duration::ZERO, ..Config::default() }, "tick"),
            (Config { max_msg_rate: Some(0), ..Config::default() }, "max_msg_rate"),
        ];
        for (cfg, field) in cases {
            let e = cfg.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(field), "{e}");
        }
    }
}
