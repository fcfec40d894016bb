// Every payload in shapes.fixtures (written by rkyv, see examples/shapes.rs) decoded with the
// generated shapes.ts and encoded again must give the same bytes.
//
//   tsc ... shapes.ts shapes_round_trip.ts && node shapes_round_trip.js shapes.fixtures

import { readFileSync } from "node:fs";

import { decodeShapes, encodeEverything, encodeShape, type Frame } from "./shapes.js";

let checked = 0;
let failures = 0;
for (const line of readFileSync(process.argv[2], "utf8").trim().split("\n")) {
  const [kind, hex] = line.split(" ");
  const payload = Uint8Array.from(hex.match(/../g) ?? [], (pair) => parseInt(pair, 16));
  const frame: Frame = { kind: Number(kind), seq: 0, reply: false, trace: null, payload };
  const decoded = decodeShapes(frame);
  const wire = decoded.kind === "Everything" ? encodeEverything(decoded.message) : encodeShape(decoded.message);
  const again = Array.from(wire.subarray(12)).map((byte) => byte.toString(16).padStart(2, "0")).join("");
  if (again !== hex) {
    failures++;
    console.log(`FAILED: kind ${kind} re-encoded to ${again}, rkyv wrote ${hex}`);
  }
  checked++;
}
console.log(`TypeScript shapes: ${checked} payloads round-tripped, ${failures} failures`);
process.exit(failures === 0 && checked >= 5 ? 0 : 1);
