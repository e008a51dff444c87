"""Replay a log from a checkpoint, offline, and return the state it produces.

The determinism check of the crash tests and the core of time-travel debugging: restore
checkpoint N, dispatch every later page in log order as a non-primary (impulses refused,
outputs collected and discarded), and hand back the application object.
"""

from __future__ import annotations

from collections.abc import Callable

from ambrosia.backends import open_store
from ambrosia.binding import state as state_codec
from ambrosia.binding.dispatcher import Dispatcher
from ambrosia.binding.immortal import Immortal
from ambrosia.binding.remote import RemoteBinding
from ambrosia.coordinator.recovery import recover
from ambrosia.log.page import PAGE_BYTES_MAX_DEFAULT
from ambrosia.protocol.binding_link import PageReceived
from ambrosia.protocol.outputs import OutputStream


async def replay(
    log_url: str,
    instance: str,
    app_factory: Callable[[], Immortal],
    *,
    checkpoint: int | None = None,
) -> Immortal:
    """The application object after replaying ``instance``'s log from ``checkpoint``.

    ``checkpoint`` None means the one recovery would start from (the latest usable);
    a checkpoint that retention deleted is a LookupError naming those kept.
    """
    store = await open_store(log_url, instance)
    try:
        if checkpoint is not None:
            kept = await store.list_checkpoints()
            if checkpoint not in kept:
                raise LookupError(
                    f"{instance}: checkpoint {checkpoint} is no longer kept (kept: "
                    f"{', '.join(map(str, kept)) or 'none'}); run the instance with "
                    "--checkpoints-kept N to keep more, or replay from the latest "
                    "(checkpoint=None)"
                )
        # The audit every start runs, then the same choice of checkpoint.
        reading = await recover(store, PAGE_BYTES_MAX_DEFAULT, checkpoint=checkpoint)
    finally:
        await store.close()

    state = reading.checkpoint
    if state is None:
        raise LookupError(f"{instance} has no checkpoint to replay from")

    def sink(destination: str) -> OutputStream:
        return OutputStream(
            destination,
            buffer_bytes_max=1 << 62,
            batch_bytes_max=1 << 62,
            on_dirty=lambda stream: None,
            on_blocked=lambda stream: None,
            on_unblocked=lambda stream: None,
        )

    def refuse(message: bytes) -> None:
        raise AssertionError("replay does not log impulses")

    if state.binding.get("separate"):
        # Written by a binding process (``ambrosia run --separate``): its own format.
        remote = RemoteBinding(instance, app_factory, lambda data: None)
        await remote.load(state.app)
        for _, page in reading.pages:
            groups = tuple((group.source, bytes(group.messages)) for group in page.groups)
            remote.deliver(PageReceived(page.sequence, groups))
        return remote.dispatcher.app
    dispatcher = Dispatcher(instance, app_factory(), sink, refuse)
    app = app_factory()
    state_codec.load_attributes(app, state.app, dispatcher.resolve_proxy)
    dispatcher.replace_app(app)
    dispatcher.restore_binding_state(state.binding)
    dispatcher.replaying = True
    for _, page in reading.pages:
        for group in page.groups:
            end = len(group.messages)
            position = dispatcher.dispatch(group.source, group.messages, 0, end)
            assert position == end, "replay sinks never block"
    return app
