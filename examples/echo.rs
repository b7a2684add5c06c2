//! The smallest useful wsloop server: echo every message back.
//!
//! ```sh
//! cargo run --release --example echo -- 127.0.0.1:9001
//! ```

use wsloop::server::{Config, Connection, Handler, Message, Server};

struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, conn: &mut Connection<'_>, msg: Message<'_>) {
        // Under the default PauseReading policy a slow reader stops being read from
        // until it drains, so the queue cannot grow without bound.
        let _ = conn.send(msg);
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let server = Server::bind(addr, Config::default())?;
    println!("echo server on ws://{}", server.local_addr());
    server.run(|_worker| Echo)
}
