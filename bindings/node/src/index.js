// A binding for Node.js: immortals in JavaScript, talking to `ambrosia coordinator`.
export { Immortal, Proxy, methodTable } from './immortal.js';
export { Dispatcher } from './dispatcher.js';
export { run, main } from './run.js';
export { BindingError, ImpulseDuringRecoveryError, RemoteCallError } from './errors.js';
export { CodecError, encodeArgs, decodeArgs, encodeValue, decodeValue } from './codec.js';
export { ProtocolError, RecordReader, defaultMethodId } from './wire.js';
