//! The smallest useful wsloop server: echo every message back, and keep a count per
//! connection in its `Handler::State` (reported when it closes).
//!
//! ```sh
//! cargo run --release --example echo -- 127.0.0.1:9001
//! ```

use wsloop::proto::{CloseCode, Request};
use wsloop::server::{Accept, Config, ConnId, Connection, Handler, Message, Reject, Server};

struct Echo;

/// What each connection carries: made in `on_open`, handed to every callback.
#[derive(Default)]
struct Stats {
    path: String,
    messages: u64,
}

impl Handler for Echo {
    type State = Stats;

    fn on_open<'r>(&mut self, _: &mut Connection<'_>, req: &Request<'_, 'r>) -> Result<Accept<'r, Stats>, Reject> {
        Ok(Accept::new(Stats { path: req.path().to_string(), messages: 0 }))
    }

    fn on_message(&mut self, conn: &mut Connection<'_>, stats: &mut Stats, msg: Message<'_>) {
        stats.messages += 1;
        // Under the default PauseReading policy a slow reader stops being read from
        // until it drains, so the queue cannot grow without bound.
        let _ = conn.send(msg);
    }

    fn on_close(&mut self, id: ConnId, stats: Stats, code: CloseCode, reason: &str) {
        println!("{id:?} on {} closed ({code}, {reason}) after {} messages", stats.path, stats.messages);
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let server = Server::bind(addr, Config::default())?;
    println!("echo server on ws://{}", server.local_addr());
    server.run(|_worker| Echo)
}
