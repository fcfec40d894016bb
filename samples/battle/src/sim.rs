//! The battle simulation: integer arithmetic only, a seeded generator, units kept in index
//! order. Nothing depends on floats, hash-map order, time or the machine, so every peer that
//! applies the same inputs computes the same state and the same [`World::checksum`].

use garrison_protocol::Schema;
use rkyv::{Archive, Deserialize, Serialize};

/// Arena side, in thousandths of a tile: positions are in `0..ARENA`.
pub const ARENA: i32 = 100_000;
/// Distance a unit moves per frame on each axis it is steered along.
pub const SPEED: i32 = 150;
/// How close (squared) a target must be to be hit.
pub const RANGE_SQUARED: i64 = 4_000 * 4_000;
/// Hit points of a fresh unit.
pub const MAX_HP: i32 = 100;
/// Damage of a hit (doubled on a critical hit, one in eight).
pub const DAMAGE: i32 = 12;
/// Frames between two attacks of one unit.
pub const COOLDOWN: u16 = 20;
/// Frames a dead unit waits before it respawns.
pub const RESPAWN_FRAMES: u16 = 90;

/// An input is one byte of buttons.
pub mod input {
    /// Move up (y decreases).
    pub const UP: u8 = 1;
    /// Move down.
    pub const DOWN: u8 = 2;
    /// Move left (x decreases).
    pub const LEFT: u8 = 4;
    /// Move right.
    pub const RIGHT: u8 = 8;
    /// Attack the nearest unit in range.
    pub const ATTACK: u8 = 16;
    /// Buttons that mean something; others are ignored.
    pub const ALL: u8 = UP | DOWN | LEFT | RIGHT | ATTACK;
}

/// One player's unit.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Position, `0..ARENA`.
    pub x: i32,
    /// Position, `0..ARENA`.
    pub y: i32,
    /// Hit points; 0 means dead.
    pub hp: i32,
    /// Frames until it may attack again.
    pub cooldown: u16,
    /// Frames until a dead unit respawns.
    pub respawn_in: u16,
    /// Kills scored.
    pub kills: u32,
}

/// The whole simulated state.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// Frames simulated so far.
    pub frame: u32,
    /// The generator's state (xorshift64*).
    pub rng: u64,
    /// Units, one per player slot.
    pub units: Vec<Unit>,
}

impl garrison_protocol::Snapshot for World {
    const SCHEMA: &'static str = "battle.world";
    const VERSION: u16 = 1;
}

/// Which field of a unit a [`Change`] sets.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Field {
    /// [`Unit::x`].
    X,
    /// [`Unit::y`].
    Y,
    /// [`Unit::hp`].
    Hp,
    /// [`Unit::cooldown`].
    Cooldown,
    /// [`Unit::respawn_in`].
    RespawnIn,
    /// [`Unit::kills`].
    Kills,
}

/// One changed field: what a delta broadcast carries instead of the whole state.
#[derive(Archive, Serialize, Deserialize, Schema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The unit's slot.
    pub unit: u16,
    /// The field.
    pub field: Field,
    /// Its new value.
    pub value: i64,
}

impl World {
    /// A world of `players` units placed by `seed`.
    pub fn new(seed: u64, players: usize) -> World {
        // xorshift must not start at zero.
        let mut world = World {
            frame: 0,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15 | 1,
            units: Vec::with_capacity(players),
        };
        for _ in 0..players {
            let (x, y) = world.spawn_point();
            world.units.push(Unit {
                x,
                y,
                hp: MAX_HP,
                cooldown: 0,
                respawn_in: 0,
                kills: 0,
            });
        }
        world
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: small, fast, and identical everywhere.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn spawn_point(&mut self) -> (i32, i32) {
        let x = (self.next_random() % ARENA as u64) as i32;
        let y = (self.next_random() % ARENA as u64) as i32;
        (x, y)
    }

    /// Simulates one frame with one input per unit (missing inputs count as no buttons).
    pub fn step(&mut self, inputs: &[u8]) {
        let buttons = |slot: usize| inputs.get(slot).copied().unwrap_or(0) & input::ALL;
        // Movement.
        for (slot, unit) in self.units.iter_mut().enumerate() {
            if unit.hp == 0 {
                continue;
            }
            let pressed = buttons(slot);
            let axis = |negative: u8, positive: u8| -> i32 {
                i32::from(pressed & positive != 0) - i32::from(pressed & negative != 0)
            };
            unit.x = (unit.x + axis(input::LEFT, input::RIGHT) * SPEED).clamp(0, ARENA - 1);
            unit.y = (unit.y + axis(input::UP, input::DOWN) * SPEED).clamp(0, ARENA - 1);
        }
        // Attacks resolve simultaneously: targets and damage from the positions after movement,
        // hit points applied afterwards, so unit order never decides an exchange.
        let mut hits: Vec<(usize, usize, i32)> = Vec::new();
        for slot in 0..self.units.len() {
            let attacker = self.units[slot];
            if attacker.hp == 0 || attacker.cooldown > 0 || buttons(slot) & input::ATTACK == 0 {
                continue;
            }
            let target = (0..self.units.len())
                .filter(|&other| other != slot && self.units[other].hp > 0)
                .map(|other| {
                    let dx = i64::from(self.units[other].x - attacker.x);
                    let dy = i64::from(self.units[other].y - attacker.y);
                    (dx * dx + dy * dy, other)
                })
                .filter(|(distance, _)| *distance <= RANGE_SQUARED)
                .min();
            if let Some((_, target)) = target {
                let critical = self.next_random().is_multiple_of(8);
                hits.push((slot, target, if critical { DAMAGE * 2 } else { DAMAGE }));
                self.units[slot].cooldown = COOLDOWN;
            }
        }
        let mut died = Vec::new();
        for (attacker, target, damage) in hits {
            let unit = &mut self.units[target];
            if unit.hp > 0 {
                unit.hp = (unit.hp - damage).max(0);
                if unit.hp == 0 {
                    unit.respawn_in = RESPAWN_FRAMES;
                    self.units[attacker].kills += 1;
                    died.push(target);
                }
            }
        }
        // Timers and respawns; a unit that died this frame starts waiting next frame, so it
        // waits exactly RESPAWN_FRAMES frames.
        for slot in 0..self.units.len() {
            let unit = self.units[slot];
            if died.contains(&slot) {
                continue;
            }
            if unit.hp == 0 {
                if unit.respawn_in <= 1 {
                    let (x, y) = self.spawn_point();
                    self.units[slot] = Unit {
                        x,
                        y,
                        hp: MAX_HP,
                        cooldown: 0,
                        respawn_in: 0,
                        kills: unit.kills,
                    };
                } else {
                    self.units[slot].respawn_in -= 1;
                }
            } else if unit.cooldown > 0 {
                self.units[slot].cooldown -= 1;
            }
        }
        self.frame += 1;
    }

    /// A checksum of the whole state (FNV-1a over every field, little-endian): equal worlds have
    /// equal checksums, and peers compare them to detect a desync.
    pub fn checksum(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for byte in bytes {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        feed(&self.frame.to_le_bytes());
        feed(&self.rng.to_le_bytes());
        for unit in &self.units {
            feed(&unit.x.to_le_bytes());
            feed(&unit.y.to_le_bytes());
            feed(&unit.hp.to_le_bytes());
            feed(&unit.cooldown.to_le_bytes());
            feed(&unit.respawn_in.to_le_bytes());
            feed(&unit.kills.to_le_bytes());
        }
        hash
    }

    /// The fields that differ from `before` (same number of units): a frame's delta.
    pub fn delta_from(&self, before: &World) -> Vec<Change> {
        self.delta_from_units(&before.units)
    }

    /// The fields that differ from the units `before` (what a room keeps of the last frame).
    pub fn delta_from_units(&self, before: &[Unit]) -> Vec<Change> {
        let mut changes = Vec::new();
        for (slot, (old, new)) in before.iter().zip(&self.units).enumerate() {
            let unit = slot as u16;
            let mut check = |field: Field, old: i64, new: i64| {
                if old != new {
                    changes.push(Change {
                        unit,
                        field,
                        value: new,
                    });
                }
            };
            check(Field::X, old.x.into(), new.x.into());
            check(Field::Y, old.y.into(), new.y.into());
            check(Field::Hp, old.hp.into(), new.hp.into());
            check(Field::Cooldown, old.cooldown.into(), new.cooldown.into());
            check(
                Field::RespawnIn,
                old.respawn_in.into(),
                new.respawn_in.into(),
            );
            check(Field::Kills, old.kills.into(), new.kills.into());
        }
        changes
    }

    /// Applies a delta produced by [`World::delta_from`]; changes for slots this world does not
    /// have are ignored.
    pub fn apply(&mut self, changes: &[Change]) {
        for change in changes {
            let Some(unit) = self.units.get_mut(usize::from(change.unit)) else {
                continue;
            };
            // Values come from a world of the same types, so they fit; saturate rather than trust.
            let narrow_i32 =
                |value: i64| value.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
            let narrow_u16 = |value: i64| value.clamp(0, i64::from(u16::MAX)) as u16;
            match change.field {
                Field::X => unit.x = narrow_i32(change.value),
                Field::Y => unit.y = narrow_i32(change.value),
                Field::Hp => unit.hp = narrow_i32(change.value),
                Field::Cooldown => unit.cooldown = narrow_u16(change.value),
                Field::RespawnIn => unit.respawn_in = narrow_u16(change.value),
                Field::Kills => unit.kills = change.value.clamp(0, i64::from(u32::MAX)) as u32,
            }
        }
    }
}

#[cfg(test)]
mod tests;
