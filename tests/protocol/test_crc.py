"""The digests' CRC-32 is zlib's CRC-32, whichever implementation computes it."""

from __future__ import annotations

import importlib.util
import os
import zlib

from ambrosia.protocol import crc


def test_same_values_as_zlib_and_chains() -> None:
    for size in (0, 1, 15, 16, 300, 4096, 65536, 65536 + 7):
        data = os.urandom(size)
        assert crc.crc32(data) == zlib.crc32(data)
        cut = size // 3
        chained = crc.crc32(data[cut:], crc.crc32(data[:cut]))
        assert chained == zlib.crc32(data)
        assert crc.crc32(memoryview(data), 12345) == zlib.crc32(data, 12345)


def test_fast_one_used_when_installed() -> None:
    installed = importlib.util.find_spec("zlib_ng") is not None
    assert installed == crc.FAST
