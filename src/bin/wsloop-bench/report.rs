//! Error accounting and the `RESULT` line.

use hdrhistogram::Histogram;
use std::fmt::Write as _;

/// Everything that can go wrong on a connection, counted by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server refused the TCP connection.
    ConnectRefused,
    /// Any other failure to create, bind or connect a socket (port or fd exhaustion).
    ConnectFailed,
    /// No `101` within `--connect-timeout`, or the connect phase ran out of time.
    ConnectTimeout,
    /// The server answered the upgrade with another status.
    HandshakeRejected,
    /// The response was not HTTP, had a wrong `Sec-WebSocket-Accept`, or the
    /// connection ended during the handshake.
    HandshakeInvalid,
    /// The server's frames broke RFC 6455 (as our decoder, in the client role, sees it).
    ProtocolError,
    /// An echo or relayed message differs from what was sent.
    PayloadMismatch,
    /// An echo came back as text for binary or the other way round.
    OpcodeMismatch,
    /// A data message nobody was waiting for (an echo with nothing in flight).
    UnexpectedMessage,
    /// A subscriber saw a sequence number go backwards (duplicate or reordering).
    SequenceError,
    /// The server sent a close frame before we asked to close.
    UnexpectedClose,
    /// The TCP connection ended or was reset while open.
    Disconnected,
    /// Another read or write error.
    IoError,
    /// The connection ended after our close frame without the server's close reply.
    NoCloseReply,
    /// No close reply within `--close-timeout`.
    CloseTimeout,
    /// The run was cut short by SIGINT.
    Interrupted,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::ConnectRefused,
        ErrorKind::ConnectFailed,
        ErrorKind::ConnectTimeout,
        ErrorKind::HandshakeRejected,
        ErrorKind::HandshakeInvalid,
        ErrorKind::ProtocolError,
        ErrorKind::PayloadMismatch,
        ErrorKind::OpcodeMismatch,
        ErrorKind::UnexpectedMessage,
        ErrorKind::SequenceError,
        ErrorKind::UnexpectedClose,
        ErrorKind::Disconnected,
        ErrorKind::IoError,
        ErrorKind::NoCloseReply,
        ErrorKind::CloseTimeout,
        ErrorKind::Interrupted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::HandshakeRejected => "handshake_rejected",
            ErrorKind::HandshakeInvalid => "handshake_invalid",
            ErrorKind::ProtocolError => "protocol_error",
            ErrorKind::PayloadMismatch => "payload_mismatch",
            ErrorKind::OpcodeMismatch => "opcode_mismatch",
            ErrorKind::UnexpectedMessage => "unexpected_message",
            ErrorKind::SequenceError => "sequence_error",
            ErrorKind::UnexpectedClose => "unexpected_close",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::IoError => "io_error",
            ErrorKind::NoCloseReply => "no_close_reply",
            ErrorKind::CloseTimeout => "close_timeout",
            ErrorKind::Interrupted => "interrupted",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|&k| k == self).expect("every kind is in ALL")
    }
}

/// Error counts by kind, with the first detail message seen for each.
#[derive(Clone, Debug, Default)]
pub struct Errors {
    counts: [u64; ErrorKind::ALL.len()],
    first: [Option<String>; ErrorKind::ALL.len()],
}

impl Errors {
    pub fn add(&mut self, kind: ErrorKind, detail: impl FnOnce() -> String) {
        let i = kind.index();
        self.counts[i] += 1;
        if self.first[i].is_none() {
            self.first[i] = Some(detail());
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn merge(&mut self, other: &Errors) {
        for i in 0..self.counts.len() {
            self.counts[i] += other.counts[i];
            if self.first[i].is_none() {
                self.first[i].clone_from(&other.first[i]);
            }
        }
    }

    /// Kinds that occurred: name, count, first detail.
    pub fn nonzero(&self) -> impl Iterator<Item = (&'static str, u64, Option<&str>)> + '_ {
        ErrorKind::ALL
            .iter()
            .zip(self.counts.iter().zip(self.first.iter()))
            .filter(|(_, (&n, _))| n > 0)
            .map(|(k, (&n, d))| (k.name(), n, d.as_deref()))
    }
}

/// A value on the `RESULT` line.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    /// A float with this many decimals.
    Fixed(f64, usize),
    Word(&'static str),
}

/// The machine-readable summary: `RESULT mode=echo key=value ...`, keys in insertion
/// order. Keys and words are `[a-z0-9_.]`, so the line splits on spaces and `=`.
#[derive(Clone, Debug, Default)]
pub struct ResultLine {
    fields: Vec<(String, Value)>,
}

impl ResultLine {
    pub fn new(mode: &'static str) -> ResultLine {
        let mut r = ResultLine::default();
        r.set("mode", Value::Word(mode));
        r
    }

    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        self.fields.push((key.to_string(), value));
        self
    }

    pub fn int(&mut self, key: &str, v: u64) -> &mut Self {
        self.set(key, Value::Int(v))
    }

    pub fn fixed(&mut self, key: &str, v: f64, decimals: usize) -> &mut Self {
        self.set(key, Value::Fixed(v, decimals))
    }

    /// Adds `p50_us`, `p99_us`, `p999_us` and `max_us` from a microsecond histogram
    /// (all zero when it is empty).
    pub fn latency(&mut self, h: &Histogram<u64>) -> &mut Self {
        let l = Latency::of(h);
        self.int("p50_us", l.p50).int("p99_us", l.p99).int("p999_us", l.p999).int("max_us", l.max)
    }

    pub fn render(&self) -> String {
        let mut s = String::from("RESULT");
        for (k, v) in &self.fields {
            let _ = match v {
                Value::Int(n) => write!(s, " {k}={n}"),
                Value::Fixed(f, d) => write!(s, " {k}={}", fixed(*f, *d)),
                Value::Word(w) => write!(s, " {k}={w}"),
            };
        }
        s
    }
}

/// Non-finite values (nothing to divide by) print as 0 so every value parses as a number.
fn fixed(v: f64, decimals: usize) -> String {
    let v = if v.is_finite() { v } else { 0.0 };
    format!("{v:.decimals$}")
}

/// Percentiles of a latency histogram, in its unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// A histogram for latencies in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// `a / b`, 0 when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_format() {
        let mut h = latency_histogram();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let mut r = ResultLine::new("echo");
        r.int("conns", 100).fixed("msgs_per_s", 65432.126, 1).latency(&h).int("errors", 0);
        r.fixed("server_cpu_pct", f64::NAN, 1);
        let line = r.render();
        assert!(line.starts_with("RESULT mode=echo conns=100 msgs_per_s=65432.1 p50_us=500 p99_us=990 "), "{line}");
        assert!(line.contains(" p999_us=999 max_us=1000 errors=0 server_cpu_pct=0.0"), "{line}");
        for field in line.split(' ').skip(1) {
            let (k, v) = field.split_once('=').unwrap();
            assert!(k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert!(!v.is_empty() && !v.contains(' '));
        }
    }

    #[test]
    fn empty_histogram_is_all_zero() {
        assert_eq!(Latency::of(&latency_histogram()), Latency::default());
    }

    #[test]
    fn errors_count_by_kind_and_keep_the_first_detail() {
        let mut a = Errors::default();
        a.add(ErrorKind::ConnectRefused, || "first".into());
        a.add(ErrorKind::ConnectRefused, || "second".into());
        let mut b = Errors::default();
        b.add(ErrorKind::PayloadMismatch, || "pm".into());
        b.add(ErrorKind::ConnectRefused, || "third".into());
        a.merge(&b);
        assert_eq!(a.total(), 4);
        let got: Vec<_> = a.nonzero().collect();
        assert_eq!(got, vec![("connect_refused", 3, Some("first")), ("payload_mismatch", 1, Some("pm"))]);
    }

    #[test]
    fn every_kind_has_a_distinct_name() {
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn ratio_by_zero() {
        assert_eq!(ratio(1.0, 0.0), 0.0);
        assert_eq!(ratio(1.0, 4.0), 0.25);
    }
}
