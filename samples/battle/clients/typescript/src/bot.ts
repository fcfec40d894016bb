// A battle bot in TypeScript on Node, built on the generated codecs only: it logs in with a
// ticket, joins with full updates, mirrors the world from MatchStart and each frame's delta
// (without simulating), verifies every checksum the server sends, and plays: it sends inputs
// stamped `next frame + input delay` and counts those that ran as sent.
//
//   node dist/src/bot.js --server 127.0.0.1:7700 [--bots 2] [--seconds 10] [--key KEY]
//
// It exits 0 only when every bot played, saw no gap, verified at least one checksum per second
// played, found no desync, and had most of its inputs run on time.

import { createHmac } from "node:crypto";
import { Socket } from "node:net";

import {
  DecodeError,
  FrameReader,
  LAYOUT_HASH,
  decodeControl,
  decodeServerMessage,
  encodeHello,
  encodeInput,
  encodeJoin,
  type Frame,
  type FrameUpdate,
  type MatchStart,
} from "./battle.js";
import { Mirror } from "./mirror.js";

interface Options {
  host: string;
  port: number;
  bots: number;
  seconds: number;
  key: string;
  firstPlayer: bigint;
}

/** What one bot saw. */
export interface Report {
  player: bigint;
  frames: number;
  verified: number;
  desyncs: number;
  gaps: number;
  sent: number;
  onTime: number;
  matches: number;
  /** Joins the server shed as overloaded (each asked again after its retry-after). */
  shed: number;
  error: string | null;
}

/** A ticket as the server's `ticket::mint` makes it: HMAC-SHA256 over player ++ expiry (LE). */
export function mintTicket(key: string, player: bigint, expiresAt: bigint) {
  const message = Buffer.alloc(16);
  message.writeBigUInt64LE(player, 0);
  message.writeBigUInt64LE(expiresAt, 8);
  const mac = new Uint8Array(createHmac("sha256", key).update(message).digest());
  return { player, expires_at: expiresAt, mac };
}

class Bot {
  readonly report: Report;
  private readonly socket = new Socket();
  private readonly reader = new FrameReader();
  private mirror: Mirror | null = null;
  private playing = false;
  private buttons = 0;
  private readonly sent = new Map<number, number>();
  private seq = 1;
  // The seq of the last Join sent, and the timer that sends it again after a shed one.
  private joinSeq = -1;
  private retry: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly options: Options,
    player: bigint,
    private readonly done: () => void,
  ) {
    this.report = { player, frames: 0, verified: 0, desyncs: 0, gaps: 0, sent: 0, onTime: 0, matches: 0, shed: 0, error: null };
  }

  start(): void {
    this.socket.on("data", (chunk: Buffer) => {
      try {
        this.reader.push(new Uint8Array(chunk));
        for (let frame = this.reader.next(); frame !== null; frame = this.reader.next()) this.handle(frame);
      } catch (error) {
        this.fail(error instanceof DecodeError ? `decode error: ${error.message}` : String(error));
      }
    });
    this.socket.on("error", (error) => this.fail(`socket: ${error.message}`));
    this.socket.on("close", () => this.done());
    this.socket.connect(this.options.port, this.options.host, () => {
      const expires = BigInt(Math.floor(Date.now() / 1000) + 3600);
      const ticket = mintTicket(this.options.key, this.report.player, expires);
      this.socket.write(encodeHello({ ticket, layout: LAYOUT_HASH }));
    });
  }

  stop(): void {
    this.playing = false;
    if (this.retry !== null) clearTimeout(this.retry);
    this.retry = null;
    this.socket.end();
  }

  private join(): void {
    this.retry = null;
    this.joinSeq = this.seq;
    this.socket.write(encodeJoin({ mode: 0, updates: "Full" }, this.seq++));
  }

  private fail(error: string): void {
    if (this.report.error === null) this.report.error = error;
    if (this.retry !== null) clearTimeout(this.retry);
    this.retry = null;
    this.socket.destroy();
  }

  private handle(frame: Frame): void {
    if (frame.kind >= 0xff00) {
      const control = decodeControl(frame);
      switch (control.kind) {
        case "Welcome":
          this.join();
          return;
        case "Close":
          this.fail(`closed by the server: ${control.message.code} ${control.message.reason}`);
          return;
        case "Refused":
          // A join shed while the rooms run late (105) is asked again after the retry-after
          // the server gave; any other refusal is a failure.
          if (control.message.seq === this.joinSeq && control.message.code === 105 && !this.socket.destroyed) {
            this.report.shed += 1;
            this.retry = setTimeout(() => this.join(), Math.max(100, control.message.retry_after_ms));
            return;
          }
          this.fail(`refused: ${control.message.code} ${control.message.reason}`);
          return;
        default:
          return;
      }
    }
    const message = decodeServerMessage(frame);
    switch (message.kind) {
      case "MatchStart":
        this.begin(message.message);
        return;
      case "FrameUpdate":
        this.apply(message.message);
        return;
      case "MatchEnd":
        this.playing = false;
        this.join();
        return;
      default:
        // FrameInputs, Catchup and Resync go to clients that asked for them; this one did not.
        this.fail(`unexpected ${message.kind} (kind 0x${frame.kind.toString(16)})`);
    }
  }

  private begin(start: MatchStart): void {
    this.mirror = new Mirror(start);
    this.playing = true;
    this.sent.clear();
    if (this.report.matches === 0) {
      // The bot plays `seconds` from its first match's start, however long the room took to fill.
      setTimeout(() => this.stop(), this.options.seconds * 1000);
    }
    this.report.matches++;
  }

  private apply(update: FrameUpdate): void {
    const mirror = this.mirror;
    if (!this.playing || mirror === null) return;
    const [verified, desyncs] = [mirror.verified, mirror.desyncs];
    try {
      mirror.apply(update);
    } catch (error) {
      this.report.gaps++;
      this.fail(String(error));
      return;
    }
    this.report.frames++;
    this.report.verified += mirror.verified - verified;
    this.report.desyncs += mirror.desyncs - desyncs;
    const mine = this.sent.get(update.frame);
    if (mine !== undefined) {
      this.sent.delete(update.frame);
      const late = (update.replaced & (1n << BigInt(Math.min(mirror.slot, 63)))) !== 0n;
      if (update.inputs[mirror.slot] === mine && !late) this.report.onTime++;
    }
    // A new button every 10 frames, sent for every other frame.
    if (update.frame % 10 === 0) this.buttons = Math.floor(Math.random() * 32);
    const stamp = mirror.next + mirror.delay;
    if (stamp % 2 === 0 && !this.sent.has(stamp)) {
      this.sent.set(stamp, this.buttons);
      this.report.sent++;
      this.socket.write(encodeInput({ frame: stamp, buttons: this.buttons }, this.seq++));
    }
  }
}

function parse(argv: string[]): Options {
  const options: Options = { host: "127.0.0.1", port: 7700, bots: 2, seconds: 10, key: "demo ticket key", firstPlayer: 900_000n };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    switch (flag) {
      case "--server": {
        const at = value.lastIndexOf(":");
        options.host = value.slice(0, at);
        options.port = Number(value.slice(at + 1));
        break;
      }
      case "--bots": options.bots = Number(value); break;
      case "--seconds": options.seconds = Number(value); break;
      case "--key": options.key = value; break;
      case "--first-player": options.firstPlayer = BigInt(value); break;
      default: throw new Error(`unknown flag ${flag}`);
    }
  }
  return options;
}

/**
 * Runs `options.bots` bots, each for `options.seconds` from the start of its first match (at
 * most a minute more waiting for a room), and resolves with their reports.
 */
export function run(options: Options): Promise<Report[]> {
  return new Promise((resolve) => {
    let open = options.bots;
    const bots: Bot[] = [];
    const finished = () => {
      open--;
      if (open === 0) resolve(bots.map((bot) => bot.report));
    };
    for (let i = 0; i < options.bots; i++) {
      const bot = new Bot(options, options.firstPlayer + BigInt(i), finished);
      bots.push(bot);
      bot.start();
    }
    // A room that never fills ends the run anyway: those bots report no match.
    setTimeout(() => bots.forEach((bot) => bot.stop()), (options.seconds + 60) * 1000);
  });
}

async function main(): Promise<number> {
  const options = parse(process.argv.slice(2));
  const reports = await run(options);
  let ok = true;
  for (const report of reports) {
    const problems: string[] = [];
    if (report.error !== null) problems.push(report.error);
    if (report.matches === 0) problems.push("never started a match");
    if (report.verified < Math.floor(options.seconds)) problems.push(`only ${report.verified} checksums verified`);
    if (report.desyncs > 0) problems.push(`${report.desyncs} desyncs`);
    if (report.gaps > 0) problems.push(`${report.gaps} gaps`);
    if (report.onTime * 2 < report.sent) problems.push(`only ${report.onTime} of ${report.sent} inputs ran on time`);
    ok &&= problems.length === 0;
    console.log(
      `bot ${report.player}: ${report.matches} match(es), ${report.frames} frames, ${report.verified} checksums verified, ` +
        `${report.desyncs} desyncs, ${report.onTime}/${report.sent} inputs on time, ${report.shed} joins shed${problems.length ? `: FAILED: ${problems.join("; ")}` : ""}`,
    );
  }
  return ok ? 0 : 1;
}

if (process.argv[1]?.endsWith("bot.js")) {
  main().then(
    (code) => process.exit(code),
    (error) => {
      console.error(String(error));
      process.exit(2);
    },
  );
}
