"""The CRC-32 behind the stream digests (``protocol/outputs.py``, ``protocol/inputs.py``).

zlib-ng's ``crc32`` (folding with carry-less multiplies) when the ``zlib-ng`` package is
installed, which it is by default; the standard library's otherwise. Both compute the same
CRC-32 (the zlib polynomial, the same chaining: ``crc32(b, crc32(a)) == crc32(a + b)``), so a
checkpoint or a resume point written by one process is checked by the other whichever it has.
The choice matters at 64 KiB calls: zlib's CRC costs about as much per byte as the page
checksum and the copies together, zlib-ng's about a quarter of that.
"""

from __future__ import annotations

from collections.abc import Callable

crc32: Callable[..., int]
try:
    from zlib_ng.zlib_ng import crc32 as _fast_crc32
except ImportError:  # pragma: no cover - exercised where zlib-ng is not installed
    from zlib import crc32 as _std_crc32

    crc32 = _std_crc32
    FAST = False
else:
    crc32 = _fast_crc32
    FAST = True

__all__ = ["FAST", "crc32"]
