"""Time travel and retroactive testing: replay a recorded log, one call at a time.

A replay opens the instance's log read-only (no lease, no write: it can run beside the
live primary), restores a checkpoint and dispatches every later logged call in log order,
as recovery does, but one message at a time, so a caller can look at each call before it
runs, stop at one (``ambrosia debug``) or compare what the code does with what the
recorded run did (``ambrosia replay-test``).

What the recorded run did is taken from the logs. Every message an instance sends is
logged by its receiver, numbered by the sender's output stream to that receiver: its
calls to a peer (and the results it returns to the peer's awaited calls) are in the
peer's log, its self-calls in its own. Replaying the log with other code regenerates the
output streams from the checkpoint's numbers on; the first message whose bytes differ from
the recorded message of the same number is the first divergence, reported with the call
that produced it. Impulses (outside input, among them the time-carrying self-call idiom:
a background task passes the time in through an impulse) are logged inputs, replayed as
recorded, and never count as a divergence.
"""

from __future__ import annotations

import argparse
import asyncio
import bdb
import pdb
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from ambrosia.backends import open_store
from ambrosia.binding import codec
from ambrosia.binding import state as state_codec
from ambrosia.binding.dispatcher import Dispatcher
from ambrosia.binding.immortal import METHOD_ID_FIRST_START, Immortal, method_table
from ambrosia.coordinator.recovery import recover
from ambrosia.coordinator.runtime import IMPULSE_SOURCE
from ambrosia.errors import (
    AmbrosiaError,
    ConfigError,
    LogError,
    NotFoundError,
    ProtocolError,
)
from ambrosia.log.page import PAGE_BYTES_MAX_DEFAULT, Page
from ambrosia.protocol.checkpoint import CheckpointState
from ambrosia.protocol.outputs import OutputStream
from ambrosia.wire.messages import KIND_ASYNC, KIND_FORK, KIND_IMPULSE, RESERVED_RESULT
from ambrosia.wire.varint import Incomplete, decode_zigzag_long

__all__ = [
    "Divergence",
    "LoggedCall",
    "Replay",
    "ReplayTestReport",
    "debug",
    "open_replay",
    "replay_test",
]

_ARGS_SHOWN_CHARS = 60
_UNBOUNDED = 1 << 62


class DebuggerQuit(BaseException):
    """The user quit pdb: the replay ends. A BaseException, so that the dispatcher does
    not take it for the handler's own failure."""


class ReplayError(AmbrosiaError):
    """A replay could not be set up or run as asked (a bad position, no such call)."""


@dataclass(frozen=True, slots=True)
class LoggedCall:
    """One logged message as a replay meets it.

    ``index``: its place among the calls of this replay, from 1. ``page``: the log page
    holding it. ``source`` and ``seq``: its sender and that sender's number for it.
    ``kind``: fork, async, impulse or result. ``method``: the handler's name (for a
    result, the call id it answers as ``result #N``).
    """

    index: int
    page: int
    source: str
    seq: int
    kind: str
    method: str
    args: str

    def describe(self) -> str:
        return (
            f"#{self.index} page {self.page} {self.source}#{self.seq} {self.kind} "
            f"{self.method}({self.args})"
        )


def _split(data: bytes | memoryview) -> Iterator[tuple[int, int]]:
    """The (start, stop) of each framed message in ``data``."""
    position = 0
    end = len(data)
    while position < end:
        try:
            size, start = decode_zigzag_long(data, position)
        except Incomplete as error:
            raise ProtocolError(f"truncated size at byte {position}") from error
        stop = start + size
        if size < 0 or stop > end:
            raise ProtocolError(f"message at byte {position} overruns its group")
        yield position, stop
        position = stop


def _short(value: str) -> str:
    return value if len(value) <= _ARGS_SHOWN_CHARS else value[: _ARGS_SHOWN_CHARS - 3] + "..."


def _known_method_names() -> dict[int, str]:
    """Method ids of every loaded immortal class, as ``Class.method`` (for the messages an
    instance sends: their ids are the receiver's)."""
    names: dict[int, str] = {}
    pending: list[type[Immortal]] = [Immortal]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        for name, info in method_table(cls).items():
            names.setdefault(info.method_id, f"{cls.__name__}.{name}")
    return names


class _Describer:
    """Names and short argument forms of RPC messages: those an application receives
    (``app_class``'s handler names) or sends (any loaded immortal class's)."""

    def __init__(self, dispatcher: Dispatcher, app_class: type[Immortal] | None) -> None:
        if app_class is None:
            self._names = _known_method_names()
        else:
            self._names = {info.method_id: name for name, info in method_table(app_class).items()}
        self._names[METHOD_ID_FIRST_START] = "on_first_start"
        self._dispatcher = dispatcher

    def describe(self, message: bytes) -> tuple[str, str, str]:
        """(kind, method, args) of one framed incoming RPC."""
        try:
            _, start = decode_zigzag_long(message, 0)
            reserved = message[start + 1]
            method_id, cursor = decode_zigzag_long(message, start + 2)
            kind = message[cursor]
            body = message[cursor + 1 :]
            if reserved == RESERVED_RESULT:
                call_id, at = decode_zigzag_long(body, 0)
                status = "ok" if body[at] == 0 else "error"
                return "result", f"result #{call_id}", status
            name = self._names.get(method_id, f"method {method_id}")
            if kind == KIND_ASYNC:
                _, at = decode_zigzag_long(body, 0)
                body = body[at:]
            label = {KIND_FORK: "fork", KIND_ASYNC: "async", KIND_IMPULSE: "impulse"}.get(
                kind, f"kind {kind}"
            )
            return label, name, self._args(body)
        except (Incomplete, IndexError, ProtocolError):
            return "?", "?", "undecodable"

    def _args(self, body: bytes) -> str:
        if body[:1] == b"\x00":
            return f"<{len(body) - 1} bytes>"
        try:
            args = codec.decode_args(body, self._dispatcher.resolve_proxy)
        except Exception:  # a short form only: never fail the replay over it
            return f"<{len(body)} bytes, undecodable>"
        return _short(", ".join(repr(arg) for arg in args))


class _Recorder:
    """The output streams of a replay; ``collect`` hands out what each call sent."""

    def __init__(self) -> None:
        self.streams: dict[str, OutputStream] = {}

    def open(self, destination: str) -> OutputStream:
        stream = OutputStream(
            destination,
            buffer_bytes_max=_UNBOUNDED,
            batch_bytes_max=_UNBOUNDED,
            on_dirty=lambda stream: None,
            on_blocked=lambda stream: None,
            on_unblocked=lambda stream: None,
        )
        self.streams[destination] = stream
        return stream

    def collect(self) -> list[tuple[str, int, bytes]]:
        """The messages sent since the last call: (destination, number, bytes)."""
        produced: list[tuple[str, int, bytes]] = []
        for destination, stream in self.streams.items():
            if not stream.open:
                continue
            new = bytes(stream.open)
            stream.open.clear()  # memory stays bounded by one call's output
            messages = [new[start:stop] for start, stop in _split(new)]
            first = stream.next_seq - len(messages) + 1
            produced.extend(
                (destination, first + offset, message) for offset, message in enumerate(messages)
            )
        return produced


class Replay:
    """A read-only replay of one instance's log; see the module docstring.

    ``calls()`` yields each logged call before it runs; ``run_next()`` runs the one just
    yielded. ``app`` is the application object as of the last call run.
    """

    def __init__(
        self,
        instance: str,
        app_class: type[Immortal],
        checkpoint: CheckpointState,
        pages: list[tuple[int, Page]],
    ) -> None:
        self.instance = instance
        self.app_class = app_class
        self.checkpoint = checkpoint
        self.pages = pages
        self.recorder = _Recorder()

        def refuse(message: bytes) -> None:
            raise ReplayError("a replay logs no impulses")

        self.dispatcher = Dispatcher(instance, app_class(), self._open_stream, refuse)
        app = app_class()
        state_codec.load_attributes(app, checkpoint.app, self.dispatcher.resolve_proxy)
        self.dispatcher.replace_app(app)
        self.dispatcher.restore_binding_state(checkpoint.binding)
        self.dispatcher.replaying = True
        for destination in checkpoint.outputs:
            self._open_stream(destination)
        self_stream = self._open_stream(instance)
        if (
            not self.dispatcher.started
            and self_stream.next_seq == 0
            and any(group.source == instance for _, page in pages for group in page.groups)
        ):
            # The first-start call entered the self-stream from the runtime, not from a
            # handler: number it as the recorded life did (``Runtime.start``).
            self_stream.add(self.dispatcher.first_start_message(), b"")
        self._describer = _Describer(self.dispatcher, app_class)
        self._sent_describer = _Describer(self.dispatcher, None)
        self._pending: tuple[str, bytes] | None = None
        self.ran = 0

    def migrate(self, new_class: type[Immortal]) -> None:
        """Go on with ``new_class.upgrade_from(app)``: a live upgrade's state migration."""
        self.dispatcher.replace_app(new_class.upgrade_from(self.app))
        self.app_class = new_class
        self._describer = _Describer(self.dispatcher, new_class)

    def _open_stream(self, destination: str) -> OutputStream:
        stream = self.recorder.streams.get(destination)
        if stream is None:
            stream = self.recorder.open(destination)
            output = self.checkpoint.outputs.get(destination)
            if output is not None:
                stream.next_seq = output.next_seq
        return stream

    @property
    def app(self) -> Immortal:
        return self.dispatcher.app

    def calls(self) -> Iterator[LoggedCall]:
        """Each logged call in log order, before it runs (call ``run_next`` to run it)."""
        index = 0
        for _, page in self.pages:
            for group in page.groups:
                data = bytes(group.messages)
                for offset, (start, stop) in enumerate(_split(data)):
                    message = data[start:stop]
                    index += 1
                    kind, method, args = self._describer.describe(message)
                    self._pending = (group.source, message)
                    yield LoggedCall(
                        index, page.sequence, group.source, group.first_seq + offset, kind,
                        method, args,
                    )  # fmt: skip
                    if self._pending is not None:
                        raise ReplayError("calls() continued without run_next()")

    def run_next(self) -> list[tuple[str, int, bytes]]:
        """Run the call ``calls()`` last yielded; the messages it sent."""
        if self._pending is None:
            raise ReplayError("run_next() without a call from calls()")
        source, message = self._pending
        self._pending = None
        position = self.dispatcher.dispatch(source, message, 0, len(message))
        if position != len(message):
            raise ReplayError("a replay's streams never block")  # pragma: no cover
        self.ran += 1
        return self.recorder.collect()

    def run_to_end(self) -> Immortal:
        for _ in self.calls():
            self.run_next()
        return self.app


async def _reading(
    log_url: str, instance: str, checkpoint: int | None, store_options: Mapping[str, Any]
) -> tuple[CheckpointState, list[tuple[int, Page]]]:
    store = await open_store(log_url, instance, **dict(store_options))
    try:
        reading = await recover(store, PAGE_BYTES_MAX_DEFAULT, checkpoint=checkpoint)
    finally:
        await store.close()
    if reading.checkpoint is None:
        raise ReplayError(f"{instance} has no log in {log_url} (it never started)")
    return reading.checkpoint, reading.pages


async def open_replay(
    log_url: str,
    instance: str,
    app_class: type[Immortal],
    *,
    checkpoint: int | None = None,
    store_options: Mapping[str, Any] | None = None,
) -> Replay:
    """A replay of ``instance``'s log from ``checkpoint`` (None: the latest usable)."""
    state, pages = await _reading(log_url, instance, checkpoint, store_options or {})
    return Replay(instance, app_class, state, pages)


# -- debugging -----------------------------------------------------------------------------


def _break_target(replay: Replay, spec: str) -> str:
    """The method name ``--break Class.method`` (or ``method``) names on the app."""
    class_name, _, method = spec.rpartition(".")
    if class_name and class_name != replay.app_class.__name__:
        raise ConfigError(
            f"--break {spec}: the replayed class is {replay.app_class.__name__}, not {class_name}"
        )
    if method not in method_table(replay.app_class) and method != "on_first_start":
        known = ", ".join(sorted(method_table(replay.app_class)))
        raise ConfigError(
            f"--break {spec}: {replay.app_class.__name__} has no handler {method!r} "
            f"(handlers: {known})"
        )
    return method


def debug(
    replay: Replay,
    *,
    until_page: int | None = None,
    until_call: int | None = None,
    break_at: str | None = None,
    print_calls: bool = False,
    out: TextIO | None = None,
    debugger: Callable[[Replay, LoggedCall], None] | None = None,
) -> LoggedCall | None:
    """Replay until a stop; return the call stopped at (None: the log's end).

    Stops before the first call past ``until_page``, after call ``until_call`` has run,
    or at each call of the handler ``break_at`` (then ``debugger`` runs, by default pdb
    in that handler; the replay goes on when it returns, to the next stop).
    """
    stream = out or sys.stdout
    method = _break_target(replay, break_at) if break_at else None
    enter = debugger or _enter_pdb
    for call in replay.calls():
        if until_page is not None and call.page > until_page:
            replay._pending = None
            print(f"stopped before page {call.page}: {replay.ran} call(s) replayed", file=stream)
            return call
        if print_calls:
            print(call.describe(), file=stream, flush=True)
        if method is not None and call.method == method:
            print(f"break at {call.describe()}", file=stream, flush=True)
            enter(replay, call)
        replay.run_next()
        if until_call is not None and call.index >= until_call:
            print(f"stopped after call #{call.index}: {call.describe()}", file=stream)
            return call
    print(f"end of the log: {replay.ran} call(s) replayed", file=stream)
    if until_call is not None and replay.ran < until_call:
        raise ReplayError(
            f"the log holds {replay.ran} call(s) after the checkpoint, not {until_call}"
        )
    return None


def _enter_pdb(replay: Replay, call: LoggedCall) -> None:
    """Stop in pdb when the handler of the next ``run_next`` is called (at its call,
    with its arguments bound: 'n' steps through it, 'c' goes on to the next stop)."""
    info = method_table(replay.app_class).get(call.method)
    if info is None:  # the first start: no handler of the class's own to step into
        pdb.Pdb().set_trace(sys._getframe(1))
        return
    handlers = replay.dispatcher._handlers
    original = handlers[info.method_id]
    function, is_coroutine = original
    print(
        f"(in {replay.app_class.__name__}.{call.method}: 'p <argument>' and "
        "'p vars(self)' show the call and the state; 'n' steps, 'c' goes on)",
        flush=True,
    )

    def once(*args: Any) -> Any:
        handlers[info.method_id] = original
        debugger = pdb.Pdb()
        result = debugger.runcall(function, *args)
        if debugger.quitting:  # 'q': the whole replay ends, not just this call
            raise DebuggerQuit
        return result

    async def once_async(*args: Any) -> Any:
        handlers[info.method_id] = original
        pdb.Pdb().set_trace()
        return await function(*args)

    handlers[info.method_id] = (once_async if is_coroutine else once, is_coroutine)


# -- retroactive testing ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where the replayed code first did something else than the recorded run."""

    call: LoggedCall
    destination: str
    seq: int
    recorded: str
    replayed: str

    def describe(self) -> str:
        return (
            f"divergence at {self.call.describe()}:\n"
            f"  message {self.seq} to {self.destination}\n"
            f"  recorded: {self.recorded}\n"
            f"  replayed: {self.replayed}"
        )


@dataclass(slots=True)
class ReplayTestReport:
    """The outcome of ``replay_test``: ``divergence`` None means none was found."""

    instance: str
    calls: int = 0
    compared: int = 0
    divergence: Divergence | None = None
    unchecked: dict[str, str] = field(default_factory=dict)  # destination -> why

    @property
    def ok(self) -> bool:
        """No divergence in what was compared (see ``complete``)."""
        return self.divergence is None

    @property
    def complete(self) -> bool:
        """Every destination's messages could be compared (none in ``unchecked``)."""
        return not self.unchecked

    @property
    def exit_status(self) -> int:
        """The commands' exit status: 0 passed, 1 diverged, 4 incomplete (nothing
        diverged in what was compared, but some destination's messages could not be)."""
        if self.divergence is not None:
            return 1
        return 0 if self.complete else 4

    def describe(self) -> str:
        lines = [
            f"{self.instance}: {self.calls} call(s) replayed, "
            f"{self.compared} sent message(s) compared with the recorded run"
        ]
        for destination, why in sorted(self.unchecked.items()):
            lines.append(f"  not compared: messages to {destination}: {why}")
        if self.divergence is not None:
            lines.append(self.divergence.describe())
        elif self.unchecked:
            lines.append(
                f"nothing diverged in what was compared, but the messages to "
                f"{len(self.unchecked)} destination(s) were not compared: incomplete"
            )
        else:
            lines.append("no divergence")
        return "\n".join(lines)


async def _recorded_from(
    source: str,
    destination: str,
    log_url: str,
    store_options: Mapping[str, Any],
) -> dict[int, bytes]:
    """Messages ``source`` sent that ``destination``'s log holds, by number.

    The destination may be running: its oldest checkpoint can be pruned between the
    listing and the read (a newer one was taken). The read is then tried again from the
    oldest one listed now; a checkpoint that stays unreadable is an error.
    """
    checkpoint = await _oldest_checkpoint(log_url, destination, store_options)
    for attempt in range(_PRUNED_CHECKPOINT_ATTEMPTS):
        try:
            _, pages = await _reading(log_url, destination, checkpoint, store_options)
            break
        except (LogError, NotFoundError):
            now = await _oldest_checkpoint(log_url, destination, store_options)
            if now == checkpoint or attempt == _PRUNED_CHECKPOINT_ATTEMPTS - 1:
                raise
            checkpoint = now
    recorded: dict[int, bytes] = {}
    for _, page in pages:
        for group in page.groups:
            if group.source != source:
                continue
            data = bytes(group.messages)
            for offset, (start, stop) in enumerate(_split(data)):
                recorded[group.first_seq + offset] = data[start:stop]
    return recorded


# Reads of a running peer's log tried while its oldest checkpoint keeps being pruned.
_PRUNED_CHECKPOINT_ATTEMPTS = 5


async def _oldest_checkpoint(
    log_url: str, instance: str, store_options: Mapping[str, Any]
) -> int | None:
    store = await open_store(log_url, instance, **dict(store_options))
    try:
        numbers = await store.list_checkpoints()
    finally:
        await store.close()
    return min(numbers) if numbers else None


async def replay_test(
    log_url: str,
    instance: str,
    app_class: type[Immortal],
    *,
    checkpoint: int | None = None,
    peer_logs: Mapping[str, str] | None = None,
    store_options: Mapping[str, Any] | None = None,
    migrate_from: type[Immortal] | None = None,
) -> ReplayTestReport:
    """Replay ``instance``'s log with ``app_class`` and find the first divergence.

    ``peer_logs`` maps a peer to its log URL when it is not ``log_url``. A peer whose log
    cannot be read is listed in ``report.unchecked`` with why. ``migrate_from``: the
    upgrade test (``ambrosia upgrade --test``): the checkpoint is loaded with this (old)
    class and migrated with ``app_class.upgrade_from`` before the replay.
    """
    options = store_options or {}
    replay = await open_replay(
        log_url, instance, migrate_from or app_class, checkpoint=checkpoint, store_options=options
    )
    if migrate_from is not None:
        replay.migrate(app_class)
    report = ReplayTestReport(instance)
    recorded: dict[str, dict[int, bytes] | None] = {}

    async def recorded_for(destination: str) -> dict[int, bytes] | None:
        if destination not in recorded:
            url = (peer_logs or {}).get(destination, log_url)
            try:
                recorded[destination] = await _recorded_from(instance, destination, url, options)
            except AmbrosiaError as error:
                report.unchecked[destination] = f"{type(error).__name__}: {error}"
                recorded[destination] = None
        return recorded[destination]

    describer = replay._sent_describer
    for call in replay.calls():
        sent = replay.run_next()
        report.calls += 1
        for destination, seq, message in sent:
            if destination == IMPULSE_SOURCE:
                continue
            known = await recorded_for(destination)
            if known is None or seq not in known:
                continue
            report.compared += 1
            if destination == instance:
                # A self-call: its arguments may carry what the handler read (the time)
                # and the logged ones win on replay; the method and kind must match.
                same = _call_head(known[seq]) == _call_head(message)
            else:
                same = known[seq] == message
            if not same:
                report.divergence = Divergence(
                    call,
                    destination,
                    seq,
                    _message_text(describer, known[seq]),
                    _message_text(describer, message),
                )
                return report
    return report


def _call_head(message: bytes) -> bytes:
    """Type, reserved byte, method id and kind of a framed RPC."""
    try:
        _, start = decode_zigzag_long(message, 0)
        _, cursor = decode_zigzag_long(message, start + 2)
    except (Incomplete, IndexError):
        return message
    return message[start : cursor + 1]


def _message_text(describer: _Describer, message: bytes) -> str:
    kind, method, args = describer.describe(message)
    return f"{kind} {method}({args})"


# -- the commands ----------------------------------------------------------------------------


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """``ambrosia debug`` and ``ambrosia replay-test``."""
    debugging = commands.add_parser(
        "debug",
        parents=[common],
        help="replay an instance's log read-only and stop in pdb at a chosen call",
    )
    debugging.add_argument("name")
    _replay_arguments(debugging)
    until = debugging.add_mutually_exclusive_group()
    until.add_argument(
        "--until", type=int, metavar="PAGE", help="stop before the first call past PAGE"
    )
    until.add_argument(
        "--until-call",
        type=int,
        metavar="K",
        help="stop after call K (as --print-calls numbers them)",
    )
    debugging.add_argument(
        "--break",
        dest="break_at",
        metavar="Class.method",
        help="stop in pdb at each call of this handler",
    )
    debugging.add_argument("--print-calls", action="store_true", help="list each replayed call")
    debugging.set_defaults(handler=_debug_command)

    testing = commands.add_parser(
        "replay-test",
        parents=[common],
        help=(
            "replay an instance's log with new code; report the first divergence (exit 1; "
            "4 when a peer's messages could not be compared)"
        ),
    )
    testing.add_argument("name")
    _replay_arguments(testing)
    testing.set_defaults(handler=_replay_test_command)


def _replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", help="module:Class to replay with (default: the registered one)")
    parser.add_argument(
        "--checkpoint", type=int, metavar="N", help="start from checkpoint N (default: the latest)"
    )
    parser.add_argument("--log", help="log URL (default: deployment file, then registration)")


def _where(args: argparse.Namespace) -> tuple[str, type[Immortal], dict[str, str]]:
    """The log URL, the application class and the peers' log URLs of ``args.name``."""
    from ambrosia.catalog import Catalog, run_with_catalog
    from ambrosia.deployment import load_deployment
    from ambrosia.host import load_app

    deployment = load_deployment(getattr(args, "config", None))

    async def look_up(catalog: Catalog) -> tuple[str, str | None, dict[str, str]]:
        records = {record.name: record for record in await catalog.list()}
        record = records.get(args.name)
        log_url = deployment.log_for(args.name, args.log)
        if log_url is None:
            if record is None:
                raise ConfigError(f"{args.name} is not registered and no --log was given")
            log_url = record.log_url
        peers = {
            name: deployment.log_for(name, None) or peer.log_url for name, peer in records.items()
        }
        return log_url, None if record is None else record.app, peers

    log_url, registered_app, peers = run_with_catalog(
        deployment.catalog_for(getattr(args, "catalog", None)), look_up
    )
    spec = args.app or registered_app
    if spec is None:
        raise ConfigError(f"{args.name} has no registered application: give --app module:Class")
    return log_url, load_app(spec), peers


def _debug_command(args: argparse.Namespace) -> int:
    log_url, app_class, _ = _where(args)
    replay = asyncio.run(open_replay(log_url, args.name, app_class, checkpoint=args.checkpoint))
    print(
        f"replaying {args.name} from checkpoint {replay.checkpoint.number}: "
        f"{len(replay.pages)} page(s), read-only",
        flush=True,
    )
    try:
        stop = debug(
            replay,
            until_page=args.until,
            until_call=args.until_call,
            break_at=args.break_at,
            print_calls=args.print_calls,
        )
        if stop is not None:
            _inspect(replay.app, stop)
    except (bdb.BdbQuit, DebuggerQuit):
        print("debugger quit", flush=True)
    return 0


def _inspect(app: Immortal, call: LoggedCall) -> None:
    """pdb where the replay stopped: ``app`` is the state, ``call`` where it is."""
    print("(the state is 'app', the call 'call'; 'p vars(app)' shows it, 'c' ends)", flush=True)
    pdb.Pdb().set_trace()
    stopped_at = (app, call)  # where pdb shows the stop, with both in scope
    del stopped_at


def _replay_test_command(args: argparse.Namespace) -> int:
    log_url, app_class, peers = _where(args)
    report = asyncio.run(
        replay_test(log_url, args.name, app_class, checkpoint=args.checkpoint, peer_logs=peers)
    )
    print(report.describe())
    return report.exit_status
