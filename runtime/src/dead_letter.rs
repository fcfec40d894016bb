//! Dead letters: the messages whose handling crashed an entity, kept for inspection, never
//! redelivered.

use std::{collections::VecDeque, sync::Mutex};

use garrison_protocol::TraceContext;

/// How many dead letters are kept; older ones are dropped first (and counted).
pub const DEAD_LETTER_CAPACITY: usize = 1024;

/// A message that crashed its entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The entity kind.
    pub kind: &'static str,
    /// The entity key, as text.
    pub key: String,
    /// The message's `game.event.type`.
    pub event_type: &'static str,
    /// The panic message or error.
    pub reason: String,
    /// The trace the message belonged to, if it carried one.
    pub trace: Option<TraceContext>,
    /// The session that sent it, if any.
    pub session: Option<u64>,
}

/// A bounded log of dead letters.
#[derive(Debug, Default)]
pub struct DeadLetters {
    letters: Mutex<(VecDeque<DeadLetter>, u64)>,
}

impl DeadLetters {
    pub(crate) fn record(&self, letter: DeadLetter) {
        tracing::warn!(
            game.entity.kind = letter.kind,
            game.entity.key = %letter.key,
            game.event.type = letter.event_type,
            reason = %letter.reason,
            "dead letter: the message crashed its entity and will not be redelivered"
        );
        let mut letters = self
            .letters
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if letters.0.len() == DEAD_LETTER_CAPACITY {
            letters.0.pop_front();
            letters.1 += 1;
        }
        letters.0.push_back(letter);
    }

    /// The dead letters kept, oldest first.
    pub fn snapshot(&self) -> Vec<DeadLetter> {
        self.letters
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .0
            .iter()
            .cloned()
            .collect()
    }

    /// How many older dead letters were dropped to stay within [`DEAD_LETTER_CAPACITY`].
    pub fn dropped(&self) -> u64 {
        self.letters
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .1
    }
}
