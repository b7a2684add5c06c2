//! Command-line parsing, by hand to keep the binary small.

use std::fmt;
use std::time::Duration;

pub const USAGE: &str = "\
usage: wsloop-bench <echo|idle|broadcast> --url ws://HOST:PORT/PATH [options]

modes:
  echo       each connection keeps --inflight messages in flight and checks every echo
             (content and opcode); reports msgs/s, MB/s (payload, one way) and latency
  idle       opens --conns connections, holds them (answering pings), then closes each
             with a close frame; reports connect rate, handshake latency and, with
             --server-pid, the server's RSS per connection
  broadcast  one publisher and --subs subscribers on the same URL; the server must relay
             every message to every connection there (sender included); the publisher
             sends --rate msgs/s, subscribers measure fan-out latency and delivery ratio

common options:
  --url URL              ws://HOST[:PORT][/PATH] (required; wss is not supported)
  --threads N            generator threads, one mio loop each (default 1)
  --server-pid PID       sample /proc/PID for the server's CPU (and RSS in idle mode)
  --connect-timeout SECS per connection, TCP connect to 101 response (default 10)
  --close-timeout SECS   wait for the server's close replies (default 5)
  --connect-batch N      connects in progress at once, per thread (default 256)
  --source-ips N         spread connections over source addresses 127.0.0.2..127.0.0.(N+1)
                         (loopback targets only; default: one per 8192 connections)
  -q, --quiet            no progress lines on stderr
  -h, --help             this text

echo:       --conns C (100) --size S (32) --text --inflight K (1)
            --duration SECS (10) --warmup SECS (1)
idle:       --conns C (1000) --hold SECS (10)
broadcast:  --subs C (100) --size S (64, at least 16; 32 with --text) --text
            --rate R (1000) --duration SECS (10) --warmup SECS (1) --grace SECS (2)

Durations accept fractions (0.5). The connect phase ends by itself after
--connect-timeout + conns/2000 seconds at most. The last line of stdout is
`RESULT mode=<mode> key=value ...`; the exit status is 1 when any error was counted.
In idle mode p50_us/p99_us are handshake latencies (connect to 101) and msgs_per_s
counts the messages (pings included) the server sent while held; in broadcast mode
msgs_per_s is the publisher's rate and server_cpu_us_per_msg is per delivery.
";

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

/// A `ws://` URL, not yet resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsUrl {
    /// Host as written (brackets stripped from an IPv6 literal).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// The `Host` header: host and port as written in the URL.
    pub authority: String,
}

impl WsUrl {
    pub fn parse(s: &str) -> Result<WsUrl, ArgError> {
        let bad = |why: &str| ArgError(format!("bad --url {s:?}: {why}"));
        let rest = if let Some(r) = s.strip_prefix("ws://") {
            r
        } else if s.starts_with("wss://") {
            return Err(bad("wss (TLS) is not supported"));
        } else {
            return Err(bad("must start with ws://"));
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
            None => 80,
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| bad("bad port"))?,
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces or control characters in the path"));
        }
        Ok(WsUrl { host: host.to_string(), port, path, authority: authority.to_string() })
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
}

/// What the command line asked for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Box<Options>),
    Help,
}

/// A command-line mistake, with a message for the user.
#[derive(Debug, PartialEq, Eq)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Largest message the generator will send (the decoder's default limit).
const MAX_SIZE: usize = 16 << 20;

/// Which options each mode accepts, beyond the common ones.
fn mode_accepts(mode: Mode, flag: &str) -> bool {
    match flag {
        "--conns" => matches!(mode, Mode::Echo | Mode::Idle),
        "--subs" | "--rate" | "--grace" => mode == Mode::Broadcast,
        "--size" | "--text" | "--duration" | "--warmup" => {
            matches!(mode, Mode::Echo | Mode::Broadcast)
        }
        "--inflight" => mode == Mode::Echo,
        "--hold" => mode == Mode::Idle,
        _ => true,
    }
}

const VALUE_FLAGS: &[&str] = &[
    "--url",
    "--conns",
    "--subs",
    "--size",
    "--inflight",
    "--duration",
    "--warmup",
    "--hold",
    "--rate",
    "--grace",
    "--threads",
    "--server-pid",
    "--connect-timeout",
    "--close-timeout",
    "--connect-batch",
    "--source-ips",
];
const SWITCHES: &[&str] = &["--text", "--quiet", "-q"];

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, ArgError> {
    let mut args = args.into_iter();
    let mode = match args.next().as_deref() {
        None => return Err(ArgError("no mode given".into())),
        Some("-h" | "--help" | "help") => return Ok(Command::Help),
        Some("echo") => Mode::Echo,
        Some("idle") => Mode::Idle,
        Some("broadcast") => Mode::Broadcast,
        Some(other) => return Err(ArgError(format!("unknown mode {other:?} (expected echo, idle or broadcast)"))),
    };
    let mut opts = Options {
        mode,
        url: WsUrl { host: String::new(), port: 0, path: String::new(), authority: String::new() },
        conns: if mode == Mode::Idle { 1000 } else { 100 },
        size: if mode == Mode::Broadcast { 64 } else { 32 },
        text: false,
        inflight: 1,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(1),
        hold: Duration::from_secs(10),
        rate: 1000.0,
        grace: Duration::from_secs(2),
        threads: 1,
        server_pid: None,
        connect_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(5),
        connect_batch: 256,
        source_ips: None,
        quiet: false,
    };
    let mut have_url = false;
    let mut size_given = false;
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let is_switch = SWITCHES.contains(&flag.as_str());
        if !is_switch && !VALUE_FLAGS.contains(&flag.as_str()) {
            return Err(ArgError(format!("unknown option {flag:?}")));
        }
        if !mode_accepts(mode, &flag) {
            return Err(ArgError(format!("{flag} does not apply to {} mode", mode.name())));
        }
        if is_switch {
            if inline.is_some() {
                return Err(ArgError(format!("{flag} takes no value")));
            }
            match flag.as_str() {
                "--text" => opts.text = true,
                _ => opts.quiet = true,
            }
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| ArgError(format!("{flag} needs a value")))?,
        };
        let v = value.as_str();
        match flag.as_str() {
            "--url" => {
                opts.url = WsUrl::parse(v)?;
                have_url = true;
            }
            "--conns" | "--subs" => opts.conns = count(&flag, v, 1, 1_000_000)?,
            "--size" => {
                opts.size = count(&flag, v, 0, MAX_SIZE)?;
                size_given = true;
            }
            "--inflight" => opts.inflight = count(&flag, v, 1, 1 << 16)?,
            "--duration" => opts.duration = secs(&flag, v, false)?,
            "--warmup" => opts.warmup = secs(&flag, v, true)?,
            "--hold" => opts.hold = secs(&flag, v, true)?,
            "--grace" => opts.grace = secs(&flag, v, true)?,
            "--rate" => {
                opts.rate =
                    v.parse::<f64>().ok().filter(|r| r.is_finite() && *r > 0.0 && *r <= 1e8).ok_or_else(|| {
                        ArgError(format!("{flag}: expected messages per second in (0, 1e8], got {v:?}"))
                    })?
            }
            "--threads" => opts.threads = count(&flag, v, 1, 256)?,
            "--server-pid" => opts.server_pid = Some(count(&flag, v, 1, u32::MAX as usize)? as u32),
            "--connect-timeout" => opts.connect_timeout = secs(&flag, v, false)?,
            "--close-timeout" => opts.close_timeout = secs(&flag, v, false)?,
            "--connect-batch" => opts.connect_batch = count(&flag, v, 1, 1 << 20)?,
            "--source-ips" => opts.source_ips = Some(count(&flag, v, 0, 250)?),
            _ => unreachable!("flag {flag} is in VALUE_FLAGS"),
        }
    }
    if !have_url {
        return Err(ArgError("--url is required".into()));
    }
    if mode == Mode::Broadcast {
        let min = super::payload::stamp_len(opts.text);
        if opts.size < min {
            let why = if size_given { "" } else { " (the default)" };
            return Err(ArgError(format!(
                "--size {}{why} is too small: broadcast messages carry a {min}-byte stamp",
                opts.size
            )));
        }
    }
    Ok(Command::Run(Box::new(opts)))
}

fn count(flag: &str, v: &str, min: usize, max: usize) -> Result<usize, ArgError> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| ArgError(format!("{flag}: expected a whole number in {min}..={max}, got {v:?}")))
}

fn secs(flag: &str, v: &str, zero_ok: bool) -> Result<Duration, ArgError> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (*s > 0.0 || (zero_ok && *s == 0.0)) && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            let lo = if zero_ok { "[0" } else { "(0" };
            ArgError(format!("{flag}: expected seconds in {lo}, 86400], got {v:?}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> Result<Options, ArgError> {
        match parse(line.split_whitespace().map(String::from))? {
            Command::Run(o) => Ok(*o),
            Command::Help => panic!("help"),
        }
    }

    fn err(line: &str) -> String {
        run(line).unwrap_err().0
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
        let b = run("broadcast --url ws://h:2 --subs 10 --rate 50.5").unwrap();
        assert_eq!((b.conns, b.size, b.rate), (10, 64, 50.5));
        assert_eq!(b.url.path, "/");
    }

    #[test]
    fn help_anywhere() {
        assert_eq!(parse(["--help".to_string()]), Ok(Command::Help));
        assert_eq!(parse(["echo", "--url", "ws://a:1", "-h"].map(String::from)), Ok(Command::Help));
    }

    #[test]
    fn mistakes_are_reported() {
        let cases: &[(&str, &str)] = &[
            ("", "no mode"),
            ("flood --url ws://a:1", "unknown mode"),
            ("echo", "--url is required"),
            ("echo --url ws://a:1 --bogus 1", "unknown option \"--bogus\""),
            ("echo --url ws://a:1 --conns", "--conns needs a value"),
            ("echo --url ws://a:1 --conns 0", "--conns: expected a whole number"),
            ("echo --url ws://a:1 --conns x", "--conns: expected a whole number"),
            ("echo --url ws://a:1 --duration 0", "--duration: expected seconds"),
            ("echo --url ws://a:1 --duration -1", "--duration: expected seconds"),
            ("echo --url ws://a:1 --hold 3", "--hold does not apply to echo mode"),
            ("idle --url ws://a:1 --inflight 3", "--inflight does not apply to idle mode"),
            ("idle --url ws://a:1 --subs 3", "--subs does not apply to idle mode"),
            ("broadcast --url ws://a:1 --conns 3", "--conns does not apply to broadcast mode"),
            ("broadcast --url ws://a:1 --size 8", "--size 8 is too small"),
            ("broadcast --url ws://a:1 --text --size 20", "32-byte stamp"),
            ("broadcast --url ws://a:1 --rate 0", "--rate"),
            ("echo --url ws://a:1 --text=1", "--text takes no value"),
            ("echo --url wss://a:1", "wss (TLS) is not supported"),
            ("echo --url http://a:1", "must start with ws://"),
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
