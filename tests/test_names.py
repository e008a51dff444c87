"""One instance-name limit, end to end: a name at the limit goes everywhere, one over
goes nowhere, refused with the one message ``ambrosia.names`` gives."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from ambrosia import names
from ambrosia.backends import INSTANCE_NAME_BYTES_MAX as BACKENDS_LIMIT
from ambrosia.backends import open_store
from ambrosia.catalog import InstanceRecord, open_catalog
from ambrosia.errors import ConfigError, ProtocolError
from ambrosia.log.page import NAME_BYTES_MAX as PAGE_LIMIT
from ambrosia.log.page import PageBuilder, decode_page
from ambrosia.wire import INSTANCE_NAME_BYTES_MAX as WIRE_LIMIT
from ambrosia.wire.messages import AttachTo, Direction, decode_message, encode

AT_LIMIT = "n" * names.INSTANCE_NAME_BYTES_MAX
OVER_LIMIT = AT_LIMIT + "n"


def refusal(name: str) -> str:
    with pytest.raises(ConfigError) as caught:
        names.validate_instance_name(name)
    return str(caught.value)


def test_every_layer_takes_the_one_limit() -> None:
    assert BACKENDS_LIMIT == PAGE_LIMIT == WIRE_LIMIT == names.INSTANCE_NAME_BYTES_MAX


def test_a_name_at_the_limit_registers_opens_its_log_and_is_logged(tmp_path: Path) -> None:
    async def main() -> None:
        catalog = await open_catalog(f"sqlite://{tmp_path / 'catalog.db'}")
        try:
            record = InstanceRecord(
                name=AT_LIMIT, address="127.0.0.1:7001", log_url=(tmp_path / "log").as_uri()
            )
            await catalog.register(record)
            assert (await catalog.get(AT_LIMIT)).name == AT_LIMIT
        finally:
            await catalog.close()
        for url in ((tmp_path / "log").as_uri(), "memory://names"):
            store = await open_store(url, AT_LIMIT)
            await store.close()

    anyio.run(main)
    builder = PageBuilder()
    builder.add_group(AT_LIMIT, 1, 1, 0, b"x")
    builder.add_trim(AT_LIMIT, 3)
    page = decode_page(builder.finish(instance_id=1, epoch=1, sequence=0), 0, "t", instance_id=1)
    assert page.groups[0].source == AT_LIMIT and dict(page.trims) == {AT_LIMIT: 3}
    assert decode_message(encode(AttachTo(AT_LIMIT)), Direction.BINDING_TO_COORDINATOR) == AttachTo(
        AT_LIMIT
    )


def test_a_name_over_the_limit_is_refused_everywhere_with_the_same_message(
    tmp_path: Path,
) -> None:
    message = refusal(OVER_LIMIT)
    assert str(names.INSTANCE_NAME_BYTES_MAX) in message

    async def main() -> None:
        catalog = await open_catalog(f"sqlite://{tmp_path / 'catalog.db'}")
        try:
            with pytest.raises(ConfigError) as caught:
                await catalog.get(OVER_LIMIT)
            assert str(caught.value) == message
        finally:
            await catalog.close()
        for url in ((tmp_path / "log").as_uri(), "memory://names"):
            with pytest.raises(ConfigError) as caught:
                await open_store(url, OVER_LIMIT)
            assert str(caught.value) == message

    anyio.run(main)
    with pytest.raises(ConfigError) as caught:
        InstanceRecord(name=OVER_LIMIT, address="127.0.0.1:7001", log_url="memory://x")
    assert str(caught.value) == message
    # The codecs see names already validated; a longer one is malformed bytes to them.
    with pytest.raises(ValueError):
        PageBuilder().add_group(OVER_LIMIT, 1, 1, 0, b"x")
    with pytest.raises(ValueError):
        encode(AttachTo(OVER_LIMIT))
    with pytest.raises(ProtocolError):
        decode_message(b"\x01" + OVER_LIMIT.encode(), Direction.BINDING_TO_COORDINATOR)
