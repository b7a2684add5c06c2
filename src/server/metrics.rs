//! Per-worker counters. Each worker writes only its own (a relaxed load and store, no
//! locked instruction, no cache line shared with another writer); a scrape reads all of
//! them and adds them up.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A counter written by one thread and read by any.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (owner thread only).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Adds one (owner thread only).
    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    /// Subtracts `n` (owner thread only; for gauges).
    #[inline]
    pub(crate) fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    /// Sets a gauge to `v` (owner thread only).
    #[cfg(feature = "deflate")]
    #[inline]
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    /// Current value (any thread).
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Which timeout closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Handshake not completed in time.
    Handshake,
    /// Nothing received for `idle_timeout`.
    Idle,
    /// Close handshake not answered.
    Close,
    /// Outgoing bytes did not drain.
    WriteStall,
}

impl TimeoutKind {
    /// All kinds, in exposition order.
    pub const ALL: [TimeoutKind; 4] =
        [TimeoutKind::Handshake, TimeoutKind::Idle, TimeoutKind::Close, TimeoutKind::WriteStall];

    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            TimeoutKind::Handshake => "handshake",
            TimeoutKind::Idle => "idle",
            TimeoutKind::Close => "close",
            TimeoutKind::WriteStall => "write_stall",
        }
    }
}

/// HTTP statuses counted for failed handshakes.
pub const HANDSHAKE_STATUSES: [u16; 10] = [400, 401, 403, 404, 405, 426, 429, 431, 500, 503];

/// Close codes counted individually; others go to the last bucket ("other").
pub const CLOSE_CODES: [u16; 12] = [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 0];

/// Frame opcodes counted (received), by wire value order: continuation, text, binary,
/// close, ping, pong.
pub const OPCODES: [&str; 6] = ["continuation", "text", "binary", "close", "ping", "pong"];

/// Upper bounds (microseconds) of the message handling latency histogram.
pub const LATENCY_BUCKETS_US: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 25000];

/// One worker's counters.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Connections accepted at the TCP level.
    pub accepted: Counter,
    /// Connections upgraded and currently open (gauge).
    pub open: Counter,
    /// Connections refused, by [`Refusal::LABELS`](super::Refusal::LABELS) index.
    pub rejected: [Counter; 9],
    /// Failed handshakes, by [`HANDSHAKE_STATUSES`] index.
    pub handshake_failed: [Counter; 10],
    /// Data messages queued for sending (broadcast deliveries included).
    pub messages_out: Counter,
    /// Bytes read from sockets.
    pub bytes_in: Counter,
    /// Bytes written to sockets.
    pub bytes_out: Counter,
    /// Frames received, by [`OPCODES`] index.
    pub frames_in: [Counter; 6],
    /// Connections closed, by [`CLOSE_CODES`] index (last is "other").
    pub closes: [Counter; 12],
    /// Connections that ended without being upgraded: refused, timed out or gone
    /// during the handshake (refusals are also counted by reason in `rejected`).
    pub never_upgraded: Counter,
    /// Connections closed, by [`CloseCause::ALL`](crate::session::CloseCause::ALL) index.
    pub close_causes: [Counter; 15],
    /// Times a connection went over `max_backpressure`.
    pub backpressure_events: Counter,
    /// Messages dropped for a connection over `max_backpressure`.
    pub backpressure_drops: Counter,
    /// Broadcast messages dropped for a slow subscriber.
    pub broadcast_drops: Counter,
    /// Timeouts, by [`TimeoutKind::ALL`] index.
    pub timeouts: [Counter; 4],
    /// Broadcast deliveries queued to subscribers.
    pub broadcast_deliveries: Counter,
    /// Event loop iterations.
    pub loop_iterations: Counter,
    /// Nanoseconds spent working (not waiting in poll).
    pub loop_busy_ns: Counter,
    /// Message handling latency histogram, by [`LATENCY_BUCKETS_US`] (last is +Inf).
    pub handle_latency: [Counter; 13],
    /// Sum of message handling latency, nanoseconds.
    pub handle_latency_sum_ns: Counter,
    /// Rate limit closes.
    pub rate_limited: Counter,
    /// Client publishes made on this worker (`Connection::publish`).
    pub publishes: Counter,
    /// Client publishes refused: another worker's publish queue was full.
    pub publishes_refused: Counter,
    /// Failed TLS handshakes, by [`TlsFailure::ALL`](crate::tls::TlsFailure::ALL) index.
    #[cfg(feature = "tls")]
    pub tls_failures: [Counter; 9],
    /// `dedicated` compression: per-connection compressors held now (gauge).
    #[cfg(feature = "deflate")]
    pub deflate_dedicated_contexts: Counter,
    /// Their heap bytes (gauge).
    #[cfg(feature = "deflate")]
    pub deflate_dedicated_bytes: Counter,
}

impl WorkerMetrics {
    /// Data messages received: the text and binary entries of `frames_in`, which count
    /// data frames per message (one counter less to bump per message on the hot path).
    pub fn messages_in(&self) -> u64 {
        self.frames_in[1].get() + self.frames_in[2].get()
    }

    /// Counts a refused upgrade, by reason and by status.
    pub(crate) fn refused(&self, r: &super::Refusal) {
        self.rejected[r.index()].inc();
        let status = r.status();
        if let Some(i) = HANDSHAKE_STATUSES.iter().position(|&s| s == status) {
            self.handshake_failed[i].inc();
        }
    }

    /// Counts a connection that ended after its upgrade, by close code and cause.
    pub(crate) fn closed(&self, end: &crate::session::Closed) {
        let i = CLOSE_CODES[..11].iter().position(|&c| c == end.code.0).unwrap_or(11);
        self.closes[i].inc();
        self.close_causes[end.cause.index()].inc();
    }

    /// Counts a timeout.
    pub(crate) fn timeout(&self, k: TimeoutKind) {
        self.timeouts[k as usize].inc();
    }

    /// Records how long handling one message took.
    pub(crate) fn observe_latency_ns(&self, ns: u64) {
        let us = ns / 1000;
        let i = LATENCY_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(LATENCY_BUCKETS_US.len());
        self.handle_latency[i].inc();
        self.handle_latency_sum_ns.add(ns);
    }
}
