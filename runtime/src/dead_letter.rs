//! Dead letters: accepted messages that were not handled (one crashed its entity, or was still
//! queued when its entity was given up on, failed to activate, or stopped), kept for inspection
//! and never redelivered.

use garrison_protocol::TraceContext;

use crate::bounded::BoundedLog;

/// How many dead letters are kept; older ones are dropped first (and counted).
pub const DEAD_LETTER_CAPACITY: usize = 1024;

/// An accepted message that was not handled, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The entity kind.
    pub kind: &'static str,
    /// The entity key, as text.
    pub key: String,
    /// The message's `game.event.type`.
    pub event_type: &'static str,
    /// Why it was not handled: the panic message or error of a message that crashed its
    /// entity, or what became of the entity it was waiting for.
    pub reason: String,
    /// The trace the message belonged to, if it carried one.
    pub trace: Option<TraceContext>,
    /// The session that sent it, if any.
    pub session: Option<u64>,
}

/// A bounded log of dead letters.
#[derive(Debug)]
pub struct DeadLetters {
    letters: BoundedLog<DeadLetter>,
}

impl Default for DeadLetters {
    fn default() -> Self {
        DeadLetters {
            letters: BoundedLog::new(DEAD_LETTER_CAPACITY),
        }
    }
}

impl DeadLetters {
    pub(crate) fn record(&self, letter: DeadLetter) {
        tracing::warn!(
            game.entity.kind = letter.kind,
            game.entity.key = %letter.key,
            game.event.type = letter.event_type,
            game.session.id = letter.session,
            reason = %letter.reason,
            "dead letter: the message was not handled and will not be redelivered"
        );
        self.letters.push(letter);
    }

    /// The dead letters kept, oldest first.
    pub fn snapshot(&self) -> Vec<DeadLetter> {
        self.letters.snapshot()
    }

    /// How many dead letters are kept now.
    pub fn len(&self) -> usize {
        self.letters.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many older dead letters were dropped to stay within [`DEAD_LETTER_CAPACITY`].
    pub fn dropped(&self) -> u64 {
        self.letters.dropped()
    }
}
