//! wss:// for the load generator: the client configuration (any certificate, or only
//! those a `--ca` file vouches for) and the TLS side of one connection's I/O.
//!
//! The client uses rustls' buffered `ClientConnection`: what is measured is the
//! server, and the generator's own memory per connection does not enter the report.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// Plaintext a connection's TLS may hold unsent before the generator stops queueing
/// (the publisher's backlog check sees the rest).
const MAX_TLS_PLAINTEXT: usize = 256 << 10;

/// What every wss connection of a run uses.
#[derive(Clone, Debug)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts the CA certificates in `ca` (PEM), or with `None` any certificate: a load
    /// generator pointed at a test server with a self-signed one. ALPN `http/1.1`.
    pub fn new(host: &str, ca: Option<&Path>) -> Result<TlsClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let mut config = match ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("--ca {}: {e}", path.display()))?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert =
                        cert.map_err(|e| format!("--ca {}: not a PEM certificate file ({e})", path.display()))?;
                    roots.add(cert).map_err(|e| format!("--ca {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("--ca {}: no CERTIFICATE block in the file", path.display()));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("TLS server name {host:?}: {e}"))?;
        Ok(TlsClient { config: Arc::new(config), name })
    }

    /// A connection's TLS, before its ClientHello.
    pub fn connect(&self) -> io::Result<Box<rustls::ClientConnection>> {
        let mut c = rustls::ClientConnection::new(self.config.clone(), self.name.clone()).map_err(io::Error::other)?;
        c.set_buffer_limit(Some(MAX_TLS_PLAINTEXT));
        Ok(Box::new(c))
    }
}

/// Reads plaintext into `buf`: what rustls holds, else records from the socket.
/// `Ok(0)` is the end of the stream (close_notify or EOF).
pub fn read(tls: &mut rustls::ClientConnection, stream: &mut mio::net::TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match tls.read_tls(stream) {
            Ok(0) => return Ok(0),
            Ok(_) => {
                let state = tls.process_new_packets().map_err(io::Error::other)?;
                if state.peer_has_closed() && state.plaintext_bytes_to_read() == 0 {
                    return Ok(0);
                }
                // Handshake answers (and alerts) go out at once.
                write_records(tls, stream)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Hands `bytes` to rustls (as much as its limit takes) and writes the records it
/// can; returns the plaintext bytes taken.
pub fn write(tls: &mut rustls::ClientConnection, stream: &mut mio::net::TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let n = if bytes.is_empty() { 0 } else { tls.writer().write(bytes)? };
    write_records(tls, stream)?;
    Ok(n)
}

fn write_records(tls: &mut rustls::ClientConnection, stream: &mut mio::net::TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Accepts every certificate (signatures over the handshake are still checked, so
/// the connection is a real TLS one; only the identity is not).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
