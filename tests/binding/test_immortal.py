"""The application-facing surface: method ids, method tables, proxies, refusals."""

from __future__ import annotations

import zlib

import pytest

from ambrosia.binding.immortal import (
    METHOD_ID_MAX,
    Immortal,
    Proxy,
    immortal_type_path,
    impulse,
    lookup_immortal_class,
    method_table,
    rpc,
)
from ambrosia.errors import BindingError


class Shop(Immortal):
    def __init__(self) -> None:
        self.items: list[str] = []

    @rpc
    def add(self, item: str) -> None:
        self.items.append(item)

    @rpc(id=77)
    async def total(self) -> int:
        return len(self.items)

    @impulse
    def arrived(self, item: str) -> None:
        self.items.append(item)

    def helper(self) -> None:
        """Not an RPC."""


class Outlet(Shop):
    @rpc
    def clear(self) -> None:
        self.items.clear()


def test_method_table_lists_marked_methods_with_stable_ids() -> None:
    table = method_table(Shop)
    assert set(table) == {"add", "total", "arrived"}
    assert table["add"].method_id == zlib.crc32(b"add") % METHOD_ID_MAX + 1
    assert table["total"].method_id == 77
    assert table["total"].is_coroutine and not table["add"].is_coroutine
    assert table["arrived"].is_impulse and not table["add"].is_impulse
    assert all(
        1 <= info.method_id <= METHOD_ID_MAX for info in table.values() if info.name != "total"
    )
    assert method_table(Shop) is table  # cached on the class
    # Subclasses inherit and extend.
    assert set(method_table(Outlet)) == {"add", "total", "arrived", "clear"}
    assert method_table(Outlet)["add"] == table["add"]


def test_classes_are_registered_by_type_path() -> None:
    assert lookup_immortal_class(immortal_type_path(Shop)) is Shop
    assert immortal_type_path(Shop).endswith(":Shop")
    with pytest.raises(BindingError):
        lookup_immortal_class("nowhere:Nothing")


def test_explicit_method_id_collision_raises_at_class_definition() -> None:
    with pytest.raises(BindingError, match="share method id 42"):

        class Explicit(Immortal):
            @rpc(id=42)
            def one(self) -> None: ...

            @rpc(id=42)
            def two(self) -> None: ...


def test_default_method_id_collision_raises_at_class_definition() -> None:
    seen: dict[int, str] = {}
    for index in range(100_000):
        name = f"m{index}"
        other = seen.setdefault(zlib.crc32(name.encode()) % METHOD_ID_MAX + 1, name)
        if other != name:
            break
    else:
        raise AssertionError("no collision found")

    def make(method_name: str) -> object:
        def method(self: Immortal) -> None: ...

        method.__name__ = method_name
        return rpc(method)

    with pytest.raises(BindingError, match="share method id"):
        type("Colliding", (Immortal,), {other: make(other), name: make(name)})


def test_an_explicit_id_resolves_a_default_collision_and_ids_are_range_checked() -> None:
    class Fine(Immortal):
        @rpc(id=5)
        def one(self) -> None: ...

        @rpc(id=6)
        def two(self) -> None: ...

    assert {info.method_id for info in method_table(Fine).values()} == {5, 6}
    for bad in (0, -1, 2**30 + 1):
        with pytest.raises(BindingError):
            rpc(id=bad)(lambda self: None)


def test_proxies_compare_by_class_and_name() -> None:
    a = Proxy(Shop, "shop-1", None)
    assert a == Proxy(Shop, "shop-1", None)
    assert a != Proxy(Shop, "shop-2", None)
    assert a != Proxy(Outlet, "shop-1", None)
    assert hash(a) == hash(Proxy(Shop, "shop-1", None))
    assert a.target == "shop-1" and a.target_class is Shop
    assert a.__ambrosia_proxy__() == (immortal_type_path(Shop), "shop-1")
    assert "shop-1" in repr(a)


def test_detached_proxies_and_unstarted_immortals_refuse_calls() -> None:
    proxy = Proxy(Shop, "shop-1", None)
    with pytest.raises(BindingError):
        proxy.add  # noqa: B018
    with pytest.raises(AttributeError, match="no @rpc or @impulse method 'helper'"):
        proxy.helper  # noqa: B018
    shop = Shop()
    for attribute in ("name", "is_primary", "replaying", "this"):
        with pytest.raises(BindingError):
            getattr(shop, attribute)
    with pytest.raises(BindingError):
        shop.proxy(Outlet, "other")
    # A plain method call is still a plain method call.
    shop.add("apple")
    assert shop.items == ["apple"]
