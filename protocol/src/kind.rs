//! Message kind ids: the stable `u16` in every frame's header that selects its payload's type.

use std::fmt;

/// A message kind id: the stable `u16` that selects a payload's type on the wire.
///
/// Ids are part of the protocol a client is written against: never renumber a released message.
/// Ids `0xFF00..=0xFFFF` are reserved for Garrison's own control messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct MessageKind(pub u16);

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}
