//! What a fleet tells a kind about where its entities may run: the node's [`Lease`] (checked
//! before every message of a leased kind, so a node that may have lost its entities acts on
//! none of them), and the [`Departure`] of an entity that left this process (handed off to its
//! new owner, released, or lapsed with the lease), which a fleet records in its activation log.
//!
//! A single process never needs any of it: a kind without a lease pays one `Option` check per
//! message.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// The instant every lease deadline is measured from (the first lease made in the process).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A node's lease on the entities its fleet placed on it: a deadline on the monotonic clock,
/// renewed by the fleet's keep-alive and checked before each message a leased kind handles
/// ([`Entities::lease`](crate::Entities::lease)). Past the deadline the node may no longer own
/// what it runs (a paused process wakes up after its fleet gave its entities to others), so the
/// entity is not handled: the message is dead-lettered, the activation lapses and is forgotten
/// here, and its next message activates it again only where the fleet says.
///
/// Read with `Instant::now()` on every check, not the runtime's coarse clock: a process resumed
/// after a `SIGSTOP` must see the time it was stopped at once, to the nanosecond, not to the
/// kernel's last tick.
#[derive(Clone, Debug)]
pub struct Lease {
    /// Nanoseconds since [`epoch`] until which the lease holds; 0: revoked.
    deadline: Arc<AtomicU64>,
}

impl Default for Lease {
    fn default() -> Self {
        Lease::new()
    }
}

impl Lease {
    /// A lease that holds until it is renewed with a deadline or revoked.
    pub fn new() -> Lease {
        let _ = epoch();
        Lease {
            deadline: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    /// Holds until `deadline` (replacing the deadline it had).
    pub fn renew_until(&self, deadline: Instant) {
        let nanos = deadline
            .saturating_duration_since(epoch())
            .as_nanos()
            .min(u128::from(u64::MAX - 1)) as u64;
        // Release: pairs with the Acquire in `is_valid`, though a deadline publishes no other
        // data; the ordering only keeps a renewal from being read before an earlier revoke.
        self.deadline.store(nanos.max(1), Ordering::Release);
    }

    /// Ends the lease now: every later check fails until a renewal.
    pub fn revoke(&self) {
        self.deadline.store(0, Ordering::Release);
    }

    /// Whether the lease still holds now.
    pub fn is_valid(&self) -> bool {
        // Acquire: see `renew_until`.
        let deadline = self.deadline.load(Ordering::Acquire);
        deadline == u64::MAX || (epoch().elapsed().as_nanos() as u64) < deadline
    }

    /// How long the lease holds from now (`None`: until renewed with a deadline; zero: it has
    /// lapsed or was revoked).
    pub fn remaining(&self) -> Option<Duration> {
        match self.deadline.load(Ordering::Acquire) {
            u64::MAX => None,
            deadline => Some(Duration::from_nanos(
                deadline.saturating_sub(epoch().elapsed().as_nanos() as u64),
            )),
        }
    }
}

/// How an entity left this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepartureKind {
    /// Handed off to its new owner ([`Entities::hand_off`](crate::Entities::hand_off)): its
    /// state was written through and what was queued for it sent on.
    HandedOff,
    /// Released ([`Entities::release`](crate::Entities::release)): forgotten here, what was
    /// queued dead-lettered.
    Released,
    /// Its kind's [`Lease`] had lapsed when a message came: not handled, forgotten here.
    Lapsed,
    /// Passivated: idle, its state kept as a snapshot (and written to its store); a next
    /// message activates it again.
    Passivated,
    /// Stopped for good: it asked to stop (its record is removed).
    Stopped,
}

impl DepartureKind {
    /// A short label (`handed_off`, `released`, `lapsed`, `passivated`, `stopped`).
    pub fn as_str(self) -> &'static str {
        match self {
            DepartureKind::HandedOff => "handed_off",
            DepartureKind::Released => "released",
            DepartureKind::Lapsed => "lapsed",
            DepartureKind::Passivated => "passivated",
            DepartureKind::Stopped => "stopped",
        }
    }
}

/// An active entity that left this process, as told to the kind's departure hook
/// ([`Entities::on_departure`](crate::Entities::on_departure)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departure {
    /// How it left.
    pub kind: DepartureKind,
    /// The store generation its activation wrote with, when the kind fences per entity.
    pub generation: Option<u64>,
    /// When the last message it handled here began, in milliseconds since the Unix epoch (its
    /// activation's start if it handled none): no handling of it began here after that (its
    /// lease checked valid then). A handler that began before may end after, when the process
    /// was paused in mid-handler; the store's fencing token refuses what it then writes.
    pub last_handled_unix_ms: u64,
}

/// What [`Entities::hand_off`](crate::Entities::hand_off) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandOffReport {
    /// Active entities that wrote their state through and left.
    pub handed_off: usize,
    /// Passivated entities forgotten here (their snapshot was already written).
    pub passivated: usize,
    /// Messages that were queued for them, sent on by the forwarder.
    pub forwarded: usize,
    /// Messages the forwarder refused: dead-lettered with its reason.
    pub dead_lettered: usize,
    /// Entities whose last state the store did not confirm in time (their writes go on
    /// write-behind, fenced once the new owner has written), or that did not answer and were
    /// released instead.
    pub unconfirmed: usize,
}

/// Sends one message of an entity being handed off on to its new owner; `Err` says why it
/// could not (the message is then dead-lettered with that reason).
pub(crate) type Forward<E> = dyn Fn(&<E as crate::Entity>::Key, <E as crate::Entity>::Message) -> Result<(), String>
    + Send
    + Sync;

/// An entity's hand-off, queued behind the messages it has (`Envelope::HandOff`).
pub(crate) struct HandOffJob<E: crate::Entity> {
    pub(crate) forward: Arc<Forward<E>>,
    /// Told once the entity left; dropped unanswered when the incarnation was gone first.
    pub(crate) done: tokio::sync::oneshot::Sender<HandedOff>,
}

/// What one entity's hand-off did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandedOff {
    /// The store confirmed its last state.
    pub(crate) stored: bool,
    pub(crate) forwarded: usize,
    pub(crate) dead_lettered: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_until_its_deadline_or_a_revoke() {
        let lease = Lease::new();
        assert!(lease.is_valid());
        assert_eq!(lease.remaining(), None);
        lease.renew_until(Instant::now() + Duration::from_secs(60));
        assert!(lease.is_valid());
        assert!(lease.remaining().unwrap() > Duration::from_secs(59));
        let copy = lease.clone();
        lease.revoke();
        assert!(!copy.is_valid(), "clones share the deadline");
        assert_eq!(copy.remaining(), Some(Duration::ZERO));
        lease.renew_until(Instant::now() + Duration::from_secs(60));
        assert!(copy.is_valid());
        // A deadline in the past has lapsed at once.
        lease.renew_until(Instant::now() - Duration::from_millis(1));
        assert!(!copy.is_valid());
    }
}
