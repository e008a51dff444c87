"""Checkpoint serialization of an immortal's state, without executing code on load.

An immortal's state is its instance attributes. A checkpoint must carry them across a
crash, into a standby, into an upgraded version of the code. Pickle would do it, but
loading a pickle runs whatever the bytes name: a corrupted or hostile checkpoint would
be arbitrary code execution in every replica that recovers from it. This module instead
writes a small tagged binary format whose loader can only build:

- built-in data: None, bool, int (any size), float, str, bytes, bytearray, list, tuple,
  dict (keys of any supported hashable type, insertion order kept), set, frozenset;
- datetime.datetime (naive, UTC or a fixed ``datetime.timezone`` offset), datetime.date,
  datetime.timedelta, decimal.Decimal;
- members of registered ``Enum`` classes and instances of registered dataclasses;
- proxies to other immortals, rebuilt by a callback the binding supplies.

Classes are found on load ONLY in a ``TypeRegistry`` the application fills at import time
(``@register_type``, ``register_module``). A name that is not registered is an error that
names it; the loader never imports a module and never resolves a dotted path. Dataclass
instances are rebuilt with ``object.__new__`` plus ``object.__setattr__`` per field, so
neither ``__init__`` nor ``__post_init__`` runs (it works for frozen and slotted classes).
The only application code that can run on load is what constructing registered types
implies: ``__hash__``/``__eq__`` of registered dataclasses placed in sets or used as dict
keys, ``default_factory`` of a field absent from the checkpoint, and ``Flag`` composition.

Identity is kept: an object reachable twice (the same list under two attributes) is
written once and loaded as one object, so mutating it through one path is seen through
the other, as before the crash. Reference cycles are refused on dump with the path of
the field that closes the cycle: a cycle can only be rebuilt by creating objects before
their contents are known, which frozen dataclasses, tuples and hash-based containers do
not allow, and supporting half of the cases would make checkpointability depend on
container types in ways nobody can predict.

Byte layout (format version 1)::

    blob    := version:u8 (=1) value                  (no bytes may follow)
    value   := tag:u8 payload
    uvarint := unsigned LEB128 (7 bits a byte, low first, high bit = more), at most 10 bytes
    zigzag  := uvarint of (n << 1) ^ (n >> 63)
    text    := uvarint byte-count, UTF-8 (lone surrogates kept: "surrogatepass")

    tag  name       payload
    0x00 NONE       -
    0x01 FALSE      -
    0x02 TRUE       -
    0x03 INT        zigzag                            (-2**63 <= n < 2**63)
    0x04 BIG_INT    uvarint byte-count, two's complement little-endian
    0x05 FLOAT      8 bytes IEEE 754 binary64 little-endian (nan payloads, -0.0 kept)
    0x06 STR        text
    0x07 BYTES      uvarint byte-count, bytes
    0x08 BYTEARRAY  uvarint byte-count, bytes                              [memo]
    0x09 LIST       uvarint count, count values                            [memo]
    0x0A TUPLE      uvarint count, count values                            [memo]
    0x0B DICT       uvarint count, count (key value) pairs in insertion order [memo]
    0x0C SET        uvarint count, count values                            [memo]
    0x0D FROZENSET  uvarint count, count values                            [memo]
    0x0E DATETIME   uvarint year, u8 month day hour minute second, uvarint microsecond,
                    u8 fold, u8 zone: 0 naive | 1 UTC | 2 zigzag offset-microseconds,
                    u8 has-name, [text name]
    0x0F DATE       uvarint year, u8 month, u8 day
    0x10 TIMEDELTA  zigzag days, uvarint seconds, uvarint microseconds
    0x11 DECIMAL    text (``str(d)``, which Decimal parses back exactly)
    0x12 ENUM       text type-name, u8 kind: 0 text member-name | 1 value (an INT/BIG_INT)
    0x13 DATACLASS  text type-name, uvarint count, count (text field-name, value) [memo]
    0x14 PROXY      text type-path, text instance-name                     [memo]
    0x15 REF        uvarint memo-index

Values marked [memo] get the next memo index when they are COMPLETE (after their
contents), on dump and on load alike; REF names an earlier complete one. So a REF can
never point into an object still being built, and a crafted blob cannot make a cycle.

Limits: nesting ``nesting_depth_max`` containers deep (both ways, so a crafted blob
cannot exhaust the stack); every declared count and length is checked against the bytes
that remain before anything is allocated. Any malformed input raises
``StateSerializationError``, never another exception.

Large bytes values (``large_value_bytes_min`` and up) are not copied into the
intermediate buffer: the output is assembled by one join, so their bytes are copied
exactly once on dump, and once (into the new bytes object) on load.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import struct
import types
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final, TypeVar, overload

from ambrosia.errors import StateSerializationError

__all__ = [
    "FORMAT_VERSION",
    "PROXY_HOOK",
    "ProxyResolver",
    "TypeRegistry",
    "default_registry",
    "dump_attributes",
    "dumps",
    "load_attributes",
    "loads",
    "register_module",
    "register_type",
]

FORMAT_VERSION: Final = 1

PROXY_HOOK: Final = "__ambrosia_proxy__"
"""Name of the method that marks a proxy class.

A proxy class (the binding's) defines ``def __ambrosia_proxy__(self) -> tuple[str, str]``
returning (type path of the target immortal class, target instance name). It is looked
up on the class, never on the instance, so a proxy's ``__getattr__`` is not consulted.
"""

ProxyResolver = Callable[[str, str], object]
"""``resolve_proxy(type_path, instance_name)`` -> the proxy object to put in the state."""

nesting_depth_max: Final = 200
large_value_bytes_min: Final = 64 * 1024
attribute_prefix_reserved: Final = "_ambrosia"

_NONE: Final = 0x00
_FALSE: Final = 0x01
_TRUE: Final = 0x02
_INT: Final = 0x03
_BIG_INT: Final = 0x04
_FLOAT: Final = 0x05
_STR: Final = 0x06
_BYTES: Final = 0x07
_BYTEARRAY: Final = 0x08
_LIST: Final = 0x09
_TUPLE: Final = 0x0A
_DICT: Final = 0x0B
_SET: Final = 0x0C
_FROZENSET: Final = 0x0D
_DATETIME: Final = 0x0E
_DATE: Final = 0x0F
_TIMEDELTA: Final = 0x10
_DECIMAL: Final = 0x11
_ENUM: Final = 0x12
_DATACLASS: Final = 0x13
_PROXY: Final = 0x14
_REF: Final = 0x15

_ZONE_NAIVE: Final = 0
_ZONE_UTC: Final = 1
_ZONE_OFFSET: Final = 2

_ENUM_BY_NAME: Final = 0
_ENUM_BY_VALUE: Final = 1

_INT_MIN: Final = -(1 << 63)
_INT_LIMIT: Final = 1 << 63
_UVARINT_BYTES_MAX: Final = 10

_DOUBLE = struct.Struct("<d")

_Class = TypeVar("_Class", bound=type)


# -- registry -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Layout:
    """What the serializer needs to know about one registered class."""

    name: str
    cls: type
    is_enum: bool
    is_flag: bool
    field_names: tuple[str, ...]
    # field name -> (default value, default factory); one of them is MISSING
    defaults: tuple[tuple[str, Any, Any], ...]


def _default_type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class TypeRegistry:
    """The only place the loader finds classes: dataclasses and Enum subclasses by name.

    Fill it at import time, next to the class definitions. A name is
    ``module:QualifiedName`` unless given explicitly; an explicit name keeps old
    checkpoints loadable after the class moves to another module.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, _Layout] = {}
        self._by_class: dict[type, _Layout] = {}

    def register(self, cls: _Class, *, name: str | None = None) -> _Class:
        """Register ``cls`` (a dataclass or an Enum subclass); returns it unchanged."""
        if not isinstance(cls, type):
            raise StateSerializationError(f"register_type expects a class, got {cls!r}")
        is_enum = issubclass(cls, enum.Enum)
        if not is_enum and not dataclasses.is_dataclass(cls):
            raise StateSerializationError(
                f"{_default_type_name(cls)} is neither a dataclass nor an Enum: only those "
                "can be registered (apply @register_type above @dataclass)"
            )
        type_name = _default_type_name(cls) if name is None else name
        if not isinstance(type_name, str) or not type_name:
            raise StateSerializationError(f"invalid registered type name {type_name!r}")
        known = self._by_class.get(cls)
        if known is not None:
            if known.name != type_name:
                raise StateSerializationError(
                    f"{_default_type_name(cls)} is already registered as {known.name!r}"
                )
            return cls
        if type_name in self._by_name:
            raise StateSerializationError(
                f"type name {type_name!r} is already registered for another class"
            )
        layout = _Layout(
            name=type_name,
            cls=cls,
            is_enum=is_enum,
            is_flag=is_enum and issubclass(cls, enum.Flag),
            field_names=() if is_enum else tuple(f.name for f in dataclasses.fields(cls)),
            defaults=()
            if is_enum
            else tuple(
                (f.name, f.default, f.default_factory)
                for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING
            ),
        )
        self._by_name[type_name] = layout
        self._by_class[cls] = layout
        return cls

    def register_module(self, module: types.ModuleType) -> list[type]:
        """Register every dataclass and Enum defined at the top level of ``module``.

        The allow-list form: the module is walked now, by the application; nothing is
        looked up by module name at load time.
        """
        registered: list[type] = []
        for value in list(vars(module).values()):
            if (
                isinstance(value, type)
                and value.__module__ == module.__name__
                and (issubclass(value, enum.Enum) or dataclasses.is_dataclass(value))
            ):
                self.register(value)
                registered.append(value)
        return registered

    def name_of(self, cls: type) -> str | None:
        layout = self._by_class.get(cls)
        return None if layout is None else layout.name

    def lookup(self, name: str) -> type:
        """The class registered under ``name``; StateSerializationError naming it if none."""
        return self._layout_by_name(name).cls

    def _layout_by_name(self, name: str) -> _Layout:
        layout = self._by_name.get(name)
        if layout is None:
            raise StateSerializationError(
                f"type {name!r} is not registered; register it with @register_type in the "
                "module that defines it (checkpoints never import modules)"
            )
        return layout

    def _layout_by_class(self, cls: type) -> _Layout | None:
        return self._by_class.get(cls)

    def __contains__(self, cls: object) -> bool:
        return cls in self._by_class


default_registry = TypeRegistry()


@overload
def register_type(
    cls: _Class, /, *, name: str | None = None, registry: TypeRegistry | None = None
) -> _Class: ...


@overload
def register_type(
    cls: None = None, /, *, name: str | None = None, registry: TypeRegistry | None = None
) -> Callable[[_Class], _Class]: ...


def register_type(
    cls: _Class | None = None,
    /,
    *,
    name: str | None = None,
    registry: TypeRegistry | None = None,
) -> _Class | Callable[[_Class], _Class]:
    """Register a dataclass or Enum for checkpoints. ``@register_type`` or
    ``@register_type(name="stable.Name")``, placed above ``@dataclass``."""
    target = default_registry if registry is None else registry
    if cls is None:

        def decorate(inner: _Class) -> _Class:
            return target.register(inner, name=name)

        return decorate
    return target.register(cls, name=name)


def register_module(
    module: types.ModuleType, *, registry: TypeRegistry | None = None
) -> list[type]:
    """Register every top-level dataclass and Enum of ``module`` (see TypeRegistry)."""
    return (default_registry if registry is None else registry).register_module(module)


# -- dump -----------------------------------------------------------------------------


class _DumpFailure(Exception):
    """Internal: carries the reason up while each container adds its path segment.

    Segments are collected while unwinding, so the happy path pays nothing for paths.
    """

    def __init__(self, reason: str, cycle_depth: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cycle_depth = cycle_depth
        self.segments: list[str] = []

    def to_error(self, root: str) -> StateSerializationError:
        segments = self.segments[::-1]
        path = root + "".join(segments)
        if self.cycle_depth is not None:
            enclosing = root + "".join(segments[: self.cycle_depth])
            return StateSerializationError(
                f"{path}: reference cycle back to {enclosing} (cycles cannot be checkpointed)"
            )
        return StateSerializationError(f"{path}: {self.reason}")


def _append_uvarint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _position_of(container: Iterable[object], item: object) -> int:
    for position, candidate in enumerate(container):
        if candidate is item:
            return position
    return -1


_SIMPLE_KEY_TYPES = (str, int, float, bool, type(None), bytes, tuple)


def _key_segment(key: object, position: int) -> str:
    if type(key) in _SIMPLE_KEY_TYPES:
        text = repr(key)
        if len(text) <= 60:
            return f"[{text}]"
    return f"[#{position}]"


def _describe_unsupported(value: object) -> str:
    cls = type(value)
    if isinstance(value, type):
        return f"class {value.__qualname__} is not serializable (classes are code, not state)"
    if isinstance(
        value, types.FunctionType | types.BuiltinFunctionType | types.MethodType | types.LambdaType
    ):
        name = getattr(value, "__qualname__", repr(value))
        return f"function {name!r} is not serializable (functions are code, not state)"
    if isinstance(value, io.IOBase):
        return f"open file ({cls.__qualname__}) is not serializable"
    if isinstance(value, enum.Enum):
        return f"enum {_default_type_name(cls)} is not registered; decorate it with @register_type"
    if dataclasses.is_dataclass(cls):
        return (
            f"dataclass {_default_type_name(cls)} is not registered; decorate it with "
            "@register_type"
        )
    for base in (dict, list, tuple, set, frozenset, str, bytes, int, float, datetime, date):
        if isinstance(value, base):
            return (
                f"{cls.__qualname__} is not serializable (subclasses of {base.__qualname__} "
                "are not supported; convert to a plain one)"
            )
    if cls.__module__ == "builtins":
        return f"{cls.__qualname__} is not serializable"
    return (
        f"{cls.__qualname__} is not serializable ({_default_type_name(cls)}: only built-in "
        "data, registered dataclasses and enums, and proxies can be checkpointed)"
    )


class _Dumper:
    __slots__ = ("_active", "_memo", "_out", "_parts", "_registry")

    def __init__(self, registry: TypeRegistry) -> None:
        self._registry = registry
        self._out = bytearray((FORMAT_VERSION,))
        self._parts: list[bytes | bytearray | memoryview] = []
        # id -> memo index of every complete [memo] object. The objects stay alive for
        # the whole dump (they are reachable from the root), so ids cannot be reused.
        self._memo: dict[int, int] = {}
        # id -> depth of every container on the path from the root to where we are.
        self._active: dict[int, int] = {}

    def result(self) -> bytes:
        if not self._parts:
            return bytes(self._out)
        self._parts.append(self._out)
        return b"".join(self._parts)

    def write(self, value: object) -> None:
        writer = _WRITERS.get(type(value))
        if writer is not None:
            writer(self, value)
        else:
            self._write_other(value)

    # Containers: enter/leave keep the memo, the cycle check and the depth limit.

    def _enter(self, value: object) -> bool:
        """Start a [memo] value; True if it was written as a REF instead."""
        key = id(value)
        index = self._memo.get(key)
        if index is not None:
            self._out.append(_REF)
            _append_uvarint(self._out, index)
            return True
        depth = self._active.get(key)
        if depth is not None:
            raise _DumpFailure("reference cycle", cycle_depth=depth)
        if len(self._active) >= nesting_depth_max:
            raise _DumpFailure(f"nested deeper than {nesting_depth_max} containers")
        self._active[key] = len(self._active)
        return False

    def _leave(self, value: object) -> None:
        key = id(value)
        del self._active[key]
        self._memo[key] = len(self._memo)

    def _write_blob(self, tag: int, payload: bytes | bytearray | memoryview) -> None:
        out = self._out
        out.append(tag)
        _append_uvarint(out, len(payload))
        if len(payload) < large_value_bytes_min:
            out += payload
        else:
            # Hand the object itself to the final join instead of copying it twice.
            self._parts.append(out)
            self._parts.append(payload)
            self._out = bytearray()

    def _write_text(self, text: str) -> None:
        encoded = text.encode("utf-8", "surrogatepass")
        _append_uvarint(self._out, len(encoded))
        self._out += encoded

    def _write_none(self, value: None) -> None:
        self._out.append(_NONE)

    def _write_bool(self, value: bool) -> None:
        self._out.append(_TRUE if value else _FALSE)

    def _write_int(self, value: int) -> None:
        out = self._out
        if _INT_MIN <= value < _INT_LIMIT:
            out.append(_INT)
            _append_uvarint(out, (value << 1) ^ (value >> 63))
        else:
            size = (value.bit_length() + 8) // 8
            out.append(_BIG_INT)
            _append_uvarint(out, size)
            out += value.to_bytes(size, "little", signed=True)

    def _write_float(self, value: float) -> None:
        self._out.append(_FLOAT)
        self._out += _DOUBLE.pack(value)

    def _write_str(self, value: str) -> None:
        self._write_blob(_STR, value.encode("utf-8", "surrogatepass"))

    def _write_bytes(self, value: bytes) -> None:
        self._write_blob(_BYTES, value)

    def _write_bytearray(self, value: bytearray) -> None:
        if self._enter(value):
            return
        self._write_blob(_BYTEARRAY, value)
        self._leave(value)

    def _write_sequence(self, tag: int, value: list[object] | tuple[object, ...]) -> None:
        if self._enter(value):
            return
        self._out.append(tag)
        _append_uvarint(self._out, len(value))
        item: object = None
        try:
            for item in value:
                self.write(item)
        except _DumpFailure as failure:
            failure.segments.append(f"[{_position_of(value, item)}]")
            raise
        self._leave(value)

    def _write_list(self, value: list[object]) -> None:
        self._write_sequence(_LIST, value)

    def _write_tuple(self, value: tuple[object, ...]) -> None:
        self._write_sequence(_TUPLE, value)

    def _write_set(self, tag: int, value: set[object] | frozenset[object]) -> None:
        if self._enter(value):
            return
        self._out.append(tag)
        _append_uvarint(self._out, len(value))
        item: object = None
        try:
            for item in value:
                self.write(item)
        except _DumpFailure as failure:
            failure.segments.append(f"{{#{_position_of(value, item)}}}")
            raise
        self._leave(value)

    def _write_plain_set(self, value: set[object]) -> None:
        self._write_set(_SET, value)

    def _write_frozenset(self, value: frozenset[object]) -> None:
        self._write_set(_FROZENSET, value)

    def _write_dict(self, value: dict[Any, object], as_attributes: bool = False) -> None:
        if self._enter(value):
            return
        self._out.append(_DICT)
        _append_uvarint(self._out, len(value))
        key: object = None
        in_key = True
        try:
            for key, item in value.items():
                in_key = True
                self.write(key)
                in_key = False
                self.write(item)
        except _DumpFailure as failure:
            position = _position_of(value, key)
            if in_key:
                failure.segments.append(f"<key #{position}>")
            elif as_attributes:
                failure.segments.append(f".{key}")
            else:
                failure.segments.append(_key_segment(key, position))
            raise
        self._leave(value)

    def _write_datetime(self, value: datetime) -> None:
        zone = value.tzinfo
        if zone is not None and type(zone) is not timezone:
            raise _DumpFailure(
                f"datetime with tzinfo {type(zone).__qualname__} is not serializable "
                "(only naive datetimes and fixed offsets, datetime.timezone, are)"
            )
        out = self._out
        out.append(_DATETIME)
        _append_uvarint(out, value.year)
        out += bytes((value.month, value.day, value.hour, value.minute, value.second))
        _append_uvarint(out, value.microsecond)
        out.append(value.fold)
        if zone is None:
            out.append(_ZONE_NAIVE)
        elif zone is UTC:
            out.append(_ZONE_UTC)
        else:
            offset = zone.utcoffset(None)
            offset_us = (offset.days * 86_400 + offset.seconds) * 1_000_000 + offset.microseconds
            out.append(_ZONE_OFFSET)
            _append_uvarint(out, (offset_us << 1) ^ (offset_us >> 63))
            name = zone.tzname(None)
            if name == timezone(offset).tzname(None):
                out.append(0)
            else:
                out.append(1)
                self._write_text(name)

    def _write_date(self, value: date) -> None:
        out = self._out
        out.append(_DATE)
        _append_uvarint(out, value.year)
        out += bytes((value.month, value.day))

    def _write_timedelta(self, value: timedelta) -> None:
        out = self._out
        out.append(_TIMEDELTA)
        _append_uvarint(out, (value.days << 1) ^ (value.days >> 63))
        _append_uvarint(out, value.seconds)
        _append_uvarint(out, value.microseconds)

    def _write_decimal(self, value: Decimal) -> None:
        self._out.append(_DECIMAL)
        self._write_text(str(value))

    def _write_other(self, value: object) -> None:
        cls = type(value)
        layout = self._registry._layout_by_class(cls)
        if layout is not None:
            if layout.is_enum:
                self._write_enum(value, layout)
            else:
                self._write_dataclass(value, layout)
            return
        hook = getattr(cls, PROXY_HOOK, None)
        if hook is not None:
            self._write_proxy(value, hook)
            return
        raise _DumpFailure(_describe_unsupported(value))

    def _write_enum(self, value: Any, layout: _Layout) -> None:
        out = self._out
        out.append(_ENUM)
        self._write_text(layout.name)
        if layout.is_flag:
            out.append(_ENUM_BY_VALUE)
            self._write_int(int(value.value))
        else:
            out.append(_ENUM_BY_NAME)
            self._write_text(value.name)

    def _write_dataclass(self, value: object, layout: _Layout) -> None:
        if self._enter(value):
            return
        present = [
            (name, getattr(value, name))
            for name in layout.field_names
            if hasattr(value, name)  # a slotted field may be unset (init=False, no default)
        ]
        self._out.append(_DATACLASS)
        self._write_text(layout.name)
        _append_uvarint(self._out, len(present))
        name = ""
        try:
            for name, item in present:
                self._write_text(name)
                self.write(item)
        except _DumpFailure as failure:
            failure.segments.append(f".{name}")
            raise
        self._leave(value)

    def _write_proxy(self, value: object, hook: Callable[[object], object]) -> None:
        if self._enter(value):
            return
        target = hook(value)
        if (
            not isinstance(target, tuple)
            or len(target) != 2
            or not all(isinstance(part, str) for part in target)
        ):
            raise _DumpFailure(
                f"{type(value).__qualname__}.{PROXY_HOOK}() must return "
                f"(type path, instance name), got {target!r}"
            )
        self._out.append(_PROXY)
        self._write_text(target[0])
        self._write_text(target[1])
        self._leave(value)


_WRITERS: dict[type, Callable[[_Dumper, Any], None]] = {
    type(None): _Dumper._write_none,
    bool: _Dumper._write_bool,
    int: _Dumper._write_int,
    float: _Dumper._write_float,
    str: _Dumper._write_str,
    bytes: _Dumper._write_bytes,
    bytearray: _Dumper._write_bytearray,
    list: _Dumper._write_list,
    tuple: _Dumper._write_tuple,
    dict: _Dumper._write_dict,
    set: _Dumper._write_plain_set,
    frozenset: _Dumper._write_frozenset,
    datetime: _Dumper._write_datetime,
    date: _Dumper._write_date,
    timedelta: _Dumper._write_timedelta,
    Decimal: _Dumper._write_decimal,
}


def dumps(obj: object, *, registry: TypeRegistry | None = None, root: str = "state") -> bytes:
    """Serialize ``obj``; StateSerializationError names the path of anything unsupported.

    ``root`` is the name the path in error messages starts with.
    """
    dumper = _Dumper(default_registry if registry is None else registry)
    try:
        dumper.write(obj)
    except _DumpFailure as failure:
        raise failure.to_error(root) from None
    return dumper.result()


def _instance_attributes(instance: object) -> dict[str, object]:
    attributes: dict[str, object] = dict(getattr(instance, "__dict__", {}))
    for klass in type(instance).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            name = slot
            if slot.startswith("__") and not slot.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{slot}"
            descriptor = klass.__dict__.get(name)
            if descriptor is None:
                continue
            try:
                attributes[name] = descriptor.__get__(instance, klass)
            except AttributeError:
                continue  # declared but never assigned
    return attributes


def dump_attributes(
    instance: object,
    exclude: Collection[str] = frozenset(),
    *,
    registry: TypeRegistry | None = None,
) -> bytes:
    """Serialize ``instance``'s attributes (``__dict__`` and slots), which ARE its state.

    Attributes named in ``exclude`` and those starting with ``_ambrosia`` (the binding's
    own bookkeeping) are left out. Errors read like ``state.pending[3].sock: ...``.
    """
    attributes = {
        name: value
        for name, value in _instance_attributes(instance).items()
        if not name.startswith(attribute_prefix_reserved) and name not in exclude
    }
    dumper = _Dumper(default_registry if registry is None else registry)
    try:
        dumper._write_dict(attributes, as_attributes=True)
    except _DumpFailure as failure:
        raise failure.to_error("state") from None
    return dumper.result()


# -- load -----------------------------------------------------------------------------


class _Loader:
    __slots__ = ("_data", "_depth", "_end", "_memo", "_position", "_registry", "_resolve_proxy")

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        registry: TypeRegistry,
        resolve_proxy: ProxyResolver,
    ) -> None:
        self._data = memoryview(data).cast("B")
        self._end = len(self._data)
        self._position = 0
        self._memo: list[object] = []
        self._depth = 0
        self._registry = registry
        self._resolve_proxy = resolve_proxy

    def fail(self, reason: str) -> StateSerializationError:
        return StateSerializationError(f"invalid state at byte offset {self._position}: {reason}")

    def load(self) -> object:
        if self._end == 0:
            raise self.fail("empty")
        version = self._data[0]
        if version != FORMAT_VERSION:
            raise StateSerializationError(
                f"state format version {version} is not supported (this build reads "
                f"version {FORMAT_VERSION})"
            )
        self._position = 1
        value = self.read()
        if self._position != self._end:
            raise self.fail(f"{self._end - self._position} bytes after the value")
        return value

    def read(self) -> object:
        if self._position >= self._end:
            raise self.fail("truncated: expected a value")
        tag = self._data[self._position]
        self._position += 1
        if tag >= len(_READERS):
            self._position -= 1
            raise self.fail(f"unknown tag 0x{tag:02x}")
        return _READERS[tag](self)

    # Primitive readers

    def _uvarint(self) -> int:
        data = self._data
        position = self._position
        result = 0
        shift = 0
        while True:
            if position >= self._end:
                raise self.fail("truncated varint")
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift >= 7 * _UVARINT_BYTES_MAX:
                raise self.fail(f"varint longer than {_UVARINT_BYTES_MAX} bytes")
        self._position = position
        return result

    def _zigzag(self) -> int:
        value = self._uvarint()
        return (value >> 1) ^ -(value & 1)

    def _byte(self) -> int:
        if self._position >= self._end:
            raise self.fail("truncated")
        byte = self._data[self._position]
        self._position += 1
        return byte

    def _count(self, bytes_per_item: int) -> int:
        count = self._uvarint()
        if count * bytes_per_item > self._end - self._position:
            raise self.fail(f"count {count} exceeds the remaining bytes")
        return count

    def _span(self) -> memoryview:
        size = self._count(1)
        start = self._position
        self._position = start + size
        return self._data[start : self._position]

    def _text(self) -> str:
        span = self._span()
        try:
            return str(span, "utf-8", "surrogatepass")
        except UnicodeDecodeError as error:
            raise self.fail(f"invalid UTF-8: {error.reason}") from None

    def _enter(self) -> None:
        self._depth += 1
        if self._depth > nesting_depth_max:
            raise self.fail(f"nested deeper than {nesting_depth_max} containers")

    def _leave(self, value: object) -> object:
        self._depth -= 1
        self._memo.append(value)
        return value

    # Tag readers, indexed by tag in _READERS

    def _read_none(self) -> object:
        return None

    def _read_false(self) -> object:
        return False

    def _read_true(self) -> object:
        return True

    def _read_int(self) -> object:
        return self._zigzag()

    def _read_big_int(self) -> object:
        return int.from_bytes(self._span(), "little", signed=True)

    def _read_float(self) -> object:
        if self._end - self._position < 8:
            raise self.fail("truncated float")
        start = self._position
        self._position += 8
        return _DOUBLE.unpack_from(self._data, start)[0]

    def _read_str(self) -> object:
        return self._text()

    def _read_bytes(self) -> object:
        return bytes(self._span())

    def _read_bytearray(self) -> object:
        self._enter()
        return self._leave(bytearray(self._span()))

    def _read_items(self) -> list[object]:
        count = self._count(1)
        return [self.read() for _ in range(count)]

    def _read_list(self) -> object:
        self._enter()
        return self._leave(self._read_items())

    def _read_tuple(self) -> object:
        self._enter()
        return self._leave(tuple(self._read_items()))

    def _read_dict(self) -> object:
        self._enter()
        count = self._count(2)
        result: dict[object, object] = {}
        for _ in range(count):
            key = self.read()
            value = self.read()
            try:
                result[key] = value
            except TypeError as error:
                raise self.fail(f"unhashable dict key: {error}") from None
        return self._leave(result)

    def _read_set(self) -> object:
        self._enter()
        items = self._read_items()
        try:
            return self._leave(set(items))
        except TypeError as error:
            raise self.fail(f"unhashable set member: {error}") from None

    def _read_frozenset(self) -> object:
        self._enter()
        items = self._read_items()
        try:
            return self._leave(frozenset(items))
        except TypeError as error:
            raise self.fail(f"unhashable set member: {error}") from None

    def _read_datetime(self) -> object:
        year = self._uvarint()
        month, day, hour, minute, second = (self._byte() for _ in range(5))
        microsecond = self._uvarint()
        fold = self._byte()
        zone_kind = self._byte()
        zone: timezone | None
        try:
            if zone_kind == _ZONE_NAIVE:
                zone = None
            elif zone_kind == _ZONE_UTC:
                zone = UTC
            elif zone_kind == _ZONE_OFFSET:
                offset = timedelta(microseconds=self._zigzag())
                has_name = self._byte()
                if has_name == 0:
                    zone = timezone(offset)
                elif has_name == 1:
                    zone = timezone(offset, self._text())
                else:
                    raise self.fail(f"invalid zone name flag {has_name}")
            else:
                raise self.fail(f"invalid zone kind {zone_kind}")
            return datetime(year, month, day, hour, minute, second, microsecond, zone, fold=fold)
        except (ValueError, OverflowError) as error:
            raise self.fail(f"invalid datetime: {error}") from None

    def _read_date(self) -> object:
        year = self._uvarint()
        month = self._byte()
        day = self._byte()
        try:
            return date(year, month, day)
        except (ValueError, OverflowError) as error:
            raise self.fail(f"invalid date: {error}") from None

    def _read_timedelta(self) -> object:
        days = self._zigzag()
        seconds = self._uvarint()
        microseconds = self._uvarint()
        if seconds >= 86_400 or microseconds >= 1_000_000:
            raise self.fail("invalid timedelta: seconds or microseconds out of range")
        try:
            return timedelta(days=days, seconds=seconds, microseconds=microseconds)
        except OverflowError as error:
            raise self.fail(f"invalid timedelta: {error}") from None

    def _read_decimal(self) -> object:
        text = self._text()
        try:
            value = Decimal(text)
        except ArithmeticError:
            value = None
        # str() of a Decimal parses back to an identical Decimal and prints identically,
        # so anything else was not written by dumps (and may have been parsed leniently).
        if value is None or str(value) != text:
            raise self.fail(f"invalid decimal {text[:40]!r}")
        return value

    def _read_enum(self) -> object:
        layout = self._registry_layout(self._text())
        if not layout.is_enum:
            raise self.fail(f"{layout.name} is not an enum")
        kind = self._byte()
        members: Any = layout.cls
        if kind == _ENUM_BY_NAME and not layout.is_flag:
            name = self._text()
            try:
                return members.__members__[name]
            except KeyError:
                raise self.fail(f"{layout.name} has no member {name!r}") from None
        if kind == _ENUM_BY_VALUE and layout.is_flag:
            value = self.read()
            if type(value) is not int:
                raise self.fail(f"flag {layout.name} value is not an int")
            try:
                return members(value)
            except ValueError:
                raise self.fail(f"{layout.name} has no value {value!r}") from None
        raise self.fail(f"invalid enum encoding {kind} for {layout.name}")

    def _registry_layout(self, name: str) -> _Layout:
        try:
            return self._registry._layout_by_name(name)
        except StateSerializationError as error:
            raise self.fail(str(error)) from None

    def _read_dataclass(self) -> object:
        self._enter()
        layout = self._registry_layout(self._text())
        if layout.is_enum:
            raise self.fail(f"{layout.name} is an enum, not a dataclass")
        count = self._count(2)
        try:
            instance: object = object.__new__(layout.cls)
        except TypeError as error:
            raise self.fail(f"cannot create {layout.name}: {error}") from None
        seen: set[str] = set()
        for _ in range(count):
            name = self._text()
            if name not in layout.field_names:
                raise self.fail(f"{layout.name} has no field {name!r}")
            if name in seen:
                raise self.fail(f"field {name!r} of {layout.name} appears twice")
            seen.add(name)
            object.__setattr__(instance, name, self.read())
        # Fields added to the class after the checkpoint was taken get their defaults;
        # fields without one stay unset, as an unset slot was when dumped.
        for name, default, factory in layout.defaults:
            if name not in seen:
                value = default if factory is dataclasses.MISSING else factory()
                object.__setattr__(instance, name, value)
        return self._leave(instance)

    def _read_proxy(self) -> object:
        self._enter()
        type_path = self._text()
        name = self._text()
        return self._leave(self._resolve_proxy(type_path, name))

    def _read_ref(self) -> object:
        index = self._uvarint()
        if index >= len(self._memo):
            raise self.fail(f"reference to object {index}, only {len(self._memo)} exist")
        return self._memo[index]


_READERS: tuple[Callable[[_Loader], object], ...] = (
    _Loader._read_none,
    _Loader._read_false,
    _Loader._read_true,
    _Loader._read_int,
    _Loader._read_big_int,
    _Loader._read_float,
    _Loader._read_str,
    _Loader._read_bytes,
    _Loader._read_bytearray,
    _Loader._read_list,
    _Loader._read_tuple,
    _Loader._read_dict,
    _Loader._read_set,
    _Loader._read_frozenset,
    _Loader._read_datetime,
    _Loader._read_date,
    _Loader._read_timedelta,
    _Loader._read_decimal,
    _Loader._read_enum,
    _Loader._read_dataclass,
    _Loader._read_proxy,
    _Loader._read_ref,
)
assert len(_READERS) == _REF + 1


def loads(
    data: bytes | bytearray | memoryview,
    *,
    resolve_proxy: ProxyResolver,
    registry: TypeRegistry | None = None,
) -> object:
    """Rebuild a value written by ``dumps``. Bad bytes raise StateSerializationError.

    Classes come only from ``registry`` (default: the module-wide one); proxies are
    rebuilt by ``resolve_proxy(type_path, instance_name)``.
    """
    loader = _Loader(data, default_registry if registry is None else registry, resolve_proxy)
    return loader.load()


def load_attributes(
    instance: object,
    data: bytes | bytearray | memoryview,
    resolve_proxy: ProxyResolver,
    *,
    registry: TypeRegistry | None = None,
) -> None:
    """Set the attributes saved by ``dump_attributes`` on ``instance``.

    Uses ``object.__setattr__``, so no ``__setattr__`` of the application runs. Attributes
    the instance has that the checkpoint lacks are left alone (an upgraded class may add
    attributes in ``__init__``).
    """
    attributes = loads(data, resolve_proxy=resolve_proxy, registry=registry)
    if type(attributes) is not dict:
        raise StateSerializationError("checkpoint does not hold an attribute mapping")
    for name in attributes:
        if type(name) is not str or not name.isidentifier():
            raise StateSerializationError(f"checkpoint holds invalid attribute name {name!r}")
        if name.startswith(attribute_prefix_reserved):
            raise StateSerializationError(
                f"checkpoint holds reserved attribute {name!r} (the binding's own)"
            )
    for name, value in attributes.items():
        object.__setattr__(instance, name, value)
