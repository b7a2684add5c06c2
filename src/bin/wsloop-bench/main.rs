//! `wsloop-bench`: a WebSocket load generator on mio and wsloop's own codec.
//!
//! Modes `echo`, `idle` and `broadcast` (see `wsloop-bench --help`, from `args.rs`). The main thread plans
//! the connections, runs the phases on a clock, samples the server's `/proc` entries
//! and prints the report; each `--threads` worker runs one mio loop
//! ([`worker`]). The last line of stdout is `RESULT mode=... key=value ...`.
#![deny(clippy::undocumented_unsafe_blocks)]

mod args;
#[path = "../cli/mod.rs"]
mod cli;
mod client;
mod deflate;
mod payload;
mod report;
mod sys;
mod tls;
mod worker;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use args::{Mode, Options};
use client::Role;
use report::{latency_histogram, ratio, ErrorKind, Errors, Latency, ResultLine};
use sys::{CpuSample, CpuUse};
use worker::{Phase, Shared, WorkerConfig, WorkerReport};

/// Connections per source address when spreading over 127.0.0.x: the ephemeral port
/// range holds about 28k per address, and connect() finds free ports slower as it fills.
const CONNS_PER_SOURCE_IP: usize = 8192;
/// File descriptors kept for everything but connections.
const SPARE_FDS: u64 = 64;
/// Wait after the connect phase before sampling the server's RSS, so that work it does
/// just after sending its 101 (spawning tasks, allocating buffers) is included.
const RSS_SETTLE: Duration = Duration::from_millis(250);

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let argv: Vec<String> = std::env::args().collect();
    let opts = match args::parse(&argv) {
        Ok(o) => o,
        Err(exit) => return exit.into(),
    };
    match run(&opts) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(msg) => {
            eprintln!("wsloop-bench: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Resolves the URL's host, preferring IPv4.
fn resolve(opts: &Options) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (opts.url.host.as_str(), opts.url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", opts.url.host))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{} has no addresses", opts.url.host))
}

/// Source addresses to spread connections over: 127.0.0.2 onwards, for IPv4 loopback
/// targets only (every 127/8 address is local, so no setup or root is needed).
fn source_addrs(target: SocketAddr, total: usize, asked: Option<usize>) -> Vec<Option<SocketAddr>> {
    let loopback = matches!(target.ip(), IpAddr::V4(ip) if ip.is_loopback());
    let n = asked.unwrap_or(total.div_ceil(CONNS_PER_SOURCE_IP).max(1));
    if !loopback || n == 0 {
        return vec![None];
    }
    (0..n).map(|i| Some(SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2 + i as u8).into(), 0))).collect()
}

/// Splits the connections over the workers: round robin, the publisher first (so it
/// lands on worker 0).
fn plan(
    mode: Mode,
    conns: usize,
    threads: usize,
    sources: &[Option<SocketAddr>],
) -> Vec<Vec<(Role, Option<SocketAddr>)>> {
    let mut plans = vec![Vec::new(); threads];
    let total = conns + usize::from(mode == Mode::Broadcast);
    for i in 0..total {
        let role = match mode {
            Mode::Echo => Role::Echo,
            Mode::Idle => Role::Idle,
            Mode::Broadcast if i == 0 => Role::Publisher,
            Mode::Broadcast => Role::Subscriber,
        };
        plans[i % threads].push((role, sources[i % sources.len()]));
    }
    plans
}

/// The main thread's clock-keeping: progress lines and SIGINT.
struct Clock<'a> {
    shared: &'a Shared,
    interrupted: Arc<AtomicBool>,
    quiet: bool,
    total: usize,
    last_print: Instant,
    last_msgs: u64,
}

impl Clock<'_> {
    /// Sleeps until `deadline` or until `done()` holds; `false` on SIGINT.
    fn wait(&mut self, deadline: Instant, label: &str, mut done: impl FnMut() -> bool) -> bool {
        loop {
            if self.interrupted.load(Ordering::Relaxed) {
                return false;
            }
            let now = Instant::now();
            if now >= deadline || done() {
                return true;
            }
            if now.duration_since(self.last_print) >= Duration::from_secs(1) {
                self.progress(label, now);
            }
            thread::sleep(deadline.saturating_duration_since(now).min(Duration::from_millis(20)));
        }
    }

    fn progress(&mut self, label: &str, now: Instant) {
        let msgs = self.shared.sum(|c| &c.msgs);
        let rate = (msgs - self.last_msgs) as f64 / now.duration_since(self.last_print).as_secs_f64();
        self.last_print = now;
        self.last_msgs = msgs;
        if self.quiet {
            return;
        }
        eprintln!(
            "[{:7.1}s] {label:<8} open {}/{} (opened {})  msgs/s {rate:.0}  errors {}",
            now.duration_since(self.shared.base).as_secs_f64(),
            self.shared.sum(|c| &c.open),
            self.total,
            self.shared.sum(|c| &c.opened),
            self.shared.sum(|c| &c.errors),
        );
    }
}

/// Server and generator CPU over one interval.
struct CpuWindow {
    server: Option<CpuUse>,
    load: Option<CpuUse>,
}

struct Sampler {
    pid: Option<String>,
    ticks: u64,
}

impl Sampler {
    fn take(&self) -> (Option<CpuSample>, Option<CpuSample>) {
        (self.pid.as_deref().and_then(CpuSample::take), CpuSample::take("self"))
    }

    fn between(
        &self,
        a: (Option<CpuSample>, Option<CpuSample>),
        b: (Option<CpuSample>, Option<CpuSample>),
    ) -> CpuWindow {
        let pair = |x: Option<CpuSample>, y: Option<CpuSample>| Some(CpuUse::between(x?, y?, self.ticks));
        CpuWindow { server: pair(a.0, b.0), load: pair(a.1, b.1) }
    }
}

/// Runs the benchmark; returns the error count, or a message for a setup failure.
fn run(opts: &Options) -> Result<u64, String> {
    let target = resolve(opts)?;
    let total = opts.conns + usize::from(opts.mode == Mode::Broadcast);
    let fd_limit = sys::raise_nofile_limit();
    if fd_limit > 0 && (total as u64) + SPARE_FDS > fd_limit {
        return Err(format!(
            "{total} connections need about {} file descriptors; the limit is {fd_limit} (raise `ulimit -n`)",
            total as u64 + SPARE_FDS
        ));
    }
    let sources = source_addrs(target, total, opts.source_ips);
    let plans = plan(opts.mode, opts.conns, opts.threads, &sources);
    let rbuf_len = match opts.mode {
        Mode::Idle => 1024,
        _ => (opts.size + 14).clamp(8 << 10, 256 << 10),
    };
    let pid = opts.server_pid.map(|p| p.to_string());
    if let Some(p) = &pid {
        if CpuSample::take(p).is_none() {
            return Err(format!("--server-pid {p}: cannot read /proc/{p}/stat"));
        }
    }
    let sampler = Sampler { pid, ticks: sys::clock_ticks() };
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted))
        .map_err(|e| format!("cannot handle SIGINT: {e}"))?;

    let tls = if opts.url.tls { Some(tls::TlsClient::new(&opts.url.host, opts.ca.as_deref())?) } else { None };
    println!(
        "wsloop-bench {} {}://{}{} -> {target}: {} connection(s) on {} thread(s){}",
        opts.mode.name(),
        if opts.url.tls { "wss" } else { "ws" },
        opts.url.authority,
        opts.url.path,
        total,
        opts.threads,
        match sources.len() {
            1 if sources[0].is_none() => String::new(),
            n => format!(", from {n} source address(es) 127.0.0.2+"),
        }
    );

    // Connect phase.
    let rss_before = opts.server_pid.and_then(sys::rss_kb);
    let cpu_connect_start = sampler.take();
    let shared = Arc::new(Shared::new(opts.threads));
    let connect_start = Instant::now();
    let connect_deadline = connect_start + opts.connect_timeout + Duration::from_secs_f64(total as f64 / 2000.0);
    let mut wakers = Vec::new();
    let mut handles = Vec::new();
    for (index, plan) in plans.into_iter().enumerate() {
        let poll = mio::Poll::new().map_err(|e| format!("mio::Poll: {e}"))?;
        let waker = mio::Waker::new(poll.registry(), worker::WAKER).map_err(|e| format!("mio::Waker: {e}"))?;
        wakers.push(waker);
        let cfg = WorkerConfig {
            index,
            target,
            host: opts.url.authority.clone(),
            path: opts.url.path.clone(),
            plan,
            size: opts.size,
            kind: opts.kind(),
            deflate: opts.deflate,
            inflight: opts.inflight,
            rate: opts.rate,
            rbuf_len,
            connect_batch: opts.connect_batch,
            connect_timeout: opts.connect_timeout,
            connect_deadline,
            close_timeout: opts.close_timeout,
            seed: seed(index),
            tls: tls.clone(),
        };
        let shared = Arc::clone(&shared);
        let h = thread::Builder::new()
            .name(format!("bench-{index}"))
            .spawn(move || worker::run(cfg, shared, poll))
            .map_err(|e| format!("spawn: {e}"))?;
        handles.push(h);
    }
    let wake_all = || {
        for w in &wakers {
            let _ = w.wake();
        }
    };
    let mut clock = Clock {
        shared: &shared,
        interrupted: Arc::clone(&interrupted),
        quiet: opts.quiet,
        total,
        last_print: Instant::now(),
        last_msgs: 0,
    };
    let all_connected = || shared.counters.iter().all(|c| c.connect_done_ns.load(Ordering::Acquire) != 0);
    let mut ok = clock.wait(connect_deadline + Duration::from_secs(5), "connect", &all_connected);
    let connected_at = Instant::now();
    let cpu_connect_end = sampler.take();
    let done_at = if all_connected() {
        let ns = shared.counters.iter().map(|c| c.connect_done_ns.load(Ordering::Acquire)).max().unwrap_or(0);
        shared.base + Duration::from_nanos(ns)
    } else {
        connected_at
    };
    let connect_secs = done_at.saturating_duration_since(connect_start).as_secs_f64().max(1e-6);
    let opened = shared.sum(|c| &c.opened);

    // Run phase: [warmup] then the measured window.
    let (run_len, warmup) = match opts.mode {
        Mode::Idle => (opts.hold, Duration::ZERO),
        _ => (opts.duration, opts.warmup),
    };
    let window_start = connected_at + warmup;
    let mut window_end = window_start + run_len;
    shared.set_window(window_start, window_end);
    shared.set_phase(Phase::Run);
    wake_all();
    let mut rss_after = None;
    let mut cpu_window = CpuWindow { server: None, load: None };
    if opened > 0 && ok {
        if opts.mode == Mode::Idle {
            ok = clock.wait(connected_at + RSS_SETTLE.min(run_len), "hold", || false);
            rss_after = opts.server_pid.and_then(sys::rss_kb);
        }
        ok = ok && clock.wait(window_start, "warmup", || false);
        let cpu_start = sampler.take();
        ok = ok && clock.wait(window_end, if opts.mode == Mode::Idle { "hold" } else { "run" }, || false);
        if !ok {
            window_end = Instant::now().min(window_end);
            shared.cut_window(window_end);
        }
        cpu_window = sampler.between(cpu_start, sampler.take());
        if opts.mode == Mode::Broadcast && ok {
            // Grace: let messages sent near the end of the window arrive.
            let done = || {
                let expected = shared.counters[0].window_sent.load(Ordering::Relaxed) * opts.conns as u64;
                shared.sum(|c| &c.window_msgs) >= expected
            };
            ok = clock.wait(Instant::now() + opts.grace, "grace", done);
        }
    }
    let rss_end = opts.server_pid.and_then(sys::rss_kb);
    // Nothing ran when nothing connected.
    let window_secs = if opened > 0 { window_end.saturating_duration_since(window_start).as_secs_f64() } else { 0.0 };

    // Close phase.
    shared.set_phase(Phase::Close);
    wake_all();
    let mut errors = Errors::default();
    if !ok {
        errors.add(ErrorKind::Interrupted, || "SIGINT".into());
    }
    let mut reports: Vec<WorkerReport> = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => errors.add(ErrorKind::IoError, || format!("worker poll failed: {e}")),
            Err(_) => errors.add(ErrorKind::IoError, || "worker panicked".into()),
        }
    }
    let mut latency = latency_histogram();
    let mut handshake = latency_histogram();
    let (mut window_msgs, mut window_bytes, mut window_sent, mut skipped) = (0u64, 0u64, 0u64, 0u64);
    let mut window_wire = 0u64;
    for r in &reports {
        errors.merge(&r.errors);
        let _ = latency.add(&r.latency);
        let _ = handshake.add(&r.handshake);
        window_msgs += r.window_msgs;
        window_bytes += r.window_bytes;
        window_wire += r.window_wire;
        window_sent += r.window_sent;
        skipped += r.skipped_sends;
    }
    let opened: u64 = reports.iter().map(|r| r.opened).sum::<u64>().max(opened);
    let negotiated: u64 = reports.iter().map(|r| r.negotiated).sum();
    let connect_per_s = ratio(opened as f64, connect_secs);

    // Report.
    let mode = opts.mode.name();
    let mut res = ResultLine::new(mode);
    println!("connected {opened}/{total} in {connect_secs:.2} s ({connect_per_s:.0} conn/s)");
    let hs = Latency::of(&handshake);
    println!("handshake latency us: p50 {} p99 {} p99.9 {} max {}", hs.p50, hs.p99, hs.p999, hs.max);
    let msgs_per_s = ratio(window_msgs as f64, window_secs);
    match opts.mode {
        Mode::Echo => {
            let mb = ratio(window_bytes as f64, window_secs) / 1e6;
            println!("window {window_secs:.2} s: {window_msgs} echoes, {msgs_per_s:.0} msgs/s, {mb:.2} MB/s payload");
            print_latency("round trip", &latency);
            res.int("conns", opened).int("threads", opts.threads as u64).int("size", opts.size as u64);
            res.int("inflight", opts.inflight as u64).fixed("duration_s", window_secs, 2);
            res.fixed("msgs_per_s", msgs_per_s, 1).fixed("mb_per_s", mb, 3).latency(&latency);
            res.fixed("connect_per_s", connect_per_s, 1);
        }
        Mode::Idle => {
            println!("held {window_secs:.2} s: {window_msgs} messages from the server ({msgs_per_s:.2}/s)");
            res.int("conns", opened).int("threads", opts.threads as u64).fixed("connect_per_s", connect_per_s, 1);
            res.fixed("hold_s", window_secs, 2).fixed("msgs_per_s", msgs_per_s, 2).latency(&handshake);
            if let (Some(before), Some(after)) = (rss_before, rss_after) {
                let per = |kb: u64| (kb.saturating_sub(before) * 1024).checked_div(opened).unwrap_or(0);
                println!(
                    "server RSS {before} kB before, {after} kB with {opened} open: {} bytes per connection",
                    per(after)
                );
                res.int("bytes_per_conn", per(after)).int("server_rss_kb", after);
                if let Some(end) = rss_end {
                    println!("server RSS at the end of the hold: {end} kB ({} bytes per connection)", per(end));
                    res.int("bytes_per_conn_end", per(end));
                }
            }
            if let Some(cpu) = sampler.between(cpu_connect_start, cpu_connect_end).server {
                let per_conn = ratio(cpu.cpu_us, opened as f64);
                println!("server CPU while connecting: {:.1}%, {per_conn:.1} us per connection", cpu.pct);
                res.fixed("server_cpu_us_per_conn", per_conn, 2);
            }
        }
        Mode::Broadcast => {
            let subs = opts.conns as u64;
            let expected = window_sent * subs;
            let delivery_ratio = ratio(window_msgs as f64, expected as f64);
            let sent_per_s = ratio(window_sent as f64, window_secs);
            let deliveries_per_s = msgs_per_s;
            println!(
                "window {window_secs:.2} s: sent {window_sent} ({sent_per_s:.0}/s of {} asked), delivered \
                 {window_msgs}/{expected} ({delivery_ratio:.4}), {deliveries_per_s:.0} deliveries/s",
                opts.rate
            );
            if skipped > 0 {
                println!("publisher fell behind and skipped {skipped} sends");
            }
            print_latency("fan-out", &latency);
            res.int("subs", subs).int("conns", opened).int("threads", opts.threads as u64);
            res.int("size", opts.size as u64).fixed("rate", opts.rate, 1).fixed("duration_s", window_secs, 2);
            res.fixed("msgs_per_s", sent_per_s, 1).fixed("deliveries_per_s", deliveries_per_s, 1);
            res.fixed("delivery_ratio", delivery_ratio, 4).int("sent", window_sent).int("delivered", window_msgs);
            res.int("skipped_sends", skipped).latency(&latency).fixed("connect_per_s", connect_per_s, 1);
        }
    }
    if opts.deflate {
        println!("permessage-deflate negotiated on {negotiated} of {opened} connections");
        res.int("deflate_conns", negotiated);
    }
    if matches!(opts.mode, Mode::Echo | Mode::Broadcast) {
        // Frames and all, server to client: with --deflate, what compression leaves.
        let wire = ratio(window_wire as f64, window_msgs as f64);
        let payload = ratio(window_bytes as f64, window_msgs as f64);
        println!("wire bytes per message from the server: {wire:.1} (payload {payload:.1})");
        res.fixed("wire_bytes_per_msg", wire, 1).int("deflate", opts.deflate as u64);
    }
    if let Some(cpu) = cpu_window.server {
        let per_msg = ratio(cpu.cpu_us, window_msgs as f64);
        let sys_per_msg = ratio(cpu.sys_us, window_msgs as f64);
        println!(
            "server CPU {:.1}%, {per_msg:.2} us per message ({:.2} user, {sys_per_msg:.2} kernel)",
            cpu.pct,
            per_msg - sys_per_msg
        );
        res.fixed("server_cpu_pct", cpu.pct, 1).fixed("server_cpu_us_per_msg", per_msg, 3);
        res.fixed("server_user_us_per_msg", per_msg - sys_per_msg, 3).fixed("server_sys_us_per_msg", sys_per_msg, 3);
    }
    if let Some(cpu) = cpu_window.load {
        println!("load generator CPU {:.1}%", cpu.pct);
        res.fixed("load_cpu_pct", cpu.pct, 1);
    }
    let total_errors = errors.total();
    println!("errors: {total_errors}");
    res.int("errors", total_errors);
    for (name, n, detail) in errors.nonzero() {
        println!("  {name}: {n} (first: {})", detail.unwrap_or("-"));
        res.int(&format!("err_{name}"), n);
    }
    println!("{}", res.render());
    Ok(total_errors)
}

fn print_latency(what: &str, h: &hdrhistogram::Histogram<u64>) {
    let l = Latency::of(h);
    println!("{what} latency us: p50 {} p99 {} p99.9 {} max {} ({} samples)", l.p50, l.p99, l.p999, l.max, h.len());
}

/// A different PRNG seed per worker and per run.
fn seed(index: usize) -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32) ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_only_for_ipv4_loopback() {
        let lo: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let other: SocketAddr = "10.0.0.1:9".parse().unwrap();
        assert_eq!(source_addrs(other, 100_000, None), vec![None]);
        assert_eq!(source_addrs(lo, 10, Some(0)), vec![None]);
        let s = source_addrs(lo, 20_000, None);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], Some("127.0.0.2:0".parse().unwrap()));
        assert_eq!(s[2], Some("127.0.0.4:0".parse().unwrap()));
        assert_eq!(source_addrs(lo, 1, Some(250)).last().unwrap(), &Some("127.0.0.251:0".parse().unwrap()));
    }

    #[test]
    fn plan_puts_the_publisher_on_worker_zero_and_splits_evenly() {
        let p = plan(Mode::Broadcast, 5, 2, &[None]);
        assert_eq!(p[0].len() + p[1].len(), 6);
        assert_eq!(p[0][0].0, Role::Publisher);
        assert!(p[1].iter().all(|c| c.0 == Role::Subscriber));
        assert_eq!((p[0].len(), p[1].len()), (3, 3));
        let e = plan(Mode::Echo, 3, 4, &[None]);
        assert_eq!(e.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1, 0]);
    }
}
