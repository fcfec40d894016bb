//! Authentication tickets: HMAC-SHA256 over (player id, expiry), minted for a player and checked
//! in constant time at the handshake.

use garrison_protocol::control::{ArchivedTicket, Ticket};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a ticket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketError {
    /// The signature does not match: forged or signed with another key.
    BadSignature,
    /// The ticket's expiry has passed.
    Expired,
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

/// Checks a ticket as it arrived (archived, read in place) at time `now` (Unix seconds).
///
/// # Errors
/// [`TicketError::BadSignature`] or [`TicketError::Expired`]; the signature is checked first, in
/// constant time, so an attacker learns nothing from the expiry check.
pub fn verify(key: &[u8], ticket: &ArchivedTicket, now: u64) -> Result<u64, TicketError> {
    let player = ticket.player.to_native();
    let expires_at = ticket.expires_at.to_native();
    signed(key, player, expires_at)
        .verify_slice(&ticket.mac)
        .map_err(|_| TicketError::BadSignature)?;
    if expires_at <= now {
        return Err(TicketError::Expired);
    }
    Ok(player)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
