//! Fixed-capacity buffers between sockets and the codec.

mod pool;
mod ring;

pub use pool::BufPool;
pub use ring::Ring;
