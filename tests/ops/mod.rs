//! Client-side helpers for the operational tests (auth, origin, limits, metrics,
//! shutdown): a tungstenite client over a std `TcpStream` with timeouts, and raw HTTP
//! over TCP for what is checked at the byte level. Every blocking call is bounded by
//! `IO_TIMEOUT`, every loop by a count or a deadline.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{HandshakeError, Message, WebSocket};
use wsloop::server::{Config, Handler, Running, Server};
use wsloop::Handle;

/// The longest any single blocking read, write or connect may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

pub use tungstenite::handshake::client::Response;

pub type Ws = WebSocket<TcpStream>;

/// A loopback TCP connection with read and write timeouts.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    set_timeouts(&s);
    s
}

pub fn set_timeouts(s: &TcpStream) {
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
}

/// What a handshake attempt gave: the upgraded socket, or tungstenite's error (boxed, it
/// is large); a refusal is `tungstenite::Error::Http(response)`.
pub type Attempt = Result<(Ws, Response), Box<tungstenite::Error>>;

/// The WebSocket handshake over `stream`.
pub fn handshake(stream: TcpStream, req: impl IntoClientRequest) -> Attempt {
    match tungstenite::client(req, stream) {
        Ok(ok) => Ok(ok),
        Err(HandshakeError::Failure(e)) => Err(Box::new(e)),
        // Only a non-blocking stream interrupts; ours block, up to IO_TIMEOUT.
        Err(HandshakeError::Interrupted(_)) => panic!("handshake timed out after {IO_TIMEOUT:?}"),
    }
}

/// Connects and upgrades `ws://addr/path`, panicking on any failure.
pub fn connect(addr: SocketAddr, path: &str) -> Ws {
    let (ws, resp) = handshake(tcp(addr), format!("ws://{addr}{path}")).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// The HTTP status of a refused handshake; panics if it was accepted or failed otherwise.
pub fn refused_status(result: Attempt) -> u16 {
    match result.map_err(|e| *e) {
        Ok((_, resp)) => panic!("expected a refusal, got an upgrade ({})", resp.status()),
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// Reads the next data message, skipping pings and pongs; panics on anything else.
pub fn next_data(ws: &mut Ws) -> Message {
    for _ in 0..100 {
        match ws.read().expect("read") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m @ (Message::Text(_) | Message::Binary(_)) => return m,
            other => panic!("expected a data message, got {other:?}"),
        }
    }
    panic!("no data message among 100 frames");
}

/// Reads up to the server's close frame, returning its code (1005 when it has none) and
/// the data messages before it; then answers the close and reads to the end, as a
/// well-behaved client does.
pub fn read_until_close(ws: &mut Ws) -> (u16, Vec<Message>) {
    let mut data = Vec::new();
    let deadline = Instant::now() + 4 * IO_TIMEOUT;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                let code = frame.map_or(1005, |f| f.code.into());
                finish_close(ws);
                return (code, data);
            }
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => data.push(m),
            Ok(_) => {}
            Err(e) => panic!("connection ended without a close frame (after {} messages): {e}", data.len()),
        }
    }
    panic!("no close frame within {:?}", 4 * IO_TIMEOUT);
}

/// After the peer's close frame: keep reading so tungstenite writes the reply, until the
/// connection is closed.
pub fn finish_close(ws: &mut Ws) {
    for _ in 0..100 {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("closing: {e}"),
        }
    }
    panic!("connection not closed after 100 reads");
}

/// A client-initiated close with 1000, waiting for the server's answer.
pub fn close(mut ws: Ws) {
    let normal = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    ws.close(Some(normal)).expect("send close");
    finish_close(&mut ws);
}

/// An upgrade request head for `target` with `Host: host` and `extra` header lines
/// (each without CRLF).
pub fn upgrade_request(host: &str, target: &str, extra: &[&str]) -> String {
    let mut req = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// Sends `request` and reads the response head (and anything after it until EOF or
/// `wait_eof` is false and the head is complete). Returns the text read and whether the
/// server closed the connection.
pub fn raw_exchange(addr: SocketAddr, request: &str, wait_eof: bool) -> (String, bool) {
    let mut s = tcp(addr);
    s.write_all(request.as_bytes()).expect("write request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + IO_TIMEOUT;
    let eof = loop {
        if !wait_eof && buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break false;
        }
        assert!(Instant::now() < deadline, "no response within {IO_TIMEOUT:?}: {:?}", String::from_utf8_lossy(&buf));
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break true,
            Err(e) => panic!("reading response: {e} (so far {:?})", String::from_utf8_lossy(&buf)),
        }
    };
    (String::from_utf8_lossy(&buf).into_owned(), eof)
}

/// Sends `request`, reads the whole response until the server closes, and checks that it
/// does close. Returns the response text.
pub fn http_until_eof(addr: SocketAddr, request: &str) -> String {
    raw_exchange(addr, request, true).0
}

/// The status code of an HTTP response text.
pub fn status(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {response:?}"))
}

/// The value of the first header `name` (case-insensitive) in a response head.
pub fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `GET path` over raw TCP with `Connection: close`; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let resp = http_until_eof(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"));
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status(&resp), body)
}

/// A raw TCP client that completes the upgrade (reading exactly the 101 head) and
/// then does nothing: it never reads, so it never answers a close.
pub fn raw_upgrade(addr: SocketAddr) -> TcpStream {
    let mut s = tcp(addr);
    s.write_all(upgrade_request(&addr.to_string(), "/", &[]).as_bytes()).expect("write request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 4096, "response head too long: {:?}", String::from_utf8_lossy(&head));
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => panic!("closed during the handshake: {:?}", String::from_utf8_lossy(&head)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the 101: {e}"),
        }
    }
    let head = String::from_utf8_lossy(&head);
    assert_eq!(status(&head), 101, "{head}");
    s
}

/// A server on loopback port 0 (and admin port 0 when `Config::admin_listen` is set to
/// `Some(127.0.0.1:0)`), whose `Running` can be taken for an explicit, bounded join.
/// Stopped when dropped.
pub struct Started {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    handle: Handle,
    running: Option<Running>,
}

impl Started {
    pub fn start<H: Handler, F: Fn(usize) -> H>(cfg: Config, factory: F) -> Started {
        let server = Server::bind("127.0.0.1:0", cfg).expect("bind");
        let addr = server.local_addr();
        let admin = server.admin_addr();
        let handle = server.handle();
        let running = server.start(factory).expect("start");
        Started { addr, admin, handle, running: Some(running) }
    }

    /// Usable after `shutdown` too.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Graceful shutdown; the returned receiver gets `Running::join`'s result.
    pub fn shutdown(&mut self) -> mpsc::Receiver<io::Result<()>> {
        let running = self.running.take().expect("running");
        running.handle().shutdown();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(running.join());
        });
        rx
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.handle().stop();
            let _ = r.join();
        }
    }
}
