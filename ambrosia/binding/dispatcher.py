"""Deterministic dispatch: log order in, handlers one at a time, outputs out.

The dispatcher is the binding's engine. The coordinator hands it durable log pages; it
walks the RPC messages of each page in order and runs their handlers. It never lets the
event loop choose what runs next:

- a plain (``def``) handler runs to completion;
- an ``async def`` handler is a coroutine the dispatcher drives itself with ``send``: it
  runs until it awaits a ``PendingCall`` (an async call to another immortal). It then
  stays suspended, other messages are dispatched, and it resumes exactly when the logged
  result of that call is dispatched. Replay therefore resumes it at the same point in the
  log order. Awaiting anything else (``asyncio.sleep``, a future) is refused with
  ``HandlerAwaitError``: it would make replay depend on timing.

Outputs (forks, async calls, results) are appended, already framed as incoming RPC
messages (PROTOCOL.md type 0), to the ``OutputStream`` of their destination. Streams are
bounded; when one is over its limit the dispatcher stops between two messages until it
drains, so a full buffer slows the producer instead of growing.

Checkpoints and awaited calls: suspended coroutines cannot be serialized, so a checkpoint
is only taken at a *quiescent* page boundary: no handler suspended and no call awaiting
its result. A requested checkpoint waits for the first such point; the log keeps growing
until then (a handler that awaits forever defers checkpoints forever, and replay then
starts further back: correct, only slower). The usual shape of long-running work, a
handler that does one step and forks a self-call for the next (the paper's
``continueProcess`` idiom), is quiescent between steps.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any, Protocol

from ambrosia.binding import codec
from ambrosia.binding import state as state_codec
from ambrosia.binding.immortal import (
    METHOD_ID_FIRST_START,
    Immortal,
    MethodInfo,
    Proxy,
    lookup_immortal_class,
    method_table,
)
from ambrosia.errors import (
    BindingError,
    HandlerAwaitError,
    ImpulseDuringRecoveryError,
    ProtocolError,
    RemoteCallError,
    ReplayDivergenceError,
)
from ambrosia.log.page import Page
from ambrosia.wire.messages import (
    KIND_ASYNC,
    KIND_FORK,
    KIND_IMPULSE,
    RESERVED_RESULT,
    TYPE_RPC,
    frame_prefix,
    rpc_header,
)
from ambrosia.wire.varint import (
    Incomplete,
    decode_zigzag_long,
    encode_zigzag_long,
)

logger = logging.getLogger("ambrosia.binding")

# Groups of small messages are copied into ``bytes`` once before dispatch: every
# per-message slice and index is cheaper on bytes than on a memoryview. Large messages
# are copied once each anyway.
_COPY_GROUP_BELOW_MESSAGE_BYTES = 8192
# Patterns of repeated message shapes kept per dispatcher (see ``dispatch``).
_RUN_PATTERNS_MAX = 64


class OutputStream(Protocol):
    """Where the dispatcher writes the output to one destination (the coordinator's
    ``ambrosia.protocol.outputs.OutputStream``, or a binding process's writer)."""

    def add(self, head: bytes, body: bytes) -> None: ...

    def report_again(self) -> None: ...


class BindingHost(Protocol):
    """The coordinator the dispatcher writes to (see ``ambrosia.coordinator.binding_port``)."""

    @property
    def instance(self) -> str: ...

    def open_stream(self, destination: str) -> Any: ...

    def log_impulse(self, message: bytes) -> None: ...


def in_process(app_factory: Callable[[], Immortal]) -> Callable[[BindingHost], Dispatcher]:
    """The binding factory of ``Runtime`` for an application running in its process."""

    def build(host: BindingHost) -> Dispatcher:
        return Dispatcher(
            host.instance,
            app_factory(),
            host.open_stream,
            host.log_impulse,
            app_factory=app_factory,
        )

    return build


class PendingCall:
    """An async call in flight; ``await`` it (inside a handler) for its logged result."""

    __slots__ = ("call_id", "destination", "done", "error", "value", "waiter")

    def __init__(self, call_id: int, destination: str) -> None:
        self.call_id = call_id
        # Only this instance may answer: a result from anyone else is refused.
        self.destination = destination
        self.done = False
        self.value: object = None
        self.error: BaseException | None = None
        self.waiter: tuple[Coroutine[Any, Any, Any], tuple[str, int] | None] | None = None

    def __await__(self) -> Any:
        if not self.done:
            yield self
        if self.error is not None:
            raise self.error
        return self.value


Handler = tuple[Callable[..., Any], bool]
Reply = tuple[str, int] | None


class Dispatcher:
    """Runs one immortal's handlers in log order; the binding side of the coordinator."""

    def __init__(
        self,
        instance: str,
        app: Immortal,
        open_stream: Callable[[str], OutputStream],
        log_impulse: Callable[[bytes], None],
        *,
        app_factory: Callable[[], Immortal] | None = None,
    ) -> None:
        self.instance = instance
        self.app = app
        self._app_factory = app_factory if app_factory is not None else type(app)
        self._open_stream_callback = open_stream
        self._log_impulse = log_impulse
        self._streams: dict[str, OutputStream] = {}
        self._handlers: dict[int, Handler] = {}
        self._headers: dict[tuple[int, int], bytes] = {}
        self._run_patterns: dict[tuple[bytes, int], re.Pattern[bytes]] = {}
        self._pending: dict[int, PendingCall] = {}
        self._replying = False  # a result is being added: it must not block dispatch
        self._suspended = 0
        self.next_call_id = 1
        self.started = False
        self.is_primary = False
        self.replaying = False
        self.in_handler = False
        self.blocked: set[OutputStream] = set()
        self.unblocked = asyncio.Event()
        self.checkpoint_requested = False
        self.handler_errors = 0
        # Set by the runtime per page and per group (never per message), so that a stuck
        # call can be named (``running_call``); -1: the caller did not say.
        self.page_sequence = -1
        self.group_first_seq = -1
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bind(app)

    # -- setup ---------------------------------------------------------------------

    def _bind(self, app: Immortal) -> None:
        app._ambrosia_dispatcher = self
        self.app = app
        self._handlers = {}
        for name, info in method_table(type(app)).items():
            self._handlers[info.method_id] = (getattr(app, name), info.is_coroutine)
        self._handlers[METHOD_ID_FIRST_START] = (self._first_start, True)

    def replace_app(self, app: Immortal) -> None:
        """Install a new application object (state loaded from a checkpoint)."""
        self._bind(app)

    async def _first_start(self) -> None:
        self.started = True
        result = self.app.on_first_start()
        if result is not None:
            await result

    def resolve_proxy(self, type_path: str, name: str) -> object:
        """Rebuild a proxy found in a checkpoint or in arguments."""
        return Proxy(lookup_immortal_class(type_path), name, self)

    # -- quiescence and back-pressure ------------------------------------------------

    @property
    def quiescent(self) -> bool:
        return not self._pending and self._suspended == 0

    def stream_blocked(self, stream: OutputStream) -> bool:
        """An output stream went over its bound: stop between handlers (True), unless that
        output is a result or a replay (see ``outputs``); then ask again on its next add."""
        if self.replaying or self._replying:
            stream.report_again()
            return False
        self.blocked.add(stream)
        self.unblocked.clear()
        return True

    def stream_unblocked(self, stream: OutputStream) -> None:
        self.blocked.discard(stream)
        if not self.blocked:
            self.unblocked.set()

    def request_checkpoint(self) -> None:
        self.checkpoint_requested = True

    def start_task(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    def stop_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # -- outgoing calls ----------------------------------------------------------------

    def stream_for(self, destination: str) -> OutputStream:
        return self._stream(destination)

    def raw_fork_head(self, info: MethodInfo) -> bytes:
        """Head of a fork carrying one raw bytes argument (empty for impulse methods)."""
        if info.is_impulse:
            return b""
        return self._header(info.method_id, KIND_FORK) + b"\x00"

    def _stream(self, destination: str) -> OutputStream:
        stream = self._streams.get(destination)
        if stream is None:
            stream = self._open_stream_callback(destination)
            self._streams[destination] = stream
        return stream

    def _header(self, method_id: int, kind: int) -> bytes:
        key = (method_id, kind)
        header = self._headers.get(key)
        if header is None:
            header = rpc_header(method_id, kind)
            self._headers[key] = header
        return header

    def _require_handler(self, what: str) -> None:
        if not self.in_handler:
            raise BindingError(
                f"{what} outside a handler: only impulses may be sent from background tasks "
                "or hooks (they are the logged entry point for outside input)"
            )

    def call_fork(self, destination: str, info: MethodInfo, args: tuple[Any, ...]) -> None:
        if not self.in_handler:
            self._require_handler("fork call")
        if info.is_impulse:
            raise BindingError(f"{info.name} is an impulse handler: call it with .impulse(...)")
        if len(args) == 1 and type(args[0]) is bytes:
            body = args[0]
            header = self._header(info.method_id, KIND_FORK) + b"\x00"
        else:
            body = codec.encode_args(args)
            header = self._header(info.method_id, KIND_FORK)
        size = len(header) + len(body)
        self._stream(destination).add(frame_prefix(size) + header, body)

    def call_async(self, destination: str, info: MethodInfo, args: tuple[Any, ...]) -> PendingCall:
        self._require_handler("async call")
        if info.is_impulse:
            raise BindingError(f"{info.name} is an impulse handler: call it with .impulse(...)")
        call_id = self.next_call_id
        self.next_call_id = call_id + 1
        if len(args) == 1 and type(args[0]) is bytes:
            body = encode_zigzag_long(call_id) + b"\x00" + args[0]
        else:
            body = encode_zigzag_long(call_id) + codec.encode_args(args)
        header = self._header(info.method_id, KIND_ASYNC)
        self._stream(destination).add(frame_prefix(len(header) + len(body)) + header, body)
        pending = PendingCall(call_id, destination)
        self._pending[call_id] = pending
        return pending

    def call_impulse(self, destination: str, info: MethodInfo, args: tuple[Any, ...]) -> None:
        if not info.is_impulse:
            raise BindingError(f"{info.name} is not marked @impulse")
        if destination != self.instance:
            raise BindingError(
                "impulses go to the immortal's own proxy (self.this); to pass outside input "
                "to another immortal, fork to it from the impulse handler"
            )
        if self.in_handler:
            raise BindingError("impulses come from outside handlers; inside a handler use fork")
        if not self.is_primary or self.replaying:
            raise ImpulseDuringRecoveryError(
                f"impulse {info.name} refused: {self.instance} is recovering, not yet primary"
            )
        header = self._header(info.method_id, KIND_IMPULSE)
        body = codec.encode_args(args)
        self._log_impulse(frame_prefix(len(header) + len(body)) + header + body)

    def _send_result(
        self, reply: tuple[str, int], value: object, error: BaseException | None
    ) -> None:
        destination, call_id = reply
        if error is None:
            try:
                encoded = codec.encode_value(value)
                status = b"\x00"
            except BindingError as encode_error:
                error = encode_error
        if error is not None:
            encoded = codec.encode_args((type(error).__name__, str(error)))
            status = b"\x01"
        header = self._header_result()
        body = encode_zigzag_long(call_id) + status + encoded
        self._replying = True
        try:
            self._stream(destination).add(frame_prefix(len(header) + len(body)) + header, body)
        finally:
            self._replying = False

    def _header_result(self) -> bytes:
        key = (0, -1)
        header = self._headers.get(key)
        if header is None:
            header = rpc_header(0, KIND_ASYNC, RESERVED_RESULT)
            self._headers[key] = header
        return header

    def first_start_message(self) -> bytes:
        header = rpc_header(METHOD_ID_FIRST_START, KIND_FORK)
        body = codec.encode_args(())
        return frame_prefix(len(header) + len(body)) + header + body

    # -- incoming messages -------------------------------------------------------------

    def dispatch(self, source: str, data: bytes | memoryview, position: int, end: int) -> int:
        """Run messages of one logged group from ``position``; return where it stopped.

        Stops early (returns a position before ``end``) when an output stream is full;
        the caller waits for ``unblocked`` and calls again from there. A malformed message
        (it was logged, so replay meets it again) is reported and the rest of the group
        skipped: the same outcome on every replay.
        """
        handlers = self._handlers
        blocked = self.blocked
        # Streams of calls usually repeat one shape: same size, same method, one raw
        # bytes argument. After one such message is parsed, its head (size prefix through
        # argument tag) is remembered, and one compiled pattern (``_run_pattern``) finds,
        # in C, how many of the following messages start with exactly those bytes at that
        # stride: they have the same size and target, so the loop over them only slices
        # and calls. Needs ``bytes`` (the runtime copies small-message groups into bytes).
        run_head = b""
        run_size = 0
        run_skip = 0
        run_pattern: re.Pattern[bytes] | None = None
        run_handler: Callable[..., Any] | None = None
        startswith = data.startswith if type(data) is bytes else None
        self.in_handler = True
        try:
            while position < end:
                if (
                    run_pattern is not None
                    and startswith is not None
                    and startswith(run_head, position)
                ):
                    match = run_pattern.match(data, position, end)
                    if match is not None:
                        run_start = position
                        run_end = match.end()
                        call = run_handler
                        assert call is not None
                        # ``position`` stays the running call's first byte (``running_call``).
                        for position in range(run_start, run_end, run_size):
                            try:
                                call(data[position + run_skip : position + run_size])
                            except Exception:
                                self._handler_failed(source)
                            if blocked:
                                return position + run_size
                        position = run_end
                        continue
                # Sizes and method ids almost always take one or two varint bytes: decode
                # those inline, fall back to the general decoder otherwise.
                size = data[position]
                if size < 0x80:
                    start = position + 1
                elif data[position + 1] < 0x80:
                    size = (size & 0x7F) | (data[position + 1] << 7)
                    start = position + 2
                else:
                    size, start = decode_zigzag_long(data, position)
                    size <<= 1  # back to the zig-zag form the fast paths check below
                if size & 1:
                    self._malformed(source, position, "negative message size")
                    return end
                size >>= 1
                stop = start + size
                # ``data[start]``: any type byte but TYPE_RPC (0) is a bad frame.
                if size < 4 or stop > end or data[start]:
                    self._malformed(source, position, "bad frame")
                    return end
                method = data[start + 2]
                if method < 0x80:
                    method = (method >> 1) ^ -(method & 1)
                    cursor = start + 3
                elif data[start + 3] < 0x80:
                    method = (method & 0x7F) | (data[start + 3] << 7)
                    method = (method >> 1) ^ -(method & 1)
                    cursor = start + 4
                else:
                    method, cursor = decode_zigzag_long(data, start + 2)
                if data[start + 1] == RESERVED_RESULT:
                    self._dispatch_result(source, data[cursor + 1 : stop])
                else:
                    handler = handlers.get(method)
                    if handler is None:
                        self._malformed(source, position, f"no handler for method id {method}")
                    elif (
                        data[cursor] != KIND_ASYNC
                        and cursor + 1 < stop
                        and data[cursor + 1] == 0
                        and not handler[1]
                    ):
                        # One raw bytes argument to a plain handler.
                        if startswith is not None:
                            run_head = bytes(data[position : cursor + 2])
                            run_size = stop - position
                            run_skip = cursor + 2 - position
                            run_pattern = self._run_pattern(run_head, run_size)
                            run_handler = handler[0]
                        try:
                            handler[0](bytes(data[cursor + 2 : stop]))
                        except Exception:
                            self._handler_failed(source)
                    elif data[cursor] == KIND_ASYNC:
                        self._dispatch_async(source, handler, bytes(data[cursor + 1 : stop]))
                    else:
                        self._dispatch_fork(source, handler, bytes(data[cursor + 1 : stop]))
                position = stop
                if blocked:
                    return position
            return position
        except (Incomplete, IndexError):
            self._malformed(source, position, "truncated message")
            return end
        finally:
            self.in_handler = False

    def _run_pattern(self, head: bytes, size: int) -> re.Pattern[bytes]:
        """A pattern matching one or more messages of ``size`` bytes that start with
        ``head``, back to back (possessive: nothing to backtrack into)."""
        key = (head, size)
        pattern = self._run_patterns.get(key)
        if pattern is None:
            if len(self._run_patterns) >= _RUN_PATTERNS_MAX:
                self._run_patterns.clear()  # a sender cycling shapes costs compiles only
            body = b".{%d}" % (size - len(head))
            pattern = re.compile(b"(?:" + re.escape(head) + body + b")++", re.DOTALL)
            self._run_patterns[key] = pattern
        return pattern

    def _malformed(self, source: str, position: int, reason: str) -> None:
        logger.error(
            "%s: skipping the rest of a logged batch from %s at byte %d: %s",
            self.instance,
            source,
            position,
            reason,
        )

    def _handler_failed(self, source: str) -> None:
        if isinstance(sys.exc_info()[1], ReplayDivergenceError):
            raise  # not the handler's failure: the log no longer matches the code
        self.handler_errors += 1
        logger.error(
            "%s: handler failed on a call from %s\n%s",
            self.instance,
            source,
            traceback.format_exc(),
        )

    def _dispatch_fork(self, source: str, handler: Handler, args_data: bytes) -> None:
        try:
            args = codec.decode_args(args_data, self.resolve_proxy)
        except (ProtocolError, BindingError) as error:
            self._malformed(source, 0, str(error))
            return
        function, is_coroutine = handler
        try:
            result = function(*args)
        except Exception:
            self._handler_failed(source)
            return
        if is_coroutine:
            self._drive(result, None)

    def _dispatch_async(self, source: str, handler: Handler, args_data: bytes) -> None:
        call_id, cursor = decode_zigzag_long(args_data, 0)
        reply = (source, call_id)
        try:
            args = codec.decode_args(args_data[cursor:], self.resolve_proxy)
        except (ProtocolError, BindingError) as error:
            self._send_result(reply, None, error)
            return
        function, is_coroutine = handler
        try:
            result = function(*args)
        except Exception as error:
            self._handler_failed(source)
            self._send_result(reply, None, error)
            return
        if is_coroutine:
            self._drive(result, reply)
        else:
            self._send_result(reply, result, None)

    def _dispatch_result(self, source: str, data: bytes | memoryview) -> None:
        call_id, cursor = decode_zigzag_long(data, 0)
        pending = self._pending.get(call_id)
        if pending is None or pending.destination != source:
            # Logged, so replay meets it again and ignores it again: deterministic.
            logger.error(
                "%s: result from %s for call id %d ignored: %s",
                self.instance,
                source,
                call_id,
                "no such call is waiting"
                if pending is None
                else f"that call went to {pending.destination}",
            )
            return
        del self._pending[call_id]
        status = data[cursor]
        payload = bytes(data[cursor + 1 :])
        try:
            if status == 0:
                pending.value = codec.decode_value(payload, self.resolve_proxy)
            else:
                type_name, message = codec.decode_args(payload, self.resolve_proxy)
                pending.error = RemoteCallError(str(type_name), str(message))
        except (ProtocolError, BindingError, ValueError) as error:
            # The awaiting handler still resumes (deterministically) and sees the defect.
            pending.error = RemoteCallError(type(error).__name__, f"undecodable result: {error}")
        pending.done = True
        waiter = pending.waiter
        if waiter is not None:
            pending.waiter = None
            self._suspended -= 1
            self._drive(waiter[0], waiter[1])

    def _drive(self, coroutine: Coroutine[Any, Any, Any], reply: Reply) -> None:
        """Run a handler coroutine until it suspends on a call or finishes."""
        try:
            awaited = coroutine.send(None)
        except StopIteration as stop:
            if reply is not None:
                self._send_result(reply, stop.value, None)
            return
        except Exception as error:
            self._handler_failed(reply[0] if reply else self.instance)
            if reply is not None:
                self._send_result(reply, None, error)
            return
        if type(awaited) is not PendingCall:
            coroutine.close()
            refusal = HandlerAwaitError(
                f"a handler of {self.instance} awaited {awaited!r}; handlers may only await "
                "calls to immortals (use a self-call or an impulse to bring in outside events)"
            )
            logger.error("%s", refusal)
            if reply is not None:
                self._send_result(reply, None, refusal)
            return
        awaited.waiter = (coroutine, reply)
        self._suspended += 1

    # -- the coordinator's side (``ambrosia.coordinator.binding_port.Binding``) ---------

    # The in-process binding checkpoints after the first page it is quiescent at.
    checkpoint_when_primary = False

    async def deliver(self, page: Page) -> None:
        """Run every call of a durable page, in log order."""
        # Where the dispatcher is, for the watchdog to name a stuck call: set per page and
        # per group, never per message (the call's own position is a local of ``dispatch``).
        self.page_sequence = page.sequence
        for group in page.groups:
            self.group_first_seq = group.first_seq
            data = group.messages
            end = len(data)
            if type(data) is not bytes and end < group.count * _COPY_GROUP_BELOW_MESSAGE_BYTES:
                data = bytes(data)
            position = 0
            while position < end:
                if self.blocked:
                    # A full output buffer holds up the next handler, whichever page it is on.
                    await self.unblocked.wait()
                position = self.dispatch(group.source, data, position, end)

    async def end_replay(self) -> None:
        """Nothing to wait for: replay ran the handlers synchronously."""

    async def load_checkpoint(self, binding: Any, state: bytes) -> None:
        app = self._app_factory()
        state_codec.load_attributes(app, state, resolve_proxy=self.resolve_proxy)
        self.replace_app(app)
        self.restore_binding_state(binding)

    async def initial_checkpoint(self) -> tuple[dict[str, Any], bytes]:
        return self._state()

    async def take_checkpoint(self) -> tuple[dict[str, Any], bytes] | None:
        return self._state() if self.quiescent else None

    def _state(self) -> tuple[dict[str, Any], bytes]:
        return dict(self.binding_state()), state_codec.dump_attributes(self.app, exclude=set())

    async def become_primary(self) -> None:
        self.start_task(self._become_primary())

    async def _become_primary(self) -> None:
        try:
            await self.app.on_become_primary()
        except Exception:
            logger.exception("%s: on_become_primary failed", self.instance)

    def blocked_on(self, stream: Any) -> bool:
        return stream in self.blocked

    def running_call(self) -> RunningCall | None:
        return call_on_stack()

    def describe_call(self, call: object) -> str:
        assert isinstance(call, RunningCall)
        return f"{call.describe()}: {method_called(self.app, call)}"

    def close(self) -> None:
        self.stop_tasks()

    # -- checkpoint support ----------------------------------------------------------

    def binding_state(self) -> dict[str, int | bool]:
        return {"next_call_id": self.next_call_id, "started": self.started}

    def restore_binding_state(self, values: dict[str, Any]) -> None:
        self.next_call_id = int(values["next_call_id"])
        self.started = bool(values["started"])


# -- what a stuck dispatcher is running (read from another thread) ------------------------


@dataclass(frozen=True, slots=True)
class RunningCall:
    """The logged call a ``Dispatcher.dispatch`` frame is running.

    Equal values mean the same call at the same moment of dispatch; ``seq`` is only
    worked out when asked (it walks the group up to the call), so a watchdog can compare
    samples every second without competing with the dispatcher for the CPU.
    """

    instance: str
    source: str
    position: int  # the call's first byte in its logged group
    group_first_seq: int  # -1 when unknown
    page_sequence: int  # the log page holding it; -1 when unknown
    replaying: bool
    group: bytes | memoryview = field(compare=False, repr=False)

    @property
    def seq(self) -> int | None:
        """The call's number in its source's stream; None when unknown."""
        if self.group_first_seq < 0:
            return None
        index = _message_index(self.group, self.position)
        return None if index is None else self.group_first_seq + index

    def describe(self) -> str:
        seq = self.seq
        call = f"call {seq}" if seq is not None else "a call"
        page = f", log page {self.page_sequence}" if self.page_sequence >= 0 else ""
        during = ", during replay" if self.replaying else ""
        return f"{call} from {self.source}{page}{during}"


# None in the compiled build (mypyc, ``AMBROSIA_MYPYC=1``): a compiled ``dispatch`` runs
# without a Python frame, so a watchdog or a divergence report cannot see which call it
# is on and says "unknown" instead. Naming it there would cost the hot path a store per
# message, which is what reading the frame's locals avoids.
_DISPATCH_CODE: CodeType | None = getattr(Dispatcher.dispatch, "__code__", None)


def running_call(frame: FrameType) -> RunningCall | None:
    """The call ``frame`` is dispatching, if it is a frame of ``Dispatcher.dispatch``.

    For a watchdog thread looking at the main thread's stack: the message being run is
    where ``dispatch``'s local ``position`` points, so naming it costs the dispatcher
    nothing, where recording each message's position would cost the hot path a store per
    message. The locals only change between bytecodes, and this runs with the GIL, so
    they are consistent; a value that does not parse still only yields "unknown".
    """
    if _DISPATCH_CODE is None or frame.f_code is not _DISPATCH_CODE:
        return None
    values = frame.f_locals
    dispatcher = values.get("self")
    group = values.get("data")
    position = values.get("position")
    if (
        not isinstance(dispatcher, Dispatcher)
        or not isinstance(group, bytes | memoryview)
        or not isinstance(position, int)
    ):
        return None
    return RunningCall(
        instance=dispatcher.instance,
        source=str(values.get("source")),
        position=position,
        group_first_seq=dispatcher.group_first_seq,
        page_sequence=dispatcher.page_sequence,
        replaying=dispatcher.replaying,
        group=group,
    )


def _message_index(group: bytes | memoryview, position: int) -> int | None:
    """How many messages of a group precede byte ``position``; None if it is no boundary."""
    index = 0
    cursor = 0
    try:
        while cursor < position:
            size, start = decode_zigzag_long(group, cursor)
            cursor = start + size
            index += 1
    except (Incomplete, IndexError, ValueError):
        return None
    return index if cursor == position else None


def call_on_stack() -> RunningCall | None:
    """The logged call this thread's dispatcher is running, if it is on the stack.

    For recovery's checks (``Runtime``), from inside whatever a handler called: walks up
    to the ``dispatch`` frame, so it costs nothing unless asked.
    """
    if _DISPATCH_CODE is None:
        return None
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _DISPATCH_CODE:
            return running_call(frame)
        frame = frame.f_back
    return None


def method_called(app: object, call: RunningCall) -> str:
    """What ``call`` runs: ``Class.method``, or a result resuming an awaiting handler."""
    data = call.group
    try:
        _, start = decode_zigzag_long(data, call.position)
        if data[start] != TYPE_RPC:
            return "a message that is not a call"
        if data[start + 1] == RESERVED_RESULT:
            return "a result, resuming the handler that awaited it"
        method_id, _ = decode_zigzag_long(data, start + 2)
    except (Incomplete, IndexError, ValueError):
        return "a call that does not parse"
    cls = type(app)
    for info in method_table(cls).values():
        if info.method_id == method_id:
            return f"{cls.__qualname__}.{info.name}"
    return f"method id {method_id} of {cls.__qualname__}"
