"""The checkpoint serializer: round trips, identity, refusals, and loading without code."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import socket
import struct
import sys
import types
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ambrosia.binding.state import (
    FORMAT_VERSION,
    TypeRegistry,
    dump_attributes,
    dumps,
    load_attributes,
    loads,
    nesting_depth_max,
    register_module,
    register_type,
)
from ambrosia.errors import StateSerializationError

# -- registered test types ---------------------------------------------------------------


@register_type
class Color(enum.Enum):
    RED = "red"
    GREEN = 2
    BLUE = (3, "blue")


@register_type
class Level(enum.IntEnum):
    LOW = 1
    HIGH = 10


@register_type
class Permission(enum.Flag):
    READ = 1
    WRITE = 2
    EXECUTE = 4


@register_type
@dataclass(frozen=True, slots=True)
class Point:
    x: Any
    y: Any


@register_type(name="tests.state.Box")
@dataclass
class Box:
    items: Any
    label: str = "box"


@register_type
@dataclass
class Node:
    value: int
    next: Node | None = None


@register_type
@dataclass
class Connection:
    peer: str
    sock: Any


init_calls: list[str] = []


@register_type
@dataclass
class Audited:
    amount: int
    history: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        init_calls.append(f"post_init {self.amount}")


class Unregistered:
    def __init__(self) -> None:
        self.value = 1


@dataclass
class UnregisteredData:
    value: int


class Proxy:
    """Shaped like the binding's proxies: marker method, dynamic attribute access."""

    def __init__(self, type_path: str, name: str) -> None:
        self._target = (type_path, name)

    def __ambrosia_proxy__(self) -> tuple[str, str]:
        return self._target

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the serializer must not touch proxy attributes ({name})")


def no_proxies(type_path: str, name: str) -> object:
    raise AssertionError(f"unexpected proxy {type_path} {name}")


def round_trip(value: object, resolve_proxy: Callable[[str, str], object] = no_proxies) -> Any:
    return loads(dumps(value), resolve_proxy=resolve_proxy)


def same(left: object, right: object) -> bool:
    """Strict structural equality: exact types, float bits, order of dicts, tz offsets."""
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        assert isinstance(right, float)
        return struct.pack("<d", left) == struct.pack("<d", right)
    if isinstance(left, Decimal):
        return str(left) == str(right)
    if isinstance(left, datetime):
        assert isinstance(right, datetime)
        return (
            left.replace(tzinfo=None) == right.replace(tzinfo=None)
            and left.fold == right.fold
            and left.utcoffset() == right.utcoffset()
            and left.tzname() == right.tzname()
        )
    if isinstance(left, list | tuple):
        assert isinstance(right, list | tuple)
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, dict):
        assert isinstance(right, dict)
        return len(left) == len(right) and all(
            same(left_key, right_key) and same(left_value, right_value)
            for (left_key, left_value), (right_key, right_value) in zip(
                left.items(), right.items(), strict=True
            )
        )
    if isinstance(left, set | frozenset):
        assert isinstance(right, set | frozenset)
        return len(left) == len(right) and all(
            any(same(item, other) for other in right) for item in left
        )
    if dataclasses.is_dataclass(left):
        return all(
            same(getattr(left, item.name), getattr(right, item.name))
            for item in dataclasses.fields(left)
        )
    return left == right


# -- round trips ---------------------------------------------------------------------------

offsets = st.timedeltas(
    min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
)
zones = (
    st.none()
    | st.just(UTC)
    | st.builds(timezone, offsets)
    | st.builds(timezone, offsets, st.text(min_size=1, max_size=6))
)
hashable_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats()
    | st.text()
    | st.binary()
    | st.dates()
    | st.datetimes(timezones=zones)
    | st.timedeltas()
    | st.decimals(allow_nan=False)
    | st.sampled_from([*Color, *Level, Permission.READ, Permission.READ | Permission.WRITE])
)
leaves = (
    hashable_leaves
    | st.decimals()
    | st.builds(bytearray, st.binary())
    | st.sampled_from([float("nan"), -0.0, math.inf, -math.inf, Decimal("sNaN"), Permission(0)])
)
hashables = st.recursive(
    hashable_leaves,
    lambda children: (
        st.tuples(children, children)
        | st.frozensets(children, max_size=4)
        | st.builds(Point, children, children)
    ),
    max_leaves=10,
)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(hashables, children, max_size=5)
        | st.sets(hashables, max_size=4)
        | st.frozensets(hashables, max_size=4)
        | st.builds(Point, children, children)
        | st.builds(Box, children, st.text(max_size=5))
    ),
    max_leaves=30,
)


# The nested strategy's own repr is large; hypothesis warns about building it.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@settings(max_examples=300, deadline=None)
@given(values)
def test_round_trip(value: object) -> None:
    assert same(round_trip(value), value)


@settings(deadline=None)
@given(st.integers() | st.integers(min_value=-(2**2000), max_value=2**2000))
def test_integers_of_any_size(value: int) -> None:
    loaded = round_trip(value)
    assert type(loaded) is int
    assert loaded == value


def test_special_floats_keep_their_bits() -> None:
    for value in (float("nan"), -0.0, math.inf, -math.inf, 5e-324, sys.float_info.max):
        assert struct.pack("<d", round_trip(value)) == struct.pack("<d", value)


def test_dict_order_and_key_types_are_kept() -> None:
    value = {3: "c", "b": 2, (1, "x"): None, Point(1, 2): [1], Color.RED: b"r", None: 0}
    loaded = round_trip(value)
    assert list(loaded) == list(value)
    assert same(loaded, value)


def test_datetimes_keep_zone_name_and_fold() -> None:
    zone = timezone(timedelta(hours=5, minutes=30), "IST")
    aware = datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=zone)
    folded = datetime(2024, 11, 3, 1, 30, fold=1)
    loaded_aware, loaded_folded, loaded_utc = round_trip(
        [aware, folded, datetime(1, 1, 1, tzinfo=UTC)]
    )
    assert loaded_aware.tzname() == "IST"
    assert loaded_aware.utcoffset() == timedelta(hours=5, minutes=30)
    assert loaded_folded.fold == 1
    assert loaded_utc.tzinfo is UTC


def test_large_bytes_round_trip_and_are_written_once() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB
    blob = dumps({"payload": payload, "tail": "after"})
    assert len(blob) < len(payload) + 64
    assert blob.count(payload) == 1
    assert round_trip({"payload": payload})["payload"] == payload


def test_loads_accepts_memoryview() -> None:
    assert loads(memoryview(dumps([1, "two"])), resolve_proxy=no_proxies) == [1, "two"]


# -- identity ------------------------------------------------------------------------------


def test_shared_references_load_as_one_object() -> None:
    shared_list = [1, 2]
    shared_box = Box(items=shared_list)
    shared_bytes = bytearray(b"buffer")
    state = {
        "a": shared_list,
        "b": shared_list,
        "boxes": (shared_box, shared_box),
        "buffers": [shared_bytes, shared_bytes],
    }
    loaded = round_trip(state)
    assert loaded["a"] is loaded["b"]
    assert loaded["boxes"][0] is loaded["boxes"][1]
    assert loaded["boxes"][0].items is loaded["a"]
    assert loaded["buffers"][0] is loaded["buffers"][1]
    loaded["a"].append(3)
    assert loaded["boxes"][1].items == [1, 2, 3]


def test_cycle_through_a_list_names_both_paths() -> None:
    looping: list[object] = [0]
    looping.append({"again": looping})
    with pytest.raises(StateSerializationError) as caught:
        dumps({"outer": [looping]})
    assert str(caught.value) == (
        "state['outer'][0][1]['again']: reference cycle back to state['outer'][0] "
        "(cycles cannot be checkpointed)"
    )


def test_cycle_through_dataclasses_in_attributes() -> None:
    class Holder:
        def __init__(self) -> None:
            self.node = Node(1, Node(2))
            assert self.node.next is not None
            self.node.next.next = self.node

    with pytest.raises(StateSerializationError) as caught:
        dump_attributes(Holder())
    assert str(caught.value) == (
        "state.node.next.next: reference cycle back to state.node (cycles cannot be checkpointed)"
    )


def test_deep_but_acyclic_chains_are_fine_up_to_the_limit() -> None:
    chain: Node | None = None
    for value in range(nesting_depth_max - 1):
        chain = Node(value, chain)
    loaded = round_trip(chain)
    assert loaded.value == nesting_depth_max - 2
    too_deep: list[object] = []
    for _ in range(nesting_depth_max + 5):
        too_deep = [too_deep]
    with pytest.raises(StateSerializationError, match="nested deeper than"):
        dumps(too_deep)


# -- refusals on dump ------------------------------------------------------------------------


class Service:
    def __init__(self, sock: socket.socket) -> None:
        self.pending = [1, "two", None, Connection("peer", sock)]
        self._ambrosia_runtime = object()  # the binding's own: never serialized


def test_the_path_of_an_unserializable_attribute() -> None:
    with socket.socket() as sock, pytest.raises(StateSerializationError) as caught:
        dump_attributes(Service(sock))
    assert str(caught.value).startswith("state.pending[3].sock: socket is not serializable")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"f": lambda: 1}, "state['f']: function '<lambda>' is not serializable"),
        ({"k": [print]}, "state['k'][0]: function 'print' is not serializable"),
        ([Unregistered()], f"state[0]: Unregistered is not serializable ({__name__}:Unregistered"),
        (
            (UnregisteredData(1),),
            f"state[0]: dataclass {__name__}:UnregisteredData is not registered",
        ),
        ({"t": OrderedDict()}, "state['t']: OrderedDict is not serializable (subclasses of dict"),
        ([int], "state[0]: class int is not serializable"),
        (
            {"when": datetime(2024, 1, 1, tzinfo=ZoneInfo("UTC"))},
            "state['when']: datetime with tzinfo ZoneInfo is not serializable",
        ),
        ({(1, 2): {"x": [0, {frozenset({1}), 2.5}, object()]}}, "state[(1, 2)]['x'][2]: object"),
        ({Unregistered(): 1}, "state<key #0>: Unregistered is not serializable"),
    ],
)
def test_unsupported_values_name_their_path(value: object, message: str) -> None:
    with pytest.raises(StateSerializationError) as caught:
        dumps(value)
    assert str(caught.value).startswith(message), str(caught.value)


def test_open_file_is_refused(tmp_path: Path) -> None:
    with (
        (tmp_path / "f").open("w") as handle,
        pytest.raises(StateSerializationError, match=r"state\.log: open file \(TextIOWrapper\)"),
    ):
        dump_attributes(types.SimpleNamespace(log=handle))


def test_unregistered_dataclass_message_says_how_to_fix() -> None:
    with pytest.raises(StateSerializationError, match="not registered; decorate it with"):
        dumps(UnregisteredData(1))


# -- loading executes nothing -------------------------------------------------------------


def craft(tag: int, *texts: str, tail: bytes = b"") -> bytes:
    """A blob by hand: version, tag, length-prefixed UTF-8 texts, then raw tail bytes."""
    body = bytearray((FORMAT_VERSION, tag))
    for text in texts:
        encoded = text.encode()
        body.append(len(encoded))
        body += encoded
    return bytes(body + tail)


_DATACLASS_TAG = 0x13
_ENUM_TAG = 0x12


def test_crafted_blob_naming_an_unimportable_type_imports_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "planted_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from dataclasses import dataclass\n"
        "@dataclass\nclass Payload:\n    x: int = 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    modules_before = set(sys.modules)
    for name in ("planted_module:Payload", "planted_module.Payload", "os:system", "os.system"):
        for tag in (_DATACLASS_TAG, _ENUM_TAG):
            blob = craft(tag, name, tail=b"\x00")
            with pytest.raises(StateSerializationError, match="is not registered") as caught:
                loads(blob, resolve_proxy=no_proxies)
            assert repr(name) in str(caught.value)
    assert not marker.exists()
    assert "planted_module" not in sys.modules
    assert set(sys.modules) == modules_before


def test_loading_dataclasses_calls_neither_init_nor_post_init() -> None:
    init_calls.clear()
    original = Audited(7, [1, 2])
    assert init_calls == ["post_init 7"]
    init_calls.clear()
    loaded = round_trip(original)
    assert init_calls == []
    assert loaded == original
    assert loaded is not original


def test_frozen_and_slotted_dataclasses_are_rebuilt() -> None:
    point = round_trip(Point(1, [2]))
    assert type(point) is Point
    assert point == Point(1, [2])
    assert not hasattr(point, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.x = 3  # type: ignore[misc]


def test_a_field_added_later_gets_its_default_and_an_unknown_field_is_refused() -> None:
    @dataclass
    class Old:
        amount: int

    @dataclass
    class New:
        amount: int
        tags: list[str] = field(default_factory=lambda: ["new"])
        note: str = "none"

    old_registry, new_registry = TypeRegistry(), TypeRegistry()
    old_registry.register(Old, name="Account")
    new_registry.register(New, name="Account")
    upgraded = loads(
        dumps(Old(5), registry=old_registry), resolve_proxy=no_proxies, registry=new_registry
    )
    assert upgraded == New(5, ["new"], "none")
    with pytest.raises(StateSerializationError, match="Account has no field 'tags'"):
        loads(dumps(New(5), registry=new_registry), resolve_proxy=no_proxies, registry=old_registry)


# -- enums and proxies ----------------------------------------------------------------------


def test_enum_members_load_as_the_same_members() -> None:
    members = [Color.RED, Color.BLUE, Level.HIGH, Permission.READ | Permission.EXECUTE]
    loaded = round_trip(members)
    assert all(left is right for left, right in zip(loaded, members, strict=True))


def test_unregistered_enum_is_refused() -> None:
    class Mood(enum.Enum):
        CALM = 1

    with pytest.raises(StateSerializationError, match=r"state\[0\]: enum .*Mood is not registered"):
        dumps([Mood.CALM])


def test_proxies_are_rebuilt_through_the_callback_once_per_object() -> None:
    proxy = Proxy("examples.counter:Counter", "server")
    calls: list[tuple[str, str]] = []

    def resolve(type_path: str, name: str) -> object:
        calls.append((type_path, name))
        return ("resolved", type_path, name)

    loaded = round_trip({"server": proxy, "again": [proxy]}, resolve)
    assert calls == [("examples.counter:Counter", "server")]
    assert loaded["server"] == ("resolved", "examples.counter:Counter", "server")
    assert loaded["again"][0] is loaded["server"]


# -- attributes -----------------------------------------------------------------------------


class Account:
    __slots__ = ("__dict__", "__secret", "balance")

    def __init__(self) -> None:
        self.balance = Decimal("10.50")
        self.__secret = "kept"
        self.owner = "ada"
        self.cache = {"hot": 1}
        self._ambrosia_links = ["never serialized"]

    def __setattr__(self, name: str, value: object) -> None:
        if getattr(self, "_frozen", False):
            raise AssertionError("load_attributes must not run application __setattr__")
        object.__setattr__(self, name, value)


def test_attributes_round_trip_with_slots_and_exclusions() -> None:
    account = Account()
    blob = dump_attributes(account, exclude={"cache"})
    fresh = Account.__new__(Account)
    object.__setattr__(fresh, "_frozen", True)
    load_attributes(fresh, blob, no_proxies)
    assert fresh.balance == Decimal("10.50")
    assert fresh._Account__secret == "kept"  # type: ignore[attr-defined]
    assert fresh.owner == "ada"
    assert not hasattr(fresh, "cache")
    assert not hasattr(fresh, "_ambrosia_links")


def test_load_attributes_refuses_reserved_names() -> None:
    blob = dumps({"_ambrosia_coordinator": 1})
    with pytest.raises(StateSerializationError, match="reserved attribute"):
        load_attributes(types.SimpleNamespace(), blob, no_proxies)
    with pytest.raises(StateSerializationError, match="attribute mapping"):
        load_attributes(types.SimpleNamespace(), dumps([1]), no_proxies)


# -- malformed input -----------------------------------------------------------------------


def test_every_truncation_of_a_valid_blob_is_refused() -> None:
    blob = dumps(
        {
            "a": [1, 2**90, 2.5, "text", b"bytes"],
            "b": Box((Point(1, 2),)),
            "c": datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=1), "X")),
            "d": {Color.RED, Level.LOW},
            "e": Decimal("1.5"),
            "f": timedelta(days=-1),
        }
    )
    for size in range(len(blob)):
        with pytest.raises(StateSerializationError):
            loads(blob[:size], resolve_proxy=no_proxies)
    with pytest.raises(StateSerializationError, match="bytes after the value"):
        loads(blob + b"\x00", resolve_proxy=no_proxies)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_load_or_raise_the_one_error(data: bytes) -> None:
    with contextlib.suppress(StateSerializationError):
        loads(bytes((FORMAT_VERSION,)) + data, resolve_proxy=lambda path, name: (path, name))


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "empty"),
        (b"\x02\x00", "format version 2 is not supported"),
        (b"\x01\x7f", "unknown tag 0x7f"),
        (b"\x01\x09\xff\xff\xff\xff\x0f", "exceeds the remaining bytes"),
        (b"\x01\x03" + b"\xff" * 11, "varint longer than 10 bytes"),
        (b"\x01\x06\x02\xff\xfe", "invalid UTF-8"),
        (b"\x01\x15\x00", "reference to object 0"),
        (b"\x01\x0c\x01\x09\x00", "unhashable set member"),
        (b"\x01\x0f\x01\x0d\x01", "invalid date"),
        (b"\x01\x11\x03abc", "invalid decimal"),
        (b"\x01" + b"\x09\x01" * (nesting_depth_max + 1) + b"\x00", "nested deeper than"),
    ],
)
def test_malformed_blobs(blob: bytes, message: str) -> None:
    with pytest.raises(StateSerializationError, match=message):
        loads(blob, resolve_proxy=no_proxies)


# -- registry ----------------------------------------------------------------------------------


def test_registry_rules() -> None:
    registry = TypeRegistry()
    with pytest.raises(StateSerializationError, match="neither a dataclass nor an Enum"):
        registry.register(Unregistered)

    @dataclass
    class First:
        x: int

    @dataclass
    class Second:
        x: int

    assert registry.register(First, name="shared") is First
    assert registry.register(First, name="shared") is First
    with pytest.raises(StateSerializationError, match="already registered for another class"):
        registry.register(Second, name="shared")
    with pytest.raises(StateSerializationError, match="already registered as 'shared'"):
        registry.register(First, name="other")
    assert registry.lookup("shared") is First
    assert registry.name_of(First) == "shared"
    with pytest.raises(StateSerializationError, match="'missing' is not registered"):
        registry.lookup("missing")


def test_register_module_allow_lists_its_dataclasses_and_enums() -> None:
    module = types.ModuleType("allowed_state_module")

    @dataclass
    class Item:
        name: str

    class Kind(enum.Enum):
        A = 1

    class Helper:
        pass

    for cls in (Item, Kind, Helper):
        cls.__module__ = module.__name__
        setattr(module, cls.__name__, cls)
    module.Point = Point  # type: ignore[attr-defined]  # imported, defined elsewhere

    registry = TypeRegistry()
    assert register_module(module, registry=registry) == [Item, Kind]
    value = [Item("x"), Kind.A]
    assert (
        loads(dumps(value, registry=registry), resolve_proxy=no_proxies, registry=registry) == value
    )
    with pytest.raises(StateSerializationError, match="not registered"):
        dumps(Point(1, 2), registry=registry)
