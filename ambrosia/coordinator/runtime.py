"""The coordinator of one immortal, driving its binding (``binding_port``).

The binding is the in-process dispatcher (``ambrosia run``, the fast path) or a binding
process on two loopback sockets (``ambrosia coordinator``); ``ambrosia.host`` chooses.

Start-up is recovery; a first start is recovery from an empty log:

1. take the writer lease (one writer per instance, fenced by the store);
2. audit the log and load the latest usable checkpoint (``recovery``: the audit
   ``ambrosia log`` runs; on a first start: write checkpoint 0 of the freshly
   constructed state first);
3. restore connection state: input high-water marks (checkpoint + logged groups), output
   buffers (checkpoint) and what receivers already consumed (logged trim points), so
   regenerated output that was consumed is dropped instead of buffered;
4. start a NEW chunk (the old last chunk may end in a torn write that cloud stores cannot
   truncate) and record it in the metadata before writing into it; start the committer,
   the peer listener and the outgoing links;
5. replay the logged pages through the binding (impulses refused meanwhile);
6. become primary: log the first-start call if it never was, ask for a checkpoint,
   run ``on_become_primary``.

After that, durable pages flow from the committer to the binding in order, outputs
flow to peers, acknowledgements free them and are logged as trim points, and a
checkpoint is taken at a quiescent page boundary whenever the current chunk passes
``checkpoint_log_bytes`` or one is requested.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import gc
import logging
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ambrosia.backends.base import ChunkRange, Lease, LogStore
from ambrosia.backends.retry import DEFAULT_RETRY_POLICY, RetryPolicy, call_with_retry
from ambrosia.coordinator.binding_port import Binding, BindingHost, BindingState
from ambrosia.coordinator.committer import Committer, DurablePage
from ambrosia.coordinator.links import KEEPALIVE, IncomingLink, OutgoingLink
from ambrosia.coordinator.listener import Listener
from ambrosia.coordinator.metadata import MetadataKeeper
from ambrosia.coordinator.metrics import CoordinatorMetrics, register_runtime
from ambrosia.coordinator.recovery import read_checkpoint, recover
from ambrosia.coordinator.tls import TlsContexts, TlsSettings, load_contexts
from ambrosia.errors import (
    AmbrosiaError,
    ConfigError,
    InstanceNotFoundError,
    LogCorruptError,
    LostAcknowledgedError,
    OutputDivergenceError,
)
from ambrosia.log.page import Page, decode_page, instance_id_for
from ambrosia.names import validate_instance_name
from ambrosia.protocol.checkpoint import CheckpointState, OutputState, encode_checkpoint
from ambrosia.protocol.inputs import InputMarks
from ambrosia.protocol.outputs import OutputStream, Segment
from ambrosia.protocol.recovery_plan import kept_checkpoints, plan_recovery
from ambrosia.protocol.selfcalls import SelfCallAudit
from ambrosia.wire.messages import PEER_PROTOCOL_VERSION, Hello

logger = logging.getLogger("ambrosia.coordinator")

IMPULSE_SOURCE = "@impulses"
# Descriptors kept free of peer connections: the log's chunk files, checkpoints, the
# catalog, outgoing links (counted separately) and whatever the application opens.
_DESCRIPTORS_RESERVED = 64
MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Config:
    """Limits and knobs of one coordinator (unit last in every name)."""

    page_bytes_max: int = 8 * MiB
    delivery_pages_max: int = 4
    delivery_backlog_bytes_max: int = 1024 * MiB
    output_buffer_bytes_max: int = 32 * MiB
    # Results to a peer that said it holds our input (InputHeld) keep its input read up
    # to this many buffered bytes (see ``outputs``); beyond, its input is held anyway.
    output_buffer_paused_peer_bytes_max: int = 128 * MiB
    batch_bytes_max: int = 1 * MiB
    message_bytes_max: int = 4 * MiB
    frame_bytes_max: int = 16 * MiB
    socket_buffer_bytes: int = 4 * MiB
    checkpoint_log_bytes: int = 256 * MiB
    checkpoints_kept: int = 2
    # Checkpoints taken by a standby (``ambrosia.coordinator.checkpointer``):
    # ``checkpointer``: this process, while a standby, writes them; as primary, every
    # process adopts them when a checkpointer is alive (its status read every
    # ``checkpointer_check_s``; 0: never, always checkpoint itself), not silent for
    # ``checkpointer_silent_s`` and at most ``checkpointer_lag_pages_max`` pages behind;
    # a candidate not come before its chunk holds ``checkpointer_wait_bytes`` (0: as
    # many as ``checkpoint_log_bytes``) is given up for a checkpoint of its own.
    checkpointer: bool = False
    checkpointer_check_s: float = 1.0
    checkpointer_silent_s: float = 5.0
    checkpointer_lag_pages_max: int = 10_000
    checkpointer_wait_bytes: int = 0
    # A link redials a peer it lost with exponential backoff up to the max (times 0.5 to
    # 1.5). The max bounds how long a peer that is back (a standby that took over)
    # waits to be dialled; a dial is a refused connect, and the catalog lookup behind
    # it is cached for a second (``host._CatalogResolver``), so a low max is cheap.
    reconnect_delay_min_s: float = 0.02
    reconnect_delay_max_s: float = 0.25
    # A connected link looks its peer's address up again this often, and reconnects
    # when it changed (a standby took over elsewhere); 0: never while connected.
    peer_address_check_s: float = 1.0
    connect_timeout_s: float = 5.0
    lease_wait_s: float = 30.0
    lease_renew_interval_s: float = 10.0
    impulse_backlog_max: int = 100_000
    # Peer connections (see ``Runtime.incoming_opened``): at most this many at once, fewer
    # if the descriptor limit (RLIMIT_NOFILE) leaves less beside the log, checkpoints and
    # outgoing links; one beyond is closed at once.
    incoming_connections_max: int = 512
    # No admitted Hello within this time after connecting: closed.
    handshake_timeout_s: float = 10.0
    # A frame begun but not completed for this long (slow loris): closed.
    incoming_frame_timeout_s: float = 30.0
    # Nothing at all received from an admitted peer for this long: closed. Senders write
    # a keepalive (an empty Ping) after ``keepalive_interval_s`` without a batch, so a
    # healthy idle peer is never cut off; keep the interval well below the timeout.
    incoming_idle_timeout_s: float = 60.0
    keepalive_interval_s: float = 15.0
    # Process-level knobs used by ``ambrosia.host`` (see ``ambrosia.watchdog``):
    # a handler running longer than this is named in a warning (0: never);
    handler_warning_s: float = 10.0
    # after SIGTERM/SIGINT, a stop that has not finished by then becomes an immediate exit.
    shutdown_grace_s: float = 10.0
    persist: bool = True  # False skips the log write: only to measure what durability costs
    retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY
    # Mutual TLS on every link (``ambrosia.coordinator.tls``); None: plain TCP. The
    # in-process default is plain TCP; ``ambrosia run`` makes users choose explicitly.
    tls: TlsSettings | None = None
    # A TLS client that has not finished its handshake by then is disconnected.
    tls_handshake_timeout_s: float = 10.0


Resolver = Callable[[str], Awaitable[tuple[str, int]]]


class _ReplayPlaces:
    """Where replay regenerated one output stream's messages: (first seq, place) runs.

    Recorded only while replaying, per regenerated message (never while running), so
    that a difference found later, when the receiver names its resume point, still
    names the page and call that produced the message. A place is (log page, the call
    being run or None); a run is noted when the place changes. At most ``RUNS_MAX``
    runs: beyond, places are unknown.
    """

    RUNS_MAX = 100_000
    __slots__ = ("first_seqs", "full_at", "places")

    def __init__(self) -> None:
        self.first_seqs: list[int] = []
        self.places: list[tuple[int, Any]] = []
        self.full_at: int | None = None

    def note(self, seq: int, place: tuple[int, Any]) -> None:
        places = self.places
        if (places and places[-1] == place) or self.full_at is not None:
            return
        if len(places) >= self.RUNS_MAX:
            self.full_at = seq
            return
        self.first_seqs.append(seq)
        places.append(place)

    def find(self, seq: int) -> tuple[int, Any] | None:
        if self.full_at is not None and seq >= self.full_at:
            return None
        index = bisect.bisect_right(self.first_seqs, seq) - 1
        return self.places[index] if index >= 0 else None


class _Watch:
    """What the deadlines remember of one peer connection (see ``Runtime._sweep_loop``)."""

    __slots__ = ("bytes_seen", "frames_seen", "opened_at", "progress_at", "quiet_at")

    def __init__(self, now: float) -> None:
        self.opened_at = now
        self.bytes_seen = 0
        self.frames_seen = 0
        self.progress_at = now  # the last time a frame completed (or the link was held)
        self.quiet_at = now  # the last time any byte arrived

    def expired(self, link: IncomingLink, now: float, config: Config) -> str | None:
        if link.bytes_received != self.bytes_seen:
            self.bytes_seen = link.bytes_received
            self.quiet_at = now
        if link.frames_received != self.frames_seen:
            self.frames_seen = link.frames_received
            self.progress_at = now
        if not link.reading:
            # Input held back on purpose (page full, output over its bound, admission
            # under way) is our delay, not the peer's.
            self.progress_at = self.quiet_at = now
        if not link.admitted:
            if not link.admitting and now - self.opened_at > config.handshake_timeout_s:
                return f"no Hello within {config.handshake_timeout_s} s"
            return None
        if link.reader.has_partial_frame:
            if now - self.progress_at > config.incoming_frame_timeout_s:
                return f"a frame made no progress for {config.incoming_frame_timeout_s} s"
        elif now - self.quiet_at > config.incoming_idle_timeout_s:
            return f"nothing received for {config.incoming_idle_timeout_s} s"
        else:
            link.reader.shrink()  # quiet between frames: give a grown buffer back
        return None


class Runtime:
    """One immortal: coordinator and binding in one process, on one event loop."""

    def __init__(
        self,
        *,
        instance: str,
        binding: Callable[[BindingHost], Binding],
        store: LogStore,
        listen: tuple[str, int],
        resolve: Resolver,
        config: Config | None = None,
    ) -> None:
        self.instance = instance
        self._binding_factory = binding
        self.store = store
        self.listen_address = listen
        self._resolve = resolve
        self.config = config or Config()
        # Loaded here, before anything starts, so a bad file is a ConfigError up front.
        self.tls: TlsContexts | None = (
            load_contexts(self.config.tls) if self.config.tls is not None else None
        )
        self.instance_id = instance_id_for(instance)
        self.lease: Lease | None = None
        self.metadata: MetadataKeeper | None = None
        self.binding: Binding | None = None
        self.committer: Committer | None = None
        self.streams: dict[str, OutputStream] = {}
        self.links: dict[str, OutgoingLink] = {}
        self.incoming: dict[str, IncomingLink] = {}
        # Per sender: the last message accepted into the log and delivered to the binding,
        # with their digests, and the sequence check (``protocol/inputs``); set by the
        # recovery plan, shared with the committer and the incoming links.
        self.inputs = InputMarks()
        # While replaying: the page being replayed, and where each stream's regenerated
        # messages came from (``_ReplayPlaces``).
        self._replay_page = -1
        self._replay_places: dict[str, _ReplayPlaces] | None = None
        self._recording_places = False
        self.delivered_sequence = -1
        self.server: Listener | None = None
        self.bound_port = 0
        self._dirty: set[OutputStream] = set()
        self._flush_scheduled = False
        self._impulse_backlog: list[bytes] = []
        self._replay_pages: list[tuple[int, Page]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._checkpoint_task: asyncio.Task[None] | None = None
        self.checkpoints: list[tuple[int, int]] = []  # (number, resume_chunk) kept
        self.stopped = asyncio.Event()
        self.failure: BaseException | None = None
        self.primary = asyncio.Event()
        self.replayed_pages = 0
        self._renewing: asyncio.Task[None] | None = None
        # Every open peer connection (admitted or not) and what the deadlines know of it.
        self.connections: dict[IncomingLink, _Watch] = {}
        # The highest epoch admitted from each sender in this process's life: a lower one
        # is a stale primary of that peer, still running somewhere.
        self.peer_epochs: dict[str, int] = {}
        self._keepalives: dict[str, tuple[int, float]] = {}
        self._admissions: set[asyncio.Task[None]] = set()
        self.metrics = CoordinatorMetrics(instance)
        register_runtime(self)

    @property
    def tls_required(self) -> bool:
        """Whether every peer must be a TLS client whose certificate names an instance.

        When True, an ``IncomingLink`` without ``peer_identity`` must not be admitted.
        """
        return self.tls is not None

    # -- start-up ------------------------------------------------------------------------

    async def start(self) -> None:
        store = self.store
        self.lease = await call_with_retry(
            lambda: store.acquire_lease(wait_s=self.config.lease_wait_s), self.config.retry_policy
        )
        await self.start_holding_lease()

    def _before_restore(self) -> None:
        """A cold start read the log's metadata under the lease and has restored nothing
        yet: the moment to refuse a log this process must not run (``ambrosia.upgrade``:
        one a newer code version checkpointed)."""

    async def start_holding_lease(self) -> None:
        """Recover cold from the log and become primary (``self.lease`` is taken)."""
        store = self.store
        policy = self.config.retry_policy
        assert self.lease is not None
        logger.info("%s: lease taken, epoch %d", self.instance, self.lease.epoch)
        self.start_renewing()
        self.binding = self._binding_factory(self)
        # The audit ``ambrosia log`` runs (``recovery``): a damaged log stops the start
        # here, with the chunk or checkpoint named; a corrupt latest checkpoint falls back
        # to an older kept one when the log from it is intact.
        reading = await recover(store, self.config.page_bytes_max, policy)
        self.metadata = MetadataKeeper(
            store,
            self._current_lease,
            meta=reading.meta,
            version=reading.meta_version,
            policy=policy,
        )
        self._before_restore()
        if reading.checkpoint is None:
            checkpoint = await self._first_checkpoint()
        else:
            checkpoint = reading.checkpoint
            await self._restore(checkpoint)
        # Retention keeps the chunks the kept checkpoints need (``kept_checkpoints``).
        listed = await call_with_retry(store.list_checkpoints, policy)
        unusable = [number for number, _ in reading.skipped]
        self.checkpoints = kept_checkpoints(
            checkpoint, listed, unusable, self.config.checkpoints_kept
        )
        pages = reading.pages
        plan = plan_recovery(checkpoint, pages)
        self.inputs = plan.marks
        self.delivered_sequence = plan.delivered_sequence
        for destination, seq in plan.marks.trims.items():
            self._open_stream(destination).ack(seq)
        self_stream = self._open_stream(self.instance)
        self._replay_pages = pages
        audit = SelfCallAudit(self.instance, pages)
        self_stream.on_drop = audit.check
        # Self-calls restored from the checkpoint that never reached the log go in first.
        self_stream.ack(self.inputs.accepted_through(self.instance))
        self._renumber_first_start(audit)
        first_chunk = reading.next_chunk if reading.audit is None else reading.audit.chunks.first
        await self.open_for_writing(
            checkpoint=checkpoint.number,
            chunks=ChunkRange(first_chunk, reading.next_chunk),
            next_sequence=plan.next_sequence,
        )

    @property
    def delivered(self) -> dict[str, int]:
        """Per sender, the last message delivered to the binding (a copy)."""
        return self.inputs.delivered

    def _renumber_first_start(self, audit: SelfCallAudit) -> None:
        assert self.binding is not None
        self_stream = self.streams[self.instance]
        if (
            not self.binding.started
            and self_stream.next_seq == 0
            and self.inputs.accepted_through(self.instance)
        ):
            # The log holds the first-start call, made after this checkpoint. It entered
            # the self-stream from the runtime, not from a handler, so replay would not
            # number it: the handlers' self-calls would then be numbered from 1 instead of
            # 2 and meet the log's call 1 (the first start) as a divergence. Number it
            # again, as the first life did; it is dropped as consumed, checked against
            # the log like any regenerated self-call. A binding process that has not
            # sent it in this life is numbered with the one in the log.
            self._log_first_start(audit.logged_message(1))

    async def open_for_writing(
        self,
        *,
        checkpoint: int,
        chunks: ChunkRange,
        next_sequence: int,
        server: Listener | None = None,
    ) -> None:
        """Start this life's chunk, the committer, the listener and the links.

        ``chunks``: the log's chunks, the last one being this life's new chunk (not yet
        created). ``server``: a listener already bound (``bind_listener``), or None to
        bind ``listen_address`` here. Also the second half of a standby's promotion
        (``ambrosia.coordinator.standby``), which has replayed the log already.
        The committer accepts input after ``self.inputs`` (the recovery plan's marks).
        """
        store = self.store
        policy = self.config.retry_policy
        assert self.lease is not None and self.metadata is not None
        assert self.binding is not None
        self_stream = self.streams[self.instance]
        # A new chunk for this life, right after the last one the log ever created (a torn
        # tail in the old last chunk stays behind; cloud stores cannot truncate), recorded
        # in the metadata before anything is written into it.
        new_chunk = chunks.last
        lease = self.lease
        if server is None:
            server = await self.bind_listener(*self.listen_address)
        self.server = server
        self.bound_port = server.port
        await call_with_retry(lambda: store.create_chunk(lease, new_chunk), policy)
        await self.metadata.record_start(checkpoint, chunks, self._primary_fields())
        self.committer = Committer(
            store,
            self.lease,
            instance_id=self.instance_id,
            chunk=new_chunk,
            next_sequence=next_sequence,
            page_bytes_max=self.config.page_bytes_max,
            delivery_pages_max=self.config.delivery_pages_max,
            delivery_backlog_bytes_max=self.config.delivery_backlog_bytes_max,
            on_durable=self._on_durable,
            collect_trims=self._collect_trims,
            inputs=self.inputs,
            chunk_bytes_max=self.config.checkpoint_log_bytes,
            on_chunk_full=self._request_checkpoint,
            on_new_chunk=self.metadata.record_chunk,
            persist=self.config.persist,
            retry_policy=self.config.retry_policy,
            metrics=self.metrics,
        )
        # ``dirty`` without anything unsent: a standby regenerated a self-call before it
        # read the logged copy, with no committer to hand it to; the flush clears it.
        if self_stream.has_unsent or self_stream.dirty:
            self._on_dirty(self_stream)
        loop = asyncio.get_running_loop()
        server.start()
        for stream in list(self.streams.values()):
            self._start_link(stream)
        self._tasks.append(loop.create_task(self._deliver_loop()))
        self.start_renewing()
        self._tasks.append(loop.create_task(self._sweep_loop()))

    def _primary_fields(self) -> tuple[tuple[str, str], ...]:
        host = self.listen_address[0]
        return (
            ("primary.address", f"{host}:{self.bound_port}"),
            ("primary.pid", str(os.getpid())),
            ("primary.host", socket.gethostname()),
            ("primary.started", f"{time.time():.3f}"),
        )

    async def bind_listener(self, host: str, port: int) -> Listener:
        """The peer listener, bound but not yet accepting."""
        # Not loop.create_server: it accepts a burst of sockets before any limit is
        # checked (``ambrosia.coordinator.listener``).
        return await Listener.bind(
            host,
            port,
            lambda: IncomingLink(self),
            limit=self.incoming_connections_limit,
            open_count=lambda: len(self.connections),
            tls=self.tls.server if self.tls is not None else None,
            tls_handshake_timeout_s=self.config.tls_handshake_timeout_s,
        )

    async def _first_checkpoint(self) -> CheckpointState:
        """Checkpoint 0 of a new log (recovery found no metadata and no pages)."""
        assert self.lease is not None and self.binding is not None
        policy = self.config.retry_policy
        if 0 in await call_with_retry(self.store.list_checkpoints, policy):
            # A first life died between writing checkpoint 0 and pointing the metadata at
            # it. Checkpoints are create-only (s3, azblob), so rewriting it with this
            # life's epoch would be refused for good: adopt it. No page was written after
            # it (the first chunk comes later), so it is exactly a fresh start.
            state = await read_checkpoint(self.store, 0, policy)
            if state.instance != self.instance or state.number != 0:
                raise LogCorruptError(
                    f"{self.store.url} {self.instance} checkpoint 0",
                    0,
                    f"names {state.instance!r} number {state.number}",
                )
            logger.info("%s: checkpoint 0 of an earlier first start adopted", self.instance)
            await self._restore(state)
            assert self.metadata is not None
            await self.metadata.record_checkpoint(0, 0)
            return state
        fresh = await self.binding.initial_checkpoint()
        state = self._snapshot(fresh, number=0, resume_sequence=0, resume_chunk=0)
        await self._store_checkpoint(0, encode_checkpoint(state), first_chunk=0)
        return state

    def _current_lease(self) -> Lease:
        assert self.lease is not None
        return self.lease

    async def _store_checkpoint(self, number: int, data: bytes, *, first_chunk: int) -> None:
        """Write checkpoint ``number`` and point the metadata at it, retrying transients.

        ``first_chunk``: the first chunk the kept checkpoints need, recorded in the same
        swap, so retention deletes only what the metadata no longer names.
        """
        lease = self.lease
        assert lease is not None
        policy = self.config.retry_policy
        assert self.metadata is not None
        await call_with_retry(lambda: self.store.write_checkpoint(lease, number, data), policy)
        await self.metadata.record_checkpoint(number, first_chunk)

    async def _restore(self, checkpoint: CheckpointState) -> None:
        assert self.binding is not None
        await self.binding.load_checkpoint(checkpoint.binding, checkpoint.app)
        for destination, output in checkpoint.outputs.items():
            stream = self._open_stream(destination)
            front = output.segments[0].first_seq - 1 if output.segments else output.next_seq
            digest = output.digest if output.digest_through == front else None
            stream.restore(output.next_seq, output.acked_through, output.segments, digest)

    # -- output streams ------------------------------------------------------------------

    def open_stream(self, destination: str) -> OutputStream:
        """The output stream to ``destination`` (``BindingHost``)."""
        return self._open_stream(destination)

    def log_impulse(self, message: bytes) -> None:
        """Log an impulse from the binding (``BindingHost``)."""
        self._log_impulse(message)

    @property
    def dispatcher(self) -> Any:
        """The binding, by its older name (the in-process one is the dispatcher)."""
        return self.binding

    @dispatcher.setter
    def dispatcher(self, binding: Any) -> None:
        self.binding = binding

    def _open_stream(self, destination: str) -> OutputStream:
        stream = self.streams.get(destination)
        if stream is not None:
            return stream
        assert self.binding is not None
        stream = OutputStream(
            destination,
            buffer_bytes_max=self.config.output_buffer_bytes_max,
            batch_bytes_max=self.config.batch_bytes_max,
            on_dirty=self._on_dirty,
            on_blocked=self._stream_blocked,
            on_unblocked=self._stream_unblocked,
        )
        self.streams[destination] = stream
        if destination != self.instance:
            stream.on_checked = self._output_checked
            if self._recording_places:
                self._record_places(stream)
        if self.committer is not None:
            self._start_link(stream)
        return stream

    def _start_link(self, stream: OutputStream) -> None:
        if stream.destination == self.instance or stream.destination in self.links:
            return
        assert self.lease is not None
        link = OutgoingLink(
            sender=self.instance,
            epoch=self.lease.epoch,
            stream=stream,
            config=self.config,
            resolve=self._resolve,
            on_ack=self._on_ack,
            tls=self.tls.client if self.tls is not None else None,
            on_resume=self._resumed,
            on_peer_held=self._peer_held,
        )
        self.links[stream.destination] = link
        link.start()

    def _on_dirty(self, stream: OutputStream) -> None:
        self._dirty.add(stream)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for stream in dirty:
            if stream.destination == self.instance:
                self._flush_self(stream)
            else:
                link = self.links.get(stream.destination)
                if link is not None:
                    link.flush()

    def _flush_self(self, stream: OutputStream) -> None:
        """Self-calls go straight into the log, numbered like any other input."""
        committer = self.committer
        if committer is None:
            return
        instance = self.instance

        def log(segment: Segment) -> bool:
            assert committer is not None
            return committer.try_add(
                instance, segment.first_seq, segment.count, segment.count, segment.data
            )

        if not stream.hand_out(log):
            committer.wait_for_room(lambda: self._on_dirty(stream))

    def _on_ack(self, stream: OutputStream) -> None:
        """Acknowledged output: its trim point rides on the next page written."""

    def _collect_trims(self) -> list[tuple[str, int]]:
        trims = []
        for stream in self.streams.values():
            if stream.acked_through > stream.trim_logged and stream.destination != self.instance:
                trims.append((stream.destination, stream.acked_through))
                stream.trim_logged = stream.acked_through
        return trims

    # -- input ---------------------------------------------------------------------------

    def incoming_opened(self, link: IncomingLink) -> None:
        """A peer connected: count it, and refuse it beyond the connection limit."""
        self.connections[link] = _Watch(asyncio.get_running_loop().time())
        limit = self.incoming_connections_limit()
        if len(self.connections) > limit:
            link.fail(f"too many peer connections (limit {limit})")

    def incoming_connections_limit(self) -> int:
        """``incoming_connections_max``, lowered to what the descriptor limit leaves."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = self.config.incoming_connections_max
        if soft != resource.RLIM_INFINITY:
            limit = min(limit, soft - _DESCRIPTORS_RESERVED - len(self.links))
        return max(limit, 1)

    def accept_hello(self, link: IncomingLink, hello: Hello) -> None:
        """Check a Hello; the link answers (``admit``) or is closed, after a catalog look-up."""
        refusal = self._hello_refusal(link, hello)
        if refusal is not None:
            link.fail(refusal)
            return
        task = asyncio.get_running_loop().create_task(self._admit(link, hello))
        self._admissions.add(task)
        task.add_done_callback(self._admissions.discard)

    def _hello_refusal(self, link: IncomingLink, hello: Hello) -> str | None:
        sender = hello.sender
        if hello.protocol_version != PEER_PROTOCOL_VERSION:
            return f"protocol version {hello.protocol_version}, expected {PEER_PROTOCOL_VERSION}"
        if hello.receiver != self.instance:
            return f"peer {sender[:80]!r} thinks it is talking to {hello.receiver[:80]!r}"
        try:
            validate_instance_name(sender)
        except ConfigError:
            return f"sender name {sender[:80]!r} is not a valid instance name"
        if sender in (self.instance, IMPULSE_SOURCE):
            return f"peer claims the reserved name {sender!r}"
        if link.peer_identity is not None and link.peer_identity != sender:
            return f"certificate names {link.peer_identity}, Hello claims {sender}"
        if link.peer_identity is None and self.tls_required:
            return f"{sender} has no TLS identity, and TLS is required"
        if hello.sender_epoch < 1:
            return f"epoch {hello.sender_epoch} is not positive"
        if hello.sender_epoch < self.peer_epochs.get(sender, 0):
            return (
                f"stale epoch {hello.sender_epoch} from {sender} "
                f"(epoch {self.peer_epochs[sender]} already admitted)"
            )
        if hello.acked < 0:
            return f"acknowledged sequence number {hello.acked} is negative"
        return None

    async def _admit(self, link: IncomingLink, hello: Hello) -> None:
        sender = hello.sender
        try:
            await asyncio.wait_for(self._resolve(sender), self.config.connect_timeout_s)
        except InstanceNotFoundError:
            link.fail(f"{sender} is not registered in the catalog")
            return
        except (AmbrosiaError, OSError, TimeoutError) as error:
            # Fail closed: the peer dials again; by then the catalog may answer.
            link.fail(f"cannot check that {sender} is registered: {error}")
            return
        refusal = self._hello_refusal(link, hello)  # again: another Hello may have won
        if link.closed or refusal is not None:
            link.fail(refusal or "closed")
            return
        assert self.committer is not None and self.binding is not None
        accepted = self.inputs.accepted_through(sender)
        if hello.acked > accepted:
            link.close()
            self.stop_for_lost(
                f"{sender} holds calls up to {hello.acked} as acknowledged by "
                f"{self.instance}, whose log ends at {accepted} from it: this log lost "
                f"acknowledged calls {accepted + 1}..{hello.acked}"
            )
            return
        self.peer_epochs[sender] = hello.sender_epoch
        previous = self.incoming.get(sender)
        if previous is not None and previous is not link:
            previous.close()
        self.incoming[sender] = link
        link.admit(sender, self.inputs)
        stream = self.streams.get(sender)
        if stream is not None and stream.blocked and not self.binding.blocked_on(stream):
            link.hold(self._hold_wanted(stream))

    def stop_for_lost(self, what: str) -> None:
        """This log lost what it had acknowledged: stop rather than run as if it had not."""
        if self.failure is None:
            self.failure = LostAcknowledgedError(f"{self.instance}: {what}")
            logger.critical("%s: stopping: %s", self.instance, self.failure)
        self.stopped.set()

    def _resumed(self, stream: OutputStream, total: int) -> None:
        """A peer named its resume point (the output was checked against it then)."""
        binding = self.binding
        if self._replay_places and binding is not None and not binding.replaying:
            # After replay: where replay regenerated this stream's output is not needed.
            self._replay_places.pop(stream.destination, None)
        self._check_resume(stream, total)

    def _check_resume(self, stream: OutputStream, total: int) -> None:
        """A receiver's resume point beyond anything produced: our log lost those pages.

        Only once replay is over: until then ``next_seq`` is still being regenerated.
        """
        binding = self.binding
        if binding is None or binding.replaying or not binding.is_primary:
            return
        if stream.drop_through > stream.next_seq:
            self.stop_for_lost(
                f"{stream.destination} resumes after call {stream.drop_through}, but this "
                f"log only ever produced {stream.next_seq} calls to it: it lost the pages "
                "that produced the rest"
            )

    def try_accept(
        self, source: str, first_seq: int, count: int, replayable: int, payload: bytes | memoryview
    ) -> bool:
        """Log a checked batch from a peer (the committer moves ``inputs`` past it);
        False: no room now (``wait_for_room``)."""
        assert self.committer is not None
        return self.committer.try_add(source, first_seq, count, replayable, payload)

    def wait_for_room(self, callback: Callable[[], None]) -> None:
        assert self.committer is not None
        self.committer.wait_for_room(callback)

    def incoming_closed(self, link: IncomingLink) -> None:
        self.connections.pop(link, None)
        if link.source is not None and self.incoming.get(link.source) is link:
            del self.incoming[link.source]

    def _stream_blocked(self, stream: OutputStream) -> None:
        """Output to a peer over its bound (see ``outputs``).

        Application calls into it stop the dispatcher, and input keeps being logged (the
        log is the queue, so two immortals flooding each other cannot deadlock). Results
        and replay never stop the dispatcher; then the peer's input is held instead.
        """
        assert self.binding is not None
        held = not self.binding.stream_blocked(stream)
        link = self.incoming.get(stream.destination)
        if link is not None:
            link.hold(held and self._hold_wanted(stream))

    def _hold_wanted(self, stream: OutputStream) -> bool:
        """Hold the input of a peer whose results are over their bound, unless the peer
        holds ours for the same reason (both would wait forever), within a hard bound."""
        link = self.links.get(stream.destination)
        if link is None or not link.peer_holding:
            return True
        return stream.buffered_bytes > self.config.output_buffer_paused_peer_bytes_max

    def _peer_held(self, stream: OutputStream, held: bool) -> None:
        """A peer holds (or reads again) our input: read its input again if we hold it only
        for results (a cycle otherwise). If it reads again, the next result decides."""
        link = self.incoming.get(stream.destination)
        if held and link is not None and link.held:
            link.hold(self._hold_wanted(stream))

    def _stream_unblocked(self, stream: OutputStream) -> None:
        link = self.incoming.get(stream.destination)
        if link is not None:
            link.hold(False)
        assert self.binding is not None
        self.binding.stream_unblocked(stream)

    async def _sweep_loop(self) -> None:
        """Deadlines of peer connections and keepalives of ours, on one timer."""
        config = self.config
        interval_s = max(
            0.01,
            min(
                config.handshake_timeout_s,
                config.incoming_frame_timeout_s,
                config.incoming_idle_timeout_s,
                config.keepalive_interval_s,
            )
            / 4,
        )
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_s)
            now = loop.time()
            for link, watch in list(self.connections.items()):
                reason = watch.expired(link, now, config)
                if reason is not None:
                    link.fail(reason)
            self._send_keepalives(now)

    def _send_keepalives(self, now: float) -> None:
        for destination, link in self.links.items():
            connection = link.protocol
            if connection is None or not connection.ready:
                continue
            sent, since = self._keepalives.get(destination, (-1, now))
            if sent != link.batches_sent:
                self._keepalives[destination] = (link.batches_sent, now)
            elif now - since >= self.config.keepalive_interval_s:
                connection.send(KEEPALIVE)
                self._keepalives[destination] = (sent, now)

    def _on_durable(self, marks: dict[str, int]) -> None:
        for source, seq in marks.items():
            if source == self.instance:
                self.streams[self.instance].ack(seq)
            elif source != IMPULSE_SOURCE:
                # At once, before the page is delivered: the Commit also wakes the peer
                # (and, on a virtual machine, its idle CPU) while this process runs the
                # calls, so the reply that follows finds it awake. Sent after the reply,
                # Commits made round trips 10-15% slower here (paired runs).
                link = self.incoming.get(source)
                if link is not None:
                    link.commit(seq)

    def _log_impulse(self, message: bytes) -> None:
        committer = self.committer
        assert committer is not None
        if len(self._impulse_backlog) >= self.config.impulse_backlog_max:
            raise AmbrosiaError(f"{self.instance}: impulse backlog full; slow the input down")
        self._impulse_backlog.append(message)
        self._drain_impulses()

    def _drain_impulses(self) -> None:
        committer = self.committer
        assert committer is not None
        while self._impulse_backlog:
            message = self._impulse_backlog[0]
            seq = self.inputs.accepted_through(IMPULSE_SOURCE) + 1
            if not committer.try_add(IMPULSE_SOURCE, seq, 1, 0, message):
                committer.wait_for_room(self._drain_impulses)
                return
            self._impulse_backlog.pop(0)

    # -- delivery --------------------------------------------------------------------------

    async def _deliver_loop(self) -> None:
        binding = self.binding
        committer = self.committer
        assert binding is not None and committer is not None
        try:
            binding.replaying = True
            self._replay_places = {}
            self._recording_places = True
            for stream in list(self.streams.values()):
                if stream.destination != self.instance:
                    self._record_places(stream)
            for _, page in self._replay_pages:
                self._replay_page = page.sequence
                await self._deliver(page)
                self.replayed_pages += 1
            self._replay_pages = []
            await binding.end_replay()  # a binding process's last output may come now
            self._replay_page = -1
            self._stop_recording_places()
            binding.replaying = False
            self.streams[self.instance].on_drop = None
            binding.is_primary = True
            for stream in list(self.streams.values()):
                # Not the self-stream: the first-start call enters it from the runtime,
                # not from replay, so its numbering is not regenerated; its resume point
                # is this log itself.
                if stream.destination != self.instance:
                    self._check_resume(stream, stream.drop_through)
            if not binding.started:
                self._log_first_start(None)
            self._request_checkpoint()
            if binding.checkpoint_when_primary:
                await self._checkpoint_if_due()
            self.primary.set()
            # Everything allocated so far (modules, recovered state) lives for the whole
            # process: keep it out of the collector's full passes, which would otherwise
            # show up as millisecond pauses in the latency tail.
            gc.freeze()
            logger.info("%s: primary (replayed %d pages)", self.instance, self.replayed_pages)
            await binding.become_primary()
            while True:
                durable = committer.take_delivered()
                if durable is None:
                    if committer.failed is not None:
                        raise committer.failed
                    await committer.delivery_ready.wait()
                    continue
                resident = durable.page
                await self._deliver(resident or await self._read_back(durable))
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            if self.failure is not error:
                self.failure = self.failure or error
                logger.critical("%s: stopping: %s", self.instance, error)
            self.stopped.set()

    # -- replay checked against the peers ------------------------------------------------

    def _record_places(self, stream: OutputStream) -> None:
        """Note where replay regenerates ``stream``'s kept messages (``_ReplayPlaces``),
        for the replay only (``OutputStream.record_adds``: the running path pays nothing)."""
        assert self._replay_places is not None
        places = self._replay_places.setdefault(stream.destination, _ReplayPlaces())
        binding = self.binding
        assert binding is not None
        running_call = binding.running_call

        def note(first: int) -> None:
            places.note(first, (self._replay_page, running_call()))

        stream.record_adds(note)

    def _stop_recording_places(self) -> None:
        """Replay is over: the streams stop recording (the places stay, for a resume
        point that arrives later)."""
        self._recording_places = False
        for stream in self.streams.values():
            stream.record_adds(None)

    def _output_checked(
        self, stream: OutputStream, seq: int, theirs: int, ours: int, during_add: bool
    ) -> None:
        """Messages 1..``seq`` to a peer compared with what it holds (``OutputStream``).

        A difference: replay regenerated other messages than the peer holds: stop.
        ``during_add``: found as the message ``seq`` was regenerated (its handler is
        running); otherwise found when the receiver named its resume point, after replay
        had regenerated it.
        """
        if theirs == ours:
            if seq > 0:
                logger.info(
                    "%s: output to %s through message %d matches what it holds",
                    self.instance,
                    stream.destination,
                    seq,
                )
            return
        if during_add:
            assert self.binding is not None
            place: tuple[int, Any] | None = (self._replay_page, self.binding.running_call())
        else:
            places = (self._replay_places or {}).get(stream.destination)
            place = places.find(seq) if places is not None else None
        where = self._describe_place(place)
        error = OutputDivergenceError(
            f"{self.instance}: replay diverged from what {stream.destination} received: "
            f"the calls and results to {stream.destination} up to message {seq} are not "
            f"the ones it logged (CRC-32 {ours:08x}, it holds {theirs:08x}); message {seq} "
            f"was regenerated {where}. A handler's output depends on something the log "
            "does not hold (time, randomness, the environment): make it deterministic, or "
            "pass the value in a self-call (fork to self with it as an argument)"
        )
        if self.failure is None:
            self.failure = error
            logger.critical("%s: stopping: %s", self.instance, error)
        self.stopped.set()
        if during_add:
            raise error

    def _describe_place(self, place: tuple[int, Any] | None) -> str:
        if place is None:
            return "at a place replay did not record"
        page, call = place
        if call is None:
            # A binding process runs the handlers: its output comes back when it does,
            # so the page the coordinator last sent is only a bound.
            return (
                f"during replay by the binding process, at or before log page {page}"
                if page >= 0
                else "at a place replay did not record"
            )
        assert self.binding is not None
        return f"handling {self.binding.describe_call(call)}"

    async def _read_back(self, durable: DurablePage) -> Page:
        """A page that was spilled from the delivery queue: read it from the log."""
        data = await call_with_retry(
            functools.partial(
                self.store.read_chunk,
                durable.chunk,
                offset=durable.offset,
                length=durable.size_bytes,
            ),
            self.config.retry_policy,
        )
        where = f"{self.store.url} {self.instance} chunk {durable.chunk}"
        return decode_page(
            data, 0, where, instance_id=self.instance_id, page_bytes_max=self.config.page_bytes_max
        )

    def _log_first_start(self, logged: bytes | None) -> None:
        """Log the message that starts the application (``logged``: the log's copy)."""
        assert self.binding is not None
        message = self.binding.first_start_message() or logged
        if message is None:
            return  # a binding process that has not sent one: logged when it does
        stream = self.streams[self.instance]
        stream.add(message, b"")

    async def _deliver(self, page: Page) -> None:
        binding = self.binding
        assert binding is not None
        await binding.deliver(page)
        self.inputs.deliver(page)
        self.delivered_sequence = page.sequence
        if self._dirty:
            self._flush()  # send this page's output now rather than one loop turn later
        if binding.checkpoint_requested:
            await self._checkpoint_if_due()

    # -- checkpoints -------------------------------------------------------------------------

    def _request_checkpoint(self) -> None:
        assert self.binding is not None
        self.binding.checkpoint_requested = True

    def request_checkpoint(self) -> None:
        """A checkpoint at the next page boundary where the binding is quiescent."""
        self._request_checkpoint()

    async def _checkpoint_if_due(self) -> None:
        binding = self.binding
        if (
            binding is not None
            and binding.checkpoint_requested
            and binding.quiescent
            and self._checkpoint_task is None
            and self.committer is not None
            and not self.committer.switch_pending
        ):
            # Checkpoint n resumes in chunk n, the one after the committer's current chunk:
            # until the previous checkpoint's switch has happened, that number is taken.
            await self._start_checkpoint()

    def _snapshot(
        self,
        binding: BindingState,
        *,
        number: int,
        resume_sequence: int,
        resume_chunk: int,
        epoch: int | None = None,
    ) -> CheckpointState:
        """``epoch``: the writer's (default: this process's lease; a standby names the
        epoch of the pages it replayed)."""
        if epoch is None:
            assert self.lease is not None
            epoch = self.lease.epoch
        outputs = {}
        for destination, stream in self.streams.items():
            next_seq, acked, segments = stream.snapshot()
            outputs[destination] = OutputState(
                next_seq, acked, segments, stream.digest, stream.digest_through
            )
        return CheckpointState(
            instance=self.instance,
            number=number,
            epoch=epoch,
            resume_sequence=resume_sequence,
            resume_chunk=resume_chunk,
            inputs=self.inputs.delivered,
            input_digests=self.inputs.delivered_digests(),
            outputs=outputs,
            binding=dict(binding[0]),
            app=binding[1],
        )

    async def _start_checkpoint(self) -> None:
        committer = self.committer
        binding = self.binding
        assert committer is not None and binding is not None
        binding.checkpoint_requested = False
        # The binding's state at this page boundary; a binding process may decline (not
        # quiescent after all): asked again after a later page.
        taken = await binding.take_checkpoint()
        if taken is None:
            binding.checkpoint_requested = True
            return
        number = committer.chunk + 1
        resume_sequence = self.delivered_sequence + 1
        # Pages after the snapshot that were already sealed went to the current chunk.
        resume_chunk = committer.chunk if committer.next_sequence > resume_sequence else number
        state = self._snapshot(
            taken, number=number, resume_sequence=resume_sequence, resume_chunk=resume_chunk
        )
        committer.switch_chunk(number)
        task = asyncio.get_running_loop().create_task(self._write_checkpoint(state))
        self._checkpoint_task = task

    async def _write_checkpoint(self, state: CheckpointState) -> None:
        assert self.lease is not None
        started = time.perf_counter()
        try:
            data = encode_checkpoint(state)
            # The kept checkpoints after this one: the newest ``checkpoints_kept``. The
            # older ones are the fallback when a newer one turns out unreadable, so the
            # chunks from the oldest one's resume chunk on stay.
            kept = [*self.checkpoints, (state.number, state.resume_chunk)]
            kept = kept[-self.config.checkpoints_kept :]
            first_kept_chunk = min(chunk for _, chunk in kept)
            await self._store_checkpoint(state.number, data, first_chunk=first_kept_chunk)
            self.metrics.checkpoint_written(len(data), time.perf_counter() - started)
            retire = len(self.checkpoints) + 1 > len(kept)
            self.checkpoints = kept
            logger.info(
                "%s: checkpoint %d written (%d bytes)", self.instance, state.number, len(data)
            )
            if retire:
                await self._retain(first_kept_chunk, min(number for number, _ in kept))
        except AmbrosiaError as error:
            if error.retriable:
                # Still failing after the retries (say, no descriptor free): the log keeps
                # going without it, the metadata still names the previous checkpoint, and
                # the next full chunk tries again. Only replay gets longer.
                logger.warning(
                    "%s: checkpoint %d postponed: %s", self.instance, state.number, error
                )
                return
            logger.critical("%s: checkpoint failed: %s", self.instance, error)
            self.failure = error
            self.stopped.set()
        finally:
            self._checkpoint_task = None

    async def _retain(self, first_kept_chunk: int, first_kept_checkpoint: int) -> None:
        """Delete what the kept checkpoints no longer need; a failure only delays it."""
        lease = self.lease
        assert lease is not None
        try:
            await call_with_retry(
                lambda: self.store.delete_before(
                    lease, first_kept_chunk, checkpoints_before=first_kept_checkpoint
                ),
                self.config.retry_policy,
            )
        except AmbrosiaError as error:
            if not error.retriable:
                raise
            logger.warning(
                "%s: retention postponed to the next checkpoint: %s", self.instance, error
            )

    # -- lease -----------------------------------------------------------------------------

    def start_renewing(self) -> None:
        """Keep the lease renewed from now on (idempotent): as soon as it is taken, so a
        recovery or a takeover longer than a cloud lease does not lose it halfway."""
        if self._renewing is None:
            self._renewing = asyncio.get_running_loop().create_task(self._renew_loop())
            self._tasks.append(self._renewing)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_renew_interval_s)
            assert self.lease is not None
            try:
                self.lease = await call_with_retry(
                    functools.partial(self.store.renew_lease, self.lease), self.config.retry_policy
                )
            except AmbrosiaError as error:
                logger.critical("%s: lease lost, stopping: %s", self.instance, error)
                self.failure = error
                self.stopped.set()
                return

    # -- shutdown ----------------------------------------------------------------------------

    async def stop(self) -> None:
        if self.binding is not None:
            self.binding.close()
        for task in self._tasks:
            task.cancel()
        for link in self.links.values():
            link.close()
        for task in list(self._admissions):
            task.cancel()
        for incoming in list(self.connections):
            incoming.close()
        if self.server is not None:
            self.server.close()
        if self.committer is not None:
            if self.committer.failed is None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.committer.drain(), 5)
            self.committer.close()
        if self._checkpoint_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._checkpoint_task, 30)
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.lease is not None:
            lease = self.lease
            # Released now, the next start takes the lease at once instead of waiting out
            # its expiry; a failure only costs that wait.
            with contextlib.suppress(Exception):
                await call_with_retry(
                    lambda: self.store.release_lease(lease), self.config.retry_policy
                )
        await self.store.close()
