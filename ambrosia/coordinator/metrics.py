"""What a coordinator reports to an operator, through ``opentelemetry-api``.

The API is a no-op until the application (or ``ambrosia run`` with the ``prometheus``
extra, see ``ambrosia.operations``) installs an SDK meter provider; instruments created
before that are proxies that start reporting once it is installed.

Two kinds of instrument, chosen by cost on the hot path:

- Observed at collection time, from counters the coordinator keeps anyway (zero cost
  per message): calls and bytes in per peer (``Runtime.delivered``, the incoming links'
  byte counts), calls out per peer (``OutputStream.next_seq``), bytes out per peer
  (``OutgoingLink.bytes_sent``, one addition per batch sent), output buffer bytes per
  peer, the delivery backlog, lease held and epoch. A scrape walks the registered
  runtimes; nothing is done between scrapes.
- Recorded as they happen, once per page written or per checkpoint or reconnect, never
  per message: page size, write latency and messages per page (the group-commit batch),
  checkpoint duration and size. Reconnects are observed too (``OutgoingLink.reconnects``).

Every point carries the instance's name (``instance``), and per-peer points the peer's
(``peer``). The metric names are the interface the Kubernetes manifests and dashboards
use; keep them stable.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

if TYPE_CHECKING:
    from ambrosia.coordinator.runtime import Runtime

__all__ = ["METER_NAME", "CoordinatorMetrics", "register_runtime"]

METER_NAME = "ambrosia.coordinator"

# Bucket bounds: pages from one small call to page_bytes_max (8 MiB), writes from a local
# fsync to a slow cloud append, batches from one message to tens of thousands.
_PAGE_BYTES_BOUNDS = [256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 8388608]
_WRITE_SECONDS_BOUNDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5]
_BATCH_BOUNDS = [1, 2, 4, 8, 16, 64, 256, 1024, 4096, 16384, 65536]
_CHECKPOINT_SECONDS_BOUNDS = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300]

_runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()


def register_runtime(runtime: Runtime) -> None:
    """Report ``runtime`` in the observed instruments for as long as it lives."""
    _runtimes.add(runtime)


def _live() -> list[Runtime]:
    return [runtime for runtime in list(_runtimes) if not runtime.stopped.is_set()]


def _calls_in(_: CallbackOptions) -> Iterable[Observation]:
    for runtime in _live():
        for peer, sequence in list(runtime.delivered.items()):
            yield Observation(sequence, {"instance": runtime.instance, "peer": peer})


def _bytes_in(_: CallbackOptions) -> Iterable[Observation]:
    for runtime in _live():
        for peer, link in list(runtime.incoming.items()):
            yield Observation(link.bytes_received, {"instance": runtime.instance, "peer": peer})


def _calls_out(_: CallbackOptions) -> Iterable[Observation]:
    for runtime in _live():
        for peer, stream in list(runtime.streams.items()):
            yield Observation(stream.next_seq, {"instance": runtime.instance, "peer": peer})


def _bytes_out(_: CallbackOptions) -> Iterable[Observation]:
    for runtime in _live():
        for peer, link in list(runtime.links.items()):
            yield Observation(link.bytes_sent, {"instance": runtime.instance, "peer": peer})


def _reconnects(_: CallbackOptions) -> Iterable[Observation]:
    for runtime in _live():
        for peer, link in list(runtime.links.items()):
            yield Observation(link.reconnects, {"instance": runtime.instance, "peer": peer})


def _output_buffer(_: CallbackOptions) -> Iterable[Observation]:
    for runtime in _live():
        for peer, stream in list(runtime.streams.items()):
            buffered = stream.sealed_bytes + len(stream.open)
            yield Observation(buffered, {"instance": runtime.instance, "peer": peer})


def _backlog(_: CallbackOptions) -> Iterable[Observation]:
    for runtime in _live():
        committer = runtime.committer
        if committer is not None:
            yield Observation(committer.backlog_bytes, {"instance": runtime.instance})


def _lease_held(_: CallbackOptions) -> Iterable[Observation]:
    for runtime in _live():
        yield Observation(int(runtime.lease is not None), {"instance": runtime.instance})


def _epoch(_: CallbackOptions) -> Iterator[Observation]:
    for runtime in _live():
        if runtime.lease is not None:
            yield Observation(runtime.lease.epoch, {"instance": runtime.instance})


def _primary(_: CallbackOptions) -> Iterator[Observation]:
    for runtime in _live():
        yield Observation(int(runtime.primary.is_set()), {"instance": runtime.instance})


class _Instruments:
    """The meter's instruments, made once per process (the API keeps them by name)."""

    def __init__(self) -> None:
        meter = metrics.get_meter(METER_NAME)
        self.page_bytes = meter.create_histogram(
            "ambrosia.log.page.size",
            unit="By",
            description="Size of each log page written",
            explicit_bucket_boundaries_advisory=_PAGE_BYTES_BOUNDS,
        )
        self.write_seconds = meter.create_histogram(
            "ambrosia.log.write.duration",
            unit="s",
            description="Time to make one page durable (the store's append, retries included)",
            explicit_bucket_boundaries_advisory=_WRITE_SECONDS_BOUNDS,
        )
        self.batch_messages = meter.create_histogram(
            "ambrosia.log.page.messages",
            unit="{message}",
            description="Messages per page: the group-commit batch size",
            explicit_bucket_boundaries_advisory=_BATCH_BOUNDS,
        )
        self.checkpoint_seconds = meter.create_histogram(
            "ambrosia.checkpoint.duration",
            unit="s",
            description="Time to encode and store one checkpoint",
            explicit_bucket_boundaries_advisory=_CHECKPOINT_SECONDS_BOUNDS,
        )
        self.checkpoint_bytes = meter.create_histogram(
            "ambrosia.checkpoint.size",
            unit="By",
            description="Size of each checkpoint written",
            explicit_bucket_boundaries_advisory=_PAGE_BYTES_BOUNDS,
        )
        meter.create_observable_counter(
            "ambrosia.peer.reconnects",
            [_reconnects],
            "{reconnect}",
            "Outgoing links to a peer dropped and dialled again",
        )
        meter.create_observable_counter(
            "ambrosia.peer.calls.in", [_calls_in], "{call}", "Calls delivered from each peer"
        )
        meter.create_observable_counter(
            "ambrosia.peer.bytes.in", [_bytes_in], "By", "Bytes received on each peer's link"
        )
        meter.create_observable_counter(
            "ambrosia.peer.calls.out", [_calls_out], "{call}", "Calls produced for each peer"
        )
        meter.create_observable_counter(
            "ambrosia.peer.bytes.out", [_bytes_out], "By", "Payload bytes sent to each peer"
        )
        meter.create_observable_gauge(
            "ambrosia.peer.output.buffered",
            [_output_buffer],
            "By",
            "Output to each peer not yet acknowledged",
        )
        meter.create_observable_gauge(
            "ambrosia.delivery.backlog",
            [_backlog],
            "By",
            "Durable log bytes not yet delivered to the application",
        )
        meter.create_observable_gauge(
            "ambrosia.lease.held", [_lease_held], "1", "1 while this process holds the lease"
        )
        meter.create_observable_gauge(
            "ambrosia.lease.epoch", [_epoch], "1", "Epoch of the lease this process holds"
        )
        meter.create_observable_gauge(
            "ambrosia.primary", [_primary], "1", "1 once recovery is done and the process serves"
        )


_instruments: _Instruments | None = None


def _get_instruments() -> _Instruments:
    global _instruments
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


class CoordinatorMetrics:
    """The recorded instruments of one instance, with its attributes bound once."""

    __slots__ = ("_attributes", "_instruments")

    def __init__(self, instance: str) -> None:
        self._instruments = _get_instruments()
        self._attributes: dict[str, Any] = {"instance": instance}

    def page_written(self, size_bytes: int, write_s: float, messages: int) -> None:
        instruments, attributes = self._instruments, self._attributes
        instruments.page_bytes.record(size_bytes, attributes)
        instruments.write_seconds.record(write_s, attributes)
        instruments.batch_messages.record(messages, attributes)

    def checkpoint_written(self, size_bytes: int, duration_s: float) -> None:
        self._instruments.checkpoint_bytes.record(size_bytes, self._attributes)
        self._instruments.checkpoint_seconds.record(duration_s, self._attributes)
