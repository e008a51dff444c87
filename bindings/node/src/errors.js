// The binding's errors. Every one says what was wrong and where.
//
//   Error
//   ├── BindingError            the application used the binding wrongly (a bad method id,
//   │   └── ImpulseDuringRecoveryError   an impulse before this process is primary)
//   ├── RemoteCallError         an awaited call's callee threw: its type name and message
//   ├── CodecError (codec.js)   arguments or a value with no wire form
//   └── ProtocolError (wire.js) the coordinator sent something that is not the protocol

export class BindingError extends Error {
  constructor(message) {
    super(message);
    this.name = 'BindingError';
  }
}

export class ImpulseDuringRecoveryError extends BindingError {
  constructor(message) {
    super(message);
    this.name = 'ImpulseDuringRecoveryError';
  }
}

export class RemoteCallError extends Error {
  /** @param {string} typeName @param {string} remoteMessage */
  constructor(typeName, remoteMessage) {
    super(`${typeName}: ${remoteMessage}`);
    this.name = 'RemoteCallError';
    this.typeName = typeName;
    this.remoteMessage = remoteMessage;
  }
}
