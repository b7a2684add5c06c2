//! Handshake-time access policy: who may open a WebSocket.
//!
//! Everything here is a pure function of a parsed
//! [`Request`](crate::proto::handshake::Request) and, for tokens, of the time the caller
//! passes in. No sockets, no clock, no I/O: the engine calls these after
//! [`parse_request`](crate::proto::handshake::parse_request) succeeds and before it
//! writes the `101`.
//!
//! - [`origin`]: [`OriginPolicy`], against cross-site WebSocket hijacking. Refusal: 403.
//! - [`bearer`]: where a bearer token sits in the request, and the client's subprotocols
//!   with the `bearer.<token>` entry taken out.
//! - `jwt` (cargo feature `jwt`): `JwtVerifier` checks HS256, RS256 and ES256 tokens
//!   against a key set (several keys, a JWKS, replaced at run time for rotation).
//!   Refusal: [`AuthError`], usually 401 with a `WWW-Authenticate` challenge.
//! - `replay` (feature `jwt`): where used `jti`s are remembered (`SeenSet`, or Redis).
//!
//! ```
//! use wsloop::auth::{bearer, OriginPolicy};
//! use wsloop::proto::handshake::{header_storage, parse_request, write_accept};
//! use wsloop::proto::handshake::{HandshakeLimits, ParseStatus};
//!
//! let raw = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nOrigin: https://example.com\r\n\
//!     Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
//!     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
//!     Sec-WebSocket-Protocol: chat.v1, bearer.eyJhbGciOi\r\n\r\n";
//! let mut headers = header_storage();
//! let limits = HandshakeLimits::default();
//! let ParseStatus::Complete(req, _) = parse_request(raw, &mut headers, &limits)? else {
//!     unreachable!()
//! };
//! // 1. Origin (403 on refusal).
//! OriginPolicy::default().check(&req)?;
//! // 2. Token (401 on refusal; with the `jwt` feature, `JwtVerifier::verify_request`).
//! let (_token, source) = bearer::find_token(&req)?;
//! assert_eq!(source, bearer::TokenSource::Subprotocol);
//! // 3. Choose the subprotocol among the real ones: never echo `bearer.<token>`.
//! let chosen = bearer::client_protocols(&req).find(|p| *p == "chat.v1");
//! let mut out = [0u8; 256];
//! let n = write_accept(&mut out, &req, chosen, b"")?;
//! assert!(std::str::from_utf8(&out[..n])?.contains("Sec-WebSocket-Protocol: chat.v1\r\n"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bearer;
#[cfg(feature = "jwt")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "jwt")]
pub mod jwt;
pub mod origin;
#[cfg(feature = "jwt")]
pub mod replay;

#[cfg(feature = "jwt")]
pub use jwt::{Alg, Claims, JwtVerifier, KeySet, VerifyKey};
pub use origin::{InvalidOrigin, OriginPolicy, OriginRejected};
#[cfg(feature = "jwt")]
pub use replay::{ReplayStore, SeenSet};

use std::fmt;

/// Why a bearer token was refused, each with the HTTP status it is answered with.
///
/// [`AuthError::www_authenticate`] gives the challenge header line for the response
/// (RFC 6750 section 3); [`AuthError::reason`] is the short text for logs and the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No bearer token in any of the places [`bearer::find_token`] looks. 401, and the
    /// challenge carries no error code (RFC 6750 section 3.1).
    Missing,
    /// A token in more than one place (RFC 6750 section 2: a client MUST NOT use more
    /// than one method). 400, `invalid_request`.
    Ambiguous,
    /// Not a compact JWS: not three base64url parts, a part that is not a JSON object, a
    /// registered claim of the wrong type, a `crit` header, an empty token, or longer
    /// than the verifier's `max_token_len`. 401, `invalid_token`.
    Malformed,
    /// The signature does not verify with the configured key. 401, `invalid_token`.
    BadSignature,
    /// The header's `alg` is not the one algorithm the verifier is configured for. 401.
    AlgorithmMismatch,
    /// The header's `alg` is `none` (any case): unsigned tokens are never accepted. 401.
    AlgNone,
    /// `exp` is missing and the verifier requires it (the default). 401.
    MissingExpiry,
    /// `exp` is past, beyond the leeway. 401.
    Expired,
    /// `nbf` is in the future, beyond the leeway. 401.
    NotYetValid,
    /// `iss` is missing or not the configured issuer. 401.
    WrongIssuer,
    /// `aud` does not name a configured audience, is missing when one is configured, or
    /// is present when none is (RFC 7519 section 4.1.3). 401.
    WrongAudience,
    /// The verifier's key is unusable: PEM that does not parse, a key of the wrong type
    /// for the algorithm, an RSA key under 2048 bits, an HMAC secret under 32 bytes.
    /// Only the constructors return it, at configuration time. 500.
    KeyError,
    /// The header's `kid` names no key of the set (an unknown or a removed key). 401.
    UnknownKey,
    /// `iat` is missing or older than the verifier's `max_age`. 401.
    TooOld,
    /// `jti` is required and missing (or empty). 401.
    MissingJti,
    /// The token's `jti` was used before and the token has not expired: a replay. 401.
    Replayed,
    /// The store of used `jti`s (Redis) cannot be reached: a token that needs the check
    /// is refused rather than let in unchecked. 503 with `Retry-After`.
    ReplayCheckUnavailable,
    /// The local store of used `jti`s is full of ids whose tokens have not expired: a
    /// new token is refused rather than an id forgotten early. 503 with `Retry-After`.
    ReplayCacheFull,
}

/// One challenge line; `$code` and `$reason` must not contain `"` or `\`.
macro_rules! challenge {
    ($code:literal, $reason:literal) => {
        concat!(
            "WWW-Authenticate: Bearer realm=\"wsloop\", error=\"",
            $code,
            "\", error_description=\"",
            $reason,
            "\"\r\n"
        )
    };
}

/// `(status, reason, header line)` for a refused request that did carry a token.
macro_rules! refusal {
    ($status:literal, $code:literal, $reason:literal) => {
        ($status, $reason, challenge!($code, $reason))
    };
}

/// The extra header of the 503s: not a challenge, the token may be fine.
const RETRY: &str = "Retry-After: 1\r\n";

impl AuthError {
    /// The one table from error to response: status, reason, challenge header.
    fn response(self) -> (u16, &'static str, &'static str) {
        match self {
            AuthError::Missing => (401, "bearer token required", "WWW-Authenticate: Bearer realm=\"wsloop\"\r\n"),
            AuthError::Ambiguous => refusal!(400, "invalid_request", "bearer token sent by more than one method"),
            AuthError::Malformed => {
                refusal!(401, "invalid_token", "token is not a well-formed JWT")
            }
            AuthError::BadSignature => {
                refusal!(401, "invalid_token", "token signature does not verify")
            }
            AuthError::AlgorithmMismatch => refusal!(401, "invalid_token", "token alg is not the configured algorithm"),
            AuthError::AlgNone => refusal!(401, "invalid_token", "unsigned token (alg none)"),
            AuthError::MissingExpiry => refusal!(401, "invalid_token", "token has no exp claim"),
            AuthError::Expired => refusal!(401, "invalid_token", "token expired"),
            AuthError::NotYetValid => refusal!(401, "invalid_token", "token not yet valid (nbf)"),
            AuthError::WrongIssuer => refusal!(401, "invalid_token", "token issuer not accepted"),
            AuthError::WrongAudience => {
                refusal!(401, "invalid_token", "token audience not accepted")
            }
            AuthError::KeyError => (500, "token verifier key unusable", ""),
            AuthError::UnknownKey => refusal!(401, "invalid_token", "token kid names no configured key"),
            AuthError::TooOld => refusal!(401, "invalid_token", "token iat missing or older than the maximum age"),
            AuthError::MissingJti => refusal!(401, "invalid_token", "token has no jti claim"),
            AuthError::Replayed => refusal!(401, "invalid_token", "token already used (jti seen before)"),
            AuthError::ReplayCheckUnavailable => (503, "token replay check unavailable", RETRY),
            AuthError::ReplayCacheFull => (503, "token replay cache full", RETRY),
        }
    }

    /// The HTTP status the client is answered with.
    pub fn status(self) -> u16 {
        self.response().0
    }

    /// Short description, for logs and the response body.
    pub fn reason(self) -> &'static str {
        self.response().1
    }

    /// The response's extra header line, ending in CRLF, ready for
    /// [`write_reject`](crate::proto::handshake::write_reject)'s `extra_headers`: for the
    /// 401s and the 400, the `WWW-Authenticate` challenge,
    /// `WWW-Authenticate: Bearer realm="wsloop", error="invalid_token", error_description="..."`.
    /// Without `error` for [`AuthError::Missing`]; `invalid_request` for
    /// [`AuthError::Ambiguous`]; empty for [`AuthError::KeyError`] (a 500); `Retry-After: 1`
    /// for the 503s of the replay check.
    pub fn www_authenticate(self) -> &'static str {
        self.response().2
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status())
    }
}

impl std::error::Error for AuthError {}

/// Parses a request head made of `target` and the extra header fields, and hands it to `f`.
#[cfg(test)]
pub(crate) fn with_request<R>(
    target: &str,
    fields: &[(&str, &str)],
    f: impl FnOnce(&crate::proto::handshake::Request<'_, '_>) -> R,
) -> R {
    use crate::proto::handshake::{header_storage, parse_request, HandshakeLimits, ParseStatus};
    let mut raw = format!(
        "GET {target} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (name, value) in fields {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    let mut headers = header_storage();
    match parse_request(raw.as_bytes(), &mut headers, &HandshakeLimits::default()) {
        Ok(ParseStatus::Complete(req, _)) => f(&req),
        other => panic!("test request did not parse: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [AuthError; 18] = [
        AuthError::Missing,
        AuthError::Ambiguous,
        AuthError::Malformed,
        AuthError::BadSignature,
        AuthError::AlgorithmMismatch,
        AuthError::AlgNone,
        AuthError::MissingExpiry,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::WrongIssuer,
        AuthError::WrongAudience,
        AuthError::KeyError,
        AuthError::UnknownKey,
        AuthError::TooOld,
        AuthError::MissingJti,
        AuthError::Replayed,
        AuthError::ReplayCheckUnavailable,
        AuthError::ReplayCacheFull,
    ];

    #[test]
    fn challenges_are_single_rfc6750_header_lines() {
        for e in ALL {
            let h = e.www_authenticate();
            match e {
                AuthError::KeyError => {
                    assert_eq!(h, "");
                    continue;
                }
                AuthError::ReplayCheckUnavailable | AuthError::ReplayCacheFull => {
                    assert_eq!(h, "Retry-After: 1\r\n");
                    continue;
                }
                _ => {}
            }
            assert!(h.starts_with("WWW-Authenticate: Bearer realm=\"wsloop\""), "{e:?}: {h}");
            assert!(h.ends_with("\r\n") && h.matches("\r\n").count() == 1, "{e:?}");
            // Only the delimiting quotes: realm, and error plus description when present.
            let quotes = h.matches('"').count();
            match e {
                AuthError::Missing => assert_eq!(quotes, 2),
                _ => {
                    assert_eq!(quotes, 6, "{e:?}");
                    assert!(h.contains(&format!("error_description=\"{}\"", e.reason())), "{e:?}");
                }
            }
            assert!(!e.reason().contains(['"', '\\']));
        }
        assert!(AuthError::Expired.www_authenticate().contains("error=\"invalid_token\""));
        assert!(AuthError::Ambiguous.www_authenticate().contains("error=\"invalid_request\""));
        assert!(!AuthError::Missing.www_authenticate().contains("error"));
    }

    #[test]
    fn statuses() {
        for e in ALL {
            let want = match e {
                AuthError::Ambiguous => 400,
                AuthError::KeyError => 500,
                AuthError::ReplayCheckUnavailable | AuthError::ReplayCacheFull => 503,
                _ => 401,
            };
            assert_eq!(e.status(), want, "{e:?}");
            assert_eq!(e.to_string(), format!("{} ({want})", e.reason()));
        }
    }

    #[test]
    fn rejection_response_carries_the_challenge() {
        use crate::proto::handshake::write_reject;
        let e = AuthError::Expired;
        let mut out = [0u8; 512];
        let n = write_reject(&mut out, e.status(), e.reason(), e.www_authenticate().as_bytes()).unwrap();
        let text = std::str::from_utf8(&out[..n]).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        let challenge = "WWW-Authenticate: Bearer realm=\"wsloop\", error=\"invalid_token\", \
                         error_description=\"token expired\"\r\n";
        assert!(text.contains(challenge), "{text}");
    }
}
