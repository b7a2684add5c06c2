//! A `wsloop.v1` client for the history tests: the handshake that offers the
//! subprotocol, and the server's messages parsed.
#![allow(dead_code)]

use super::ops::{handshake, next_data, tcp, Ws};
use std::net::SocketAddr;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::Message;

/// A `wsloop.v1` client on `target`, offering `extra` subprotocols first.
pub fn connect_v1(addr: SocketAddr, target: &str, extra: &str) -> Ws {
    let mut req = format!("ws://{addr}{target}").into_client_request().unwrap();
    let offer = if extra.is_empty() { "wsloop.v1".to_string() } else { format!("{extra},wsloop.v1") };
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(&offer).unwrap());
    let (ws, resp) = handshake(tcp(addr), req).expect("handshake");
    assert_eq!(resp.status(), 101);
    let proto = resp.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(proto.as_deref(), Some("wsloop.v1"));
    ws
}

/// What a `wsloop.v1` client reads.
#[derive(Debug, PartialEq, Eq)]
pub enum V1 {
    Msg { room: String, offset: u64, epoch: u64, payload: String },
    Recovered { room: String, offset: u64, epoch: u64 },
    Lost { room: String, offset: u64, epoch: u64, why: String },
}

pub fn read_v1(ws: &mut Ws) -> V1 {
    let Message::Text(t) = next_data(ws) else { panic!("wsloop.v1 messages here are text") };
    parse_v1(&t)
}

pub fn parse_v1(t: &str) -> V1 {
    let (head, payload) = t.split_once('\n').unwrap_or((t, ""));
    let f: Vec<&str> = head.split(' ').collect();
    let n = |i: usize| f[i].parse::<u64>().unwrap_or_else(|_| panic!("bad number in {t:?}"));
    match f[0] {
        "m" => V1::Msg { room: f[1].into(), offset: n(2), epoch: n(3), payload: payload.into() },
        "r" => V1::Recovered { room: f[1].into(), offset: n(2), epoch: n(3) },
        "l" => V1::Lost { room: f[1].into(), offset: n(2), epoch: n(3), why: f[4].into() },
        _ => panic!("not a wsloop.v1 message: {t:?}"),
    }
}
