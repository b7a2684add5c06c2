//! wss://: rustls between the socket and the session, driven by the same worker.
//!
//! Each connection's TLS is [`layer::TlsConn`]: rustls' unbuffered API over ciphertext
//! buffers lent from the worker's pool only while bytes are in flight, so an idle wss
//! connection holds rustls' state and no record buffer. The worker reads ciphertext
//! into a lent buffer, decrypts it in place and feeds the plaintext to its pooled read
//! rings and the session exactly as for ws://; on the way out the session's slices
//! become as few records as their bytes need, written with one system call per
//! buffer. A plain worker never reaches this code: it picks the TLS path once per
//! event, by whether its listener is wss://.
//!
//! Certificates: [`CertStore`] loads a PEM chain and key, serves them to every new
//! handshake through rustls' certificate resolver, and [`CertStore::reload`] swaps
//! them (SIGHUP in the CLI) without touching a connection. Library users may instead
//! give [`Config::tls`](crate::server::Config::tls) a rustls `ServerConfig` of their
//! own (SNI, client certificates, their own resolver).

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

#[doc(hidden)]
pub mod fuzzing;
pub mod layer;
pub(crate) use layer::TlsConn;

pub use rustls::ServerConfig;

/// Why a TLS handshake failed: the `reason` label of
/// `wsloop_tls_handshake_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The first bytes are not a TLS record (plain HTTP or a ws:// upgrade to the TLS
    /// port).
    NotTls,
    /// Records or handshake messages that do not parse (garbage, bad lengths).
    BadMessage,
    /// A handshake message over rustls' 64 KiB limit (an oversized ClientHello).
    TooLarge,
    /// The peer closed (FIN or reset) in the middle of the handshake: truncated records.
    Eof,
    /// The handshake did not finish within `handshake_timeout`.
    Timeout,
    /// No protocol version, cipher suite, signature scheme or ALPN protocol in common.
    Incompatible,
    /// The peer broke the protocol (e.g. renegotiation, unexpected messages).
    Misbehaved,
    /// The peer sent a fatal alert.
    Alert,
    /// Anything else rustls refused.
    Other,
}

impl TlsFailure {
    /// All reasons, in exposition order.
    pub const ALL: [TlsFailure; 9] = [
        TlsFailure::NotTls,
        TlsFailure::BadMessage,
        TlsFailure::TooLarge,
        TlsFailure::Eof,
        TlsFailure::Timeout,
        TlsFailure::Incompatible,
        TlsFailure::Misbehaved,
        TlsFailure::Alert,
        TlsFailure::Other,
    ];

    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::NotTls => "not_tls",
            TlsFailure::BadMessage => "bad_message",
            TlsFailure::TooLarge => "too_large",
            TlsFailure::Eof => "eof",
            TlsFailure::Timeout => "timeout",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::Misbehaved => "misbehaved",
            TlsFailure::Alert => "alert",
            TlsFailure::Other => "other",
        }
    }

    /// The one mapping from rustls' errors.
    pub fn of(e: &rustls::Error) -> TlsFailure {
        use rustls::{Error, InvalidMessage};
        match e {
            Error::InvalidMessage(InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion) => {
                TlsFailure::NotTls
            }
            Error::InvalidMessage(InvalidMessage::MessageTooLarge | InvalidMessage::HandshakePayloadTooLarge) => {
                TlsFailure::TooLarge
            }
            Error::InvalidMessage(_) | Error::DecryptError => TlsFailure::BadMessage,
            Error::PeerIncompatible(_) | Error::NoApplicationProtocol => TlsFailure::Incompatible,
            Error::PeerMisbehaved(_)
            | Error::InappropriateHandshakeMessage { .. }
            | Error::InappropriateMessage { .. } => TlsFailure::Misbehaved,
            Error::AlertReceived(_) => TlsFailure::Alert,
            _ => TlsFailure::Other,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A certificate or key file that cannot be used: which file, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    /// Which of the two files is at fault.
    pub file: TlsFile,
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

/// The certificate file or the key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The PEM certificate chain.
    Cert,
    /// The PEM private key.
    Key,
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for TlsFileError {}

/// The crypto `CertStore` uses: ring's default provider. (Leaving P-384 key exchange
/// out was measured: 448 bytes smaller, not worth the lost compatibility.)
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first) and its private key (PKCS#8, SEC1 or
/// PKCS#1; ECDSA, RSA or Ed25519) and checks that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsFileError> {
    let err = |file: TlsFile, problem: String| {
        let path = if file == TlsFile::Cert { cert } else { key };
        TlsFileError { file, path: path.to_path_buf(), problem }
    };
    let read = |file: TlsFile, path: &Path| {
        std::fs::read(path).map_err(|e| err(file, format!("cannot read the file: {}", io_reason(&e))))
    };
    let cert_pem = read(TlsFile::Cert, cert)?;
    let key_pem = read(TlsFile::Key, key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(TlsFile::Cert, format!("not a PEM certificate file ({e})")))?;
    if chain.is_empty() {
        return Err(err(TlsFile::Cert, "no CERTIFICATE block in the file".into()));
    }
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            err(TlsFile::Key, "no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block in the file".into())
        }
        e => err(TlsFile::Key, format!("not a PEM private key file ({e})")),
    })?;
    let signing = provider().key_provider.load_private_key(der).map_err(|e| {
        err(TlsFile::Key, format!("unusable private key ({e}); supported: ECDSA P-256/P-384, RSA, Ed25519"))
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| err(TlsFile::Key, format!("does not match the certificate in {} ({e})", cert.display())))?;
    Ok(ck)
}

fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A certificate and key from files, reloadable while the server runs: each new
/// handshake takes the pair current when its ClientHello arrives.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads the pair; the error names the file at fault.
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Arc<Self>, TlsFileError> {
        let (cert, key) = (cert.into(), key.into());
        let ck = load_pair(&cert, &key)?;
        Ok(Arc::new(CertStore { cert, key, current: RwLock::new(Arc::new(ck)) }))
    }

    /// Reads the files again. On error the pair in use stays.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        let ck = load_pair(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        Ok(())
    }

    /// A server configuration using this store: TLS 1.3 and 1.2, ALPN `http/1.1`, no
    /// client certificates.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}
