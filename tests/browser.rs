//! A real browser on the `--demo` page: headless Debian Chromium, driven by
//! playwright-core (tests/browser/demo.mjs), against an in-process `Rooms` server with
//! JWT auth and a rooms claim. Two pages join one room with tokens in the
//! `bearer.<token>` subprotocol and see each other's messages; a `POST /publish/<room>`
//! appears on both; a token without that room is refused (403, no upgrade); a
//! screenshot goes to target/browser-demo*.png. The same run goes over ws:// and, with
//! permessage-deflate on (shared mode), over wss:// with a test certificate made here
//! (the page then shows the extension Chromium negotiated, which the script checks).
//!
//! The test installs what it lacks (Debian's chromium with apt-get when run as root,
//! playwright-core with npm); without them it is skipped, except under CI=true, where
//! it fails, as it does when the browser cannot start.
#![cfg(all(feature = "jwt", feature = "tls", feature = "deflate"))]

#[path = "common/certs.rs"]
mod certs;
mod ops;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use ops::Started;
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use wsloop::auth::JwtVerifier;
use wsloop::server::{Compression, Config, PublishKey, Rooms, DEMO_PAGE};
use wsloop::tls::CertStore;

/// One browser at a time: the runs share the machine's two cores.
static BROWSER: Mutex<()> = Mutex::new(());

const SECRET: &[u8] = b"browser-test secret, 32 bytes or more";
const KEY: &str = "browser-test-publish-key";
const CHROMIUM: &str = "/usr/bin/chromium";

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Skips (returns false) or, under CI=true, fails.
fn missing(what: &str) -> bool {
    assert!(!ci(), "{what}: CI must not skip the browser test");
    eprintln!("browser: {what}; skipping (scripts/test.sh installs it)");
    false
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Chromium and playwright-core, installed when absent.
fn ensure_tools(dir: &Path) -> bool {
    if !Path::new(CHROMIUM).is_file() {
        let root = is_root();
        if root {
            eprintln!("browser: installing Debian chromium (apt-get)");
            let wait = ["-o", "DPkg::Lock::Timeout=600"];
            let _ = quiet(Command::new("apt-get").args(wait).args(["update", "-qq"]));
            let _ = quiet(Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args(wait).args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "chromium",
            ]));
        }
        if !Path::new(CHROMIUM).is_file() {
            return missing("/usr/bin/chromium is not installed");
        }
    }
    if !dir.join("node_modules/playwright-core").is_dir() {
        eprintln!("browser: installing playwright-core (npm)");
        let ok = quiet(Command::new("npm").args(["install", "--no-audit", "--no-fund"]).current_dir(dir));
        if !ok {
            return missing("npm install playwright-core failed");
        }
    }
    true
}

/// Whether this process runs as root (effective uid from /proc).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)) == Some("0"))
}

fn token(rooms: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = format!(r#"{{"sub":"browser","exp":{},"rooms":{rooms}}}"#, now + 3600);
    let input = format!("{}.{}", B64URL.encode(r#"{"alg":"HS256","typ":"JWT"}"#), B64URL.encode(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", B64URL.encode(mac.finalize().into_bytes()))
}

#[test]
fn two_browser_pages_share_a_room_see_a_backend_publish_and_a_foreign_token_is_refused() {
    demo_run("ws", false, false);
}

#[test]
fn the_demo_works_over_wss_with_permessage_deflate() {
    demo_run("wss-deflate", true, true);
}

fn demo_run(tag: &str, tls: bool, deflate: bool) {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !ensure_tools(&dir) {
        return;
    }
    let mut cfg = Config {
        workers: 2,
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        publish_key: PublishKey::new(KEY.as_bytes()),
        jwt: Some(Arc::new(JwtVerifier::from_secret(SECRET).unwrap())),
        rooms_claim: Some("rooms".into()),
        http_page: Some(DEMO_PAGE),
        ..Config::default()
    };
    let certs = tls.then(|| certs::make_cert(&format!("browser-{tag}"), "ec"));
    if let Some(d) = &certs {
        let store = CertStore::load(d.join("cert.pem"), d.join("key.pem")).expect("load the test certificate");
        cfg.tls = Some(store.server_config());
    }
    if deflate {
        cfg.compression = Compression::Shared;
        // The test's messages are short: compress them all.
        cfg.compression_min_size = 0;
    }
    let server = Started::start(cfg, |_| Rooms);
    let admin = server.admin.unwrap();
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let shot =
        target.join(if tag == "ws" { "browser-demo.png".to_string() } else { format!("browser-demo-{tag}.png") });
    let _ = std::fs::remove_file(&shot);
    let scheme = if tls { "https" } else { "http" };
    let out = Command::new("timeout")
        .args(["180", "node", "demo.mjs"])
        .current_dir(&dir)
        .env("BASE", format!("{scheme}://localhost:{}", server.addr.port()))
        .env("ADMIN", format!("http://{admin}"))
        .env("PUBLISH_KEY", KEY)
        .env("ROOM", "news:lobby")
        .env("TOKEN_A", token(r#"["news:*"]"#))
        .env("TOKEN_B", token(r#"["news:lobby","other"]"#))
        .env("TOKEN_OTHER", token(r#"["other"]"#))
        .env("SCREENSHOT", &shot)
        .env("EXPECT_EXTENSION", if deflate { "permessage-deflate" } else { "" })
        .output()
        .expect("run node");
    if let Some(d) = certs {
        let _ = std::fs::remove_dir_all(d);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(2) && stdout.contains("\"launch_failed\":true") {
        // The browser did not start: a failure under CI, a skip elsewhere.
        assert!(!ci(), "Chromium did not start under CI=true: {stdout}\n{stderr}");
        eprintln!("browser: Chromium did not start, skipping: {stdout}");
        return;
    }
    assert!(out.status.success() && stdout.contains("\"ok\":true"), "demo.mjs ({tag}) failed:\n{stdout}\n{stderr}");
    let mut steps =
        vec!["both joined", "pages see each other", "publish reached both", "other token refused", "screenshot"];
    if deflate {
        steps.push("permessage-deflate negotiated");
    }
    for step in steps {
        assert!(stdout.contains(step), "step {step:?} missing ({tag}): {stdout}");
    }
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000, "not a PNG screenshot");
    // The refusal was a 403 before the upgrade: one application refusal, nothing opened
    // beyond the two pages.
    let refused: u64 = server.handle().metrics().iter().map(|m| m.rejected[5].get()).sum();
    assert_eq!(refused, 1, "the foreign token's refusal ({tag})");
}
