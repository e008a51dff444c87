import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Dispatcher } from '../src/dispatcher.js';
import { Immortal } from '../src/immortal.js';
import { RemoteCallError, BindingError, ImpulseDuringRecoveryError } from '../src/errors.js';
import { encodeArgs, encodeValue, decodeArgs } from '../src/codec.js';
import { decodeZigZagInt, decodeZigZagLong, defaultMethodId, encodeZigZagLong, incomingRpc, message } from '../src/wire.js';

// A tiny parser of what the binding sends, to check its output message by message.
function messages(data) {
  const out = [];
  let position = 0;
  while (data && position < data.length) {
    const [size, start] = decodeZigZagInt(data, position);
    const type = data[start];
    const body = data.subarray(start + 1, start + size);
    position = start + size;
    if (type === 8) {
      const [length, at] = decodeZigZagInt(body, 0);
      out.push({ type, checkpoint: JSON.parse(data.subarray(position, position + length / 1).toString()) });
      assert.equal(at, body.length);
      position += length;
      continue;
    }
    if (type !== 0) {
      out.push({ type, body });
      continue;
    }
    const [nameLength, nameAt] = decodeZigZagInt(body, 0);
    const destination = body.subarray(nameAt, nameAt + nameLength).toString();
    const reserved = body[nameAt + nameLength];
    const [methodId, kindAt] = decodeZigZagInt(body, nameAt + nameLength + 1);
    out.push({ type, destination, reserved, methodId, kind: body[kindAt], args: body.subarray(kindAt + 1) });
  }
  return out;
}

const rpcs = (data) => messages(data).filter((m) => m.type === 0);

const call = (name, ...args) => incomingRpc(0, defaultMethodId(name), 1, encodeArgs(args));
const awaited = (name, callId, ...args) =>
  incomingRpc(0, defaultMethodId(name), 0, Buffer.concat([encodeZigZagLong(callId), encodeArgs(args)]));
const result = (callId, value) =>
  incomingRpc(1, 0, 0, Buffer.concat([encodeZigZagLong(callId), Buffer.from([0]), encodeValue(value)]));
const failure = (callId, typeName, text) =>
  incomingRpc(1, 0, 0, Buffer.concat([encodeZigZagLong(callId), Buffer.from([1]), encodeArgs([typeName, text])]));
const page = (sequence, ...groups) => ({
  kind: 'page',
  sequence,
  groups: groups.map(([source, ...parts]) => ({ source, data: Buffer.concat(parts) })),
});
const control = (type) => ({ kind: 'control', type, data: Buffer.alloc(0) });

class Adder extends Immortal {
  static rpc = ['add', 'double', 'sum_remote', { name: 'explode', id: 77 }];
  static impulses = ['tick'];
  initialState() {
    return { log: [] };
  }
  async onFirstStart() {
    this.state.log.push('first');
    this.self.fork('add', 1);
  }
  add(n) {
    this.state.log.push(`add ${n}`);
  }
  double(n) {
    return n * 2;
  }
  async sum_remote(a, b) {
    this.state.log.push(`ask ${a}`);
    const x = await this.proxy('py').call('double', a);
    this.state.log.push(`got ${x}`);
    const y = await this.proxy('py').call('double', b);
    this.state.log.push(`got ${y}`);
    return x + y;
  }
  explode() {
    throw new TypeError('no');
  }
  tick(what) {
    this.state.log.push(`tick ${what}`);
  }
}

function started(lines = []) {
  const dispatcher = new Dispatcher('node', () => new Adder(), { log: (line) => lines.push(line) });
  return dispatcher;
}

test('a first start: InitialMessage and checkpoint, then the first-start call runs once', async () => {
  const d = started();
  await d.handle(control(11));
  const [initial, checkpoint] = messages(d.takeOutput());
  assert.equal(initial.type, 9);
  assert.deepEqual(checkpoint.checkpoint, { format: 1, nextCallId: 1, started: false, state: { log: [] } });
  assert.equal(d.isPrimary, true);
  await d.handle(page(0, ['node', message(9, initial.body)]));
  const [selfCall] = messages(d.takeOutput());
  assert.deepEqual([selfCall.destination, selfCall.methodId, selfCall.kind], ['', defaultMethodId('add'), 1]);
  assert.deepEqual(decodeArgs(selfCall.args), [1]);
  // The same InitialMessage again (a replay beyond the checkpoint) does not start it twice.
  await d.handle(page(1, ['node', message(9, initial.body), call('add', 1)]));
  assert.deepEqual(d.app.state.log, ['first', 'add 1']);
});

test('awaited calls resume in log order, answer with the call id, and block checkpoints meanwhile', async () => {
  const d = started();
  await d.handle(control(11));
  d.takeOutput();
  await d.handle(page(0, ['py', awaited('sum_remote', 41, 3, 4), call('add', 9)]));
  let out = messages(d.takeOutput());
  assert.deepEqual(out.map((m) => m.type), [1, 0]); // AttachTo py, then the call
  assert.equal(out[1].destination, 'py');
  assert.equal(out[1].kind, 0);
  const [callId, at] = decodeZigZagLong(out[1].args, 0);
  assert.equal(callId, 1);
  assert.deepEqual(decodeArgs(out[1].args.subarray(at)), [3]);
  assert.deepEqual(d.app.state.log, ['ask 3', 'add 9']);
  await d.handle(control(2));
  assert.deepEqual(messages(d.takeOutput()).map((m) => m.type), [2]); // "not now"
  await d.handle(page(1, ['py', result(1, 6), call('add', 10)]));
  assert.deepEqual(d.app.state.log, ['ask 3', 'add 9', 'got 6', 'add 10']);
  out = messages(d.takeOutput());
  assert.equal(out.length, 1); // the second awaited call
  await d.handle(page(2, ['py', result(2, 8)]));
  out = messages(d.takeOutput());
  assert.deepEqual([out[0].destination, out[0].reserved, out[0].methodId, out[0].kind], ['py', 1, 0, 0]);
  const [answered, statusAt] = decodeZigZagLong(out[0].args, 0);
  assert.equal(answered, 41);
  assert.equal(out[0].args[statusAt], 0);
  assert.deepEqual(decodeArgs(out[0].args.subarray(statusAt + 1)), [14]);
  await d.handle(control(2));
  const [checkpoint] = messages(d.takeOutput());
  assert.equal(checkpoint.checkpoint.nextCallId, 3);
});

test('a thrown handler answers status 1 with its type and message; a remote error rejects the await', async () => {
  const lines = [];
  const d = started(lines);
  await d.handle(control(11));
  d.takeOutput();
  await d.handle(page(0, ['py', incomingRpc(0, 77, 0, Buffer.concat([encodeZigZagLong(5), encodeArgs([])]))]));
  const [answer] = rpcs(d.takeOutput());
  const [, at] = decodeZigZagLong(answer.args, 0);
  assert.equal(answer.args[at], 1);
  assert.deepEqual(decodeArgs(answer.args.subarray(at + 1)), ['TypeError', 'no']);
  assert.match(lines.join('\n'), /handler failed on a call from py: TypeError: no/);
  await d.handle(page(1, ['py', awaited('sum_remote', 6, 1, 2)]));
  d.takeOutput();
  await d.handle(page(2, ['py', failure(1, 'ValueError', 'bad')]));
  const [reply] = rpcs(d.takeOutput());
  const [, statusAt] = decodeZigZagLong(reply.args, 0);
  assert.equal(reply.args[statusAt], 1);
  assert.deepEqual(decodeArgs(reply.args.subarray(statusAt + 1)), ['RemoteCallError', 'ValueError: bad']);
  assert.equal(d.quiescent, true);
  assert.ok(new RemoteCallError('A', 'b') instanceof Error);
});

test('results from the wrong sender or for no call are ignored; unknown methods skip the group', async () => {
  const lines = [];
  const d = started(lines);
  await d.handle(control(11));
  d.takeOutput();
  await d.handle(page(0, ['py', awaited('sum_remote', 1, 1, 2)], ['other', result(1, 99)]));
  await d.handle(page(1, ['py', result(7, 1), incomingRpc(0, 4321, 1, encodeArgs([])), call('add', 5)]));
  assert.deepEqual(d.app.state.log, ['ask 1']);
  assert.match(lines.join('\n'), /call id 1 ignored: that call went to py/);
  assert.match(lines.join('\n'), /call id 7 ignored: no such call is waiting/);
  assert.match(lines.join('\n'), /no rpc handler for method id 4321/);
  // Python's state encoding cannot be read here: an awaited call gets an error result.
  d.takeOutput();
  await d.handle(page(2, ['py', incomingRpc(0, defaultMethodId('double'), 0, Buffer.concat([encodeZigZagLong(3), Buffer.from([2, 0])]))]));
  const out = rpcs(d.takeOutput());
  const [, at] = decodeZigZagLong(out[0].args, 0);
  assert.equal(out[0].args[at], 1);
  assert.match(decodeArgs(out[0].args.subarray(at + 1))[1], /Python state encoding/);
});

test('recovery: load the checkpoint, replay to the same state and output, then become primary', async () => {
  const first = started();
  await first.handle(control(11));
  const [initial] = messages(first.takeOutput());
  const initialCheckpoint = first.checkpoint();
  const input = [
    page(0, ['node', message(9, initial.body)], ['py', call('add', 1), awaited('sum_remote', 2, 5, 6)]),
    page(1, ['py', result(1, 10)]),
  ];
  await first.handle(input[0]);
  await first.handle(control(2));
  assert.deepEqual(messages(first.takeOutput()).map((m) => m.type), [0, 1, 0, 2]);
  const checkpoint = first.checkpoint();
  const before = messages(first.takeOutput());
  await first.handle(input[1]);
  const expected = messages(first.takeOutput());
  // A new process: the checkpoint taken before any of it, then the whole log again.
  const second = started();
  await second.handle({ kind: 'checkpoint', data: initialCheckpoint });
  for (const event of input) await second.handle(event);
  assert.equal(second.replaying, true);
  assert.throws(() => second.app.self.impulse('tick', 1), ImpulseDuringRecoveryError);
  assert.deepEqual(second.app.state, first.app.state);
  const replayed = messages(second.takeOutput()).filter((m) => m.type === 0);
  assert.deepEqual(replayed.slice(-1), expected);
  await second.handle(control(11));
  assert.deepEqual(messages(second.takeOutput()).map((m) => m.type), [2]); // still awaiting
  assert.equal(second.isPrimary, true);
  assert.equal(before.length, 0);
  assert.equal(checkpoint.length > 0, true);
});

test('impulses only from outside handlers once primary; calls only inside handlers', async () => {
  let outputs = 0;
  const d = new Dispatcher('node', () => new Adder(), { log: () => {}, onOutput: () => outputs++ });
  assert.throws(() => d.app.self.fork('add', 1), BindingError);
  await d.handle(control(11));
  d.takeOutput();
  d.app.self.impulse('tick', 'a');
  assert.equal(outputs, 1);
  const [impulse] = messages(d.takeOutput());
  assert.deepEqual([impulse.destination, impulse.methodId, impulse.kind], ['', defaultMethodId('tick'), 2]);
  await d.handle(page(0, ['node', incomingRpc(0, defaultMethodId('tick'), 2, encodeArgs(['a']))]));
  assert.deepEqual(d.app.state.log, ['tick a']);
  assert.throws(() => d.app.proxy('x').impulse('tick'), BindingError);
});

test('method tables refuse collisions and bad ids', () => {
  class Clash extends Immortal {
    static rpc = ['a', { name: 'b', id: defaultMethodId('a') }];
    a() {}
    b() {}
  }
  assert.throws(() => new Dispatcher('n', () => new Clash()), /share method id/);
  class Missing extends Immortal {
    static rpc = ['nothing'];
  }
  assert.throws(() => new Dispatcher('n', () => new Missing()), /not a method/);
});

test('a loaded checkpoint restores the call counter: new calls never reuse an id', async () => {
  const first = started();
  await first.handle(control(11));
  first.takeOutput();
  await first.handle(page(0, ['py', awaited('sum_remote', 1, 1, 2)]));
  await first.handle(page(1, ['py', result(1, 2)]));
  await first.handle(page(2, ['py', result(2, 4)]));
  first.takeOutput();
  const second = started();
  await second.handle({ kind: 'checkpoint', data: first.checkpoint() });
  assert.deepEqual(second.app.state, first.app.state);
  await second.handle(page(3, ['py', awaited('sum_remote', 2, 1, 2)]));
  const [next] = rpcs(second.takeOutput());
  assert.equal(decodeZigZagLong(next.args, 0)[0], 3);
  assert.throws(() => second.loadCheckpoint(Buffer.from('{"format": 9}')), /not this binding's/);
});
