//! permessage-deflate in `shared` mode against independent peers (tests/py/deflate_client.py):
//! Python's `websockets` (which compresses by default) and raw frames compressed with
//! Python's zlib for the 1002, 1007 and 1009 rules. Needs `python3` with `websockets`.
#![cfg(feature = "deflate")]

mod common;

use common::TestServer;
use std::path::PathBuf;
use std::process::Command;
use wsloop::server::{Compression, Config};

#[test]
fn python_clients_exchange_compressed_messages_and_bad_input_gets_its_close_code() {
    let max = 100_000;
    let server = TestServer::echo(Config { compression: Compression::Shared, max_message: max, ..Config::default() });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/deflate_client.py");
    let out = Command::new("timeout")
        .args(["60", "python3"])
        .arg(&script)
        .arg(server.url("/"))
        .arg(max.to_string())
        .output()
        .expect("python3 runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "deflate_client.py failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(stdout.contains("all ok"), "{stdout}");
}
