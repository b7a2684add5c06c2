//! wsloop: a WebSocket server for very many connections on small machines.
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod proto;
