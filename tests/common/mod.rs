//! Shared helpers for integration tests: an in-process server on a loopback port.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};
pub use wsloop::server::Echo;
use wsloop::server::{Config, Handler, Running, Server};

pub mod counting;

/// A server running on its own threads, stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    running: Option<Running>,
}

impl TestServer {
    pub fn start<H: Handler, F: Fn(usize) -> H>(cfg: Config, factory: F) -> TestServer {
        let server = Server::bind("127.0.0.1:0", cfg).expect("bind");
        let addr = server.local_addr();
        let running = server.start(factory).expect("start");
        TestServer { addr, running: Some(running) }
    }

    pub fn echo(cfg: Config) -> TestServer {
        Self::start(cfg, |_| Echo)
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn handle(&self) -> &wsloop::Handle {
        self.running.as_ref().expect("running").handle()
    }

    /// Graceful shutdown and wait for the workers to exit.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        let r = self.running.take().expect("running");
        r.handle().shutdown();
        r.join()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.handle().stop();
            let _ = r.join();
        }
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}
