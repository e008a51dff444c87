// The bytes of the binding protocol (docs/bindings.md), with no sockets in them.
//
// Encodings: ZigZagInt / ZigZagLong are zig-zag then a base-128 little-endian varint
// (Protocol Buffers); sizes too. Every message is `size (ZigZagInt: type + data)`,
// `type (1 byte)`, `data`. The coordinator sends log records: a 24-byte header
// (committer id IntFixed, record size IntFixed including the header, xxHash64 of the body
// LongFixed, sequence id LongFixed: a log page >= 0, -1 made up, -2 the checkpoint record)
// and messages back to back. The checkpoint record's raw bytes follow it on the stream.
//
// `RecordReader` turns the coordinator's stream into events (h11's way: bytes in,
// events out, one error type for anything malformed, and a reader is useless after it).

import { xxhash64 } from './xxhash64.js';

export const TYPE_RPC = 0;
export const TYPE_ATTACH_TO = 1;
export const TYPE_TAKE_CHECKPOINT = 2;
export const TYPE_RPC_BATCH = 5;
export const TYPE_PING = 6;
export const TYPE_PING_RETURN = 7;
export const TYPE_CHECKPOINT = 8;
export const TYPE_INITIAL_MESSAGE = 9;
export const TYPE_UPGRADE_TAKE_CHECKPOINT = 10;
export const TYPE_TAKE_BECOMING_PRIMARY_CHECKPOINT = 11;
export const TYPE_UPGRADE_SERVICE = 12;
export const TYPE_BECOMING_PRIMARY = 15;

export const KIND_ASYNC = 0;
export const KIND_FORK = 1;
export const KIND_IMPULSE = 2;
export const RESERVED_CALL = 0;
export const RESERVED_RESULT = 1;

/** The system method id of a source marker in a page record (docs/bindings.md). */
export const METHOD_ID_SOURCE_MARKER = -2;

export const RECORD_HEADER_BYTES = 24;
export const SEQUENCE_MADE_UP = -1;
export const SEQUENCE_CHECKPOINT = -2;

/** Limits: a record (a log page) and a checkpoint this binding accepts. */
export const RECORD_BYTES_MAX = 64 * 1024 * 1024;
export const CHECKPOINT_BYTES_MAX = 1024 * 1024 * 1024;
const VARINT32_BYTES_MAX = 5;
const VARINT64_BYTES_MAX = 10;

/** Anything the coordinator sent that is not the protocol. */
export class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/** Thrown by a decoder that ran out of bytes (a stream reader waits for more). */
export class Incomplete extends Error {
  constructor() {
    super('incomplete varint');
    this.name = 'Incomplete';
  }
}

// -- varints --------------------------------------------------------------------------

/** ZigZagInt: a 32-bit signed integer. @param {number} value @returns {Buffer} */
export function encodeZigZagInt(value) {
  if (!Number.isInteger(value) || value < -0x80000000 || value > 0x7fffffff) {
    throw new RangeError(`not a 32-bit integer: ${value}`);
  }
  let n = ((value << 1) ^ (value >> 31)) >>> 0;
  const bytes = [];
  while (n >= 0x80) {
    bytes.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  bytes.push(n);
  return Buffer.from(bytes);
}

/**
 * Decode a ZigZagInt at `position`.
 * @param {Uint8Array} data @param {number} position
 * @returns {[number, number]} the value and the position after it
 */
export function decodeZigZagInt(data, position) {
  let n = 0;
  for (let index = 0; index < VARINT32_BYTES_MAX; index++) {
    if (position + index >= data.length) throw new Incomplete();
    const byte = data[position + index];
    n += (byte & 0x7f) * 2 ** (7 * index);
    if (byte < 0x80) {
      if (n > 0xffffffff) throw new ProtocolError('ZigZagInt out of 32-bit range');
      const value = n % 2 === 0 ? n / 2 : -(n + 1) / 2;
      return [value, position + index + 1];
    }
  }
  throw new ProtocolError(`varint longer than ${VARINT32_BYTES_MAX} bytes (ZigZagInt)`);
}

/** ZigZagLong. @param {number | bigint} value @returns {Buffer} */
export function encodeZigZagLong(value) {
  const big = BigInt(value);
  if (big < -(1n << 63n) || big >= 1n << 63n) throw new RangeError(`not a 64-bit integer: ${value}`);
  let n = big >= 0n ? big << 1n : ((-big) << 1n) - 1n;
  const bytes = [];
  while (n >= 0x80n) {
    bytes.push(Number(n & 0x7fn) | 0x80);
    n >>= 7n;
  }
  bytes.push(Number(n));
  return Buffer.from(bytes);
}

/**
 * Decode a ZigZagLong at `position` as a bigint.
 * @param {Uint8Array} data @param {number} position @returns {[bigint, number]}
 */
export function decodeZigZagLongBig(data, position) {
  let n = 0n;
  for (let index = 0; index < VARINT64_BYTES_MAX; index++) {
    if (position + index >= data.length) throw new Incomplete();
    const byte = data[position + index];
    n |= BigInt(byte & 0x7f) << BigInt(7 * index);
    if (byte < 0x80) {
      if (n >= 1n << 64n) throw new ProtocolError('ZigZagLong out of 64-bit range');
      const value = (n & 1n) === 0n ? n >> 1n : -((n + 1n) >> 1n);
      return [value, position + index + 1];
    }
  }
  throw new ProtocolError(`varint longer than ${VARINT64_BYTES_MAX} bytes (ZigZagLong)`);
}

/**
 * Decode a ZigZagLong that must fit a JavaScript number exactly (sizes, call ids).
 * @param {Uint8Array} data @param {number} position @returns {[number, number]}
 */
export function decodeZigZagLong(data, position) {
  const [value, next] = decodeZigZagLongBig(data, position);
  if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new ProtocolError(`ZigZagLong ${value} does not fit a JavaScript number exactly`);
  }
  return [Number(value), next];
}

// -- method ids -------------------------------------------------------------------------

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let byte = 0; byte < 256; byte++) {
    let c = byte;
    for (let bit = 0; bit < 8; bit++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[byte] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (the zlib one). @param {Uint8Array} data @returns {number} */
export function crc32(data) {
  let c = 0xffffffff;
  for (const byte of data) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Method ids are folded into 1..8000, as the Python binding does. */
export const METHOD_ID_MAX = 8000;
export const METHOD_ID_EXPLICIT_MAX = 2 ** 30;

/** The method id the Python binding gives a method called `name` without an explicit id. */
export function defaultMethodId(name) {
  return (crc32(Buffer.from(name, 'utf8')) % METHOD_ID_MAX) + 1;
}

// -- messages the binding sends -----------------------------------------------------------

/** One message: size, type, data. @param {number} type @param {Uint8Array[]} parts */
export function message(type, ...parts) {
  let size = 1;
  for (const part of parts) size += part.length;
  return Buffer.concat([encodeZigZagInt(size), Buffer.from([type]), ...parts]);
}

/**
 * An outgoing RPC (type 0): to `destination` ('' = self), then the incoming-RPC fields.
 * @param {string} destination @param {number} reserved @param {number} methodId
 * @param {number} kind @param {Uint8Array} args
 */
export function outgoingRpc(destination, reserved, methodId, kind, args) {
  const name = Buffer.from(destination, 'utf8');
  return message(
    TYPE_RPC,
    encodeZigZagInt(name.length),
    name,
    Buffer.from([reserved]),
    encodeZigZagInt(methodId),
    Buffer.from([kind]),
    args,
  );
}

/** An incoming RPC as the coordinator logs it (no destination). */
export function incomingRpc(reserved, methodId, kind, args) {
  return message(
    TYPE_RPC,
    Buffer.from([reserved]),
    encodeZigZagInt(methodId),
    Buffer.from([kind]),
    args,
  );
}

/** A Checkpoint message; its bytes follow it on the stream (outside the message). */
export function checkpointMessage(state) {
  return Buffer.concat([message(TYPE_CHECKPOINT, encodeZigZagLong(state.length)), state]);
}

export function attachTo(destination) {
  return message(TYPE_ATTACH_TO, Buffer.from(destination, 'utf8'));
}

// -- what the coordinator sends ----------------------------------------------------------

/**
 * @typedef {{kind: 'page', sequence: number, groups: {source: string, data: Buffer}[]}} PageEvent
 * @typedef {{kind: 'checkpoint', data: Buffer}} CheckpointEvent
 * @typedef {{kind: 'control', type: number, data: Buffer}} ControlEvent
 * @typedef {PageEvent | CheckpointEvent | ControlEvent} RecordEvent
 */

/**
 * Parse one incoming RPC message's fields from `data` (the message's type + data).
 * @param {Buffer} data starting at the type byte, ending at the message's end
 */
export function parseIncomingRpc(data) {
  if (data.length < 4 || data[0] !== TYPE_RPC) throw new ProtocolError('not an incoming RPC');
  const reserved = data[1];
  const [methodId, kindAt] = decodeZigZagInt(data, 2);
  if (kindAt >= data.length) throw new ProtocolError('an incoming RPC without its kind byte');
  return { reserved, methodId, kind: data[kindAt], args: data.subarray(kindAt + 1) };
}

/**
 * Split a page record's body into groups by their source markers.
 * @param {Buffer} body @returns {{source: string, data: Buffer}[]}
 */
export function pageGroups(body) {
  const groups = [];
  let position = 0;
  while (position < body.length) {
    const [size, start] = decodeZigZagInt(body, position);
    const end = start + size;
    if (size < 1 || end > body.length) throw new ProtocolError(`a page message overruns its record at byte ${position}`);
    const marker = parseIncomingRpc(body.subarray(start, end));
    if (marker.methodId !== METHOD_ID_SOURCE_MARKER) {
      throw new ProtocolError(`a page group at byte ${position} does not start with a source marker`);
    }
    const [length, nameAt] = decodeZigZagLong(marker.args, 0);
    const source = marker.args.subarray(nameAt).toString('utf8');
    if (length < 0 || end + length > body.length) {
      throw new ProtocolError(`the group from ${source} overruns its record`);
    }
    groups.push({ source, data: body.subarray(end, end + length) });
    position = end + length;
  }
  return groups;
}

export class RecordReader {
  /** @param {{verifyChecks?: boolean, recordBytesMax?: number}} [options] */
  constructor(options = {}) {
    this.verifyChecks = options.verifyChecks ?? true;
    this.recordBytesMax = options.recordBytesMax ?? RECORD_BYTES_MAX;
    /** @type {Buffer[]} */
    this.chunks = [];
    this.buffered = 0;
    this.committerId = null;
    this.checkpointRemaining = -1; // bytes of a checkpoint still to come after its record
    this.failed = null;
  }

  /** Feed bytes; the complete events they finish. @param {Buffer} data @returns {RecordEvent[]} */
  receive(data) {
    if (this.failed) throw new ProtocolError(`the reader failed before: ${this.failed}`);
    if (data.length) {
      this.chunks.push(data);
      this.buffered += data.length;
    }
    const events = [];
    try {
      for (;;) {
        const event = this.next();
        if (event === null) break;
        events.push(event);
      }
    } catch (error) {
      this.failed = String(error.message ?? error);
      throw error;
    }
    return events;
  }

  /** The first `count` buffered bytes as one Buffer, or null if fewer are buffered. */
  peek(count) {
    if (this.buffered < count) return null;
    if (this.chunks[0].length < count) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0].subarray(0, count);
  }

  take(count) {
    const head = this.peek(count);
    if (head === null) return null;
    const first = this.chunks[0];
    if (first.length === count) this.chunks.shift();
    else this.chunks[0] = first.subarray(count);
    this.buffered -= count;
    return head;
  }

  next() {
    if (this.checkpointRemaining >= 0) {
      const data = this.take(this.checkpointRemaining);
      if (data === null) return null;
      this.checkpointRemaining = -1;
      return { kind: 'checkpoint', data: Buffer.from(data) };
    }
    const header = this.peek(RECORD_HEADER_BYTES);
    if (header === null) return null;
    const committer = header.readInt32LE(0);
    const size = header.readInt32LE(4);
    if (size < RECORD_HEADER_BYTES || size > this.recordBytesMax) {
      throw new ProtocolError(`a record of ${size} bytes (limits ${RECORD_HEADER_BYTES}..${this.recordBytesMax})`);
    }
    if (this.committerId !== null && committer !== this.committerId) {
      throw new ProtocolError(`committer id changed from ${this.committerId} to ${committer}`);
    }
    const record = this.take(size);
    if (record === null) return null;
    this.committerId = committer;
    const check = record.readBigUInt64LE(8);
    const sequence = Number(record.readBigInt64LE(16));
    const body = Buffer.from(record.subarray(RECORD_HEADER_BYTES));
    if (this.verifyChecks && xxhash64(body) !== check) {
      throw new ProtocolError(`record ${sequence}: its check bytes do not match its body`);
    }
    if (sequence >= 0) return { kind: 'page', sequence, groups: pageGroups(body) };
    const [messageSize, start] = decodeZigZagInt(body, 0);
    if (messageSize < 1 || start + messageSize !== body.length) {
      throw new ProtocolError(`record ${sequence} does not hold exactly one message`);
    }
    const type = body[start];
    const data = body.subarray(start + 1);
    if (sequence === SEQUENCE_CHECKPOINT) {
      if (type !== TYPE_CHECKPOINT) throw new ProtocolError(`the checkpoint record holds type ${type}`);
      const [length] = decodeZigZagLong(data, 0);
      if (length < 0 || length > CHECKPOINT_BYTES_MAX) throw new ProtocolError(`a checkpoint of ${length} bytes`);
      this.checkpointRemaining = length;
      return this.next();
    }
    if (sequence !== SEQUENCE_MADE_UP) throw new ProtocolError(`record sequence id ${sequence}`);
    return { kind: 'control', type, data };
  }
}
