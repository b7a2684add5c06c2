//! The opening handshake (RFC 6455 section 4), server side and the client side the
//! load generator needs. Parses from byte slices, writes into caller-owned buffers.

use super::error::InsufficientSize;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha1::{Digest, Sha1};
use std::fmt;

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Limits on the request head.
#[derive(Clone, Copy, Debug)]
pub struct HandshakeLimits {
    /// Largest request head, request line to the blank line (default 8 KiB). Over it: 431.
    pub max_header_bytes: usize,
    /// Most header fields (default 64, at most [`MAX_HEADERS`]). Over it: 431.
    pub max_headers: usize,
}

/// Hard upper bound on `max_headers`: the parser's header array lives on the stack.
pub const MAX_HEADERS: usize = 256;

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits { max_header_bytes: 8 << 10, max_headers: 64 }
    }
}

/// Why a handshake was refused, each with the HTTP status it is answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not parseable as HTTP/1.x. 400.
    Malformed,
    /// The request head is over `max_header_bytes`, or has too many fields. 431.
    HeadersTooLarge,
    /// Method other than GET. 405.
    MethodNotAllowed,
    /// HTTP/1.0 (WebSocket needs 1.1). 400.
    WrongHttpVersion,
    /// `Upgrade` lacks the `websocket` token. 400.
    NotWebSocketUpgrade,
    /// `Connection` lacks the `upgrade` token. 400.
    NoConnectionUpgrade,
    /// `Sec-WebSocket-Key` missing, or not base64 of exactly 16 bytes. 400.
    BadKey,
    /// `Sec-WebSocket-Version` missing or not 13. 426, with `Sec-WebSocket-Version: 13`.
    UnsupportedVersion,
    /// A plain HTTP GET: neither `Upgrade` nor `Connection: upgrade`. 426, with
    /// `Upgrade: websocket` (a server may answer it with a page instead).
    PlainHttp,
}

impl HandshakeError {
    /// The HTTP status the client is answered with.
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::Malformed
            | HandshakeError::WrongHttpVersion
            | HandshakeError::NotWebSocketUpgrade
            | HandshakeError::NoConnectionUpgrade
            | HandshakeError::BadKey => 400,
            HandshakeError::HeadersTooLarge => 431,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::UnsupportedVersion | HandshakeError::PlainHttp => 426,
        }
    }

    /// Short description, used as the response body and in logs.
    pub fn reason(self) -> &'static str {
        match self {
            HandshakeError::Malformed => "malformed HTTP request",
            HandshakeError::HeadersTooLarge => "request header section too large",
            HandshakeError::MethodNotAllowed => "method must be GET",
            HandshakeError::WrongHttpVersion => "HTTP/1.1 required",
            HandshakeError::NotWebSocketUpgrade => "Upgrade: websocket required",
            HandshakeError::PlainHttp => "this is a WebSocket endpoint: Upgrade: websocket required",
            HandshakeError::NoConnectionUpgrade => "Connection: upgrade required",
            HandshakeError::BadKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
            HandshakeError::UnsupportedVersion => "Sec-WebSocket-Version: 13 required",
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status())
    }
}

impl std::error::Error for HandshakeError {}

/// Outcome of parsing a request head.
#[derive(Debug)]
pub enum ParseStatus<T> {
    /// Parsed; the head used this many bytes (what follows belongs to the WebSocket).
    Complete(T, usize),
    /// The head is not complete yet.
    Partial,
}

/// A valid WebSocket upgrade request, borrowing the bytes it was parsed from.
#[derive(Debug)]
pub struct Request<'h, 'b> {
    path: &'b str,
    headers: &'h [httparse::Header<'b>],
    accept: [u8; 28],
}

impl<'h, 'b> Request<'h, 'b> {
    /// The path, without the query string.
    pub fn path(&self) -> &'b str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }

    /// The query string after `?`, if any.
    pub fn query(&self) -> Option<&'b str> {
        self.path.split_once('?').map(|(_, q)| q)
    }

    /// The request target as sent (path and query).
    pub fn target(&self) -> &'b str {
        self.path
    }

    /// The first value of header `name` (case-insensitive), if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&'b str> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
    }

    /// All header fields in order, as `(name, raw value)`.
    pub fn headers(&self) -> impl Iterator<Item = (&'b str, &'b [u8])> + '_ {
        self.headers.iter().map(|h| (h.name, h.value))
    }

    /// The `Origin` header.
    pub fn origin(&self) -> Option<&'b str> {
        self.header("origin")
    }

    /// The `Host` header.
    pub fn host(&self) -> Option<&'b str> {
        self.header("host")
    }

    /// Subprotocols the client offers, in its order of preference, over every
    /// `Sec-WebSocket-Protocol` field.
    pub fn protocols(&self) -> impl Iterator<Item = &'b str> + '_ {
        self.list("sec-websocket-protocol")
    }

    /// Extensions the client offers (each with its parameters, unparsed).
    pub fn extensions(&self) -> impl Iterator<Item = &'b str> + '_ {
        self.list("sec-websocket-extensions")
    }

    /// The value of query parameter `name`, undecoded.
    pub fn query_param(&self, name: &str) -> Option<&'b str> {
        self.query()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }

    /// The `Sec-WebSocket-Accept` value that answers this request's key.
    pub fn accept_key(&self) -> &str {
        // Base64 output is ASCII.
        std::str::from_utf8(&self.accept).unwrap_or("")
    }

    fn list<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b str> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

/// Storage for parsed header fields; lives on the caller's stack.
pub type HeaderStorage<'b> = [httparse::Header<'b>; MAX_HEADERS];

/// A fresh header array for [`parse_request`].
pub fn header_storage<'b>() -> HeaderStorage<'b> {
    [httparse::EMPTY_HEADER; MAX_HEADERS]
}

/// Parses and validates an upgrade request from the front of `buf`.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut HeaderStorage<'b>,
    limits: &HandshakeLimits,
) -> Result<ParseStatus<Request<'h, 'b>>, HandshakeError> {
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let mut req = httparse::Request::new(&mut headers[..max_headers]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_header_bytes {
                return Err(HandshakeError::HeadersTooLarge);
            }
            return Ok(ParseStatus::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadersTooLarge),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    if head_len > limits.max_header_bytes {
        return Err(HandshakeError::HeadersTooLarge);
    }
    let (method, path, version) = (req.method.unwrap_or(""), req.path.unwrap_or(""), req.version.unwrap_or(0));
    let headers: &'h [httparse::Header<'b>] = req.headers;
    if method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if version != 1 {
        return Err(HandshakeError::WrongHttpVersion);
    }
    let has_token = |name: &str, token: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .any(|h| h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())))
    };
    let any = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    if !any("upgrade") && !has_token("connection", "upgrade") {
        return Err(HandshakeError::PlainHttp);
    }
    if !has_token("upgrade", "websocket") {
        return Err(HandshakeError::NotWebSocketUpgrade);
    }
    if !has_token("connection", "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    let single = |name: &str| {
        let mut it = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
        match (it.next(), it.next()) {
            (Some(h), None) => Some(h.value.trim_ascii()),
            _ => None,
        }
    };
    if single("sec-websocket-version") != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = single("sec-websocket-key").ok_or(HandshakeError::BadKey)?;
    let mut raw = [0u8; 18];
    match B64.decode_slice(key, &mut raw) {
        Ok(16) => {}
        _ => return Err(HandshakeError::BadKey),
    }
    Ok(ParseStatus::Complete(Request { path, headers, accept: accept_key(key) }, head_len))
}

/// `base64(sha1(key + GUID))`.
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    // 20 bytes always encode to 28 base64 characters.
    let n = B64.encode_slice(digest, &mut out).unwrap_or(0);
    debug_assert_eq!(n, 28);
    out
}

/// A small cursor over a caller buffer that counts, rather than writes, what does not
/// fit. Use it through [`write_all_or_nothing`], which keeps a short buffer untouched.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
    overflow: usize,
}

impl<'a> Writer<'a> {
    fn new(out: &'a mut [u8]) -> Self {
        Writer { out, at: 0, overflow: 0 }
    }
    fn put(&mut self, s: &[u8]) -> &mut Self {
        if self.overflow == 0 && self.at + s.len() <= self.out.len() {
            self.out[self.at..self.at + s.len()].copy_from_slice(s);
        } else {
            self.overflow += s.len();
        }
        self.at += s.len();
        self
    }
    fn finish(self) -> Result<usize, InsufficientSize> {
        if self.overflow > 0 {
            Err(InsufficientSize { required: self.at })
        } else {
            Ok(self.at)
        }
    }
}

/// Runs `write` once into nothing to measure it, and again into `out` only when it fits,
/// so that on `InsufficientSize` not a byte of `out` has changed.
fn write_all_or_nothing(out: &mut [u8], write: impl Fn(&mut Writer<'_>)) -> Result<usize, InsufficientSize> {
    let mut probe = Writer::new(&mut []);
    write(&mut probe);
    if probe.at > out.len() {
        return Err(InsufficientSize { required: probe.at });
    }
    let mut w = Writer::new(out);
    write(&mut w);
    w.finish()
}

/// Writes the `101 Switching Protocols` response for `req`, with the chosen subprotocol
/// (it must be one the client offered) and any extra header lines (each ending in CRLF).
pub fn write_accept(
    out: &mut [u8],
    req: &Request<'_, '_>,
    protocol: Option<&str>,
    extra_headers: &[u8],
) -> Result<usize, InsufficientSize> {
    write_all_or_nothing(out, |w| {
        w.put(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        )
        .put(&req.accept)
        .put(b"\r\n");
        if let Some(p) = protocol {
            w.put(b"Sec-WebSocket-Protocol: ").put(p.as_bytes()).put(b"\r\n");
        }
        w.put(extra_headers).put(b"\r\n");
    })
}

/// The reason phrase for the statuses wsloop sends.
pub fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Writes an error response with a short plain-text body and `Connection: close`.
/// `extra_headers` are complete header lines (each ending in CRLF).
pub fn write_reject(out: &mut [u8], status: u16, body: &str, extra_headers: &[u8]) -> Result<usize, InsufficientSize> {
    write_all_or_nothing(out, |w| {
        let mut num = [0u8; 20];
        w.put(b"HTTP/1.1 ")
            .put(fmt_u64(status as u64, &mut num))
            .put(b" ")
            .put(status_text(status).as_bytes())
            .put(b"\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n");
        if status == 405 {
            w.put(b"Allow: GET\r\n");
        }
        if status == 426 {
            w.put(b"Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n");
        }
        let mut num2 = [0u8; 20];
        w.put(extra_headers)
            .put(b"Content-Length: ")
            .put(fmt_u64(body.len() as u64 + 1, &mut num2))
            .put(b"\r\n\r\n")
            .put(body.as_bytes())
            .put(b"\n");
    })
}

/// Writes the response for a refused handshake.
pub fn write_error(out: &mut [u8], err: HandshakeError) -> Result<usize, InsufficientSize> {
    write_reject(out, err.status(), err.reason(), b"")
}

fn fmt_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Client side: writes an upgrade request for `host` and `path` with a 16-byte `nonce`;
/// returns the bytes written and the key sent (for [`parse_response`]).
pub fn write_client_request(
    out: &mut [u8],
    host: &str,
    path: &str,
    nonce: [u8; 16],
) -> Result<(usize, [u8; 24]), InsufficientSize> {
    let mut key = [0u8; 24];
    let _ = B64.encode_slice(nonce, &mut key);
    let n = write_all_or_nothing(out, |w| {
        w.put(b"GET ")
            .put(path.as_bytes())
            .put(b" HTTP/1.1\r\nHost: ")
            .put(host.as_bytes())
            .put(b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ")
            .put(&key)
            .put(b"\r\nSec-WebSocket-Version: 13\r\n\r\n");
    })?;
    Ok((n, key))
}

/// Why a server's handshake response was not accepted by the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientHandshakeError {
    /// Not HTTP, or too many headers.
    Malformed,
    /// A status other than 101.
    Status(u16),
    /// `Sec-WebSocket-Accept` does not match the key we sent.
    BadAccept,
}

/// Client side: parses the server's response; `Complete(head_len)` when it is a valid
/// 101 for `key`.
pub fn parse_response(buf: &[u8], key: &[u8; 24]) -> Result<ParseStatus<()>, ClientHandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(ParseStatus::Partial),
        Err(_) => return Err(ClientHandshakeError::Malformed),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(ClientHandshakeError::Status(code));
    }
    let want = accept_key(key);
    let ok = resp
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value.trim_ascii() == want);
    if !ok {
        return Err(ClientHandshakeError::BadAccept);
    }
    Ok(ParseStatus::Complete((), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /chat?room=a&access_token=t0k HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn parse(req: &str) -> Result<ParseStatus<()>, HandshakeError> {
        let mut h = header_storage();
        parse_request(req.as_bytes(), &mut h, &HandshakeLimits::default()).map(|s| match s {
            ParseStatus::Complete(_, n) => ParseStatus::Complete((), n),
            ParseStatus::Partial => ParseStatus::Partial,
        })
    }

    #[test]
    fn rfc_sample_key_gives_rfc_accept() {
        assert_eq!(&accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn good_request_exposes_everything() {
        let mut h = header_storage();
        let mut buf = GOOD.as_bytes().to_vec();
        buf.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]); // a pipelined frame
        let ParseStatus::Complete(req, n) = parse_request(&buf, &mut h, &HandshakeLimits::default()).unwrap() else {
            panic!()
        };
        assert_eq!(n, GOOD.len(), "pipelined bytes are left for the frame parser");
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.query(), Some("room=a&access_token=t0k"));
        assert_eq!(req.query_param("access_token"), Some("t0k"));
        assert_eq!(req.origin(), Some("http://example.com"));
        assert_eq!(req.protocols().collect::<Vec<_>>(), ["chat", "superchat"]);
        assert_eq!(req.extensions().collect::<Vec<_>>(), ["permessage-deflate; client_max_window_bits"]);
        assert_eq!(req.accept_key(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let mut out = [0u8; 256];
        let n = write_accept(&mut out, &req, Some("chat"), b"").unwrap();
        let text = std::str::from_utf8(&out[..n]).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn every_prefix_is_partial() {
        for cut in 0..GOOD.len() {
            assert!(matches!(parse(&GOOD[..cut]), Ok(ParseStatus::Partial)), "cut {cut}");
        }
    }

    #[test]
    fn refusals_and_their_statuses() {
        let cases: &[(&str, &str, u16)] = &[
            ("GET /chat", "POST /chat", 405),
            ("HTTP/1.1\r\nHost", "HTTP/1.0\r\nHost", 400),
            ("Upgrade: websocket", "Upgrade: h2c", 400),
            ("Connection: keep-alive, Upgrade", "Connection: keep-alive", 400),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ", 400),
            ("dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAAAAAAAA==", 400),
            ("dGhlIHNhbXBsZSBub25jZQ==", "!!!!", 400),
            ("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", 426),
            ("Sec-WebSocket-Version: 13\r\n", "", 426),
            ("GET /chat", "G\x01T /chat", 400),
        ];
        for (from, to, status) in cases {
            let req = GOOD.replacen(from, to, 1);
            let err = parse(&req).expect_err(&req);
            assert_eq!(err.status(), *status, "{req}");
        }
    }

    #[test]
    fn header_limits_give_431() {
        let big = GOOD.replacen("\r\n\r\n", &format!("\r\nX-Pad: {}\r\n\r\n", "a".repeat(9000)), 1);
        assert_eq!(parse(&big).unwrap_err(), HandshakeError::HeadersTooLarge);
        // Partial but already over the limit: refuse without waiting for the end.
        assert_eq!(parse(&big[..8200]).unwrap_err(), HandshakeError::HeadersTooLarge);
        let many: String = (0..70).map(|i| format!("X-H{i}: v\r\n")).collect();
        let req = GOOD.replacen("Host:", &format!("{many}Host:"), 1);
        assert_eq!(parse(&req).unwrap_err().status(), 431);
    }

    #[test]
    fn tokens_are_case_insensitive_lists() {
        let req = GOOD.replacen("Upgrade: websocket", "upgrade: foo, WebSocket", 1).replacen(
            "Connection: keep-alive, Upgrade",
            "connection: UPGRADE",
            1,
        );
        assert!(matches!(parse(&req), Ok(ParseStatus::Complete(..))));
    }

    #[test]
    fn error_responses_are_complete_http() {
        let mut out = [0u8; 512];
        let n = write_error(&mut out, HandshakeError::UnsupportedVersion).unwrap();
        let text = std::str::from_utf8(&out[..n]).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let len: usize = text.split("Content-Length: ").nth(1).unwrap().split("\r\n").next().unwrap().parse().unwrap();
        assert_eq!(body.len(), len);
        let mut tiny = [0u8; 10];
        assert!(write_error(&mut tiny, HandshakeError::BadKey).is_err());
    }

    // Regression (found by the `handshake` fuzz target): a short buffer got the part of
    // the response that fitted before `InsufficientSize` was returned.
    #[test]
    fn short_buffer_is_left_untouched() {
        let mut h = header_storage();
        let ParseStatus::Complete(req, _) =
            parse_request(GOOD.as_bytes(), &mut h, &HandshakeLimits::default()).unwrap()
        else {
            panic!()
        };
        let mut out = [0xA5u8; 64];
        let full = write_accept(&mut [0u8; 512], &req, Some("chat"), b"").unwrap();
        assert_eq!(write_accept(&mut out, &req, Some("chat"), b""), Err(InsufficientSize { required: full }));
        assert_eq!(out, [0xA5; 64]);
        let full = write_error(&mut [0u8; 512], HandshakeError::BadKey).unwrap();
        assert_eq!(write_error(&mut out, HandshakeError::BadKey), Err(InsufficientSize { required: full }));
        assert_eq!(out, [0xA5; 64]);
        assert!(write_client_request(&mut out, "example.com", "/", [0; 16]).is_err());
        assert_eq!(out, [0xA5; 64]);
    }

    #[test]
    fn client_round_trip() {
        let mut out = [0u8; 512];
        let (n, key) = write_client_request(&mut out, "127.0.0.1:9001", "/x", [7; 16]).unwrap();
        let mut h = header_storage();
        let ParseStatus::Complete(req, _) = parse_request(&out[..n], &mut h, &HandshakeLimits::default()).unwrap()
        else {
            panic!()
        };
        let mut resp = [0u8; 512];
        let m = write_accept(&mut resp, &req, None, b"").unwrap();
        assert!(matches!(parse_response(&resp[..m], &key), Ok(ParseStatus::Complete((), x)) if x == m));
        let other = [b'A'; 24];
        assert_eq!(parse_response(&resp[..m], &other).unwrap_err(), ClientHandshakeError::BadAccept);
    }
}
