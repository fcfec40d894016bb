//! Request/reply between server code and entities: [`EntityRef::call`] sends a message that
//! carries a [`Reply`] and waits for the answer, bounded by a timeout.
//!
//! [`EntityRef::call`]: crate::EntityRef::call

use std::{fmt, time::Duration};

use tokio::sync::oneshot;

use crate::Refusal;

/// Where an entity sends the answer to a [`call`](crate::EntityRef::call): a field of the
/// message. Answer with [`Reply::send`]; dropping it unanswered (the handler forgot it, or
/// crashed and the message was dead-lettered) tells the caller at once
/// ([`CallError::NoReply`]) instead of leaving it to time out.
pub struct Reply<R> {
    sender: oneshot::Sender<R>,
}

impl<R> fmt::Debug for Reply<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("waiting", &!self.sender.is_closed())
            .finish()
    }
}

impl<R> Reply<R> {
    /// A reply and the receiver its caller waits on: for code that calls by hand (waiting on
    /// several answers at once); [`EntityRef::call`](crate::EntityRef::call) makes one itself.
    pub fn channel() -> (Reply<R>, oneshot::Receiver<R>) {
        let (sender, receiver) = oneshot::channel();
        (Reply { sender }, receiver)
    }

    /// Answers the call. Returns false when the caller stopped waiting (it timed out).
    pub fn send(self, value: R) -> bool {
        self.sender.send(value).is_ok()
    }

    /// Whether the caller still waits.
    pub fn is_waiting(&self) -> bool {
        !self.sender.is_closed()
    }
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The request was not accepted (its message is dropped with its reply).
    #[error("the request was refused: {0}")]
    Refused(Refusal),
    /// The entity handled (or dead-lettered) the request without answering it: its handler
    /// dropped the [`Reply`], or crashed on the request (see the kind's dead letters).
    #[error(
        "the {kind} entity dropped the request without answering (it crashed on it, or its \
         handler did not send the reply)"
    )]
    NoReply {
        /// The entity kind.
        kind: &'static str,
    },
    /// No answer within the timeout. The request may still be handled later; its answer is then
    /// discarded.
    #[error("the {kind} entity did not answer within {timeout:?}")]
    Timeout {
        /// The entity kind.
        kind: &'static str,
        /// The timeout.
        timeout: Duration,
    },
}

/// Waits for `receiver` within `timeout`.
pub(crate) async fn wait<R>(
    kind: &'static str,
    receiver: oneshot::Receiver<R>,
    timeout: Duration,
) -> Result<R, CallError> {
    match tokio::time::timeout(timeout, receiver).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(CallError::NoReply { kind }),
        Err(_) => Err(CallError::Timeout { kind, timeout }),
    }
}
