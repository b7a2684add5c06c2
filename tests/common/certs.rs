//! Test certificates made at test time with Debian's `openssl`: a CA and a leaf for
//! localhost and 127.0.0.1 signed by it. No private key that matters is committed.

use std::path::PathBuf;
use std::process::Command;

/// A fresh directory with a test CA (`ca.pem`, `ca.key`) and a leaf for localhost and
/// 127.0.0.1 signed by it (`cert.pem`: leaf then CA, `key.pem`). `kind` is `"rsa"`
/// (RSA 2048) or anything else (ECDSA P-256).
pub fn make_cert(tag: &str, kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsloop-tls-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let newkey: &[&str] = if kind == "rsa" {
        &["-newkey", "rsa:2048"]
    } else {
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    };
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(&dir)
            .args(args)
            .output()
            .expect("openssl (Debian package openssl) must be installed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ca =
        &["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=wsloop test CA", "-keyout", "ca.key", "-out", "ca.pem"];
    openssl(&[&ca[..2], newkey, &ca[2..]].concat());
    let csr = &["req", "-new", "-nodes", "-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "leaf.csr"];
    openssl(&[&csr[..2], newkey, &csr[2..]].concat());
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "leaf.pem",
    ]);
    let chain = [std::fs::read(dir.join("leaf.pem")).unwrap(), std::fs::read(dir.join("ca.pem")).unwrap()].concat();
    std::fs::write(dir.join("cert.pem"), chain).unwrap();
    dir
}
