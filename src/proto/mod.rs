//! The sans-IO protocol core: the opening handshake and the frame codec. Nothing here
//! touches a socket, a clock or a thread; callers feed bytes in and take bytes out.

pub mod close;
pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;

pub use close::CloseCode;
pub use error::{InsufficientSize, ProtocolError};
pub use frame::{encode_close, encode_frame, FrameHeader, OpCode, Parsed, Role};
pub use handshake::{HandshakeError, HandshakeLimits, Request};
pub use message::{Decoder, DecoderConfig, Event};
