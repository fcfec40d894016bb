//! Why the gateway closes a connection: stable codes sent in the `Close` control frame, declared
//! once in the table below (code, metrics label, and the text a client is sent when nothing more
//! specific is known).

use std::fmt;

/// Declares `CloseCode` from one table: each row is a variant, its wire code, its label and its
/// description.
macro_rules! close_codes {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident = $code:literal, $label:literal, $description:literal;
    )+) => {
        /// The reason a connection was closed, with its wire code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum CloseCode {
            $( $(#[doc = $doc])* $name = $code, )+
        }

        impl CloseCode {
            /// Every code, in the table's order (for metrics tables).
            pub const ALL: &'static [CloseCode] = &[$( CloseCode::$name ),+];

            /// A short label, used in metrics.
            pub fn label(self) -> &'static str {
                match self {
                    $( CloseCode::$name => $label, )+
                }
            }

            /// What the `Close` says when nothing more specific is known.
            pub fn description(self) -> &'static str {
                match self {
                    $( CloseCode::$name => $description, )+
                }
            }
        }
    };
}

close_codes! {
    /// A frame could not be decoded (bad length, flags, kind or archive).
    ProtocolError = 1, "protocol_error", "a frame could not be decoded";
    /// The frame's protocol version is not the server's.
    UnsupportedVersion = 2, "unsupported_version", "the frame's protocol version is not the server's";
    /// A frame is larger than the configured maximum.
    FrameTooLarge = 3, "frame_too_large", "a frame is larger than the server accepts";
    /// The first frame was not a `Hello`.
    HandshakeExpected = 10, "handshake_expected", "the first frame must be a Hello";
    /// The ticket's signature is wrong, or its lifetime is longer than the server allows.
    BadTicket = 11, "bad_ticket", "the ticket was not accepted";
    /// The ticket has expired.
    ExpiredTicket = 12, "expired_ticket", "the ticket has expired";
    /// No `Hello` arrived within the handshake deadline.
    HandshakeTimeout = 13, "handshake_timeout", "no Hello arrived in time";
    /// The session was refused by the game's session hook.
    SessionRefused = 14, "session_refused", "the game refused the session";
    /// The `Hello`'s layout hash is not the game's: the client was built against other
    /// message layouts.
    LayoutMismatch = 15, "layout_mismatch", "the client's message layouts are not the server's";
    /// No frame arrived within the idle timeout.
    IdleTimeout = 20, "idle_timeout", "no frame arrived within the idle timeout";
    /// The client sent more messages or bytes per second than allowed.
    RateLimited = 21, "rate_limited", "the client sent faster than allowed";
    /// The client did not read fast enough and reliable frames piled up.
    SlowConsumer = 22, "slow_consumer", "the client did not read fast enough";
    /// The same player connected again; this connection was replaced.
    Replaced = 30, "replaced", "the same player connected again; this connection was replaced";
    /// The server is shutting down.
    ServerShutdown = 31, "server_shutdown", "the server is shutting down; reconnect shortly";
    /// The server is at its connection limit.
    ServerFull = 32, "server_full", "the server is full; try again later";
    /// The server is overloaded and sheds new sessions; the `Refused` before this close says
    /// when to retry.
    Overloaded = 33, "overloaded", "the server is overloaded; try again after the retry-after";
    /// The session moved to another node of the fleet; the `Redirect` before this close says
    /// where to reconnect.
    Moved = 34, "moved", "the session moved to another node; reconnect where the Redirect says";
}

impl CloseCode {
    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Whether the frames a session's client sent before it heard of this close are still
    /// routed while the connection closes: yes when the server closes for a reason of its own
    /// (moving the session to another node, shutting down), so no input in flight is lost; no
    /// when the client is at fault or was replaced (they are read and discarded).
    pub fn routes_in_flight(self) -> bool {
        matches!(self, CloseCode::Moved | CloseCode::ServerShutdown)
    }

    /// The code with this wire value, if it is one.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL
            .iter()
            .copied()
            .find(|known| known.code() == code)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::CloseCode;

    #[test]
    fn every_code_round_trips_and_has_a_distinct_label() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(code.code()), Some(*code));
            assert!(!code.description().is_empty());
        }
        let mut labels: Vec<&str> = CloseCode::ALL.iter().map(|code| code.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), CloseCode::ALL.len());
        assert_eq!(CloseCode::from_code(999), None);
    }
}
