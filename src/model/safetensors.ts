// safetensors: u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__": {...}}, then raw little-endian data.
import { closeSync, openSync, readSync, fstatSync, writeSync, renameSync } from "node:fs";

export type DType = "F32" | "F16" | "BF16";

const BYTES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

export interface TensorEntry {
  dtype: string;
  shape: number[];
  dataOffsets: [number, number];
}

export interface SafetensorsHeader {
  file: string;
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
  /** absolute byte offset of the data section */
  dataStart: number;
}

export class SafetensorsError extends Error {
  constructor(file: string, problem: string, tensor?: string) {
    super(`${file}${tensor ? `: tensor "${tensor}"` : ""}: ${problem}`);
    this.name = "SafetensorsError";
  }
}

function readExactly(fd: number, length: number, position: number, file: string, what: string): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buf, done, length - done, position + done);
    if (n === 0) throw new SafetensorsError(file, `file ends before ${what} (truncated download?)`);
    done += n;
  }
  return buf;
}

function isCount(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) >= 0;
}

/** Reads and validates the header without touching tensor data. */
export function readHeader(file: string): SafetensorsHeader {
  const fd = openSync(file, "r");
  try {
    const size = fstatSync(fd).size;
    if (size < 8) throw new SafetensorsError(file, `only ${size} bytes: not a safetensors file`);
    const n = Number(readExactly(fd, 8, 0, file, "the header length").readBigUInt64LE(0));
    if (n <= 0 || n > 100 * 1024 * 1024 || 8 + n > size) {
      throw new SafetensorsError(file, `header length ${n} does not fit a ${size}-byte file: not a safetensors file, or truncated`);
    }
    let json: unknown;
    try {
      json = JSON.parse(readExactly(fd, n, 8, file, "the end of the header").toString("utf8"));
    } catch (err) {
      throw new SafetensorsError(file, `header is not valid JSON (${(err as Error).message})`);
    }
    if (!json || typeof json !== "object" || Array.isArray(json)) throw new SafetensorsError(file, "header is not a JSON object: not a safetensors file");
    const dataStart = 8 + n;
    const dataSize = size - dataStart;
    const tensors = new Map<string, TensorEntry>();
    let metadata: Record<string, string> = {};
    for (const [name, raw] of Object.entries(json)) {
      if (name === "__metadata__") {
        metadata = (raw ?? {}) as Record<string, string>;
        continue;
      }
      const e = raw as { dtype?: string; shape?: unknown[]; data_offsets?: unknown[] };
      if (!e || typeof e.dtype !== "string" || !Array.isArray(e.shape) || !Array.isArray(e.data_offsets)) {
        throw new SafetensorsError(file, "header entry lacks dtype, shape or data_offsets", name);
      }
      const bytes = BYTES[e.dtype];
      if (bytes === undefined) throw new SafetensorsError(file, `unknown dtype ${e.dtype}`, name);
      if (!e.shape.every(isCount)) throw new SafetensorsError(file, `shape ${JSON.stringify(e.shape)} is not a list of whole numbers >= 0`, name);
      if (e.data_offsets.length !== 2 || !e.data_offsets.every(isCount)) {
        throw new SafetensorsError(file, `data_offsets ${JSON.stringify(e.data_offsets)} are not two whole numbers >= 0`, name);
      }
      const shape = e.shape as number[];
      const [begin, end] = e.data_offsets as [number, number];
      const want = shape.reduce((a, b) => a * b, 1) * bytes;
      if (end - begin !== want) {
        throw new SafetensorsError(file, `shape [${shape}] ${e.dtype} needs ${want} bytes but data_offsets span ${end - begin}`, name);
      }
      if (end > dataSize) {
        throw new SafetensorsError(file, `data ends at byte ${end} but the file holds only ${dataSize} data bytes (truncated?)`, name);
      }
      tensors.set(name, { dtype: e.dtype, shape, dataOffsets: [begin, end] });
    }
    // As the reference implementation requires: tensors tile the data section exactly, in offset
    // order, so no two share bytes (one write would show through the other) and none is read
    // from a gap or from bytes past the last tensor.
    let at = 0;
    for (const [name, { dataOffsets: [begin, end] }] of [...tensors].sort((a, b) => a[1].dataOffsets[0] - b[1].dataOffsets[0] || a[1].dataOffsets[1] - b[1].dataOffsets[1])) {
      if (begin !== at) {
        throw new SafetensorsError(file, begin < at ? `data_offsets [${begin}, ${end}] overlap the previous tensor, which ends at ${at}` : `data_offsets start at ${begin}, leaving a gap after byte ${at}`, name);
      }
      at = end;
    }
    if (at !== dataSize) throw new SafetensorsError(file, `holds ${dataSize - at} bytes after the last tensor's data (not a safetensors file, or two files joined?)`);
    return { file, tensors, metadata, dataStart };
  } finally {
    closeSync(fd);
  }
}

/** BF16 is the top half of an F32; F16 needs a real conversion (subnormals included). */
function toFloat32(dtype: string, raw: Buffer, file: string, name: string): Float32Array {
  const count = raw.byteLength / (BYTES[dtype] ?? 1);
  // Copy into an aligned buffer: a Node Buffer may sit at any offset of a shared pool.
  const aligned = new Uint8Array(raw.byteLength);
  aligned.set(raw);
  if (dtype === "F32") return new Float32Array(aligned.buffer);
  const u16 = new Uint16Array(aligned.buffer);
  const out = new Float32Array(count);
  if (dtype === "BF16") {
    const u32 = new Uint32Array(out.buffer);
    for (let i = 0; i < count; i++) u32[i] = u16[i]! << 16;
    return out;
  }
  if (dtype === "F16") {
    for (let i = 0; i < count; i++) out[i] = halfToFloat(u16[i]!);
    return out;
  }
  throw new SafetensorsError(file, `dtype ${dtype} cannot be read as floating point`, name);
}

export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

/**
 * float32 values as the bytes of `dtype`, rounded to nearest even as torch's .to() rounds (BF16
 * is the top half of the F32 bits, rounded; F16 is built from the bits, subnormals, overflow to
 * infinity and NaN as IEEE 754 says).
 */
export function fromFloat32(dtype: DType, data: Float32Array): Uint8Array {
  if (dtype === "F32") return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (dtype !== "BF16" && dtype !== "F16") throw new Error(`cannot write float32 values as ${dtype}`);
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = dtype === "BF16" ? bf16Bits(bits[i]!) : halfBits(bits[i]!);
  return new Uint8Array(out.buffer);
}

function bf16Bits(f: number): number {
  if ((f & 0x7fffffff) > 0x7f800000) return (f >>> 16) | 0x40; // NaN stays a (quiet) NaN
  return (f + 0x7fff + ((f >>> 16) & 1)) >>> 16;
}

function halfBits(f: number): number {
  const sign = (f >>> 16) & 0x8000;
  const exp = (f >>> 23) & 0xff;
  const mant = f & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // infinity, NaN
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // too large: infinity
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal: zero
    // subnormal: shift the mantissa (with its implicit 1) into place, rounding to nearest even
    const m = mant | 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = m & ((1 << shift) - 1);
    let h = m >>> shift;
    if (rest > half || (rest === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++; // a carry into the exponent is still right (up to infinity)
  return sign | h;
}

/** The stored bytes of one tensor, as they are in the file (any dtype). */
export function readRawTensor(header: SafetensorsHeader, name: string, fd: number): Buffer {
  const e = header.tensors.get(name);
  if (!e) throw new SafetensorsError(header.file, "is not in this file", name);
  const [begin, end] = e.dataOffsets;
  return readExactly(fd, end - begin, header.dataStart + begin, header.file, `tensor "${name}"`);
}

/** Reads the named tensors (or all) as float32, each with its shape. */
export function readTensors(
  header: SafetensorsHeader,
  names: Iterable<string> = header.tensors.keys(),
): Map<string, { shape: number[]; data: Float32Array }> {
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  const fd = openSync(header.file, "r");
  try {
    for (const name of names) {
      const raw = readRawTensor(header, name, fd);
      const e = header.tensors.get(name)!;
      out.set(name, { shape: e.shape, data: toFloat32(e.dtype, raw, header.file, name) });
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** One tensor to write: its dtype, shape and a way to get its bytes when its turn comes. */
export interface TensorToWrite {
  /** any safetensors dtype: tensors copied from another file keep theirs */
  dtype: string;
  shape: number[];
  bytes: () => Uint8Array;
}

/**
 * The header part of a file: u64 length, then the JSON (names sorted, offsets in that order),
 * padded with spaces to 8 bytes so the data section stays aligned for readers that map it.
 */
function encodeHeader(tensors: Map<string, { dtype: string; shape: number[] }>, metadata: Record<string, string>): { head: Buffer; names: string[]; dataBytes: number } {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  const names = [...tensors.keys()].sort();
  for (const name of names) {
    const { dtype, shape } = tensors.get(name)!;
    const bytes = shape.reduce((a, b) => a * b, 1) * BYTES[dtype]!;
    header[name] = { dtype, shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = Buffer.from(JSON.stringify(header), "utf8");
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const head = Buffer.alloc(8 + json.length);
  head.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(head, 8);
  return { head, names, dataBytes: offset };
}

/** float32 tensors as entries for the writers, their length checked against their shape. */
function float32Entries(tensors: Map<string, { shape: number[]; data: Float32Array }>): Map<string, TensorToWrite> {
  const out = new Map<string, TensorToWrite>();
  for (const [name, t] of tensors) {
    const expected = t.shape.reduce((a, b) => a * b, 1);
    if (expected !== t.data.length) throw new Error(`tensor "${name}": shape [${t.shape}] needs ${expected} values, got ${t.data.length}`);
    out.set(name, { dtype: "F32", shape: t.shape, bytes: () => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength) });
  }
  return out;
}

/** Serialises float32 tensors; `metadata` lands in __metadata__ (PEFT wants {"format":"pt"}). */
export function encodeSafetensors(
  tensors: Map<string, { shape: number[]; data: Float32Array }>,
  metadata: Record<string, string> = { format: "pt" },
): Buffer {
  const entries = float32Entries(tensors);
  const { head, names, dataBytes } = encodeHeader(entries, metadata);
  const out = Buffer.alloc(head.length + dataBytes);
  head.copy(out, 0);
  let at = head.length;
  for (const name of names) {
    const d = entries.get(name)!.bytes();
    out.set(d, at);
    at += d.byteLength;
  }
  return out;
}

/**
 * Writes tensors of any dtype one at a time, each read from `bytes()` only when written, so a
 * file larger than memory (a merged model) never has to be held whole. Written via a temp file
 * and rename, so a crash never leaves a half-written file in place.
 */
export function writeSafetensorsFrom(file: string, tensors: Map<string, TensorToWrite>, metadata: Record<string, string> = { format: "pt" }): void {
  const { head, names } = encodeHeader(tensors, metadata);
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = openSync(tmp, "w");
  try {
    writeAll(fd, head);
    for (const name of names) {
      const t = tensors.get(name)!;
      const d = t.bytes();
      const want = t.shape.reduce((a, b) => a * b, 1) * BYTES[t.dtype]!;
      if (d.byteLength !== want) throw new Error(`tensor "${name}": shape [${t.shape}] ${t.dtype} needs ${want} bytes, got ${d.byteLength}`);
      writeAll(fd, d);
    }
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}

/** writeSync may write less than it was given: go on until all of it is written. */
function writeAll(fd: number, data: Uint8Array): void {
  for (let at = 0; at < data.byteLength; ) at += writeSync(fd, data, at, data.byteLength - at);
}

/** Writes float32 tensors via a temp file and rename. */
export function writeSafetensors(
  file: string,
  tensors: Map<string, { shape: number[]; data: Float32Array }>,
  metadata?: Record<string, string>,
): void {
  writeSafetensorsFrom(file, float32Entries(tensors), metadata);
}
