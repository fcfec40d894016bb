// The battle as a client that does not simulate sees it: the world from `MatchStart`, then
// each frame's delta, with every checksum the server sends verified against it. Shared by the
// Node bot (bot.ts) and the browser page (page.ts); no Node or DOM API here.

import type { FrameUpdate, MatchStart, Unit } from "./battle.js";

/** `World::checksum` (sim.rs): FNV-1a 64 over frame, rng and every unit's fields, LE. */
export function checksum(frame: number, rng: bigint, units: Unit[]): bigint {
  const bytes = new Uint8Array(12 + units.length * 20);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, frame, true);
  view.setBigUint64(4, rng, true);
  let at = 12;
  for (const unit of units) {
    view.setInt32(at, unit.x, true);
    view.setInt32(at + 4, unit.y, true);
    view.setInt32(at + 8, unit.hp, true);
    view.setUint16(at + 12, unit.cooldown, true);
    view.setUint16(at + 14, unit.respawn_in, true);
    view.setUint32(at + 16, unit.kills, true);
    at += 20;
  }
  let hash = 0xcbf29ce484222325n;
  for (const byte of bytes) {
    hash ^= BigInt(byte);
    hash = (hash * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return hash;
}

const FIELDS = {
  X: "x",
  Y: "y",
  Hp: "hp",
  Cooldown: "cooldown",
  RespawnIn: "respawn_in",
  Kills: "kills",
} as const;

/** One match, mirrored from the server's full updates. */
export class Mirror {
  readonly units: Unit[];
  /** The next frame expected. */
  next: number;
  readonly slot: number;
  readonly delay: number;
  frames = 0;
  verified = 0;
  desyncs = 0;
  /** The last checksum the server sent and the one computed here, as hex. */
  lastChecksum: { server: string; mirrored: string } | null = null;

  constructor(start: MatchStart) {
    this.units = start.units.map((unit) => ({ ...unit }));
    this.next = start.frame;
    this.slot = start.slot;
    this.delay = start.input_delay;
  }

  /** Applies one frame; throws when it is not the next one or names a slot that is not there. */
  apply(update: FrameUpdate): void {
    if (update.frame !== this.next) {
      throw new Error(`frame ${update.frame} arrived when ${this.next} was next`);
    }
    for (const change of update.delta) {
      const unit = this.units[change.unit];
      if (unit === undefined) throw new Error(`a change for slot ${change.unit} of ${this.units.length}`);
      unit[FIELDS[change.field]] = Number(change.value);
    }
    this.next = update.frame + 1;
    this.frames++;
    if (update.checksum !== null) {
      if (update.rng === null) throw new Error(`frame ${update.frame} has a checksum but no generator state`);
      const mirrored = checksum(this.next, update.rng, this.units);
      this.lastChecksum = { server: update.checksum.toString(16), mirrored: mirrored.toString(16) };
      if (mirrored === update.checksum) this.verified++;
      else this.desyncs++;
    }
  }
}

/** What the page shows, also readable by a test as `window.garrison`. */
export interface PageState {
  phase: string;
  frames: number;
  verified: number;
  desyncs: number;
  lastChecksum: { server: string; mirrored: string } | null;
  error: string | null;
}
