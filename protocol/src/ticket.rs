//! Authentication tickets: HMAC-SHA256 over (player id, expiry), minted for a player (by a login
//! service, or a test's bots) and checked in constant time at the gateway's handshake. Here, in
//! the wire crate, so a client or a login service mints tickets without linking the server
//! (feature `ticket`, on by default).
//!
//! A ticket is a bearer token: whoever holds it is that player until it expires. A second
//! connection with the same ticket takes the session over (the first is closed with `Replaced`),
//! by design, so a player who lost a connection comes back at once; keep tickets short-lived
//! (the gateway refuses any that expires later than `GatewayConfig::max_ticket_lifetime` from
//! now) and send them only over a channel you trust.

use crate::control::{ArchivedTicket, Ticket};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a ticket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// The signature does not match: forged or signed with another key.
    #[error("the ticket's signature does not match: forged, or signed with another key")]
    BadSignature,
    /// The ticket's expiry has passed.
    #[error("the ticket expired {ago} s ago")]
    Expired {
        /// Seconds since it expired.
        ago: u64,
    },
    /// The ticket expires further in the future than the server allows a ticket to live.
    #[error(
        "the ticket expires in {expires_in} s, beyond the server's maximum ticket lifetime of {max} s"
    )]
    TooLong {
        /// Seconds until it expires.
        expires_in: u64,
        /// The maximum lifetime, seconds.
        max: u64,
    },
}

fn signed(key: &[u8], player: u64, expires_at: u64) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(&player.to_le_bytes());
    mac.update(&expires_at.to_le_bytes());
    mac
}

/// Mints a ticket admitting `player` until `expires_at` (seconds since the Unix epoch).
pub fn mint(key: &[u8], player: u64, expires_at: u64) -> Ticket {
    let mac = signed(key, player, expires_at).finalize().into_bytes();
    Ticket {
        player,
        expires_at,
        mac: mac.into(),
    }
}

/// Checks a ticket as it arrived (archived, read in place) at time `now` (Unix seconds),
/// refusing one that would live longer than `max_lifetime` seconds from now.
///
/// # Errors
/// [`TicketError::BadSignature`], [`TicketError::Expired`] or [`TicketError::TooLong`]; the
/// signature is checked first, in constant time, so an attacker learns nothing from the expiry
/// checks.
pub fn verify(
    key: &[u8],
    ticket: &ArchivedTicket,
    now: u64,
    max_lifetime: u64,
) -> Result<u64, TicketError> {
    let player = ticket.player.to_native();
    let expires_at = ticket.expires_at.to_native();
    signed(key, player, expires_at)
        .verify_slice(&ticket.mac)
        .map_err(|_| TicketError::BadSignature)?;
    if expires_at <= now {
        return Err(TicketError::Expired {
            ago: now - expires_at,
        });
    }
    let expires_in = expires_at - now;
    if expires_in > max_lifetime {
        return Err(TicketError::TooLong {
            expires_in,
            max: max_lifetime,
        });
    }
    Ok(player)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
