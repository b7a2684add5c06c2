//! The body of the `tls_session` fuzz target: arbitrary bytes into the server-side
//! TLS layer and the session behind it, as the worker stacks them.
//!
//! `fuzz/fuzz_targets/tls_session.rs` hands libFuzzer's bytes to [`tls_session`];
//! `tests/fuzz_corpus.rs` replays `fuzz/corpus/tls_session/` under plain `cargo test`.
//! The certificate below is a throwaway made for this harness (self-signed, P-256,
//! `localhost`): it protects nothing.

use super::layer::{Absorbed, TlsConn, TLS_BUF};
use crate::buf::{BufPool, Ring};
use crate::proto::DecoderConfig;
use crate::session::fuzzing::{client_frame, Driver, OnOpen};
use crate::session::SessionConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{IoSlice, Read, Write};
use std::sync::{Arc, OnceLock};

const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBkjCCATigAwIBAgIUDgljK3WRoCb1mty9kiYzVpbf9XQwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwMjAxMTMyOVoYDzIxMjYxMTA4
MDExMzI5WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAART3kJWZLz43TZfAo+fdVD+SfOICfXw3w4krxgDhbhcTFdN4y9zDhiY
kciTs8I8BCCO1FWk5ipNaj8nTnHZdKuOo2YwZDAdBgNVHQ4EFgQUR4wo5hy7Rd0e
wIeh8XsMyOjTU4kwHwYDVR0jBBgwFoAUR4wo5hy7Rd0ewIeh8XsMyOjTU4kwFAYD
VR0RBA0wC4IJbG9jYWxob3N0MAwGA1UdEwEB/wQCMAAwCgYIKoZIzj0EAwIDSAAw
RQIhALfqM5BRDDfL/QqFAxiD0nLziROeTG7PDjGdWs9bUaRDAiB13GrmRSnK3jtJ
3esTKKOEIBFAzS7mhTWxj8J+fMk9qg==
-----END CERTIFICATE-----
";

const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNxI85FAfcul0lfGX
2wJ31JdB+/Qita4yo6JoD8kLmpuhRANCAART3kJWZLz43TZfAo+fdVD+SfOICfXw
3w4krxgDhbhcTFdN4y9zDhiYkciTs8I8BCCO1FWk5ipNaj8nTnHZdKuO
-----END PRIVATE KEY-----
";

/// The server configuration the worker would build (TLS 1.3 and 1.2, ALPN http/1.1).
pub fn server_config() -> Arc<rustls::ServerConfig> {
    static CFG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let chain = vec![CertificateDer::from_pem_slice(CERT.as_bytes()).expect("the harness certificate")];
        let key = PrivateKeyDer::from_pem_slice(KEY.as_bytes()).expect("the harness key");
        let mut cfg = rustls::ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the harness pair");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    })
    .clone()
}

/// A client trusting the harness certificate; `tls12`: TLS 1.2 only.
pub fn client_config(tls12: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(CERT.as_bytes()).expect("the harness certificate")).expect("a root");
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls12 { &[&rustls::version::TLS12] } else { rustls::DEFAULT_VERSIONS };
    let cfg = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(versions)
        .expect("ring supports them")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

/// A server-side TLS layer with the session behind it, driven as the worker drives
/// them: ciphertext in, plaintext to the session, the session's output sealed.
pub struct Stack {
    pub tls: Box<TlsConn>,
    pub pool: BufPool,
    ring: Ring,
    stage: Vec<u8>,
    pub session: Driver,
    /// Bytes of `session.wire` sealed so far.
    sealed: usize,
    /// Ciphertext the server wrote.
    pub out: Vec<u8>,
    /// The layer failed (its alert, if any, is in `out`).
    pub failed: Option<rustls::Error>,
    pub peer_closed: bool,
    /// Bytes written (or sealed) before the last call into the layer.
    before_call: usize,
}

impl Default for Stack {
    fn default() -> Self {
        Self::new()
    }
}

impl Stack {
    /// A connection that has accepted TCP and waits for a ClientHello; its session
    /// echoes.
    pub fn new() -> Stack {
        let cfg = SessionConfig {
            decoder: DecoderConfig { inline_limit: 4096, ..DecoderConfig::default() },
            ..SessionConfig::default()
        };
        let pool = BufPool::new(TLS_BUF, 2);
        let ring = BufPool::new(4096, 1).take();
        let tls = TlsConn::new(&server_config()).expect("a server connection");
        Stack {
            tls,
            pool,
            ring,
            stage: vec![0; super::layer::MAX_FRAGMENT],
            session: Driver::new(cfg, 4096, true, Some(OnOpen { refuse: false, sends: Vec::new(), expires_in: None })),
            sealed: 0,
            out: Vec::new(),
            failed: None,
            peer_closed: false,
            before_call: 0,
        }
    }

    /// The peer's bytes arrive, `cut` at a time (as reads of that size).
    pub fn receive(&mut self, mut bytes: &[u8], cut: usize) {
        while !bytes.is_empty() && self.failed.is_none() && !self.peer_closed {
            let space = self.tls.input_space(&mut self.pool);
            assert!(space.len() <= TLS_BUF, "input buffer beyond its size");
            let n = space.len().min(bytes.len()).min(cut.max(1));
            if n == 0 {
                // Full: absorb must refuse, not spin.
                self.absorb();
                assert!(self.failed.is_some(), "a full input buffer was neither used nor refused");
                return;
            }
            space[..n].copy_from_slice(&bytes[..n]);
            self.tls.commit_input(n);
            bytes = &bytes[n..];
            self.absorb();
        }
        self.tls.settle(&mut self.pool);
    }

    fn absorb(&mut self) {
        for _ in 0..10_000 {
            self.before_call = self.out.len() + self.tls.output().len();
            match self.tls.absorb(&mut self.ring, &mut self.pool) {
                Ok(Absorbed::NeedInput) => break,
                Ok(Absorbed::Plaintext) => {
                    let (a, b) = self.ring.as_slices();
                    let plain = [a, b].concat();
                    self.ring.consume(plain.len());
                    self.session.client_sends(&plain);
                    self.session.read(usize::MAX, false);
                }
                Ok(Absorbed::PeerClosed) => {
                    self.peer_closed = true;
                    self.session.client_eof();
                    break;
                }
                Err(e) => {
                    self.failed = Some(e);
                    break;
                }
            }
        }
        self.flush();
    }

    /// Writes what the layer has sealed, and seals what the session wrote since.
    pub fn flush(&mut self) {
        loop {
            self.out.extend_from_slice(self.tls.output());
            let n = self.tls.output().len();
            self.tls.wrote(n, &mut self.pool);
            if self.failed.is_some() || self.tls.is_handshaking() || self.sealed == self.session.wire.bytes.len() {
                return;
            }
            let rest = &self.session.wire.bytes[self.sealed..];
            // Two slices when there are enough bytes, as a wrapped ring hands them out.
            let (a, b) = rest.split_at(rest.len() / 3);
            let iov = [IoSlice::new(a), IoSlice::new(b)];
            match self.tls.seal(&iov, &mut self.stage, &mut self.pool) {
                Ok(0) => assert!(!self.tls.output().is_empty(), "nothing sealed and nothing to write"),
                Ok(n) => self.sealed += n,
                Err(e) => {
                    self.failed = Some(e);
                    return;
                }
            }
        }
    }

    /// What the server wrote is whole TLS records; after a failure, what the failing
    /// call added ends with at most one alert (plaintext, or encrypted: a short
    /// application-data record) and nothing follows it.
    pub fn check_records(&self) {
        let mut pos = 0;
        let mut last = None;
        while pos < self.out.len() {
            assert!(pos + 5 <= self.out.len(), "a partial record header written");
            let len = u16::from_be_bytes([self.out[pos + 3], self.out[pos + 4]]) as usize;
            assert!(len <= 16384 + 2048, "a record over the limit written");
            last = Some((pos, self.out[pos], len));
            pos += 5 + len;
        }
        assert_eq!(pos, self.out.len(), "a partial record written");
        if self.failed.is_some() {
            if let Some((at, typ, len)) = last.filter(|l| l.0 >= self.before_call) {
                let alert = (typ == 0x15 && len == 2) || (typ == 0x17 && len <= 40);
                assert!(alert, "not an alert after the failure: type {typ} of {len} bytes at {at}");
            }
        }
    }

    /// Gives the layer's buffers back and checks that the pool has them all.
    pub fn finish(self) {
        let mut pool = self.pool;
        self.tls.release(&mut pool);
        assert_eq!(pool.lent(), 0, "a TLS buffer was not given back");
    }
}

/// A rustls client connected in memory to a [`Stack`].
pub struct Pair {
    pub client: rustls::ClientConnection,
    pub server: Stack,
    /// Ciphertext of `server.out` the client has read.
    read: usize,
    /// Plaintext the client received.
    pub received: Vec<u8>,
}

impl Pair {
    pub fn new(tls12: bool) -> Pair {
        let name = ServerName::try_from("localhost").expect("a name");
        let client = rustls::ClientConnection::new(client_config(tls12), name).expect("a client");
        Pair { client, server: Stack::new(), read: 0, received: Vec::new() }
    }

    /// Moves bytes both ways until neither side has anything to say; the client's
    /// records reach the server `cut` bytes at a time. `corrupt`: flip this byte of
    /// the next client flight.
    pub fn exchange(&mut self, cut: usize, mut corrupt: Option<usize>) {
        for _ in 0..64 {
            let mut wire = Vec::new();
            while self.client.wants_write() {
                if self.client.write_tls(&mut wire).is_err() {
                    break;
                }
            }
            if let Some(i) = corrupt.take() {
                if !wire.is_empty() {
                    let k = i % wire.len();
                    wire[k] ^= 0x40;
                }
            }
            let had = !wire.is_empty();
            self.server.receive(&wire, cut);
            self.server.flush();
            let got = self.read < self.server.out.len();
            let mut buf = [0u8; 4096];
            while self.read < self.server.out.len() {
                let mut back = &self.server.out[self.read..];
                let before = back.len();
                let r = self.client.read_tls(&mut back);
                self.read += before - back.len();
                if self.client.process_new_packets().is_err() || matches!(r, Ok(0)) {
                    return;
                }
                let mut progress = before > back.len();
                loop {
                    match self.client.reader().read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            progress = true;
                            self.received.extend_from_slice(&buf[..n]);
                        }
                    }
                }
                if !progress {
                    return;
                }
            }
            if !had && !got {
                return;
            }
        }
    }

    /// The client sends `bytes` as application data.
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.client.writer().write_all(bytes);
    }
}

/// Arbitrary bytes to the server-side TLS layer and its session.
///
/// First byte: bit 0 set, a rustls client does the handshake (bit 1: TLS 1.2) and
/// the rest is a script of client sends (bytes or WebSocket frames), cut sizes and
/// corruptions of its records; clear, the rest is raw ciphertext, delivered in reads
/// of a size given by the second byte.
///
/// Checked: no panic or endless loop; the input buffer never exceeds its size and a
/// full one is refused; after a failure the server writes at most its alert; in
/// client mode everything the session wrote reaches the client decrypted, in order;
/// every lent buffer is given back.
pub fn tls_session(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let Some((&cut, rest)) = rest.split_first() else {
            return;
        };
        let mut s = Stack::new();
        s.receive(rest, cut as usize * 64 + 1);
        s.check_records();
        s.finish();
        return;
    }
    let mut p = Pair::new(mode & 2 != 0);
    p.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    p.exchange(usize::MAX, None);
    let mut input = rest;
    let mut byte = || {
        let (&b, r) = input.split_first()?;
        input = r;
        Some(b)
    };
    let mut cut = usize::MAX;
    while let Some(op) = byte() {
        let Some(arg) = byte() else { break };
        match op % 5 {
            0 => {
                let payload: Vec<u8> = (0..arg).collect();
                p.send(&client_frame(0x82, &payload, false));
            }
            1 => {
                let payload = vec![b'a'; arg as usize * 64];
                p.send(&client_frame(0x81, &payload, false));
            }
            2 => cut = arg as usize * 16 + 1,
            3 => {
                p.send(&[arg; 3]);
            }
            _ => {
                p.exchange(cut, Some(arg as usize));
                continue;
            }
        }
        p.exchange(cut, None);
        if p.server.failed.is_some() {
            break;
        }
    }
    p.exchange(cut, None);
    p.server.check_records();
    if p.server.failed.is_none() {
        let wire = &p.server.session.wire.bytes;
        assert!(p.received.len() <= wire.len(), "the client got more than the session wrote");
        assert!(wire[..p.received.len()] == p.received[..], "the client got other bytes than the session wrote");
        if p.server.sealed == wire.len() {
            assert_eq!(p.received.len(), wire.len(), "sealed bytes did not reach the client");
        }
    }
    p.server.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_talks_to_the_layer_in_memory() {
        for tls12 in [false, true] {
            let mut p = Pair::new(tls12);
            p.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            p.exchange(usize::MAX, None);
            assert!(!p.server.tls.is_handshaking(), "handshake done (tls12={tls12})");
            assert!(p.server.failed.is_none(), "{:?}", p.server.failed);
            p.send(&client_frame(0x81, b"hello", false));
            p.send(&client_frame(0x82, &vec![9u8; 40_000], false));
            p.exchange(100, None);
            let frames = p.server.session.wire.frames();
            assert!(frames.iter().any(|f| f.2 == b"hello"), "echoed: {frames:?}");
            assert!(frames.iter().any(|f| f.2.len() == 40_000), "large echo");
            let wire = &p.server.session.wire.bytes;
            assert_eq!(
                (p.received.len(), p.server.sealed),
                (wire.len(), wire.len()),
                "the client got what the session wrote"
            );
            assert!(p.received == *wire, "the same bytes");
            p.server.finish();
        }
    }

    #[test]
    fn garbage_gets_an_alert_and_gives_every_buffer_back() {
        let mut s = Stack::new();
        s.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1000);
        assert!(s.failed.is_some());
        assert_eq!(s.out.first(), Some(&0x15), "an alert: {:?}", &s.out[..s.out.len().min(16)]);
        s.finish();
    }
}
