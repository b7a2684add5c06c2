//! Room history and recovery on one node, against the real server over loopback with
//! tungstenite: `wsloop.v1` clients get each message as `m <room> <offset> <epoch>\n`
//! plus the payload while bare clients get the payload as before; a client that comes
//! back with `since=`/`epoch=` gets exactly what it missed, then live ones, with `r`
//! between; a gap the history does not cover, or another epoch, is told with `l`; a
//! recovering client slower than the publisher ends up complete or is told it is not;
//! the `p` and `s` commands; `bearer.<token>` beside `wsloop.v1`.
#![cfg(feature = "jwt")]

mod ops;
mod v1client;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use ops::{handshake, next_data, read_until_close, refused_status, tcp, Started};
use sha2::Sha256;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::Message;
use v1client::{connect_v1, read_v1, V1};
use wsloop::auth::JwtVerifier;
use wsloop::server::{Config, Publisher, Rooms};

fn config(history: usize) -> Config {
    Config { workers: 2, history, ..Config::default() }
}

fn publish(p: &Publisher, room: &str, range: std::ops::RangeInclusive<u32>) {
    for i in range {
        let text = format!("msg{i}");
        // Retry a full queue (bounded): these tests need every message published.
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.publish(room, wsloop::server::Message::Text(&text)).is_err() {
            assert!(Instant::now() < deadline, "publish queue stayed full");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn a_client_that_missed_100_messages_recovers_exactly_those_then_live() {
    let s = Started::start(config(1000), |_| Rooms);
    let p = s.handle().publisher();
    let mut a = connect_v1(s.addr, "/news", "");
    let mut bare = ops::connect(s.addr, "/news");
    publish(&p, "news", 1..=5);
    let mut last = None;
    for i in 1..=5u64 {
        let V1::Msg { room, offset, epoch, payload } = read_v1(&mut a) else { panic!() };
        assert_eq!((room.as_str(), offset, payload), ("news", i, format!("msg{i}")));
        last = Some((offset, epoch));
        assert_eq!(next_data(&mut bare), Message::Text(format!("msg{i}")), "bare clients get the payload only");
    }
    let (since, epoch) = last.unwrap();
    drop(a);
    publish(&p, "news", 6..=105);
    let mut b = connect_v1(s.addr, &format!("/news?since={since}&epoch={epoch}"), "");
    for i in 6..=105u64 {
        assert_eq!(read_v1(&mut b), V1::Msg { room: "news".into(), offset: i, epoch, payload: format!("msg{i}") });
    }
    assert_eq!(read_v1(&mut b), V1::Recovered { room: "news".into(), offset: 105, epoch });
    publish(&p, "news", 106..=106);
    assert_eq!(read_v1(&mut b), V1::Msg { room: "news".into(), offset: 106, epoch, payload: "msg106".into() });
    for i in 6..=106 {
        assert_eq!(next_data(&mut bare), Message::Text(format!("msg{i}")));
    }
}

#[test]
fn recovery_racing_the_publisher_has_no_gap_and_no_duplicate() {
    let s = Started::start(config(100_000), |_| Rooms);
    let p = s.handle().publisher();
    publish(&p, "r", 1..=2000);
    let epoch = {
        let mut w = connect_v1(s.addr, "/r?since=1999&epoch=0", "");
        let V1::Lost { epoch, why, offset, .. } = read_v1(&mut w) else { panic!() };
        assert_eq!((why.as_str(), offset), ("epoch", 2000));
        epoch
    };
    let publisher = {
        let p = p.clone();
        std::thread::spawn(move || publish(&p, "r", 2001..=6000))
    };
    let mut c = connect_v1(s.addr, &format!("/r?since=10&epoch={epoch}"), "");
    let mut next = 11u64;
    let mut recovered = false;
    // Replay may chase the publisher to its last message: `r` then comes after it.
    while next <= 6000 || !recovered {
        match read_v1(&mut c) {
            V1::Msg { offset, .. } => {
                assert_eq!(offset, next, "gap or duplicate (recovered: {recovered})");
                next += 1;
            }
            V1::Recovered { offset, .. } => {
                assert!(!recovered, "told twice");
                assert_eq!(offset, next - 1);
                recovered = true;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(recovered);
    publisher.join().unwrap();
}

#[test]
fn a_gap_the_history_no_longer_covers_or_another_epoch_is_told_then_live() {
    let s = Started::start(config(10), |_| Rooms);
    let p = s.handle().publisher();
    publish(&p, "r", 1..=50);
    let mut probe = connect_v1(s.addr, "/r?since=50&epoch=1", "");
    let V1::Lost { epoch, why, .. } = read_v1(&mut probe) else { panic!() };
    assert_eq!(why, "epoch");
    let mut c = connect_v1(s.addr, &format!("/r?since=5&epoch={epoch}"), "");
    assert_eq!(read_v1(&mut c), V1::Lost { room: "r".into(), offset: 50, epoch, why: "gap".into() });
    publish(&p, "r", 51..=51);
    assert_eq!(read_v1(&mut c), V1::Msg { room: "r".into(), offset: 51, epoch, payload: "msg51".into() });
    // Up to date: recovered at once.
    let mut d = connect_v1(s.addr, &format!("/r?since=51&epoch={epoch}"), "");
    assert_eq!(read_v1(&mut d), V1::Recovered { room: "r".into(), offset: 51, epoch });
}

#[test]
fn a_recovering_client_slower_than_the_publisher_ends_live_and_complete_or_is_told() {
    // A small queue per connection and a small history: a client that reads slowly
    // falls out of it while the publisher goes on.
    let cfg = Config { max_backpressure: 16 << 10, ..config(300) };
    let s = Started::start(cfg, |_| Rooms);
    let p = s.handle().publisher();
    publish(&p, "r", 1..=200);
    let mut probe = connect_v1(s.addr, "/r?since=1&epoch=1", "");
    let V1::Lost { epoch, .. } = read_v1(&mut probe) else { panic!() };
    drop(probe);
    let publisher = {
        let p = p.clone();
        std::thread::spawn(move || {
            for chunk in 0..40u32 {
                let base = 201 + chunk * 100;
                publish(&p, "r", base..=base + 99);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut c = connect_v1(s.addr, &format!("/r?since=100&epoch={epoch}"), "");
    let (mut next, mut told_slow, mut recovered) = (101u64, 0, false);
    let end = 4200u64;
    while next <= end {
        match read_v1(&mut c) {
            V1::Msg { offset, payload, .. } => {
                assert_eq!(offset, next, "a gap nobody was told of");
                assert_eq!(payload, format!("msg{offset}"));
                next += 1;
            }
            V1::Lost { why, offset, .. } => {
                assert_eq!(why, "slow");
                assert!(offset >= next - 1);
                told_slow += 1;
                next = offset + 1;
            }
            V1::Recovered { offset, .. } => {
                assert_eq!(offset, next - 1);
                recovered = true;
            }
        }
        if next % 50 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    publisher.join().unwrap();
    assert!(recovered || told_slow > 0, "neither complete nor told");
    eprintln!("slow client: recovered {recovered}, told slow {told_slow} times");
}

#[test]
fn a_recovering_client_that_cannot_keep_up_is_told_slow_then_gets_live_ones() {
    // 8 KiB messages, 100 kept, a client with a 16 KiB receive buffer that pauses 1 ms
    // per message at first: the publisher's 2000 messages (16 MB) outrun what the
    // socket buffers and the history hold.
    let cfg = Config { max_backpressure: 32 << 10, ..config(100) };
    let s = Started::start(cfg, |_| Rooms);
    let p = s.handle().publisher();
    let big = "x".repeat(8 << 10);
    let send = move |p: &Publisher, range: std::ops::RangeInclusive<u32>| {
        for i in range {
            let text = format!("{i} {big}");
            let deadline = Instant::now() + Duration::from_secs(10);
            while p.publish("r", wsloop::server::Message::Text(&text)).is_err() {
                assert!(Instant::now() < deadline, "publish queue stayed full");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let send2 = send.clone();
    send(&p, 1..=50);
    let mut probe = connect_v1(s.addr, "/r?since=1&epoch=1", "");
    let V1::Lost { epoch, .. } = read_v1(&mut probe) else { panic!() };
    drop(probe);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 << 10).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let stream: std::net::TcpStream = sock.into();
    ops::set_timeouts(&stream);
    let mut req = format!("ws://{}/r?since=10&epoch={epoch}", s.addr).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("wsloop.v1"));
    let (mut c, _) = handshake(stream, req).expect("handshake");
    let publisher = {
        let p = p.clone();
        std::thread::spawn(move || send2(&p, 51..=2000))
    };
    let (mut next, mut slow_at) = (11u64, None);
    while next <= 2000 {
        match read_v1(&mut c) {
            V1::Msg { offset, payload, .. } => {
                assert_eq!(offset, next, "a gap nobody was told of");
                assert!(payload.starts_with(&format!("{offset} ")));
                next += 1;
            }
            V1::Lost { why, offset, .. } => {
                // `gap` when the publisher moved the history past it before its first read.
                assert!(why == "slow" || (why == "gap" && slow_at.is_none()), "{why}");
                assert!(offset >= next - 1, "told to go back");
                slow_at.get_or_insert(next);
                next = offset + 1;
            }
            V1::Recovered { offset, .. } => assert_eq!(offset, next - 1),
        }
        if next < 300 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    publisher.join().unwrap();
    assert!(slow_at.is_some(), "a client this slow must be told");
    eprintln!("told at offset {slow_at:?}");
}

#[test]
fn commands_publish_and_recover() {
    let s = Started::start(config(100), |_| Rooms);
    let mut a = connect_v1(s.addr, "/?room=x&room=y", "");
    let mut bare = ops::connect(s.addr, "/y");
    a.send(Message::Text("p\nhello".into())).unwrap();
    let V1::Msg { room, offset: 1, epoch: ex, payload } = read_v1(&mut a) else { panic!() };
    assert_eq!((room.as_str(), payload.as_str()), ("x", "hello"));
    let V1::Msg { room, offset: 1, epoch: ey, .. } = read_v1(&mut a) else { panic!() };
    assert_eq!(room, "y");
    assert_eq!(next_data(&mut bare), Message::Text("hello".into()));
    a.send(Message::Binary(b"p\n\x00\x01".to_vec())).unwrap();
    for _ in 0..2 {
        let Message::Binary(b) = next_data(&mut a) else { panic!("binary stays binary") };
        assert!(b.starts_with(b"m x 2 ") || b.starts_with(b"m y 2 "), "{b:?}");
        assert!(b.ends_with(b"\n\x00\x01"));
    }
    // Recover room x from the start: both messages again, then r.
    a.send(Message::Text(format!("s x 0 {ex}"))).unwrap();
    assert!(matches!(read_v1(&mut a), V1::Msg { offset: 1, .. }));
    let Message::Binary(_) = next_data(&mut a) else { panic!() };
    assert_eq!(read_v1(&mut a), V1::Recovered { room: "x".into(), offset: 2, epoch: ex });
    assert_ne!(ex, 0);
    let _ = ey;
    // A room not joined, or not a command: 1008.
    a.send(Message::Text("s z 0 1".into())).unwrap();
    assert_eq!(read_until_close(&mut a).0, 1008);
    let mut b = connect_v1(s.addr, "/x", "");
    b.send(Message::Text("hello".into())).unwrap();
    assert_eq!(read_until_close(&mut b).0, 1008);
}

#[test]
fn since_needs_the_subprotocol_and_a_history() {
    let s = Started::start(config(100), |_| Rooms);
    let r = handshake(tcp(s.addr), format!("ws://{}/r?since=1&epoch=2", s.addr));
    assert_eq!(refused_status(r), 400);
    let r = handshake(tcp(s.addr), format!("ws://{}/r?since=1", s.addr));
    assert_eq!(refused_status(r), 400);
    // Without --history, wsloop.v1 is not confirmed and the client stays bare.
    let off = Started::start(config(0), |_| Rooms);
    let mut req = format!("ws://{}/r", off.addr).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("wsloop.v1"));
    let r = handshake(tcp(off.addr), req);
    // tungstenite fails a handshake whose offered subprotocol was not confirmed.
    assert!(r.is_err());
}

const SECRET: &[u8] = b"integration-test secret, 32+ bytes long";

fn token() -> String {
    let b64 = |b: &[u8]| B64URL.encode(b);
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(format!(r#"{{"sub":"a","exp":{exp}}}"#).as_bytes())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

#[test]
fn a_bearer_token_subprotocol_and_wsloop_v1_work_together() {
    let jwt = JwtVerifier::from_secret(SECRET).unwrap();
    let cfg = Config { jwt: Some(std::sync::Arc::new(jwt)), ..config(100) };
    let s = Started::start(cfg, |_| Rooms);
    let p = s.handle().publisher();
    // No token: 401.
    let mut req = format!("ws://{}/r", s.addr).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("wsloop.v1"));
    assert_eq!(refused_status(handshake(tcp(s.addr), req)), 401);
    let mut c = connect_v1(s.addr, "/r", &format!("bearer.{}", token()));
    publish(&p, "r", 1..=1);
    assert!(matches!(read_v1(&mut c), V1::Msg { offset: 1, .. }));
}

#[test]
fn the_publish_api_answers_with_the_offset_and_epoch() {
    use std::io::{Read, Write};
    let cfg = Config {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        publish_key: wsloop::server::PublishKey::new(b"history-test-key"),
        ..config(100)
    };
    let s = Started::start(cfg, |_| Rooms);
    let mut c = connect_v1(s.addr, "/api", "");
    for want in 1..=2u64 {
        let mut t = tcp(s.admin.unwrap());
        let body = format!("hi {want}");
        let req = format!(
            "POST /publish/api HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer history-test-key\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        t.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        let _ = t.read_to_string(&mut resp);
        let V1::Msg { offset, epoch, payload, .. } = read_v1(&mut c) else { panic!() };
        assert_eq!((offset, payload), (want, body));
        let want_body = format!("{{\"connections\":1,\"workers\":1,\"offset\":{offset},\"epoch\":{epoch}}}");
        assert_eq!(resp.split("\r\n\r\n").nth(1).map(str::trim), Some(want_body.as_str()), "{resp}");
    }
}

#[test]
fn a_position_past_any_offset_is_another_epoch() {
    let s = Started::start(config(10), |_| Rooms);
    let mut c = connect_v1(s.addr, "/r?since=18446744073709551615&epoch=5", "");
    let V1::Lost { why, offset: 0, .. } = read_v1(&mut c) else { panic!() };
    assert_eq!(why, "epoch");
}
