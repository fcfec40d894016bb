//! Who watches which room without a seat: bounded per room, kept outside the rooms' state so a
//! room restarted after a crash goes on sending to its spectators.
//!
//! A room adds a spectator when it answers its `Watch` (so the spectator's `MatchStart` comes
//! before any frame) and sends each frame to the room's list; a spectator leaves when its
//! session closes, when it watches another room, when it is seated, and when the room is
//! released. Overflow policy: a room holding [`Spectators::per_room`] refuses the next one
//! (busy), the ones watching are never dropped for it.

use dashmap::DashMap;
use garrison_runtime::SessionId;

/// The spectators of every room.
#[derive(Debug)]
pub struct Spectators {
    per_room: usize,
    /// Room -> its spectators, in the order they came.
    rooms: DashMap<u64, Vec<SessionId>>,
    /// Spectator -> the room it watches (one at a time).
    watching: DashMap<SessionId, u64>,
}

/// A room already has as many spectators as it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("room {room} has {per_room} spectators, as many as a room takes; watch another room")]
pub struct RoomFull {
    /// The room.
    pub room: u64,
    /// Spectators a room takes.
    pub per_room: usize,
}

impl Spectators {
    /// No spectators yet; each room takes at most `per_room` (at least 0: none).
    pub fn new(per_room: usize) -> Self {
        Spectators {
            per_room,
            rooms: DashMap::new(),
            watching: DashMap::new(),
        }
    }

    /// Spectators a room takes.
    pub fn per_room(&self) -> usize {
        self.per_room
    }

    /// Makes `session` a spectator of `room`, leaving the room it watched before.
    ///
    /// # Errors
    /// [`RoomFull`] when `room` has [`Spectators::per_room`] spectators (`session` then watches
    /// nothing).
    pub fn add(&self, room: u64, session: SessionId) -> Result<(), RoomFull> {
        self.leave(session);
        {
            let mut list = self.rooms.entry(room).or_default();
            if list.len() >= self.per_room {
                return Err(RoomFull {
                    room,
                    per_room: self.per_room,
                });
            }
            list.push(session);
        }
        self.watching.insert(session, room);
        Ok(())
    }

    /// `session` stops watching; returns the room it watched.
    pub fn leave(&self, session: SessionId) -> Option<u64> {
        let (_, room) = self.watching.remove(&session)?;
        if let Some(mut list) = self.rooms.get_mut(&room) {
            list.retain(|watcher| *watcher != session);
        }
        self.rooms.remove_if(&room, |_, list| list.is_empty());
        Some(room)
    }

    /// Whether `room` takes one more spectator now.
    pub fn has_room_for(&self, room: u64) -> bool {
        self.rooms
            .get(&room)
            .is_none_or(|list| list.len() < self.per_room)
    }

    /// `room`'s spectators (none: no allocation).
    pub fn of(&self, room: u64) -> Vec<SessionId> {
        self.rooms
            .get(&room)
            .map(|list| list.clone())
            .unwrap_or_default()
    }

    /// Drops the spectators of `room` whose session is no longer open (`open` says): what a
    /// session that closed while it was being added leaves behind.
    pub fn retain_open(&self, room: u64, open: impl Fn(SessionId) -> bool) {
        let gone: Vec<SessionId> = match self.rooms.get(&room) {
            Some(list) => list.iter().copied().filter(|s| !open(*s)).collect(),
            None => return,
        };
        for session in gone {
            self.watching
                .remove_if(&session, |_, watched| *watched == room);
            if let Some(mut list) = self.rooms.get_mut(&room) {
                list.retain(|watcher| *watcher != session);
            }
        }
        self.rooms.remove_if(&room, |_, list| list.is_empty());
    }

    /// `room` is released: its spectators watch nothing any more. Returns them.
    pub fn release(&self, room: u64) -> Vec<SessionId> {
        let list = self
            .rooms
            .remove(&room)
            .map(|(_, list)| list)
            .unwrap_or_default();
        for session in &list {
            self.watching
                .remove_if(session, |_, watched| *watched == room);
        }
        list
    }

    /// Spectators across all rooms.
    pub fn len(&self) -> usize {
        self.watching.len()
    }

    /// Whether nobody watches.
    pub fn is_empty(&self) -> bool {
        self.watching.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_takes_its_bound_and_refuses_the_next_keeping_the_ones_watching() {
        let spectators = Spectators::new(2);
        assert_eq!(spectators.add(7, SessionId(1)), Ok(()));
        assert_eq!(spectators.add(7, SessionId(2)), Ok(()));
        assert!(!spectators.has_room_for(7));
        assert_eq!(
            spectators.add(7, SessionId(3)),
            Err(RoomFull {
                room: 7,
                per_room: 2
            })
        );
        assert_eq!(spectators.of(7), vec![SessionId(1), SessionId(2)]);
        assert_eq!(spectators.len(), 2);
        // One leaves: the next one fits.
        assert_eq!(spectators.leave(SessionId(1)), Some(7));
        assert_eq!(spectators.add(7, SessionId(3)), Ok(()));
        assert_eq!(spectators.of(7), vec![SessionId(2), SessionId(3)]);
    }

    #[test]
    fn a_spectator_watches_one_room_at_a_time() {
        let spectators = Spectators::new(4);
        spectators.add(1, SessionId(9)).unwrap();
        spectators.add(2, SessionId(9)).unwrap();
        assert!(spectators.of(1).is_empty());
        assert_eq!(spectators.of(2), vec![SessionId(9)]);
        assert_eq!(spectators.len(), 1);
        // Refused by a full room, it watches nothing (not its previous room either).
        let full = Spectators::new(1);
        full.add(1, SessionId(1)).unwrap();
        full.add(2, SessionId(2)).unwrap();
        assert!(full.add(1, SessionId(2)).is_err());
        assert!(full.of(2).is_empty());
        assert_eq!(full.leave(SessionId(2)), None);
    }

    #[test]
    fn a_released_room_and_closed_sessions_leave_nothing_behind() {
        let spectators = Spectators::new(4);
        for session in 1..=3 {
            spectators.add(5, SessionId(session)).unwrap();
        }
        spectators.retain_open(5, |session| session != SessionId(2));
        assert_eq!(spectators.of(5), vec![SessionId(1), SessionId(3)]);
        assert_eq!(spectators.len(), 2);
        assert_eq!(spectators.release(5), vec![SessionId(1), SessionId(3)]);
        assert!(spectators.is_empty());
        assert!(spectators.rooms.is_empty());
        assert_eq!(spectators.leave(SessionId(1)), None);
    }
}
