// The generated battle codecs against the golden fixtures the Rust side writes
// (samples/battle/clients/fixtures.json, kept current by tests/client_fixtures.rs).

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import * as battle from "../src/battle.js";
import { DecodeError, EncodeError, FrameReader, type Frame } from "../src/battle.js";

interface Good {
  protocol: string;
  message: string;
  kind: number;
  payload: string;
  value: unknown;
}

interface Bad {
  protocol: string;
  message: string;
  kind: number;
  why: string;
  payload: string;
}

const fixtures = JSON.parse(
  readFileSync(new URL("../../../fixtures.json", import.meta.url), "utf8"),
) as { good: Good[]; bad: Bad[] };
const schema = JSON.parse(
  readFileSync(new URL("../../../../schema.json", import.meta.url), "utf8"),
) as { layout_hash: string };

const api = battle as unknown as Record<string, unknown>;

function bytes(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g) ?? [], (pair) => parseInt(pair, 16));
}

function frame(kind: number, payload: Uint8Array): Frame {
  return { kind, seq: 0, reply: false, trace: null, payload };
}

function decodeWith(protocol: string, kind: number, payload: Uint8Array): { kind: string; message: unknown } {
  return (api[`decode${protocol}`] as (f: Frame) => { kind: string; message: unknown })(frame(kind, payload));
}

function typeOf(protocol: string, message: string): string {
  return (api[`${protocol}Types`] as Record<string, string>)[message];
}

test("every fixture decodes to the value the Rust side wrote", () => {
  assert.ok(fixtures.good.length >= 10);
  for (const fixture of fixtures.good) {
    const decoded = decodeWith(fixture.protocol, fixture.kind, bytes(fixture.payload));
    assert.equal(decoded.kind, fixture.message);
    assert.deepEqual(
      battle.toPlain(typeOf(fixture.protocol, fixture.message), decoded.message),
      fixture.value,
      fixture.message,
    );
  }
});

test("every fixture encodes to exactly the bytes rkyv wrote, in a version-3 frame", () => {
  for (const fixture of fixtures.good) {
    const value = battle.fromPlain(typeOf(fixture.protocol, fixture.message), fixture.value);
    const encode = api[`encode${fixture.message}`] as (v: unknown, seq?: number) => Uint8Array;
    const wire = encode(value, 9);
    const view = new DataView(wire.buffer, wire.byteOffset, wire.byteLength);
    assert.equal(view.getUint32(0, true), wire.length - 4, `${fixture.message}: length`);
    assert.equal(wire[4], 3, "version");
    assert.equal(view.getUint16(6, true), fixture.kind, `${fixture.message}: kind`);
    assert.equal(view.getUint32(8, true), 9, "seq");
    assert.deepEqual(Array.from(wire.subarray(12)), Array.from(bytes(fixture.payload)), fixture.message);
  }
});

test("every bad payload is a DecodeError, never garbage", () => {
  assert.ok(fixtures.bad.length >= 5);
  for (const fixture of fixtures.bad) {
    assert.throws(
      () => decodeWith(fixture.protocol, fixture.kind, bytes(fixture.payload)),
      (error: unknown) => error instanceof DecodeError,
      `${fixture.message}: ${fixture.why}`,
    );
  }
  // Truncating any good payload by one byte at the front moves the root: it decodes to other
  // values or fails with a DecodeError, but never throws anything else.
  for (const fixture of fixtures.good) {
    const payload = bytes(fixture.payload);
    for (let cut = 1; cut <= payload.length; cut++) {
      try {
        decodeWith(fixture.protocol, fixture.kind, payload.subarray(cut));
      } catch (error) {
        assert.ok(error instanceof DecodeError, `${fixture.message} cut ${cut}: ${String(error)}`);
      }
    }
  }
  assert.throws(() => battle.decodeServerMessage(frame(0x0999, new Uint8Array(4))), DecodeError);
});

test("the encoder refuses values its type cannot hold", () => {
  assert.throws(() => battle.encodeInput({ frame: -1, buttons: 0 }), EncodeError);
  assert.throws(() => battle.encodeInput({ frame: 1, buttons: 256 }), EncodeError);
  assert.throws(() => battle.encodeJoin({ mode: 0, updates: "Sometimes" as never }), EncodeError);
  assert.throws(
    () => battle.encodeWelcome({ session: 1 as unknown as bigint, resumed: true }),
    EncodeError,
  );
});

test("the frame reader cuts a stream fed byte by byte and refuses bad headers", () => {
  const first = battle.encodeInput({ frame: 7, buttons: 3 }, 1);
  const second = battle.encodeJoin({ mode: 0, updates: "Inputs" }, 2);
  const reader = new FrameReader();
  const seen: Frame[] = [];
  for (const byte of [...first, ...second]) {
    reader.push(Uint8Array.of(byte));
    for (let next = reader.next(); next !== null; next = reader.next()) seen.push(next);
  }
  assert.deepEqual(seen.map((f) => [f.kind, f.seq]), [[0x0101, 1], [0x0100, 2]]);
  assert.deepEqual(battle.decodeInput(seen[0].payload), { frame: 7, buttons: 3 });

  const old = first.slice();
  old[4] = 2;
  const stale = new FrameReader();
  stale.push(old);
  assert.throws(() => stale.next(), /unsupported protocol version 2/);

  const flagged = first.slice();
  flagged[5] = 0x80;
  const reserved = new FrameReader();
  reserved.push(flagged);
  assert.throws(() => reserved.next(), /reserved flag bits/);

  const huge = new FrameReader();
  huge.push(Uint8Array.of(0xff, 0xff, 0xff, 0x7f));
  assert.throws(() => huge.next(), /exceeds the maximum/);
});

test("the module's layout hash is the schema's", () => {
  assert.equal(battle.LAYOUT_HASH, BigInt(`0x${schema.layout_hash}`));
});
