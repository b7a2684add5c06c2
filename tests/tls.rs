//! wss://: the echo server behind rustls, against tungstenite over a rustls client,
//! Python `websockets` with an SSL context trusting the test CA, and raw bytes that
//! are not a TLS handshake. Certificates are made here with `openssl` (Debian's); no
//! key is committed.
#![cfg(feature = "tls")]

#[path = "common/certs.rs"]
mod certs;
mod common;

use common::{open_fds, wait_until, TestServer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use wsloop::server::Config;
use wsloop::tls::{CertStore, TlsFailure};

fn tls_server(dir: &Path, cfg: Config) -> (TestServer, Arc<CertStore>) {
    let store = CertStore::load(dir.join("cert.pem"), dir.join("key.pem")).expect("load");
    let mut cfg = cfg;
    cfg.workers = 1;
    cfg.tls = Some(store.server_config());
    (TestServer::echo(cfg), store)
}

fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(server: &TestServer, ca: &Path) -> tungstenite::WebSocket<TlsStream> {
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = rustls::ClientConnection::new(client_config(ca), "localhost".try_into().unwrap()).unwrap();
    let stream = rustls::StreamOwned::new(conn, tcp);
    let url = format!("wss://localhost:{}/", server.addr.port());
    let (ws, _) = tungstenite::client(url.as_str(), stream).expect("wss upgrade");
    ws
}

fn failures(server: &TestServer, r: TlsFailure) -> u64 {
    let i = TlsFailure::ALL.iter().position(|x| *x == r).unwrap();
    server.handle().metrics().iter().map(|m| m.tls_failures[i].get()).sum()
}

#[test]
fn wss_echo_with_tungstenite_over_rustls() {
    use tungstenite::Message;
    let dir = certs::make_cert("tungstenite", "ec");
    let (server, _store) = tls_server(&dir, Config::default());
    let mut ws = connect(&server, &dir.join("ca.pem"));
    assert_eq!(ws.get_ref().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    for msg in [Message::text("hello over tls"), Message::binary(vec![7u8; 100_000]), Message::text("x".repeat(16_384))]
    {
        ws.send(msg.clone()).unwrap();
        assert_eq!(ws.read().unwrap(), msg);
    }
    // Many small messages in one flush come back whole.
    for i in 0..200 {
        ws.write(Message::text(format!("m{i}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..200 {
        assert_eq!(ws.read().unwrap(), Message::text(format!("m{i}")));
    }
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("clean close expected, got {e}"),
        }
    }
    server.shutdown().unwrap();
}

#[test]
fn tls12_and_rsa_keys_work() {
    let dir = certs::make_cert("rsa", "rsa");
    let (server, _store) = tls_server(&dir, Config::default());
    let out = Command::new("openssl")
        .args(["s_client", "-tls1_2", "-connect", &server.addr.to_string(), "-CAfile"])
        .arg(dir.join("ca.pem"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Protocol  : TLSv1.2") || text.contains("TLSv1.2"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
}

#[test]
fn python_websockets_over_wss() {
    let dir = certs::make_cert("python", "ec");
    let (server, _store) = tls_server(&dir, Config::default());
    let script = r#"
import ssl, sys
from websockets.sync.client import connect
ctx = ssl.create_default_context(cafile=sys.argv[2])
with connect(sys.argv[1], ssl=ctx, max_size=None) as ws:
    for m in ["hi", "x" * 70000, b"\x00\x01" * 50000]:
        ws.send(m)
        assert ws.recv() == m
print("ok")
"#;
    let url = format!("wss://localhost:{}/", server.addr.port());
    let out = Command::new("python3").arg("-c").arg(script).arg(&url).arg(dir.join("ca.pem")).output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "python websockets over wss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `bytes`, half-closes, and returns what the server answered before closing.
fn exchange(server: &TestServer, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn bad_input_ends_cleanly_and_is_counted() {
    let dir = certs::make_cert("bad", "ec");
    let (server, _store) = tls_server(&dir, Config::default());
    let fds = open_fds();
    // Plain HTTP, a ws:// upgrade to the TLS port: an alert, nothing upgraded.
    let upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let out = exchange(&server, upgrade);
    assert_eq!(out.first(), Some(&0x15), "an alert record: {out:?}");
    assert!(!String::from_utf8_lossy(&out).contains("101"), "nothing upgraded");
    assert!(wait_until(Duration::from_secs(2), || failures(&server, TlsFailure::NotTls) == 1));
    // A handshake record holding garbage.
    let out = exchange(&server, b"\x16\x03\x01\x00\x08\x01\x00\x00\x04garb");
    assert_eq!(out.first(), Some(&0x15), "an alert record: {out:?}");
    assert!(wait_until(Duration::from_secs(2), || failures(&server, TlsFailure::BadMessage) == 1));
    // A truncated ClientHello, then FIN.
    let _ = exchange(&server, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh");
    assert!(wait_until(Duration::from_secs(2), || failures(&server, TlsFailure::Eof) == 1));
    // An oversized ClientHello (a handshake message over 64 KiB).
    let mut big = Vec::new();
    let len: u32 = 0x20000;
    let mut body = vec![0x01, (len >> 16) as u8, (len >> 8) as u8, len as u8];
    body.extend(std::iter::repeat_n(0u8, len as usize));
    for chunk in body.chunks(16384) {
        big.extend([0x16, 0x03, 0x01, (chunk.len() >> 8) as u8, chunk.len() as u8]);
        big.extend(chunk);
    }
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(&big);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(wait_until(Duration::from_secs(2), || failures(&server, TlsFailure::TooLarge) == 1));
    // Every connection gone, no descriptor left.
    assert!(wait_until(Duration::from_secs(2), || open_fds() <= fds), "descriptors left: {} > {fds}", open_fds());
    assert_eq!(server.handle().open_connections(), 0);
    // And the server still serves.
    let mut ws = connect(&server, &dir.join("ca.pem"));
    ws.send(tungstenite::Message::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::text("still here"));
}

#[test]
fn a_renegotiation_attempt_is_refused_and_counted() {
    let dir = certs::make_cert("reneg", "ec");
    let (server, _store) = tls_server(&dir, Config::default());
    // s_client's "R" line asks for a TLS 1.2 renegotiation.
    let mut child = Command::new("openssl")
        .args(["s_client", "-tls1_2", "-connect", &server.addr.to_string(), "-CAfile"])
        .arg(dir.join("ca.pem"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"R\n");
    let total = || TlsFailure::ALL.iter().map(|r| failures(&server, *r)).sum::<u64>();
    assert!(wait_until(Duration::from_secs(5), || total() == 1), "counted once: {}", total());
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("no renegotiation") || !out.status.success(), "{text}");
    assert_eq!(server.handle().open_connections(), 0);
}

#[test]
fn handshake_timeout_covers_a_stalled_client_hello() {
    let dir = certs::make_cert("timeout", "ec");
    let cfg = Config { handshake_timeout: Duration::from_millis(300), ..Config::default() };
    let (server, _store) = tls_server(&dir, cfg);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // Half a ClientHello, and then nothing.
    s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").unwrap();
    let started = std::time::Instant::now();
    // An alert at most, then the end of the stream.
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    assert!(r.is_ok() && out.len() <= 7 && out.first().is_none_or(|b| *b == 0x15), "dropped: {r:?} {out:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "dropped on time: {:?}", started.elapsed());
    assert!(wait_until(Duration::from_secs(1), || failures(&server, TlsFailure::Timeout) == 1));
}

#[test]
fn reload_swaps_the_pair_for_new_handshakes_and_keeps_it_on_a_bad_file() {
    let dir = certs::make_cert("reload", "ec");
    let (server, store) = tls_server(&dir, Config::default());
    let mut old = connect(&server, &dir.join("ca.pem"));
    // A new pair in the same files: the open connection stays, new ones see it.
    let next = certs::make_cert("reload-next", "ec");
    std::fs::copy(next.join("cert.pem"), dir.join("cert.pem")).unwrap();
    std::fs::copy(next.join("key.pem"), dir.join("key.pem")).unwrap();
    store.reload().expect("reload");
    let mut new = connect(&server, &next.join("ca.pem"));
    new.send(tungstenite::Message::text("new")).unwrap();
    assert_eq!(new.read().unwrap(), tungstenite::Message::text("new"));
    old.send(tungstenite::Message::text("old")).unwrap();
    assert_eq!(old.read().unwrap(), tungstenite::Message::text("old"));
    // A bad key file: the error names it, the current pair stays in use.
    std::fs::write(dir.join("key.pem"), "not a key\n").unwrap();
    let e = store.reload().unwrap_err();
    assert_eq!(e.path, dir.join("key.pem"));
    let mut again = connect(&server, &next.join("ca.pem"));
    again.send(tungstenite::Message::text("again")).unwrap();
    assert_eq!(again.read().unwrap(), tungstenite::Message::text("again"));
}

#[test]
fn bad_files_are_named_with_the_problem() {
    let dir = certs::make_cert("files", "ec");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let e = CertStore::load(dir.join("missing.pem"), &key).unwrap_err();
    assert!(e.to_string().contains("missing.pem") && e.to_string().contains("cannot read"), "{e}");
    let e = CertStore::load(&key, &key).unwrap_err();
    assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
    let e = CertStore::load(&cert, &cert).unwrap_err();
    assert_eq!(e.path, cert);
    assert!(e.to_string().contains("PRIVATE KEY"), "{e}");
    // A key that is not the certificate's.
    let other = certs::make_cert("files-other", "ec");
    let e = CertStore::load(&cert, other.join("key.pem")).unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
}

#[cfg(feature = "cli")]
#[test]
fn cli_bad_cert_or_key_exits_2_naming_the_file() {
    let dir = certs::make_cert("cli", "ec");
    let run = |cert: &Path, key: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_wsloop"))
            .args(["echo", "--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&dir.join("nope.pem"), &dir.join("key.pem"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--tls-cert") && err.contains("nope.pem") && err.contains("cannot read"), "{err}");
    let (code, err) = run(&dir.join("cert.pem"), &dir.join("cert.pem"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--tls-key") && err.contains("PRIVATE KEY"), "{err}");
    let (code, err) = run(&dir.join("ca.pem"), &dir.join("key.pem"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("does not match"), "{err}");
}

/// `wsloop-bench` in every mode over wss://, trusting the test CA (`--ca`) or any
/// certificate: every echo checked, every connection opened and closed cleanly.
#[cfg(feature = "bench")]
#[test]
fn wsloop_bench_speaks_wss_in_every_mode() {
    let dir = certs::make_cert("bench", "ec");
    let (server, _store) = tls_server(&dir, Config::default());
    let url = format!("wss://localhost:{}/", server.addr.port());
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let runs: &[&[&str]] = &[
        &[
            "echo",
            "--conns",
            "4",
            "--size",
            "5000",
            "--inflight",
            "4",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--ca",
            ca,
        ],
        &["echo", "--conns", "2", "--duration", "0.3", "--warmup", "0"],
        &["idle", "--conns", "20", "--hold", "0.2", "--ca", ca],
        &["broadcast", "--subs", "3", "--rate", "200", "--duration", "0.5", "--warmup", "0.1", "--ca", ca],
    ];
    for args in runs {
        let out = Command::new(env!("CARGO_BIN_EXE_wsloop-bench"))
            .args(&args[..1])
            .args(["--url", &url, "-q"])
            .args(&args[1..])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let result = stdout.lines().last().unwrap_or_default();
        assert!(out.status.success(), "{args:?}: {result}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(result.starts_with("RESULT") && result.contains(" errors=0"), "{args:?}: {result}");
    }
    // A CA that did not sign the server's certificate: every connection fails.
    let other = certs::make_cert("bench-other", "ec");
    let out = Command::new(env!("CARGO_BIN_EXE_wsloop-bench"))
        .args(["idle", "--url", &url, "-q", "--conns", "2", "--hold", "0.1", "--connect-timeout", "2", "--ca"])
        .arg(other.join("ca.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "an untrusted certificate is an error");
    assert_eq!(server.handle().open_connections(), 0);
}
