//! The bodies of the `resp` and `cluster_slots` fuzz targets: the parsers of what a Redis
//! server sends, which is untrusted input.
//!
//! `fuzz/fuzz_targets/resp.rs` hands libFuzzer's bytes to [`resp`] (and
//! `cluster_slots.rs` to [`cluster_slots`]), and `tests/fuzz_corpus.rs` runs every
//! committed seed in `fuzz/corpus/<target>/` through them under `cargo test --features
//! redis`, as for the protocol core's targets ([`crate::proto::fuzzing`]). They accept
//! any bytes and panic only when they find a bug.

use super::resp::{parse, Limits, RespError, Status, Value, MAX_LINE};
use super::{topology, Endpoint};

/// A `CLUSTER SLOTS` reply, whole: the bytes are parsed with the topology's limits, then
/// read as a slot map. Whatever the bytes, the map read is sane: every range within
/// the 16384 slots and in order, every node with a host, never an empty map.
pub fn cluster_slots(data: &[u8]) {
    let Ok(Status::Complete((v, _))) = parse(data, &topology::LIMITS) else { return };
    let asked = Endpoint { host: "seed".into(), port: 7000 };
    if let Ok(map) = topology::parse(&v, &asked) {
        assert!(!map.is_empty(), "an empty map accepted");
        for r in &map {
            assert!(r.start <= r.end && usize::from(r.end) < super::slot::SLOTS, "{r:?}");
            assert!(!r.primary.host.is_empty() && r.primary.host != "?", "{r:?}");
        }
    }
}

/// RESP replies. Input: `[limits, chunking, chunk sizes..., stream...]`.
///
/// `limits` picks the [`Limits`], two bits each, low bits first: `max_depth` 0 to 3;
/// `max_array` 0, 2, 16 or unlimited; `max_bulk` 0, 8, 64 or unlimited; `max_line`
/// 4, 16, 64 or the bridge's 64 KiB. The low nibble of `chunking` is how many
/// chunk-size bytes follow (none means one byte at a time); each chunk is that byte
/// plus one long, the sizes cycled. Bits 4 and 5 of `chunking` pick `max_reply`:
/// unlimited, 12, 48 or 256.
///
/// The stream is parsed the way the bridge reads a socket: replies taken off the front
/// while complete. Once all at once, once fed in chunks; both must give the same
/// replies and end the same way (the same error, or the same bytes left waiting), so
/// a reply cut anywhere is "need more", never an error it would not be whole. Each
/// reply must stay within the limits (arrays allocated for exactly their elements),
/// must re-encode to the bytes it was parsed from (numbers in canonical spelling), and
/// its canonical encoding must parse back to it. A reply still incomplete must not
/// have made us buffer more than `max_reply`.
pub fn resp(data: &[u8]) {
    let [limits, chunking, ref rest @ ..] = *data else {
        return;
    };
    let n = (chunking & 0x0f) as usize;
    if rest.len() < n {
        return;
    }
    let (sizes, stream) = rest.split_at(n);
    let limits = Limits {
        max_depth: (limits & 3) as usize,
        max_array: [0, 2, 16, usize::MAX][(limits >> 2 & 3) as usize],
        max_bulk: [0, 8, 64, usize::MAX][(limits >> 4 & 3) as usize],
        max_line: [4, 16, 64, MAX_LINE][(limits >> 6) as usize],
        max_reply: [usize::MAX, 12, 48, 256][(chunking >> 4 & 3) as usize],
    };
    let whole = read(stream, &mut std::iter::once(stream.len()), &limits);
    let pieces = if sizes.is_empty() {
        read(stream, &mut std::iter::repeat(1), &limits)
    } else {
        read(stream, &mut sizes.iter().map(|&s| s as usize + 1).cycle(), &limits)
    };
    assert_eq!(pieces, whole, "chunks {sizes:?} changed the outcome");
}

/// How a stream read ended: on an error, or waiting for more with bytes left over.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Error(RespError),
    Waiting(usize),
}

/// Reads `stream` in chunks of the sizes `chunks` gives, parsing replies off the front
/// of what has arrived after each chunk, as the bridge's driver does. Returns each
/// reply's canonical encoding with the bytes it took, and how the read ended.
fn read(stream: &[u8], chunks: &mut dyn Iterator<Item = usize>, limits: &Limits) -> (Vec<(Vec<u8>, usize)>, End) {
    let mut replies = Vec::new();
    let mut inbuf = Vec::new();
    let mut fed = 0;
    loop {
        let chunk = chunks.next().expect("endless chunk sizes").max(1).min(stream.len() - fed);
        inbuf.extend_from_slice(&stream[fed..fed + chunk]);
        fed += chunk;
        let mut used = 0;
        loop {
            match parse(&inbuf[used..], limits) {
                Ok(Status::Complete((v, n))) => {
                    let raw = &inbuf[used..used + n];
                    replies.push((check_reply(&v, raw, limits), n));
                    used += n;
                }
                Ok(Status::Partial) => {
                    let pending = inbuf.len() - used;
                    assert!(pending <= limits.max_reply, "{pending} bytes buffered for one reply");
                    break;
                }
                Err(e) => return (replies, End::Error(e)),
            }
        }
        inbuf.drain(..used);
        if fed == stream.len() {
            return (replies, End::Waiting(inbuf.len()));
        }
    }
}

/// Checks one parsed reply against the limits and the bytes it was parsed from;
/// returns its canonical encoding.
fn check_reply(v: &Value<'_>, raw: &[u8], limits: &Limits) -> Vec<u8> {
    within_limits(v, limits, 0);
    assert!(raw.len() <= limits.max_reply, "reply of {} bytes", raw.len());
    let mut enc = Vec::new();
    encode(v, &mut enc);
    let (used, canonical) = matches(v, raw);
    assert_eq!(used, raw.len(), "value {v:?} did not account for all of {raw:?}");
    if canonical {
        assert_eq!(enc, raw, "re-encoding differs from the bytes parsed");
    } else {
        assert!(enc.len() < raw.len());
    }
    match parse(&enc, limits) {
        Ok(Status::Complete((back, n))) => {
            assert_eq!(n, enc.len());
            assert_eq!(&back, v, "canonical encoding {enc:?} parsed to something else");
        }
        other => panic!("canonical encoding {enc:?} of {v:?} parsed as {other:?}"),
    }
    enc
}

fn within_limits(v: &Value<'_>, limits: &Limits, depth: usize) {
    match v {
        Value::Simple(s) | Value::Error(s) => assert!(s.len() <= limits.max_line),
        Value::Int(_) | Value::Bulk(None) | Value::Array(None) => {}
        Value::Bulk(Some(b)) => assert!(b.len() <= limits.max_bulk),
        Value::Array(Some(items)) => {
            assert!(depth < limits.max_depth, "array nested {} deep", depth + 1);
            assert!(items.len() <= limits.max_array);
            assert_eq!(items.capacity(), items.len(), "array allocated for more than it holds");
            for item in items {
                within_limits(item, limits, depth + 1);
            }
        }
    }
}

/// The canonical RESP2 encoding of `v`.
fn encode(v: &Value<'_>, out: &mut Vec<u8>) {
    let line = |out: &mut Vec<u8>, kind: u8, text: &[u8]| {
        out.push(kind);
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    };
    match v {
        Value::Simple(s) => line(out, b'+', s),
        Value::Error(s) => line(out, b'-', s),
        Value::Int(i) => line(out, b':', i.to_string().as_bytes()),
        Value::Bulk(None) => line(out, b'$', b"-1"),
        Value::Bulk(Some(b)) => {
            line(out, b'$', b.len().to_string().as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::Array(None) => line(out, b'*', b"-1"),
        Value::Array(Some(items)) => {
            line(out, b'*', items.len().to_string().as_bytes());
            for item in items {
                encode(item, out);
            }
        }
    }
}

/// Walks `v` along the bytes it was parsed from, independently of the parser: each
/// type byte, line and payload must be the one `v` says. Numbers may be spelled
/// otherwise than canonically (leading zeros, `-0`). Returns the bytes `v` spans and
/// whether every number in them was canonical.
fn matches(v: &Value<'_>, raw: &[u8]) -> (usize, bool) {
    let end = raw.windows(2).position(|w| w == b"\r\n").expect("a CRLF ends the first line");
    let (kind, line, after) = (raw[0], &raw[1..end], end + 2);
    let kind_of = |v: &Value<'_>| match v {
        Value::Simple(_) => b'+',
        Value::Error(_) => b'-',
        Value::Int(_) => b':',
        Value::Bulk(_) => b'$',
        Value::Array(_) => b'*',
    };
    assert_eq!(kind, kind_of(v), "type byte of {v:?}");
    match v {
        Value::Simple(s) | Value::Error(s) => {
            assert_eq!(line, *s);
            (after, true)
        }
        Value::Int(i) => (after, numeral(line, *i)),
        Value::Bulk(None) | Value::Array(None) => (after, numeral(line, -1)),
        Value::Bulk(Some(b)) => {
            let canonical = numeral(line, b.len() as i64);
            assert_eq!(&raw[after..after + b.len()], *b, "bulk payload");
            assert_eq!(&raw[after + b.len()..after + b.len() + 2], b"\r\n", "bulk terminator");
            (after + b.len() + 2, canonical)
        }
        Value::Array(Some(items)) => {
            let mut canonical = numeral(line, items.len() as i64);
            let mut at = after;
            for item in items {
                let (n, c) = matches(item, &raw[at..]);
                at += n;
                canonical &= c;
            }
            (at, canonical)
        }
    }
}

/// Checks that `line` is a decimal spelling of `value`; returns whether it is the
/// canonical one.
fn numeral(line: &[u8], value: i64) -> bool {
    let digits = line.strip_prefix(b"-").unwrap_or(line);
    assert!(!digits.is_empty() && digits.iter().all(u8::is_ascii_digit), "not a number: {line:?}");
    let text = std::str::from_utf8(line).expect("ASCII");
    assert_eq!(text.parse::<i64>().ok(), Some(value), "{text:?} is not {value}");
    text == value.to_string()
}
