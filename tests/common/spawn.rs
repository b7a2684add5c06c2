//! The real `wsloop` binary started for a test: no `WSLOOP_*` variable inherited from
//! the environment but those the test gives, `RUST_LOG=info`, and its log lines on a
//! channel. The pipe is read to the end whether or not the test still listens, so a
//! talkative server never blocks on a full stderr.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// Spawns `wsloop args..` with exactly the `WSLOOP_*` variables in `env`; returns the
/// child and its stderr lines.
pub fn spawn_wsloop<A, K, V>(args: &[A], env: &[(K, V)]) -> (Child, mpsc::Receiver<String>)
where
    A: AsRef<std::ffi::OsStr>,
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsloop"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WSLOOP_")) {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsloop");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Keep draining after the test stops listening, so the pipe never fills.
            let _ = tx.send(line);
        }
    });
    (child, rx)
}
