//! Groups: a set of sessions to broadcast to (a room's players, a party, a chat channel).

use garrison_protocol::Message;
use rkyv::{Archive, Deserialize, Serialize};

use crate::{Sessions, origin::SessionId};

/// A set of sessions that receive the same frames: [`Group::broadcast`] encodes a message once
/// and queues the same bytes for every member.
///
/// A group is plain data the entity keeps in its state (it is an rkyv archive like the rest of
/// the state), so **membership is checkpointed with the state and survives a restart** exactly as
/// far as the state does: with the default checkpoint after every message, a room that crashes
/// comes back with the members it had before the crashing message. Members are kept in the order
/// they joined, each once.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    members: Vec<u64>,
}

impl Group {
    /// An empty group.
    pub fn new() -> Self {
        Group::default()
    }

    /// Adds `session`; returns false when it was a member already.
    pub fn join(&mut self, session: SessionId) -> bool {
        if self.contains(session) {
            return false;
        }
        self.members.push(session.0);
        true
    }

    /// Removes `session`; returns whether it was a member.
    pub fn leave(&mut self, session: SessionId) -> bool {
        let before = self.members.len();
        self.members.retain(|&member| member != session.0);
        self.members.len() != before
    }

    /// Whether `session` is a member.
    pub fn contains(&self, session: SessionId) -> bool {
        self.members.contains(&session.0)
    }

    /// The members, in the order they joined.
    pub fn members(&self) -> impl ExactSizeIterator<Item = SessionId> + '_ {
        self.members.iter().map(|&member| SessionId(member))
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether it has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Encodes `message` once (stamped `seq`) and queues it for every member; returns how many
    /// took it. A member that did not (detached between a disconnect and its reconnect, closed,
    /// or with a full queue) is its own connection's business, as with [`Sessions::push`].
    pub fn broadcast<M: Message>(&self, sessions: &Sessions, seq: u32, message: &M) -> usize {
        sessions.broadcast(self.members(), seq, message)
    }

    /// As [`Group::broadcast`], to every member but `except` (the player whose move it is).
    pub fn broadcast_except<M: Message>(
        &self,
        sessions: &Sessions,
        except: SessionId,
        seq: u32,
        message: &M,
    ) -> usize {
        sessions.broadcast(
            self.members().filter(|&member| member != except),
            seq,
            message,
        )
    }
}
