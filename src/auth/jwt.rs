//! JWT bearer tokens (RFC 7519, compact JWS of RFC 7515): HS256 with a shared secret,
//! RS256 and ES256 with a public key (RFC 7518 section 3). Feature `jwt`.
//!
//! A [`JwtVerifier`] holds a [`KeySet`]: one or more keys, each fixed to one algorithm and
//! optionally named by a `kid`, from secrets, PEM files or a JSON Web Key Set
//! ([`KeySet::from_jwks`], RFC 7517). The set can be replaced while workers verify
//! ([`JwtVerifier::replace_keys`]): that is how keys rotate without a restart. A token is
//! accepted only if:
//!
//! 1. it is three base64url parts (no padding), at most `max_token_len` bytes;
//! 2. its header's `alg` is not `none` (any case: always refused), and no `crit` header;
//! 3. with a `kid` header, the key of that `kid` exists ([`AuthError::UnknownKey`]) and has
//!    exactly the token's algorithm ([`AuthError::AlgorithmMismatch`]); without `kid`, the
//!    set has keys of the token's algorithm and the signature verifies with one of them.
//!    No key is ever used with another algorithm than its own, which closes the
//!    RS256-public-key-as-HMAC-secret confusion;
//! 4. the signature verifies (only then is the payload parsed);
//! 5. `exp` is present (unless [`JwtVerifier::require_exp`]`(false)`) and not past, and
//!    `nbf`, if present, is not in the future, both within the leeway (default 30 s);
//! 6. with [`JwtVerifier::max_age`], `iat` is present and not older than that;
//! 7. `iss` equals the configured issuer, if one is configured;
//! 8. `aud` names a configured audience if any is configured, and is absent otherwise;
//! 9. with [`JwtVerifier::require_jti`], `jti` is present, and last, once every check
//!    above has passed, the [`ReplayStore`] records it: a `jti` seen before is
//!    [`AuthError::Replayed`]. Forged or otherwise invalid tokens never use up an id.
//!
//! The caller passes the time (`now_unix`, seconds since the epoch): the verifier reads
//! no clock, so tests and the engine's timer wheel decide what "now" is.
//!
//! ```
//! use wsloop::auth::{AuthError, JwtVerifier};
//! let verifier = JwtVerifier::from_secret(b"0123456789abcdef0123456789abcdef")?
//!     .issuer("https://issuer.example")
//!     .audience("wsloop");
//! // A token that is not a JWT, refused with the challenge header for the 401.
//! let err = verifier.verify("not-a-jwt", 1_700_000_000).unwrap_err();
//! assert_eq!(err, AuthError::Malformed);
//! assert!(err.www_authenticate().contains("error=\"invalid_token\""));
//! # Ok::<(), AuthError>(())
//! ```

use super::replay::{ReplayStore, SeenSet};
use super::{bearer, AuthError};
use crate::proto::handshake::Request;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use der::asn1::UintRef;
use der::Decode;
use ring::signature::RsaPublicKeyComponents;
use ring::{agreement, hmac, signature};
use serde_json::{Map, Value};
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Default for [`JwtVerifier::leeway`].
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Default for [`JwtVerifier::max_token_len`]: 8 KiB, the size of the whole default
/// request head.
pub const DEFAULT_MAX_TOKEN_LEN: usize = 8 << 10;

/// Shortest HMAC secret accepted: the hash output size (RFC 7518 section 3.2).
pub const MIN_SECRET_LEN: usize = 32;

/// Smallest RSA modulus accepted, in bits (RFC 7518 section 3.3).
pub const MIN_RSA_BITS: usize = 2048;

/// The signature algorithm a verifier accepts (RFC 7518 section 3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// HMAC with SHA-256, shared secret.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, RSA public key of at least 2048 bits.
    Rs256,
    /// ECDSA on P-256 with SHA-256, signature as 64 bytes `r || s`.
    Es256,
}

impl Alg {
    /// The `alg` header value: `HS256`, `RS256` or `ES256`.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

/// Why a key cannot be used, from [`JwtVerifier::from_secret`] and
/// [`JwtVerifier::from_public_key_pem`]; its `Display` says what is wrong and what is
/// required. At handshake time an unusable key is [`AuthError::KeyError`] (`From`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The HS256 secret has `len` bytes, fewer than [`MIN_SECRET_LEN`].
    SecretTooShort {
        /// The secret's length in bytes.
        len: usize,
    },
    /// A public key was offered for HS256, which takes a shared secret.
    PublicKeyForHmac,
    /// The PEM text holds a private key; the verifier takes the public half.
    PrivateKey {
        /// The algorithm it was meant for.
        alg: Alg,
    },
    /// The text is not a PEM public key of the algorithm's type.
    NotAPublicKey {
        /// The algorithm it was meant for.
        alg: Alg,
        /// The PEM or DER parser's reason.
        detail: String,
    },
    /// The RSA modulus has `bits` bits, fewer than [`MIN_RSA_BITS`].
    RsaTooSmall {
        /// The modulus size.
        bits: u32,
    },
    /// A key set without any key.
    NoKeys,
    /// Two keys of a set have the same `kid`: a token naming it would be ambiguous.
    DuplicateKid(String),
    /// A JSON Web Key Set that does not parse, or a key in it that is unusable. `key` is
    /// the key's index in `keys`, when the problem is in one key.
    Jwks {
        /// Index in the set's `keys` array.
        key: Option<usize>,
        /// What is wrong.
        detail: String,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::SecretTooShort { len } => write!(
                f,
                "the HS256 secret has {len} bytes; RFC 7518 section 3.2 requires at least {MIN_SECRET_LEN} bytes \
                 (as many as the SHA-256 output)"
            ),
            KeyError::PublicKeyForHmac => f.write_str("HS256 takes a shared secret, not a public key"),
            KeyError::PrivateKey { alg } => write!(
                f,
                "this is a private key; {} verification takes the public key (`openssl pkey -pubout` writes it)",
                alg.name()
            ),
            KeyError::NotAPublicKey { alg: Alg::Rs256, detail } => write!(
                f,
                "not an RSA public key in PEM (-----BEGIN PUBLIC KEY----- or -----BEGIN RSA PUBLIC KEY-----): {detail}"
            ),
            KeyError::NotAPublicKey { alg, detail } => {
                write!(f, "not a P-256 EC public key in PEM (-----BEGIN PUBLIC KEY-----) for {}: {detail}", alg.name())
            }
            KeyError::RsaTooSmall { bits } => write!(
                f,
                "the RSA key has {bits} bits; RFC 7518 section 3.3 requires at least {MIN_RSA_BITS} bits for RS256"
            ),
            KeyError::NoKeys => f.write_str("no key: give at least one"),
            KeyError::DuplicateKid(kid) => write!(f, "two keys have kid {kid:?}; each kid must name one key"),
            KeyError::Jwks { key: Some(i), detail } => write!(f, "JWKS key {i}: {detail}"),
            KeyError::Jwks { key: None, detail } => write!(f, "not a JSON Web Key Set: {detail}"),
        }
    }
}

impl std::error::Error for KeyError {}

impl From<KeyError> for AuthError {
    fn from(_: KeyError) -> AuthError {
        AuthError::KeyError
    }
}

/// The key, which fixes the algorithm: there is no way to use one with another.
///
/// The crypto is ring's, the same library rustls uses for TLS: one implementation of
/// SHA-256, RSA and P-256 in the binary rather than two.
#[derive(Clone)]
enum Key {
    /// Keyed once (ring keeps the padded inner and outer blocks), used for every token.
    Hs256(hmac::Key),
    /// `n` and `e` without leading zeros, already checked against what ring accepts.
    Rs256(RsaPublicKeyComponents<Box<[u8]>>),
    /// The uncompressed point `0x04 || x || y`, checked to be on P-256.
    Es256(Box<[u8]>),
}

impl Key {
    fn alg(&self) -> Alg {
        match self {
            Key::Hs256(_) => Alg::Hs256,
            Key::Rs256(_) => Alg::Rs256,
            Key::Es256(_) => Alg::Es256,
        }
    }

    fn verifies(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        match self {
            // Constant-time comparison; a wrong length fails too.
            Key::Hs256(key) => hmac::verify(key, signing_input, signature).is_ok(),
            Key::Rs256(key) => key.verify(&signature::RSA_PKCS1_2048_8192_SHA256, signing_input, signature).is_ok(),
            // Exactly 64 bytes `r || s` (RFC 7518 section 3.4), not DER.
            Key::Es256(point) => signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(signing_input, signature)
                .is_ok(),
        }
    }

    /// An RS256 key from the big-endian modulus and exponent. ring checks a key each
    /// time it verifies and then only says "no"; these are its checks (ring 0.17
    /// `rsa::PublicKey::from_modulus_and_exponent`, with the modulus floor raised to
    /// [`MIN_RSA_BITS`] exactly), made once here so that an unusable key is an error when
    /// it is loaded rather than every token's [`AuthError::BadSignature`].
    fn rs256(n: &[u8], e: &[u8]) -> Result<Key, KeyError> {
        let unusable =
            |why: &str| KeyError::NotAPublicKey { alg: Alg::Rs256, detail: format!("not a usable RSA key: {why}") };
        let (n, e) = (strip_leading_zeros(n), strip_leading_zeros(e));
        let bits = n.first().map_or(0, |&top| n.len() as u32 * 8 - top.leading_zeros());
        if bits < MIN_RSA_BITS as u32 {
            return Err(KeyError::RsaTooSmall { bits });
        }
        if bits > MAX_RSA_BITS {
            return Err(unusable(&format!("the modulus has {bits} bits, more than {MAX_RSA_BITS}")));
        }
        if n[n.len() - 1] & 1 == 0 {
            return Err(unusable("the modulus is even"));
        }
        let e_value = match e.len() {
            1..=5 => e.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b)),
            _ => return Err(unusable("the public exponent is zero or longer than 33 bits")),
        };
        if !(3..1 << 33).contains(&e_value) || e_value & 1 == 0 {
            return Err(unusable("the public exponent must be odd, at least 3 and under 2^33"));
        }
        Ok(Key::Rs256(RsaPublicKeyComponents { n: n.into(), e: e.into() }))
    }

    /// An ES256 key from a SEC1 point, which must be uncompressed (`0x04 || x || y`, what
    /// `openssl pkey -pubout` and JWKs carry; ring takes no other form) and on P-256.
    fn es256(point: &[u8]) -> Result<Key, String> {
        if point.len() != 65 || point[0] != 4 {
            return Err(match point.first() {
                Some(2 | 3) if point.len() == 33 => "a compressed P-256 point; give the key uncompressed \
                                                     (`openssl ec -pubin -conv_form uncompressed -pubout`)"
                    .into(),
                _ => format!("not an uncompressed P-256 point (0x04, x, y: 65 bytes; this is {} bytes)", point.len()),
            });
        }
        // ring checks that the point is on the curve before each signature check, but it
        // has no public call that only parses a point; ECDH with a throwaway key runs the
        // same check (`ec::suite_b::public_key::parse_uncompressed_point`) and reports it.
        let rng = ring::rand::SystemRandom::new();
        let own = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
            .map_err(|_| "no randomness for the P-256 point check".to_owned())?;
        agreement::agree_ephemeral(own, &agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, point), |_| ())
            .map_err(|_| "not a point on P-256".to_owned())?;
        Ok(Key::Es256(point.into()))
    }
}

/// Largest RSA modulus ring verifies with, in bits.
const MAX_RSA_BITS: u32 = 8192;

fn strip_leading_zeros(mut b: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = b {
        b = rest;
    }
    b
}

/// The DER of a PEM public key: `PUBLIC KEY` (SubjectPublicKeyInfo) or `RSA PUBLIC KEY`
/// (PKCS#1), as the RSA modulus and exponent or the EC point.
enum PublicKeyDer<'a> {
    Rsa {
        n: &'a [u8],
        e: &'a [u8],
    },
    /// `algorithm` and `parameters` of a SubjectPublicKeyInfo that is not RSA.
    Other {
        algorithm: ObjectIdentifier,
        curve: Option<ObjectIdentifier>,
        key: &'a [u8],
    },
}

/// rsaEncryption (RFC 8017 appendix A.1).
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// id-ecPublicKey and the named curve secp256r1 (RFC 5480 section 2.1.1).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

impl<'a> PublicKeyDer<'a> {
    fn parse(label: &str, der: &'a [u8]) -> Result<Self, String> {
        let rsa = |der: &'a [u8]| -> Result<Self, String> {
            let key = pkcs1::RsaPublicKey::<UintRef<'a>>::from_der(der).map_err(|e| format!("PKCS#1: {e}"))?;
            Ok(PublicKeyDer::Rsa { n: key.modulus.as_bytes(), e: key.public_exponent.as_bytes() })
        };
        match label {
            "RSA PUBLIC KEY" => rsa(der),
            "PUBLIC KEY" => {
                let spki = SubjectPublicKeyInfoRef::from_der(der).map_err(|e| format!("SubjectPublicKeyInfo: {e}"))?;
                let key = spki.subject_public_key.as_bytes().ok_or("the key's BIT STRING has unused bits")?;
                let (algorithm, curve) = spki.algorithm.oids().map_err(|e| format!("SubjectPublicKeyInfo: {e}"))?;
                if algorithm == RSA_ENCRYPTION {
                    return rsa(key);
                }
                Ok(PublicKeyDer::Other { algorithm, curve, key })
            }
            other => Err(format!("a PEM {other:?} section")),
        }
    }
}

/// One verification key: its algorithm is fixed by what it is, its `kid` is optional.
#[derive(Clone)]
pub struct VerifyKey {
    kid: Option<String>,
    key: Key,
}

impl VerifyKey {
    /// An HS256 key: a shared secret of at least [`MIN_SECRET_LEN`] bytes; shorter is
    /// [`KeyError::SecretTooShort`].
    pub fn secret(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError::SecretTooShort { len: secret.len() });
        }
        Ok(VerifyKey { kid: None, key: Key::Hs256(hmac::Key::new(hmac::HMAC_SHA256, secret)) })
    }

    /// An RS256 or ES256 key from a PEM public key: `PUBLIC KEY` (SubjectPublicKeyInfo,
    /// what `openssl pkey -pubout` writes) for either, or `RSA PUBLIC KEY` (PKCS#1) for
    /// RS256. A [`KeyError`] says why not: the PEM does not parse or the key is not of the
    /// algorithm's type (RSA, or EC on P-256), an RSA key is under [`MIN_RSA_BITS`], or
    /// `alg` is [`Alg::Hs256`] (a public key is not a secret).
    pub fn public_key_pem(pem: &str, alg: Alg) -> Result<Self, KeyError> {
        let pem = pem.trim();
        let not_public = |detail: String| {
            if pem.contains("PRIVATE KEY-----") {
                KeyError::PrivateKey { alg }
            } else {
                KeyError::NotAPublicKey { alg, detail }
            }
        };
        if alg == Alg::Hs256 {
            return Err(KeyError::PublicKeyForHmac);
        }
        let (label, doc) = der::Document::from_pem(pem).map_err(|e| not_public(e.to_string()))?;
        let key = match (alg, PublicKeyDer::parse(label, doc.as_bytes()).map_err(not_public)?) {
            (Alg::Rs256, PublicKeyDer::Rsa { n, e }) => Key::rs256(n, e)?,
            (Alg::Rs256, PublicKeyDer::Other { .. }) => {
                return Err(not_public("the key is not RSA (rsaEncryption)".into()))
            }
            (_, PublicKeyDer::Other { algorithm, curve, key }) if algorithm == EC_PUBLIC_KEY => match curve {
                Some(c) if c == SECP256R1 => Key::es256(key).map_err(not_public)?,
                Some(c) => {
                    return Err(not_public(format!("the EC key is on curve {c}, not P-256 (1.2.840.10045.3.1.7)")))
                }
                None => return Err(not_public("the EC key names no curve; P-256 is required".into())),
            },
            _ => return Err(not_public("the key is not EC (id-ecPublicKey)".into())),
        };
        Ok(VerifyKey { kid: None, key })
    }

    /// Names the key: a token whose header has `"kid": kid` is checked with this key only.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The key's algorithm.
    pub fn alg(&self) -> Alg {
        self.key.alg()
    }

    /// The key's `kid`, if it has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No key material: a secret in a log line is a leaked secret.
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("alg", &self.alg()).finish_non_exhaustive()
    }
}

/// The keys a verifier accepts: at least one, no `kid` twice.
#[derive(Clone, Debug)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    /// A set of `keys`: [`KeyError::NoKeys`] when empty, [`KeyError::DuplicateKid`] when
    /// two share a `kid`.
    pub fn new(keys: Vec<VerifyKey>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        for (i, k) in keys.iter().enumerate() {
            if let Some(kid) = k.kid() {
                if keys[..i].iter().any(|o| o.kid() == Some(kid)) {
                    return Err(KeyError::DuplicateKid(kid.to_owned()));
                }
            }
        }
        Ok(KeySet { keys })
    }

    /// Reads a JSON Web Key Set (RFC 7517 section 5): `{"keys": [...]}`. Each key has
    /// `kty` `oct` (`k`: the HS256 secret, base64url), `RSA` (`n`, `e`) or `EC` (`crv`
    /// `P-256`, `x`, `y`); optionally `kid` and `alg`, which must then be the key type's
    /// algorithm (HS256, RS256, ES256). Keys with `"use": "enc"` are encryption keys and
    /// are left out. The set is taken whole or not at all: any key that does not parse,
    /// is of an unsupported type, or is too weak makes the whole set a [`KeyError`].
    pub fn from_jwks(json: &str) -> Result<Self, KeyError> {
        let bad = |detail: &str| KeyError::Jwks { key: None, detail: detail.to_owned() };
        let doc: Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
        let list = doc.get("keys").and_then(Value::as_array).ok_or_else(|| bad("no \"keys\" array"))?;
        let mut keys = Vec::with_capacity(list.len());
        for (i, jwk) in list.iter().enumerate() {
            let err = |detail: String| KeyError::Jwks { key: Some(i), detail };
            let jwk = jwk.as_object().ok_or_else(|| err("not a JSON object".into()))?;
            if jwk.get("use").is_some_and(|u| u != "sig") {
                continue;
            }
            let key = jwk_key(jwk).map_err(err)?;
            keys.push(match jwk.get("kid") {
                None => key,
                Some(Value::String(kid)) => key.with_kid(kid.clone()),
                Some(_) => return Err(err("\"kid\" is not a string".into())),
            });
        }
        KeySet::new(keys)
    }

    /// The keys, in the order given.
    pub fn keys(&self) -> &[VerifyKey] {
        &self.keys
    }
}

/// One JWK (RFC 7518 section 6) as a key, or what is wrong with it.
fn jwk_key(jwk: &Map<String, Value>) -> Result<VerifyKey, String> {
    let field = |name: &str| -> Result<Vec<u8>, String> {
        let v = jwk.get(name).and_then(Value::as_str).ok_or_else(|| format!("no \"{name}\" string"))?;
        B64URL.decode(v).map_err(|_| format!("\"{name}\" is not base64url without padding"))
    };
    let kty = jwk.get("kty").and_then(Value::as_str).ok_or("no \"kty\" string")?;
    let key = match kty {
        "oct" => VerifyKey::secret(&field("k")?).map_err(|e| e.to_string())?,
        "RSA" => {
            let (n, e) = (field("n")?, field("e")?);
            let key = Key::rs256(&n, &e).map_err(|e| match e {
                KeyError::NotAPublicKey { detail, .. } => detail,
                e => e.to_string(),
            })?;
            VerifyKey { kid: None, key }
        }
        "EC" => {
            if jwk.get("crv").and_then(Value::as_str) != Some("P-256") {
                return Err("only EC keys on crv P-256 are supported (ES256)".into());
            }
            let (x, y) = (field("x")?, field("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("\"x\" and \"y\" must be 32 bytes each for P-256".into());
            }
            VerifyKey { kid: None, key: Key::es256(&[&[4][..], &x, &y].concat())? }
        }
        other => return Err(format!("kty {other:?} is not supported (oct, RSA, EC)")),
    };
    match jwk.get("alg") {
        None => Ok(key),
        Some(Value::String(a)) if a == key.alg().name() => Ok(key),
        // Named without serde_json's writer, which only this message would pull in.
        Some(Value::String(a)) => Err(format!("alg {a:?} does not match kty {kty} (which is {})", key.alg().name())),
        Some(_) => Err("\"alg\" is not a string".into()),
    }
}

/// Default for [`JwtVerifier::jti_capacity`]: ids remembered at most by the local
/// seen-set (about 100 bytes each: 10 MB).
pub const DEFAULT_JTI_CAPACITY: usize = 100_000;

/// Checks JWTs against a [`KeySet`]. Build it once at start-up, share it across workers.
/// Clones share the key set: [`JwtVerifier::replace_keys`] on one is seen by all.
#[derive(Clone)]
pub struct JwtVerifier {
    /// Read once per token (a read lock held for one `Arc` clone); replaced whole on a
    /// reload, so a token is never checked against half of an old and half of a new set.
    keys: Arc<RwLock<Arc<KeySet>>>,
    issuer: Option<String>,
    audiences: Vec<String>,
    leeway_secs: u64,
    require_exp: bool,
    max_token_len: usize,
    max_age_secs: Option<u64>,
    /// Where used `jti`s are recorded; `Some` exactly when `jti` is required.
    replay: Option<Arc<dyn ReplayStore>>,
}

impl JwtVerifier {
    /// An HS256 verifier with a shared secret of at least [`MIN_SECRET_LEN`] bytes;
    /// shorter is [`KeyError::SecretTooShort`].
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        Ok(Self::from_keys(KeySet::new(vec![VerifyKey::secret(secret)?])?))
    }

    /// An RS256 or ES256 verifier with one PEM public key ([`VerifyKey::public_key_pem`]).
    pub fn from_public_key_pem(pem: &str, alg: Alg) -> Result<Self, KeyError> {
        Ok(Self::from_keys(KeySet::new(vec![VerifyKey::public_key_pem(pem, alg)?])?))
    }

    /// A verifier with the keys of `keys`.
    pub fn from_keys(keys: KeySet) -> Self {
        JwtVerifier {
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            issuer: None,
            audiences: Vec::new(),
            leeway_secs: DEFAULT_LEEWAY.as_secs(),
            require_exp: true,
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
            max_age_secs: None,
            replay: None,
        }
    }

    /// Replaces the whole key set, for this verifier and its clones, while others
    /// verify: tokens checked from now on use `keys`; connections already open are not
    /// touched.
    pub fn replace_keys(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    /// The key set in use.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Requires `iss` to equal `issuer` exactly. Default: `iss` is not checked.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Adds an accepted audience; `aud` (a string or an array of strings) must name one
    /// of them. Default: none, and then a token that has `aud` at all is refused, since
    /// this server cannot be the audience it names (RFC 7519 section 4.1.3).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Clock skew tolerated on `exp` and `nbf`, whole seconds. Default [`DEFAULT_LEEWAY`].
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway_secs = leeway.as_secs();
        self
    }

    /// Whether a token without `exp` is refused ([`AuthError::MissingExpiry`]). Default
    /// `true`: a token that never expires is a password that can leak.
    pub fn require_exp(mut self, require: bool) -> Self {
        self.require_exp = require;
        self
    }

    /// Longest token accepted, in bytes, checked before anything is decoded. Default
    /// [`DEFAULT_MAX_TOKEN_LEN`].
    pub fn max_token_len(mut self, len: usize) -> Self {
        self.max_token_len = len;
        self
    }

    /// Refuses a token whose `iat` is missing or more than `age` (plus the leeway) in the
    /// past ([`AuthError::TooOld`]): bounds how long a captured token can be replayed,
    /// even without `jti`. Default: `iat` is not checked.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age_secs = Some(age.as_secs());
        self
    }

    /// Requires a `jti` claim ([`AuthError::MissingJti`]) and refuses one already used
    /// ([`AuthError::Replayed`]) until the token it came with expires. The ids are kept
    /// in a local [`SeenSet`] of [`DEFAULT_JTI_CAPACITY`] (see
    /// [`JwtVerifier::jti_capacity`]), unless [`JwtVerifier::replay_store`] gives another
    /// store. `false` (the default) checks no `jti`.
    pub fn require_jti(mut self, require: bool) -> Self {
        self.replay = match (require, self.replay.take()) {
            (false, _) => None,
            (true, Some(store)) => Some(store),
            (true, None) => Some(Arc::new(SeenSet::new(DEFAULT_JTI_CAPACITY))),
        };
        self
    }

    /// Requires `jti`, kept in a local [`SeenSet`] of at most `capacity` ids. When it is
    /// full of ids whose tokens have not expired, new tokens are refused with
    /// [`AuthError::ReplayCacheFull`] (503) rather than an id forgotten early.
    pub fn jti_capacity(mut self, capacity: usize) -> Self {
        self.replay = Some(Arc::new(SeenSet::new(capacity)));
        self
    }

    /// Requires `jti`, recorded in `store` (shared between nodes, such as Redis).
    pub fn replay_store(mut self, store: Arc<dyn ReplayStore>) -> Self {
        self.replay = Some(store);
        self
    }

    /// The algorithm of the first key of the set.
    pub fn alg(&self) -> Alg {
        self.keys().keys[0].alg()
    }

    /// Finds the request's bearer token ([`bearer::find_token`]) and verifies it.
    pub fn verify_request(&self, req: &Request<'_, '_>, now_unix: u64) -> Result<Claims, AuthError> {
        let (token, _) = bearer::find_token(req)?;
        self.verify(token, now_unix)
    }

    /// Verifies a compact JWS token at time `now_unix` (seconds since the epoch).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, AuthError> {
        if token.len() > self.max_token_len {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header_json = decode_object(header)?;
        let alg = match header_json.get("alg") {
            Some(Value::String(alg)) => alg,
            _ => return Err(AuthError::Malformed),
        };
        if alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::AlgNone);
        }
        // RFC 7515 section 4.1.11: extensions we do not implement must be refused.
        if header_json.contains_key("crit") {
            return Err(AuthError::Malformed);
        }
        let kid = match header_json.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(AuthError::Malformed),
        };
        let keys = self.keys();
        let mut candidates = keys.keys.iter().filter(|k| match kid {
            Some(kid) => k.kid() == Some(kid),
            None => k.alg().name() == alg,
        });
        let signature = B64URL.decode(signature).map_err(|_| AuthError::Malformed)?;
        let signing_input = &token.as_bytes()[..header.len() + 1 + payload.len()];
        match kid {
            Some(_) => {
                // `KeySet::new` makes a kid name at most one key.
                let key = candidates.next().ok_or(AuthError::UnknownKey)?;
                if key.alg().name() != alg {
                    return Err(AuthError::AlgorithmMismatch);
                }
                if !key.key.verifies(signing_input, &signature) {
                    return Err(AuthError::BadSignature);
                }
            }
            None => {
                let mut any = false;
                let mut ok = false;
                for key in candidates {
                    any = true;
                    if key.key.verifies(signing_input, &signature) {
                        ok = true;
                        break;
                    }
                }
                if !any {
                    return Err(AuthError::AlgorithmMismatch);
                }
                if !ok {
                    return Err(AuthError::BadSignature);
                }
            }
        }
        let claims = Claims::from_map(decode_object(payload)?)?;
        self.check_claims(&claims, now_unix)?;
        self.use_up_jti(&claims, now_unix)?;
        Ok(claims)
    }

    /// The last check: records the token's `jti` as used until the token expires.
    fn use_up_jti(&self, claims: &Claims, now: u64) -> Result<(), AuthError> {
        let Some(store) = &self.replay else {
            return Ok(());
        };
        let jti = match claims.raw.get("jti") {
            Some(Value::String(jti)) if !jti.is_empty() => jti,
            Some(Value::String(_)) | None => return Err(AuthError::MissingJti),
            Some(_) => return Err(AuthError::Malformed),
        };
        // Accepted up to exp + leeway, so remembered as long; without exp, up to the
        // max age. Neither: the id could never be forgotten, so the token is refused.
        let by_exp = claims.exp.map(|e| e.saturating_add(self.leeway_secs));
        let by_age = claims
            .iat
            .zip(self.max_age_secs)
            .map(|(iat, age)| iat.saturating_add(age).saturating_add(self.leeway_secs));
        let until = match (by_exp, by_age) {
            (Some(a), Some(b)) => a.min(b),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => return Err(AuthError::MissingExpiry),
        };
        store.claim(jti, until, now)
    }

    fn check_claims(&self, claims: &Claims, now: u64) -> Result<(), AuthError> {
        let leeway = self.leeway_secs;
        match claims.exp {
            // RFC 7519 section 4.1.4: valid only while now is before exp.
            Some(exp) if now >= exp.saturating_add(leeway) => return Err(AuthError::Expired),
            None if self.require_exp => return Err(AuthError::MissingExpiry),
            _ => {}
        }
        if claims.nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
            return Err(AuthError::NotYetValid);
        }
        if let Some(age) = self.max_age_secs {
            match claims.iat {
                Some(iat) if now <= iat.saturating_add(age).saturating_add(leeway) => {}
                _ => return Err(AuthError::TooOld),
            }
        }
        if let Some(want) = &self.issuer {
            if claims.iss.as_ref() != Some(want) {
                return Err(AuthError::WrongIssuer);
            }
        }
        let aud_ok = match claims.raw.get("aud") {
            None => self.audiences.is_empty(),
            Some(Value::String(a)) => self.audiences.contains(a),
            Some(Value::Array(list)) => {
                list.iter().any(|a| a.as_str().is_some_and(|a| self.audiences.iter().any(|w| w == a)))
            }
            Some(_) => return Err(AuthError::Malformed),
        };
        if aud_ok {
            Ok(())
        } else {
            Err(AuthError::WrongAudience)
        }
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No key material: a secret in a log line is a leaked secret.
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys().keys)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("leeway_secs", &self.leeway_secs)
            .field("require_exp", &self.require_exp)
            .field("max_token_len", &self.max_token_len)
            .field("max_age_secs", &self.max_age_secs)
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

/// The claims of a verified token.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Claims {
    /// `sub`: whom the token is about.
    pub sub: Option<String>,
    /// `iss`: who issued it.
    pub iss: Option<String>,
    /// `exp`, seconds since the epoch (a fractional value rounded down).
    pub exp: Option<u64>,
    /// `nbf`, seconds since the epoch (a fractional value rounded up).
    pub nbf: Option<u64>,
    /// `iat`, seconds since the epoch (a fractional value rounded down).
    pub iat: Option<u64>,
    /// Every claim as sent, registered ones included.
    pub raw: Map<String, Value>,
}

impl Claims {
    /// The claim `name` as sent, if present.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.raw.get(name)
    }

    /// Reads the registered claims; one of the wrong JSON type is [`AuthError::Malformed`].
    fn from_map(raw: Map<String, Value>) -> Result<Self, AuthError> {
        let string = |name| match raw.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(AuthError::Malformed),
        };
        let date = |name, round_up: bool| match raw.get(name) {
            None => Ok(None),
            Some(v) => numeric_date(v, round_up).map(Some).ok_or(AuthError::Malformed),
        };
        Ok(Claims {
            sub: string("sub")?,
            iss: string("iss")?,
            exp: date("exp", false)?,
            nbf: date("nbf", true)?,
            iat: date("iat", false)?,
            raw,
        })
    }
}

/// A NumericDate (RFC 7519 section 2): non-negative seconds, possibly fractional.
fn numeric_date(v: &Value, round_up: bool) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64().filter(|f| f.is_finite() && *f >= 0.0)?;
    // `as` saturates at u64::MAX, which is "never" for exp and nbf alike.
    Some(if round_up { f.ceil() as u64 } else { f.floor() as u64 })
}

/// base64url without padding, then a JSON object.
fn decode_object(part: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = B64URL.decode(part).map_err(|_| AuthError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::with_request;
    // Tokens are signed with RustCrypto (dev-dependencies), an implementation independent
    // of the verifier's ring, or come from openssl (tests/keys/make-fixtures.sh).
    use ::hmac::{Hmac, KeyInit, Mac};
    use p256::ecdsa::signature::{SignatureEncoding, Signer};
    use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
    use rsa::traits::PublicKeyParts;
    use sha2::Sha256;

    const SECRET: &[u8] = b"a shared secret of at least 32 bytes!";
    const RS_PUBLIC: &str = include_str!("../../tests/keys/rs256-public.pem");
    const RS_PUBLIC_PKCS1: &str = include_str!("../../tests/keys/rs256-public-pkcs1.pem");
    const RS_PRIVATE: &str = include_str!("../../tests/keys/rs256-private.pem");
    const ES_PUBLIC: &str = include_str!("../../tests/keys/es256-public.pem");
    const ES_PRIVATE: &str = include_str!("../../tests/keys/es256-private.pem");
    /// Signed by openssl (tests/keys/make-fixtures.sh), over `OPENSSL_CLAIMS`.
    const RS_OPENSSL: &str = include_str!("../../tests/keys/rs256-openssl.jwt");
    const ES_OPENSSL: &str = include_str!("../../tests/keys/es256-openssl.jwt");

    const NOW: u64 = 1_700_000_000;
    const CLAIMS: &str = r#"{"sub":"alice","exp":1700000600,"iat":1700000000}"#;

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        B64URL.encode(bytes)
    }

    fn hmac(secret: &[u8], input: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// `header_json.claims_json.` signed with `sign`, all parts base64url.
    fn token(header_json: &str, claims_json: &str, sign: impl FnOnce(&str) -> Vec<u8>) -> String {
        let input = format!("{}.{}", b64(header_json), b64(claims_json));
        let sig = sign(&input);
        format!("{input}.{}", b64(sig))
    }

    fn hs256(claims: &str) -> String {
        token(r#"{"alg":"HS256","typ":"JWT"}"#, claims, |i| hmac(SECRET, i))
    }

    fn rs256(claims: &str) -> String {
        let key = rsa::pkcs1v15::SigningKey::<Sha256>::from_pkcs8_pem(RS_PRIVATE).unwrap();
        token(r#"{"alg":"RS256","typ":"JWT"}"#, claims, |i| key.sign(i.as_bytes()).to_vec())
    }

    fn es256(claims: &str) -> String {
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(ES_PRIVATE).unwrap();
        token(r#"{"alg":"ES256"}"#, claims, |i| {
            let sig: p256::ecdsa::Signature = key.sign(i.as_bytes());
            sig.to_bytes().to_vec()
        })
    }

    fn hs() -> JwtVerifier {
        JwtVerifier::from_secret(SECRET).unwrap()
    }

    fn rs() -> JwtVerifier {
        JwtVerifier::from_public_key_pem(RS_PUBLIC, Alg::Rs256).unwrap()
    }

    fn es() -> JwtVerifier {
        JwtVerifier::from_public_key_pem(ES_PUBLIC, Alg::Es256).unwrap()
    }

    /// Replaces the signature part.
    fn with_signature(token: &str, sig: &str) -> String {
        format!("{}.{sig}", &token[..token.rfind('.').unwrap()])
    }

    #[test]
    fn valid_hs256() {
        let claims = hs().verify(&hs256(CLAIMS), NOW).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert_eq!(claims.exp, Some(1_700_000_600));
        assert_eq!(claims.iat, Some(NOW));
        assert_eq!(claims.nbf, None);
        assert_eq!(claims.get("sub"), Some(&Value::from("alice")));
    }

    #[test]
    fn valid_rs256() {
        let claims = rs().verify(&rs256(CLAIMS), NOW).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        let pkcs1 = JwtVerifier::from_public_key_pem(RS_PUBLIC_PKCS1, Alg::Rs256).unwrap();
        assert_eq!(pkcs1.verify(&rs256(CLAIMS), NOW), Ok(claims));
    }

    #[test]
    fn valid_es256() {
        let claims = es().verify(&es256(CLAIMS), NOW).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert_eq!(claims.exp, Some(1_700_000_600));
    }

    #[test]
    fn openssl_signed_tokens_verify() {
        for (verifier, token) in [(rs(), RS_OPENSSL), (es(), ES_OPENSSL)] {
            let verifier = verifier.issuer("https://issuer.example").audience("wsloop");
            let claims = verifier.verify(token.trim(), NOW).unwrap();
            assert_eq!(claims.sub.as_deref(), Some("alice"));
            assert_eq!((claims.nbf, claims.exp), (Some(1_700_000_000), Some(2_000_000_000)));
        }
    }

    #[test]
    fn expired_with_leeway() {
        let exp = 1_700_000_600;
        let token = hs256(CLAIMS);
        // Default leeway 30 s: valid up to exp + 29, refused from exp + 30.
        assert!(hs().verify(&token, exp + 29).is_ok());
        assert_eq!(hs().verify(&token, exp + 30), Err(AuthError::Expired));
        let strict = hs().leeway(Duration::ZERO);
        assert!(strict.verify(&token, exp - 1).is_ok());
        assert_eq!(strict.verify(&token, exp), Err(AuthError::Expired));
        assert_eq!(rs().verify(&rs256(CLAIMS), exp + 3600), Err(AuthError::Expired));
        assert_eq!(es().verify(&es256(CLAIMS), exp + 3600), Err(AuthError::Expired));
    }

    #[test]
    fn not_yet_valid_with_leeway() {
        let nbf = NOW + 100;
        let token = hs256(&format!(r#"{{"exp":{},"nbf":{nbf}}}"#, NOW + 1000));
        assert_eq!(hs().verify(&token, nbf - 31), Err(AuthError::NotYetValid));
        assert!(hs().verify(&token, nbf - 30).is_ok());
        assert_eq!(hs().leeway(Duration::ZERO).verify(&token, nbf - 1), Err(AuthError::NotYetValid));
        assert!(hs().leeway(Duration::ZERO).verify(&token, nbf).is_ok());
    }

    #[test]
    fn exp_required_by_default() {
        let token = hs256(r#"{"sub":"alice"}"#);
        assert_eq!(hs().verify(&token, NOW), Err(AuthError::MissingExpiry));
        assert!(hs().require_exp(false).verify(&token, NOW).is_ok());
    }

    #[test]
    fn fractional_dates_round_toward_refusal() {
        let token = hs256(r#"{"exp":1700000600.9,"nbf":1700000000.1}"#);
        let claims = hs().verify(&token, NOW + 1).unwrap();
        assert_eq!((claims.exp, claims.nbf), (Some(1_700_000_600), Some(1_700_000_001)));
        assert_eq!(hs().leeway(Duration::ZERO).verify(&token, NOW), Err(AuthError::NotYetValid));
    }

    #[test]
    fn wrong_signature() {
        // Signed with another key of the right kind.
        let other = token(r#"{"alg":"HS256"}"#, CLAIMS, |i| hmac(b"another secret, also 32 bytes long", i));
        assert_eq!(hs().verify(&other, NOW), Err(AuthError::BadSignature));
        // Payload changed after signing.
        for (verifier, good) in [(hs(), hs256(CLAIMS)), (rs(), rs256(CLAIMS)), (es(), es256(CLAIMS))] {
            let forged = hs256(r#"{"sub":"mallory","exp":1700000600}"#);
            let payload = forged.split('.').nth(1).unwrap();
            let mut parts: Vec<&str> = good.split('.').collect();
            parts[1] = payload;
            assert_eq!(verifier.verify(&parts.join("."), NOW), Err(AuthError::BadSignature), "{:?}", verifier.alg());
            // Signature truncated, emptied, or one bit flipped.
            let sig = B64URL.decode(good.rsplit('.').next().unwrap()).unwrap();
            let mut flipped = sig.clone();
            flipped[5] ^= 1;
            for bad in [b64(&sig[..sig.len() - 1]), String::new(), b64(&flipped), b64([&sig[..], &[0u8][..]].concat())]
            {
                assert_eq!(verifier.verify(&with_signature(&good, &bad), NOW), Err(AuthError::BadSignature));
            }
        }
        // ES256 signature in DER, as openssl writes it, is not JWS.
        let es_good = es256(CLAIMS);
        let raw = B64URL.decode(es_good.rsplit('.').next().unwrap()).unwrap();
        let der = p256::ecdsa::Signature::from_slice(&raw).unwrap().to_der();
        assert_eq!(es().verify(&with_signature(&es_good, &b64(der.as_bytes())), NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn alg_none_is_always_refused() {
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
            let unsigned = format!("{}.{}.", b64(&header), b64(CLAIMS));
            let with_sig = token(&header, CLAIMS, |i| hmac(SECRET, i));
            for v in [hs(), rs(), es()] {
                assert_eq!(v.verify(&unsigned, NOW), Err(AuthError::AlgNone), "{alg}");
                assert_eq!(v.verify(&with_sig, NOW), Err(AuthError::AlgNone), "{alg}");
            }
        }
    }

    #[test]
    fn wrong_algorithm() {
        assert_eq!(rs().verify(&hs256(CLAIMS), NOW), Err(AuthError::AlgorithmMismatch));
        assert_eq!(es().verify(&hs256(CLAIMS), NOW), Err(AuthError::AlgorithmMismatch));
        assert_eq!(hs().verify(&rs256(CLAIMS), NOW), Err(AuthError::AlgorithmMismatch));
        assert_eq!(es().verify(&rs256(CLAIMS), NOW), Err(AuthError::AlgorithmMismatch));
        assert_eq!(rs().verify(&es256(CLAIMS), NOW), Err(AuthError::AlgorithmMismatch));
        assert_eq!(hs().verify(&es256(CLAIMS), NOW), Err(AuthError::AlgorithmMismatch));
        // Names are case-sensitive (RFC 7515 section 4.1.1).
        let lower = token(r#"{"alg":"hs256"}"#, CLAIMS, |i| hmac(SECRET, i));
        assert_eq!(hs().verify(&lower, NOW), Err(AuthError::AlgorithmMismatch));
    }

    #[test]
    fn rs256_public_key_as_hmac_secret_is_refused() {
        // The classic confusion: the attacker knows the public key and HMACs a token with
        // its PEM text (and variants of it) as the secret, hoping the verifier feeds its
        // "key" to whatever `alg` says.
        let pem = RS_PUBLIC;
        let der = rsa::PublicKey::from_public_key_pem(pem).unwrap();
        let der = rsa::pkcs8::EncodePublicKey::to_public_key_der(&der).unwrap();
        for secret in [pem.as_bytes(), pem.trim().as_bytes(), der.as_bytes()] {
            let forged = token(r#"{"alg":"HS256","typ":"JWT"}"#, CLAIMS, |i| hmac(secret, i));
            assert_eq!(rs().verify(&forged, NOW), Err(AuthError::AlgorithmMismatch));
        }
        // And a public key can never be configured as an HMAC secret through the PEM API.
        assert_eq!(JwtVerifier::from_public_key_pem(pem, Alg::Hs256).unwrap_err(), KeyError::PublicKeyForHmac);
    }

    #[test]
    fn malformed_tokens() {
        let sign = |h: &str, p: &str| {
            let input = format!("{h}.{p}");
            format!("{input}.{}", b64(hmac(SECRET, &input)))
        };
        let h = b64(r#"{"alg":"HS256"}"#);
        let p = b64(CLAIMS);
        let cases = [
            String::new(),
            "abc".into(),
            format!("{h}.{p}"),
            format!("{h}.{p}.sig.extra"),
            format!("{h}.{p}.{}.", b64(hmac(SECRET, &format!("{h}.{p}")))),
            // Bad base64url in the header, the payload, the signature.
            sign("!!!", &p),
            sign(&h, "eyJzdWIiOiJhIn0*"),
            format!("{h}.{p}.a+b/"),
            // Padding is not allowed in JWS.
            sign(&format!("{h}="), &p),
            // Not JSON, or not an object.
            sign(&b64("{alg:HS256}"), &p),
            sign(&b64(r#"["HS256"]"#), &p),
            sign(&h, &b64("not json")),
            sign(&h, &b64(r#"["alice"]"#)),
            sign(&h, &b64("")),
            // alg missing or not a string.
            sign(&b64(r#"{"typ":"JWT"}"#), &p),
            sign(&b64(r#"{"alg":256}"#), &p),
            // Registered claims of the wrong type.
            sign(&h, &b64(r#"{"exp":"1700000600"}"#)),
            sign(&h, &b64(r#"{"exp":-1}"#)),
            sign(&h, &b64(r#"{"exp":1700000600,"nbf":true}"#)),
            sign(&h, &b64(r#"{"exp":1700000600,"sub":42}"#)),
            sign(&h, &b64(r#"{"exp":1700000600,"iss":["a"]}"#)),
            sign(&h, &b64(r#"{"exp":1700000600,"aud":{"a":1}}"#)),
            // A critical extension we do not implement.
            sign(&b64(r#"{"alg":"HS256","crit":["b64"],"b64":false}"#), &p),
        ];
        for t in &cases {
            assert_eq!(hs().verify(t, NOW), Err(AuthError::Malformed), "{t:?}");
        }
        // Over the length limit, refused before decoding.
        let good = hs256(CLAIMS);
        assert!(hs().max_token_len(good.len()).verify(&good, NOW).is_ok());
        assert_eq!(hs().max_token_len(good.len() - 1).verify(&good, NOW), Err(AuthError::Malformed));
        let huge = hs256(&format!(r#"{{"exp":1700000600,"pad":"{}"}}"#, "x".repeat(DEFAULT_MAX_TOKEN_LEN)));
        assert_eq!(hs().verify(&huge, NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn issuer() {
        let v = hs().issuer("https://issuer.example");
        assert!(v.verify(&hs256(r#"{"exp":1700000600,"iss":"https://issuer.example"}"#), NOW).is_ok());
        for claims in [r#"{"exp":1700000600,"iss":"https://evil.example"}"#, r#"{"exp":1700000600}"#] {
            assert_eq!(v.verify(&hs256(claims), NOW), Err(AuthError::WrongIssuer), "{claims}");
        }
        // Not configured: any issuer.
        assert!(hs().verify(&hs256(r#"{"exp":1700000600,"iss":"anyone"}"#), NOW).is_ok());
    }

    #[test]
    fn audience() {
        let v = hs().audience("wsloop").audience("chat");
        for claims in [
            r#"{"exp":1700000600,"aud":"wsloop"}"#,
            r#"{"exp":1700000600,"aud":"chat"}"#,
            r#"{"exp":1700000600,"aud":["other","chat"]}"#,
        ] {
            assert!(v.verify(&hs256(claims), NOW).is_ok(), "{claims}");
        }
        for claims in [
            r#"{"exp":1700000600,"aud":"other"}"#,
            r#"{"exp":1700000600,"aud":["other",1]}"#,
            r#"{"exp":1700000600,"aud":[]}"#,
            r#"{"exp":1700000600}"#,
        ] {
            assert_eq!(v.verify(&hs256(claims), NOW), Err(AuthError::WrongAudience), "{claims}");
        }
        // No audience configured: a token addressed to someone is not for us.
        assert_eq!(hs().verify(&hs256(r#"{"exp":1700000600,"aud":"wsloop"}"#), NOW), Err(AuthError::WrongAudience));
        assert!(hs().verify(&hs256(CLAIMS), NOW).is_ok());
    }

    #[test]
    fn token_from_each_source() {
        let t = es256(CLAIMS);
        let auth = format!("Bearer {t}");
        let protocols = format!("chat, bearer.{t}");
        let query = format!("/ws?access_token={t}");
        let v = es();
        let sub = |r: Result<Claims, AuthError>| r.map(|c| c.sub);
        let alice = Ok(Some("alice".to_owned()));
        assert_eq!(sub(with_request("/ws", &[("Authorization", &auth)], |req| v.verify_request(req, NOW))), alice);
        assert_eq!(sub(with_request(&query, &[], |req| v.verify_request(req, NOW))), alice);
        let fields = [("Sec-WebSocket-Protocol", protocols.as_str())];
        with_request("/ws", &fields, |req| {
            assert_eq!(sub(v.verify_request(req, NOW)), alice);
            assert_eq!(bearer::client_protocols(req).collect::<Vec<_>>(), ["chat"]);
        });
        assert_eq!(with_request("/ws", &[], |req| v.verify_request(req, NOW)), Err(AuthError::Missing));
        let both = [("Authorization", auth.as_str()), ("Sec-WebSocket-Protocol", protocols.as_str())];
        assert_eq!(with_request("/ws", &both, |req| v.verify_request(req, NOW)), Err(AuthError::Ambiguous));
        let expired = with_request("/ws", &[("Authorization", &auth)], |req| v.verify_request(req, NOW + 3600));
        assert_eq!(expired, Err(AuthError::Expired));
    }

    #[test]
    fn unusable_keys() {
        let keys = |name| std::fs::read_to_string(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let short = JwtVerifier::from_secret(&SECRET[..31]).unwrap_err();
        assert_eq!(short, KeyError::SecretTooShort { len: 31 });
        assert_eq!(
            short.to_string(),
            "the HS256 secret has 31 bytes; RFC 7518 section 3.2 requires at least 32 bytes (as many as the SHA-256 \
             output)"
        );
        assert!(JwtVerifier::from_secret(&[7; 32]).is_ok());
        let cases = [
            (
                keys("rsa1024-public.pem"),
                Alg::Rs256,
                "the RSA key has 1024 bits; RFC 7518 section 3.3 requires at least 2048",
            ),
            (keys("p384-public.pem"), Alg::Es256, "not a P-256 EC public key"),
            (ES_PUBLIC.to_owned(), Alg::Rs256, "not an RSA public key"),
            (RS_PUBLIC.to_owned(), Alg::Es256, "not a P-256 EC public key"),
            (RS_PUBLIC_PKCS1.to_owned(), Alg::Es256, "not a P-256 EC public key"),
            (RS_PRIVATE.to_owned(), Alg::Rs256, "this is a private key; RS256 verification takes the public key"),
            ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_owned(), Alg::Rs256, "not an RSA"),
            ("not pem".to_owned(), Alg::Es256, "not a P-256 EC public key in PEM"),
        ];
        for (pem, alg, want) in &cases {
            let e = JwtVerifier::from_public_key_pem(pem, *alg).unwrap_err().to_string();
            assert!(e.contains(want), "{alg:?} {pem}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let v = JwtVerifier::from_secret(b"super-secret-value-0123456789abcdef").unwrap().audience("wsloop");
        let shown = format!("{v:?}");
        assert!(shown.contains("Hs256") && shown.contains("wsloop"), "{shown}");
        assert!(!shown.contains("super-secret"), "{shown}");
        assert_eq!(v.alg(), Alg::Hs256);
        assert_eq!(es().alg(), Alg::Es256);
        assert_eq!(rs().alg(), Alg::Rs256);
    }

    const JWKS: &str = include_str!("../../tests/keys/jwks.json");

    fn rs256_kid(kid: &str, claims: &str) -> String {
        let key = rsa::pkcs1v15::SigningKey::<Sha256>::from_pkcs8_pem(RS_PRIVATE).unwrap();
        token(&format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#), claims, |i| key.sign(i.as_bytes()).to_vec())
    }

    fn es256_header(header: &str, claims: &str) -> String {
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(ES_PRIVATE).unwrap();
        token(header, claims, |i| {
            let sig: p256::ecdsa::Signature = key.sign(i.as_bytes());
            sig.to_bytes().to_vec()
        })
    }

    #[test]
    fn jwks_keys_of_each_type_verify_and_kid_picks_the_key() {
        let v = JwtVerifier::from_keys(KeySet::from_jwks(JWKS).unwrap());
        let kids: Vec<_> = v.keys().keys().iter().map(|k| (k.kid().unwrap().to_owned(), k.alg())).collect();
        assert_eq!(kids, [("rsa-1".into(), Alg::Rs256), ("ec-1".into(), Alg::Es256), ("hs-1".into(), Alg::Hs256)]);
        assert!(v.verify(&rs256_kid("rsa-1", CLAIMS), NOW).is_ok());
        assert!(v.verify(&es256_header(r#"{"alg":"ES256","kid":"ec-1"}"#, CLAIMS), NOW).is_ok());
        let hs_kid = token(r#"{"alg":"HS256","kid":"hs-1"}"#, CLAIMS, |i| hmac(SECRET, i));
        assert!(v.verify(&hs_kid, NOW).is_ok());
        // Without kid: tried against the keys of the token's algorithm.
        for t in [rs256(CLAIMS), es256(CLAIMS), hs256(CLAIMS)] {
            assert!(v.verify(&t, NOW).is_ok(), "{t}");
        }
        // A kid no key has, even if the signature would verify with some key.
        assert_eq!(v.verify(&rs256_kid("rsa-2", CLAIMS), NOW), Err(AuthError::UnknownKey));
        assert_eq!(AuthError::UnknownKey.status(), 401);
        // The kid's key is of another algorithm than the token's.
        let confused = token(r#"{"alg":"HS256","kid":"rsa-1"}"#, CLAIMS, |i| hmac(RS_PUBLIC.as_bytes(), i));
        assert_eq!(v.verify(&confused, NOW), Err(AuthError::AlgorithmMismatch));
        assert_eq!(
            v.verify(&es256_header(r#"{"alg":"ES256","kid":"rsa-1"}"#, CLAIMS), NOW),
            Err(AuthError::AlgorithmMismatch)
        );
        // The right kid, a wrong signature.
        let forged =
            token(r#"{"alg":"HS256","kid":"hs-1"}"#, CLAIMS, |i| hmac(b"another secret, also 32 bytes long", i));
        assert_eq!(v.verify(&forged, NOW), Err(AuthError::BadSignature));
        // kid not a string; alg none with a kid.
        let odd = token(r#"{"alg":"HS256","kid":7}"#, CLAIMS, |i| hmac(SECRET, i));
        assert_eq!(v.verify(&odd, NOW), Err(AuthError::Malformed));
        let none = format!("{}.{}.", b64(r#"{"alg":"none","kid":"hs-1"}"#), b64(CLAIMS));
        assert_eq!(v.verify(&none, NOW), Err(AuthError::AlgNone));
        // No key of the token's algorithm at all.
        assert_eq!(hs().verify(&es256(CLAIMS), NOW), Err(AuthError::AlgorithmMismatch));
    }

    #[test]
    fn a_jwks_with_any_bad_key_is_refused_whole() {
        let good = r#"{"kty":"oct","kid":"a","k":"YSBzaGFyZWQgc2VjcmV0IG9mIGF0IGxlYXN0IDMyIGJ5dGVzIQ"}"#;
        let set = |bad: &str| KeySet::from_jwks(&format!(r#"{{"keys":[{good},{bad}]}}"#)).map(|_| ()).unwrap_err();
        let cases = [
            (r#"{"kty":"oct","k":"c2hvcnQ"}"#, "JWKS key 1: the HS256 secret has 5 bytes"),
            (r#"{"kty":"OKP","crv":"Ed25519","x":"AA"}"#, "kty \"OKP\" is not supported"),
            (r#"{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}"#, "only EC keys on crv P-256"),
            (r#"{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}"#, "32 bytes each"),
            (r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#, "JWKS key 1"),
            (
                r#"{"kty":"oct","alg":"RS256","k":"YSBzaGFyZWQgc2VjcmV0IG9mIGF0IGxlYXN0IDMyIGJ5dGVzIQ"}"#,
                "alg \"RS256\" does not match kty oct (which is HS256)",
            ),
            (
                r#"{"kty":"oct","alg":7,"k":"YSBzaGFyZWQgc2VjcmV0IG9mIGF0IGxlYXN0IDMyIGJ5dGVzIQ"}"#,
                "\"alg\" is not a string",
            ),
            (r#"{"kty":"oct","k":"not base64!"}"#, "not base64url"),
            (
                r#"{"kty":"oct","kid":"a","k":"YSBzaGFyZWQgc2VjcmV0IG9mIGF0IGxlYXN0IDMyIGJ5dGVzIQ"}"#,
                "two keys have kid",
            ),
            (r#""just a string""#, "not a JSON object"),
        ];
        for (bad, want) in cases {
            let e = set(bad).to_string();
            assert!(e.contains(want), "{bad}: {e:?} lacks {want:?}");
        }
        for doc in ["", "{", r#"{"keys":{}}"#, r#"{"other":[]}"#] {
            assert!(matches!(KeySet::from_jwks(doc), Err(KeyError::Jwks { key: None, .. })), "{doc}");
        }
        assert_eq!(KeySet::from_jwks(r#"{"keys":[]}"#).unwrap_err(), KeyError::NoKeys);
        // Encryption keys are left out, not an error; the RSA 1024-bit modulus is too weak.
        let enc = r#"{"keys":[{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}, {"kty":"oct","k":"YSBzaGFyZWQgc2VjcmV0IG9mIGF0IGxlYXN0IDMyIGJ5dGVzIQ"}]}"#;
        assert_eq!(KeySet::from_jwks(enc).unwrap().keys().len(), 1);
    }

    /// `{"keys":[{"kty":"RSA","n":n,"e":e}]}`, both base64url.
    fn rsa_jwks(n: &[u8], e: &[u8]) -> Result<KeySet, String> {
        KeySet::from_jwks(&format!(r#"{{"keys":[{{"kty":"RSA","n":"{}","e":"{}"}}]}}"#, b64(n), b64(e)))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn keys_ring_would_refuse_at_every_token_are_refused_when_loaded() {
        // The fixture's modulus (2048 bits): usable with e = 3 and with leading zero bytes
        // (some JWKS writers keep DER's sign byte), and then it verifies tokens.
        let rs_n = rsa::PublicKey::from_public_key_pem(RS_PUBLIC).unwrap().n().to_be_bytes().to_vec();
        let rs_n = strip_leading_zeros(&rs_n).to_vec();
        assert!(rsa_jwks(&rs_n, &[3]).is_ok());
        let padded = rsa_jwks(&[&[0, 0][..], &rs_n].concat(), &[0, 1, 0, 1]).unwrap();
        assert!(JwtVerifier::from_keys(padded).verify(&rs256(CLAIMS), NOW).is_ok());
        let mut even = rs_n.clone();
        *even.last_mut().unwrap() &= !1;
        let mut big = vec![0xff; 8200 / 8];
        big[0] = 0x01; // 8193 bits
        let cases: [(&[u8], &[u8], &str); 7] = [
            (&even, &[1, 0, 1], "not a usable RSA key: the modulus is even"),
            (&big, &[1, 0, 1], "the modulus has 8193 bits, more than 8192"),
            (&rs_n, &[1], "the public exponent must be odd, at least 3"),
            (&rs_n, &[1, 0, 0], "the public exponent must be odd"),
            (&rs_n, &[2, 0, 0, 0, 1], "under 2^33"),
            (&rs_n, &[1, 0, 0, 0, 0, 1], "zero or longer than 33 bits"),
            (&rs_n, &[0], "zero or longer than 33 bits"),
        ];
        for (n, e, want) in cases {
            let got = rsa_jwks(n, e).unwrap_err();
            assert!(got.starts_with("JWKS key 0: ") && got.contains(want), "e={e:?}: {got:?} lacks {want:?}");
        }
        // x and y of the right size, not on the curve.
        let off_curve =
            format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}]}}"#, b64([1; 32]), b64([1; 32]));
        assert_eq!(KeySet::from_jwks(&off_curve).unwrap_err().to_string(), "JWKS key 0: not a point on P-256");
        // The fixture's point, compressed (`openssl ec -pubin -conv_form compressed`).
        let compressed =
            "-----BEGIN PUBLIC KEY-----\nMDkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDIgACzvesS3SJKSa/PpHIRO4+BTWEKR4k\n\
                          nDVum2A58J+0Nms=\n-----END PUBLIC KEY-----\n";
        let e = VerifyKey::public_key_pem(compressed, Alg::Es256).unwrap_err().to_string();
        assert!(e.contains("a compressed P-256 point; give the key uncompressed"), "{e}");
        // The same key uncompressed is the fixture, and verifies.
        assert!(VerifyKey::public_key_pem(ES_PUBLIC, Alg::Es256).is_ok());
        // A PEM of another kind, and a PKCS#1 RSA key given for ES256.
        let cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let e = VerifyKey::public_key_pem(cert, Alg::Rs256).unwrap_err().to_string();
        assert!(e.contains("a PEM \"CERTIFICATE\" section"), "{e}");
        let e = VerifyKey::public_key_pem(RS_PUBLIC_PKCS1, Alg::Es256).unwrap_err().to_string();
        assert!(e.contains("the key is not EC (id-ecPublicKey)"), "{e}");
    }

    #[test]
    fn replaced_keys_reach_every_clone() {
        let v = hs();
        let clone = v.clone();
        let new_secret = b"the rotated secret, 32 bytes or more";
        let new = token(r#"{"alg":"HS256","kid":"2"}"#, CLAIMS, |i| hmac(new_secret, i));
        assert_eq!(clone.verify(&new, NOW), Err(AuthError::UnknownKey));
        v.replace_keys(KeySet::new(vec![VerifyKey::secret(new_secret).unwrap().with_kid("2")]).unwrap());
        assert!(clone.verify(&new, NOW).is_ok());
        // The old key is gone.
        assert_eq!(clone.verify(&hs256(CLAIMS), NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn max_age_refuses_old_or_missing_iat() {
        let v = hs().max_age(Duration::from_secs(60)).leeway(Duration::ZERO);
        assert!(v.verify(&hs256(CLAIMS), NOW + 60).is_ok());
        assert_eq!(v.verify(&hs256(CLAIMS), NOW + 61), Err(AuthError::TooOld));
        assert_eq!(v.verify(&hs256(r#"{"exp":1700000600}"#), NOW), Err(AuthError::TooOld));
        // Without max_age, iat is not required.
        assert!(hs().verify(&hs256(r#"{"exp":1700000600}"#), NOW).is_ok());
    }

    #[test]
    fn jti_is_used_up_only_by_a_token_that_passes_every_check() {
        let v = hs().require_jti(true);
        let claims = r#"{"exp":1700000600,"jti":"id-1"}"#;
        assert_eq!(v.verify(&hs256(r#"{"exp":1700000600}"#), NOW), Err(AuthError::MissingJti));
        assert_eq!(v.verify(&hs256(r#"{"exp":1700000600,"jti":""}"#), NOW), Err(AuthError::MissingJti));
        assert_eq!(v.verify(&hs256(r#"{"exp":1700000600,"jti":5}"#), NOW), Err(AuthError::Malformed));
        // A forged token and an otherwise invalid one with the same jti do not burn it.
        let forged = token(r#"{"alg":"HS256"}"#, claims, |i| hmac(b"another secret, also 32 bytes long", i));
        assert_eq!(v.verify(&forged, NOW), Err(AuthError::BadSignature));
        let wrong_aud = hs256(r#"{"exp":1700000600,"jti":"id-1","aud":"elsewhere"}"#);
        assert_eq!(v.verify(&wrong_aud, NOW), Err(AuthError::WrongAudience));
        assert!(v.verify(&hs256(claims), NOW).is_ok());
        assert_eq!(v.verify(&hs256(claims), NOW + 1), Err(AuthError::Replayed));
        // Clones share the seen-set.
        assert_eq!(v.clone().verify(&hs256(claims), NOW + 2), Err(AuthError::Replayed));
        // Another id is fine.
        assert!(v.verify(&hs256(r#"{"exp":1700000600,"jti":"id-2"}"#), NOW).is_ok());
        // No exp and no max age: the id could never be forgotten, so refused.
        let v = hs().require_exp(false).require_jti(true);
        assert_eq!(v.verify(&hs256(r#"{"jti":"x"}"#), NOW), Err(AuthError::MissingExpiry));
    }

    #[test]
    fn a_full_seen_set_refuses_new_tokens_with_503() {
        let v = hs().jti_capacity(2);
        for id in ["a", "b"] {
            assert!(v.verify(&hs256(&format!(r#"{{"exp":1700000600,"jti":"{id}"}}"#)), NOW).is_ok());
        }
        let third = hs256(r#"{"exp":1700000600,"jti":"c"}"#);
        assert_eq!(v.verify(&third, NOW), Err(AuthError::ReplayCacheFull));
        assert_eq!(AuthError::ReplayCacheFull.status(), 503);
        // Still refused as replays: nothing was forgotten to make room.
        assert_eq!(v.verify(&hs256(r#"{"exp":1700000600,"jti":"a"}"#), NOW), Err(AuthError::Replayed));
        // Once their tokens have expired (exp + leeway), there is room again.
        let later = hs256(r#"{"exp":1700001600,"jti":"c"}"#);
        assert!(v.verify(&later, 1_700_000_630).is_ok());
    }
}
