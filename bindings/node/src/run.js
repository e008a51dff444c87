// The IO around the dispatcher: two loopback connections to `ambrosia coordinator`.
//
// The binding connects to the coordinator's receive port first (it writes messages
// there), then to its send port (it reads log records there), retrying with backoff
// until the coordinator listens (bounded by `connectTimeoutMs`). It reads records, lets
// the dispatcher handle them one at a time, and writes the output after each chunk of
// input; a slow coordinator slows the binding (it waits for 'drain').
// When the coordinator closes the connection the process has nothing left to do: its
// state lives in the coordinator's log, and the next binding recovers from there.

import net from 'node:net';
import { once } from 'node:events';
import { Dispatcher } from './dispatcher.js';
import { RecordReader } from './wire.js';

const CONNECT_RETRY_FIRST_MS = 50;
const CONNECT_RETRY_MAX_MS = 1000;
// A coordinator that died mid-stream: not this binding's fault, and nothing to report.
const CONNECTION_LOST = new Set(['ECONNRESET', 'EPIPE']);

function connectOnce(host, port) {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ host, port });
    const onError = (error) => {
      socket.destroy();
      reject(error);
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.off('error', onError);
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}

async function connect(host, port, deadline) {
  let delay = CONNECT_RETRY_FIRST_MS;
  for (;;) {
    try {
      return await connectOnce(host, port);
    } catch (error) {
      if (Date.now() + delay > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, CONNECT_RETRY_MAX_MS);
    }
  }
}

/**
 * Run an immortal against its coordinator until the coordinator closes the connection.
 * @param {() => import('./immortal.js').Immortal} appFactory
 * @param {{instance: string, receivePort: number, sendPort: number, host?: string,
 *   connectTimeoutMs?: number, log?: (line: string) => void}} options
 * @returns {Promise<number>} an exit code: 0 when the coordinator closed, 1 on an error
 */
export async function run(appFactory, options) {
  const host = options.host ?? '127.0.0.1';
  const log = options.log ?? ((line) => console.log(line));
  const deadline = Date.now() + (options.connectTimeoutMs ?? 30000);
  const { instance } = options;
  let toCoordinator;
  let fromCoordinator;
  try {
    toCoordinator = await connect(host, options.receivePort, deadline);
    fromCoordinator = await connect(host, options.sendPort, deadline);
  } catch (error) {
    log(`${instance}: cannot reach the coordinator at ${host}:${options.receivePort}/${options.sendPort}: ${error.message}`);
    toCoordinator?.destroy();
    return 1;
  }
  toCoordinator.on('error', () => {}); // reported by the reading side
  let writing = false;
  const flush = () => {
    const data = dispatcher.takeOutput();
    if (data !== null && !toCoordinator.destroyed) return toCoordinator.write(data);
    return true;
  };
  const dispatcher = new Dispatcher(instance, appFactory, {
    log,
    onOutput: () => {
      if (!writing) setImmediate(flush);
    },
  });
  const reader = new RecordReader();
  try {
    for await (const chunk of fromCoordinator) {
      writing = true;
      for (const event of reader.receive(chunk)) await dispatcher.handle(event);
      writing = false;
      if (!flush()) await once(toCoordinator, 'drain');
    }
    log(`${instance}: the coordinator closed the connection`);
    return 0;
  } catch (error) {
    if (CONNECTION_LOST.has(error?.code)) {
      log(`${instance}: the connection to the coordinator was lost (${error.code})`);
    } else {
      log(`${instance}: binding stopped: ${error?.stack ?? error}`);
    }
    return 1;
  } finally {
    toCoordinator.destroy();
    fromCoordinator.destroy();
  }
}

/**
 * Parse `--instance NAME --receive-port N --send-port N [--host H]` (or the environment
 * variables AMBROSIA_INSTANCE, AMBROSIA_RECEIVE_PORT, AMBROSIA_SEND_PORT,
 * AMBROSIA_BINDING_HOST) and run; the process exits with run's code.
 * @param {() => import('./immortal.js').Immortal} appFactory
 */
export async function main(appFactory, argv = process.argv.slice(2), env = process.env) {
  const values = {
    instance: env.AMBROSIA_INSTANCE,
    'receive-port': env.AMBROSIA_RECEIVE_PORT,
    'send-port': env.AMBROSIA_SEND_PORT,
    host: env.AMBROSIA_BINDING_HOST,
  };
  for (let index = 0; index < argv.length; index++) {
    const [flag, inline] = argv[index].split('=', 2);
    const key = flag.replace(/^--/, '');
    if (!flag.startsWith('--') || !(key in values)) {
      console.error(`unknown argument ${argv[index]}: use --instance NAME --receive-port N --send-port N [--host H]`);
      process.exit(2);
    }
    values[key] = inline ?? argv[++index];
  }
  const receivePort = Number(values['receive-port']);
  const sendPort = Number(values['send-port']);
  if (!values.instance || !Number.isInteger(receivePort) || !Number.isInteger(sendPort)) {
    console.error('missing --instance NAME, --receive-port N or --send-port N');
    process.exit(2);
  }
  process.once('SIGTERM', () => process.exit(0));
  process.once('SIGINT', () => process.exit(0));
  const code = await run(appFactory, { instance: values.instance, receivePort, sendPort, host: values.host });
  process.exit(code);
}
