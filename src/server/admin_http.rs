//! HTTP/1.1 requests on the admin listener, sans-IO: [`Exchange::advance`] takes the
//! bytes read so far and says whether a response is ready. The admin loop does the
//! reading, writing and timing out.
//!
//! ```text
//!            head complete: GET                   respond, keep-alive
//!   Head ---------------------------> (answer) -----------------------> Head
//!     |  POST /publish/<room>, key ok       ^
//!     '--------------------------> Body ----' body complete: publish, answer
//!          (Content-Length or chunked)
//! ```
//!
//! Every limit is checked before buffering: the head is at most [`MAX_HEAD`] bytes, a
//! body at most `Config::max_message` (413 without reading further), a chunk-size line
//! at most [`MAX_LINE`], trailers at most [`MAX_HEAD`].

use super::pubsub::PublishError;
use super::shared::{Shared, Source};
use super::Message;
use std::fmt::Write as _;

/// Largest request head (and trailer section).
pub(crate) const MAX_HEAD: usize = 4096;
/// Longest chunk-size line.
pub(crate) const MAX_LINE: usize = 1024;

/// What a request turned into.
pub(crate) struct Answer {
    /// The whole response.
    pub bytes: Vec<u8>,
    /// Close the connection once it is written.
    pub close: bool,
}

/// One connection's request in progress.
#[derive(Default)]
pub(crate) enum Exchange {
    /// Waiting for a complete request head.
    #[default]
    Head,
    /// Reading a publish request's body.
    Body(Body),
}

pub(crate) struct Body {
    room: String,
    binary: bool,
    keep_alive: bool,
    framing: Framing,
    data: Vec<u8>,
}

enum Framing {
    /// Bytes still to come.
    Length(usize),
    Chunked(Chunk),
}

/// Where the chunked decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// This many data bytes to come, then CRLF.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; bytes seen so far.
    Trailer(usize),
}

impl Exchange {
    /// Consumes what it can of `input` (the front is drained); `Some` once the request
    /// is answered.
    pub fn advance(&mut self, input: &mut Vec<u8>, shared: &Shared) -> Option<Answer> {
        loop {
            match self {
                Exchange::Head => {
                    let (consumed, next) = match head(input, shared) {
                        HeadStep::Partial => return None,
                        HeadStep::Answer(consumed, a) => {
                            input.drain(..consumed.min(input.len()));
                            return Some(a);
                        }
                        HeadStep::Body(consumed, body) => (consumed, body),
                    };
                    input.drain(..consumed);
                    *self = Exchange::Body(next);
                }
                Exchange::Body(b) => {
                    let max = shared.cfg.max_message;
                    match b.feed(input, max) {
                        Ok(false) => return None,
                        Ok(true) => {}
                        Err(a) => {
                            *self = Exchange::Head;
                            return Some(a);
                        }
                    }
                    let Exchange::Body(b) = std::mem::take(self) else { unreachable!() };
                    return Some(b.publish(shared));
                }
            }
        }
    }
}

enum HeadStep {
    Partial,
    /// Bytes of the head, and the answer.
    Answer(usize, Answer),
    Body(usize, Body),
}

fn head(input: &[u8], shared: &Shared) -> HeadStep {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => {
            return HeadStep::Answer(input.len(), close(431, "request too large\n"));
        }
        Ok(httparse::Status::Partial) => return HeadStep::Partial,
        Err(_) => return HeadStep::Answer(input.len(), close(400, "bad request\n")),
    };
    if n > MAX_HEAD {
        return HeadStep::Answer(input.len(), close(431, "request too large\n"));
    }
    let header = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let has_token = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .any(|h| h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())))
    };
    let keep_alive = req.version == Some(1) && !has_token("connection", "close");
    let (method, path) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let has_body = header("content-length").is_some() || header("transfer-encoding").is_some();
    let Some(room) = path.strip_prefix("/publish/") else {
        let (status, content_type, body) = super::admin::route(method, path, shared);
        // Bodies are only read for publishes: after one elsewhere, the framing is lost.
        let close = !keep_alive || has_body;
        return HeadStep::Answer(n, answer(status, content_type, &body, "", close));
    };
    // From here on, an error answer closes: the body is left unread.
    let Some(key) = shared.cfg.publish_key.as_ref() else {
        return HeadStep::Answer(n, close(404, "not found (start with --publish-key-file to publish)\n"));
    };
    if method != "POST" {
        return HeadStep::Answer(n, close_with(405, "method not allowed\n", "Allow: POST\r\n"));
    }
    let token = header("authorization").and_then(|v| strip_prefix_ignore_case(v.trim_ascii(), b"bearer "));
    if !token.is_some_and(|t| key.matches(t.trim_ascii())) {
        return HeadStep::Answer(
            n,
            close_with(401, "missing or wrong Authorization: Bearer key\n", "WWW-Authenticate: Bearer\r\n"),
        );
    }
    let Some(room) = super::apps::percent_decode(room) else {
        return HeadStep::Answer(n, close(400, "room is not valid percent-encoded UTF-8\n"));
    };
    let binary = header("content-type").is_some_and(|v| {
        let mime = v.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
        mime.eq_ignore_ascii_case(b"application/octet-stream")
    });
    let max = shared.cfg.max_message;
    let framing = match (header("transfer-encoding"), header("content-length")) {
        (Some(te), _) => {
            if !te.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return HeadStep::Answer(n, close(400, "only Transfer-Encoding: chunked is supported\n"));
            }
            Framing::Chunked(Chunk::Size)
        }
        (None, Some(cl)) => {
            let Some(len) = std::str::from_utf8(cl).ok().and_then(|s| s.trim().parse::<usize>().ok()) else {
                return HeadStep::Answer(n, close(400, "bad Content-Length\n"));
            };
            if len > max {
                return HeadStep::Answer(n, close(413, "body over --max-message\n"));
            }
            Framing::Length(len)
        }
        (None, None) => return HeadStep::Answer(n, close(411, "Content-Length or chunked body required\n")),
    };
    HeadStep::Body(n, Body { room, binary, keep_alive, framing, data: Vec::new() })
}

fn strip_prefix_ignore_case<'a>(v: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &v[prefix.len()..])
}

impl Body {
    /// Takes body bytes from `input`; `Ok(true)` when the body is complete.
    fn feed(&mut self, input: &mut Vec<u8>, max: usize) -> Result<bool, Answer> {
        match &mut self.framing {
            Framing::Length(left) => {
                let take = (*left).min(input.len());
                if self.data.is_empty() && take == *left {
                    // The usual case: the whole body is here.
                    self.data = input.drain(..take).collect();
                } else {
                    self.data.extend(input.drain(..take));
                }
                *left -= take;
                Ok(*left == 0)
            }
            Framing::Chunked(state) => {
                let mut used = 0;
                let done = loop {
                    let rest = &input[used..];
                    match *state {
                        Chunk::Size => {
                            let Some(eol) = rest.iter().position(|&b| b == b'\n') else {
                                if rest.len() > MAX_LINE {
                                    return Err(close(400, "chunk-size line too long\n"));
                                }
                                break false;
                            };
                            if eol > MAX_LINE {
                                return Err(close(400, "chunk-size line too long\n"));
                            }
                            let line = rest[..eol].strip_suffix(b"\r").unwrap_or(&rest[..eol]);
                            let hex = line.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
                            let size = std::str::from_utf8(hex)
                                .ok()
                                .filter(|h| !h.is_empty() && h.len() <= 16)
                                .and_then(|h| usize::from_str_radix(h, 16).ok());
                            let Some(size) = size else {
                                return Err(close(400, "bad chunk size\n"));
                            };
                            if size > max.saturating_sub(self.data.len()) {
                                return Err(close(413, "body over --max-message\n"));
                            }
                            used += eol + 1;
                            *state = if size == 0 { Chunk::Trailer(0) } else { Chunk::Data(size) };
                        }
                        Chunk::Data(left) => {
                            let take = left.min(rest.len());
                            if take == 0 {
                                break false;
                            }
                            self.data.extend_from_slice(&rest[..take]);
                            used += take;
                            *state = if take == left { Chunk::DataEnd } else { Chunk::Data(left - take) };
                        }
                        Chunk::DataEnd => {
                            if rest.len() < 2 {
                                break false;
                            }
                            if &rest[..2] != b"\r\n" {
                                return Err(close(400, "chunk data not followed by CRLF\n"));
                            }
                            used += 2;
                            *state = Chunk::Size;
                        }
                        Chunk::Trailer(seen) => {
                            let Some(eol) = rest.iter().position(|&b| b == b'\n') else {
                                if seen + rest.len() > MAX_HEAD {
                                    return Err(close(431, "trailers too large\n"));
                                }
                                break false;
                            };
                            let line = rest[..eol].strip_suffix(b"\r").unwrap_or(&rest[..eol]);
                            used += eol + 1;
                            if line.is_empty() {
                                break true;
                            }
                            if seen + eol + 1 > MAX_HEAD {
                                return Err(close(431, "trailers too large\n"));
                            }
                            *state = Chunk::Trailer(seen + eol + 1);
                        }
                    }
                };
                input.drain(..used);
                Ok(done)
            }
        }
    }

    /// Hands the message to the workers (and the bridge); the JSON answer says how many
    /// local connections it reached.
    fn publish(self, shared: &Shared) -> Answer {
        let close = !self.keep_alive;
        let msg = if self.binary {
            Message::Binary(&self.data)
        } else {
            match std::str::from_utf8(&self.data) {
                Ok(s) => Message::Text(s),
                Err(_) => {
                    return answer(
                        400,
                        "text/plain",
                        "body is not UTF-8 (send binary as application/octet-stream)\n",
                        "",
                        close,
                    )
                }
            }
        };
        // With a shared history, through the bridge's script, answered with its place.
        if shared.history.is_some() {
            if let Some(r) = shared.bridge.get().and_then(|b| b.publish_and_number(&self.room, msg)) {
                shared.publish_stats.count(Source::Api, r.is_ok());
                return match r {
                    Ok(seq) => {
                        let body = format!("{{\"offset\":{},\"epoch\":{}}}\n", seq.offset, seq.epoch);
                        answer(200, "application/json", &body, "", close)
                    }
                    Err(e) => {
                        log::warn!("publish API: the history script failed: {e}");
                        answer(
                            503,
                            "text/plain",
                            "history store unavailable, try again later\n",
                            "Retry-After: 1\r\n",
                            close,
                        )
                    }
                };
            }
        }
        match shared.publish_from(Source::Api, &self.room, msg, true) {
            Ok(p) => {
                let mut body = String::with_capacity(64);
                let _ = write!(body, "{{\"connections\":{},\"workers\":{}", p.connections, p.workers);
                if let Some(seq) = p.seq {
                    let _ = write!(body, ",\"offset\":{},\"epoch\":{}", seq.offset, seq.epoch);
                }
                body.push_str("}\n");
                answer(200, "application/json", &body, "", close)
            }
            Err(PublishError::QueueFull) => {
                answer(503, "text/plain", "publish queue full, try again later\n", "Retry-After: 1\r\n", close)
            }
        }
    }
}

/// An answer that closes the connection.
fn close(status: u16, body: &str) -> Answer {
    answer(status, "text/plain", body, "", true)
}

fn close_with(status: u16, body: &str, extra: &str) -> Answer {
    answer(status, "text/plain", body, extra, true)
}

pub(crate) fn answer(status: u16, content_type: &str, body: &str, extra: &str, close: bool) -> Answer {
    let mut s = String::with_capacity(body.len() + 160);
    let _ = write!(
        s,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: {}\r\n\r\n{body}",
        crate::proto::handshake::status_text(status),
        body.len(),
        if close { "close" } else { "keep-alive" },
    );
    Answer { bytes: s.into_bytes(), close }
}

/// The fuzz target's check (`fuzz/fuzz_targets/admin_chunked.rs`): byte 0 picks the
/// body limit (0-255), byte 1 where the rest is split into two reads; the rest is a
/// chunked body. Checked: no panic, the decoded body never exceeds the limit, and a
/// complete body decodes the same whatever the split.
#[doc(hidden)]
pub fn fuzz_chunked(data: &[u8]) {
    let (Some(&max), Some(&cut)) = (data.first(), data.get(1)) else { return };
    let (max, wire) = (max as usize, &data[2..]);
    let cut = (cut as usize).min(wire.len());
    let run = |cut: usize| {
        let mut b = Body {
            room: String::new(),
            binary: true,
            keep_alive: true,
            framing: Framing::Chunked(Chunk::Size),
            data: Vec::new(),
        };
        let mut input = wire[..cut].to_vec();
        let mut r = b.feed(&mut input, max);
        input.extend_from_slice(&wire[cut..]);
        if matches!(r, Ok(false)) {
            r = b.feed(&mut input, max);
        }
        assert!(b.data.len() <= max, "body over its limit");
        (r.map(|done| done.then_some(b.data)).map_err(|a| a.bytes), input)
    };
    let (split, whole) = (run(cut), run(wire.len()));
    if let (Ok(Some(a)), Ok(Some(b))) = (&split.0, &whole.0) {
        assert_eq!(a, b, "the split changed the body");
        assert_eq!(split.1, whole.1, "the split changed what is left over");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked() -> Body {
        Body {
            room: "r".into(),
            binary: false,
            keep_alive: true,
            framing: Framing::Chunked(Chunk::Size),
            data: Vec::new(),
        }
    }

    /// Feeds `wire` split at `cut`, as two reads; the decoded body and what is left over.
    fn feed_split(wire: &[u8], cut: usize, max: usize) -> Result<(bool, Vec<u8>, Vec<u8>), u16> {
        let mut b = chunked();
        let mut input = wire[..cut].to_vec();
        let mut done = b.feed(&mut input, max).map_err(|a| status_of(&a))?;
        input.extend_from_slice(&wire[cut..]);
        if !done {
            done = b.feed(&mut input, max).map_err(|a| status_of(&a))?;
        }
        Ok((done, b.data, input))
    }

    fn status_of(a: &Answer) -> u16 {
        std::str::from_utf8(&a.bytes[9..12]).unwrap().parse().unwrap()
    }

    #[test]
    fn chunked_bodies_decode_the_same_wherever_the_reads_split_them() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for cut in 0..=wire.len() {
            let (done, body, rest) = feed_split(wire, cut, 100).unwrap();
            assert!(done, "cut at {cut}");
            assert_eq!(body, b"hello world", "cut at {cut}");
            assert_eq!(rest, b"NEXT", "cut at {cut}: a pipelined request stays");
        }
    }

    #[test]
    fn chunked_limits_are_checked_before_buffering() {
        assert_eq!(feed_split(b"b\r\n", 3, 10).err(), Some(413));
        assert_eq!(feed_split(b"5\r\naaaaa\r\n6\r\n", 13, 10).err(), Some(413));
        assert_eq!(feed_split(b"zz\r\n", 4, 10).err(), Some(400));
        assert_eq!(feed_split(b"2\r\nabXY", 7, 10).err(), Some(400));
        let long = [b'1'; MAX_LINE + 1];
        assert_eq!(feed_split(&long, long.len(), 10).err(), Some(400));
        let mut trailers = b"0\r\n".to_vec();
        trailers.extend(std::iter::repeat_n(b'a', MAX_HEAD + 1));
        assert_eq!(feed_split(&trailers, trailers.len(), 10).err(), Some(431));
        // Partial input is not an error.
        assert_eq!(feed_split(b"5\r\nhel", 6, 10), Ok((false, b"hel".to_vec(), Vec::new())));
    }
}
