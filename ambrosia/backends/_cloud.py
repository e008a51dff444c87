"""What the cloud log stores (``azblob``, ``s3``) share: one request, its errors, its records.

Both stores talk to an object service through an SDK, and both follow the same rules,
kept here so they cannot drift apart:

- ``request``: one storage request, bounded by a timeout and with the SDK's exceptions
  translated (by the backend's own ``translate``) into the ``StorageError`` tree, cause
  chained. It never retries: ``ambrosia.backends.retry`` explains why retries belong
  to the caller of the store, and what a store does instead so that the caller's retry
  of a whole operation is safe.
- ``encode_meta`` / ``decode_meta``: the metadata object's JSON, ``Meta`` plus the
  writer's token and a nonce (see ``encode_meta``).
- ``parse_store_url``: ``SCHEME://CONTAINER/PREFIX`` checked the same way for both.
- ``probe``: the request that checks the container when a store opens, retried a few
  times while the service is unavailable; ``probe_failure``: how an unreachable or
  missing container then reads as a ``ConfigError``.
- ``AcquisitionToken``: the lease token a failed acquisition proposes again.
- ``chunk_name`` / ``checkpoint_name``: ``chunk-0000000000``, ``checkpoint-0000000000``,
  numbers zero-padded to ``name_number_digits`` so that names sort as numbers do. Logs
  already in storage are named this way: changing the width would orphan them. (The
  file store keeps its own names, ``ambrosia.log.chunk_name``, for the same reason.)
"""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import orjson

from ambrosia.backends.base import Meta, meta_from_record, meta_to_record
from ambrosia.backends.retry import RetryStats, call_with_retry, probe_policy
from ambrosia.errors import (
    AmbrosiaError,
    ConfigError,
    NotFoundError,
    StorageError,
    StorageUnavailableError,
)

__all__ = [
    "AcquisitionToken",
    "checkpoint_name",
    "chunk_name",
    "decode_meta",
    "encode_meta",
    "name_number_digits",
    "parse_store_url",
    "probe",
    "probe_failure",
    "request",
]

name_number_digits = 10

_Result = TypeVar("_Result")


async def request(
    where: str,
    operation: Callable[[], Awaitable[_Result]],
    *,
    timeout_s: float,
    foreign: tuple[type[BaseException], ...],
    translate: Callable[[BaseException, str], AmbrosiaError],
) -> _Result:
    """One attempt of ``operation``: timed out after ``timeout_s``, ``foreign`` translated.

    Errors already translated (an ``AmbrosiaError`` raised inside ``operation``) pass
    through unchanged, so an operation may call ``request`` itself.
    """
    translated: tuple[type[BaseException], ...] = (*foreign, TimeoutError)
    try:
        with anyio.fail_after(timeout_s):
            return await operation()
    except AmbrosiaError:
        raise
    except translated as error:
        raise translate(error, where) from error


def encode_meta(meta: Meta, writer: str) -> bytes:
    """The metadata object's body: ``meta``, the writer's lease token and a nonce.

    The nonce makes every write's body, and so its ETag, unique: two swaps to equal
    records are still two versions, so a compare-and-swap on a version never mistakes
    one for the other. The writer's token tells whose swap a record is.
    """
    return orjson.dumps(
        {**meta_to_record(meta), "nonce": uuid.uuid4().hex, "writer": writer},
        option=orjson.OPT_SORT_KEYS,
    )


def decode_meta(data: bytes, where: str) -> tuple[Meta, str | None]:
    """``Meta`` and the writer's token from a metadata body; StorageError if unreadable."""
    try:
        record = orjson.loads(data)
        writer = record.get("writer")
        return meta_from_record(record), None if writer is None else str(writer)
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as error:
        raise StorageError(f"{where}: unreadable metadata record: {error}") from error


def parse_store_url(
    url: urllib.parse.SplitResult,
    *,
    container_word: str,
    container_pattern: re.Pattern[str],
    container_rule: str,
    credentials_from: str,
) -> tuple[str, str]:
    """``(container, prefix)`` from ``SCHEME://CONTAINER/PREFIX``; ConfigError otherwise.

    ``container_word`` names the container as the service does (container, bucket);
    ``container_rule`` says in words what ``container_pattern`` accepts.
    """
    shown = url.geturl()
    scheme = url.scheme
    if url.username or url.password or url.port or url.query or url.fragment:
        raise ConfigError(
            f"malformed {scheme} URL {shown!r}: expected {scheme}://{container_word.upper()}"
            "/PREFIX with no credentials, port, query or fragment (credentials come from "
            f"{credentials_from})"
        )
    container = url.hostname or ""
    if (
        container_pattern.fullmatch(container) is None
        or url.netloc != container
        or ".." in container
    ):
        raise ConfigError(
            f"malformed {scheme} URL {shown!r}: {container_word} {url.netloc!r} must be "
            f"{container_rule}"
        )
    prefix = url.path.strip("/")
    if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
        raise ConfigError(f"malformed {scheme} URL {shown!r}: bad prefix {prefix!r}")
    return container, prefix


async def probe(
    where: str,
    service: str,
    operation: Callable[[], Awaitable[None]],
    *,
    timeout_s: float,
    foreign: tuple[type[BaseException], ...],
    translate: Callable[[BaseException, str], AmbrosiaError],
) -> None:
    """Check the container at open with ``operation``; ConfigError if it cannot be used.

    A wrong setting must fail fast and clearly: a missing container, refused credentials
    or a malformed request fail on the first attempt. An unavailable service (a timeout,
    a refused connection, throttling, a 5xx) is tried ``PROBE_ATTEMPTS`` times with a
    short backoff first: a store that answered nothing for one request timeout is often
    only busy, and every later request of the store is retried by its caller anyway
    (``ambrosia.backends.retry``), so failing the whole open on one slow answer would make
    opening the least patient step. An endpoint where nothing listens still fails within
    a second or two; one that never answers within ``PROBE_ATTEMPTS`` timeouts and the
    backoff between them.
    """
    policy = probe_policy(timeout_s)
    stats = RetryStats()

    async def attempt() -> None:
        await request(where, operation, timeout_s=timeout_s, foreign=foreign, translate=translate)

    try:
        await call_with_retry(attempt, policy, stats=stats)
    except AmbrosiaError as error:
        raise probe_failure(error, where, service, attempts=stats.attempts) from error


def probe_failure(
    translated: AmbrosiaError, where: str, service: str, *, attempts: int = 1
) -> ConfigError:
    """The ``ConfigError`` for a failed probe of a container at open (``where`` names it)."""
    if isinstance(translated, NotFoundError):
        return ConfigError(f"{where} does not exist; create it, or pass create=True (--create)")
    if isinstance(translated, StorageUnavailableError):
        # The translated message starts with ``where`` already.
        tried = "" if attempts == 1 else f" ({attempts} attempts)"
        return ConfigError(f"cannot reach {service}{tried}: {translated}")
    return ConfigError(str(translated))


def chunk_name(number: int) -> str:
    """The name of chunk ``number`` under an instance's base (a blob, or an S3 prefix)."""
    return f"chunk-{number:0{name_number_digits}d}"


def checkpoint_name(number: int) -> str:
    """The name of checkpoint ``number`` under an instance's base."""
    return f"checkpoint-{number:0{name_number_digits}d}"


class AcquisitionToken:
    """The lease token to propose, kept across acquisitions that fail.

    An acquisition is several requests (take the lock, raise the epoch, fence the
    previous writer). When one of them fails, the lock may already hold this store's
    token while the caller never got a lease. The caller retries the acquisition; with
    a fresh token it would find a live holder (itself) and wait a whole lease duration.
    Proposing the same token again lets the retry recognise the lock as its own and
    finish the takeover, whose steps are all safe to repeat. A token is replaced only
    once an acquisition succeeded, so every lease still has a token of its own.
    """

    __slots__ = ("_token",)

    def __init__(self) -> None:
        self._token: str | None = None

    def propose(self, new: Callable[[], str]) -> str:
        """The token of the acquisition that failed last, else ``new()``."""
        if self._token is None:
            self._token = new()
        return self._token

    def acquired(self) -> None:
        """The proposed token now names a lease: the next acquisition gets a new one."""
        self._token = None
