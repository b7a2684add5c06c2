//! The admin listener: `GET /metrics` (Prometheus text exposition) and `GET /healthz`,
//! on a small event loop of its own thread, so it answers while the workers drain and
//! until the last of them exits. Off unless `Config::admin_listen` is set.

use super::admin_http::Exchange;
use super::gate::Refusal;
use super::metrics::{TimeoutKind, WorkerMetrics, CLOSE_CODES, HANDSHAKE_STATUSES, LATENCY_BUCKETS_US, OPCODES};
use super::shared::{Shared, Source};
use crate::session::CloseCause;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection tokens start here.
const FIRST_CONN: usize = 2;

/// Bytes read per call.
const READ_CHUNK: usize = 16 * 1024;
const MAX_ADMIN_CONNS: usize = 64;
/// A request (slow or idle) that is not complete and answered by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

struct AdminConn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    /// Close once `out` is written.
    close: bool,
    /// When the current request (or the wait for the next one) began.
    since: Instant,
    exchange: Exchange,
}

struct Admin {
    listener: TcpListener,
    conns: Slab<AdminConn>,
}

/// The admin thread, stopped by [`AdminThread::stop`].
pub(crate) struct AdminThread {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: JoinHandle<()>,
}

impl AdminThread {
    /// Serves `listener` on a thread of its own until stopped.
    pub fn spawn(listener: std::net::TcpListener, shared: Arc<Shared>) -> io::Result<AdminThread> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listener = TcpListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let stop = Arc::new(AtomicBool::new(false));
        let admin = Admin { listener, conns: Slab::new() };
        let flag = stop.clone();
        let thread =
            std::thread::Builder::new().name("wsloop-admin".into()).spawn(move || admin.run(poll, &shared, &flag))?;
        Ok(AdminThread { stop, waker, thread })
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        let _ = self.thread.join();
    }
}

impl Admin {
    fn run(mut self, mut poll: Poll, shared: &Shared, stop: &AtomicBool) {
        let mut events = Events::with_capacity(64);
        while !stop.load(Ordering::SeqCst) {
            let timeout = (!self.conns.is_empty()).then_some(Duration::from_secs(1));
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("admin listener: poll failed: {e}");
                    return;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(poll.registry()),
                    WAKER => {}
                    Token(t) => self.drive(t - FIRST_CONN, poll.registry(), shared),
                }
            }
            self.expire(poll.registry());
        }
    }

    /// Drops requests older than [`REQUEST_TIMEOUT`]: a slow client never holds a slot.
    fn expire(&mut self, registry: &Registry) {
        let old: Vec<usize> =
            self.conns.iter().filter(|(_, c)| c.since.elapsed() >= REQUEST_TIMEOUT).map(|(k, _)| k).collect();
        for k in old {
            let mut c = self.conns.remove(k);
            log::debug!("admin: request timed out");
            let _ = registry.deregister(&mut c.stream);
        }
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.conns.len() >= MAX_ADMIN_CONNS {
                        continue; // dropped: closes the socket
                    }
                    let entry = self.conns.vacant_entry();
                    let token = Token(FIRST_CONN + entry.key());
                    if registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).is_ok() {
                        let since = Instant::now();
                        entry.insert(AdminConn {
                            stream,
                            inbuf: Vec::new(),
                            out: Vec::new(),
                            written: 0,
                            close: false,
                            since,
                            exchange: Exchange::default(),
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("admin accept: {e}");
                    return;
                }
            }
        }
    }

    /// Reads, answers and writes until the socket would block: one request at a time,
    /// kept alive between requests (HTTP/1.1), each within [`REQUEST_TIMEOUT`].
    fn drive(&mut self, key: usize, registry: &Registry, shared: &Shared) {
        let Some(c) = self.conns.get_mut(key) else { return };
        let done = c.drive(shared);
        if done {
            let mut c = self.conns.remove(key);
            let _ = registry.deregister(&mut c.stream);
        }
    }
}

impl AdminConn {
    /// True when the connection is finished.
    fn drive(&mut self, shared: &Shared) -> bool {
        let mut buf = [0u8; READ_CHUNK];
        loop {
            if !self.out.is_empty() {
                while self.written < self.out.len() {
                    match self.stream.write(&self.out[self.written..]) {
                        Ok(0) => return true,
                        Ok(n) => self.written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return true,
                    }
                }
                if self.close {
                    return true;
                }
                self.out.clear();
                self.written = 0;
                self.since = Instant::now();
            }
            if let Some(a) = self.exchange.advance(&mut self.inbuf, shared) {
                self.out = a.bytes;
                self.close = a.close;
                continue;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

/// The GET routes: status, content type, body.
pub(super) fn route(method: &str, path: &str, shared: &Shared) -> (u16, &'static str, String) {
    match (method, path) {
        ("GET", "/metrics") => (200, "text/plain; version=0.0.4; charset=utf-8", render(shared)),
        ("GET", "/healthz") => {
            if shared.draining.load(Ordering::Relaxed) {
                (503, "text/plain", "draining\n".into())
            } else {
                (200, "text/plain", "ok\n".into())
            }
        }
        ("GET", _) => (404, "text/plain", "not found\n".into()),
        _ => (405, "text/plain", "method not allowed\n".into()),
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Prometheus text exposition of every worker's counters, summed (per-worker series
/// where the worker is the point).
pub fn render(shared: &Shared) -> String {
    let ws: Vec<&WorkerMetrics> = shared.workers.iter().map(|w| &*w.metrics).collect();
    let sum = |f: &dyn Fn(&WorkerMetrics) -> u64| ws.iter().map(|m| f(m)).sum::<u64>();
    let mut o = String::with_capacity(8192);
    let o = &mut o;
    let scalar = |o: &mut String, name: &str, kind: &str, help: &str, v: u64| {
        family(o, name, kind, help);
        let _ = writeln!(o, "{name} {v}");
    };
    scalar(o, "wsloop_connections_open", "gauge", "Upgraded WebSocket connections open now.", sum(&|m| m.open.get()));
    scalar(o, "wsloop_connections_accepted_total", "counter", "TCP connections accepted.", sum(&|m| m.accepted.get()));
    let n = "wsloop_connections_rejected_total";
    family(o, n, "counter", "Connections refused, by reason.");
    for (i, label) in Refusal::LABELS.iter().enumerate() {
        let _ = writeln!(o, "{n}{{reason=\"{label}\"}} {}", sum(&|m| m.rejected[i].get()));
    }
    let n = "wsloop_handshakes_failed_total";
    family(o, n, "counter", "Failed handshakes, by HTTP status.");
    for (i, s) in HANDSHAKE_STATUSES.iter().enumerate() {
        let _ = writeln!(o, "{n}{{status=\"{s}\"}} {}", sum(&|m| m.handshake_failed[i].get()));
    }
    scalar(o, "wsloop_messages_received_total", "counter", "Data messages received.", sum(&|m| m.messages_in()));
    scalar(
        o,
        "wsloop_messages_sent_total",
        "counter",
        "Data messages queued for sending.",
        sum(&|m| m.messages_out.get()),
    );
    scalar(o, "wsloop_bytes_received_total", "counter", "Bytes read from client sockets.", sum(&|m| m.bytes_in.get()));
    scalar(o, "wsloop_bytes_sent_total", "counter", "Bytes written to client sockets.", sum(&|m| m.bytes_out.get()));
    let n = "wsloop_frames_received_total";
    family(o, n, "counter", "Frames received, by opcode (data frames counted per message).");
    for (i, op) in OPCODES.iter().enumerate() {
        let _ = writeln!(o, "{n}{{opcode=\"{op}\"}} {}", sum(&|m| m.frames_in[i].get()));
    }
    let n = "wsloop_closes_total";
    family(o, n, "counter", "Connections closed, by close code.");
    for (i, c) in CLOSE_CODES.iter().enumerate() {
        let label = if *c == 0 { "other".to_string() } else { c.to_string() };
        let _ = writeln!(o, "{n}{{code=\"{label}\"}} {}", sum(&|m| m.closes[i].get()));
    }
    scalar(
        o,
        "wsloop_connections_never_upgraded_total",
        "counter",
        "Connections that ended before an upgrade (refused, timed out or gone during the handshake).",
        sum(&|m| m.never_upgraded.get()),
    );
    let n = "wsloop_close_causes_total";
    family(o, n, "counter", "Upgraded connections ended, by cause.");
    for c in CloseCause::ALL {
        let _ = writeln!(o, "{n}{{cause=\"{}\"}} {}", c.label(), sum(&|m| m.close_causes[c.index()].get()));
    }
    #[cfg(feature = "tls")]
    {
        let n = "wsloop_tls_handshake_failures_total";
        family(o, n, "counter", "TLS handshakes that failed, by reason.");
        for r in crate::tls::TlsFailure::ALL {
            let _ = writeln!(o, "{n}{{reason=\"{}\"}} {}", r.label(), sum(&|m| m.tls_failures[r.index()].get()));
        }
    }
    #[cfg(feature = "deflate")]
    {
        scalar(
            o,
            "wsloop_deflate_dedicated_contexts",
            "gauge",
            "Per-connection compressors held now (--compression dedicated; freed after --compression-idle).",
            sum(&|m| m.deflate_dedicated_contexts.get()),
        );
        scalar(
            o,
            "wsloop_deflate_dedicated_bytes",
            "gauge",
            "Heap bytes held by per-connection compressors.",
            sum(&|m| m.deflate_dedicated_bytes.get()),
        );
    }
    scalar(
        o,
        "wsloop_backpressure_events_total",
        "counter",
        "Times a connection went over max_backpressure.",
        sum(&|m| m.backpressure_events.get()),
    );
    scalar(
        o,
        "wsloop_backpressure_drops_total",
        "counter",
        "Messages dropped for a connection over max_backpressure.",
        sum(&|m| m.backpressure_drops.get()),
    );
    scalar(
        o,
        "wsloop_broadcast_drops_total",
        "counter",
        "Broadcast messages dropped for slow subscribers.",
        sum(&|m| m.broadcast_drops.get()),
    );
    scalar(
        o,
        "wsloop_broadcast_deliveries_total",
        "counter",
        "Broadcast messages queued to subscribers.",
        sum(&|m| m.broadcast_deliveries.get()),
    );
    let n = "wsloop_timeouts_total";
    family(o, n, "counter", "Connections closed by a timeout, by kind.");
    for k in TimeoutKind::ALL {
        let _ = writeln!(o, "{n}{{kind=\"{}\"}} {}", k.label(), sum(&|m| m.timeouts[k as usize].get()));
    }
    scalar(
        o,
        "wsloop_rate_limited_total",
        "counter",
        "Connections closed for exceeding max_msg_rate.",
        sum(&|m| m.rate_limited.get()),
    );
    let per_worker = |o: &mut String, name: &str, help: &str, v: &dyn Fn(&WorkerMetrics) -> String| {
        family(o, name, "counter", help);
        for (i, m) in ws.iter().enumerate() {
            let _ = writeln!(o, "{name}{{worker=\"{i}\"}} {}", v(m));
        }
    };
    per_worker(o, "wsloop_worker_loop_iterations_total", "Event loop iterations, per worker.", &|m| {
        m.loop_iterations.get().to_string()
    });
    per_worker(
        o,
        "wsloop_worker_connections_accepted_total",
        "TCP connections taken on, per worker (how evenly accepting spreads them).",
        &|m| m.accepted.get().to_string(),
    );
    per_worker(o, "wsloop_worker_busy_seconds_total", "Time the event loop spent working, per worker.", &|m| {
        format!("{:.6}", m.loop_busy_ns.get() as f64 / 1e9)
    });
    let n = "wsloop_message_handling_seconds";
    family(o, n, "histogram", "Time to decode and handle one message (per read batch, averaged over its messages; batches of one loop turn in 64 are sampled).");
    let mut cumulative = 0u64;
    for (i, b) in LATENCY_BUCKETS_US.iter().enumerate() {
        cumulative += sum(&|m| m.handle_latency[i].get());
        let _ = writeln!(o, "{n}_bucket{{le=\"{}\"}} {cumulative}", *b as f64 / 1e6);
    }
    cumulative += sum(&|m| m.handle_latency[LATENCY_BUCKETS_US.len()].get());
    let _ = writeln!(o, "{n}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(o, "{n}_sum {:.9}", sum(&|m| m.handle_latency_sum_ns.get()) as f64 / 1e9);
    let _ = writeln!(o, "{n}_count {cumulative}");
    let n = "wsloop_publishes_total";
    family(o, n, "counter", "Messages published, by source (client, api, redis, library).");
    for src in Source::ALL {
        let v = match src {
            Source::Client => sum(&|m| m.publishes.get()),
            _ => shared.publish_stats.published[src as usize].load(Ordering::Relaxed),
        };
        let _ = writeln!(o, "{n}{{source=\"{}\"}} {v}", src.label());
    }
    let n = "wsloop_publishes_refused_total";
    family(o, n, "counter", "Publishes refused because a worker's publish queue (publish_queue) was full, by source.");
    for src in Source::ALL {
        let v = match src {
            Source::Client => sum(&|m| m.publishes_refused.get()),
            _ => shared.publish_stats.refused[src as usize].load(Ordering::Relaxed),
        };
        let _ = writeln!(o, "{n}{{source=\"{}\"}} {v}", src.label());
    }
    if let Some(h) = &shared.history {
        let (rooms, bytes) = h.lock().unwrap_or_else(|e| e.into_inner()).usage();
        scalar(o, "wsloop_history_rooms", "gauge", "Rooms with history kept on this node.", rooms as u64);
        scalar(o, "wsloop_history_bytes", "gauge", "Frame bytes of history kept on this node.", bytes as u64);
    }
    scalar(
        o,
        "wsloop_draining",
        "gauge",
        "1 while the server shuts down.",
        shared.draining.load(Ordering::Relaxed) as u64,
    );
    for extra in shared.extra_metrics.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        extra(o);
    }
    std::mem::take(o)
}
