//! Why the gateway closes a connection: stable codes sent in the `Close` control frame.

use std::fmt;

/// The reason a connection was closed, with its wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum CloseCode {
    /// A frame could not be decoded (bad length, version, flags, kind or archive).
    ProtocolError = 1,
    /// The frame's protocol version is not the server's.
    UnsupportedVersion = 2,
    /// A frame is larger than the configured maximum.
    FrameTooLarge = 3,
    /// The first frame was not a `Hello`.
    HandshakeExpected = 10,
    /// The ticket's signature is wrong.
    BadTicket = 11,
    /// The ticket has expired.
    ExpiredTicket = 12,
    /// No `Hello` arrived within the handshake deadline.
    HandshakeTimeout = 13,
    /// The session was refused by the game's session hook.
    SessionRefused = 14,
    /// No frame arrived within the idle timeout.
    IdleTimeout = 20,
    /// The client sent more messages or bytes per second than allowed.
    RateLimited = 21,
    /// The client did not read fast enough and reliable frames piled up.
    SlowConsumer = 22,
    /// The same player connected again; this connection was replaced.
    Replaced = 30,
    /// The server is shutting down.
    ServerShutdown = 31,
    /// The server is at its connection limit.
    ServerFull = 32,
}

impl CloseCode {
    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code with this wire value, if it is one.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        use CloseCode::*;
        [
            ProtocolError,
            UnsupportedVersion,
            FrameTooLarge,
            HandshakeExpected,
            BadTicket,
            ExpiredTicket,
            HandshakeTimeout,
            SessionRefused,
            IdleTimeout,
            RateLimited,
            SlowConsumer,
            Replaced,
            ServerShutdown,
            ServerFull,
        ]
        .into_iter()
        .find(|known| known.code() == code)
    }

    /// A short label, used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::UnsupportedVersion => "unsupported_version",
            CloseCode::FrameTooLarge => "frame_too_large",
            CloseCode::HandshakeExpected => "handshake_expected",
            CloseCode::BadTicket => "bad_ticket",
            CloseCode::ExpiredTicket => "expired_ticket",
            CloseCode::HandshakeTimeout => "handshake_timeout",
            CloseCode::SessionRefused => "session_refused",
            CloseCode::IdleTimeout => "idle_timeout",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::Replaced => "replaced",
            CloseCode::ServerShutdown => "server_shutdown",
            CloseCode::ServerFull => "server_full",
        }
    }

    /// Every code, for metrics tables.
    pub const ALL: [CloseCode; 14] = [
        CloseCode::ProtocolError,
        CloseCode::UnsupportedVersion,
        CloseCode::FrameTooLarge,
        CloseCode::HandshakeExpected,
        CloseCode::BadTicket,
        CloseCode::ExpiredTicket,
        CloseCode::HandshakeTimeout,
        CloseCode::SessionRefused,
        CloseCode::IdleTimeout,
        CloseCode::RateLimited,
        CloseCode::SlowConsumer,
        CloseCode::Replaced,
        CloseCode::ServerShutdown,
        CloseCode::ServerFull,
    ];
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Codes for a frame refused on a connection that stays open (`Refused` control frame).
pub use garrison_protocol::control::refusal;
