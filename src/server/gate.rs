//! The handshake gate: parses the upgrade request, applies the server's policy (Origin,
//! JWT, admission) and the application's `on_open`, and answers with 101 or a refusal.
//! Every HTTP refusal is a [`Refusal`], mapped once to its status, headers, reason and
//! metric label.

use super::conn::Conn;
#[cfg(feature = "jwt")]
use super::connection::to_ticks;
use super::connection::{Claims, Connection, Ctx};
use super::handler::{Handler, Reject};
use crate::auth::{AuthError, OriginRejected};
use crate::buf::Ring;
use crate::proto::handshake::{header_storage, parse_request, write_accept, write_reject, ParseStatus};
use crate::proto::{HandshakeError, Request};
use crate::session::Tick;
use std::borrow::Cow;

/// Why an upgrade was refused. Each maps, in [`Refusal::describe`], to one HTTP status,
/// the response's extra headers, the reason (body and log line) and a metric label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over `max_conns`: 503 with `Retry-After`.
    MaxConns,
    /// Over `max_conns_per_ip`: 503 with `Retry-After`.
    MaxConnsPerIp,
    /// Not a valid upgrade request: 400, 405, 426 or 431 by the error.
    BadHandshake(HandshakeError),
    /// No valid token: 401 with `WWW-Authenticate` (400 for an ambiguous token); 503 with
    /// `Retry-After` when the `jti` replay check cannot be made (store unreachable or
    /// full), counted under its own label `replay_check`.
    Auth(AuthError),
    /// The `Origin` policy: 403.
    Origin(OriginRejected),
    /// The application's `on_open` refused, with its own status and headers.
    Application(Reject),
    /// The server is shutting down: 503.
    Draining,
    /// The 101 response did not fit (a subprotocol too long): 500.
    Internal,
}

impl Refusal {
    /// Metric labels, by [`Refusal::index`].
    pub const LABELS: [&'static str; 9] = [
        "max_conns",
        "max_conns_per_ip",
        "bad_handshake",
        "auth",
        "origin",
        "application",
        "draining",
        "internal",
        "replay_check",
    ];

    /// The one mapping: status, reason, extra header lines (each ending in CRLF), index
    /// of the metric label.
    pub fn describe(&self) -> (u16, Cow<'_, str>, Cow<'_, str>, usize) {
        const BUSY: &str = "Retry-After: 1\r\n";
        match self {
            Refusal::MaxConns => (503, "server busy, try again later".into(), BUSY.into(), 0),
            Refusal::MaxConnsPerIp => (503, "too many connections from this address".into(), BUSY.into(), 1),
            Refusal::BadHandshake(e) => (e.status(), e.reason().into(), "".into(), 2),
            Refusal::Auth(e @ (AuthError::ReplayCheckUnavailable | AuthError::ReplayCacheFull)) => {
                (e.status(), e.reason().into(), e.www_authenticate().into(), 8)
            }
            Refusal::Auth(e) => (e.status(), e.reason().into(), e.www_authenticate().into(), 3),
            Refusal::Origin(e) => (e.status(), e.reason().into(), "".into(), 4),
            Refusal::Application(r) => {
                let mut extra = String::new();
                for h in &r.headers {
                    extra.push_str(h);
                    extra.push_str("\r\n");
                }
                (r.status, Cow::Borrowed(&*r.reason), extra.into(), 5)
            }
            Refusal::Draining => (503, "server shutting down".into(), BUSY.into(), 6),
            Refusal::Internal => (500, "response too large".into(), "".into(), 7),
        }
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        self.describe().0
    }

    /// Index of the metric label in [`Refusal::LABELS`].
    pub fn index(&self) -> usize {
        self.describe().3
    }

    /// Label value of `wsloop_connections_rejected_total{reason=...}`.
    pub fn label(&self) -> &'static str {
        Refusal::LABELS[self.index()]
    }

    /// The HTTP response.
    pub fn response(&self) -> Vec<u8> {
        let (status, reason, extra, _) = self.describe();
        let mut resp = vec![0u8; 512 + reason.len() + extra.len()];
        let n = write_reject(&mut resp, status, &reason, extra.as_bytes()).unwrap_or(0);
        resp.truncate(n);
        resp
    }
}

/// Runs the handshake on the bytes in `ring` (the connection's input so far). Returns
/// the bytes consumed: 0 while the request is incomplete, its head on success, all of
/// it on a refusal.
pub(super) fn handshake<H: Handler>(
    conn: &mut Conn<H::State>,
    ring: &mut Ring,
    ctx: &mut Ctx,
    handler: &mut H,
    key: u32,
) -> usize {
    let mut storage = header_storage();
    let data = ring.make_contiguous();
    let req = match parse_request(data, &mut storage, &ctx.scfg.handshake_limits) {
        Ok(ParseStatus::Partial) => return 0,
        Ok(ParseStatus::Complete(req, head_len)) => (req, head_len),
        Err(HandshakeError::PlainHttp) if ctx.cfg.http_page.is_some() && is_root(data) => {
            let page = ctx.cfg.http_page.unwrap_or("");
            log::debug!("GET / from {}: the page", conn.meta.ip());
            conn.session.refuse(&page_response(page), &mut ctx.wpool, ctx.now_tick);
            ctx.mark_dirty(&mut conn.meta, key);
            return data.len();
        }
        Err(e) => {
            refuse(conn, ctx, key, Refusal::BadHandshake(e), false);
            return data.len();
        }
    };
    let (req, head_len) = req;
    if let Err(e) = ctx.cfg.origin_policy.check(&req) {
        refuse(conn, ctx, key, Refusal::Origin(e), false);
        return data.len();
    }
    // Admission before the token: a token's `jti` is used up by a successful check, so
    // a refusal for capacity must come first, or the client's retry would be a replay.
    if let Err(refusal) = ctx.shared.admit(conn.meta.ip()) {
        refuse(conn, ctx, key, refusal, false);
        return data.len();
    }
    let claims = match check_token(ctx, &req) {
        Ok(claims) => claims,
        Err(refusal) => {
            refuse(conn, ctx, key, refusal, true);
            return data.len();
        }
    };
    let expires = claims.as_ref().and_then(|c| expiry_tick(ctx, c));
    ctx.claims = claims;
    // Negotiated before on_open, so the handler sees the outcome.
    #[cfg(feature = "deflate")]
    let extensions = crate::deflate::negotiate(ctx.cfg.compression, ctx.cfg.compression_window_bits, req.extensions());
    #[cfg(not(feature = "deflate"))]
    let extensions: Option<(crate::deflate::Agreed, String)> = None;
    conn.session.set_deflate(extensions.as_ref().map(|(a, _)| *a));
    let mut c = Connection { core: conn.session.core(), ctx: &mut *ctx, meta: &mut conn.meta, key };
    let decision = handler.on_open(&mut c, &req);
    ctx.claims = None;
    let accept = match decision {
        Ok(accept) => accept,
        Err(reject) => {
            refuse(conn, ctx, key, Refusal::Application(reject), true);
            return data.len();
        }
    };
    // Only a subprotocol the client really offered; never a `bearer.<token>` entry.
    let protocol = accept.protocol.filter(|p| crate::auth::bearer::client_protocols(&req).any(|o| o == *p));
    let mut resp = [0u8; 1024];
    let extra = extensions.as_ref().map_or("", |(_, h)| h.as_str());
    let Ok(n) = write_accept(&mut resp, &req, protocol, extra.as_bytes()) else {
        refuse(conn, ctx, key, Refusal::Internal, true);
        return data.len();
    };
    conn.session.accept(&resp[..n], accept.state, expires, &ctx.scfg, &mut ctx.wpool, ctx.now_tick);
    ctx.metrics.open.add(1);
    ctx.mark_dirty(&mut conn.meta, key);
    head_len
}

/// Whether the request in `data` (a complete head) is for `/`, query aside.
fn is_root(data: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    // Only the request line is needed: too many headers still yields the path.
    let _ = req.parse(data);
    req.path.is_some_and(|p| p.split('?').next() == Some("/"))
}

/// `Config::http_page` as a complete response (the connection ends after it).
fn page_response(page: &str) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        page.len()
    );
    [head.as_bytes(), page.as_bytes()].concat()
}

/// Answers with `refusal`'s HTTP error; the connection ends once it is written.
/// `admitted`: admission was granted, so its slot is given back.
fn refuse<S: Default>(conn: &mut Conn<S>, ctx: &mut Ctx, key: u32, refusal: Refusal, admitted: bool) {
    if admitted {
        ctx.shared.release(conn.meta.ip());
    }
    let (ip, status) = (conn.meta.ip(), refusal.status());
    log::info!(peer:% = ip, status = status, reason = refusal.label();
        "handshake from {ip} refused: {status} {}", refusal.describe().1);
    ctx.metrics.refused(&refusal);
    conn.session.refuse(&refusal.response(), &mut ctx.wpool, ctx.now_tick);
    ctx.mark_dirty(&mut conn.meta, key);
}

/// The token (401; 503 when its replay check cannot be made), the last of the server's
/// checks before `on_open`. `Ok` carries the verified claims when JWT auth is on.
fn check_token(ctx: &Ctx, req: &Request<'_, '_>) -> Result<Option<Claims>, Refusal> {
    #[cfg(feature = "jwt")]
    if let Some(v) = &ctx.cfg.jwt {
        return v.verify_request(req, unix_now()).map(Some).map_err(Refusal::Auth);
    }
    #[cfg(not(feature = "jwt"))]
    let _ = (ctx, req);
    Ok(None)
}

/// The tick at which the token's `exp` passes (with `close_on_token_expiry`).
#[cfg(feature = "jwt")]
fn expiry_tick(ctx: &Ctx, claims: &Claims) -> Option<Tick> {
    if !ctx.cfg.close_on_token_expiry {
        return None;
    }
    let exp = claims.exp?;
    let after = std::time::Duration::from_secs(exp.saturating_sub(unix_now()));
    Some(ctx.now_tick.saturating_add(to_ticks(after, ctx.cfg.tick)))
}

#[cfg(not(feature = "jwt"))]
fn expiry_tick(_: &Ctx, claims: &Claims) -> Option<Tick> {
    match *claims {}
}

#[cfg(feature = "jwt")]
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_status_and_label() {
        let cases = [
            (Refusal::MaxConns, 503, "max_conns"),
            (Refusal::MaxConnsPerIp, 503, "max_conns_per_ip"),
            (Refusal::BadHandshake(HandshakeError::MethodNotAllowed), 405, "bad_handshake"),
            (Refusal::BadHandshake(HandshakeError::HeadersTooLarge), 431, "bad_handshake"),
            (Refusal::Auth(AuthError::Missing), 401, "auth"),
            (Refusal::Auth(AuthError::Replayed), 401, "auth"),
            (Refusal::Auth(AuthError::UnknownKey), 401, "auth"),
            (Refusal::Auth(AuthError::ReplayCheckUnavailable), 503, "replay_check"),
            (Refusal::Auth(AuthError::ReplayCacheFull), 503, "replay_check"),
            (Refusal::Origin(OriginRejected::CrossOrigin), 403, "origin"),
            (Refusal::Application(Reject::new(404, "no such room")), 404, "application"),
            (Refusal::Draining, 503, "draining"),
            (Refusal::Internal, 500, "internal"),
        ];
        for (r, status, label) in cases {
            assert_eq!(r.status(), status, "{r:?}");
            assert_eq!(r.label(), label, "{r:?}");
            let resp = String::from_utf8(r.response()).unwrap();
            assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")), "{resp}");
        }
    }

    #[test]
    fn auth_refusal_carries_its_challenge_and_busy_its_retry_after() {
        let resp = String::from_utf8(Refusal::Auth(AuthError::Missing).response()).unwrap();
        assert!(resp.contains("WWW-Authenticate: Bearer"), "{resp}");
        let resp = String::from_utf8(Refusal::MaxConns.response()).unwrap();
        assert!(resp.contains("Retry-After: 1\r\n"), "{resp}");
        let app = Refusal::Application(Reject::new(403, "room closed").with_header("X-Why: closed"));
        let resp = String::from_utf8(app.response()).unwrap();
        assert!(resp.contains("X-Why: closed\r\n") && resp.contains("room closed"), "{resp}");
    }
}
