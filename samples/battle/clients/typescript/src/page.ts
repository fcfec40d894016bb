// The browser client: logs in with a development ticket from `serve --dev-tickets`, joins a
// match over WebSocket with full updates, mirrors the world from the deltas (no simulation),
// verifies every checksum, draws the units on a canvas and sends the keyboard's buttons
// (arrows move, space attacks; `?autoplay` presses random buttons instead). `?watch` (or
// `?watch=ROOM`) is a spectator instead: no seat, no inputs, the room's world from the frame it
// is at, then the next room playing once the match is over.

import {
  DecodeError,
  FrameReader,
  LAYOUT_HASH,
  decodeControl,
  decodeServerMessage,
  encodeHello,
  encodeInput,
  encodeJoin,
  encodeWatch,
  type Frame,
} from "./battle.js";
import { Mirror, type PageState } from "./mirror.js";

const ARENA = 100_000;
const BUTTONS: Record<string, number> = { ArrowUp: 1, ArrowDown: 2, ArrowLeft: 4, ArrowRight: 8, " ": 16 };


const state: PageState = { phase: "connecting", frames: 0, verified: 0, desyncs: 0, lastChecksum: null, error: null };
(window as unknown as { garrison: PageState }).garrison = state;

const canvas = document.getElementById("arena") as HTMLCanvasElement;
const status = document.getElementById("status") as HTMLElement;
const context = canvas.getContext("2d")!;
const query = new URLSearchParams(location.search);
const autoplay = query.has("autoplay");
// A spectator: the room it asked for (0: any room playing), or null for a player.
const watching = query.has("watch") ? Number(query.get("watch") || "0") : null;
// How long the page waits before asking again when no room could take it (a refusal's own
// retry-after, when it gives a longer one, wins).
const RETRY_MS = 500;
// Refusals that say "not now" rather than "no": busy (103: no room plays yet, or none takes
// one more spectator) and overloaded (105: joins and watches are shed while rooms run late).
const BUSY = 103;
const OVERLOADED = 105;
let held = 0;
let mirror: Mirror | null = null;
// The counts of the matches before this one.
let before = { frames: 0, verified: 0, desyncs: 0 };

addEventListener("keydown", (event) => {
  if (event.key in BUTTONS) {
    held |= BUTTONS[event.key];
    event.preventDefault();
  }
});
addEventListener("keyup", (event) => {
  if (event.key in BUTTONS) held &= ~BUTTONS[event.key];
});

function hexBytes(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g) ?? [], (pair) => parseInt(pair, 16));
}

function fail(error: string): void {
  state.error = error;
  state.phase = "failed";
}

function draw(): void {
  const size = canvas.width;
  context.fillStyle = "#10141c";
  context.fillRect(0, 0, size, size);
  if (mirror !== null) {
    mirror.units.forEach((unit, slot) => {
      const [x, y] = [(unit.x / ARENA) * size, (unit.y / ARENA) * size];
      // A spectator's slot (255) is nobody's: every unit is drawn as another player's.
      context.fillStyle = unit.hp === 0 ? "#555" : slot === mirror!.slot ? "#4aa3ff" : "#ff6b5b";
      context.beginPath();
      context.arc(x, y, 7, 0, Math.PI * 2);
      context.fill();
      context.fillStyle = "#7bd88f";
      context.fillRect(x - 8, y - 13, (16 * unit.hp) / 100, 3);
    });
  }
  const checksum = state.lastChecksum;
  status.textContent =
    `${state.phase} · frame ${mirror?.next ?? 0} · ${state.verified} checksums verified · ${state.desyncs} desyncs` +
    (checksum ? ` · last ${checksum.server} (server) = ${checksum.mirrored} (mirrored)` : "") +
    (state.error ? ` · ${state.error}` : "");
  requestAnimationFrame(draw);
}

async function main(): Promise<void> {
  const ticket = (await (await fetch("/dev/ticket")).json()) as {
    player: string;
    expires_at: string;
    mac: string;
    websocket: string;
  };
  const socket = new WebSocket(ticket.websocket);
  socket.binaryType = "arraybuffer";
  const reader = new FrameReader();
  let seq = 1;
  let buttons = 0;
  // The seq of the last Join or Watch sent: a busy or overloaded refusal of it is asked again.
  let askSeq = -1;
  const ask = () => {
    askSeq = seq;
    if (watching === null) {
      socket.send(encodeJoin({ mode: 0, updates: "Full" }, seq++));
    } else {
      socket.send(encodeWatch({ room: BigInt(watching) }, seq++));
    }
  };
  socket.onopen = () => {
    state.phase = "logging in";
    socket.send(
      encodeHello({
        ticket: { player: BigInt(ticket.player), expires_at: BigInt(ticket.expires_at), mac: hexBytes(ticket.mac) },
        layout: LAYOUT_HASH,
      }),
    );
  };
  socket.onclose = (event) => {
    if (state.error === null) fail(`connection closed (${event.code})`);
  };
  const handle = (frame: Frame) => {
    if (frame.kind >= 0xff00) {
      const control = decodeControl(frame);
      if (control.kind === "Welcome") {
        state.phase = watching === null ? "waiting for a match" : "looking for a room to watch";
        ask();
      } else if (
        control.kind === "Refused" &&
        control.message.seq === askSeq &&
        (control.message.code === BUSY || control.message.code === OVERLOADED)
      ) {
        // Not now: ask again after what the server said to wait.
        state.phase = `asked to wait (${control.message.reason})`;
        setTimeout(ask, Math.max(RETRY_MS, control.message.retry_after_ms));
      } else if (control.kind === "Close" || control.kind === "Refused") {
        fail(`${control.kind} ${control.message.code}: ${control.message.reason}`);
      }
      return;
    }
    const message = decodeServerMessage(frame);
    if (message.kind === "MatchStart") {
      before = { frames: state.frames, verified: state.verified, desyncs: state.desyncs };
      mirror = new Mirror(message.message);
      state.phase = watching === null ? "playing" : `watching room ${message.message.room}`;
    } else if (message.kind === "FrameUpdate" && mirror !== null) {
      mirror.apply(message.message);
      state.frames = before.frames + mirror.frames;
      state.verified = before.verified + mirror.verified;
      state.desyncs = before.desyncs + mirror.desyncs;
      state.lastChecksum = mirror.lastChecksum;
      if (watching === null) {
        if (autoplay && message.message.frame % 10 === 0) buttons = Math.floor(Math.random() * 32);
        socket.send(encodeInput({ frame: mirror.next + mirror.delay, buttons: autoplay ? buttons : held }, seq++));
      }
    } else if (message.kind === "MatchEnd") {
      state.phase = watching === null ? "match over; joining the next" : "match over; watching the next";
      ask();
    }
  };
  socket.onmessage = (event) => {
    try {
      reader.push(new Uint8Array(event.data as ArrayBuffer));
      for (let frame = reader.next(); frame !== null; frame = reader.next()) handle(frame);
    } catch (error) {
      fail(error instanceof DecodeError ? `decode error: ${error.message}` : String(error));
      socket.close();
    }
  };
}

requestAnimationFrame(draw);
main().catch((error) => fail(String(error)));
