// An immortal in JavaScript between two Python immortals: the relay of the chain workload
// (ambrosia/testing/workloads.py). It receives numbered calls from its caller, fire and
// forget (`record_fork`) or awaited (`record`), keeps a hash chain of the numbers it saw,
// and passes each call on to the next hop the way it came: an awaited call as an awaited
// call whose result it checks and returns. The method names are the Python server's, so
// the Python client calls this relay as it would call the server.
//
//   node examples/chain_relay.mjs --instance relay-1 --receive-port 7100 --send-port 7101
//
// While primary it sends itself a heartbeat impulse every 100 ms (outside input, logged
// and counted in its state), and writes its progress to $AMBROSIA_STATUS_DIR/NAME.json (outside the
// logged state) for a test harness to watch.

import { createHash } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Immortal, main } from '../src/index.js';

const STATUS_INTERVAL_MS = 50;
const HEARTBEAT_INTERVAL_MS = 100;

function chainStep(chain, value) {
  return createHash('sha256').update(`${chain}:${value}`).digest('hex');
}

export class ChainRelay extends Immortal {
  static rpc = ['record', 'record_fork'];
  static impulses = ['heartbeat'];

  initialState() {
    return { nextHop: '', count: 0, chain: '', outOfOrder: [], badResults: [], heartbeats: 0 };
  }

  async onFirstStart() {
    // Fixed once, in the logged life: replay never reads the environment again.
    this.state.nextHop = process.env.AMBROSIA_CHAIN_NEXT_HOP || 'server';
  }

  #record(n) {
    const state = this.state;
    if (n !== state.count + 1) state.outOfOrder.push(n);
    state.count += 1;
    state.chain = chainStep(state.chain, n);
  }

  async record(n) {
    this.#record(n);
    const value = await this.proxy(this.state.nextHop).call('record', n);
    if (value !== n * 2) this.state.badResults.push(n);
    return value;
  }

  record_fork(n) {
    this.#record(n);
    this.proxy(this.state.nextHop).fork('record_fork', n);
  }

  // Outside input: a timer's ticks, logged as impulses between the chain's calls.
  heartbeat() {
    this.state.heartbeats += 1;
  }

  onBecomePrimary() {
    setInterval(() => this.self.impulse('heartbeat'), HEARTBEAT_INTERVAL_MS);
    const directory = process.env.AMBROSIA_STATUS_DIR;
    if (!directory) return;
    const path = join(directory, `${this.name}.json`);
    const write = () => {
      const { count, chain, outOfOrder, badResults, heartbeats } = this.state;
      const status = {
        count,
        chain,
        out_of_order: outOfOrder.slice(0, 10),
        bad_results: badResults.slice(0, 10),
        heartbeats,
      };
      writeFileSync(`${path}.tmp`, JSON.stringify(status));
      renameSync(`${path}.tmp`, path);
    };
    write();
    setInterval(write, STATUS_INTERVAL_MS);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await main(() => new ChainRelay());
}
