//! Why a connection ended: every close the server starts, and every way a connection
//! can go away, each with its close code, reason text and metric label in one `match`.

use crate::proto::{CloseCode, ProtocolError};

/// Why a connection ended. The closes the server starts send a close frame with
/// [`CloseCause::code`] and [`CloseCause::reason`]; the drops (`frame() == false`) end
/// the TCP connection without one and are reported with code 1006.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// The peer sent a close frame first (its code is reported, 1005 when empty).
    PeerClosed,
    /// The application called `Connection::close` with its own code and reason.
    Application,
    /// The peer broke RFC 6455 (1002), sent invalid UTF-8 (1007) or too big a message
    /// (1009): "fail the connection" (RFC 6455 7.1.7).
    Protocol(ProtocolError),
    /// Nothing arrived for `idle_timeout` (1001).
    IdleTimeout,
    /// More messages per second than `max_msg_rate` (1008).
    RateLimit,
    /// Over `max_backpressure` under the `Close` policy (1008).
    SlowConsumer,
    /// The JWT's `exp` passed (1008).
    TokenExpired,
    /// Graceful shutdown (1001).
    ShuttingDown,
    /// The client published under `--client-publish deny` (1008).
    PublishDenied,
    /// Outgoing bytes did not drain for `idle_timeout`: dropped.
    WriteStall,
    /// Our close frame was not answered within `close_timeout`: dropped.
    CloseTimeout,
    /// The peer's TCP connection ended without a close frame.
    PeerGone,
    /// A read or write failed (reset, broken pipe).
    Reset,
    /// The server stopped without a close handshake (`Handle::stop`).
    Stopped,
    /// A `wsloop.v1` client sent something that is not one of its commands, or asked to
    /// recover a room it has not joined (1008).
    BadCommand,
}

impl CloseCause {
    /// Every cause, in metric exposition order ([`CloseCause::index`]).
    pub const ALL: [CloseCause; 15] = [
        CloseCause::PeerClosed,
        CloseCause::Application,
        CloseCause::Protocol(ProtocolError::ReservedBits),
        CloseCause::IdleTimeout,
        CloseCause::RateLimit,
        CloseCause::SlowConsumer,
        CloseCause::TokenExpired,
        CloseCause::ShuttingDown,
        CloseCause::PublishDenied,
        CloseCause::WriteStall,
        CloseCause::CloseTimeout,
        CloseCause::PeerGone,
        CloseCause::Reset,
        CloseCause::Stopped,
        CloseCause::BadCommand,
    ];

    /// The close code the server sends for this cause (or reports, for drops: 1006).
    /// `PeerClosed`, `Application` and `CloseTimeout` carry the code of the close frame
    /// that was exchanged; they map to it elsewhere and to 1000 here.
    pub fn code(self) -> CloseCode {
        self.describe().0
    }

    /// The reason text of the close frame and of the log line.
    pub fn reason(self) -> &'static str {
        self.describe().1
    }

    /// Label value of `wsloop_close_causes_total{cause=...}`.
    pub fn label(self) -> &'static str {
        self.describe().2
    }

    /// Whether the server sends a close frame for it.
    pub fn sends_frame(self) -> bool {
        self.describe().3
    }

    /// Position in [`CloseCause::ALL`].
    pub fn index(self) -> usize {
        self.describe().4
    }

    /// The one mapping: code, reason, label, whether a close frame is sent, index.
    fn describe(self) -> (CloseCode, &'static str, &'static str, bool, usize) {
        use CloseCause::*;
        match self {
            PeerClosed => (CloseCode::NORMAL, "closed by the peer", "peer_closed", false, 0),
            Application => (CloseCode::NORMAL, "closed by the application", "application", true, 1),
            Protocol(e) => (e.close_code(), e.reason(), "protocol_error", true, 2),
            IdleTimeout => (CloseCode::GOING_AWAY, "idle timeout", "idle_timeout", true, 3),
            RateLimit => (CloseCode::POLICY_VIOLATION, "message rate limit exceeded", "rate_limit", true, 4),
            SlowConsumer => (CloseCode::POLICY_VIOLATION, "slow consumer", "slow_consumer", true, 5),
            TokenExpired => (CloseCode::POLICY_VIOLATION, "token expired", "token_expired", true, 6),
            ShuttingDown => (CloseCode::GOING_AWAY, "server shutting down", "shutdown", true, 7),
            PublishDenied => (CloseCode::POLICY_VIOLATION, "clients may not publish here", "publish_denied", true, 8),
            WriteStall => (CloseCode::ABNORMAL, "outgoing buffer did not drain", "write_stall", false, 9),
            CloseTimeout => (CloseCode::ABNORMAL, "close handshake timed out", "close_timeout", false, 10),
            PeerGone => (CloseCode::ABNORMAL, "peer went away without a close frame", "peer_gone", false, 11),
            Reset => (CloseCode::ABNORMAL, "connection reset", "reset", false, 12),
            Stopped => (CloseCode::ABNORMAL, "server stopped", "stopped", false, 13),
            BadCommand => (CloseCode::POLICY_VIOLATION, "not a wsloop.v1 command", "bad_command", true, 14),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_position_in_all() {
        for (i, c) in CloseCause::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?}");
        }
    }

    #[test]
    fn closes_we_send_carry_a_code_allowed_on_the_wire() {
        for c in CloseCause::ALL {
            if c.sends_frame() {
                assert!(c.code().is_valid_on_wire(), "{c:?}");
                assert!(c.reason().len() <= 123, "{c:?}");
            } else if c != CloseCause::PeerClosed {
                assert_eq!(c.code(), CloseCode::ABNORMAL, "{c:?}");
            }
        }
    }
}
