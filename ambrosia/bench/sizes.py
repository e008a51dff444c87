"""Message sizes as people type them on the command line.

The paper's throughput figure sweeps the payload size in powers of two, so the natural
spelling is a range, ``16..64K``: every power of two from 16 bytes to 64 KiB inclusive
(13 sizes). A comma list (``16,1K,64K``) picks sizes one by one, and both forms mix
(``16..256,64K``). Units are binary, because message sizes in this field are: ``K`` and
``KiB`` mean 1024 bytes, ``M`` and ``MiB`` mean 1024 * 1024 bytes; ``B`` or no unit means
bytes. The result is sorted with duplicates removed, so a sweep runs small to large.

Every malformed input raises ``ValueError`` naming the piece that is wrong and why.
"""

from __future__ import annotations

import re

__all__ = ["format_size", "parse_size", "parse_sizes", "size_bytes_max"]

# One message must fit comfortably in memory and in a gRPC frame (4 MiB by default).
size_bytes_max = 4 * 1024 * 1024

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024 * 1024,
    "mb": 1024 * 1024,
    "mib": 1024 * 1024,
}

_SIZE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse one size such as ``16``, ``1K``, ``64KiB`` or ``1M`` into bytes."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(
            f"size {text!r} is not a whole number with an optional unit (B, K, KiB, M, MiB)"
        )
    number, unit = match.groups()
    multiplier = _UNITS.get(unit.lower())
    if multiplier is None:
        raise ValueError(f"size {text!r} has unknown unit {unit!r}; use B, K, KiB, M or MiB")
    size = int(number) * multiplier
    if size < 1:
        raise ValueError(f"size {text!r} must be at least 1 byte")
    if size > size_bytes_max:
        raise ValueError(f"size {text!r} is {size} bytes, above the limit of {size_bytes_max}")
    return size


def _parse_range(text: str) -> list[int]:
    low_text, _, high_text = text.partition("..")
    if not low_text.strip() or not high_text.strip():
        raise ValueError(f"range {text!r} needs both ends, as in 16..64K")
    low, high = parse_size(low_text), parse_size(high_text)
    if low > high:
        raise ValueError(f"range {text!r} runs backwards ({low} > {high} bytes)")
    for end, value in ((low_text, low), (high_text, high)):
        if value & (value - 1):
            raise ValueError(
                f"range {text!r}: {end.strip()!r} ({value} bytes) is not a power of two; "
                "ranges step by doubling, list other sizes with commas"
            )
    sizes = []
    size = low
    while size <= high:
        sizes.append(size)
        size *= 2
    return sizes


def parse_sizes(text: str) -> list[int]:
    """Parse ``16..64K``, ``16,1K,64K`` or a mix into sorted, distinct sizes in bytes."""
    if not text.strip():
        raise ValueError("no sizes given; try 16..64K or 16,1K,64K")
    sizes: set[int] = set()
    for piece in text.split(","):
        if not piece.strip():
            raise ValueError(f"empty item in size list {text!r}")
        if ".." in piece:
            sizes.update(_parse_range(piece))
        else:
            sizes.add(parse_size(piece))
    return sorted(sizes)


def format_size(size_bytes: int) -> str:
    """Short binary spelling for tables and plots: 16 B, 1 KiB, 64 KiB, 1.5 MiB."""
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size_bytes >= scale:
            value = size_bytes / scale
            return f"{value:g} {unit}"
    return f"{size_bytes} B"
