//! Where a bearer token sits in an upgrade request (RFC 6750 section 2), and the
//! client's subprotocols without the one that carried it.
//!
//! Browsers cannot set `Authorization` on a WebSocket, so two other places are read too:
//! the `access_token` query parameter, and a `Sec-WebSocket-Protocol` entry
//! `bearer.<token>` (the only header a browser script controls). A token in a subprotocol
//! entry is a credential, not a protocol: the server must not echo it as the chosen
//! subprotocol, so choose among [`client_protocols`], never `Request::protocols`.

use super::AuthError;
use crate::proto::handshake::Request;

/// The query parameter read for a token (RFC 6750 section 2.3).
pub const QUERY_PARAM: &str = "access_token";

/// The prefix of a `Sec-WebSocket-Protocol` entry that carries a token (case-sensitive,
/// as subprotocol names are).
pub const SUBPROTOCOL_PREFIX: &str = "bearer.";

/// Where the token was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>` (scheme name case-insensitive).
    AuthorizationHeader,
    /// Query parameter [`QUERY_PARAM`], taken as sent (JWTs need no percent-decoding).
    QueryParam,
    /// A `Sec-WebSocket-Protocol` entry [`SUBPROTOCOL_PREFIX`]`<token>`.
    Subprotocol,
}

/// The one bearer token the request carries, and where it was.
///
/// Errors: [`AuthError::Missing`] when there is none (an `Authorization` header with
/// another scheme, such as `Basic`, does not count); [`AuthError::Ambiguous`] when there
/// is more than one, in one place or several, equal or not (RFC 6750 section 2 forbids
/// it, and picking one would let a proxy check a different token than this server);
/// [`AuthError::Malformed`] when the one found is empty.
pub fn find_token<'b>(req: &Request<'_, 'b>) -> Result<(&'b str, TokenSource), AuthError> {
    let from_header = req
        .headers()
        .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .filter_map(|(_, value)| bearer_credentials(value))
        .map(|t| (t, TokenSource::AuthorizationHeader));
    let from_query = req
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.strip_prefix(QUERY_PARAM)?.strip_prefix('='))
        .map(|t| (t, TokenSource::QueryParam));
    let from_protocol =
        req.protocols().filter_map(|p| p.strip_prefix(SUBPROTOCOL_PREFIX)).map(|t| (t, TokenSource::Subprotocol));
    let mut found = from_header.chain(from_query).chain(from_protocol);
    match (found.next(), found.next()) {
        (None, _) => Err(AuthError::Missing),
        (Some(_), Some(_)) => Err(AuthError::Ambiguous),
        (Some(("", _)), None) => Err(AuthError::Malformed),
        (Some(one), None) => Ok(one),
    }
}

/// The subprotocols the client offers, in its order, without any `bearer.<token>` entry:
/// the list to choose the `Sec-WebSocket-Protocol` answer from.
pub fn client_protocols<'a, 'b>(req: &'a Request<'_, 'b>) -> impl Iterator<Item = &'b str> + 'a {
    req.protocols().filter(|p| !p.starts_with(SUBPROTOCOL_PREFIX))
}

/// The token of an `Authorization` value with the `Bearer` scheme: `Some("")` when the
/// scheme is there without a token, `None` for another scheme or a non-UTF-8 value.
fn bearer_credentials(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim_start_matches(' '))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::with_request;

    fn find(target: &str, fields: &[(&str, &str)]) -> Result<(String, TokenSource), AuthError> {
        with_request(target, fields, |req| find_token(req).map(|(t, s)| (t.to_owned(), s)))
    }

    #[test]
    fn each_source() {
        let ok = |t: &str, s| Ok((t.to_owned(), s));
        assert_eq!(find("/", &[("Authorization", "Bearer a.b.c")]), ok("a.b.c", TokenSource::AuthorizationHeader));
        assert_eq!(find("/", &[("authorization", "bEaReR   a.b.c ")]), ok("a.b.c", TokenSource::AuthorizationHeader));
        assert_eq!(find("/ws?x=1&access_token=a.b.c&y", &[]), ok("a.b.c", TokenSource::QueryParam));
        assert_eq!(
            find("/", &[("Sec-WebSocket-Protocol", "chat, bearer.a.b.c")]),
            ok("a.b.c", TokenSource::Subprotocol)
        );
    }

    #[test]
    fn missing() {
        assert_eq!(find("/?token=a.b.c&access_tokens=x", &[]), Err(AuthError::Missing));
        assert_eq!(find("/", &[("Authorization", "Basic dXNlcjpwYXNz")]), Err(AuthError::Missing));
        assert_eq!(find("/", &[("Authorization", "Bearertoken")]), Err(AuthError::Missing));
        assert_eq!(find("/", &[("Sec-WebSocket-Protocol", "chat, Bearer.a.b.c")]), Err(AuthError::Missing));
    }

    #[test]
    fn empty_token_is_malformed() {
        assert_eq!(find("/", &[("Authorization", "Bearer")]), Err(AuthError::Malformed));
        assert_eq!(find("/", &[("Authorization", "Bearer   ")]), Err(AuthError::Malformed));
        assert_eq!(find("/?access_token=", &[]), Err(AuthError::Malformed));
        assert_eq!(find("/", &[("Sec-WebSocket-Protocol", "bearer.")]), Err(AuthError::Malformed));
    }

    #[test]
    fn more_than_one_token_is_ambiguous() {
        let auth = ("Authorization", "Bearer a.b.c");
        let proto = ("Sec-WebSocket-Protocol", "bearer.a.b.c");
        assert_eq!(find("/?access_token=a.b.c", &[auth]), Err(AuthError::Ambiguous));
        assert_eq!(find("/", &[auth, proto]), Err(AuthError::Ambiguous));
        assert_eq!(find("/?access_token=a.b.c", &[proto]), Err(AuthError::Ambiguous));
        assert_eq!(find("/?access_token=x&access_token=y", &[]), Err(AuthError::Ambiguous));
        assert_eq!(find("/", &[auth, auth]), Err(AuthError::Ambiguous));
        assert_eq!(find("/", &[("Sec-WebSocket-Protocol", "bearer.x, bearer.y")]), Err(AuthError::Ambiguous));
        // Another scheme beside a bearer token is not a second token.
        assert!(find("/", &[("Authorization", "Basic eA=="), proto]).is_ok());
    }

    #[test]
    fn bearer_subprotocol_is_stripped() {
        let fields = [("Sec-WebSocket-Protocol", "bearer.h.p.s, chat.v2"), ("Sec-WebSocket-Protocol", "chat.v1")];
        with_request("/", &fields, |req| {
            assert_eq!(req.protocols().count(), 3);
            assert_eq!(client_protocols(req).collect::<Vec<_>>(), ["chat.v2", "chat.v1"]);
        });
        with_request("/", &[("Sec-WebSocket-Protocol", "bearer.h.p.s")], |req| {
            assert_eq!(client_protocols(req).next(), None);
        });
        with_request("/", &[], |req| assert_eq!(client_protocols(req).next(), None));
    }
}
