//! The `wsloop` server binary: `wsloop echo` and `wsloop rooms`.

use std::process::ExitCode;
use std::time::Duration;
use wsloop::auth::{Alg, JwtVerifier, OriginPolicy};
use wsloop::server::{AcceptMode, BackpressurePolicy, Config, Echo, Rooms, Server};

const USAGE: &str = "\
usage: wsloop <echo|rooms> [options]

  echo    echoes every message with its opcode, on any path
  rooms   a client on path /<room> joins that room; every message is sent to the room

options:
  --listen ADDR              address to listen on (default 127.0.0.1:9001)
  --workers N                worker threads (default: number of cores)
  --accept MODE              handoff (one acceptor hands connections out in turn) |
                             reuseport (a listener per worker, kernel-spread) (default handoff)
  --max-message BYTES        largest message (default 16777216)
  --max-backpressure BYTES   outgoing bytes buffered per connection (default 1048576)
  --backpressure POLICY      pause | drop | close (default: pause for echo, drop for rooms)
  --ping-interval SECS       ping after this much silence (default 30)
  --idle-timeout SECS        close when nothing arrived for this long (default 75)
  --handshake-timeout SECS   drop connections that do not finish the handshake (default 10)
  --close-timeout SECS       wait this long for the peer's close frame (default 5)
  --max-conns N              open connections overall; excess gets 503
  --max-conns-per-ip N       open connections per client IP; excess gets 503
  --max-msg-rate N           messages per second per connection; over it: close 1008
  --drain-timeout SECS       on SIGTERM/SIGINT, wait this long for clients to close (default 10)
  --allow-origin LIST        comma-separated origins (scheme://host[:port]) or *; default:
                             an Origin header must match the Host header (else 403)
  --jwt-secret-file PATH     require an HS256 JWT signed with the secret in PATH (else 401)
  --jwt-public-key PATH      require a JWT verified with this PEM public key (with --jwt-alg)
  --jwt-alg ALG              RS256 | ES256 (with --jwt-public-key)
  --jwt-issuer ISS           required `iss` claim
  --jwt-audience AUD         required `aud` claim
  --admin-listen ADDR        serve GET /metrics and GET /healthz on ADDR (default: off)
  --redis URL                rooms only: share rooms with other nodes through Redis pub/sub,
                             e.g. redis://127.0.0.1:6379/ (redis://:password@host:port)
  --redis-mode MODE          topic (SUBSCRIBE per room with members here; default) | pattern
                             (one PSUBSCRIBE: every node receives every room's messages)
  --redis-prefix PREFIX      Redis channel of room R is PREFIX + R (default wsloop:)
  -h, --help                 this text

Logging: RUST_LOG=info (default), debug, ...
";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Echo,
    Rooms,
}

struct Args {
    mode: Mode,
    listen: String,
    cfg: Config,
    redis: Option<RedisSetup>,
}

fn parse_secs(flag: &str, v: &str) -> Result<Duration, String> {
    let s: f64 = v.parse().map_err(|_| format!("{flag}: not a number of seconds: {v}"))?;
    if !(s.is_finite() && s > 0.0 && s < 1e9) {
        return Err(format!("{flag}: must be a positive number of seconds, got {v}"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn parse_num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag}: not a valid number: {v}"))
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut it = argv.iter();
    let mode = match it.next().map(String::as_str) {
        Some("echo") => Mode::Echo,
        Some("rooms") => Mode::Rooms,
        Some("-h" | "--help") | None => return Err(String::new()),
        Some(other) => return Err(format!("unknown command: {other}")),
    };
    let mut cfg = Config::default();
    let mut policy = None;
    let mut listen = "127.0.0.1:9001".to_string();
    let mut jwt = JwtFlags::default();
    let mut redis = RedisFlags::default();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (flag.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned()).ok_or(format!("{flag} needs a value"));
        match flag {
            "--listen" => listen = value()?,
            "--workers" => cfg.workers = parse_num(flag, &value()?)?,
            "--accept" => {
                cfg.accept_mode = match value()?.as_str() {
                    "reuseport" => AcceptMode::ReusePort,
                    "handoff" => AcceptMode::Handoff,
                    other => return Err(format!("--accept: expected reuseport or handoff, got {other}")),
                }
            }
            "--max-message" => cfg.max_message = parse_num(flag, &value()?)?,
            "--max-backpressure" => cfg.max_backpressure = parse_num(flag, &value()?)?,
            "--backpressure" => {
                policy = Some(match value()?.as_str() {
                    "pause" => BackpressurePolicy::PauseReading,
                    "drop" => BackpressurePolicy::Drop,
                    "close" => BackpressurePolicy::Close,
                    other => return Err(format!("--backpressure: expected pause, drop or close, got {other}")),
                })
            }
            "--ping-interval" => cfg.ping_interval = parse_secs(flag, &value()?)?,
            "--idle-timeout" => cfg.idle_timeout = parse_secs(flag, &value()?)?,
            "--handshake-timeout" => cfg.handshake_timeout = parse_secs(flag, &value()?)?,
            "--close-timeout" => cfg.close_timeout = parse_secs(flag, &value()?)?,
            "--max-conns" => cfg.max_conns = parse_num(flag, &value()?)?,
            "--max-conns-per-ip" => cfg.max_conns_per_ip = parse_num(flag, &value()?)?,
            "--max-msg-rate" => cfg.max_msg_rate = Some(parse_num(flag, &value()?)?),
            "--drain-timeout" => cfg.drain_timeout = parse_secs(flag, &value()?)?,
            "--allow-origin" => {
                let list = value()?;
                let items: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
                cfg.origin_policy = OriginPolicy::allow_list(items).map_err(|e| format!("--allow-origin: {e:?}"))?;
            }
            "--admin-listen" => {
                let v = value()?;
                cfg.admin_listen = Some(v.parse().map_err(|_| format!("--admin-listen: not an address: {v}"))?);
            }
            "--redis" => redis.url = Some(value()?),
            "--redis-mode" => redis.mode = Some(value()?),
            "--redis-prefix" => redis.prefix = Some(value()?),
            "--jwt-secret-file" => jwt.secret_file = Some(value()?),
            "--jwt-public-key" => jwt.public_key = Some(value()?),
            "--jwt-alg" => jwt.alg = Some(value()?),
            "--jwt-issuer" => jwt.issuer = Some(value()?),
            "--jwt-audience" => jwt.audience = Some(value()?),
            other => return Err(format!("unknown option: {other}")),
        }
    }
    if cfg.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    cfg.jwt = jwt.verifier()?.map(std::sync::Arc::new);
    cfg.backpressure_policy = policy.unwrap_or(match mode {
        Mode::Echo => BackpressurePolicy::PauseReading,
        Mode::Rooms => BackpressurePolicy::Drop,
    });
    let redis = redis.config(mode, cfg.max_message)?;
    Ok(Args { mode, listen, cfg, redis })
}

/// The Redis bridge's settings (`RedisConfig` when built with the `redis` feature).
#[cfg(feature = "redis")]
type RedisSetup = wsloop::redis::RedisConfig;
#[cfg(not(feature = "redis"))]
type RedisSetup = std::convert::Infallible;

/// The --redis flags, checked together once all are read.
#[derive(Default)]
struct RedisFlags {
    url: Option<String>,
    mode: Option<String>,
    prefix: Option<String>,
}

impl RedisFlags {
    fn config(self, mode: Mode, max_message: usize) -> Result<Option<RedisSetup>, String> {
        let Some(url) = self.url else {
            if self.mode.is_some() || self.prefix.is_some() {
                return Err("--redis-mode/--redis-prefix need --redis".into());
            }
            return Ok(None);
        };
        if mode != Mode::Rooms {
            return Err("--redis: only `rooms` publishes between nodes".into());
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = (url, max_message);
            Err("--redis: built without redis (cargo feature `redis`)".into())
        }
        #[cfg(feature = "redis")]
        {
            use wsloop::redis::{RedisConfig, SubscribeMode};
            let mut c = RedisConfig::from_url(&url).map_err(|e| format!("--redis: {e}"))?;
            c.mode = match self.mode.as_deref() {
                None | Some("topic") => SubscribeMode::PerTopic,
                Some("pattern") => SubscribeMode::Pattern,
                Some(other) => return Err(format!("--redis-mode: expected topic or pattern, got {other}")),
            };
            if let Some(p) = self.prefix {
                c.prefix = p;
            }
            c.max_message = max_message;
            Ok(Some(c))
        }
    }
}

/// Installs the Redis bridge when --redis was given.
fn attach_redis(server: Server, redis: Option<RedisSetup>) -> std::io::Result<Server> {
    let Some(cfg) = redis else {
        return Ok(server);
    };
    #[cfg(feature = "redis")]
    {
        let bridge = wsloop::redis::RedisBridge::start(cfg, &server.handle().publisher())?;
        Ok(server.with_bridge(bridge))
    }
    #[cfg(not(feature = "redis"))]
    match cfg {}
}

/// The JWT flags, checked together once all are read.
#[derive(Default)]
struct JwtFlags {
    secret_file: Option<String>,
    public_key: Option<String>,
    alg: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl JwtFlags {
    fn verifier(self) -> Result<Option<JwtVerifier>, String> {
        let read = |flag: &str, path: &str| std::fs::read(path).map_err(|e| format!("{flag} {path}: {e}"));
        let v = match (self.secret_file, self.public_key) {
            (Some(_), Some(_)) => return Err("give --jwt-secret-file or --jwt-public-key, not both".into()),
            (Some(path), None) => {
                if self.alg.as_deref().is_some_and(|a| !a.eq_ignore_ascii_case("HS256")) {
                    return Err("--jwt-secret-file is HS256; --jwt-alg must be HS256 or absent".into());
                }
                let mut secret = read("--jwt-secret-file", &path)?;
                // A trailing newline from `echo secret > file` is not part of the secret.
                while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    secret.pop();
                }
                JwtVerifier::from_secret(&secret).map_err(|e| format!("--jwt-secret-file: {}", e.reason()))?
            }
            (None, Some(path)) => {
                let alg = match self.alg.as_deref().map(str::to_ascii_uppercase).as_deref() {
                    Some("RS256") => Alg::Rs256,
                    Some("ES256") => Alg::Es256,
                    Some(other) => return Err(format!("--jwt-alg: expected RS256 or ES256, got {other}")),
                    None => return Err("--jwt-public-key needs --jwt-alg RS256|ES256".into()),
                };
                let pem = String::from_utf8(read("--jwt-public-key", &path)?)
                    .map_err(|_| format!("--jwt-public-key {path}: not a PEM text file"))?;
                JwtVerifier::from_public_key_pem(&pem, alg).map_err(|e| format!("--jwt-public-key: {}", e.reason()))?
            }
            (None, None) => {
                if self.alg.is_some() || self.issuer.is_some() || self.audience.is_some() {
                    return Err(
                        "--jwt-alg/--jwt-issuer/--jwt-audience need --jwt-secret-file or --jwt-public-key".into()
                    );
                }
                return Ok(None);
            }
        };
        let mut v = v;
        if let Some(iss) = self.issuer {
            v = v.issuer(iss);
        }
        if let Some(aud) = self.audience {
            v = v.audience(aud);
        }
        Ok(Some(v))
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("wsloop: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let server = match Server::bind(args.listen.as_str(), args.cfg.clone()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let server = match attach_redis(server, args.redis) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start the Redis bridge: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = server.handle();
    install_signal_handlers(handle.clone());
    if let Some(a) = server.admin_addr() {
        log::info!("admin: http://{a}/metrics and /healthz");
    }
    if args.cfg.jwt.is_some() {
        log::info!("JWT required on every path");
    }
    let mode = if args.mode == Mode::Echo { "echo" } else { "rooms" };
    log::info!("wsloop {mode} listening on ws://{} with {} workers", server.local_addr(), args.cfg.workers);
    let result = match args.mode {
        Mode::Echo => server.run(|_| Echo),
        Mode::Rooms => server.run(|_| Rooms),
    };
    match result {
        Ok(()) => {
            log::info!("wsloop stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("wsloop failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM/SIGINT: graceful shutdown; a second one exits at once.
fn install_signal_handlers(handle: wsloop::Handle) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("cannot install signal handlers: {e}");
            return;
        }
    };
    std::thread::Builder::new()
        .name("wsloop-signals".into())
        .spawn(move || {
            let mut seen = false;
            for sig in signals.forever() {
                if seen {
                    log::warn!("second signal ({sig}): exiting now");
                    std::process::exit(1);
                }
                seen = true;
                log::info!("signal {sig}: shutting down gracefully (again to exit now)");
                handle.shutdown();
            }
        })
        .ok();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse_args(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
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
        assert_eq!(args("echo --accept handoff").unwrap().cfg.accept_mode, AcceptMode::Handoff);
        assert_eq!(args("echo").unwrap().cfg.accept_mode, AcceptMode::Handoff);
        assert_eq!(args("echo --accept reuseport").unwrap().cfg.accept_mode, AcceptMode::ReusePort);
        assert!(args("echo --accept round-robin").is_err());
        assert!(args("echo --nope 1").is_err());
        assert!(args("echo --idle-timeout -1").is_err());
        assert!(args("serve").is_err());
        assert_eq!(args("rooms").unwrap().cfg.backpressure_policy, BackpressurePolicy::Drop);
    }

    #[test]
    fn redis_flags() {
        assert!(args("rooms").unwrap().redis.is_none());
        assert!(args("echo --redis redis://127.0.0.1:6379/").is_err());
        assert!(args("rooms --redis-mode pattern").is_err());
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
            assert!(args("rooms --redis rediss://h").is_err());
        }
        #[cfg(not(feature = "redis"))]
        assert!(r.err().unwrap().contains("built without redis"));
    }
}
