"""What the coordinator needs of "a binding", and what a binding may ask of it.

The coordinator knows bytes, not types. Everything it does with the application goes
through one small interface, :class:`Binding`, with two implementations chosen by
``ambrosia.host``:

- the in-process dispatcher (``ambrosia.binding.dispatcher.Dispatcher``): the fast path,
  the application's handlers run on the coordinator's event loop;
- the socket link (``ambrosia.coordinator.socket_binding``): a binding process in any
  language speaking PROTOCOL.md over two loopback ports (``ambrosia coordinator``).

Neither package imports the other: the dispatcher satisfies this protocol structurally,
and the coordinator hands it a :class:`BindingHost` (the runtime) to write its output
into. The life of a binding, as the runtime drives it:

1. ``load_checkpoint`` (recovery) or ``initial_checkpoint`` (first start: the state to
   write as checkpoint 0);
2. ``deliver`` each replayed page with ``replaying`` set, ``end_replay``, then
   ``replaying`` cleared and ``is_primary`` set; ``first_start_message`` is logged if
   the binding never started;
3. ``deliver`` each durable page; between pages, when a checkpoint is wanted
   (``checkpoint_requested``) and the binding is ``quiescent``, ``take_checkpoint``
   (which may decline: ``None``, asked again after a later page);
4. ``become_primary`` once, after the first checkpoint request; ``close`` at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ambrosia.log.page import Page
from ambrosia.protocol.outputs import OutputStream

# What a binding's checkpoint is, for the coordinator: a small dict of numbers (kept in
# the checkpoint header) and opaque bytes.
BindingState = tuple[dict[str, Any], bytes]


class BindingHost(Protocol):
    """The coordinator, as a binding sees it."""

    @property
    def instance(self) -> str: ...

    @property
    def instance_id(self) -> int:
        """The committer id of the log records a binding process receives."""
        ...

    def request_checkpoint(self) -> None:
        """A checkpoint at the next page boundary where the binding is quiescent."""
        ...

    def open_stream(self, destination: str) -> OutputStream:
        """The output stream to ``destination`` (this instance's own name: self-calls)."""
        ...

    def log_impulse(self, message: bytes) -> None:
        """Log one framed incoming RPC (kind impulse) as input from the outside world."""
        ...


class Binding(Protocol):
    """One application, as the coordinator drives it (see the module docstring)."""

    replaying: bool
    is_primary: bool
    checkpoint_requested: bool

    @property
    def started(self) -> bool:
        """Whether the first-start input was delivered (it is in the checkpoint)."""
        ...

    @property
    def checkpoint_when_primary(self) -> bool:
        """Whether to checkpoint right at becoming primary rather than after a page."""
        ...

    @property
    def quiescent(self) -> bool:
        """Whether a checkpoint could be taken now, between pages."""
        ...

    async def load_checkpoint(self, binding: Mapping[str, Any], state: bytes) -> None: ...

    async def initial_checkpoint(self) -> BindingState: ...

    async def take_checkpoint(self) -> BindingState | None: ...

    async def end_replay(self) -> None:
        """Returns once every output of the replayed pages has reached its stream."""
        ...

    async def deliver(self, page: Page) -> None:
        """Run the durable ``page``; returns when its input has been handed over."""
        ...

    def first_start_message(self) -> bytes | None:
        """The framed message that starts the application, if known in this life."""
        ...

    async def become_primary(self) -> None: ...

    def blocked_on(self, stream: OutputStream) -> bool:
        """Whether the binding waits for ``stream`` to drain."""
        ...

    def stream_blocked(self, stream: OutputStream) -> bool:
        """``stream`` went over its bound; True when the binding stops producing."""
        ...

    def stream_unblocked(self, stream: OutputStream) -> None: ...

    def running_call(self) -> object | None:
        """The call a handler of this process is running now (called from inside its
        output, in replay), as a value ``describe_call`` can name later; None when the
        handlers run elsewhere (a binding process) or none runs."""
        ...

    def describe_call(self, call: object) -> str:
        """``call`` from ``running_call``: its number, source, page and method."""
        ...

    def close(self) -> None: ...
