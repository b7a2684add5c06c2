//! `rediss://`: the client side of rustls (ring, as for wss://) for the bridge's
//! connections, with the system's roots or a CA file.

use super::TlsRoots;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;

/// Where distributions keep their CA bundle, tried in order when `SSL_CERT_FILE` is not
/// set (Debian and Ubuntu, Fedora and RHEL, openSUSE, Alpine).
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A client configuration that trusts `roots`: TLS 1.3 and 1.2, no client certificate.
/// The error names the file at fault and why.
pub(crate) fn client_config(roots: &TlsRoots) -> Result<Arc<ClientConfig>, String> {
    let mut store = RootCertStore::empty();
    match roots {
        TlsRoots::CaFile(path) => add_pem(&mut store, path)?,
        TlsRoots::System => {
            let path = match std::env::var_os("SSL_CERT_FILE") {
                Some(p) => p.into(),
                None => SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()).map(Path::to_path_buf).ok_or_else(
                    || {
                        format!(
                            "no system CA bundle (looked for SSL_CERT_FILE and {}); give one with --redis-ca",
                            SYSTEM_BUNDLES.join(", ")
                        )
                    },
                )?,
            };
            add_pem(&mut store, &path)?;
        }
    }
    let cfg = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

fn add_pem(store: &mut RootCertStore, path: &Path) -> Result<(), String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: cannot read the CA file: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file ({e})", path.display()))?;
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{}: no usable CERTIFICATE block in the file", path.display()));
    }
    Ok(())
}

/// The name a server's certificate must carry: its DNS name or IP address.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: not a host name for TLS ({e})"))
}

/// A new client session to `host`.
pub(crate) fn session(cfg: &Arc<ClientConfig>, host: &str) -> Result<rustls::ClientConnection, String> {
    rustls::ClientConnection::new(cfg.clone(), server_name(host)?).map_err(|e| format!("TLS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_files_are_named() {
        let e = client_config(&TlsRoots::CaFile("/nonexistent/ca.pem".into())).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem") && e.contains("cannot read"), "{e}");
        let p = std::env::temp_dir().join(format!("wsloop-redis-ca-{}.pem", std::process::id()));
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = client_config(&TlsRoots::CaFile(p.clone())).unwrap_err();
        assert!(e.contains("no usable CERTIFICATE"), "{e}");
        let _ = std::fs::remove_file(&p);
        assert!(server_name("127.0.0.1").is_ok() && server_name("cache.internal").is_ok());
        assert!(server_name("bad name!").is_err());
    }
}
