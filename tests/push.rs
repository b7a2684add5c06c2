//! The live-push service against the real server over loopback: `POST /publish/<room>`
//! on the admin listener (every status it answers, chunked and keep-alive requests,
//! slow requests timing out), several rooms per connection, per-room authorization
//! from a JWT claim, push-only rooms, the bounded publisher, the demo page and the
//! publish metrics.
#![cfg(feature = "jwt")]

mod common;
mod ops;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use common::wait_until;
use hmac::{Hmac, KeyInit, Mac};
use ops::{
    connect, handshake, http_get, http_until_eof, next_data, read_until_close, refused_status, status, tcp, Started,
};
use sha2::Sha256;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::Message;
use wsloop::auth::JwtVerifier;
use wsloop::server::{Config, PublishError, PublishKey, Rooms};

const KEY: &str = "publish-key-for-tests-0123456789";
const SECRET: &[u8] = b"integration-test secret, 32+ bytes long";

fn cfg() -> Config {
    Config {
        workers: 2,
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        publish_key: PublishKey::new(KEY.as_bytes()),
        max_message: 1024,
        ..Config::default()
    }
}

fn start(cfg: Config) -> (Started, SocketAddr) {
    let s = Started::start(cfg, |_| Rooms);
    let admin = s.admin.expect("admin listener");
    (s, admin)
}

/// One request on a fresh connection, read to EOF or to the end of one response.
fn post(admin: SocketAddr, path: &str, headers: &[&str], body: &[u8]) -> String {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n").into_bytes();
    for h in headers {
        req.extend_from_slice(h.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    let mut s = tcp(admin);
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn auth() -> String {
    format!("Authorization: Bearer {KEY}")
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn publish_api_delivers_text_and_binary_and_says_how_many_connections_it_reached() {
    let (s, admin) = start(cfg());
    let mut a = connect(s.addr, "/news");
    let mut b = connect(s.addr, "/news");
    let mut other = connect(s.addr, "/other");
    assert!(wait_until(Duration::from_secs(5), || s.handle().open_connections() == 3));
    let len = "Content-Length: 5".to_string();
    let r = post(admin, "/publish/news", &[&auth(), &len, "Content-Type: text/plain"], b"hello");
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.contains("Content-Type: application/json"), "{r}");
    assert!(body(&r).contains("\"connections\":2"), "{r}");
    for ws in [&mut a, &mut b] {
        assert_eq!(next_data(ws), Message::text("hello"));
    }
    // application/octet-stream: binary, bytes unchanged (not UTF-8 on purpose).
    let bin = [0xff, 0x00, b'w', 0x01];
    let r =
        post(admin, "/publish/news", &[&auth(), "Content-Length: 4", "Content-Type: application/octet-stream"], &bin);
    assert_eq!(status(&r), 200, "{r}");
    for ws in [&mut a, &mut b] {
        assert_eq!(next_data(ws), Message::binary(bin.to_vec()));
    }
    // No subscriber: still 200, zero connections.
    let r = post(admin, "/publish/empty", &[&auth(), "Content-Length: 1"], b"x");
    assert_eq!((status(&r), body(&r).contains("\"connections\":0")), (200, true), "{r}");
    // The other room saw nothing: the next thing it gets is its own publish.
    let r = post(admin, "/publish/other", &[&auth(), "Content-Length: 3"], b"mine");
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(next_data(&mut other), Message::text("min"));
}

#[test]
fn publish_api_refusals_401_404_400_411_413_405() {
    let (s, admin) = start(cfg());
    let mut sub = connect(s.addr, "/r");
    let len = "Content-Length: 2";
    let r = post(admin, "/publish/r", &[len], b"hi");
    assert_eq!(status(&r), 401, "{r}");
    assert!(r.contains("WWW-Authenticate: Bearer"), "{r}");
    let r = post(admin, "/publish/r", &["Authorization: Bearer wrong-key", len], b"hi");
    assert_eq!(status(&r), 401, "{r}");
    let r = post(admin, "/publish/r", &[&format!("Authorization: Basic {KEY}"), len], b"hi");
    assert_eq!(status(&r), 401, "{r}");
    let r = post(admin, "/publish/r", &[&format!("Authorization: Bearer {KEY}x"), len], b"hi");
    assert_eq!(status(&r), 401, "{r}");
    // Text must be UTF-8.
    let r = post(admin, "/publish/r", &[&auth(), len, "Content-Type: text/plain"], b"\xff\xfe");
    assert_eq!(status(&r), 400, "{r}");
    // Neither Content-Length nor chunked.
    let r = post(admin, "/publish/r", &[&auth()], b"");
    assert_eq!(status(&r), 411, "{r}");
    // Over --max-message (1024): 413 from the header alone, the body never read.
    let r = post(admin, "/publish/r", &[&auth(), "Content-Length: 1025"], b"");
    assert_eq!(status(&r), 413, "{r}");
    let r = post(admin, "/publish/r", &[&auth(), "Content-Length: abc"], b"");
    assert_eq!(status(&r), 400, "{r}");
    let r = http_get(admin, "/publish/r");
    assert_eq!(r.0, 405);
    // A chunked body over the limit: 413 as soon as a chunk size says so (0x401 = 1025),
    // and as soon as the chunks add up to more (0x200 + 0x201).
    let r = post(admin, "/publish/r", &[&auth(), "Transfer-Encoding: chunked"], b"401\r\n");
    assert_eq!(status(&r), 413, "{r}");
    let mut big = b"200\r\n".to_vec();
    big.extend_from_slice(&[b'a'; 0x200]);
    big.extend_from_slice(b"\r\n201\r\n");
    let r = post(admin, "/publish/r", &[&auth(), "Transfer-Encoding: chunked"], &big);
    assert_eq!(status(&r), 413, "{r}");
    let r = post(admin, "/publish/r", &[&auth(), "Transfer-Encoding: chunked"], b"zz\r\n");
    assert_eq!(status(&r), 400, "{r}");
    let r = post(admin, "/publish/r", &[&auth(), "Transfer-Encoding: gzip"], b"");
    assert_eq!(status(&r), 400, "{r}");
    // The subscriber received none of the refused publishes.
    let ok = post(admin, "/publish/r", &[&auth(), "Content-Length: 2"], b"ok");
    assert_eq!(status(&ok), 200, "{ok}");
    assert_eq!(next_data(&mut sub), Message::text("ok"));

    // Endpoint not enabled: 404.
    let (s2, admin2) = start(Config { publish_key: None, ..cfg() });
    let r = post(admin2, "/publish/r", &[&auth(), len], b"hi");
    assert_eq!(status(&r), 404, "{r}");
    drop(s2);
}

#[test]
fn publish_api_reads_chunked_bodies_and_keeps_the_connection_alive() {
    let (s, admin) = start(cfg());
    let mut sub = connect(s.addr, "/k");
    let mut c = tcp(admin);
    // Three requests on one connection: chunked (with an extension and a trailer, split
    // over several writes), Content-Length, then one that asks to close.
    let head = format!("POST /publish/k HTTP/1.1\r\nHost: x\r\n{}\r\nTransfer-Encoding: chunked\r\n\r\n", auth());
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(b"5;ext=1\r\nhel").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(b"lo\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n").unwrap();
    let second = format!("POST /publish/k HTTP/1.1\r\nHost: x\r\n{}\r\nContent-Length: 3\r\n\r\ntwo", auth());
    c.write_all(second.as_bytes()).unwrap();
    let third = format!(
        "POST /publish/k HTTP/1.1\r\nHost: x\r\n{}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nthree",
        auth()
    );
    c.write_all(third.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    assert_eq!(out.matches("Connection: keep-alive").count(), 2, "{out}");
    for want in ["hello world", "two", "three"] {
        assert_eq!(next_data(&mut sub), Message::text(want));
    }
}

#[test]
fn slow_and_malformed_admin_requests_time_out_without_stalling_the_loop() {
    let (s, admin) = start(cfg());
    let mut sub = connect(s.addr, "/t");
    // Half a head, and half a body: both are dropped after the request timeout (5 s).
    let mut slow_head = tcp(admin);
    slow_head.write_all(b"POST /publish/t HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut slow_body = tcp(admin);
    let req = format!("POST /publish/t HTTP/1.1\r\nHost: x\r\n{}\r\nContent-Length: 10\r\n\r\nabc", auth());
    slow_body.write_all(req.as_bytes()).unwrap();
    // Meanwhile the listener answers others at once.
    let started = Instant::now();
    let r = post(admin, "/publish/t", &[&auth(), "Content-Length: 4"], b"fast");
    assert_eq!(status(&r), 200, "{r}");
    assert!(started.elapsed() < Duration::from_secs(2), "a slow request stalled the admin loop");
    assert_eq!(next_data(&mut sub), Message::text("fast"));
    let r = http_until_eof(admin, "GARBAGE\r\n\r\n");
    assert_eq!(status(&r), 400, "{r}");
    for c in [&mut slow_head, &mut slow_body] {
        let mut buf = [0u8; 64];
        let t = Instant::now();
        let n = c.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a slow request got an answer instead of being dropped");
        assert!(t.elapsed() < Duration::from_secs(12));
    }
    // The slow body never reached the room: the next message is this one.
    let r = post(admin, "/publish/t", &[&auth(), "Content-Length: 5"], b"after");
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(next_data(&mut sub), Message::text("after"));
}

#[test]
fn one_connection_joins_several_rooms_and_publishes_to_each() {
    let (s, admin) = start(cfg());
    let mut both = connect(s.addr, "/?room=a&room=b");
    let mut path_and_query = connect(s.addr, "/c?room=a");
    let mut only_b = connect(s.addr, "/b");
    assert!(wait_until(Duration::from_secs(5), || s.handle().open_connections() == 3));
    for (room, want) in [("a", 2), ("b", 2), ("c", 1)] {
        let r = post(admin, &format!("/publish/{room}"), &[&auth(), "Content-Length: 1"], room.as_bytes());
        assert!(body(&r).contains(&format!("\"connections\":{want}")), "{room}: {r}");
    }
    assert_eq!(next_data(&mut both), Message::text("a"));
    assert_eq!(next_data(&mut both), Message::text("b"));
    assert_eq!(next_data(&mut path_and_query), Message::text("a"));
    assert_eq!(next_data(&mut path_and_query), Message::text("c"));
    assert_eq!(next_data(&mut only_b), Message::text("b"));
    // A client's message goes to every room it joined: a and b.
    both.send(Message::text("from both")).unwrap();
    assert_eq!(next_data(&mut path_and_query), Message::text("from both"));
    assert_eq!(next_data(&mut only_b), Message::text("from both"));
}

fn token(rooms: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = format!(r#"{{"sub":"t","exp":{},"rooms":{rooms}}}"#, now + 3600);
    let input = format!("{}.{}", B64URL.encode(r#"{"alg":"HS256","typ":"JWT"}"#), B64URL.encode(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", B64URL.encode(mac.finalize().into_bytes()))
}

fn with_token(addr: SocketAddr, path: &str, tok: &str) -> ops::Attempt {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    // The browser test sends it as the `bearer.<token>` subprotocol; tungstenite insists
    // on a confirmed subprotocol, which the server never echoes for a token.
    let auth = HeaderValue::from_str(&format!("Bearer {tok}")).unwrap();
    req.headers_mut().insert("Authorization", auth);
    handshake(tcp(addr), req)
}

#[test]
fn a_token_joins_only_the_rooms_its_claim_lists() {
    let verifier = JwtVerifier::from_secret(SECRET).unwrap();
    let c = Config { jwt: Some(Arc::new(verifier)), rooms_claim: Some("rooms".into()), ..cfg() };
    let (s, _) = start(c);
    let tok = token(r#"["news:*","lobby"]"#);
    for ok in ["/lobby", "/news:sports", "/news:", "/?room=lobby&room=news:x", "/news%3Aa"] {
        if let Err(e) = with_token(s.addr, ok, &tok) {
            panic!("{ok} refused: {e}");
        }
    }
    for refused in ["/other", "/lobby2", "/new", "/?room=lobby&room=secret", "/lobby?room=x"] {
        assert_eq!(refused_status(with_token(s.addr, refused, &tok)), 403, "{refused}");
    }
    // No claim, or not an array of strings: nothing may be joined.
    let no_claim = {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = format!(r#"{{"sub":"t","exp":{}}}"#, now + 3600);
        let input = format!("{}.{}", B64URL.encode(r#"{"alg":"HS256","typ":"JWT"}"#), B64URL.encode(claims));
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", B64URL.encode(mac.finalize().into_bytes()))
    };
    assert_eq!(refused_status(with_token(s.addr, "/lobby", &no_claim)), 403);
    assert_eq!(refused_status(with_token(s.addr, "/lobby", &token(r#""lobby""#))), 403);
    // Without a token at all: 401 as before.
    assert_eq!(refused_status(handshake(tcp(s.addr), format!("ws://{}/lobby", s.addr))), 401);
    let refused = s.handle().metrics().iter().map(|m| m.rejected[5].get()).sum::<u64>();
    assert_eq!(refused, 7, "refusals counted under reason=application");
}

#[test]
fn push_only_rooms_close_a_publishing_client_with_1008_and_still_answer_pings() {
    let (s, admin) = start(Config { client_publish: false, ..cfg() });
    let mut listener = connect(s.addr, "/feed");
    let mut talker = connect(s.addr, "/feed");
    talker.send(Message::Ping(b"p".to_vec())).unwrap();
    match talker.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"p"),
        other => panic!("expected the pong, got {other:?}"),
    }
    talker.send(Message::text("may I?")).unwrap();
    let (code, data) = read_until_close(&mut talker);
    assert_eq!((code, data.len()), (1008, 0));
    // The feed still works for the others, and nothing of the talker's got through.
    let r = post(admin, "/publish/feed", &[&auth(), "Content-Length: 4"], b"push");
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(next_data(&mut listener), Message::text("push"));
}

#[test]
fn the_bounded_publisher_refuses_what_does_not_fit_and_counts_it() {
    let (s, admin) = start(Config { publish_queue: 1, workers: 1, ..cfg() });
    let mut sub = connect(s.addr, "/q");
    assert!(wait_until(Duration::from_secs(5), || s.handle().open_connections() == 1));
    let p = s.handle().publisher();
    let (mut ok, mut full) = (0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(10);
    while full == 0 && Instant::now() < end {
        for i in 0..1000 {
            match p.publish("q", wsloop::server::Message::Text(&i.to_string())) {
                Ok(_) => ok += 1,
                Err(PublishError::QueueFull) => full += 1,
            }
        }
    }
    assert!(full > 0, "a queue of 1 never filled in 10 s");
    // Exactly what was accepted arrives.
    for _ in 0..ok {
        next_data(&mut sub);
    }
    let (_, metrics) = http_get(admin, "/metrics");
    assert!(metrics.contains(&format!("wsloop_publishes_refused_total{{source=\"library\"}} {full}")), "{metrics}");
    assert!(metrics.contains(&format!("wsloop_publishes_total{{source=\"library\"}} {ok}")), "{metrics}");
}

#[test]
fn publishes_are_counted_by_source() {
    let (s, admin) = start(cfg());
    let mut a = connect(s.addr, "/m");
    a.send(Message::text("c1")).unwrap();
    assert_eq!(next_data(&mut a), Message::text("c1"));
    let r = post(admin, "/publish/m", &[&auth(), "Content-Length: 2"], b"a1");
    assert_eq!(status(&r), 200);
    assert_eq!(next_data(&mut a), Message::text("a1"));
    s.handle().publisher().publish("m", wsloop::server::Message::Text("l1")).unwrap();
    assert_eq!(next_data(&mut a), Message::text("l1"));
    let (_, m) = http_get(admin, "/metrics");
    for line in [
        "wsloop_publishes_total{source=\"client\"} 1",
        "wsloop_publishes_total{source=\"api\"} 1",
        "wsloop_publishes_total{source=\"redis\"} 0",
        "wsloop_publishes_total{source=\"library\"} 1",
        "wsloop_publishes_refused_total{source=\"api\"} 0",
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
}

#[test]
fn the_demo_page_answers_a_plain_get_and_426_without_it() {
    let (s, _) = start(Config { http_page: Some(wsloop::server::DEMO_PAGE), ..cfg() });
    let resp = http_until_eof(s.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(resp.contains("Content-Type: text/html"), "{resp}");
    let page = body(&resp);
    assert!(page.contains("new WebSocket(") && page.contains("bearer."), "{page}");
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "external asset in the page");
    let resp = http_until_eof(s.addr, "GET /?token=abc HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&resp), 200);
    // Another path, or an upgrade, is not the page.
    let resp = http_until_eof(s.addr, "GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&resp), 426, "{resp}");
    connect(s.addr, "/");

    let (plain, _) = start(cfg());
    let resp = http_until_eof(plain.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&resp), 426, "{resp}");
    assert!(resp.contains("Upgrade: websocket"), "{resp}");
}
