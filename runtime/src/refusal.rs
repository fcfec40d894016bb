//! Why a send was refused: the one refusal type of every send path (to an entity, through a
//! session, to a connection), always handing the message back.

use std::fmt;

use garrison_protocol::control::RefusalCode;

use crate::origin::SessionId;

/// Why a message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The entity's mailbox is full (its kind's overflow policy is `Reject`).
    MailboxFull {
        /// The entity kind.
        kind: &'static str,
    },
    /// The session may not address that entity: it is bound to no entity of the kind, or to
    /// another one.
    NotBound {
        /// The session.
        session: SessionId,
        /// The entity kind.
        kind: &'static str,
        /// The key it asked for, when it named one (text made only on this refusal).
        key: Option<String>,
    },
    /// No session with this id is open.
    NoSession {
        /// The session.
        session: SessionId,
    },
    /// The session has no connection attached (between a disconnect and a reconnect).
    Detached {
        /// The session.
        session: SessionId,
    },
    /// The connection's outbound queue refused the frame: full of reliable frames (the
    /// connection is then closed as a slow consumer), or closing.
    OutboundFull {
        /// The session.
        session: SessionId,
    },
    /// The kind is not running: its supervisor was never started in a tree, or has stopped.
    KindNotRunning {
        /// The kind.
        kind: &'static str,
    },
    /// The kind was declared but no module serves it yet (`Entities::serve`).
    KindNotServed {
        /// The kind.
        kind: &'static str,
    },
    /// The server is overloaded and sheds this kind of request for now (see `overload`); the
    /// client is told when to retry.
    Overloaded {
        /// What is shed (`joins`).
        what: &'static str,
        /// When to try again.
        retry_after: std::time::Duration,
    },
    /// [`EntityContext::reply`](crate::EntityContext::reply) was called while handling a
    /// message no client frame caused: there is no request to answer.
    NoRequest {
        /// The entity kind.
        kind: &'static str,
    },
    /// The entity's fleet placed it on another node: it is not activated here (see
    /// [`Entities::fence_by`](crate::Entities::fence_by)).
    NotOwned {
        /// The entity kind.
        kind: &'static str,
        /// The entity key.
        key: String,
    },
}

impl Refusal {
    /// The wire code a client is told in a `Refused` frame.
    pub fn code(&self) -> RefusalCode {
        match self {
            Refusal::MailboxFull { .. } | Refusal::OutboundFull { .. } => RefusalCode::Busy,
            Refusal::NotBound { .. } | Refusal::NoSession { .. } | Refusal::Detached { .. } => {
                RefusalCode::NotBound
            }
            Refusal::KindNotRunning { .. }
            | Refusal::KindNotServed { .. }
            | Refusal::NotOwned { .. } => RefusalCode::Unavailable,
            Refusal::NoRequest { .. } => RefusalCode::Failed,
            Refusal::Overloaded { .. } => RefusalCode::Overloaded,
        }
    }

    /// When the client may try again, if the refusal says.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Refusal::Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::MailboxFull { kind } => {
                write!(f, "the {kind} entity's mailbox is full; retry later")
            }
            Refusal::NotBound {
                session,
                kind,
                key: Some(key),
            } => write!(f, "session {session} may not address {kind} {key}"),
            Refusal::NotBound {
                session,
                kind,
                key: None,
            } => write!(f, "session {session} is bound to no {kind}"),
            Refusal::NoSession { session } => write!(f, "no open session {session}"),
            Refusal::Detached { session } => write!(f, "session {session} has no connection"),
            Refusal::OutboundFull { session } => {
                write!(
                    f,
                    "session {session}: the connection's queue refused the frame"
                )
            }
            Refusal::KindNotRunning { kind } => write!(
                f,
                "entity kind {kind} is not running: add it to the supervision tree \
                 (`entities \"{kind}\" => registry.start();` in `supervisor!`, or \
                 `ChildSpec::new(\"{kind}\", registry.start())`) and start the tree before \
                 sending"
            ),
            Refusal::KindNotServed { kind } => write!(
                f,
                "entity kind {kind} was declared but is not served: call `serve(module)` on its \
                 registry before sending"
            ),
            Refusal::Overloaded { what, retry_after } => write!(
                f,
                "the server is overloaded and sheds {what} for now; retry in {} ms",
                retry_after.as_millis()
            ),
            Refusal::NotOwned { kind, key } => write!(
                f,
                "{kind} {key} is not this node's: its fleet placed it on another node"
            ),
            Refusal::NoRequest { kind } => write!(
                f,
                "the {kind} entity replied while handling a message that no client frame caused: \
                 there is no request to answer (push with Sessions::send_message instead)"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// A message that was not accepted, handed back with the reason.
#[derive(Debug)]
pub struct Refused<M> {
    /// Why.
    pub reason: Refusal,
    /// The message, unchanged.
    pub message: M,
}

impl<M> Refused<M> {
    pub(crate) fn new(reason: Refusal, message: M) -> Self {
        Refused { reason, message }
    }
}

impl<M> fmt::Display for Refused<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reason.fmt(f)
    }
}

impl<M: fmt::Debug> std::error::Error for Refused<M> {}
