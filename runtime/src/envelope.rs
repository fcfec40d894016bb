//! What travels in an entity's mailbox, and what becomes of a message that is not handled: its
//! dead letter, and the answer its client is owed.

use garrison_protocol::{
    FrameMeta,
    control::{RefusalCode, Refused},
};

use crate::{
    Entity, EntityMessage,
    dead_letter::DeadLetter,
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
    },
    /// The sweeper found the entity idle.
    Passivate,
    /// Timer `id` of the incarnation with timer generation `generation` is due.
    Tick {
        generation: u64,
        id: crate::timer::TimerId,
    },
}

impl<E: Entity> Envelope<E> {
    /// The message inside (only called on envelopes built around one).
    pub(crate) fn into_message(self) -> E::Message {
        match self {
            Envelope::Message { message, .. } => message,
            Envelope::Passivate | Envelope::Tick { .. } => {
                unreachable!("a refused passivation or tick is never handed back to a sender")
            }
        }
    }

    /// The dead letter of this envelope's message (a passivation request or a timer's tick is
    /// no accepted message: its timer ended with the incarnation), its sender told when a client
    /// frame caused it.
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
    };
    let meta = FrameMeta::reply_to(origin.seq);
    if let Ok(frame) = garrison_protocol::encode_frame(&refused, meta) {
        // A full or closed connection is the connection's own business.
        let _ = origin.connection.push(frame);
    }
}
