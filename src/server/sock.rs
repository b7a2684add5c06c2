//! Socket reads and writes for the hot path, as bare system calls.
//!
//! glibc's `recv`/`send`/`writev` are pthread cancellation points: each call switches
//! asynchronous cancellation on and off around the system call, about 60 user-space
//! instructions per call, a tenth of an echoed message's budget. Worker threads are
//! never cancelled, so on Linux these go through rustix, which makes the system call
//! itself. Elsewhere they fall back to std. Errors are the `io::Error`s std would return.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};

/// A connection's socket seen as `Read + Write` through bare system calls.
pub(crate) struct Sock<'a>(pub &'a mio::net::TcpStream);

#[cfg(target_os = "linux")]
mod imp {
    use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags};
    use std::io::{self, IoSlice, IoSliceMut};

    #[inline(always)]
    fn err(e: rustix::io::Errno) -> io::Error {
        io::Error::from_raw_os_error(e.raw_os_error())
    }

    #[inline(always)]
    pub fn recv(s: &mio::net::TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        rustix::net::recv(s, buf, RecvFlags::empty()).map(|(n, _)| n).map_err(err)
    }

    #[inline(always)]
    pub fn readv(s: &mio::net::TcpStream, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        rustix::io::readv(s, bufs).map_err(err)
    }

    // NOSIGNAL: a peer's reset is an error, not SIGPIPE (an embedding program may not
    // ignore SIGPIPE).
    #[inline(always)]
    pub fn send(s: &mio::net::TcpStream, buf: &[u8]) -> io::Result<usize> {
        rustix::net::send(s, buf, SendFlags::NOSIGNAL).map_err(err)
    }

    #[inline(always)]
    pub fn sendv(s: &mio::net::TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        rustix::net::sendmsg(s, bufs, &mut SendAncillaryBuffer::default(), SendFlags::NOSIGNAL).map_err(err)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io::{self, IoSlice, IoSliceMut, Read, Write};

    pub fn recv(mut s: &mio::net::TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        s.read(buf)
    }
    pub fn readv(mut s: &mio::net::TcpStream, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        s.read_vectored(bufs)
    }
    pub fn send(mut s: &mio::net::TcpStream, buf: &[u8]) -> io::Result<usize> {
        s.write(buf)
    }
    pub fn sendv(mut s: &mio::net::TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        s.write_vectored(bufs)
    }
}

impl Read for Sock<'_> {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        imp::recv(self.0, buf)
    }

    #[inline]
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        imp::readv(self.0, bufs)
    }
}

impl Write for Sock<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        imp::send(self.0, buf)
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        imp::sendv(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (mio::net::TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (mio::net::TcpStream::from_std(server), client)
    }

    #[test]
    fn reads_and_writes_like_std() {
        let (server, mut client) = pair();
        let mut s = Sock(&server);
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);

        client.write_all(b"hello world").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < 11 {
            assert!(std::time::Instant::now() < deadline, "data did not arrive");
            let (a, b) = buf.split_at_mut(5);
            match s.read_vectored(&mut [IoSliceMut::new(a), IoSliceMut::new(b)]) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, b"hello world");

        assert_eq!(s.write(b"abc").unwrap(), 3);
        assert_eq!(s.write_vectored(&[IoSlice::new(b"de"), IoSlice::new(b""), IoSlice::new(b"f")]).unwrap(), 3);
        let mut back = [0u8; 6];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"abcdef");

        drop(client);
        let eof = loop {
            assert!(std::time::Instant::now() < deadline, "end of stream did not arrive");
            match s.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                r => break r.unwrap(),
            }
        };
        assert_eq!(eof, 0, "end of stream after the peer closed");
    }

    #[test]
    fn writing_to_a_reset_peer_is_an_error_not_a_signal() {
        let (server, client) = pair();
        // Linger 0: close sends RST.
        socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(client);
        let mut s = Sock(&server);
        let err = (0..1000)
            .find_map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(1));
                s.write(b"x").err()
            })
            .expect("a write to a reset peer fails");
        assert!(
            matches!(err.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe),
            "unexpected error {err:?}"
        );
    }
}
