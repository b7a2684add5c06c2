//! The protocol violations a server detects, each mapped once to its close code.

use super::close::CloseCode;
use std::fmt;

/// Everything a peer can do wrong on an open connection.
///
/// Each variant names the RFC 6455 rule that was broken; [`ProtocolError::close_code`]
/// is the one place that decides which close code the peer gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A client frame was not masked (5.1), or a server frame was. Close 1002.
    MaskMismatch,
    /// RSV1-3 set without a negotiated extension (5.2). Close 1002.
    ReservedBits,
    /// Opcode 0x3-0x7 or 0xB-0xF (5.2). Close 1002.
    UnknownOpcode(u8),
    /// A control frame with FIN clear (5.5). Close 1002.
    FragmentedControl,
    /// A control frame with more than 125 payload bytes (5.5). Close 1002.
    ControlTooLong,
    /// A 64-bit payload length with the most significant bit set (5.2). Close 1002.
    LengthTopBit,
    /// A continuation frame with no message started (5.4). Close 1002.
    UnexpectedContinuation,
    /// A new text or binary frame inside a fragmented message (5.4). Close 1002.
    ExpectedContinuation,
    /// A close frame with a 1-byte payload (5.5.1). Close 1002.
    CloseTooShort,
    /// A close frame carrying a reserved or forbidden code (7.4). Close 1002.
    InvalidCloseCode(u16),
    /// A close reason that is not UTF-8 (5.5.1). Close 1007.
    CloseReasonNotUtf8,
    /// A text message that is not UTF-8 (8.1). Close 1007.
    InvalidUtf8,
    /// A compressed message that does not inflate (RFC 7692 6.2). Close 1007.
    CorruptCompressed,
    /// A message larger than the configured limit (10.4). Close 1009.
    MessageTooBig,
    /// More fragments in one message than the configured limit. Close 1009.
    TooManyFragments,
}

impl ProtocolError {
    /// The close code the peer receives for this violation.
    pub fn close_code(self) -> CloseCode {
        use ProtocolError::*;
        match self {
            MaskMismatch
            | ReservedBits
            | UnknownOpcode(_)
            | FragmentedControl
            | ControlTooLong
            | LengthTopBit
            | UnexpectedContinuation
            | ExpectedContinuation
            | CloseTooShort
            | InvalidCloseCode(_) => CloseCode::PROTOCOL_ERROR,
            CloseReasonNotUtf8 | InvalidUtf8 | CorruptCompressed => CloseCode::INVALID_PAYLOAD,
            MessageTooBig | TooManyFragments => CloseCode::MESSAGE_TOO_BIG,
        }
    }

    /// A short reason for the close frame and the log line.
    pub fn reason(self) -> &'static str {
        use ProtocolError::*;
        match self {
            MaskMismatch => "frame masking is wrong for this direction",
            ReservedBits => "reserved bits set without an extension",
            UnknownOpcode(_) => "unknown opcode",
            FragmentedControl => "fragmented control frame",
            ControlTooLong => "control frame payload over 125 bytes",
            LengthTopBit => "64-bit length with the top bit set",
            UnexpectedContinuation => "continuation without a started message",
            ExpectedContinuation => "new message inside a fragmented message",
            CloseTooShort => "close payload of one byte",
            InvalidCloseCode(_) => "invalid close code",
            CloseReasonNotUtf8 => "close reason is not UTF-8",
            InvalidUtf8 => "text is not UTF-8",
            CorruptCompressed => "compressed data is corrupt",
            MessageTooBig => "message too big",
            TooManyFragments => "too many fragments",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            ProtocolError::InvalidCloseCode(c) => write!(f, "invalid close code {c}"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// The caller's buffer is too small; nothing was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsufficientSize {
    /// Bytes the operation needs.
    pub required: usize,
}

impl fmt::Display for InsufficientSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "buffer too small: {} bytes required", self.required)
    }
}

impl std::error::Error for InsufficientSize {}
