// ---- Garrison wire runtime (generated with the codecs below; do not edit) ----
//
// Reads and writes the rkyv subset Garrison's messages use (docs/protocol.md, "Payload"):
// little-endian, 32-bit relative pointers, unaligned, the root at the end. Decoders check every
// bound, offset, tag, bool and UTF-8 sequence and throw a DecodeError naming the field; encoders
// write the exact bytes rkyv writes (out-of-line data before its object, in field order).

/** A type as the schema writes it. */
export type Ty =
  | string
  | { vec: Ty }
  | { option: Ty }
  | { box: Ty }
  | { array: Ty; len: number }
  | { tuple: Ty[] };

interface FieldDef {
  name: string;
  offset: number;
  type: Ty;
}

interface VariantDef {
  name: string;
  tag: number;
  fields: FieldDef[];
}

type Def =
  | { kind: "struct"; size: number; fields: FieldDef[] }
  | { kind: "enum"; size: number; unit: boolean; variants: VariantDef[] };

/** A payload or frame that is not a valid encoding: where, and why. */
export class DecodeError extends Error {
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`${path}: ${reason}`);
    this.name = "DecodeError";
  }
}

/** A value that cannot be encoded as its type (a number out of range, a missing field). */
export class EncodeError extends Error {
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`${path}: ${reason}`);
    this.name = "EncodeError";
  }
}

const PRIMITIVE_SIZE: Record<string, number> = {
  u8: 1, i8: 1, bool: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, u64: 8, i64: 8, f64: 8,
};

const MAX_DEPTH = 64;
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });
const utf8Encoder = new TextEncoder();

class Codec {
  constructor(private readonly types: Record<string, Def>) {}

  def(name: string): Def {
    const def = this.types[name];
    if (def === undefined) throw new Error(`unknown type ${name}`);
    return def;
  }

  size(t: Ty): number {
    if (typeof t === "string") {
      if (t === "string") return 8;
      const primitive = PRIMITIVE_SIZE[t];
      return primitive !== undefined ? primitive : this.def(t).size;
    }
    if ("vec" in t) return 8;
    if ("option" in t) return 1 + this.size(t.option);
    if ("box" in t) return 4;
    if ("array" in t) return this.size(t.array) * t.len;
    return t.tuple.reduce((sum, element) => sum + this.size(element), 0);
  }

  // ---- decoding ----

  read(bytes: Uint8Array, at: number, t: Ty, path: string, depth: number): unknown {
    if (depth > MAX_DEPTH) throw new DecodeError(path, `nested deeper than ${MAX_DEPTH}`);
    const size = this.size(t);
    if (at < 0 || at + size > bytes.length) {
      throw new DecodeError(path, `${size} bytes at ${at} run past the payload's ${bytes.length}`);
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (typeof t === "string") {
      switch (t) {
        case "u8": return view.getUint8(at);
        case "i8": return view.getInt8(at);
        case "u16": return view.getUint16(at, true);
        case "i16": return view.getInt16(at, true);
        case "u32": return view.getUint32(at, true);
        case "i32": return view.getInt32(at, true);
        case "f32": return view.getFloat32(at, true);
        case "f64": return view.getFloat64(at, true);
        case "u64": return view.getBigUint64(at, true);
        case "i64": return view.getBigInt64(at, true);
        case "bool": {
          const byte = view.getUint8(at);
          if (byte > 1) throw new DecodeError(path, `bool byte ${byte} is neither 0 nor 1`);
          return byte === 1;
        }
        case "string": return this.readString(bytes, view, at, path);
        default: return this.readNamed(bytes, at, t, path, depth);
      }
    }
    if ("vec" in t) {
      const start = at + view.getInt32(at, true);
      const len = view.getUint32(at + 4, true);
      const element = this.size(t.vec);
      if (start < 0 || start + len * element > bytes.length) {
        throw new DecodeError(path, `${len} elements at ${start} run outside the payload`);
      }
      if (t.vec === "u8") return bytes.slice(start, start + len);
      const out: unknown[] = [];
      for (let i = 0; i < len; i++) {
        out.push(this.read(bytes, start + i * element, t.vec, `${path}[${i}]`, depth + 1));
      }
      return out;
    }
    if ("option" in t) {
      const tag = view.getUint8(at);
      if (tag === 0) return null;
      if (tag !== 1) throw new DecodeError(path, `option tag ${tag} is neither 0 nor 1`);
      return this.read(bytes, at + 1, t.option, path, depth + 1);
    }
    if ("box" in t) {
      return this.read(bytes, at + view.getInt32(at, true), t.box, `${path}.*`, depth + 1);
    }
    if ("array" in t) {
      const element = this.size(t.array);
      if (t.array === "u8") return bytes.slice(at, at + t.len);
      const out: unknown[] = [];
      for (let i = 0; i < t.len; i++) {
        out.push(this.read(bytes, at + i * element, t.array, `${path}[${i}]`, depth + 1));
      }
      return out;
    }
    const out: unknown[] = [];
    let offset = at;
    t.tuple.forEach((element, i) => {
      out.push(this.read(bytes, offset, element, `${path}.${i}`, depth + 1));
      offset += this.size(element);
    });
    return out;
  }

  private readString(bytes: Uint8Array, view: DataView, at: number, path: string): string {
    const first = view.getUint8(at);
    let start: number;
    let len: number;
    if ((first & 0xc0) === 0x80) {
      const raw = view.getUint32(at, true);
      len = (raw & 0x3f) | ((raw >>> 8) << 6);
      start = at + view.getInt32(at + 4, true);
      if (start < 0 || start + len > bytes.length) {
        throw new DecodeError(path, `string of ${len} bytes at ${start} runs outside the payload`);
      }
    } else {
      start = at;
      len = 0;
      while (len < 8 && view.getUint8(at + len) !== 0xff) len++;
    }
    try {
      return utf8Decoder.decode(bytes.subarray(start, start + len));
    } catch {
      throw new DecodeError(path, "string is not valid UTF-8");
    }
  }

  private readNamed(bytes: Uint8Array, at: number, name: string, path: string, depth: number): unknown {
    const def = this.def(name);
    if (def.kind === "struct") {
      const out: Record<string, unknown> = {};
      for (const field of def.fields) {
        out[field.name] = this.read(bytes, at + field.offset, field.type, `${path}.${field.name}`, depth + 1);
      }
      return out;
    }
    const tag = bytes[at];
    const variant = def.variants.find((known) => known.tag === tag);
    if (variant === undefined) throw new DecodeError(path, `${name} has no variant with tag ${tag}`);
    if (def.unit) return variant.name;
    const out: Record<string, unknown> = { kind: variant.name };
    for (const field of variant.fields) {
      out[fieldKey(field)] = this.read(bytes, at + field.offset, field.type, `${path}.${field.name}`, depth + 1);
    }
    return out;
  }

  decode(name: string, payload: Uint8Array): unknown {
    const size = this.def(name).size;
    if (payload.length < size) {
      throw new DecodeError(name, `payload of ${payload.length} bytes is shorter than the ${size}-byte root`);
    }
    return this.read(payload, payload.length - size, name, name, 0);
  }

  // ---- encoding: out-of-line data first (`deps`), then the object in place (`place`) ----

  private deps(w: Writer, t: Ty, v: unknown, path: string): unknown {
    if (typeof t === "string") {
      if (t === "string") {
        if (typeof v !== "string") throw new EncodeError(path, "expected a string");
        const encoded = utf8Encoder.encode(v);
        if (encoded.length <= 8) return { encoded, pos: -1 };
        if (encoded.length > 0x3fffffff) throw new EncodeError(path, "string too long");
        const pos = w.reserve(encoded.length);
        w.bytes.set(encoded, pos);
        return { encoded, pos };
      }
      if (t in PRIMITIVE_SIZE) return null;
      const def = this.def(t);
      if (def.kind === "struct") {
        const record = asRecord(v, path);
        return def.fields.map((field) => this.deps(w, field.type, record[field.name], `${path}.${field.name}`));
      }
      const variant = this.variantOf(def, v, t, path);
      const record = def.unit ? {} : asRecord(v, path);
      return variant.fields.map((field) => this.deps(w, field.type, record[fieldKey(field)], `${path}.${field.name}`));
    }
    if ("vec" in t || "array" in t) {
      const inner = "vec" in t ? t.vec : t.array;
      const elements = asElements(v, path);
      if ("array" in t && elements.length !== t.len) {
        throw new EncodeError(path, `expected ${t.len} elements, got ${elements.length}`);
      }
      const resolvers = elements.map((element, i) => this.deps(w, inner, element, `${path}[${i}]`));
      if ("array" in t) return resolvers;
      const size = this.size(inner);
      const pos = w.reserve(size * elements.length);
      elements.forEach((element, i) => this.place(w, pos + i * size, inner, element, resolvers[i], `${path}[${i}]`));
      return { pos, len: elements.length };
    }
    if ("option" in t) {
      return v === null || v === undefined ? null : this.deps(w, t.option, v, path);
    }
    if ("box" in t) {
      const resolver = this.deps(w, t.box, v, path);
      const pos = w.reserve(this.size(t.box));
      this.place(w, pos, t.box, v, resolver, path);
      return pos;
    }
    const elements = asElements(v, path);
    if (elements.length !== t.tuple.length) throw new EncodeError(path, `expected a ${t.tuple.length}-tuple`);
    return t.tuple.map((element, i) => this.deps(w, element, elements[i], `${path}.${i}`));
  }

  private place(w: Writer, at: number, t: Ty, v: unknown, resolver: unknown, path: string): void {
    const view = w.view();
    if (typeof t === "string") {
      switch (t) {
        case "u8": view.setUint8(at, checkInt(v, 0, 0xff, path)); return;
        case "i8": view.setInt8(at, checkInt(v, -0x80, 0x7f, path)); return;
        case "u16": view.setUint16(at, checkInt(v, 0, 0xffff, path), true); return;
        case "i16": view.setInt16(at, checkInt(v, -0x8000, 0x7fff, path), true); return;
        case "u32": view.setUint32(at, checkInt(v, 0, 0xffffffff, path), true); return;
        case "i32": view.setInt32(at, checkInt(v, -0x80000000, 0x7fffffff, path), true); return;
        case "f32": view.setFloat32(at, checkNumber(v, path), true); return;
        case "f64": view.setFloat64(at, checkNumber(v, path), true); return;
        case "u64": view.setBigUint64(at, checkBig(v, 0n, 0xffffffffffffffffn, path), true); return;
        case "i64": view.setBigInt64(at, checkBig(v, -(1n << 63n), (1n << 63n) - 1n, path), true); return;
        case "bool":
          if (typeof v !== "boolean") throw new EncodeError(path, "expected a boolean");
          view.setUint8(at, v ? 1 : 0);
          return;
        case "string": {
          const { encoded, pos } = resolver as { encoded: Uint8Array; pos: number };
          if (pos < 0) {
            w.bytes.fill(0xff, at, at + 8);
            w.bytes.set(encoded, at);
          } else {
            const len = encoded.length;
            view.setUint32(at, 0x80 | (len & 0x3f) | ((len >>> 6) << 8), true);
            view.setInt32(at + 4, pos - at, true);
          }
          return;
        }
      }
      const def = this.def(t);
      const resolvers = resolver as unknown[];
      if (def.kind === "struct") {
        const record = v as Record<string, unknown>;
        def.fields.forEach((field, i) =>
          this.place(w, at + field.offset, field.type, record[field.name], resolvers[i], `${path}.${field.name}`));
        return;
      }
      const variant = this.variantOf(def, v, t, path);
      view.setUint8(at, variant.tag);
      const record = def.unit ? {} : (v as Record<string, unknown>);
      variant.fields.forEach((field, i) =>
        this.place(w, at + field.offset, field.type, record[fieldKey(field)], resolvers[i], `${path}.${field.name}`));
      return;
    }
    if ("vec" in t) {
      const { pos, len } = resolver as { pos: number; len: number };
      view.setInt32(at, pos - at, true);
      view.setUint32(at + 4, len, true);
      return;
    }
    if ("option" in t) {
      if (v === null || v === undefined) return;
      view.setUint8(at, 1);
      this.place(w, at + 1, t.option, v, resolver, path);
      return;
    }
    if ("box" in t) {
      view.setInt32(at, (resolver as number) - at, true);
      return;
    }
    const inner: Ty[] = "array" in t ? Array(t.len).fill(t.array) : t.tuple;
    const elements = asElements(v, path);
    const resolvers = resolver as unknown[];
    let offset = at;
    inner.forEach((element, i) => {
      this.place(w, offset, element, elements[i], resolvers[i], `${path}[${i}]`);
      offset += this.size(element);
    });
  }

  private variantOf(def: Def & { kind: "enum" }, v: unknown, name: string, path: string): VariantDef {
    const wanted = def.unit ? v : (v as { kind?: unknown } | null)?.kind;
    const variant = def.variants.find((known) => known.name === wanted);
    if (variant === undefined) throw new EncodeError(path, `${String(wanted)} is not a variant of ${name}`);
    return variant;
  }

  encode(name: string, value: unknown): Uint8Array {
    const w = new Writer();
    const resolver = this.deps(w, name, value, name);
    const at = w.reserve(this.def(name).size);
    this.place(w, at, name, value, resolver, name);
    return w.bytes.slice(0, w.len);
  }
}

class Writer {
  bytes = new Uint8Array(256);
  len = 0;

  reserve(n: number): number {
    const at = this.len;
    if (at + n > this.bytes.length) {
      const grown = new Uint8Array(Math.max(this.bytes.length * 2, at + n));
      grown.set(this.bytes.subarray(0, at));
      this.bytes = grown;
    }
    this.bytes.fill(0, at, at + n);
    this.len = at + n;
    return at;
  }

  view(): DataView {
    return new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
  }
}

function fieldKey(field: FieldDef): string {
  return /^[0-9]+$/.test(field.name) ? `_${field.name}` : field.name;
}

function asRecord(v: unknown, path: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null) throw new EncodeError(path, "expected an object");
  return v as Record<string, unknown>;
}

function asElements(v: unknown, path: string): unknown[] {
  if (v instanceof Uint8Array) return Array.from(v);
  if (Array.isArray(v)) return v;
  throw new EncodeError(path, "expected an array");
}

function checkInt(v: unknown, min: number, max: number, path: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new EncodeError(path, `expected an integer in ${min}..=${max}, got ${String(v)}`);
  }
  return v;
}

function checkNumber(v: unknown, path: string): number {
  if (typeof v !== "number") throw new EncodeError(path, "expected a number");
  return v;
}

function checkBig(v: unknown, min: bigint, max: bigint, path: string): bigint {
  if (typeof v !== "bigint" || v < min || v > max) {
    throw new EncodeError(path, `expected a bigint in ${min}..=${max}, got ${String(v)}`);
  }
  return v;
}

// ---- frames (docs/protocol.md, "Frame") ----

/** The protocol version this file speaks. */
export const PROTOCOL_VERSION = 3;
/** Bytes of the fixed header, length prefix included. */
export const FIXED_HEADER_LEN = 12;
/** Flag: a 25-byte trace context follows the fixed header. */
export const FLAG_TRACE_CONTEXT = 0x01;
/** Flag: the frame answers the request whose `seq` it carries. */
export const FLAG_REPLY = 0x02;
/** The default largest frame a server accepts, prefix included. */
export const DEFAULT_MAX_FRAME_LEN = 65536;

/** One frame: its header and its payload (not yet decoded). */
export interface Frame {
  kind: number;
  seq: number;
  reply: boolean;
  /** The W3C trace context (trace id, span id, flags), when the frame carries one. */
  trace: { traceId: Uint8Array; spanId: Uint8Array; flags: number } | null;
  payload: Uint8Array;
}

/** A frame around `payload`: the length prefix, version, flags, kind and seq. */
export function encodeFrame(kind: number, seq: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(FIXED_HEADER_LEN + payload.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, 8 + payload.length, true);
  view.setUint8(4, PROTOCOL_VERSION);
  view.setUint8(5, 0);
  view.setUint16(6, kind, true);
  view.setUint32(8, seq >>> 0, true);
  out.set(payload, FIXED_HEADER_LEN);
  return out;
}

/**
 * Cuts a byte stream into frames, checking each header as the server does. `push` bytes as
 * they arrive; `next` returns a whole frame, `null` when more bytes are needed, or throws a
 * DecodeError (then the stream is unusable: close it).
 */
export class FrameReader {
  private buffer = new Uint8Array(0);

  constructor(private readonly maxFrameLen = DEFAULT_MAX_FRAME_LEN) {}

  push(bytes: Uint8Array): void {
    const joined = new Uint8Array(this.buffer.length + bytes.length);
    joined.set(this.buffer);
    joined.set(bytes, this.buffer.length);
    this.buffer = joined;
  }

  next(): Frame | null {
    const buffer = this.buffer;
    if (buffer.length < 4) return null;
    const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
    const length = view.getUint32(0, true);
    if (length + 4 > this.maxFrameLen) {
      throw new DecodeError("frame", `frame of ${length + 4} bytes exceeds the maximum of ${this.maxFrameLen} bytes`);
    }
    if (length < 8) throw new DecodeError("frame", `frame length ${length} is shorter than its 8-byte header`);
    if (buffer.length < 5) return null;
    const version = view.getUint8(4);
    if (version !== PROTOCOL_VERSION) {
      throw new DecodeError("frame", `unsupported protocol version ${version} (this client speaks version ${PROTOCOL_VERSION})`);
    }
    if (buffer.length < 4 + length) return null;
    const flags = view.getUint8(5);
    if ((flags & ~(FLAG_TRACE_CONTEXT | FLAG_REPLY)) !== 0) {
      throw new DecodeError("frame", `reserved flag bits set: 0x${flags.toString(16).padStart(2, "0")}`);
    }
    const kind = view.getUint16(6, true);
    const seq = view.getUint32(8, true);
    let start = FIXED_HEADER_LEN;
    let trace: Frame["trace"] = null;
    if (flags & FLAG_TRACE_CONTEXT) {
      if (length < 33) throw new DecodeError("frame", `frame length ${length} is shorter than its 33-byte header`);
      trace = {
        traceId: buffer.slice(12, 28),
        spanId: buffer.slice(28, 36),
        flags: buffer[36],
      };
      start += 25;
    }
    const payload = buffer.slice(start, 4 + length);
    this.buffer = buffer.slice(4 + length);
    return { kind, seq, reply: (flags & FLAG_REPLY) !== 0, trace, payload };
  }
}

// ---- plain JSON (bigints as decimal strings, bytes as arrays of numbers), for fixtures and logs ----

function toPlainWith(codec: Codec, t: Ty, v: unknown): unknown {
  if (typeof t === "string") {
    if (t === "u64" || t === "i64") return (v as bigint).toString();
    if (t in PRIMITIVE_SIZE || t === "string") return v;
    const def = codec.def(t);
    if (def.kind === "struct") {
      const out: Record<string, unknown> = {};
      for (const field of def.fields) out[field.name] = toPlainWith(codec, field.type, (v as Record<string, unknown>)[field.name]);
      return out;
    }
    if (def.unit) return v;
    const record = v as Record<string, unknown>;
    const variant = def.variants.find((known) => known.name === record.kind)!;
    const out: Record<string, unknown> = { kind: variant.name };
    for (const field of variant.fields) out[fieldKey(field)] = toPlainWith(codec, field.type, record[fieldKey(field)]);
    return out;
  }
  if ("vec" in t || "array" in t) {
    const inner = "vec" in t ? t.vec : t.array;
    return Array.from(v as ArrayLike<unknown>, (element) => toPlainWith(codec, inner, element));
  }
  if ("option" in t) return v === null ? null : toPlainWith(codec, t.option, v);
  if ("box" in t) return toPlainWith(codec, t.box, v);
  return t.tuple.map((element, i) => toPlainWith(codec, element, (v as unknown[])[i]));
}

function fromPlainWith(codec: Codec, t: Ty, v: unknown): unknown {
  if (typeof t === "string") {
    if (t === "u64" || t === "i64") return BigInt(v as string);
    if (t in PRIMITIVE_SIZE || t === "string") return v;
    const def = codec.def(t);
    if (def.kind === "struct") {
      const out: Record<string, unknown> = {};
      for (const field of def.fields) out[field.name] = fromPlainWith(codec, field.type, (v as Record<string, unknown>)[field.name]);
      return out;
    }
    if (def.unit) return v;
    const record = v as Record<string, unknown>;
    const variant = def.variants.find((known) => known.name === record.kind)!;
    const out: Record<string, unknown> = { kind: variant.name };
    for (const field of variant.fields) out[fieldKey(field)] = fromPlainWith(codec, field.type, record[fieldKey(field)]);
    return out;
  }
  if ("vec" in t || "array" in t) {
    const inner = "vec" in t ? t.vec : t.array;
    const elements = (v as unknown[]).map((element) => fromPlainWith(codec, inner, element));
    return inner === "u8" ? Uint8Array.from(elements as number[]) : elements;
  }
  if ("option" in t) return v === null ? null : fromPlainWith(codec, t.option, v);
  if ("box" in t) return fromPlainWith(codec, t.box, v);
  return t.tuple.map((element, i) => fromPlainWith(codec, element, (v as unknown[])[i]));
}

// ---- end of the runtime ----
