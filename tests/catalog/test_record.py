"""InstanceRecord validation: bad settings never reach a catalog."""

from __future__ import annotations

import pytest

from ambrosia.catalog import InstanceRecord, validate_instance_name
from ambrosia.errors import ConfigError


def make(**overrides: object) -> InstanceRecord:
    settings: dict[str, object] = {
        "name": "server",
        "address": "127.0.0.1:7001",
        "log_url": "file:///var/lib/ambrosia",
    }
    settings.update(overrides)
    return InstanceRecord(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["a", "server-1", "A.b_c-9", "x" * 64])
def test_valid_names(name: str) -> None:
    assert validate_instance_name(name) == name
    assert make(name=name).name == name


@pytest.mark.parametrize("name", ["", "x" * 65, "a b", "a/b", "naïve", "a:b", "a\n"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid instance name"):
        make(name=name)


@pytest.mark.parametrize("address", ["localhost:1", "10.0.0.1:65535", "[::1]:7001", "h.example:80"])
def test_valid_addresses(address: str) -> None:
    assert make(address=address).address == address


@pytest.mark.parametrize("address", ["localhost", ":80", "host:0", "host:65536", "host:x", "a b:1"])
def test_invalid_addresses(address: str) -> None:
    with pytest.raises(ConfigError, match="invalid address"):
        make(address=address)


@pytest.mark.parametrize(
    "log_url",
    [
        "azblob://user:hunter2@container/prefix",
        "azblob://container/prefix?sv=2020&sig=abc",
        "s3://bucket/prefix?X-Amz-Signature=abc",
    ],
)
def test_credentials_in_log_url_are_refused(log_url: str) -> None:
    with pytest.raises(ConfigError, match=r"credentials|password"):
        make(log_url=log_url)


@pytest.mark.parametrize("log_url", ["", "no-scheme", "/var/lib/ambrosia"])
def test_log_url_needs_a_scheme(log_url: str) -> None:
    with pytest.raises(ConfigError, match="log URL"):
        make(log_url=log_url)


@pytest.mark.parametrize("app", ["pkg.module:Class", "m:C", "m:Outer.Inner"])
def test_valid_apps(app: str) -> None:
    assert make(app=app).app == app


@pytest.mark.parametrize("app", ["module", "module:", ":Class", "a b:C", "m:C:D"])
def test_invalid_apps(app: str) -> None:
    with pytest.raises(ConfigError, match="invalid app"):
        make(app=app)


@pytest.mark.parametrize(
    ("field", "value"),
    [("current_version", -1), ("upgrade_version", True), ("replicas", 0), ("replicas", 65)],
)
def test_invalid_counts(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        make(**{field: value})


def test_differences_name_the_fields_and_ignore_timestamps() -> None:
    first = make(created="2024-01-01T00:00:00+00:00")
    second = make(address="127.0.0.1:7002", replicas=3)
    assert first.differences(second) == [
        "address: '127.0.0.1:7001' != '127.0.0.1:7002'",
        "replicas: 1 != 3",
    ]
    assert first.differences(make()) == []


def test_binding_ports_are_ports_and_two_different_ones() -> None:
    assert (make().receive_port, make().send_port) == (0, 0)
    assert make(receive_port=7100, send_port=7101).send_port == 7101
    for bad in ({"receive_port": -1}, {"send_port": 65536}, {"receive_port": "7100"}):
        with pytest.raises(ConfigError, match="port"):
            make(**bad)
    with pytest.raises(ConfigError, match="receive_port and send_port are both 7100"):
        make(receive_port=7100, send_port=7100)
