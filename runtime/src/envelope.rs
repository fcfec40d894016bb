//! What travels in an entity's mailbox, and what becomes of a message that is not handled: its
//! dead letter, and the answer its client is owed.

use std::sync::atomic::{AtomicU64, Ordering};

use garrison_protocol::control::{RefusalCode, Refused};

use crate::{
    Entity, EntityMessage,
    dead_letter::{DeadLetter, DeadLetters},
    origin::{Origin, SessionId},
    telemetry::Sampling,
};

/// What travels in an entity's mailbox.
pub(crate) enum Envelope<E: Entity> {
    /// A message, with the span it was sent from and the session that sent it.
    Message {
        message: E::Message,
        parent: tracing::Span,
        session: Option<SessionId>,
        /// The sampling decided for the work that sent it, if any was.
        sampling: Option<Sampling>,
        /// The client frame that caused it, if any: told when handling it fails.
        origin: Option<Origin>,
        /// When it was queued, while the kind's mailbox wait is measured.
        queued: Option<std::time::Instant>,
        /// Its place under the kind's overload limit, if the kind has one: held until it is
        /// handled or dropped.
        permit: Option<crate::overload::Permit>,
    },
    /// The sweeper found the entity idle.
    Passivate,
    /// Run, with nothing to handle (an entity recovered at start).
    Wake,
    /// Timer `id` of the incarnation with timer generation `generation` is due.
    Tick {
        generation: u64,
        id: crate::timer::TimerId,
        /// When it was due (its lateness is measured while the kind is).
        due: tokio::time::Instant,
    },
    /// Hand the entity to its new owner (a fleet moved its shard): after the messages queued
    /// before this one, write its state through, send what is queued behind on, and leave.
    HandOff(crate::ownership::HandOffJob<E>),
}

impl<E: Entity> Envelope<E> {
    /// The message inside (only called on envelopes built around one).
    pub(crate) fn into_message(self) -> E::Message {
        match self {
            Envelope::Message { message, .. } => message,
            Envelope::Passivate | Envelope::Wake | Envelope::Tick { .. } | Envelope::HandOff(_) => {
                unreachable!(
                    "a refused passivation, wake, tick or hand-off is never handed back to a sender"
                )
            }
        }
    }

    /// The dead letter of this envelope's message (a passivation request, a timer's tick or a
    /// hand-off is no accepted message: a tick's timer ended with the incarnation, and a dropped
    /// hand-off tells its waiter it was not done), its sender told when a client frame caused it.
    pub(crate) fn dead_letter(self, key: String, reason: String) -> Option<DeadLetter> {
        let Envelope::Message {
            message,
            session,
            origin,
            ..
        } = self
        else {
            return None;
        };
        if let Some(origin) = origin {
            refuse(&origin, E::KIND);
        }
        Some(DeadLetter {
            kind: E::KIND,
            key,
            event_type: message.event_type(),
            reason,
            trace: message.trace_context(),
            session: session.map(|session| session.0),
        })
    }
}

/// Tells the client whose frame was not handled, with the frame's `seq`, so it does not wait
/// for an answer that will never come. The reason names no internals (a panic message is for the
/// server's logs and dead letters, not for clients).
pub(crate) fn refuse(origin: &Origin, kind: &'static str) {
    let refused = Refused {
        seq: origin.seq,
        code: RefusalCode::Failed.code(),
        reason: format!(
            "the {kind} entity failed to handle this message; it was dead-lettered, not retried"
        ),
        retry_after_ms: 0,
    };
    crate::stats::refusal_sent(refused.code);
    let _ = origin.answer(&refused);
}

/// What a `DropOldest` mailbox evicted to make room, from any pusher (a sender, a timer): a
/// message becomes a dead letter with the reason; a timer's tick (no accepted message) is
/// counted as skipped; a hand-off is never evicted: it is queued again at the back of
/// `mailbox` (the entity then handles what came meanwhile before it leaves), evicting the next
/// oldest in its place.
pub(crate) fn evicted<E: Entity>(
    mut envelope: Envelope<E>,
    mailbox: &garrison_supervisor::ChildRef<Envelope<E>>,
    key: &dyn std::fmt::Display,
    dead_letters: &DeadLetters,
    ticks_skipped: &AtomicU64,
) {
    loop {
        match envelope {
            Envelope::Tick { .. } => {
                ticks_skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Envelope::HandOff(job) => match mailbox.send(Envelope::HandOff(job)) {
                Ok(garrison_supervisor::Sent::Evicted(next)) => envelope = next,
                // Queued; or the mailbox closed meanwhile, and the hand-off's waiter hears its
                // answer dropped (the entity left some other way).
                Ok(_) | Err(_) => return,
            },
            other => {
                let reason =
                    "evicted: the mailbox was full and its kind's overflow policy is DropOldest";
                if let Some(letter) = other.dead_letter(key.to_string(), reason.to_owned()) {
                    dead_letters.record(letter);
                }
                return;
            }
        }
    }
}
