//! The compact form of a frame's inputs ([`FrameInputs`](crate::proto::FrameInputs)), for a
//! client that simulates: each slot's input XORed against the previous frame's, only the slots
//! that changed written out (GGRS-style), the replaced mask only when a slot was replaced, the
//! checksum only on the frames that carry one. A frame where nobody changed buttons is one byte.
//!
//! Layout (`players` is the room's, from `MatchStart`; `mask` is `ceil(players / 8)` bytes,
//! bit `s % 8` of byte `s / 8` for slot `s`):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | flags: [`CHECKSUM`], [`REPLACED`], [`CHANGED`], [`ABSOLUTE`]; any other bit is refused |
//! | `mask` | with `CHANGED`: the slots whose input differs from the previous frame's |
//! | one per set bit | with `CHANGED`: for each such slot in order, its input XOR the previous (never 0) |
//! | `players` | with `ABSOLUTE` (instead of `CHANGED`): every slot's input as is |
//! | `mask` | with `REPLACED`: the slots whose input was missing or late (the previous one ran) |
//! | 8 | with `CHECKSUM`: the state's checksum after the frame, `u64` little-endian |
//!
//! Nothing else may follow. The previous frame's inputs are the client's own: those of the last
//! frame it ran (all zeroes before frame 0; after a `Resync`, the inputs it carries).

/// Flag: a checksum ends the record.
pub const CHECKSUM: u8 = 0b0001;
/// Flag: the replaced mask follows the inputs.
pub const REPLACED: u8 = 0b0010;
/// Flag: some slots changed input; their mask and XORed inputs follow.
pub const CHANGED: u8 = 0b0100;
/// Flag: every slot's input follows as is (a key frame: no previous frame needed).
pub const ABSOLUTE: u8 = 0b1000;
/// The flags this version defines.
pub const KNOWN: u8 = CHECKSUM | REPLACED | CHANGED | ABSOLUTE;

/// Most players a room has (the replaced mask is a `u64`).
pub const MAX_PLAYERS: usize = 64;

/// Why a packed record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PackedError {
    /// A flag bit this version does not define.
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    /// Both `CHANGED` and `ABSOLUTE`.
    #[error("a record is either changes or absolute inputs, not both")]
    ChangedAndAbsolute,
    /// Shorter than its flags and masks say.
    #[error("truncated: {need} bytes needed, {have} present")]
    Truncated {
        /// Bytes the record needs.
        need: usize,
        /// Bytes it has.
        have: usize,
    },
    /// Bytes after the record's last field.
    #[error("{0} bytes after the record")]
    Trailing(usize),
    /// A mask names a slot the room does not have.
    #[error("a mask names slot {slot} of a room of {players}")]
    NoSuchSlot {
        /// The slot.
        slot: usize,
        /// Players in the room.
        players: usize,
    },
    /// A slot marked changed whose XOR is 0 (it did not change).
    #[error("slot {0} is marked changed with an unchanged input")]
    NotChanged(usize),
    /// The room size is not one this format carries (1 to 64 players), or the client's
    /// previous inputs are not one per player.
    #[error("a room of {players} players with {previous} previous inputs")]
    Players {
        /// Players in the room.
        players: usize,
        /// Previous inputs given.
        previous: usize,
    },
}

/// A decoded record, besides the inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// Bit per slot whose input was missing or late.
    pub replaced: u64,
    /// The checksum after the frame, when the record carries one.
    pub checksum: Option<u64>,
}

fn mask_len(players: usize) -> usize {
    players.div_ceil(8)
}

fn push_mask(out: &mut Vec<u8>, mask: u64, players: usize) {
    out.extend_from_slice(&mask.to_le_bytes()[..mask_len(players)]);
}

/// Appends the record of a frame that ran `inputs` after `previous` (the previous frame's, one
/// per slot) to `out`. `absolute`: write every input as is, for a client without the previous
/// frame. `inputs` and `previous` are one per slot, at most [`MAX_PLAYERS`].
pub fn pack(
    previous: &[u8],
    inputs: &[u8],
    replaced: u64,
    checksum: Option<u64>,
    absolute: bool,
    out: &mut Vec<u8>,
) {
    let players = inputs.len().min(MAX_PLAYERS);
    let flags_at = out.len();
    out.push(0);
    let mut flags = 0;
    if absolute {
        flags |= ABSOLUTE;
        out.extend_from_slice(&inputs[..players]);
    } else {
        let mut changed = 0u64;
        for (slot, (&now, &before)) in inputs.iter().zip(previous).take(players).enumerate() {
            if now != before {
                changed |= 1 << slot;
            }
        }
        if changed != 0 {
            flags |= CHANGED;
            push_mask(out, changed, players);
            for (&now, &before) in inputs.iter().zip(previous).take(players) {
                if now != before {
                    out.push(now ^ before);
                }
            }
        }
    }
    let replaced = replaced & (u64::MAX >> (64 - players.max(1)));
    if replaced != 0 {
        flags |= REPLACED;
        push_mask(out, replaced, players);
    }
    if let Some(checksum) = checksum {
        flags |= CHECKSUM;
        out.extend_from_slice(&checksum.to_le_bytes());
    }
    out[flags_at] = flags;
}

/// Reads a record against `previous` (the inputs of the last frame the client ran, one per slot)
/// and writes the frame's inputs to `inputs` (cleared first).
///
/// # Errors
/// A record that is not exactly what its flags and masks describe, for a room of
/// `previous.len()` players.
pub fn unpack(
    record: &[u8],
    previous: &[u8],
    inputs: &mut Vec<u8>,
) -> Result<Unpacked, PackedError> {
    let players = previous.len();
    if players == 0 || players > MAX_PLAYERS {
        return Err(PackedError::Players {
            players,
            previous: previous.len(),
        });
    }
    let mut reader = Reader { record, at: 0 };
    let flags = reader.take(1)?[0];
    if flags & !KNOWN != 0 {
        return Err(PackedError::UnknownFlags(flags & !KNOWN));
    }
    if flags & CHANGED != 0 && flags & ABSOLUTE != 0 {
        return Err(PackedError::ChangedAndAbsolute);
    }
    inputs.clear();
    if flags & ABSOLUTE != 0 {
        inputs.extend_from_slice(reader.take(players)?);
    } else {
        inputs.extend_from_slice(previous);
    }
    if flags & CHANGED != 0 {
        let changed = reader.mask(players)?;
        for (slot, input) in inputs.iter_mut().enumerate() {
            if changed & (1 << slot) != 0 {
                let xor = reader.take(1)?[0];
                if xor == 0 {
                    return Err(PackedError::NotChanged(slot));
                }
                *input ^= xor;
            }
        }
    }
    let replaced = if flags & REPLACED != 0 {
        reader.mask(players)?
    } else {
        0
    };
    let checksum = if flags & CHECKSUM != 0 {
        let bytes = reader.take(8)?;
        Some(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    } else {
        None
    };
    let trailing = record.len() - reader.at;
    if trailing != 0 {
        return Err(PackedError::Trailing(trailing));
    }
    Ok(Unpacked { replaced, checksum })
}

struct Reader<'a> {
    record: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], PackedError> {
        let need = self.at + len;
        let bytes = self
            .record
            .get(self.at..need)
            .ok_or(PackedError::Truncated {
                need,
                have: self.record.len(),
            })?;
        self.at = need;
        Ok(bytes)
    }

    /// A slot mask, refused when it names a slot past `players`.
    fn mask(&mut self, players: usize) -> Result<u64, PackedError> {
        let mut word = [0u8; 8];
        word[..mask_len(players)].copy_from_slice(self.take(mask_len(players))?);
        let mask = u64::from_le_bytes(word);
        let beyond = mask & !(u64::MAX >> (64 - players));
        if beyond != 0 {
            return Err(PackedError::NoSuchSlot {
                slot: beyond.trailing_zeros() as usize,
                players,
            });
        }
        Ok(mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(previous: &[u8], inputs: &[u8], replaced: u64, checksum: Option<u64>) -> usize {
        for absolute in [false, true] {
            let mut record = Vec::new();
            pack(previous, inputs, replaced, checksum, absolute, &mut record);
            let mut decoded = Vec::new();
            // An absolute record needs no previous frame: any previous inputs decode it.
            let reference = if absolute {
                vec![0xff; previous.len()]
            } else {
                previous.to_vec()
            };
            let unpacked = unpack(&record, &reference, &mut decoded).unwrap();
            assert_eq!(decoded, inputs);
            assert_eq!(unpacked, Unpacked { replaced, checksum });
        }
        let mut record = Vec::new();
        pack(previous, inputs, replaced, checksum, false, &mut record);
        record.len()
    }

    #[test]
    fn a_frame_without_changes_is_one_byte_and_each_change_costs_one_more() {
        let previous = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(round_trip(&previous, &previous, 0, None), 1);
        let mut one = previous;
        one[5] = 0;
        // Flags, the mask, the one XOR.
        assert_eq!(round_trip(&previous, &one, 0, None), 3);
        let mut two = one;
        two[0] = 31;
        assert_eq!(round_trip(&previous, &two, 0, None), 4);
        // A replaced slot ran its previous input: only the mask says so.
        assert_eq!(round_trip(&previous, &previous, 0b100, None), 2);
        assert_eq!(round_trip(&previous, &two, 0b100, Some(u64::MAX - 7)), 13);
    }

    #[test]
    fn rooms_of_one_to_sixty_four_players_round_trip() {
        for players in [1, 7, 8, 9, 63, 64] {
            let previous: Vec<u8> = (0..players).map(|slot| slot as u8).collect();
            let inputs: Vec<u8> = (0..players).map(|slot| (slot * 7 % 5) as u8).collect();
            let replaced = u64::MAX >> (64 - players);
            round_trip(&previous, &inputs, replaced, Some(42));
            round_trip(&previous, &inputs, 0, None);
        }
    }

    #[test]
    fn hostile_records_are_refused_with_the_reason() {
        let previous = [0u8; 8];
        let mut out = Vec::new();
        let refused = |record: &[u8], players: usize| {
            unpack(record, &vec![0; players], &mut Vec::new()).unwrap_err()
        };
        assert_eq!(refused(&[], 8), PackedError::Truncated { need: 1, have: 0 });
        assert_eq!(refused(&[0x10], 8), PackedError::UnknownFlags(0x10));
        assert_eq!(
            refused(&[CHANGED | ABSOLUTE], 8),
            PackedError::ChangedAndAbsolute
        );
        // The mask says two slots changed; one XOR is there.
        assert_eq!(
            refused(&[CHANGED, 0b11, 5], 8),
            PackedError::Truncated { need: 4, have: 3 }
        );
        assert_eq!(refused(&[CHANGED, 0b1, 0], 8), PackedError::NotChanged(0));
        // Slot 5 of a room of four.
        assert_eq!(
            refused(&[REPLACED, 0b10_0000], 4),
            PackedError::NoSuchSlot {
                slot: 5,
                players: 4
            }
        );
        assert_eq!(refused(&[0, 0], 8), PackedError::Trailing(1));
        assert_eq!(
            refused(&[CHECKSUM, 1, 2, 3], 8),
            PackedError::Truncated { need: 9, have: 4 }
        );
        assert!(matches!(refused(&[0], 0), PackedError::Players { .. }));
        assert!(matches!(refused(&[0], 65), PackedError::Players { .. }));
        // What `pack` writes is never refused.
        pack(&previous, &[3; 8], 1, Some(9), false, &mut out);
        assert!(unpack(&out, &previous, &mut Vec::new()).is_ok());
    }

    #[test]
    fn every_truncation_of_a_valid_record_is_refused_not_misread() {
        let previous = [9u8; 16];
        let inputs: Vec<u8> = (0..16).map(|slot| slot as u8).collect();
        let mut record = Vec::new();
        pack(&previous, &inputs, 0b1010, Some(7), false, &mut record);
        for len in 0..record.len() {
            assert!(unpack(&record[..len], &previous, &mut Vec::new()).is_err());
        }
    }

    #[test]
    fn the_documented_example_is_what_goes_on_the_wire() {
        // docs/protocol.md: 8 players, slot 2 from 0x01 to 0x11, slot 7 replaced.
        let previous = [0, 0, 0x01, 0, 0, 0, 0, 3];
        let mut inputs = previous;
        inputs[2] = 0x11;
        let mut record = Vec::new();
        pack(&previous, &inputs, 1 << 7, None, false, &mut record);
        assert_eq!(record, [0x06, 0x04, 0x10, 0x80]);
        let frame = garrison_protocol::encode_frame(
            &crate::proto::FrameInputs { packed: record },
            garrison_protocol::FrameMeta::seq(41),
        )
        .unwrap();
        assert_eq!(frame.wire().len(), 24);
        assert_eq!(
            frame.payload(),
            [
                0x06, 0x04, 0x10, 0x80, 0xfc, 0xff, 0xff, 0xff, 0x04, 0x00, 0x00, 0x00
            ]
        );
    }
}
