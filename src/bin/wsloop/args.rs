//! The server's flags, each defined once: clap derives the parser, `--help` and the
//! defaults from this struct, and `cli::with_env` gives each flag its `WSLOOP_<FLAG>`
//! variable. What one flag cannot check alone (JWT and Redis combinations, key files,
//! ping against idle timeout) is checked in [`Args::from_cli`].

use crate::cli::{self, count, secs, Exit, Secs};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use std::net::SocketAddr;
use wsloop::auth::jwt::{KeyError, MIN_SECRET_LEN};
use wsloop::auth::{Alg, JwtVerifier, KeySet, OriginPolicy, VerifyKey};
use wsloop::server::{AcceptMode, BackpressurePolicy, Compression, Config};

/// Longest duration any seconds flag accepts (about 31 years).
const MAX_SECS: f64 = 1e9;

fn defaults() -> Config {
    Config::default()
}

/// What to serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// echoes every message with its opcode, on any path
    Echo,
    /// a client on path /<room> (and each ?room=R) joins that room; every message goes to its rooms
    Rooms,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Rooms => "rooms",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Accept {
    /// one acceptor hands connections to the workers in turn
    Handoff,
    /// a SO_REUSEPORT listener per worker, spread by the kernel
    Reuseport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backpressure {
    /// stop reading from the connection until its queue drains
    Pause,
    /// drop messages for it while over the cap
    Drop,
    /// close it with 1008
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressionMode {
    /// decline permessage-deflate
    Off,
    /// one compressor per worker, no compression state per connection
    Shared,
    /// a compressor per connection keeping its context, freed when the connection is quiet
    Dedicated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum JwtAlg {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RedisMode {
    /// SUBSCRIBE per room that has members on this node
    Topic,
    /// one PSUBSCRIBE: every node receives every room's messages
    Pattern,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClientPublish {
    /// a client's data message goes to every room it joined
    Allow,
    /// push-only rooms: a client's data message closes it with 1008
    Deny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// human-readable lines (env_logger's format)
    Text,
    /// one JSON object a line: time, level, target, message and the record's fields
    Json,
}

/// A small, predictable WebSocket server.
///
/// Every flag can also be set through the environment variable shown with it; the
/// command line wins. Seconds may be fractional. Log level: RUST_LOG=info (default),
/// debug, warn, ... SIGTERM/SIGINT drain gracefully; a second signal exits at once.
/// SIGHUP re-reads the JWT key files and the JWKS (a file that fails keeps the old keys).
#[derive(Parser, Debug)]
#[command(name = "wsloop", version, args_override_self = true, max_term_width = 100)]
pub struct Cli {
    #[arg(value_enum)]
    pub mode: Mode,
    /// address to listen on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9001", value_parser = host_port)]
    pub listen: String,
    /// worker threads, one event loop each (default: number of cores)
    #[arg(long, value_name = "N", value_parser = count(1, 64))]
    pub workers: Option<usize>,
    /// how accepted connections reach the workers
    #[arg(long, value_name = "MODE", value_enum, default_value_t = Accept::Handoff)]
    pub accept: Accept,
    /// largest message; over it: close 1009
    #[arg(long, value_name = "BYTES", value_parser = count(1, usize::MAX), default_value_t = defaults().max_message)]
    pub max_message: usize,
    /// outgoing bytes buffered per connection before --backpressure applies
    #[arg(long, value_name = "BYTES", value_parser = count(0, usize::MAX), default_value_t = defaults().max_backpressure)]
    pub max_backpressure: usize,
    /// what happens over --max-backpressure (default: pause for echo, drop for rooms)
    #[arg(long, value_name = "POLICY", value_enum)]
    pub backpressure: Option<Backpressure>,
    /// ping after this much silence; must be below --idle-timeout
    #[arg(long, value_name = "SECS", value_parser = secs(false, MAX_SECS), default_value_t = Secs(defaults().ping_interval))]
    pub ping_interval: Secs,
    /// close 1001 when nothing arrived for this long; also the write-stall limit
    #[arg(long, value_name = "SECS", value_parser = secs(false, MAX_SECS), default_value_t = Secs(defaults().idle_timeout))]
    pub idle_timeout: Secs,
    /// drop connections that do not finish the handshake in this time
    #[arg(long, value_name = "SECS", value_parser = secs(false, MAX_SECS), default_value_t = Secs(defaults().handshake_timeout))]
    pub handshake_timeout: Secs,
    /// wait this long for the peer's close frame
    #[arg(long, value_name = "SECS", value_parser = secs(false, MAX_SECS), default_value_t = Secs(defaults().close_timeout))]
    pub close_timeout: Secs,
    /// longest a broadcast waits to share a write with later ones; an idle worker writes at once (0: every loop turn)
    #[arg(long, value_name = "SECS", value_parser = secs(true, 1.0), default_value_t = Secs(defaults().broadcast_coalesce))]
    pub broadcast_coalesce: Secs,
    /// permessage-deflate (RFC 7692)
    #[arg(long, value_name = "MODE", value_enum, default_value_t = CompressionMode::Off)]
    pub compression: CompressionMode,
    /// largest window the server compresses with (offers may ask for less)
    #[arg(long, value_name = "BITS", value_parser = count(9, 15), default_value_t = defaults().compression_window_bits as usize)]
    pub compression_window_bits: usize,
    /// messages shorter than this go out uncompressed
    #[arg(long, value_name = "BYTES", value_parser = count(0, usize::MAX), default_value_t = defaults().compression_min_size)]
    pub compression_min_size: usize,
    /// dedicated mode: free a connection's compressor after this long without a compressed send
    #[arg(long, value_name = "SECS", value_parser = secs(false, MAX_SECS), default_value_t = Secs(defaults().compression_idle))]
    pub compression_idle: Secs,
    /// dedicated mode: per-connection compressors a worker holds at most; past it, no context
    #[arg(long, value_name = "N", value_parser = count(0, usize::MAX), default_value_t = defaults().compression_max_contexts)]
    pub compression_max_contexts: usize,
    /// on SIGTERM/SIGINT, wait this long for clients to finish closing
    #[arg(long, value_name = "SECS", value_parser = secs(false, MAX_SECS), default_value_t = Secs(defaults().drain_timeout))]
    pub drain_timeout: Secs,
    /// open connections overall; excess gets HTTP 503
    #[arg(long, value_name = "N", value_parser = count(1, usize::MAX), default_value_t = defaults().max_conns)]
    pub max_conns: usize,
    /// open connections per client IP; excess gets HTTP 503 (default: unlimited)
    #[arg(long, value_name = "N", value_parser = count(1, usize::MAX))]
    pub max_conns_per_ip: Option<usize>,
    /// messages per second per connection; over it: close 1008 (default: unlimited)
    #[arg(long, value_name = "N", value_parser = count(1, u32::MAX as usize))]
    pub max_msg_rate: Option<usize>,
    /// comma-separated origins (scheme://host[:port]) or *; else 403 (default: same host as the Host header)
    #[arg(long, value_name = "LIST", value_parser = origin_list)]
    pub allow_origin: Option<OriginPolicy>,
    /// require a JWT; an HS256 secret in PATH, optionally named KID=PATH; repeatable (default: off)
    #[arg(long, value_name = "[KID=]PATH", action = ArgAction::Append, value_delimiter = ',')]
    pub jwt_secret_file: Vec<String>,
    /// require a JWT; a PEM public key of --jwt-alg, optionally named KID=PATH; repeatable (default: off)
    #[arg(long, value_name = "[KID=]PATH", action = ArgAction::Append, value_delimiter = ',')]
    pub jwt_public_key: Vec<String>,
    /// require a JWT; the keys of the JSON Web Key Set in PATH (kty oct, RSA, EC P-256) (default: off)
    #[arg(long, value_name = "PATH")]
    pub jwt_jwks: Option<String>,
    /// the algorithm of the --jwt-public-key keys: RS256 or ES256 (default: off)
    #[arg(long, value_name = "ALG", value_enum, ignore_case = true)]
    pub jwt_alg: Option<JwtAlg>,
    /// required `iss` claim (default: off)
    #[arg(long, value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// required `aud` claim (default: off)
    #[arg(long, value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// tokens must carry `jti`; a jti already used is refused (401) until its token expires (default: off)
    #[arg(long)]
    pub jwt_require_jti: bool,
    /// refuse a token whose `iat` is missing or older than SECS (default: off)
    #[arg(long, value_name = "SECS", value_parser = secs(false, MAX_SECS))]
    pub jwt_max_age: Option<Secs>,
    /// serve GET /metrics and GET /healthz (503 while draining) on ADDR (default: off)
    #[arg(long, value_name = "ADDR", value_parser = socket_addr)]
    pub admin_listen: Option<SocketAddr>,
    /// redis[s]://[[user]:password@]host[:port]/: rooms shared with other nodes (pub/sub), and the --jwt-require-jti check (default: off)
    #[arg(long, value_name = "URL", conflicts_with = "redis_cluster")]
    pub redis: Option<String>,
    /// rooms only: a Redis Cluster's seed nodes (redis[s]:// URLs, comma-separated): rooms shared through sharded pub/sub (default: off)
    #[arg(long, value_name = "URL[,URL...]")]
    pub redis_cluster: Option<String>,
    /// with a rediss:// URL: trust the CA certificates in this PEM file instead of the system's (default: system roots)
    #[arg(long, value_name = "PATH")]
    pub redis_ca: Option<String>,
    /// how a node subscribes to the rooms' channels, with --redis (--redis-cluster: topic only)
    #[arg(long, value_name = "MODE", value_enum, default_value_t = RedisMode::Topic)]
    pub redis_mode: RedisMode,
    /// the Redis channel of room R is PREFIX + R, with --redis or --redis-cluster
    #[arg(long, value_name = "PREFIX", default_value = "wsloop:")]
    pub redis_prefix: String,
    /// enable POST /publish/<room> on --admin-listen, with Authorization: Bearer <the key in PATH> (default: off)
    #[arg(long, value_name = "PATH")]
    pub publish_key_file: Option<String>,
    /// rooms only: with JWT, the claim listing the rooms a token may join (names, or prefixes ending in *); else 403 (default: off)
    #[arg(long, value_name = "NAME")]
    pub jwt_rooms_claim: Option<String>,
    /// rooms only: may clients publish to their rooms? deny: a client's data message closes it with 1008
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = ClientPublish::Allow)]
    pub client_publish: ClientPublish,
    /// rooms only: answer a plain GET / with a small page that joins a room; without it, 426 (default: off)
    #[arg(long)]
    pub demo: bool,
    /// rooms only: messages kept per room for clients that reconnect (wsloop.v1 offsets, since=); 0: off
    #[arg(long, value_name = "N", value_parser = count(0, 1 << 30), default_value_t = defaults().history)]
    pub history: usize,
    /// rooms only: bytes of messages kept per room, with --history (the newest is always kept)
    #[arg(long, value_name = "BYTES", value_parser = count(1, usize::MAX), default_value_t = defaults().history_bytes)]
    pub history_bytes: usize,
    /// rooms only: a room with no message for this long loses its history (new epoch), with --history; 0: never
    #[arg(long, value_name = "SECS", value_parser = secs(true, MAX_SECS), default_value_t = Secs(defaults().history_ttl.unwrap_or_default()))]
    pub history_ttl: Secs,
    /// serve wss:// only with this PEM certificate chain (leaf first); SIGHUP reloads it; the admin listener stays http (default: off)
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<String>,
    /// the PEM private key of --tls-cert (PKCS#8, SEC1 or PKCS#1; ECDSA, RSA or Ed25519) (default: off)
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<String>,
    /// log line format; json is for log shippers
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn origin_list(v: &str) -> Result<OriginPolicy, String> {
    let items: Vec<&str> = v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        return Err("expected a comma-separated list of scheme://host[:port] origins, or *".into());
    }
    OriginPolicy::allow_list(items).map_err(|e| e.to_string())
}

/// `HOST:PORT` (a name is resolved when binding).
fn host_port(v: &str) -> Result<String, String> {
    match v.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(v.to_string()),
        _ => Err("expected HOST:PORT, such as 0.0.0.0:9001, [::]:9001 or localhost:9001".into()),
    }
}

fn socket_addr(v: &str) -> Result<SocketAddr, String> {
    v.parse().map_err(|_| "expected IP:PORT, such as 127.0.0.1:9101 or [::]:9101".to_string())
}

/// The Redis bridge's settings (`RedisConfig` when built with the `redis` feature).
#[cfg(feature = "redis")]
pub type RedisSetup = wsloop::redis::RedisConfig;
#[cfg(not(feature = "redis"))]
pub type RedisSetup = std::convert::Infallible;

/// Everything `main` needs, checked.
pub struct Args {
    pub mode: Mode,
    pub listen: String,
    pub cfg: Config,
    /// The pub/sub bridge: rooms with --redis.
    pub redis: Option<RedisSetup>,
    /// Where the JWT keys come from, re-read on SIGHUP.
    pub key_files: Option<KeyFiles>,
    pub log_format: LogFormat,
    /// The certificate files, for SIGHUP (with --tls-cert).
    pub tls: Option<TlsSetup>,
}

/// What SIGHUP reloads (`wsloop::tls::CertStore` when built with the `tls` feature).
#[cfg(feature = "tls")]
pub type TlsSetup = std::sync::Arc<wsloop::tls::CertStore>;
#[cfg(not(feature = "tls"))]
pub type TlsSetup = std::convert::Infallible;

/// The clap command with its `WSLOOP_*` variables.
pub fn command() -> clap::Command {
    cli::with_env(Cli::command(), "WSLOOP_")
}

/// Parses `argv` (program name first): help, version and mistakes are printed here.
pub fn parse(argv: &[String]) -> Result<Args, Exit> {
    let m = cli::matches("wsloop", command(), argv)?;
    let parsed = Cli::from_arg_matches(&m).map_err(|e| cli::usage_error("wsloop", &e.to_string()))?;
    Args::from_cli(parsed, &m).map_err(|e| cli::usage_error("wsloop", &e))
}

fn given(m: &ArgMatches, id: &str) -> bool {
    matches!(m.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

impl Args {
    /// The checks across flags, and the key files read.
    fn from_cli(c: Cli, m: &ArgMatches) -> Result<Args, String> {
        let mut cfg = defaults();
        if let Some(n) = c.workers {
            cfg.workers = n;
        }
        cfg.accept_mode = match c.accept {
            Accept::Handoff => AcceptMode::Handoff,
            Accept::Reuseport => AcceptMode::ReusePort,
        };
        cfg.max_message = c.max_message;
        cfg.max_backpressure = c.max_backpressure;
        cfg.backpressure_policy = match c.backpressure {
            Some(Backpressure::Pause) => BackpressurePolicy::PauseReading,
            Some(Backpressure::Drop) => BackpressurePolicy::Drop,
            Some(Backpressure::Close) => BackpressurePolicy::Close,
            None if c.mode == Mode::Echo => BackpressurePolicy::PauseReading,
            None => BackpressurePolicy::Drop,
        };
        cfg.ping_interval = c.ping_interval.0;
        cfg.idle_timeout = c.idle_timeout.0;
        cfg.handshake_timeout = c.handshake_timeout.0;
        cfg.close_timeout = c.close_timeout.0;
        cfg.drain_timeout = c.drain_timeout.0;
        cfg.broadcast_coalesce = c.broadcast_coalesce.0;
        cfg.compression = match c.compression {
            CompressionMode::Off => Compression::Off,
            CompressionMode::Shared => Compression::Shared,
            CompressionMode::Dedicated => Compression::Dedicated,
        };
        cfg.compression_window_bits = c.compression_window_bits as u8;
        cfg.compression_min_size = c.compression_min_size;
        cfg.compression_idle = c.compression_idle.0;
        cfg.compression_max_contexts = c.compression_max_contexts;
        cfg.max_conns = c.max_conns;
        if let Some(n) = c.max_conns_per_ip {
            cfg.max_conns_per_ip = n;
        }
        cfg.max_msg_rate = c.max_msg_rate.map(|n| n as u32);
        if let Some(p) = c.allow_origin.clone() {
            cfg.origin_policy = p;
        }
        cfg.admin_listen = c.admin_listen;
        // The library's own checks, named by the flag that sets the field.
        cfg.validate().map_err(|e| {
            let problem = e.problem.replace("idle_timeout (", "--idle-timeout (");
            format!("--{} {problem}", e.field.replace('_', "-"))
        })?;
        let redis = redis_config(&c, m, cfg.max_message)?;
        let tls = tls_store(&c)?;
        #[cfg(feature = "tls")]
        {
            cfg.tls = tls.as_ref().map(|s| s.server_config());
        }
        let (key_files, verifier) = match jwt_verifier(&c)? {
            Some((files, v)) => (Some(files), Some(v)),
            None => (None, None),
        };
        #[cfg(feature = "redis")]
        let verifier = match (&redis, verifier) {
            (Some(r), Some(v)) if c.jwt_require_jti => {
                Some(v.replay_store(std::sync::Arc::new(wsloop::redis::RedisReplayStore::new(r))))
            }
            (_, v) => v,
        };
        cfg.jwt = verifier.map(std::sync::Arc::new);
        push_flags(&c, m, &mut cfg)?;
        // Echo has no rooms to share: --redis serves the jti check only.
        #[allow(unused_mut)]
        let mut bridge = if c.mode == Mode::Rooms { redis } else { None };
        // With --redis, each room's history is a Redis stream every node reads.
        #[cfg(feature = "redis")]
        if let Some(r) = bridge.as_mut() {
            r.history = cfg.history;
            r.history_ttl = cfg.history_ttl;
        }
        Ok(Args { mode: c.mode, listen: c.listen, cfg, redis: bridge, key_files, log_format: c.log_format, tls })
    }
}

/// The live-push flags: the publish API's key, per-room authorization, push-only rooms,
/// the demo page.
fn push_flags(c: &Cli, m: &ArgMatches, cfg: &mut Config) -> Result<(), String> {
    if c.mode != Mode::Rooms {
        for (id, flag) in [
            ("jwt_rooms_claim", "--jwt-rooms-claim"),
            ("client_publish", "--client-publish"),
            ("demo", "--demo"),
            ("history", "--history"),
        ] {
            if given(m, id) {
                return Err(format!("{flag} works with `rooms` only"));
            }
        }
    }
    if let Some(path) = &c.publish_key_file {
        if cfg.admin_listen.is_none() {
            return Err("--publish-key-file needs --admin-listen: the publish API is served there".into());
        }
        let bytes = std::fs::read(path)
            .map_err(|e| format!("--publish-key-file {path}: cannot read the file: {}", io_reason(&e)))?;
        let key = wsloop::server::PublishKey::new(&bytes)
            .ok_or_else(|| format!("--publish-key-file {path}: the file is empty"))?;
        cfg.publish_key = Some(key);
    }
    if let Some(claim) = &c.jwt_rooms_claim {
        if cfg.jwt.is_none() {
            return Err("--jwt-rooms-claim needs --jwt-secret-file or --jwt-public-key".into());
        }
        cfg.rooms_claim = Some(claim.clone());
    }
    cfg.client_publish = c.client_publish == ClientPublish::Allow;
    if c.history == 0 {
        for (id, flag) in [("history_bytes", "--history-bytes"), ("history_ttl", "--history-ttl")] {
            if given(m, id) {
                return Err(format!("{flag} needs --history"));
            }
        }
    }
    cfg.history = c.history;
    cfg.history_bytes = c.history_bytes;
    cfg.history_ttl = (!c.history_ttl.0.is_zero()).then_some(c.history_ttl.0);
    if c.demo {
        cfg.http_page = Some(wsloop::server::DEMO_PAGE);
    }
    Ok(())
}

/// The key flags: every file the key set is read from, read again on SIGHUP.
#[derive(Clone, Debug)]
pub struct KeyFiles {
    /// `(kid, path)` of each --jwt-secret-file.
    secrets: Vec<(Option<String>, String)>,
    /// `(kid, path)` of each --jwt-public-key, all of `alg`.
    public_keys: Vec<(Option<String>, String)>,
    alg: Option<Alg>,
    jwks: Option<String>,
}

/// `KID=PATH` or `PATH`: a `=` before any `/` names the key.
fn kid_and_path(v: &str) -> (Option<String>, String) {
    match v.split_once('=') {
        Some((kid, path)) if !kid.is_empty() && !kid.contains('/') => (Some(kid.to_string()), path.to_string()),
        _ => (None, v.to_string()),
    }
}

impl KeyFiles {
    /// Reads every file into one key set; any file that cannot be read or holds a key
    /// that is unusable fails the whole set, with the flag, the file and the reason.
    pub fn load(&self) -> Result<KeySet, String> {
        let read = |flag: &str, path: &str| {
            std::fs::read(path).map_err(|e| format!("{flag} {path}: cannot read the file: {}", io_reason(&e)))
        };
        let text = |flag: &str, path: &str| {
            String::from_utf8(read(flag, path)?).map_err(|_| format!("{flag} {path}: not a text file (not UTF-8)"))
        };
        let named = |key: VerifyKey, kid: &Option<String>| match kid {
            Some(k) => key.with_kid(k.clone()),
            None => key,
        };
        let mut keys = Vec::new();
        for (kid, path) in &self.secrets {
            let mut secret = read("--jwt-secret-file", path)?;
            // A trailing newline from `echo secret > file` is not part of the secret.
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            let key = VerifyKey::secret(&secret).map_err(|e| match e {
                KeyError::SecretTooShort { len } => format!(
                    "--jwt-secret-file {path}: the file has {len} bytes (not counting a final newline); RFC 7518 \
                     section 3.2 requires at least {MIN_SECRET_LEN} bytes for an HS256 secret"
                ),
                e => format!("--jwt-secret-file {path}: {e}"),
            })?;
            keys.push(named(key, kid));
        }
        for (kid, path) in &self.public_keys {
            let alg = self.alg.unwrap_or(Alg::Rs256);
            let pem = text("--jwt-public-key", path)?;
            let key = VerifyKey::public_key_pem(&pem, alg).map_err(|e| format!("--jwt-public-key {path}: {e}"))?;
            keys.push(named(key, kid));
        }
        if let Some(path) = &self.jwks {
            let set = KeySet::from_jwks(&text("--jwt-jwks", path)?).map_err(|e| format!("--jwt-jwks {path}: {e}"))?;
            keys.extend(set.keys().iter().cloned());
        }
        KeySet::new(keys).map_err(|e| format!("JWT keys: {e}"))
    }
}

/// The JWT flags together: which keys, which algorithm, the claims.
fn jwt_verifier(c: &Cli) -> Result<Option<(KeyFiles, JwtVerifier)>, String> {
    if c.jwt_secret_file.is_empty() && c.jwt_public_key.is_empty() && c.jwt_jwks.is_none() {
        if c.jwt_alg.is_some()
            || c.jwt_issuer.is_some()
            || c.jwt_audience.is_some()
            || c.jwt_require_jti
            || c.jwt_max_age.is_some()
        {
            return Err("--jwt-alg, --jwt-issuer, --jwt-audience, --jwt-require-jti and --jwt-max-age need \
                        --jwt-secret-file, --jwt-public-key or --jwt-jwks"
                .into());
        }
        return Ok(None);
    }
    let alg = match (c.jwt_alg, c.jwt_public_key.is_empty()) {
        (Some(JwtAlg::Hs256), false) => {
            return Err("--jwt-alg HS256 takes a secret (--jwt-secret-file), not --jwt-public-key".into())
        }
        (None, false) => return Err("--jwt-public-key needs --jwt-alg RS256 or ES256".into()),
        (Some(a), true) if a != JwtAlg::Hs256 => {
            return Err("--jwt-secret-file is an HS256 secret: --jwt-alg must be HS256 or absent".into())
        }
        (Some(JwtAlg::Rs256), false) => Some(Alg::Rs256),
        (Some(JwtAlg::Es256), false) => Some(Alg::Es256),
        _ => None,
    };
    let files = KeyFiles {
        secrets: c.jwt_secret_file.iter().map(|v| kid_and_path(v)).collect(),
        public_keys: c.jwt_public_key.iter().map(|v| kid_and_path(v)).collect(),
        alg,
        jwks: c.jwt_jwks.clone(),
    };
    let mut v = JwtVerifier::from_keys(files.load()?);
    if let Some(iss) = &c.jwt_issuer {
        v = v.issuer(iss.clone());
    }
    if let Some(aud) = &c.jwt_audience {
        v = v.audience(aud.clone());
    }
    if let Some(age) = &c.jwt_max_age {
        v = v.max_age(age.0);
    }
    Ok(Some((files, v.require_jti(c.jwt_require_jti))))
}

/// --tls-cert and --tls-key together, both files read and checked.
fn tls_store(c: &Cli) -> Result<Option<TlsSetup>, String> {
    let (cert, key) = match (&c.tls_cert, &c.tls_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
        (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
    };
    #[cfg(feature = "tls")]
    {
        wsloop::tls::CertStore::load(cert, key).map(Some).map_err(|e| {
            let flag = if e.file == wsloop::tls::TlsFile::Cert { "--tls-cert" } else { "--tls-key" };
            format!("{flag} {e}")
        })
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = (cert, key);
        Err("--tls-cert: built without tls (cargo feature `tls`)".into())
    }
}

/// "No such file or directory (os error 2)" without the errno part.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// `redis://:secret@host/` as `redis://:***@host/`, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

/// The Redis flags together.
fn redis_config(c: &Cli, m: &ArgMatches, max_message: usize) -> Result<Option<RedisSetup>, String> {
    let (flag, url) = match (&c.redis, &c.redis_cluster) {
        (Some(u), _) => ("--redis", u),
        (None, Some(u)) => ("--redis-cluster", u),
        (None, None) => {
            if given(m, "redis_mode") || given(m, "redis_prefix") || c.redis_ca.is_some() {
                return Err("--redis-mode, --redis-prefix and --redis-ca need --redis or --redis-cluster".into());
            }
            return Ok(None);
        }
    };
    if c.redis_cluster.is_some() {
        if c.mode != Mode::Rooms {
            return Err("--redis-cluster shares rooms: use it with rooms".into());
        }
        if c.jwt_require_jti {
            return Err(
                "--jwt-require-jti keeps its jti records in one Redis: give --redis, not --redis-cluster".into()
            );
        }
        if c.redis_mode == RedisMode::Pattern {
            return Err(
                "--redis-mode pattern: sharded pub/sub has no patterns; --redis-cluster takes topic only".into()
            );
        }
    }
    if c.mode != Mode::Rooms && !c.jwt_require_jti {
        return Err(
            "--redis with echo shares the --jwt-require-jti check only: add --jwt-require-jti, or use rooms".into()
        );
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = (url, flag, max_message);
        Err(format!("{flag}: built without redis (cargo feature `redis`)"))
    }
    #[cfg(feature = "redis")]
    {
        use wsloop::redis::{RedisConfig, SubscribeMode, TlsRoots};
        let parsed = if c.redis.is_some() { RedisConfig::from_url(url) } else { RedisConfig::from_cluster_urls(url) };
        let mut r = parsed.map_err(|e| {
            let shown = redact(url);
            format!("invalid value {shown:?} for {flag}: {}", e.replace(url.as_str(), &shown))
        })?;
        if let Some(ca) = &c.redis_ca {
            if r.tls.is_none() {
                return Err(format!("--redis-ca needs a rediss:// URL in {flag}"));
            }
            r.tls = Some(TlsRoots::CaFile(ca.into()));
        }
        r.mode = match c.redis_mode {
            RedisMode::Topic => SubscribeMode::PerTopic,
            RedisMode::Pattern => SubscribeMode::Pattern,
        };
        r.prefix = c.redis_prefix.clone();
        r.max_message = max_message;
        Ok(Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn args(s: &str) -> Result<Args, String> {
        let argv: Vec<String> = std::iter::once("wsloop").chain(s.split_whitespace()).map(String::from).collect();
        let m = command().try_get_matches_from(&argv).map_err(|e| cli::describe(&e, &command(), &argv, ""))?;
        Args::from_cli(Cli::from_arg_matches(&m).map_err(|e| e.to_string())?, &m)
    }

    #[test]
    fn the_clap_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn flags_parse() {
        let a = args("echo --listen 127.0.0.1:1 --workers 3 --max-message 100 --ping-interval 0.5 --idle-timeout=2")
            .unwrap();
        assert_eq!(a.listen, "127.0.0.1:1");
        assert_eq!(a.cfg.workers, 3);
        assert_eq!(a.cfg.max_message, 100);
        assert_eq!(a.cfg.ping_interval, Duration::from_millis(500));
        assert_eq!(a.cfg.idle_timeout, Duration::from_secs(2));
        assert!(args("echo --workers x").is_err());
        assert!(args("echo --workers 0").is_err());
        assert!(args("echo --workers 65").is_err());
        assert_eq!(args("echo --accept handoff").unwrap().cfg.accept_mode, AcceptMode::Handoff);
        assert_eq!(args("echo").unwrap().cfg.accept_mode, AcceptMode::Handoff);
        assert_eq!(args("echo --accept reuseport").unwrap().cfg.accept_mode, AcceptMode::ReusePort);
        assert!(args("echo --accept round-robin").is_err());
        assert!(args("echo --nope 1").is_err());
        assert!(args("echo --idle-timeout -1").is_err());
        assert!(args("serve").is_err());
        assert_eq!(args("rooms").unwrap().cfg.backpressure_policy, BackpressurePolicy::Drop);
        assert_eq!(args("echo").unwrap().cfg.backpressure_policy, BackpressurePolicy::PauseReading);
        assert_eq!(args("rooms --backpressure close").unwrap().cfg.backpressure_policy, BackpressurePolicy::Close);
        // The last of a repeated flag wins, as before clap.
        assert_eq!(args("echo --listen a:1 --listen b:2").unwrap().listen, "b:2");
        assert!(args("echo --ping-interval 75").err().unwrap().contains("below --idle-timeout"));
        assert_eq!(args("echo --max-msg-rate 10").unwrap().cfg.max_msg_rate, Some(10));
        assert!(args("echo --allow-origin https://a.example,https://b.example").is_ok());
        assert!(args("echo --allow-origin nope").is_err());
    }

    #[test]
    fn redis_flags() {
        assert!(args("rooms").unwrap().redis.is_none());
        let e = args("echo --redis redis://127.0.0.1:6379/").err().unwrap();
        assert!(e.contains("add --jwt-require-jti"), "{e}");
        assert!(args("rooms --redis-mode pattern").err().unwrap().contains("need --redis"));
        let r = args("rooms --redis redis://127.0.0.1:6379/");
        #[cfg(feature = "redis")]
        {
            let c = r.unwrap().redis.unwrap();
            assert_eq!((c.host.as_str(), c.port, c.prefix.as_str()), ("127.0.0.1", 6379, "wsloop:"));
            let c = args("rooms --redis redis://h:1 --redis-mode pattern --redis-prefix x: --max-message 99")
                .unwrap()
                .redis
                .unwrap();
            assert_eq!((c.mode, c.prefix.as_str(), c.max_message), (wsloop::redis::SubscribeMode::Pattern, "x:", 99));
            assert!(args("rooms --redis redis://h --redis-mode nope").is_err());
            let e = args("rooms --redis redis://:hunter2@h:port").err().unwrap();
            assert!(e.contains("redis://***@h") && !e.contains("hunter2"), "{e}");
            let c = args("rooms --redis rediss://u:p@h:6380 --redis-ca /tmp/ca.pem").unwrap().redis.unwrap();
            assert_eq!(c.tls, Some(wsloop::redis::TlsRoots::CaFile("/tmp/ca.pem".into())));
            assert!(args("rooms --redis redis://h --redis-ca /tmp/ca.pem").err().unwrap().contains("rediss://"));
            let c = args("rooms --redis-cluster redis://h:7000,redis://h:7001").unwrap().redis.unwrap();
            assert!(matches!(c.deployment, wsloop::redis::Deployment::Cluster { ref seeds } if seeds.len() == 2));
            assert!(args("rooms --redis-cluster redis://h:7000 --redis-mode pattern").is_err());
            assert!(args("rooms --redis redis://h --redis-cluster redis://h:7000").is_err());
            assert!(args("echo --redis-cluster redis://h:7000").is_err());
            assert!(args("rooms --redis-ca /tmp/ca.pem").err().unwrap().contains("need --redis"));
        }
        #[cfg(not(feature = "redis"))]
        assert!(r.err().unwrap().contains("built without redis"));
    }

    #[test]
    fn push_flags() {
        let e = |s: &str| args(s).err().unwrap();
        assert!(e("echo --demo").contains("rooms"));
        assert!(e("echo --client-publish deny").contains("rooms"));
        assert!(e("rooms --jwt-rooms-claim rooms").contains("needs --jwt-secret-file"));
        assert!(e("rooms --publish-key-file /nonexistent").contains("needs --admin-listen"));
        let missing = e("rooms --admin-listen 127.0.0.1:0 --publish-key-file /nonexistent/k");
        assert!(missing.contains("cannot read the file"), "{missing}");
        assert!(args("rooms").unwrap().cfg.client_publish);
        assert!(!args("rooms --client-publish deny").unwrap().cfg.client_publish);
        assert!(args("rooms --client-publish maybe").is_err());
        assert!(args("rooms --demo").unwrap().cfg.http_page.is_some());
        assert!(args("rooms").unwrap().cfg.http_page.is_none());
    }

    #[test]
    fn jwt_flag_combinations() {
        let e = |s: &str| args(s).err().unwrap();
        assert!(e("echo --jwt-alg RS256").contains("need --jwt-secret-file, --jwt-public-key or --jwt-jwks"));
        assert!(e("echo --jwt-public-key /nonexistent").contains("needs --jwt-alg"));
        let missing = e("echo --jwt-public-key /nonexistent/k.pem --jwt-alg es256");
        assert_eq!(missing, "--jwt-public-key /nonexistent/k.pem: cannot read the file: No such file or directory");
        assert!(e("echo --jwt-secret-file a --jwt-alg ES256").contains("must be HS256"));
        assert!(e("echo --jwt-require-jti").contains("need --jwt-secret-file, --jwt-public-key or --jwt-jwks"));
        assert!(e("echo --jwt-max-age 60").contains("need --jwt-secret-file"));
        let missing = e("echo --jwt-jwks /nonexistent/keys.json");
        assert_eq!(missing, "--jwt-jwks /nonexistent/keys.json: cannot read the file: No such file or directory");
    }

    #[test]
    fn several_keys_named_by_kid_and_the_jti_flags() {
        let dir = std::env::temp_dir().join(format!("wsloop-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.key"), dir.join("b.key"));
        std::fs::write(&a, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::write(&b, "fedcba9876543210fedcba9876543210").unwrap();
        let es = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/es256-public.pem");
        let line = format!(
            "echo --jwt-secret-file old={} --jwt-secret-file {} --jwt-public-key ec1={es} --jwt-alg ES256 \
             --jwt-require-jti --jwt-max-age 300",
            a.display(),
            b.display()
        );
        let parsed = args(&line).unwrap();
        let v = parsed.cfg.jwt.unwrap();
        let keys: Vec<_> = v.keys().keys().iter().map(|k| (k.kid().map(str::to_owned), k.alg())).collect();
        assert_eq!(keys, [(Some("old".into()), Alg::Hs256), (None, Alg::Hs256), (Some("ec1".into()), Alg::Es256)]);
        let shown = format!("{v:?}");
        assert!(shown.contains("max_age_secs: Some(300)") && shown.contains("SeenSet"), "{shown}");
        // The same kid twice is refused.
        let dup = format!("echo --jwt-secret-file k={} --jwt-secret-file k={}", a.display(), b.display());
        assert!(args(&dup).err().unwrap().contains("two keys have kid \"k\""));
        #[cfg(feature = "redis")]
        {
            let line = format!("echo --jwt-secret-file {} --jwt-require-jti --redis redis://127.0.0.1:1/", a.display());
            let parsed = args(&line).unwrap();
            assert!(parsed.redis.is_none(), "echo has no pub/sub bridge");
            assert!(format!("{:?}", parsed.cfg.jwt.unwrap()).contains("RedisReplayStore"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
