//! wsloop: a WebSocket server for very many connections on small machines.
//!
//! - [`proto`]: the sans-IO RFC 6455 core (handshake, frame codec, message assembly).
//! - [`session`]: one connection's life as a sans-IO state machine (phase, close
//!   handshake, deadlines, backpressure), driven by bytes and ticks.
//! - [`server`]: worker threads, each one mio event loop, pooled ring buffers,
//!   backpressure, timers, topics.
//! - [`buf`]: the fixed-capacity ring buffers and their pool.
//! - `redis` (feature `redis`): a Redis pub/sub bridge that links the topics of many
//!   nodes.
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod auth;
pub mod buf;
pub mod deflate;
pub mod proto;
#[cfg(feature = "redis")]
pub mod redis;
pub mod server;
pub mod session;
#[cfg(feature = "tls")]
pub mod tls;

pub use proto::CloseCode;
pub use server::{Config, Connection, Handle, Handler, Message, Server};

/// The README's code examples, compiled as doc tests so they stay in step with the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
