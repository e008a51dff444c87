// xxHash64 (seed 0 by default), the check bytes of a log record's body. BigInt
// arithmetic: exact and short; a few microseconds per 32 bytes, which a binding's
// loopback stream of log pages affords.

const MASK = (1n << 64n) - 1n;
const P1 = 11400714785074694791n;
const P2 = 14029467366897019727n;
const P3 = 1609587929392839161n;
const P4 = 9650029242287828579n;
const P5 = 2870177450012600261n;

const rotl = (value, bits) => ((value << BigInt(bits)) | (value >> BigInt(64 - bits))) & MASK;

function round(accumulator, lane) {
  accumulator = (accumulator + lane * P2) & MASK;
  return (rotl(accumulator, 31) * P1) & MASK;
}

function merge(accumulator, value) {
  accumulator ^= round(0n, value);
  return (accumulator * P1 + P4) & MASK;
}

/** @param {Buffer} data @param {bigint} [seed] @returns {bigint} */
export function xxhash64(data, seed = 0n) {
  const length = data.length;
  let position = 0;
  let hash;
  if (length >= 32) {
    let v1 = (seed + P1 + P2) & MASK;
    let v2 = (seed + P2) & MASK;
    let v3 = seed;
    let v4 = (seed - P1) & MASK;
    while (position + 32 <= length) {
      v1 = round(v1, data.readBigUInt64LE(position));
      v2 = round(v2, data.readBigUInt64LE(position + 8));
      v3 = round(v3, data.readBigUInt64LE(position + 16));
      v4 = round(v4, data.readBigUInt64LE(position + 24));
      position += 32;
    }
    hash = (rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)) & MASK;
    hash = merge(hash, v1);
    hash = merge(hash, v2);
    hash = merge(hash, v3);
    hash = merge(hash, v4);
  } else {
    hash = (seed + P5) & MASK;
  }
  hash = (hash + BigInt(length)) & MASK;
  while (position + 8 <= length) {
    hash ^= round(0n, data.readBigUInt64LE(position));
    hash = (rotl(hash, 27) * P1 + P4) & MASK;
    position += 8;
  }
  if (position + 4 <= length) {
    hash ^= (BigInt(data.readUInt32LE(position)) * P1) & MASK;
    hash = (rotl(hash, 23) * P2 + P3) & MASK;
    position += 4;
  }
  while (position < length) {
    hash ^= (BigInt(data[position]) * P5) & MASK;
    hash = (rotl(hash, 11) * P1) & MASK;
    position += 1;
  }
  hash ^= hash >> 33n;
  hash = (hash * P2) & MASK;
  hash ^= hash >> 29n;
  hash = (hash * P3) & MASK;
  hash ^= hash >> 32n;
  return hash;
}
