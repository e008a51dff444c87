"""What the application sees: the ``Immortal`` base class, ``@rpc`` and ``@impulse``, proxies.

An immortal is a plain class. Its instance attributes are its state (checkpointed by
``state.py``; attributes whose names start with ``_ambrosia`` belong to the binding and are
not). Methods marked ``@rpc`` can be called by other immortals through a proxy::

    server = self.proxy(Counter, "server")
    server.inc.fork()            # fire and forget
    value = await server.inc()   # awaited: the result is logged by the caller first

``@impulse`` methods take input from the outside world. They may only be called through
``proxy.method.impulse(...)`` on the immortal's own proxy (``self.this``), outside any
handler, once the immortal is primary (recovery over); during recovery they raise
``ImpulseDuringRecoveryError``.

Method ids: each RPC method gets a stable id derived from its name (CRC-32 folded into
1..8000, so it costs at most two varint bytes on the wire), or an explicit ``@rpc(id=N)``.
Ids are per class; a collision is reported when the class is defined. Renaming a method
changes its id, which matters for live upgrades: give such methods explicit ids.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, overload

from ambrosia.binding.bound import BoundMethod
from ambrosia.errors import BindingError

if TYPE_CHECKING:
    from ambrosia.binding.dispatcher import Dispatcher

METHOD_ID_MAX = 8000
METHOD_ID_FIRST_START = -1

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T", bound="Immortal")


@dataclass(frozen=True, slots=True)
class MethodInfo:
    name: str
    method_id: int
    is_impulse: bool
    is_coroutine: bool


def _default_method_id(name: str) -> int:
    return zlib.crc32(name.encode()) % METHOD_ID_MAX + 1


def _mark(function: Callable[..., Any], *, method_id: int | None, is_impulse: bool) -> None:
    if method_id is not None and not 1 <= method_id <= (1 << 30):
        raise BindingError(f"method id of {function.__name__} must be in 1..2**30, not {method_id}")
    function.__ambrosia_method__ = (  # type: ignore[attr-defined]
        method_id if method_id is not None else _default_method_id(function.__name__),
        is_impulse,
    )


@overload
def rpc(function: F) -> F: ...
@overload
def rpc(*, id: int | None = None) -> Callable[[F], F]: ...
def rpc(function: Any = None, *, id: int | None = None) -> Any:
    """Mark a method as callable by other immortals (fork or awaited)."""

    def decorate(inner: F) -> F:
        _mark(inner, method_id=id, is_impulse=False)
        return inner

    return decorate(function) if function is not None else decorate


@overload
def impulse(function: F) -> F: ...
@overload
def impulse(*, id: int | None = None) -> Callable[[F], F]: ...
def impulse(function: Any = None, *, id: int | None = None) -> Any:
    """Mark a method as an impulse handler: logged input from the outside world."""

    def decorate(inner: F) -> F:
        _mark(inner, method_id=id, is_impulse=True)
        return inner

    return decorate(function) if function is not None else decorate


_IMMORTAL_CLASSES: dict[str, type[Immortal]] = {}


def immortal_type_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def lookup_immortal_class(type_path: str) -> type[Immortal]:
    """The Immortal subclass defined under ``type_path`` (filled when classes are defined)."""
    cls = _IMMORTAL_CLASSES.get(type_path)
    if cls is None:
        raise BindingError(f"no Immortal class {type_path!r} is defined in this process")
    return cls


def method_table(cls: type) -> dict[str, MethodInfo]:
    """The RPC and impulse methods of an immortal class, by name (cached on the class)."""
    cached: dict[str, MethodInfo] | None = cls.__dict__.get("__ambrosia_methods__")
    if cached is not None:
        return cached
    table: dict[str, MethodInfo] = {}
    by_id: dict[int, str] = {}
    for name in dir(cls):
        member = getattr(cls, name, None)
        mark = getattr(member, "__ambrosia_method__", None)
        if mark is None or member is None:
            continue
        method_id, is_impulse = mark
        if method_id in by_id and by_id[method_id] != name:
            raise BindingError(
                f"{cls.__qualname__}: methods {by_id[method_id]!r} and {name!r} share method id "
                f"{method_id}; give one of them an explicit id with @rpc(id=...)"
            )
        by_id[method_id] = name
        table[name] = MethodInfo(name, method_id, is_impulse, inspect.iscoroutinefunction(member))
    type.__setattr__(cls, "__ambrosia_methods__", table)
    return table


class Immortal:
    """Base class of application objects that never die.

    Subclasses are constructed with no arguments to make the initial state. Override
    ``on_first_start`` (runs once in the immortal's logical life, as a logged call, so it
    may await other immortals) and ``on_become_primary`` (runs every time this process
    becomes primary, after recovery; not logged: start background input tasks here with
    ``self.start_task``).
    """

    _ambrosia_dispatcher: Dispatcher | None = None

    #: The version of this class's code, for live upgrades (docs/operations.md,
    #: "Versions"): ``ambrosia run`` and ``ambrosia upgrade`` take it when ``--version``
    #: is absent, so a process of an old class is refused after an upgrade, the message
    #: naming both versions. None (the default): the class declares no version. A
    #: dunder name, so that it can never collide with the application's own methods and
    #: attributes; a class attribute, never part of the checkpointed state.
    __ambrosia_version__: ClassVar[int | None] = None

    async def on_first_start(self) -> None:
        """Runs once, as the first logged input of the immortal's life."""

    async def on_become_primary(self) -> None:
        """Runs after recovery, when this process starts serving as the primary."""

    @classmethod
    def upgrade_from(cls: type[T], old: Immortal) -> T:
        """The state migration of a live upgrade (``ambrosia upgrade``, docs/operations.md).

        Called on the NEW class with the old version's object, as recovered from the log
        with the old code at the moment of the hand-over (quiescent: no handler awaiting
        a call). Returns the new version's object; ``old`` is discarded afterwards. The
        default makes ``cls()`` and carries every attribute of ``old`` over unchanged, which
        fits a new version that keeps the old one's attributes; override it to rename,
        convert or add state (call ``super().upgrade_from(old)`` first to start from the
        copy). It runs once at the hand-over and once beforehand on a copy, as a trial:
        it must not call other immortals or read the clock or the environment. An
        exception aborts the upgrade and the old version keeps serving.
        """
        new = cls()
        for attribute, value in vars(old).items():
            if attribute != "_ambrosia_dispatcher":
                setattr(new, attribute, value)
        return new

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        method_table(cls)
        _IMMORTAL_CLASSES[immortal_type_path(cls)] = cls

    @property
    def _dispatcher(self) -> Dispatcher:
        dispatcher = self._ambrosia_dispatcher
        if dispatcher is None:
            raise BindingError("this immortal is not running: start it with ambrosia.run")
        return dispatcher

    @property
    def name(self) -> str:
        """This instance's registered name."""
        return self._dispatcher.instance

    @property
    def is_primary(self) -> bool:
        return self._dispatcher.is_primary

    @property
    def replaying(self) -> bool:
        """True while the handler now running is being replayed from the log."""
        return self._dispatcher.replaying

    @property
    def this(self: T) -> Proxy[T]:
        """A proxy to this immortal itself: self-calls and impulses go through the log."""
        return Proxy(type(self), self._dispatcher.instance, self._dispatcher)

    def proxy(self, cls: type[T], name: str) -> Proxy[T]:
        """A proxy to the immortal instance ``name`` whose class is ``cls``."""
        return Proxy(cls, name, self._dispatcher)

    def start_task(self, coroutine: Any) -> None:
        """Run a background task (an input pump) for as long as this process is primary."""
        self._dispatcher.start_task(coroutine)

    def request_checkpoint(self) -> None:
        """Ask for a checkpoint at the next quiescent point."""
        self._dispatcher.request_checkpoint()


class Proxy(Generic[T]):
    """A reference to another immortal (or to self). Serializable as part of state."""

    __slots__ = ("_ambrosia_class", "_ambrosia_dispatcher", "_ambrosia_name", "_ambrosia_table")

    def __init__(self, cls: type[T], name: str, dispatcher: Dispatcher | None) -> None:
        self._ambrosia_class = cls
        self._ambrosia_name = name
        self._ambrosia_dispatcher = dispatcher
        self._ambrosia_table = method_table(cls)

    @property
    def target(self) -> str:
        return self._ambrosia_name

    @property
    def target_class(self) -> type[T]:
        return self._ambrosia_class

    def __getattr__(self, name: str) -> BoundMethod:
        info = self._ambrosia_table.get(name)
        if info is None:
            raise AttributeError(
                f"{self._ambrosia_class.__qualname__} has no @rpc or @impulse method {name!r}"
            )
        dispatcher = self._ambrosia_dispatcher
        if dispatcher is None:
            raise BindingError("this proxy is not attached to a running immortal")
        method = BoundMethod(dispatcher, self._ambrosia_name, info)
        # Cache on the instance is impossible with __slots__; the dispatcher caches streams.
        return method

    def __ambrosia_proxy__(self) -> tuple[str, str]:
        """What a checkpoint records of a proxy: the target's class and name."""
        return immortal_type_path(self._ambrosia_class), self._ambrosia_name

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Proxy)
            and other._ambrosia_name == self._ambrosia_name
            and other._ambrosia_class is self._ambrosia_class
        )

    def __hash__(self) -> int:
        return hash((self._ambrosia_name, self._ambrosia_class))

    def __repr__(self) -> str:
        return f"Proxy({self._ambrosia_class.__qualname__}, {self._ambrosia_name!r})"
