// Deterministic dispatch: log records in, handlers one at a time in log order, bytes out.
//
// No sockets here: `handle(event)` takes what `RecordReader` parsed, and `takeOutput()`
// gives the bytes to send to the coordinator (run.js does the IO).
//
// Awaited calls and determinism. An async handler runs until it awaits; if it awaits a
// call to an immortal, it stays suspended while later messages run, and resumes when the
// result is dispatched from the log. JavaScript resumes it in a microtask, so after every
// message that started an async handler or delivered a result, the dispatcher waits until
// the microtask queue is empty (a `setImmediate` turn) before the next message: each
// continuation runs to its next await at exactly that point of the log order, on every
// replay alike.
//
// Checkpoints: suspended handlers cannot be serialized, so a checkpoint is only taken when
// no handler is suspended and no call awaits its result; otherwise the answer to
// TakeCheckpoint is TakeCheckpoint ("not now"), and the coordinator asks again after the
// next page. The checkpoint is JSON: {"nextCallId", "started", "state"}.

import { decodeArgs, encodeArgs, encodeValue, decodeValue, CodecError } from './codec.js';
import { BindingError, ImpulseDuringRecoveryError, RemoteCallError } from './errors.js';
import { METHOD_ID_FIRST_START, methodTable } from './immortal.js';
import {
  KIND_ASYNC,
  KIND_FORK,
  KIND_IMPULSE,
  RESERVED_CALL,
  RESERVED_RESULT,
  TYPE_BECOMING_PRIMARY,
  TYPE_INITIAL_MESSAGE,
  TYPE_PING,
  TYPE_PING_RETURN,
  TYPE_RPC,
  TYPE_TAKE_BECOMING_PRIMARY_CHECKPOINT,
  TYPE_TAKE_CHECKPOINT,
  ProtocolError,
  attachTo,
  checkpointMessage,
  decodeZigZagInt,
  decodeZigZagLong,
  encodeZigZagLong,
  incomingRpc,
  message,
  outgoingRpc,
  parseIncomingRpc,
} from './wire.js';

const CHECKPOINT_FORMAT = 1;

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

function isThenable(value) {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof value.then === 'function';
}

export class Dispatcher {
  /**
   * @param {string} instance this immortal's registered name
   * @param {() => import('./immortal.js').Immortal} appFactory a fresh application object
   * @param {{log?: (line: string) => void, onOutput?: () => void}} [options]
   */
  constructor(instance, appFactory, options = {}) {
    this.instance = instance;
    this.appFactory = appFactory;
    this.log = options.log ?? ((line) => console.log(line));
    /** Called when output appears outside a record's handling (an impulse). */
    this.onOutput = options.onOutput ?? (() => {});
    /** @type {Buffer[]} */
    this.output = [];
    this.attached = new Set();
    /** @type {Map<number, {destination: string, resolve: Function, reject: Function}>} */
    this.pending = new Map();
    this.running = 0; // async handlers started and not yet settled
    this.nextCallId = 1;
    this.started = false;
    this.initialSent = false;
    this.isPrimary = false;
    this.replaying = true;
    this.inHandler = false;
    this.handlerErrors = 0;
    this.bind(appFactory());
  }

  bind(app) {
    this.app = app;
    app.dispatcher = this;
    this.handlers = methodTable(/** @type {any} */ (app.constructor));
  }

  get quiescent() {
    return this.pending.size === 0 && this.running === 0;
  }

  /** The bytes to send to the coordinator since the last call. */
  takeOutput() {
    if (this.output.length === 0) return null;
    const data = Buffer.concat(this.output);
    this.output = [];
    return data;
  }

  // -- what handlers call -----------------------------------------------------------

  #requireHandler(what) {
    if (!this.inHandler) {
      throw new BindingError(
        `${what} outside a handler: only impulses may be sent from timers or hooks ` +
          '(they are the logged entry point for outside input)',
      );
    }
  }

  #send(destination, reserved, methodId, kind, args) {
    if (destination !== this.instance && !this.attached.has(destination)) {
      this.attached.add(destination);
      this.output.push(attachTo(destination));
    }
    const name = destination === this.instance ? '' : destination;
    this.output.push(outgoingRpc(name, reserved, methodId, kind, args));
  }

  fork(destination, methodId, args) {
    this.#requireHandler('fork call');
    this.#send(destination, RESERVED_CALL, methodId, KIND_FORK, encodeArgs(args));
  }

  callAsync(destination, methodId, args) {
    this.#requireHandler('awaited call');
    const encoded = encodeArgs(args);
    const callId = this.nextCallId++;
    this.#send(destination, RESERVED_CALL, methodId, KIND_ASYNC, Buffer.concat([encodeZigZagLong(callId), encoded]));
    const promise = new Promise((resolve, reject) => {
      this.pending.set(callId, { destination, resolve, reject });
    });
    promise.catch(() => {}); // a call nobody awaits must not end the process when it fails
    return promise;
  }

  impulse(destination, methodId, args) {
    if (destination !== this.instance) {
      throw new BindingError('impulses go to the immortal itself (this.self); fork from the impulse handler');
    }
    if (this.inHandler) throw new BindingError('impulses come from outside handlers; inside a handler use fork');
    if (!this.isPrimary || this.replaying) {
      throw new ImpulseDuringRecoveryError(`impulse refused: ${this.instance} is recovering, not yet primary`);
    }
    this.#send(destination, RESERVED_CALL, methodId, KIND_IMPULSE, encodeArgs(args));
    this.onOutput();
  }

  #sendResult(reply, value, error) {
    let status = 0;
    let encoded;
    if (error === null) {
      try {
        encoded = encodeValue(value);
      } catch (encodeError) {
        error = encodeError;
      }
    }
    if (error !== null) {
      status = 1;
      encoded = encodeArgs([error?.name ?? 'Error', String(error?.message ?? error)]);
    }
    const body = Buffer.concat([encodeZigZagLong(reply.callId), Buffer.from([status]), encoded]);
    this.#send(reply.destination, RESERVED_RESULT, 0, KIND_ASYNC, body);
  }

  // -- what the coordinator sends ---------------------------------------------------

  /** @param {import('./wire.js').RecordEvent} event */
  async handle(event) {
    if (event.kind === 'page') {
      for (const group of event.groups) await this.#deliverGroup(group.source, group.data);
    } else if (event.kind === 'checkpoint') {
      this.loadCheckpoint(event.data);
    } else if (event.kind === 'control') {
      await this.#control(event.type, event.data);
    }
  }

  async #deliverGroup(source, data) {
    let position = 0;
    while (position < data.length) {
      let size;
      let start;
      try {
        [size, start] = decodeZigZagInt(data, position);
      } catch (error) {
        this.#malformed(source, position, error.message);
        return;
      }
      const end = start + size;
      if (size < 1 || end > data.length) {
        this.#malformed(source, position, 'a message overruns its group');
        return;
      }
      const type = data[start];
      if (type === TYPE_RPC) {
        if (!(await this.#dispatchRpc(source, data.subarray(start, end), position))) return;
      } else if (type === TYPE_INITIAL_MESSAGE) {
        if (source === this.instance && !this.started) await this.#run(source, null, () => this.#firstStart());
      } else {
        this.#malformed(source, position, `message type ${type} in a page`);
        return;
      }
      position = end;
    }
  }

  #malformed(source, position, reason) {
    // Logged input: replay meets it again and skips it again, deterministically.
    this.log(`${this.instance}: skipping the rest of a logged group from ${source} at byte ${position}: ${reason}`);
  }

  /** One logged RPC; false if the rest of its group must be skipped. */
  async #dispatchRpc(source, data, position) {
    let rpc;
    try {
      rpc = parseIncomingRpc(data);
    } catch (error) {
      this.#malformed(source, position, error.message);
      return false;
    }
    if (rpc.reserved === RESERVED_RESULT) {
      if (this.#dispatchResult(source, rpc.args)) await this.#drain();
      return true;
    }
    if (rpc.methodId === METHOD_ID_FIRST_START) {
      if (source === this.instance && !this.started) await this.#run(source, null, () => this.#firstStart());
      return true;
    }
    const info = this.handlers.get(rpc.methodId);
    if (info === undefined || info.isImpulse !== (rpc.kind === KIND_IMPULSE)) {
      this.#malformed(source, position, `no ${rpc.kind === KIND_IMPULSE ? 'impulse' : 'rpc'} handler for method id ${rpc.methodId}`);
      return false;
    }
    let reply = null;
    let argsData = rpc.args;
    if (rpc.kind === KIND_ASYNC) {
      let callId;
      let at;
      try {
        [callId, at] = decodeZigZagLong(rpc.args, 0);
      } catch (error) {
        this.#malformed(source, position, `an awaited call without its call id: ${error.message}`);
        return false;
      }
      reply = { destination: source, callId };
      argsData = rpc.args.subarray(at);
    }
    let args;
    try {
      args = decodeArgs(argsData);
    } catch (error) {
      if (!(error instanceof CodecError)) throw error;
      if (reply) this.#sendResult(reply, null, error);
      else this.#malformed(source, position, error.message);
      return true;
    }
    const method = this.app[info.name];
    await this.#run(source, reply, () => method.apply(this.app, args));
    return true;
  }

  /** Run a handler; a promise it returns is followed until it settles. */
  async #run(source, reply, invoke) {
    this.inHandler = true;
    try {
      let result;
      try {
        result = invoke();
      } catch (error) {
        this.#handlerFailed(source, error);
        if (reply) this.#sendResult(reply, null, error);
        return;
      }
      if (!isThenable(result)) {
        if (reply) this.#sendResult(reply, result, null);
        return;
      }
      this.running++;
      Promise.resolve(result).then(
        (value) => {
          this.running--;
          if (reply) this.#sendResult(reply, value, null);
        },
        (error) => {
          this.running--;
          this.#handlerFailed(source, error);
          if (reply) this.#sendResult(reply, null, error);
        },
      );
      await this.#drain();
    } finally {
      this.inHandler = false;
    }
  }

  /** Let every continuation that is ready run now, before the next logged message. */
  async #drain() {
    const was = this.inHandler;
    this.inHandler = true;
    try {
      await nextTurn();
    } finally {
      this.inHandler = was;
    }
  }

  #handlerFailed(source, error) {
    this.handlerErrors++;
    this.log(`${this.instance}: handler failed on a call from ${source}: ${error?.stack ?? error}`);
  }

  /** A logged result: resolve its call (true) or log why it is ignored (false). */
  #dispatchResult(source, data) {
    let callId;
    let at;
    try {
      [callId, at] = decodeZigZagLong(data, 0);
    } catch (error) {
      this.log(`${this.instance}: a result from ${source} without its call id: ${error.message}`);
      return false;
    }
    const pending = this.pending.get(callId);
    if (pending === undefined || pending.destination !== source) {
      const why = pending === undefined ? 'no such call is waiting' : `that call went to ${pending.destination}`;
      this.log(`${this.instance}: result from ${source} for call id ${callId} ignored: ${why}`);
      return false;
    }
    this.pending.delete(callId);
    const status = data[at];
    try {
      if (status === 0) {
        pending.resolve(decodeValue(data.subarray(at + 1)));
      } else {
        const [typeName, text] = decodeArgs(data.subarray(at + 1));
        pending.reject(new RemoteCallError(String(typeName), String(text)));
      }
    } catch (error) {
      pending.reject(new RemoteCallError(error?.name ?? 'Error', `undecodable result: ${error?.message ?? error}`));
    }
    return true;
  }

  async #firstStart() {
    this.started = true;
    await this.app.onFirstStart();
  }

  async #control(type, data) {
    if (type === TYPE_TAKE_BECOMING_PRIMARY_CHECKPOINT) {
      if (!this.started && !this.initialSent) {
        this.initialSent = true;
        this.output.push(message(TYPE_INITIAL_MESSAGE, this.firstStartMessage()));
      }
      this.#checkpointOrRefuse();
      this.#becomePrimary();
    } else if (type === TYPE_TAKE_CHECKPOINT) {
      this.#checkpointOrRefuse();
    } else if (type === TYPE_BECOMING_PRIMARY) {
      this.#becomePrimary();
    } else if (type === TYPE_PING) {
      this.output.push(message(TYPE_PING_RETURN, data));
    } else if (type !== TYPE_PING_RETURN) {
      throw new ProtocolError(`control message type ${type} is not served by this binding (no live upgrade)`);
    }
  }

  /** The InitialMessage: a complete first-start RPC, as the Python binding sends. */
  firstStartMessage() {
    return incomingRpc(RESERVED_CALL, METHOD_ID_FIRST_START, KIND_FORK, encodeArgs([]));
  }

  #checkpointOrRefuse() {
    if (!this.quiescent) {
      this.output.push(message(TYPE_TAKE_CHECKPOINT));
      return;
    }
    this.output.push(checkpointMessage(this.checkpoint()));
  }

  /** The checkpoint bytes: this binding's counters and the application's state, as JSON. */
  checkpoint() {
    const document = { format: CHECKPOINT_FORMAT, nextCallId: this.nextCallId, started: this.started, state: this.app.state };
    return Buffer.from(JSON.stringify(document), 'utf8');
  }

  loadCheckpoint(data) {
    let document;
    try {
      document = JSON.parse(data.toString('utf8'));
    } catch (error) {
      throw new ProtocolError(`a checkpoint of ${data.length} bytes is not this binding's JSON: ${error.message}`);
    }
    if (document?.format !== CHECKPOINT_FORMAT || !Number.isInteger(document.nextCallId)) {
      throw new ProtocolError(`a checkpoint of ${data.length} bytes is not this binding's (format ${document?.format})`);
    }
    const app = this.appFactory();
    app.state = document.state;
    this.bind(app);
    this.nextCallId = document.nextCallId;
    this.started = Boolean(document.started);
    this.log(`${this.instance}: checkpoint loaded (${data.length} bytes)`);
  }

  #becomePrimary() {
    if (this.isPrimary) return;
    this.replaying = false;
    this.isPrimary = true;
    this.log(`${this.instance}: primary`);
    try {
      const result = this.app.onBecomePrimary();
      if (isThenable(result)) Promise.resolve(result).catch((error) => this.log(`${this.instance}: onBecomePrimary failed: ${error?.stack ?? error}`));
    } catch (error) {
      this.log(`${this.instance}: onBecomePrimary failed: ${error?.stack ?? error}`);
    }
  }
}
