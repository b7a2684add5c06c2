//! permessage-deflate (RFC 7692): the negotiation, always there, and the worker's
//! compressor and decompressor, with the `deflate` feature.

#[cfg(feature = "deflate")]
pub(crate) mod codec;
mod negotiate;

pub use negotiate::{negotiate, Agreed, Compression};
