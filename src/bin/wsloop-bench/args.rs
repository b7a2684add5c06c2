//! Command-line parsing: each flag defined once, with clap's derive, in the mode's
//! struct or the ones they share ([`Common`], [`Timed`]); `--help`, defaults and the
//! `WSLOOP_BENCH_<FLAG>` variables come from there.

use crate::cli::{self, count, secs, Exit, Secs};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::time::Duration;

/// Longest duration any seconds flag accepts.
const MAX_SECS: f64 = 86_400.0;

/// Largest message the generator will send (the decoder's default limit).
const MAX_SIZE: usize = 16 << 20;

/// What the generator does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Request/response throughput and latency.
    Echo,
    /// Many quiet connections: connect rate and server memory.
    Idle,
    /// One publisher, many subscribers: fan-out latency and delivery.
    Broadcast,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Idle => "idle",
            Mode::Broadcast => "broadcast",
        }
    }
}

impl Options {
    /// What the payloads are made of.
    pub fn kind(&self) -> super::payload::Kind {
        use super::payload::Kind;
        match (self.json, self.text) {
            (true, _) => Kind::Json,
            (false, true) => Kind::Text,
            (false, false) => Kind::Binary,
        }
    }
}

/// A `ws://` or `wss://` URL, not yet resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsUrl {
    /// `wss://`: TLS.
    pub tls: bool,
    /// Host as written (brackets stripped from an IPv6 literal).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// The `Host` header: host and port as written in the URL.
    pub authority: String,
}

impl WsUrl {
    pub fn parse(s: &str) -> Result<WsUrl, String> {
        let bad = |why: &str| format!("expected ws[s]://HOST[:PORT][/PATH]: {why}");
        let (tls, rest) = if let Some(r) = s.strip_prefix("ws://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("wss://") {
            (true, r)
        } else {
            return Err(bad("must start with ws:// or wss://"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains('@') {
            return Err(bad("user info is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (h, None),
                p => (h, Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?)),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None if tls => 443,
            None => 80,
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| bad("bad port"))?,
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces or control characters in the path"));
        }
        Ok(WsUrl { tls, host: host.to_string(), port, path, authority: authority.to_string() })
    }
}

/// Everything a run needs, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub mode: Mode,
    pub url: WsUrl,
    /// Connections (echo, idle) or subscribers (broadcast).
    pub conns: usize,
    pub size: usize,
    pub text: bool,
    /// JSON-like text payloads (`--json`, implied by `--deflate`).
    pub json: bool,
    /// Offer permessage-deflate, compress what is sent (`--deflate`).
    pub deflate: bool,
    pub inflight: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub hold: Duration,
    pub rate: f64,
    pub grace: Duration,
    pub threads: usize,
    pub server_pid: Option<u32>,
    pub connect_timeout: Duration,
    pub close_timeout: Duration,
    pub connect_batch: usize,
    pub source_ips: Option<usize>,
    pub quiet: bool,
    /// wss://: trust only the CA certificates in this PEM file (default: any certificate).
    pub ca: Option<std::path::PathBuf>,
}

/// A WebSocket load generator on mio and wsloop's own codec.
///
/// The last line of stdout is `RESULT mode=<mode> key=value ...`; the exit status is 1
/// when any error was counted. Every flag can also be set through the environment
/// variable shown with it (WSLOOP_BENCH_*, apart from the server's WSLOOP_* so that one
/// shell can hold both); the command line wins. Durations accept fractions (0.5).
#[derive(Parser, Debug)]
#[command(name = "wsloop-bench", version, args_override_self = true, max_term_width = 100)]
#[command(subcommand_required = true, arg_required_else_help = false, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    mode: ModeArgs,
}

#[derive(Subcommand, Debug)]
enum ModeArgs {
    /// each connection keeps --inflight messages in flight and checks every echo (content
    /// and opcode); reports msgs/s, MB/s (payload, one way) and latency
    Echo(EchoArgs),
    /// opens --conns connections, holds them (answering pings), then closes each with a
    /// close frame; reports connect rate, handshake latency (p50_us/p99_us), the messages
    /// (pings included) the server sent while held, and with --server-pid the server's RSS
    /// per connection
    Idle(IdleArgs),
    /// one publisher and --subs subscribers on the same URL; the server must relay every
    /// message to every connection there (sender included); the publisher sends --rate
    /// msgs/s, subscribers measure fan-out latency and delivery ratio
    /// (server_cpu_us_per_msg is per delivery)
    Broadcast(BroadcastArgs),
}

/// The flags of every mode.
#[derive(Args, Debug)]
struct Common {
    /// ws://HOST[:PORT][/PATH] or wss://HOST[:PORT][/PATH]
    #[arg(long, value_name = "URL", value_parser = WsUrl::parse)]
    url: WsUrl,
    /// wss://: trust only the CA certificates in this PEM file (default: accept any
    /// certificate, as a load generator against a test server)
    #[arg(long, value_name = "PATH")]
    ca: Option<std::path::PathBuf>,
    /// generator threads, one mio loop each
    #[arg(long, value_name = "N", value_parser = count(1, 256), default_value_t = 1)]
    threads: usize,
    /// sample /proc/PID for the server's CPU (and RSS in idle mode) (default: off)
    #[arg(long, value_name = "PID", value_parser = count(1, u32::MAX as usize))]
    server_pid: Option<usize>,
    /// per connection, TCP connect to 101 response; the connect phase ends by itself
    /// after this + conns/2000 seconds at most
    #[arg(long, value_name = "SECS", value_parser = secs(false, MAX_SECS), default_value_t = Secs(Duration::from_secs(10)))]
    connect_timeout: Secs,
    /// wait this long for the server's close replies
    #[arg(long, value_name = "SECS", value_parser = secs(false, MAX_SECS), default_value_t = Secs(Duration::from_secs(5)))]
    close_timeout: Secs,
    /// connects in progress at once, per thread
    #[arg(long, value_name = "N", value_parser = count(1, 1 << 20), default_value_t = 256)]
    connect_batch: usize,
    /// spread connections over source addresses 127.0.0.2..127.0.0.(N+1), loopback targets
    /// only (default: one per 8192 connections)
    #[arg(long, value_name = "N", value_parser = count(0, 250))]
    source_ips: Option<usize>,
    /// no progress lines on stderr
    #[arg(short, long)]
    quiet: bool,
}

/// The flags of the modes that send messages for a while.
#[derive(Args, Debug)]
struct Timed {
    /// send text messages (binary otherwise)
    #[arg(long)]
    text: bool,
    /// send JSON-like text (records of a few fields, compressible as push traffic is)
    #[arg(long)]
    json: bool,
    /// offer permessage-deflate, send compressed (implies --json); reports the bytes the
    /// server put on the wire per message (wire_bytes_per_msg)
    #[arg(long)]
    deflate: bool,
    /// how long to measure, after --warmup
    #[arg(long, value_name = "SECS", value_parser = secs(false, MAX_SECS), default_value_t = Secs(Duration::from_secs(10)))]
    duration: Secs,
    /// traffic before measuring starts
    #[arg(long, value_name = "SECS", value_parser = secs(true, MAX_SECS), default_value_t = Secs(Duration::from_secs(1)))]
    warmup: Secs,
}

#[derive(Args, Debug)]
struct EchoArgs {
    /// connections
    #[arg(long, value_name = "C", value_parser = count(1, 1_000_000), default_value_t = 100)]
    conns: usize,
    /// message size in bytes
    #[arg(long, value_name = "S", value_parser = count(0, MAX_SIZE), default_value_t = 32)]
    size: usize,
    /// messages in flight per connection
    #[arg(long, value_name = "K", value_parser = count(1, 1 << 16), default_value_t = 1)]
    inflight: usize,
    #[command(flatten)]
    timed: Timed,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct IdleArgs {
    /// connections
    #[arg(long, value_name = "C", value_parser = count(1, 1_000_000), default_value_t = 1000)]
    conns: usize,
    /// how long to hold them open
    #[arg(long, value_name = "SECS", value_parser = secs(true, MAX_SECS), default_value_t = Secs(Duration::from_secs(10)))]
    hold: Secs,
    /// offer permessage-deflate (the server's memory per connection that negotiated it)
    #[arg(long)]
    deflate: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct BroadcastArgs {
    /// subscribers
    #[arg(long, value_name = "C", value_parser = count(1, 1_000_000), default_value_t = 100)]
    subs: usize,
    /// message size in bytes: at least the stamp, 16 (32 with --text)
    #[arg(long, value_name = "S", value_parser = count(0, MAX_SIZE), default_value_t = 64)]
    size: usize,
    /// publisher's messages per second
    #[arg(long, value_name = "R", value_parser = rate, default_value_t = 1000.0)]
    rate: f64,
    /// after the publisher stops, wait this long for late deliveries
    #[arg(long, value_name = "SECS", value_parser = secs(true, MAX_SECS), default_value_t = Secs(Duration::from_secs(2)))]
    grace: Secs,
    #[command(flatten)]
    timed: Timed,
    #[command(flatten)]
    common: Common,
}

fn rate(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0 && *r <= 1e8)
        .ok_or_else(|| "expected messages per second in (0, 1e8]".to_string())
}

/// The clap command with its `WSLOOP_BENCH_*` variables.
pub fn command() -> clap::Command {
    cli::with_env(Cli::command(), "WSLOOP_BENCH_")
}

/// Parses `argv` (program name first): help, version and mistakes are printed here.
pub fn parse(argv: &[String]) -> Result<Options, Exit> {
    let m = cli::matches("wsloop-bench", command(), argv)?;
    let c = Cli::from_arg_matches(&m).map_err(|e| cli::usage_error("wsloop-bench", &e.to_string()))?;
    options(c).map_err(|e| cli::usage_error("wsloop-bench", &e))
}

fn options(c: Cli) -> Result<Options, String> {
    let (mode, common, conns, size, timed, inflight) = match c.mode {
        ModeArgs::Echo(a) => (Mode::Echo, a.common, a.conns, a.size, Some(a.timed), a.inflight),
        ModeArgs::Idle(a) => {
            let mut o = base(Mode::Idle, a.common, a.conns, 0, None, 1);
            o.hold = a.hold.0;
            o.deflate = a.deflate;
            return Ok(o);
        }
        ModeArgs::Broadcast(a) => {
            let t = &a.timed;
            let min = super::payload::stamp_len(if t.text || t.json || t.deflate {
                super::payload::Kind::Text
            } else {
                super::payload::Kind::Binary
            });
            if a.size < min {
                return Err(format!("--size {} is too small: broadcast messages carry a {min}-byte stamp", a.size));
            }
            let mut o = base(Mode::Broadcast, a.common, a.subs, a.size, Some(a.timed), 1);
            o.rate = a.rate;
            o.grace = a.grace.0;
            return Ok(o);
        }
    };
    Ok(base(mode, common, conns, size, timed, inflight))
}

fn base(mode: Mode, c: Common, conns: usize, size: usize, timed: Option<Timed>, inflight: usize) -> Options {
    let (text, json, deflate, duration, warmup) = match timed {
        Some(t) => (t.text || t.json || t.deflate, t.json || t.deflate, t.deflate, t.duration.0, t.warmup.0),
        None => (false, false, false, Duration::from_secs(10), Duration::from_secs(1)),
    };
    Options {
        mode,
        url: c.url,
        conns,
        size,
        text,
        json,
        deflate,
        inflight,
        duration,
        warmup,
        hold: Duration::from_secs(10),
        rate: 1000.0,
        grace: Duration::from_secs(2),
        threads: c.threads,
        server_pid: c.server_pid.map(|p| p as u32),
        connect_timeout: c.connect_timeout.0,
        close_timeout: c.close_timeout.0,
        connect_batch: c.connect_batch,
        source_ips: c.source_ips,
        quiet: c.quiet,
        ca: c.ca,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> Result<Options, String> {
        let argv: Vec<String> =
            std::iter::once("wsloop-bench").chain(line.split_whitespace()).map(String::from).collect();
        let m = command().try_get_matches_from(&argv).map_err(|e| cli::describe(&e, &command(), &argv, ""))?;
        options(Cli::from_arg_matches(&m).map_err(|e| e.to_string())?)
    }

    fn err(line: &str) -> String {
        run(line).unwrap_err()
    }

    #[test]
    fn the_clap_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn echo_with_every_flag() {
        let o = run("echo --url ws://127.0.0.1:9001/e --conns 50 --size 4096 --text --inflight 8 \
                     --duration 2.5 --warmup 0 --threads 2 --server-pid 77 -q")
        .unwrap();
        assert_eq!(o.mode, Mode::Echo);
        assert_eq!(o.url.port, 9001);
        assert_eq!(o.url.path, "/e");
        assert_eq!((o.conns, o.size, o.text, o.inflight, o.threads), (50, 4096, true, 8, 2));
        assert_eq!(o.duration, Duration::from_millis(2500));
        assert_eq!(o.warmup, Duration::ZERO);
        assert_eq!(o.server_pid, Some(77));
        assert!(o.quiet);
    }

    #[test]
    fn equals_form_and_defaults() {
        let o = run("idle --url=ws://localhost:1/ --hold=1").unwrap();
        assert_eq!((o.conns, o.hold, o.threads), (1000, Duration::from_secs(1), 1));
        assert_eq!(o.url.host, "localhost");
        let e = run("echo --url ws://h:1").unwrap();
        assert_eq!((e.conns, e.size, e.inflight, e.duration), (100, 32, 1, Duration::from_secs(10)));
        let b = run("broadcast --url ws://h:2 --subs 10 --rate 50.5").unwrap();
        assert_eq!((b.conns, b.size, b.rate, b.grace), (10, 64, 50.5, Duration::from_secs(2)));
        assert_eq!(b.url.path, "/");
        assert!(!b.url.tls && b.ca.is_none());
        let w = run("echo --url wss://h/x --ca /tmp/ca.pem").unwrap();
        assert_eq!((w.url.tls, w.url.port, w.url.path.as_str()), (true, 443, "/x"));
        assert_eq!(w.ca.as_deref(), Some(std::path::Path::new("/tmp/ca.pem")));
        assert_eq!(
            (b.connect_timeout, b.close_timeout, b.connect_batch),
            (Duration::from_secs(10), Duration::from_secs(5), 256)
        );
    }

    #[test]
    fn mistakes_are_reported() {
        let cases: &[(&str, &str)] = &[
            ("flood --url ws://a:1", "unknown mode \"flood\": expected echo, idle or broadcast"),
            ("echo", "missing --url <URL>"),
            ("echo --url ws://a:1 --bogus 1", "unknown flag or extra argument \"--bogus\""),
            ("echo --url ws://a:1 --conns", "--conns needs a value"),
            ("echo --url ws://a:1 --conns 0", "expected a whole number from 1 to 1000000"),
            ("echo --url ws://a:1 --conns x", "expected a whole number"),
            ("echo --url ws://a:1 --duration 0", "expected seconds in (0, 86400]"),
            ("echo --url ws://a:1 --duration -1", "for --duration"),
            ("echo --url ws://a:1 --hold 3", "--hold does not apply to echo mode (only to idle)"),
            ("idle --url ws://a:1 --inflight 3", "--inflight does not apply to idle mode"),
            ("idle --url ws://a:1 --subs 3", "--subs does not apply to idle mode"),
            ("broadcast --url ws://a:1 --conns 3", "--conns does not apply to broadcast mode"),
            ("broadcast --url ws://a:1 --size x", "invalid value \"x\" for --size: expected a whole number from 0"),
            ("broadcast --url ws://a:1 --size 8", "--size 8 is too small"),
            ("broadcast --url ws://a:1 --text --size 20", "32-byte stamp"),
            ("broadcast --url ws://a:1 --rate 0", "expected messages per second"),
            ("echo --url ws://a:1 --text=1", "--text"),
            ("", "no mode given: expected echo, idle or broadcast"),
            ("echo --url http://a:1", "must start with ws:// or wss://"),
            ("echo --url ws://a:0", "bad port"),
            ("echo --url ws://a:99999", "bad port"),
            ("echo --url ws://:80", "no host"),
        ];
        for (line, want) in cases {
            let got = err(line);
            assert!(got.contains(want), "{line:?}: {got:?} lacks {want:?}");
        }
    }

    #[test]
    fn urls() {
        let u = WsUrl::parse("ws://127.0.0.1:19001/room/a?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 19001, "/room/a?x=1"));
        assert_eq!(u.authority, "127.0.0.1:19001");
        let u = WsUrl::parse("ws://example.org?q").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("example.org", 80, "/?q"));
        let u = WsUrl::parse("ws://[::1]:5/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.authority.as_str()), ("::1", 5, "[::1]:5"));
        assert!(WsUrl::parse("ws://[::1/").is_err());
        assert!(WsUrl::parse("ws://u@h/").is_err());
        assert!(WsUrl::parse("ws://h/a b").is_err());
    }
}
