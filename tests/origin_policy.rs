//! The `Origin` check at the handshake, against the real server over loopback with a
//! tungstenite client: the default same-host policy, an allow-list, and `*`. A refusal
//! is a 403 before anything is upgraded.

mod common;
mod ops;

use common::TestServer;
use ops::{handshake, next_data, refused_status, tcp};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::Message;
use wsloop::auth::OriginPolicy;
use wsloop::server::Config;

fn server(policy: OriginPolicy) -> TestServer {
    TestServer::echo(Config { workers: 2, origin_policy: policy, ..Config::default() })
}

/// Upgrades with `Origin: origin` (none when `None`); tungstenite sets `Host` from the URL.
fn attempt(s: &TestServer, origin: Option<&str>) -> ops::Attempt {
    let mut req = s.url("/").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", HeaderValue::from_str(o).unwrap());
    }
    handshake(tcp(s.addr), req)
}

fn assert_accepted(s: &TestServer, origin: Option<&str>) {
    let (mut ws, resp) = attempt(s, origin).unwrap_or_else(|e| panic!("Origin {origin:?} refused: {e}"));
    assert_eq!(resp.status(), 101);
    ws.send(Message::Text("hi".into())).unwrap();
    assert_eq!(next_data(&mut ws), Message::Text("hi".into()));
    ops::close(ws);
}

fn assert_forbidden(s: &TestServer, origin: &str) {
    assert_eq!(refused_status(attempt(s, Some(origin))), 403, "Origin {origin}");
    assert_eq!(s.handle().open_connections(), 0, "Origin {origin} was upgraded");
}

fn rejected_for_origin(s: &TestServer) -> u64 {
    // RejectReason::Origin is index 4 in RejectReason::ALL.
    s.handle().metrics().iter().map(|m| m.rejected[4].get()).sum()
}

#[test]
fn default_policy_accepts_an_origin_matching_host() {
    let s = server(OriginPolicy::default());
    let port = s.addr.port();
    assert_accepted(&s, Some(&format!("http://127.0.0.1:{port}")));
    assert_accepted(&s, Some(&format!("https://127.0.0.1:{port}")));
    assert_eq!(rejected_for_origin(&s), 0);
}

#[test]
fn default_policy_refuses_cross_origin_with_403() {
    let s = server(OriginPolicy::default());
    let port = s.addr.port();
    for origin in [
        "https://evil.example".to_string(),
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{}", port.wrapping_add(1).max(1)),
        format!("http://127.0.0.1.evil.example:{port}"),
        "http://127.0.0.1".to_string(),
        "null".to_string(),
    ] {
        assert_forbidden(&s, &origin);
    }
    assert_eq!(rejected_for_origin(&s), 6);
}

#[test]
fn no_origin_header_is_accepted() {
    // Not a browser: nothing to protect against.
    assert_accepted(&server(OriginPolicy::default()), None);
    assert_accepted(&server(OriginPolicy::allow_list(["https://app.example"]).unwrap()), None);
}

#[test]
fn allow_list_accepts_listed_origins_only() {
    let s = server(OriginPolicy::allow_list(["https://app.example", "http://localhost:3000"]).unwrap());
    assert_accepted(&s, Some("https://app.example"));
    assert_accepted(&s, Some("https://APP.example:443"));
    assert_accepted(&s, Some("http://localhost:3000"));
    assert_forbidden(&s, "https://other.example");
    assert_forbidden(&s, "http://app.example");
    assert_forbidden(&s, "http://localhost:3001");
    // Same host as the server, but not listed: the list replaces the same-host rule.
    assert_forbidden(&s, &format!("http://127.0.0.1:{}", s.addr.port()));
}

#[test]
fn wildcard_accepts_every_origin() {
    let s = server(OriginPolicy::allow_list(["*"]).unwrap());
    for origin in ["https://evil.example", "http://localhost:1", "null", "chrome-extension://abc"] {
        assert_accepted(&s, Some(origin));
    }
    assert_eq!(rejected_for_origin(&s), 0);
}

#[test]
fn refusal_is_a_complete_403_and_the_connection_closes() {
    let s = server(OriginPolicy::default());
    let host = s.addr.to_string();
    let resp = ops::http_until_eof(s.addr, &ops::upgrade_request(&host, "/", &["Origin: https://evil.example"]));
    assert_eq!(ops::status(&resp), 403, "{resp}");
    assert!(!resp.contains("Sec-WebSocket-Accept"), "{resp}");
    assert_eq!(s.handle().open_connections(), 0);
}
