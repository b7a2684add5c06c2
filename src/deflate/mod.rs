//! permessage-deflate (RFC 7692): the negotiation, always there, and the worker's
//! compressor and decompressor, with the `deflate` feature.

#[cfg(feature = "deflate")]
pub(crate) mod codec;
#[cfg(feature = "deflate")]
pub(crate) mod dedicated;
mod negotiate;

#[cfg(feature = "deflate")]
pub use dedicated::context_bytes as dedicated_context_bytes;
pub use negotiate::{negotiate, Agreed, Compression};
