"""Every error ambrosia raises, in one tree.

Foreign exceptions (OSError, azure.core, botocore) are translated into these types at
one boundary (the backend modules), with the original chained as ``__cause__``.

::

    AmbrosiaError
    ├── ProtocolError            a peer or binding sent bytes we cannot accept; the
    │   │                        connection that carried them is poisoned and closed
    │   ├── FrameTooLargeError   length prefix above the frame limit (checked before allocating)
    │   ├── VarintTooLongError   varint longer than 5 (int) or 10 (long) bytes
    │   ├── UnknownMessageTypeError
    │   ├── BindingProtocolError a binding process broke the binding protocol (its
    │   │                        connection is closed; the coordinator keeps running)
    │   └── PeerIdentityError    a TLS peer's certificate names no instance, or not the one
    │                            dialled
    ├── LogError
    │   ├── LogCorruptError      a bad page that is not the torn tail: refuse to start
    │   ├── LogGapError          a missing chunk or a page sequence gap
    │   └── LostAcknowledgedError  a peer's resume point shows this log lost calls it had
    │                            acknowledged (or pages that produced calls a peer has)
    ├── StorageError             a log store operation failed           (retriable: see flag)
    │   ├── StorageUnavailableError  timeout, 5xx, throttling, connection refused  [retriable]
    │   ├── FenceError           the store itself rejected a stale writer
    │   │   ├── LeaseLostError   our lease/epoch is no longer the current one
    │   │   └── OffsetMismatchError  append at an offset that is not the end
    │   ├── LeaseHeldError       another live writer holds the instance's lease
    │   ├── PreconditionFailedError  metadata compare-and-swap lost the race
    │   └── NotFoundError        chunk, checkpoint, bucket or container missing
    ├── ConfigError              malformed URL, unknown scheme, missing optional
    │                            dependency or credentials, unreachable service
    ├── CatalogError
    │   ├── InstanceNotFoundError
    │   └── RegistrationConflictError  same name registered with other settings
    ├── BindingError
    │   ├── ImpulseDuringRecoveryError  impulse sent before becoming primary
    │   ├── StateSerializationError     state that cannot be checkpointed or loaded
    │   ├── ReplayDivergenceError       replay produced different output than the log
    │   └── HandlerAwaitError           a handler awaited something that is not a logged call
    └── RemoteCallError          an awaited remote handler raised; carries its type and message
"""

from __future__ import annotations


class AmbrosiaError(Exception):
    """Base of every error ambrosia raises."""

    retriable: bool = False


# -- protocol -------------------------------------------------------------------------


class ProtocolError(AmbrosiaError):
    """Bytes from a peer or binding that violate the protocol."""


class FrameTooLargeError(ProtocolError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class VarintTooLongError(ProtocolError):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"varint longer than {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class BindingProtocolError(ProtocolError):
    """A binding process sent what the binding protocol (PROTOCOL.md) does not allow."""


class UnknownMessageTypeError(ProtocolError):
    def __init__(self, message_type: int) -> None:
        super().__init__(f"unknown message type {message_type}")
        self.message_type = message_type


class PeerIdentityError(ProtocolError):
    """A TLS peer whose certificate names no instance, or another one than expected."""


# -- log ------------------------------------------------------------------------------


class LogError(AmbrosiaError):
    """The log cannot be used as it is."""


class LogCorruptError(LogError):
    """A page failed its checks and is not the torn tail of the log."""

    def __init__(self, where: str, offset: int, reason: str) -> None:
        super().__init__(f"log corrupt in {where} at byte offset {offset}: {reason}")
        self.where = where
        self.offset = offset
        self.reason = reason


class LogGapError(LogError):
    """A chunk or a page is missing from the middle of the log."""


class LostAcknowledgedError(LogError):
    """Storage lost acknowledged input (or produced output a peer holds): stop, loudly."""


# -- storage --------------------------------------------------------------------------


class StorageError(AmbrosiaError):
    """A log store operation failed."""


class StorageUnavailableError(StorageError):
    """Timeout, 5xx, throttling or connection failure: worth retrying with backoff."""

    retriable = True


class FenceError(StorageError):
    """The store rejected a write from a writer that is no longer allowed to write."""


class LeaseLostError(FenceError):
    """Our lease or epoch is no longer current: stop writing and stop executing."""


class OffsetMismatchError(FenceError):
    def __init__(self, where: str, expected_offset: int, actual_offset: int) -> None:
        super().__init__(
            f"append to {where} expected offset {expected_offset}, the end is at {actual_offset}"
        )
        self.where = where
        self.expected_offset = expected_offset
        self.actual_offset = actual_offset


class LeaseHeldError(StorageError):
    """Another live writer holds the lease of this instance.

    ``free_in_s``: when the store knows it (s3: the lock's expiry time), the seconds
    until the lease runs out unless its holder renews it first; None otherwise.
    """

    def __init__(self, message: str, *, free_in_s: float | None = None) -> None:
        super().__init__(message)
        self.free_in_s = free_in_s


class PreconditionFailedError(StorageError):
    """A compare-and-swap found a different version than expected."""


class NotFoundError(StorageError):
    """The object, chunk, checkpoint, bucket or container does not exist."""


# -- configuration and catalog ---------------------------------------------------------


class ConfigError(AmbrosiaError):
    """A deployment setting is wrong: URL, scheme, dependency, credentials, reachability."""


class CatalogError(AmbrosiaError):
    """The catalog refused an operation."""


class InstanceNotFoundError(CatalogError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no instance named {name!r} is registered")
        self.name = name


class RegistrationConflictError(CatalogError):
    def __init__(self, name: str, differences: str) -> None:
        super().__init__(
            f"instance {name!r} is already registered with other settings ({differences}); "
            "pass replace=True (--replace on the command line) to overwrite it"
        )
        self.name = name


# -- binding --------------------------------------------------------------------------


class BindingError(AmbrosiaError):
    """The application broke a rule of the binding."""


class ImpulseDuringRecoveryError(BindingError):
    """Impulses are only accepted by a primary that has finished recovering."""


class StateSerializationError(BindingError):
    """The immortal's state holds something a checkpoint cannot carry, or bad bytes."""


class ReplayDivergenceError(BindingError):
    """Replay produced different output than the original run."""


class OutputDivergenceError(ReplayDivergenceError):
    """Replay regenerated other calls or results to a peer than the ones the peer holds."""


class HandlerAwaitError(BindingError):
    """A handler awaited something other than an ambrosia call."""


class RemoteCallError(AmbrosiaError):
    """An awaited call's handler raised; the caller sees its type name and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
