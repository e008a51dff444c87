import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import {
  ProtocolError,
  RecordReader,
  crc32,
  decodeZigZagInt,
  decodeZigZagLongBig,
  defaultMethodId,
  encodeZigZagInt,
  encodeZigZagLong,
  incomingRpc,
  message,
  outgoingRpc,
  attachTo,
  checkpointMessage,
} from '../src/wire.js';
import { xxhash64 } from '../src/xxhash64.js';

// The shared protocol vectors live beside the project, not in it.
const VECTORS = fileURLToPath(new URL('../../../../shared/vectors/binding-protocol.json', import.meta.url));

function vectors(t) {
  if (!existsSync(VECTORS)) {
    if (process.env.CI) assert.fail(`the shared protocol vectors are missing: ${VECTORS}`);
    t.skip(`the shared protocol vectors are absent (${VECTORS})`);
    return null;
  }
  return JSON.parse(readFileSync(VECTORS, 'utf8'));
}

function header(committer, body, sequence) {
  const head = Buffer.alloc(24);
  head.writeInt32LE(committer, 0);
  head.writeInt32LE(24 + body.length, 4);
  head.writeBigUInt64LE(xxhash64(body), 8);
  head.writeBigInt64LE(BigInt(sequence), 16);
  return Buffer.concat([head, body]);
}

test('zig-zag varints encode and decode the shared vectors both ways', (t) => {
  const data = vectors(t);
  if (!data) return;
  for (const { value, hex } of data.varint32) {
    assert.equal(encodeZigZagInt(value).toString('hex'), hex, `int ${value}`);
    assert.deepEqual(decodeZigZagInt(Buffer.from(hex, 'hex'), 0), [value, hex.length / 2]);
  }
  for (const { hex } of data.varint64) {
    // JSON numbers above 2**53 are not exact in JavaScript: round trip through the bytes.
    const [value, next] = decodeZigZagLongBig(Buffer.from(hex, 'hex'), 0);
    assert.equal(next, hex.length / 2);
    assert.equal(encodeZigZagLong(value).toString('hex'), hex);
  }
});

test('binding messages are byte for byte the shared vectors', (t) => {
  const data = vectors(t);
  if (!data) return;
  const byName = Object.fromEntries(data.messages.map((entry) => [entry.name, entry]));
  const check = (name, bytes) => assert.equal(bytes.toString('hex'), byName[name].hex, name);
  check('rpc outgoing fork to self', outgoingRpc('', 0, 5, 1, Buffer.from('hello')));
  check('rpc outgoing async to server', outgoingRpc('server', 0, 0, 0, Buffer.alloc(0)));
  check('rpc outgoing impulse to self, method 300', outgoingRpc('', 0, 300, 2, Buffer.from([...Array(20).keys()])));
  check('rpc incoming fork, method 5', incomingRpc(0, 5, 1, Buffer.from('hello')));
  check('rpc incoming, reserved method id -1', incomingRpc(0, -1, 1, Buffer.from('{}')));
  check('attach to server', attachTo('server'));
  check('take checkpoint', message(2));
  check('checkpoint header, followed on the stream by 9 checkpoint bytes', checkpointMessage(Buffer.from('dummyckpt')));
  check('initial message', message(9, Buffer.from('hello')));
  check('take becoming-primary checkpoint', message(11));
});

test('xxHash64 gives the check bytes of the shared log records', (t) => {
  const data = vectors(t);
  if (!data) return;
  for (const record of data.log_records) {
    const bytes = Buffer.from(record.hex, 'hex');
    assert.equal(xxhash64(bytes.subarray(24)), bytes.readBigUInt64LE(8), record.name);
  }
  // Lengths around the 32-byte stripes and the 8- and 4-byte tails.
  const known = { 0: 0xef46db3751d8e999n, 1: 0xe934a84adb052768n };
  assert.equal(xxhash64(Buffer.alloc(0)), known[0]);
  assert.equal(xxhash64(Buffer.from([0])), known[1]);
});

test('method ids are the Python binding\'s: crc32 folded into 1..8000', () => {
  assert.equal(crc32(Buffer.from('123456789')), 0xcbf43926);
  assert.equal(defaultMethodId('record'), (crc32(Buffer.from('record')) % 8000) + 1);
  assert.equal(defaultMethodId('record'), 5202);
  assert.equal(defaultMethodId('record_fork'), 3247);
});

test('the record reader parses a page, a control record and a checkpoint split anywhere', () => {
  const marker = (source, length) =>
    incomingRpc(0, -2, 1, Buffer.concat([encodeZigZagLong(length), Buffer.from(source)]));
  const call = incomingRpc(0, 5, 1, Buffer.from('go'));
  const page = header(7, Buffer.concat([marker('solo', call.length), call]), 3);
  const control = header(7, message(11), -1);
  const checkpoint = Buffer.concat([header(7, message(8, encodeZigZagLong(5)), -2), Buffer.from('state')]);
  const stream = Buffer.concat([checkpoint, page, control]);
  for (let split = 0; split <= stream.length; split += 1) {
    const reader = new RecordReader();
    const events = [...reader.receive(stream.subarray(0, split)), ...reader.receive(stream.subarray(split))];
    assert.deepEqual(events.map((event) => event.kind), ['checkpoint', 'page', 'control']);
    assert.equal(events[0].data.toString(), 'state');
    assert.equal(events[1].sequence, 3);
    assert.equal(events[1].groups[0].source, 'solo');
    assert.deepEqual(events[1].groups[0].data, call);
    assert.equal(events[2].type, 11);
  }
});

test('the record reader refuses bad check bytes, bad sizes and long varints, and stays failed', () => {
  const good = header(7, message(2), -1);
  const bad = Buffer.from(good);
  bad[good.length - 1] ^= 1;
  const reader = new RecordReader();
  assert.throws(() => reader.receive(bad), /check bytes do not match/);
  assert.throws(() => reader.receive(good), ProtocolError);
  const tiny = Buffer.from(good);
  tiny.writeInt32LE(10, 4);
  assert.throws(() => new RecordReader().receive(tiny), /a record of 10 bytes/);
  assert.throws(() => decodeZigZagInt(Buffer.from('ffffffffff01', 'hex'), 0), /longer than 5/);
  assert.throws(() => decodeZigZagLongBig(Buffer.from('ffffffffffffffffffff01', 'hex'), 0), /longer than 10/);
});
