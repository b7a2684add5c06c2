//! The `wsloop` and `wsloop-bench` command lines as a user meets them: the README's flag
//! table against `--help` (every flag, every default), an environment variable for every
//! flag with the command line winning, `--version`, one-line errors with exit status 2,
//! and JSON log lines.
#![cfg(feature = "cli")]

use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[path = "common/spawn.rs"]
mod spawn;
use spawn::spawn_wsloop;

const WSLOOP: &str = env!("CARGO_BIN_EXE_wsloop");

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null());
    // Start from no WSLOOP_* settings, whatever the environment running the tests has.
    for (k, _) in std::env::vars() {
        if k.starts_with("WSLOOP_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).output().expect("run the binary")
}

fn help(bin: &str, args: &[&str]) -> String {
    let out = run(bin, args, &[]);
    assert!(out.status.success(), "{bin} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every `--flag` of a long `--help` text with its help block (lines up to the next flag).
fn help_blocks(text: &str) -> BTreeMap<String, String> {
    let mut blocks = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        let flag_line = t.starts_with("--") || (t.starts_with('-') && t.get(2..4) == Some(", "));
        if flag_line && line.starts_with("  ") {
            let long = t.split_whitespace().find(|w| w.starts_with("--")).unwrap();
            let name = long.trim_end_matches(',').to_string();
            current = Some(name.clone());
            blocks.insert(name, line.to_string());
        } else if let Some(c) = &current {
            let b = blocks.get_mut(c).unwrap();
            b.push(' ');
            b.push_str(t);
        }
    }
    blocks.remove("--help");
    blocks.remove("--version");
    blocks
}

/// A flag's default as `--help` states it: clap's `[default: X]`, or `(default: X)` in
/// the text for flags whose default is not a value (off, number of cores, ...).
fn help_default(block: &str) -> Option<String> {
    let grab = |open: &str, close: char| {
        block.find(open).map(|i| {
            let rest = &block[i + open.len()..];
            rest[..rest.find(close).unwrap()].trim().to_string()
        })
    };
    grab("[default: ", ']').or_else(|| grab("(default: ", ')'))
}

/// `flag -> default` from the README's table under "## The binary".
fn readme_table() -> BTreeMap<String, String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("## The binary").expect("README has a '## The binary' section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let flag = cells[0].trim_matches('`').split_whitespace().next().unwrap().to_string();
        // The default is the cell's first `code` span; words after it are a note.
        let default = cells[1].split('`').nth(1).unwrap_or_else(|| panic!("no `default` in {line:?}")).to_string();
        assert!(rows.insert(flag.clone(), default).is_none(), "{flag} twice in the README table");
    }
    rows
}

#[test]
fn readme_flag_table_matches_help() {
    let text = help(WSLOOP, &["--help"]);
    let from_help: BTreeMap<String, String> = help_blocks(&text)
        .into_iter()
        .map(|(flag, block)| {
            let d = help_default(&block).unwrap_or_else(|| panic!("--help states no default for {flag}: {block}"));
            (flag, d)
        })
        .collect();
    let from_readme = readme_table();
    assert!(from_help.len() >= 25, "too few flags parsed from --help: {from_help:?}\n{text}");
    let mut problems = Vec::new();
    for (flag, d) in &from_help {
        match from_readme.get(flag) {
            None => problems.push(format!("{flag} (default {d:?}) is missing from the README table")),
            Some(r) if r != d => problems.push(format!("{flag}: README says default {r:?}, --help says {d:?}")),
            Some(_) => {}
        }
    }
    for flag in from_readme.keys().filter(|f| !from_help.contains_key(*f)) {
        problems.push(format!("{flag} is in the README table but not in --help"));
    }
    assert!(problems.is_empty(), "README.md and `wsloop --help` differ:\n{}", problems.join("\n"));
}

#[test]
fn every_flag_has_its_environment_variable() {
    let bench = env!("CARGO_BIN_EXE_wsloop-bench");
    let cases = [
        (WSLOOP, vec!["--help"], "WSLOOP_"),
        (bench, vec!["echo", "--help"], "WSLOOP_BENCH_"),
        (bench, vec!["idle", "--help"], "WSLOOP_BENCH_"),
        (bench, vec!["broadcast", "--help"], "WSLOOP_BENCH_"),
    ];
    for (bin, args, prefix) in cases {
        let blocks = help_blocks(&help(bin, &args));
        assert!(blocks.len() >= 8, "{args:?}: {blocks:?}");
        for (flag, block) in blocks {
            let var = format!("[env: {prefix}{}=", flag[2..].to_ascii_uppercase().replace('-', "_"));
            assert!(block.contains(&var), "{bin} {args:?}: {flag} lacks {var}: {block}");
        }
    }
}

#[test]
fn version_prints_the_crate_version() {
    for bin in [WSLOOP, env!("CARGO_BIN_EXE_wsloop-bench")] {
        let out = run(bin, &["--version"], &[]);
        assert!(out.status.success(), "{out:?}");
        let name = std::path::Path::new(bin).file_name().unwrap().to_str().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{name} {}\n", env!("CARGO_PKG_VERSION")));
    }
}

/// Runs `wsloop` expecting a usage error; returns its single stderr line.
fn usage_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(WSLOOP, args, env);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err:?}");
    assert!(err.ends_with("; see --help\n"), "{args:?}: {err:?}");
    err
}

#[test]
fn a_bad_value_is_one_line_naming_flag_value_and_what_is_allowed() {
    /// Arguments, environment, what the line must contain.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["echo", "--workers", "x"],
            &[],
            "wsloop: invalid value \"x\" for --workers: expected a whole number from 1 to 64",
        ),
        (&["echo", "--workers=0"], &[], "invalid value \"0\" for --workers: expected a whole number from 1 to 64"),
        (
            &["echo", "--accept", "round-robin"],
            &[],
            "invalid value \"round-robin\" for --accept: expected handoff or reuseport",
        ),
        (&["echo", "--idle-timeout", "-1"], &[], "invalid value \"-1\" for --idle-timeout: expected seconds in (0, "),
        (&["echo", "--log-format", "xml"], &[], "invalid value \"xml\" for --log-format: expected text or json"),
        (&["echo", "--admin-listen", "9101"], &[], "invalid value \"9101\" for --admin-listen: expected IP:PORT"),
        (&["echo"], &[("WSLOOP_MAX_CONNS", "lots")], "invalid value \"lots\" for --max-conns (from WSLOOP_MAX_CONNS)"),
        (&["serve"], &[], "invalid value \"serve\" for <MODE>: expected echo or rooms"),
        (&[], &[], "missing <MODE> (echo or rooms)"),
        (&["echo", "--lisen", "x"], &[], "unknown flag \"--lisen\" (did you mean --listen?)"),
        (&["echo", "--ping-interval", "80"], &[], "--ping-interval is 80s; must be below --idle-timeout (75s)"),
        (&["echo", "--redis", "redis://127.0.0.1/"], &[], "--redis with echo shares the --jwt-require-jti check only"),
    ];
    for (args, env, want) in cases {
        let line = usage_error(args, env);
        assert!(line.contains(want), "{args:?} {env:?}: {line:?} lacks {want:?}");
    }
}

#[test]
fn unusable_key_files_say_which_file_and_why() {
    let dir = std::env::temp_dir().join(format!("wsloop-cli-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let short = dir.join("short-secret");
    std::fs::write(&short, b"twenty bytes secret!\n").unwrap();
    let s = short.to_str().unwrap();
    let line = usage_error(&["echo", "--jwt-secret-file", s], &[]);
    assert!(
        line.contains(&format!("--jwt-secret-file {s}: the file has 20 bytes"))
            && line.contains("RFC 7518 section 3.2 requires at least 32 bytes"),
        "{line}"
    );
    let missing = dir.join("absent.pem");
    let m = missing.to_str().unwrap();
    let line = usage_error(&["echo", "--jwt-public-key", m, "--jwt-alg", "ES256"], &[]);
    assert!(line.contains(&format!("--jwt-public-key {m}: cannot read the file: No such file")), "{line}");
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa1024-public.pem");
    let line = usage_error(&["echo", "--jwt-public-key", keys, "--jwt-alg", "RS256"], &[]);
    assert!(line.contains("the RSA key has 1024 bits; RFC 7518 section 3.3 requires at least 2048"), "{line}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_errors_are_one_line_too() {
    let bench = env!("CARGO_BIN_EXE_wsloop-bench");
    let cases: &[(&[&str], &str)] = &[
        (&["echo", "--url", "ws://127.0.0.1:1/", "--hold", "3"], "--hold does not apply to echo mode (only to idle)"),
        (&["echo", "--url", "ftp://h/"], "invalid value \"ftp://h/\" for --url: expected ws[s]://HOST[:PORT][/PATH]"),
        (&["flood"], "unknown mode \"flood\": expected echo, idle or broadcast"),
        (&[], "no mode given: expected echo, idle or broadcast"),
    ];
    for (args, want) in cases {
        let out = run(bench, args, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.contains(want) && err.ends_with("; see --help\n"), "{args:?}: {err:?} lacks {want:?}");
    }
}

/// A running `wsloop` whose stderr lines arrive on a channel; killed on drop.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        let (child, lines) = spawn_wsloop(args, env);
        Server { child, lines }
    }

    /// The first log line containing `needle`, within 20 s.
    fn line_with(&self, needle: &str) -> String {
        let mut seen = Vec::new();
        for _ in 0..200 {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => seen.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no log line with {needle:?}; got {seen:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn environment_sets_flags_and_the_command_line_wins() {
    let env = [
        ("WSLOOP_LISTEN", "127.0.0.1:0"),
        ("WSLOOP_WORKERS", "3"),
        ("WSLOOP_ADMIN_LISTEN", "127.0.0.1:0"),
        ("WSLOOP_LOG_FORMAT", "json"),
        // Invalid, but never read: --max-conns is on the command line.
        ("WSLOOP_MAX_CONNS", "not a number"),
    ];
    let s = Server::start(&["echo", "--workers", "1", "--max-conns", "10"], &env);
    // From WSLOOP_ADMIN_LISTEN (logged before the listening line).
    let admin = s.line_with("/metrics and /healthz");
    let a: serde_json::Value = serde_json::from_str(&admin).unwrap_or_else(|e| panic!("not JSON ({e}): {admin}"));
    assert!(a["admin"].as_str().is_some_and(|x| x.starts_with("127.0.0.1:")), "{admin}");
    let line = s.line_with("listening on ws://");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["target"], "wsloop", "{line}");
    assert!(v["time"].as_str().is_some_and(|t| t.len() >= 20 && t.ends_with('Z')), "{line}");
    // From the command line, over WSLOOP_WORKERS=3.
    assert_eq!(v["workers"], 1, "{line}");
    assert_eq!(v["mode"], "echo", "{line}");
    // From WSLOOP_LISTEN: port 0 gave some free port, not the default 9001.
    let listen: std::net::SocketAddr = v["listen"].as_str().unwrap().parse().unwrap();
    assert!(listen.ip().is_loopback() && listen.port() != 9001 && listen.port() != 0, "{line}");
    assert!(v["message"].as_str().unwrap().contains(&format!("listening on ws://{listen} with 1 workers")), "{line}");
}

#[test]
fn text_logs_stay_the_default() {
    let s = Server::start(&["echo", "--listen=127.0.0.1:0", "--workers=1"], &[]);
    let line = s.line_with("listening on ws://");
    assert!(!line.starts_with('{') && line.contains("INFO"), "{line}");
}
