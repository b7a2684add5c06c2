//! Not a server to use: the least any WebSocket server must do to echo a small message.
//! It does one read, strips the mask and does one write, with no limits, timeouts,
//! close handling or validation. Its CPU time per message is therefore the kernel's
//! share (epoll, recv, send and the loopback TCP path), which a real server cannot go
//! below on the same machine.
//!
//! `benches/compare.sh` does not run it; measure by hand with the same pinning:
//!
//! ```sh
//! cargo build --release --example kernel_floor --features bench --bin wsloop-bench
//! taskset -c 0 target/release/examples/kernel_floor 127.0.0.1:9100 &
//! taskset -c 1 target/release/wsloop-bench echo --url ws://127.0.0.1:9100/ \
//!     --conns 100 --size 32 --duration 5 --server-pid $!
//! ```
//!
//! It handles only what `wsloop-bench echo` sends: masked final frames with 7- or
//! 16-bit lengths.

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use wsloop::proto::handshake::{header_storage, parse_request, write_accept, ParseStatus};
use wsloop::proto::mask::apply_mask;
use wsloop::proto::HandshakeLimits;

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    sock: TcpStream,
    upgraded: bool,
    inbuf: Vec<u8>,
    have: usize,
}

fn main() -> io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9100".into());
    let mut listener = TcpListener::bind(addr.parse().map_err(io::Error::other)?)?;
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns = slab::Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut out = vec![0u8; 1 << 16];
    println!("kernel_floor on {addr}");
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut sock, _)) = listener.accept() {
                    sock.set_nodelay(true)?;
                    let e = conns.vacant_entry();
                    poll.registry().register(&mut sock, Token(e.key()), Interest::READABLE)?;
                    e.insert(Conn { sock, upgraded: false, inbuf: vec![0; 1 << 16], have: 0 });
                }
                continue;
            }
            let k = ev.token().0;
            let Some(c) = conns.get_mut(k) else { continue };
            if !serve(c, &mut out) {
                let mut c = conns.remove(k);
                let _ = poll.registry().deregister(&mut c.sock);
            }
        }
    }
}

/// Reads what is there and answers it; false when the connection is done.
fn serve(c: &mut Conn, out: &mut [u8]) -> bool {
    loop {
        let n = match c.sock.read(&mut c.inbuf[c.have..]) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        };
        c.have += n;
        let mut o = 0;
        let used =
            if c.upgraded { unmask_frames(&mut c.inbuf[..c.have], out, &mut o) } else { upgrade(c, out, &mut o) };
        c.inbuf.copy_within(used..c.have, 0);
        c.have -= used;
        if o > 0 && c.sock.write_all(&out[..o]).is_err() {
            return false;
        }
        if c.have == c.inbuf.len() {
            return false;
        }
    }
}

fn upgrade(c: &mut Conn, out: &mut [u8], o: &mut usize) -> usize {
    let mut storage = header_storage();
    match parse_request(&c.inbuf[..c.have], &mut storage, &HandshakeLimits::default()) {
        Ok(ParseStatus::Complete(req, head)) => {
            *o += write_accept(out, &req, None, b"").expect("response fits");
            c.upgraded = true;
            head
        }
        _ => 0,
    }
}

/// Turns each complete masked frame in `buf` into the same frame unmasked in `out`.
fn unmask_frames(buf: &mut [u8], out: &mut [u8], o: &mut usize) -> usize {
    let mut at = 0;
    while buf.len() - at >= 6 {
        let (b0, b1) = (buf[at], buf[at + 1] & 0x7f);
        let (len, hl) = match b1 {
            126 if buf.len() - at >= 8 => (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4),
            126 => break,
            n => (n as usize, 2),
        };
        if buf.len() - at < hl + 4 + len || *o + hl + len > out.len() {
            break;
        }
        let key = [buf[at + hl], buf[at + hl + 1], buf[at + hl + 2], buf[at + hl + 3]];
        let payload = &mut buf[at + hl + 4..at + hl + 4 + len];
        apply_mask(payload, key, 0);
        out[*o] = b0;
        out[*o + 1] = b1;
        out[*o + 2..*o + hl].copy_from_slice(&buf[at + 2..at + hl]);
        out[*o + hl..*o + hl + len].copy_from_slice(&buf[at + hl + 4..at + hl + 4 + len]);
        *o += hl + len;
        at += hl + 4 + len;
    }
    at
}
