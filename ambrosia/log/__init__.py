"""The log's format, sans-IO: pages, the chunk scanner, and the names of log objects.

Stores (``ambrosia.backends``) keep chunks and checkpoints as opaque named objects; this
package says what is inside a chunk (``page``) and what the objects are called, so that
every backend lays an instance's log out the same way.
"""

from __future__ import annotations

import re

from ambrosia.log.page import (
    FORMAT_VERSION,
    HEADER_BYTES,
    MAGIC,
    NAME_BYTES_MAX,
    PAGE_BYTES_MAX_DEFAULT,
    ChunkScan,
    InputGroup,
    Page,
    PageBuilder,
    check_sequence,
    decode_page,
    instance_id_for,
    scan_chunk,
)

__all__ = [
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "MAGIC",
    "NAME_BYTES_MAX",
    "PAGE_BYTES_MAX_DEFAULT",
    "ChunkScan",
    "InputGroup",
    "Page",
    "PageBuilder",
    "check_sequence",
    "checkpoint_name",
    "chunk_name",
    "decode_page",
    "instance_id_for",
    "parse_checkpoint_name",
    "parse_chunk_name",
    "scan_chunk",
]

# Zero-padded so that a plain lexicographic listing (object stores) is numeric order.
_CHUNK_NAME = re.compile(r"chunk-(\d{8,})\.log")
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d{8,})\.ckpt")


def chunk_name(number: int) -> str:
    """``chunk-00000042.log``: the object holding chunk ``number``."""
    if number < 0:
        raise ValueError(f"chunk number {number} is negative")
    return f"chunk-{number:08d}.log"


def checkpoint_name(number: int) -> str:
    """``checkpoint-00000042.ckpt``: the object holding checkpoint ``number``."""
    if number < 0:
        raise ValueError(f"checkpoint number {number} is negative")
    return f"checkpoint-{number:08d}.ckpt"


def parse_chunk_name(name: str) -> int | None:
    """The chunk number named by ``name``, or None for any other object."""
    match = _CHUNK_NAME.fullmatch(name)
    return None if match is None else int(match.group(1))


def parse_checkpoint_name(name: str) -> int | None:
    """The checkpoint number named by ``name``, or None for any other object."""
    match = _CHECKPOINT_NAME.fullmatch(name)
    return None if match is None else int(match.group(1))
