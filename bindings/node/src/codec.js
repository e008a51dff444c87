// How arguments and results travel inside an RPC, compatible with the Python binding
// (ambrosia/binding/codec.py). The coordinator never looks inside.
//
// Arguments start with a tag byte:
// - 0x00 RAW: exactly one Buffer argument; the rest of the message is that argument;
// - 0x01 JSON: a JSON array of the arguments;
// - 0x02 STATE: the Python binding's own state codec (tuples, bytes inside structures,
//   datetimes...). This binding cannot read it and says so: call a Node immortal from
//   Python with JSON values or one bytes argument.
// Async calls put the call id (ZigZagLong) before the tag. A result (reserved byte 1,
// method 0, kind async) carries the call id, a status byte (0 value, 1 the handler
// threw) and the tagged value: a Buffer raw, anything else as a one-element JSON array;
// an error as the JSON array [type name, message].

export const TAG_RAW = 0;
export const TAG_JSON = 1;
export const TAG_STATE = 2;

/** Arguments or a value that cannot be encoded or decoded. */
export class CodecError extends Error {
  constructor(message) {
    super(message);
    this.name = 'CodecError';
  }
}

function toJson(values) {
  let text;
  try {
    text = JSON.stringify(values, (key, value) => {
      if (typeof value === 'bigint') {
        throw new CodecError('a bigint argument: JSON carries numbers (exact up to 2**53)');
      }
      if (typeof value === 'number' && !Number.isFinite(value)) {
        throw new CodecError(`${value} has no JSON form`);
      }
      if (value === undefined) return null;
      return value;
    });
  } catch (error) {
    if (error instanceof CodecError) throw error;
    throw new CodecError(`arguments are not JSON: ${error.message}`);
  }
  return Buffer.from(text, 'utf8');
}

/** Tag and encode positional arguments. @param {unknown[]} args @returns {Buffer} */
export function encodeArgs(args) {
  if (args.length === 1 && Buffer.isBuffer(args[0])) {
    return Buffer.concat([Buffer.from([TAG_RAW]), args[0]]);
  }
  return Buffer.concat([Buffer.from([TAG_JSON]), toJson(args)]);
}

/** Tag and encode one value (a handler's result). */
export function encodeValue(value) {
  if (Buffer.isBuffer(value)) return Buffer.concat([Buffer.from([TAG_RAW]), value]);
  return Buffer.concat([Buffer.from([TAG_JSON]), toJson([value === undefined ? null : value])]);
}

/** Decode tagged arguments; `data` starts at the tag byte. @returns {unknown[]} */
export function decodeArgs(data) {
  if (data.length === 0) throw new CodecError('RPC arguments are empty: the tag byte is missing');
  const tag = data[0];
  if (tag === TAG_RAW) return [Buffer.from(data.subarray(1))];
  if (tag === TAG_JSON) {
    let decoded;
    try {
      decoded = JSON.parse(data.subarray(1).toString('utf8'));
    } catch (error) {
      throw new CodecError(`RPC arguments are not valid JSON: ${error.message}`);
    }
    if (!Array.isArray(decoded)) throw new CodecError('RPC JSON arguments must be an array');
    return decoded;
  }
  if (tag === TAG_STATE) {
    throw new CodecError(
      'arguments in the Python state encoding (tag 2): the Node binding reads JSON values ' +
        '(None, bool, int, float, str, lists and dicts of them) or one bytes argument',
    );
  }
  throw new CodecError(`unknown RPC argument tag ${tag}`);
}

/** Decode one value (a result). */
export function decodeValue(data) {
  const values = decodeArgs(data);
  if (values.length !== 1) throw new CodecError(`a result carries one value, not ${values.length}`);
  return values[0];
}
