//! Runs every seed in `fuzz/corpus/<target>/` through the same check the fuzz target
//! runs, so the committed corpus (and every crash added to it) is replayed by plain
//! `cargo test`, without cargo-fuzz or a nightly toolchain. The `resp` seeds need the
//! `redis` feature (`cargo test --all-features`, as scripts/test.sh runs).

use std::fs;
use std::path::PathBuf;
use wsloop::proto::fuzzing;

#[path = "../fuzz/common/session_differential.rs"]
mod session_differential;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no seeds in {}", dir.display());
    for path in paths {
        let data = fs::read(&path).expect("readable seed");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "seed {} failed", path.display());
    }
}

#[test]
fn handshake_seeds_pass() {
    replay("handshake", fuzzing::handshake);
}

#[test]
fn frame_seeds_pass() {
    replay("frame", fuzzing::frame);
}

#[test]
fn message_seeds_pass() {
    replay("message", fuzzing::message);
}

#[cfg(feature = "redis")]
#[test]
fn resp_seeds_pass() {
    replay("resp", wsloop::redis::fuzzing::resp);
}

#[cfg(feature = "redis")]
#[test]
fn cluster_slots_seeds_pass() {
    replay("cluster_slots", wsloop::redis::fuzzing::cluster_slots);
}

#[test]
fn session_seeds_pass() {
    replay("session", wsloop::session::fuzzing::session);
}

#[test]
fn session_differential_seeds_pass() {
    replay("session_differential", session_differential::check);
}

#[test]
fn admin_chunked_seeds_pass() {
    replay("admin_chunked", wsloop::server::fuzzing::admin_chunked);
}

#[test]
fn v1_command_seeds_pass() {
    replay("v1_command", wsloop::server::fuzzing::v1_command);
}

#[cfg(feature = "jwt")]
#[test]
fn jwt_seeds_pass() {
    replay("jwt", wsloop::auth::fuzzing::jwt);
}

#[cfg(feature = "tls")]
#[test]
fn tls_session_seeds_pass() {
    replay("tls_session", wsloop::tls::fuzzing::tls_session);
}

/// fuzz/Cargo.toml names every file in fuzz/fuzz_targets/ as a `[[bin]]` of its own name
/// with only the keys cargo-fuzz writes, and each target has seeds here. Once a merge
/// dropped the session targets' sections and left the fuzz crate's `tungstenite`
/// dependency inside `resp`'s, which cargo ignores with only a warning.
#[test]
fn every_fuzz_target_has_its_bin_section_and_seeds() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    let mut bins: Vec<Vec<(&str, &str)>> = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
            if in_bin {
                bins.push(Vec::new());
            }
        } else if in_bin {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not a key: {line}"));
            bins.last_mut().unwrap().push((key.trim(), value.trim()));
        }
    }
    let mut named = Vec::new();
    for bin in &bins {
        let keys: Vec<&str> = bin.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["name", "path", "test", "doc", "bench"], "{bin:?}");
        let name = bin[0].1.trim_matches('"');
        assert_eq!(bin[1].1, format!("\"fuzz_targets/{name}.rs\""), "{bin:?}");
        assert!(fuzz.join("corpus").join(name).is_dir(), "no seeds for {name}");
        named.push(name.to_string());
    }
    let mut files: Vec<String> = fs::read_dir(fuzz.join("fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    named.sort();
    assert_eq!(named, files, "fuzz/fuzz_targets/ and the [[bin]] sections of fuzz/Cargo.toml");
}
