// What the application sees: the `Immortal` base class and proxies to other immortals.
//
// An immortal is a class whose `state` (a JSON value) is everything it knows: the binding
// checkpoints it as JSON and replays logged calls on top of it after a crash. Its handlers
// are the methods named in `static rpc` (callable by any immortal) and `static impulses`
// (input from the outside world, sent only by the immortal itself once it is primary):
//
//   class Counter extends Immortal {
//     static rpc = ['add', { name: 'total', id: 12 }];
//     initialState() { return { total: 0 }; }
//     add(n) { this.state.total += n; }
//     total() { return this.state.total; }
//   }
//
// Handlers must be deterministic: they may read `this.state` and their arguments, change
// the state, call other immortals, and return a value. An async handler may await only
// calls to immortals (`await this.proxy('server').call('record', n)`): it resumes exactly
// where the result is logged, on every replay alike. Timers, I/O and clocks belong in
// `onBecomePrimary` (not logged), which brings their input in as impulses.

import { BindingError } from './errors.js';
import { METHOD_ID_EXPLICIT_MAX, defaultMethodId } from './wire.js';

/** Method id of the first-start call (as the Python binding). */
export const METHOD_ID_FIRST_START = -1;

/**
 * @typedef {{name: string, methodId: number, isImpulse: boolean}} MethodInfo
 */

function methodEntries(declared, isImpulse, cls) {
  const entries = [];
  for (const item of declared ?? []) {
    const name = typeof item === 'string' ? item : item.name;
    const methodId = typeof item === 'string' || item.id === undefined ? defaultMethodId(name) : item.id;
    if (typeof cls.prototype[name] !== 'function') {
      throw new BindingError(`${cls.name}: ${name} is declared as a handler but is not a method`);
    }
    if (!Number.isInteger(methodId) || methodId < 1 || methodId > METHOD_ID_EXPLICIT_MAX) {
      throw new BindingError(`${cls.name}: method id of ${name} must be in 1..2**30, not ${methodId}`);
    }
    entries.push({ name, methodId, isImpulse });
  }
  return entries;
}

const TABLES = new WeakMap();

/**
 * The handlers of an immortal class by method id (collisions are refused).
 * @param {typeof Immortal} cls @returns {Map<number, MethodInfo>}
 */
export function methodTable(cls) {
  let table = TABLES.get(cls);
  if (table) return table;
  table = new Map();
  const all = [...methodEntries(cls.rpc, false, cls), ...methodEntries(cls.impulses, true, cls)];
  for (const info of all) {
    const other = table.get(info.methodId);
    if (other && other.name !== info.name) {
      throw new BindingError(
        `${cls.name}: methods ${other.name} and ${info.name} share method id ${info.methodId}; ` +
          'give one of them an explicit id ({ name, id })',
      );
    }
    table.set(info.methodId, info);
  }
  TABLES.set(cls, table);
  return table;
}

export class Immortal {
  /** @type {(string | {name: string, id?: number})[]} */
  static rpc = [];
  /** @type {(string | {name: string, id?: number})[]} */
  static impulses = [];

  constructor() {
    /** The immortal's state: a JSON value, checkpointed and restored by the binding. */
    this.state = this.initialState();
    /** @type {import('./dispatcher.js').Dispatcher | null} */
    this.dispatcher = null;
  }

  /** The state of a fresh immortal (before its first start). */
  initialState() {
    return {};
  }

  /** Runs once in the immortal's logical life, as its first logged input. */
  async onFirstStart() {}

  /** Runs each time this process becomes primary (after recovery); not logged. */
  onBecomePrimary() {}

  get #running() {
    if (this.dispatcher === null) throw new BindingError('this immortal is not running');
    return this.dispatcher;
  }

  /** This instance's registered name. */
  get name() {
    return this.#running.instance;
  }

  get isPrimary() {
    return this.#running.isPrimary;
  }

  /** True while logged calls are being replayed (recovery). */
  get replaying() {
    return this.#running.replaying;
  }

  /** A proxy to the immortal instance `name` (any language). @param {string} name */
  proxy(name) {
    return new Proxy(this.#running, name);
  }

  /** A proxy to this immortal: self-calls and impulses go through the log. */
  get self() {
    return new Proxy(this.#running, this.#running.instance);
  }
}

/** A reference to an immortal; methods by name (the Python default ids) or by number. */
export class Proxy {
  constructor(dispatcher, target) {
    this.dispatcher = dispatcher;
    this.target = target;
  }

  /** Fire and forget. @param {string | number} method @param {...unknown} args */
  fork(method, ...args) {
    this.dispatcher.fork(this.target, methodId(method), args);
  }

  /** An awaited call: a promise of the callee's result, logged before it resumes you. */
  call(method, ...args) {
    return this.dispatcher.callAsync(this.target, methodId(method), args);
  }

  /** An impulse to this immortal itself (outside handlers, once primary). */
  impulse(method, ...args) {
    this.dispatcher.impulse(this.target, methodId(method), args);
  }
}

function methodId(method) {
  if (typeof method === 'number') {
    if (!Number.isInteger(method) || method < 1 || method > METHOD_ID_EXPLICIT_MAX) {
      throw new BindingError(`method id must be in 1..2**30, not ${method}`);
    }
    return method;
  }
  if (typeof method !== 'string' || method === '') throw new BindingError('a method is a name or an id');
  return defaultMethodId(method);
}
