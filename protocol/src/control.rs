//! Garrison's own control messages (kinds `0xFF00..`): the handshake, close reasons and
//! per-frame refusals every transport shares. Their layouts are in `docs/protocol.md`.

use rkyv::{Archive, Deserialize, Serialize};

use crate::{Schema, messages};

/// An authentication ticket: HMAC-SHA256, keyed by the server's secret, over the player id and
/// the expiry (both little-endian `u64`). Minted by the login service, checked by the gateway.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The player the ticket admits.
    pub player: u64,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// HMAC-SHA256 over `player.to_le_bytes() ++ expires_at.to_le_bytes()`.
    pub mac: [u8; 32],
}

/// The first frame a client sends.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The client's ticket.
    pub ticket: Ticket,
    /// The layout hash of the game's protocols the client was built against
    /// ([`schema::Document::layout_hash`](crate::schema::Document::layout_hash)); a gateway
    /// that knows its game's hash closes a connection with another (`layout_mismatch`).
    pub layout: u64,
}

/// The server's answer to a good `Hello`.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// The session id, the same across reconnects with the same player.
    pub session: u64,
    /// Whether an existing session was taken over (a reconnect).
    pub resumed: bool,
}

/// The last frame before the server closes a connection, saying why.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// A stable code (see `CloseCode` in the runtime, and `docs/protocol.md`).
    pub code: u16,
    /// A human-readable reason.
    pub reason: String,
}

/// The code of a [`Refused`] frame: why the server did not act on one frame, on a connection
/// that stays open. Stable wire values (`docs/protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The session may not address that entity (or has no session or connection for it).
    NotBound = 100,
    /// The entity (or the connection's queue) is busy; retry later.
    Busy = 101,
    /// The entity's kind is not running.
    Unavailable = 102,
    /// The game's router refused the message.
    Rejected = 103,
    /// The entity failed (panicked or returned an error) while handling this very frame; the
    /// frame is in the server's dead letters and is not retried.
    Failed = 104,
    /// The server is overloaded and sheds this kind of request (a join, matchmaking) to keep
    /// running matches on time; retry after `retry_after_ms`.
    Overloaded = 105,
}

impl RefusalCode {
    /// Every code.
    pub const ALL: &'static [RefusalCode] = &[
        RefusalCode::NotBound,
        RefusalCode::Busy,
        RefusalCode::Unavailable,
        RefusalCode::Rejected,
        RefusalCode::Failed,
        RefusalCode::Overloaded,
    ];

    /// The wire value.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code with this wire value, if it is one.
    pub fn from_code(code: u16) -> Option<RefusalCode> {
        RefusalCode::ALL
            .iter()
            .copied()
            .find(|known| known.code() == code)
    }

    /// A short label, used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            RefusalCode::NotBound => "not_bound",
            RefusalCode::Busy => "busy",
            RefusalCode::Unavailable => "unavailable",
            RefusalCode::Rejected => "rejected",
            RefusalCode::Failed => "failed",
            RefusalCode::Overloaded => "overloaded",
        }
    }
}

/// A frame the server did not accept, on a connection that stays open.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The refused frame's sequence number.
    pub seq: u32,
    /// A stable code.
    pub code: u16,
    /// A human-readable reason.
    pub reason: String,
    /// When the client may try again, in milliseconds (0: no advice). Sent with code 105
    /// (overloaded): the server sheds this kind of request for now.
    pub retry_after_ms: u32,
}

/// The player's session moved to another node of the fleet (its room runs there): reconnect to
/// `address` with the same ticket and resume. The server closes the connection right after, with
/// close code 34 (`moved`).
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The node's gateway, `host:port`.
    pub address: String,
    /// The node's id in its fleet.
    pub node: String,
}

messages! {
    /// Garrison's control messages.
    pub enum Control {
        0xFF00 => Hello(Hello),
        0xFF01 => Welcome(Welcome),
        0xFF02 => Close(Close),
        0xFF03 => Refused(Refused),
        0xFF04 => Redirect(Redirect),
    }
}
