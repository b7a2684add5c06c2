//! What one JWT check costs at the handshake: the openssl-signed RS256 and ES256 fixtures
//! and an HS256 token, each verified whole (split, base64url, signature, claims), and the
//! key loads (PEM for RS256 and ES256, whose ES256 point check is one ECDH).
//!
//! `cargo bench --features jwt --bench jwt` (add `-- --measurement-time 2` for a quick run).
//! The same file runs against an older checkout to compare crypto backends.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use wsloop::auth::{Alg, JwtVerifier};

const RS_PUBLIC: &str = include_str!("../tests/keys/rs256-public.pem");
const ES_PUBLIC: &str = include_str!("../tests/keys/es256-public.pem");
const RS_OPENSSL: &str = include_str!("../tests/keys/rs256-openssl.jwt");
const ES_OPENSSL: &str = include_str!("../tests/keys/es256-openssl.jwt");
const SECRET: &[u8] = b"a shared secret of at least 32 bytes!";
const NOW: u64 = 1_700_000_000;

/// `{"alg":"HS256"}` over the openssl fixtures' claims, keyed with `SECRET`.
fn hs_token() -> String {
    let claims = RS_OPENSSL.split('.').nth(1).unwrap();
    let input = format!("{}.{claims}", B64URL.encode(r#"{"alg":"HS256"}"#));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", B64URL.encode(mac.finalize().into_bytes()))
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    let hs = JwtVerifier::from_secret(SECRET).unwrap();
    let rs = JwtVerifier::from_public_key_pem(RS_PUBLIC, Alg::Rs256).unwrap();
    let es = JwtVerifier::from_public_key_pem(ES_PUBLIC, Alg::Es256).unwrap();
    let hs_token = hs_token();
    for (name, v, token) in
        [("HS256", hs, &hs_token[..]), ("RS256", rs, RS_OPENSSL.trim()), ("ES256", es, ES_OPENSSL.trim())]
    {
        let v = v.issuer("https://issuer.example").audience("wsloop");
        assert!(v.verify(token, NOW).is_ok(), "{name}");
        g.bench_function(name, |b| b.iter(|| v.verify(black_box(token), NOW).unwrap()));
    }
    g.finish();
}

fn load_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("load PEM key");
    g.bench_function("RS256", |b| {
        b.iter(|| JwtVerifier::from_public_key_pem(black_box(RS_PUBLIC), Alg::Rs256).unwrap())
    });
    g.bench_function("ES256", |b| {
        b.iter(|| JwtVerifier::from_public_key_pem(black_box(ES_PUBLIC), Alg::Es256).unwrap())
    });
    g.finish();
}

criterion_group!(benches, verify, load_key);
criterion_main!(benches);
