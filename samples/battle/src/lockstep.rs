//! The lockstep engine of one room: collects inputs stamped for future frames, executes one
//! frame at a time with a late or missing input replaced by the player's previous one (flagged,
//! as Photon Quantum does, so the room never waits on a slow client), and produces each frame's
//! broadcast: the confirmed inputs, the delta of changed fields, and every `checksum_every`
//! frames a checksum of the whole state.
//!
//! It keeps a snapshot every `snapshot_every` frames and the input log since, from which
//! [`Lockstep::recover`] rebuilds the identical state after a crash.

use std::collections::BTreeMap;

use bytes::Bytes;
use garrison_protocol::Schema;
use rkyv::{Archive, Deserialize, Serialize};

use crate::sim::{Change, World};

/// Room settings.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockstepConfig {
    /// Players (unit slots) in the room.
    pub players: usize,
    /// Frames between an input's sending and its execution; clients stamp inputs
    /// `current frame + input_delay`.
    pub input_delay: u32,
    /// Inputs may be stamped at most this many frames ahead of the room.
    pub max_ahead: u32,
    /// A checksum rides on every `checksum_every`-th frame's broadcast.
    pub checksum_every: u32,
    /// A snapshot is kept every `snapshot_every` frames.
    pub snapshot_every: u32,
}

impl Default for LockstepConfig {
    fn default() -> Self {
        LockstepConfig {
            players: 8,
            input_delay: 3,
            max_ahead: 60,
            checksum_every: 30,
            snapshot_every: 300,
        }
    }
}

/// What became of a submitted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputOutcome {
    /// Stored for its frame.
    Accepted,
    /// Its frame has already been executed (with the player's previous input instead).
    Late {
        /// The first frame still open.
        next_frame: u32,
    },
    /// Stamped further ahead than allowed.
    TooFarAhead,
    /// The frame already has an input from this player; the first one stands.
    Duplicate,
    /// No such player slot.
    UnknownSlot,
}

/// One executed frame, as logged and as broadcast.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, PartialEq, Eq)]
pub struct FrameRecord {
    /// The frame executed.
    pub frame: u32,
    /// The input each slot ran with.
    pub inputs: Vec<u8>,
    /// Bit `slot` set: that slot's input was missing or late and its previous input was used.
    pub replaced: u64,
}

/// What a room sends its players after executing a frame.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    /// The frame and the inputs it ran with.
    pub record: FrameRecord,
    /// The fields that changed.
    pub delta: Vec<Change>,
    /// The checksum of the state after the frame, on every `checksum_every`-th frame.
    pub checksum: Option<u64>,
    /// The generator's state after the frame, with the checksum.
    pub rng: Option<u64>,
}

/// How a resuming client catches up (see [`Lockstep::resume`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumption {
    /// The frames it missed, oldest first.
    Frames(Vec<FrameRecord>),
    /// The world now, when it is too far behind.
    Snapshot {
        /// The next frame to execute.
        frame: u32,
        /// The world as a versioned snapshot.
        snapshot: Bytes,
        /// The inputs the last frame ran, one per slot (what the next compact frame is XORed
        /// against).
        inputs: Vec<u8>,
    },
}

/// The lockstep state of one room. It is an rkyv archive itself, so a room entity checkpoints
/// it whole: the last snapshot, the input log since, and the inputs waiting for their frame.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct Lockstep {
    config: LockstepConfig,
    world: World,
    pending: BTreeMap<u32, Vec<Option<u8>>>,
    previous: Vec<u8>,
    snapshot: Vec<u8>,
    log: Vec<FrameRecord>,
}

/// Why a room could not be recovered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoverError {
    /// The snapshot did not validate.
    #[error("snapshot: {0}")]
    Snapshot(#[from] garrison_protocol::Error),
    /// The log does not continue the snapshot frame by frame.
    #[error("input log does not continue the snapshot at frame {expected} (found frame {found})")]
    Gap {
        /// The frame the log should have had next.
        expected: u32,
        /// The frame it had.
        found: u32,
    },
}

impl Lockstep {
    /// A room whose world starts from `seed`.
    ///
    /// # Errors
    /// When the first snapshot cannot be written (it cannot fail for this world type).
    pub fn new(seed: u64, config: LockstepConfig) -> Result<Self, garrison_protocol::Error> {
        let world = World::new(seed, config.players);
        let snapshot = garrison_protocol::snapshot::write(&world)?.to_vec();
        Ok(Lockstep {
            config,
            previous: vec![0; config.players],
            world,
            pending: BTreeMap::new(),
            snapshot,
            log: Vec::new(),
        })
    }

    /// The room's world.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The next frame to execute.
    pub fn next_frame(&self) -> u32 {
        self.world.frame
    }

    /// The inputs the last executed frame ran, one per slot (all zeroes before the first): the
    /// reference a compact frame ([`crate::packed`]) is XORed against.
    pub fn last_inputs(&self) -> &[u8] {
        &self.previous
    }

    /// The settings.
    pub fn config(&self) -> &LockstepConfig {
        &self.config
    }

    /// The last snapshot and the frames executed since: enough to recover.
    pub fn checkpoint(&self) -> (Bytes, &[FrameRecord]) {
        (Bytes::copy_from_slice(&self.snapshot), &self.log)
    }

    /// What a client that has simulated up to (not including) `from` needs to catch up: the
    /// frames since, from the input log, when the log reaches back that far and they are at
    /// most `limit`; otherwise a snapshot of the world now.
    ///
    /// # Errors
    /// When the snapshot cannot be written (it cannot fail for this world type).
    pub fn resume(&self, from: u32, limit: u32) -> Result<Resumption, garrison_protocol::Error> {
        let now = self.world.frame;
        let first = now - self.log.len() as u32;
        if (first..=now).contains(&from) && now - from <= limit {
            return Ok(Resumption::Frames(
                self.log[(from - first) as usize..].to_vec(),
            ));
        }
        Ok(Resumption::Snapshot {
            frame: now,
            snapshot: garrison_protocol::snapshot::write(&self.world)?,
            inputs: self.previous.clone(),
        })
    }

    /// Submits `buttons` from `slot` for `frame`.
    pub fn submit(&mut self, slot: usize, frame: u32, buttons: u8) -> InputOutcome {
        if slot >= self.config.players {
            return InputOutcome::UnknownSlot;
        }
        if frame < self.world.frame {
            return InputOutcome::Late {
                next_frame: self.world.frame,
            };
        }
        if frame > self.world.frame + self.config.max_ahead {
            return InputOutcome::TooFarAhead;
        }
        let inputs = self
            .pending
            .entry(frame)
            .or_insert_with(|| vec![None; self.config.players]);
        if inputs[slot].is_some() {
            return InputOutcome::Duplicate;
        }
        inputs[slot] = Some(buttons);
        InputOutcome::Accepted
    }

    /// Executes the next frame and returns its broadcast.
    ///
    /// # Errors
    /// When a due snapshot cannot be written (it cannot fail for this world type).
    pub fn advance(&mut self) -> Result<Broadcast, garrison_protocol::Error> {
        let frame = self.world.frame;
        let submitted = self
            .pending
            .remove(&frame)
            .unwrap_or_else(|| vec![None; self.config.players]);
        let mut replaced = 0u64;
        let mut inputs = Vec::with_capacity(self.config.players);
        for (slot, input) in submitted.into_iter().enumerate() {
            match input {
                Some(buttons) => {
                    self.previous[slot] = buttons;
                    inputs.push(buttons);
                }
                None => {
                    replaced |= 1 << slot.min(63);
                    inputs.push(self.previous[slot]);
                }
            }
        }
        let before = self.world.units.clone();
        self.world.step(&inputs);
        let delta = self.world.delta_from_units(&before);
        let checksum = self
            .world
            .frame
            .is_multiple_of(self.config.checksum_every.max(1))
            .then(|| self.world.checksum());
        let record = FrameRecord {
            frame,
            inputs,
            replaced,
        };
        if self
            .world
            .frame
            .is_multiple_of(self.config.snapshot_every.max(1))
        {
            self.snapshot = garrison_protocol::snapshot::write(&self.world)?.to_vec();
            self.log.clear();
        } else {
            self.log.push(record.clone());
        }
        let rng = checksum.map(|_| self.world.rng);
        Ok(Broadcast {
            record,
            delta,
            checksum,
            rng,
        })
    }

    /// Rebuilds a room from a snapshot and the frames executed since: the same world at the same
    /// frame as before the crash. Inputs already submitted for later frames are lost with the old
    /// incarnation; those players' previous inputs stand in for them, as for any late input.
    ///
    /// # Errors
    /// [`RecoverError::Snapshot`] or [`RecoverError::Gap`].
    pub fn recover(
        config: LockstepConfig,
        snapshot: Bytes,
        log: &[FrameRecord],
    ) -> Result<Self, RecoverError> {
        let mut world = garrison_protocol::snapshot::read::<World>(snapshot.clone())?;
        let mut previous = vec![0; config.players];
        for record in log {
            if record.frame != world.frame {
                return Err(RecoverError::Gap {
                    expected: world.frame,
                    found: record.frame,
                });
            }
            world.step(&record.inputs);
            for (slot, input) in record.inputs.iter().enumerate().take(config.players) {
                previous[slot] = *input;
            }
        }
        Ok(Lockstep {
            config,
            world,
            pending: BTreeMap::new(),
            previous,
            snapshot: snapshot.to_vec(),
            log: log.to_vec(),
        })
    }
}

/// A player's local copy of the room: runs the broadcast inputs and checks the checksums.
#[derive(Debug, Clone)]
pub struct Mirror {
    world: World,
    /// The inputs of the last frame run, one per slot: what a compact frame is XORed against.
    inputs: Vec<u8>,
    /// Checksums that did not match.
    pub desyncs: u32,
    /// Checksums that matched.
    pub verified: u32,
    /// Frames whose broadcast delta differed from the local step's (the room's state diverged
    /// in that very frame).
    pub delta_mismatches: u32,
}

/// Why a broadcast could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorError {
    /// The broadcast is not for the next frame (one was missed, or repeated).
    OutOfOrder {
        /// The frame the mirror expected.
        expected: u32,
        /// The frame the broadcast carried.
        found: u32,
    },
    /// A snapshot's previous inputs are not one per unit.
    Inputs {
        /// Inputs given.
        inputs: usize,
        /// Units in the world.
        units: usize,
    },
}

impl Mirror {
    /// A mirror of a room started from `seed` with `players`.
    pub fn new(seed: u64, players: usize) -> Self {
        Mirror {
            world: World::new(seed, players),
            inputs: vec![0; players],
            desyncs: 0,
            verified: 0,
            delta_mismatches: 0,
        }
    }

    /// A mirror that starts from a snapshot (a late joiner, or a client too far behind). Its
    /// previous inputs are zeroes until [`Mirror::with_inputs`] gives the ones the snapshot's
    /// frame followed (see [`Resumption::Snapshot`]).
    ///
    /// # Errors
    /// When the snapshot does not validate.
    pub fn from_snapshot(snapshot: Bytes) -> Result<Self, garrison_protocol::Error> {
        let world = garrison_protocol::snapshot::read::<World>(snapshot)?;
        Ok(Mirror {
            inputs: vec![0; world.units.len()],
            world,
            desyncs: 0,
            verified: 0,
            delta_mismatches: 0,
        })
    }

    /// The mirror with `inputs` as the last frame's inputs (what the next compact frame is
    /// XORed against).
    ///
    /// # Errors
    /// [`MirrorError::Inputs`] when they are not one per unit.
    pub fn with_inputs(mut self, inputs: Vec<u8>) -> Result<Self, MirrorError> {
        if inputs.len() != self.world.units.len() {
            return Err(MirrorError::Inputs {
                inputs: inputs.len(),
                units: self.world.units.len(),
            });
        }
        self.inputs = inputs;
        Ok(self)
    }

    /// The local world.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The inputs of the last frame run (all zeroes before the first).
    pub fn last_inputs(&self) -> &[u8] {
        &self.inputs
    }

    /// Runs one broadcast frame and checks its checksum if it carries one.
    ///
    /// # Errors
    /// [`MirrorError::OutOfOrder`] when the broadcast is not for the next frame.
    pub fn apply(
        &mut self,
        frame: u32,
        inputs: &[u8],
        checksum: Option<u64>,
    ) -> Result<(), MirrorError> {
        self.apply_checked(frame, inputs, None, checksum)
    }

    /// [`Mirror::apply`], and when the broadcast's `delta` is given, compares it with the
    /// local step's: every frame's state is checked field by field, not only every 30th.
    ///
    /// # Errors
    /// [`MirrorError::OutOfOrder`] when the broadcast is not for the next frame.
    pub fn apply_checked(
        &mut self,
        frame: u32,
        inputs: &[u8],
        delta: Option<&[Change]>,
        checksum: Option<u64>,
    ) -> Result<(), MirrorError> {
        if frame != self.world.frame {
            return Err(MirrorError::OutOfOrder {
                expected: self.world.frame,
                found: frame,
            });
        }
        let before = delta.map(|_| self.world.units.clone());
        self.world.step(inputs);
        self.inputs.clear();
        self.inputs.extend_from_slice(inputs);
        if let (Some(before), Some(delta)) = (before, delta)
            && self.world.delta_from_units(&before) != delta
        {
            self.delta_mismatches += 1;
        }
        if let Some(expected) = checksum {
            if self.world.checksum() == expected {
                self.verified += 1;
            } else {
                self.desyncs += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
