//! JWT bearer tokens at the handshake, against the real server over loopback: where a
//! token may sit, every way a token is refused (401 with a `WWW-Authenticate` challenge,
//! nothing upgraded), claims reaching the handler, and expiry while connected (1008).
//!
//! Tokens are signed here (hmac/sha2, dev-dependencies independent of the verifier's ring) or come from
//! the openssl-signed fixtures in tests/keys.
#![cfg(feature = "jwt")]

mod common;
mod ops;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use common::{wait_until, TestServer};
use hmac::{Hmac, KeyInit, Mac};
use ops::{connect, handshake, http_until_eof, next_data, read_until_close, status, tcp, upgrade_request};
use sha2::Sha256;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::Message;
use wsloop::auth::{Alg, JwtVerifier, KeySet, VerifyKey};
use wsloop::proto::Request;
use wsloop::server::{Accept, Config, Connection, Handler, Reject};

const SECRET: &[u8] = b"integration-test secret, 32+ bytes long";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "wsloop";
const RS_PUBLIC: &str = include_str!("keys/rs256-public.pem");
/// RS256 over `{"sub":"alice","iss":"https://issuer.example","aud":"wsloop",...,
/// "exp":2000000000}`, signed by openssl (tests/keys/make-fixtures.sh).
const RS_OPENSSL: &str = include_str!("keys/rs256-openssl.jwt");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    B64URL.encode(bytes)
}

/// A compact JWS: `header.claims` signed with HMAC-SHA256 under `key`.
fn sign_hs256(header: &str, claims: &str, key: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(mac.finalize().into_bytes()))
}

/// Claims this server accepts, with `sub` and the given `exp`.
fn claims(sub: &str, exp: u64) -> String {
    format!(r#"{{"sub":"{sub}","iss":"{ISSUER}","aud":"{AUDIENCE}","iat":{},"exp":{exp}}}"#, now())
}

fn hs256(claims: &str) -> String {
    sign_hs256(r#"{"alg":"HS256","typ":"JWT"}"#, claims, SECRET)
}

fn valid_token(sub: &str) -> String {
    hs256(&claims(sub, now() + 3600))
}

/// Sends the verified `sub` as the first message (from `on_open`), then echoes. Confirms
/// the `chat` subprotocol when offered, or (`naive`) the client's first entry whatever it
/// is, which the server must never echo when it is `bearer.<token>`.
struct WhoAmI {
    opens: Arc<AtomicUsize>,
    naive: bool,
}

impl Handler for WhoAmI {
    type State = ();

    fn on_open<'r>(&mut self, conn: &mut Connection<'_>, req: &Request<'_, 'r>) -> Result<Accept<'r, ()>, Reject> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        let sub = conn.claims().and_then(|c| c.sub.clone()).unwrap_or_else(|| "<no claims>".into());
        let _ = conn.send_text(&sub);
        let protocol = if self.naive { req.protocols().next() } else { req.protocols().find(|p| *p == "chat") };
        Ok(Accept { protocol, state: () })
    }

    fn on_message(&mut self, conn: &mut Connection<'_>, _: &mut (), msg: wsloop::Message<'_>) {
        let _ = conn.send(msg);
    }
}

struct AuthServer {
    server: TestServer,
    opens: Arc<AtomicUsize>,
}

impl AuthServer {
    fn start(verifier: JwtVerifier, tweak: impl FnOnce(&mut Config)) -> AuthServer {
        Self::start_with(verifier, false, tweak)
    }

    fn start_with(verifier: JwtVerifier, naive: bool, tweak: impl FnOnce(&mut Config)) -> AuthServer {
        let mut cfg = Config { workers: 2, ..Config::default() };
        cfg.jwt = Some(Arc::new(verifier));
        tweak(&mut cfg);
        let opens = Arc::new(AtomicUsize::new(0));
        let o = opens.clone();
        let server = TestServer::start(cfg, move |_| WhoAmI { opens: o.clone(), naive });
        AuthServer { server, opens }
    }

    fn hs256() -> AuthServer {
        Self::start(hs256_verifier(), |_| {})
    }

    fn host(&self) -> String {
        self.server.addr.to_string()
    }

    /// Raw upgrade with `target` and `extra` headers; asserts a refusal with `want` status
    /// and a Bearer challenge, a closed connection, and that nothing was upgraded.
    /// Returns the challenge header value.
    fn assert_refused(&self, target: &str, extra: &[&str], want: u16) -> String {
        let resp = http_until_eof(self.server.addr, &upgrade_request(&self.host(), target, extra));
        assert_eq!(status(&resp), want, "{target} {extra:?}: {resp}");
        assert!(!resp.contains("Sec-WebSocket-Accept"), "{resp}");
        let challenge = ops::header(&resp, "WWW-Authenticate")
            .unwrap_or_else(|| panic!("no WWW-Authenticate in {resp}"))
            .to_string();
        assert!(challenge.starts_with("Bearer realm=\"wsloop\""), "{challenge}");
        assert_eq!(self.opens.load(Ordering::SeqCst), 0, "on_open ran for a refused token");
        assert_eq!(self.server.handle().open_connections(), 0);
        challenge
    }
}

fn hs256_verifier() -> JwtVerifier {
    JwtVerifier::from_secret(SECRET).unwrap().issuer(ISSUER).audience(AUDIENCE)
}

fn rs256_verifier() -> JwtVerifier {
    JwtVerifier::from_public_key_pem(RS_PUBLIC, Alg::Rs256).unwrap().issuer(ISSUER).audience(AUDIENCE)
}

fn assert_invalid_token(challenge: &str, description: &str) {
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(challenge.contains(description), "{challenge} lacks {description:?}");
}

#[test]
fn valid_token_in_authorization_header_upgrades_and_claims_reach_on_open() {
    let s = AuthServer::hs256();
    let mut req = format!("ws://{}/chat", s.server.addr).into_client_request().unwrap();
    let value = format!("Bearer {}", valid_token("alice"));
    req.headers_mut().insert("Authorization", HeaderValue::from_str(&value).unwrap());
    let (mut ws, resp) = handshake(tcp(s.server.addr), req).expect("upgrade");
    assert_eq!(resp.status(), 101);
    // The first message is the token's `sub`, sent by on_open from conn.claims().
    assert_eq!(next_data(&mut ws), Message::Text("alice".into()));
    ws.send(Message::Text("ping".into())).unwrap();
    assert_eq!(next_data(&mut ws), Message::Text("ping".into()));
    assert_eq!(s.opens.load(Ordering::SeqCst), 1);
    ops::close(ws);
}

#[test]
fn valid_token_in_access_token_query_param_upgrades() {
    let s = AuthServer::hs256();
    let url = format!("ws://{}/chat?room=1&access_token={}", s.server.addr, valid_token("bob"));
    let (mut ws, resp) = handshake(tcp(s.server.addr), url).expect("upgrade");
    assert_eq!(resp.status(), 101);
    assert_eq!(next_data(&mut ws), Message::Text("bob".into()));
    ops::close(ws);
}

#[test]
fn valid_token_as_subprotocol_upgrades_and_only_chat_is_confirmed() {
    let s = AuthServer::hs256();
    let mut req = format!("ws://{}/chat", s.server.addr).into_client_request().unwrap();
    // No space after the comma: tungstenite 0.24 splits its own offer on "," without
    // trimming, so it would not recognise " chat" in the answer.
    let offer = format!("bearer.{},chat", valid_token("carol"));
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(&offer).unwrap());
    let (mut ws, resp) = handshake(tcp(s.server.addr), req).expect("upgrade");
    assert_eq!(resp.status(), 101);
    let chosen: Vec<_> = resp.headers().get_all("Sec-WebSocket-Protocol").iter().collect();
    assert_eq!(chosen, ["chat"]);
    assert_eq!(next_data(&mut ws), Message::Text("carol".into()));
    ops::close(ws);
    // The same offer as a browser writes it, with a space, over raw TCP.
    let line = format!("Sec-WebSocket-Protocol: bearer.{}, chat", valid_token("carol"));
    let (resp, _) = ops::raw_exchange(s.server.addr, &upgrade_request(&s.host(), "/", &[&line]), false);
    assert_eq!(status(&resp), 101, "{resp}");
    assert_eq!(ops::header(&resp, "Sec-WebSocket-Protocol"), Some("chat"), "{resp}");
}

#[test]
fn bearer_subprotocol_entry_is_never_echoed_even_if_the_handler_picks_it() {
    // The handler confirms the client's first entry, which is the credential.
    let s = AuthServer::start_with(hs256_verifier(), true, |_| {});
    let token = valid_token("dave");
    for offer in [format!("bearer.{token}, chat"), format!("bearer.{token}")] {
        let line = format!("Sec-WebSocket-Protocol: {offer}");
        let (resp, _) = ops::raw_exchange(s.server.addr, &upgrade_request(&s.host(), "/", &[&line]), false);
        assert_eq!(status(&resp), 101, "{resp}");
        let head = resp.split("\r\n\r\n").next().unwrap();
        assert!(!head.contains("bearer."), "credential echoed: {head}");
        assert!(!head.contains(&token), "credential echoed: {head}");
        assert!(ops::header(head, "Sec-WebSocket-Protocol").is_none(), "{head}");
    }
}

#[test]
fn missing_token_is_401_with_a_bare_challenge() {
    let s = AuthServer::hs256();
    let challenge = s.assert_refused("/", &[], 401);
    assert!(!challenge.contains("error="), "{challenge}");
    // Another scheme is not a bearer token.
    s.assert_refused("/", &["Authorization: Basic dXNlcjpwYXNz"], 401);
}

#[test]
fn expired_token_is_401() {
    let s = AuthServer::hs256();
    // Well past the default 30 s leeway.
    let token = hs256(&claims("alice", now() - 3600));
    let c = s.assert_refused("/", &[&format!("Authorization: Bearer {token}")], 401);
    assert_invalid_token(&c, "token expired");
}

#[test]
fn not_yet_valid_token_is_401() {
    let s = AuthServer::hs256();
    let nbf = now() + 3600;
    let claims = format!(r#"{{"sub":"a","iss":"{ISSUER}","aud":"{AUDIENCE}","nbf":{nbf},"exp":{}}}"#, nbf + 3600);
    let c = s.assert_refused(&format!("/?access_token={}", hs256(&claims)), &[], 401);
    assert_invalid_token(&c, "not yet valid");
}

#[test]
fn wrong_signature_is_401() {
    let s = AuthServer::hs256();
    let forged =
        sign_hs256(r#"{"alg":"HS256"}"#, &claims("mallory", now() + 3600), b"another secret of 32 bytes or more!!");
    let c = s.assert_refused("/", &[&format!("Authorization: Bearer {forged}")], 401);
    assert_invalid_token(&c, "signature does not verify");
    // A valid token with one claim changed after signing.
    let good = valid_token("alice");
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(claims("admin", now() + 3600)), parts[2]);
    let c = s.assert_refused("/", &[&format!("Authorization: Bearer {tampered}")], 401);
    assert_invalid_token(&c, "signature does not verify");
}

#[test]
fn alg_none_is_401() {
    let s = AuthServer::hs256();
    let body = format!("{}.{}", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(claims("root", now() + 3600)));
    for token in [format!("{body}."), format!("{body}.{}", b64("sig"))] {
        let c = s.assert_refused("/", &[&format!("Authorization: Bearer {token}")], 401);
        assert_invalid_token(&c, "alg none");
    }
    let upper = format!("{}.{}.", b64(r#"{"alg":"NONE"}"#), b64(claims("root", now() + 3600)));
    s.assert_refused("/", &[&format!("Authorization: Bearer {upper}")], 401);
}

#[test]
fn rs256_token_to_hs256_server_is_401() {
    let s = AuthServer::hs256();
    let c = s.assert_refused("/", &[&format!("Authorization: Bearer {}", RS_OPENSSL.trim())], 401);
    assert_invalid_token(&c, "not the configured algorithm");
}

#[test]
fn hs256_token_to_rs256_server_is_401_even_keyed_with_the_public_key() {
    let s = AuthServer::start(rs256_verifier(), |_| {});
    // The classic confusion: HMAC keyed with the server's public RSA key.
    for key in [RS_PUBLIC.as_bytes(), SECRET] {
        let token = sign_hs256(r#"{"alg":"HS256","typ":"JWT"}"#, &claims("mallory", now() + 3600), key);
        let c = s.assert_refused("/", &[&format!("Authorization: Bearer {token}")], 401);
        assert_invalid_token(&c, "not the configured algorithm");
    }
}

#[test]
fn rs256_server_accepts_the_openssl_signed_token() {
    let s = AuthServer::start(rs256_verifier(), |_| {});
    let url = format!("ws://{}/?access_token={}", s.server.addr, RS_OPENSSL.trim());
    let (mut ws, resp) = handshake(tcp(s.server.addr), url).expect("upgrade");
    assert_eq!(resp.status(), 101);
    assert_eq!(next_data(&mut ws), Message::Text("alice".into()));
    ops::close(ws);
}

#[test]
fn malformed_tokens_are_401() {
    let s = AuthServer::hs256();
    let good = valid_token("alice");
    let cases = [
        "not-a-jwt".to_string(),
        "a.b".to_string(),
        "a.b.c.d".to_string(),
        format!("{good}.extra"),
        format!("{}.{}.{}", b64("not json"), b64(claims("x", now() + 60)), b64("sig")),
        format!("!!!.{}", good.split_once('.').unwrap().1),
    ];
    for token in &cases {
        let c = s.assert_refused("/", &[&format!("Authorization: Bearer {token}")], 401);
        assert!(c.contains("error=\"invalid_token\""), "{token}: {c}");
    }
}

#[test]
fn wrong_issuer_or_audience_is_401() {
    let s = AuthServer::hs256();
    let exp = now() + 3600;
    let other_iss = hs256(&format!(r#"{{"sub":"a","iss":"https://evil.example","aud":"{AUDIENCE}","exp":{exp}}}"#));
    let c = s.assert_refused("/", &[&format!("Authorization: Bearer {other_iss}")], 401);
    assert_invalid_token(&c, "issuer");
    let other_aud = hs256(&format!(r#"{{"sub":"a","iss":"{ISSUER}","aud":"someone-else","exp":{exp}}}"#));
    let c = s.assert_refused("/", &[&format!("Authorization: Bearer {other_aud}")], 401);
    assert_invalid_token(&c, "audience");
}

#[test]
fn two_tokens_are_refused_as_ambiguous() {
    let s = AuthServer::hs256();
    let t = valid_token("alice");
    let c = s.assert_refused(&format!("/?access_token={t}"), &[&format!("Authorization: Bearer {t}")], 400);
    assert!(c.contains("error=\"invalid_request\""), "{c}");
}

#[test]
fn token_expiring_while_connected_closes_with_1008() {
    let s = AuthServer::start(hs256_verifier(), |cfg| cfg.tick = Duration::from_millis(10));
    let exp = now() + 2;
    let token = hs256(&claims("erin", exp));
    let url = format!("ws://{}/?access_token={token}", s.server.addr);
    let (mut ws, _) = handshake(tcp(s.server.addr), url).expect("upgrade");
    assert_eq!(next_data(&mut ws), Message::Text("erin".into()));
    // Still usable before exp.
    ws.send(Message::Text("still here".into())).unwrap();
    assert_eq!(next_data(&mut ws), Message::Text("still here".into()));
    let (code, _) = read_until_close(&mut ws);
    assert_eq!(code, 1008);
    // Not before exp (the server rounds its timer up to the tick, never down).
    let closed_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(closed_at >= exp as f64 - 0.05, "closed at {closed_at}, before exp {exp}");
    assert!(wait_until(Duration::from_secs(10), || s.server.handle().open_connections() == 0));
    let closes_1008: u64 = s.server.handle().metrics().iter().map(|m| m.closes[7].get()).sum();
    assert_eq!(closes_1008, 1);
}

#[test]
fn token_expiry_is_ignored_when_close_on_token_expiry_is_off() {
    let s = AuthServer::start(hs256_verifier(), |cfg| {
        cfg.tick = Duration::from_millis(10);
        cfg.close_on_token_expiry = false;
    });
    let exp = now() + 1;
    let url = format!("ws://{}/?access_token={}", s.server.addr, hs256(&claims("frank", exp)));
    let (mut ws, _) = handshake(tcp(s.server.addr), url).expect("upgrade");
    assert_eq!(next_data(&mut ws), Message::Text("frank".into()));
    assert!(wait_until(Duration::from_secs(5), || now() > exp + 1));
    ws.send(Message::Text("after exp".into())).unwrap();
    assert_eq!(next_data(&mut ws), Message::Text("after exp".into()));
    ops::close(ws);
}

#[test]
fn without_jwt_configured_claims_are_none() {
    let opens = Arc::new(AtomicUsize::new(0));
    let o = opens.clone();
    let server = TestServer::start(Config { workers: 1, ..Config::default() }, move |_| WhoAmI {
        opens: o.clone(),
        naive: false,
    });
    let mut ws = connect(server.addr, "/");
    assert_eq!(next_data(&mut ws), Message::Text("<no claims>".into()));
    ops::close(ws);
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// Claims with a `jti`.
fn claims_jti(sub: &str, jti: &str) -> String {
    format!(
        r#"{{"sub":"{sub}","iss":"{ISSUER}","aud":"{AUDIENCE}","iat":{},"exp":{},"jti":"{jti}"}}"#,
        now(),
        now() + 3600
    )
}

fn upgrades(s: &AuthServer, token: &str) -> bool {
    let (resp, _) = ops::raw_exchange(s.server.addr, &upgrade_request(&s.host(), "/", &[&bearer(token)]), false);
    status(&resp) == 101
}

#[test]
fn unknown_kid_is_401() {
    let keys = KeySet::new(vec![VerifyKey::secret(SECRET).unwrap().with_kid("2026-11")]).unwrap();
    let s = AuthServer::start(JwtVerifier::from_keys(keys).issuer(ISSUER).audience(AUDIENCE), |_| {});
    let token = sign_hs256(r#"{"alg":"HS256","kid":"2026-12"}"#, &claims("a", now() + 3600), SECRET);
    let c = s.assert_refused("/", &[&bearer(&token)], 401);
    assert_invalid_token(&c, "kid names no configured key");
}

#[test]
fn kid_of_a_key_of_another_algorithm_is_401() {
    // The RSA key is named "rsa": an HS256 token naming it, keyed with the public key.
    let keys = KeySet::new(vec![
        VerifyKey::public_key_pem(RS_PUBLIC, Alg::Rs256).unwrap().with_kid("rsa"),
        VerifyKey::secret(SECRET).unwrap().with_kid("hs"),
    ])
    .unwrap();
    let s = AuthServer::start(JwtVerifier::from_keys(keys).issuer(ISSUER).audience(AUDIENCE), |_| {});
    let token = sign_hs256(r#"{"alg":"HS256","kid":"rsa"}"#, &claims("m", now() + 3600), RS_PUBLIC.as_bytes());
    let c = s.assert_refused("/", &[&bearer(&token)], 401);
    assert_invalid_token(&c, "not the configured algorithm");
}

#[test]
fn iat_too_old_or_missing_is_401() {
    let s = AuthServer::start(hs256_verifier().max_age(Duration::from_secs(60)), |_| {});
    let old = format!(r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","iat":{},"exp":{}}}"#, now() - 600, now() + 3600);
    let c = s.assert_refused("/", &[&bearer(&hs256(&old))], 401);
    assert_invalid_token(&c, "older than the maximum age");
    let missing = format!(r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{}}}"#, now() + 3600);
    s.assert_refused("/", &[&bearer(&hs256(&missing))], 401);
    assert!(upgrades(&s, &valid_token("fresh")));
}

#[test]
fn replayed_jti_is_401_and_forged_tokens_do_not_burn_it() {
    let s = AuthServer::start(hs256_verifier().require_jti(true), |_| {});
    let c = s.assert_refused("/", &[&bearer(&valid_token("no-jti"))], 401);
    assert_invalid_token(&c, "no jti");
    let forged = sign_hs256(r#"{"alg":"HS256"}"#, &claims_jti("m", "id-1"), b"another secret of 32 bytes or more!!");
    s.assert_refused("/", &[&bearer(&forged)], 401);
    let token = hs256(&claims_jti("alice", "id-1"));
    assert!(upgrades(&s, &token), "first use of id-1");
    let (resp, _) = ops::raw_exchange(s.server.addr, &upgrade_request(&s.host(), "/", &[&bearer(&token)]), false);
    assert_eq!(status(&resp), 401, "{resp}");
    assert!(resp.contains("token already used"), "{resp}");
    assert!(upgrades(&s, &hs256(&claims_jti("alice", "id-2"))));
}

#[test]
fn full_seen_set_refuses_new_tokens_with_503_and_counts_them() {
    let s = AuthServer::start(hs256_verifier().jti_capacity(1), |_| {});
    assert!(upgrades(&s, &hs256(&claims_jti("a", "one"))));
    let resp =
        http_until_eof(s.server.addr, &upgrade_request(&s.host(), "/", &[&bearer(&hs256(&claims_jti("b", "two")))]));
    assert_eq!(status(&resp), 503, "{resp}");
    assert_eq!(ops::header(&resp, "Retry-After"), Some("1"), "{resp}");
    assert!(resp.contains("token replay cache full"), "{resp}");
    let label = wsloop::server::Refusal::LABELS.iter().position(|l| *l == "replay_check").unwrap();
    let counted: u64 = s.server.handle().metrics().iter().map(|m| m.rejected[label].get()).sum();
    assert_eq!(counted, 1);
}

#[test]
fn replaced_keys_apply_to_the_next_handshake_and_open_connections_stay() {
    let v = hs256_verifier();
    let handle = v.clone();
    let s = AuthServer::start(v, |_| {});
    let url = format!("ws://{}/?access_token={}", s.server.addr, valid_token("old"));
    let (mut ws, _) = handshake(tcp(s.server.addr), url).expect("upgrade with the old key");
    assert_eq!(next_data(&mut ws), Message::Text("old".into()));
    let new_secret = b"the rotated integration secret, 32+ bytes";
    let new = sign_hs256(r#"{"alg":"HS256","kid":"new"}"#, &claims("new", now() + 3600), new_secret);
    assert!(!upgrades(&s, &new));
    handle.replace_keys(KeySet::new(vec![VerifyKey::secret(new_secret).unwrap().with_kid("new")]).unwrap());
    assert!(upgrades(&s, &new));
    assert!(!upgrades(&s, &valid_token("old-again")), "the removed key's tokens are refused");
    // The connection opened with the old key is still open.
    ws.send(Message::Text("still".into())).unwrap();
    assert_eq!(next_data(&mut ws), Message::Text("still".into()));
    ops::close(ws);
}

#[test]
fn a_capacity_refusal_does_not_use_up_the_jti() {
    let s = AuthServer::start(hs256_verifier().require_jti(true), |cfg| cfg.max_conns = 1);
    let url = format!("ws://{}/?access_token={}", s.server.addr, hs256(&claims_jti("a", "first")));
    let (ws, _) = handshake(tcp(s.server.addr), url).expect("upgrade");
    let second = hs256(&claims_jti("b", "second"));
    let (resp, _) = ops::raw_exchange(s.server.addr, &upgrade_request(&s.host(), "/", &[&bearer(&second)]), false);
    assert_eq!(status(&resp), 503, "{resp}");
    ops::close(ws);
    assert!(wait_until(Duration::from_secs(10), || s.server.handle().open_connections() == 0));
    // The refused client retries with the same token: not a replay.
    assert!(upgrades(&s, &second));
}
