"""S3 log store: ``s3://BUCKET/PREFIX``, on aiobotocore.

Credentials come from the AWS credential chain (environment, shared files, instance
roles); the endpoint is AWS unless ``AWS_ENDPOINT_URL`` or ``AMBROSIA_S3_ENDPOINT_URL`` (or
the ``endpoint_url`` option) names another one, such as a moto server or MinIO.

Layout under ``<PREFIX>/<instance>/``::

    lock                                   JSON: epoch, holder, expires_at, chunkmax
    chunk-0000000000/0000000000000000      one object per append, named by its offset
    chunk-0000000000/0000000000000123      ...
    checkpoint-0000000000                  one object, written whole
    meta                                   JSON, replaced with If-Match on its ETag
    replicas/<id>                          standbys' progress notes (advisory)
    candidates/<name>                      a checkpointer standby's candidate checkpoints

The log position is the fence
-----------------------------
An append of ``data`` at ``expected_offset`` of chunk ``n`` creates the object
``chunk-n/<expected_offset>`` with ``If-None-Match: *``. Two writers extending the same
chunk from the same end both name the same object; S3 lets exactly one create it and
answers 412 to the other (``OffsetMismatchError``, or success when the object already
holds exactly these bytes: our own earlier attempt that timed out). A chunk's size is
the end of its last object; reading concatenates objects in name order (the offsets are
zero-padded, so name order is offset order).

Position alone does not stop a stale writer that appends at the end before the new
writer's first append. So the new writer, when it takes the lease over, plants a FENCE
at the end of every chunk the old writer could still extend (the highest chunk up to the
lock's ``chunkmax``): an object at the end offset whose body carries the new writer's
token (so its ETag is unique) and whose metadata marks it as a fence. A fence occupies
the name the stale writer would create, so its append fails with 412 and, seeing the
fence, ``LeaseLostError``. The new writer replaces its own fence with its first page
(``If-Match`` on the fence's ETag). A fence counts as zero bytes in sizes and reads; only
the last object of a chunk can be one (a fence is always at the end).

``create_chunk`` records ``chunkmax >= n`` in the lock object first, with ``If-Match``
on the lock's ETag, so a writer that lost the lease cannot create chunks, and a chunk
reserved by a writer that died before creating it is fenced at takeover. A new chunk
starts with the creator's own fence at offset 0, so "exists and is empty" is
observable.

Lease: the lock object holds the holder's token, the epoch and an expiry time; acquiring
or renewing rewrites it with ``If-Match`` (the ETag is the proof of holding it), a takeover
after expiry increments the epoch. S3 has no server-side lease clock, so expiry is wall
clock time: the fences above, not the clocks, keep a stale writer out of the log.
``swap_meta``, ``write_checkpoint`` and ``delete_before`` read the lock first; the
takeover also rewrites an existing metadata object (new ETag), so a stale swap fails on
its ETag. Every botocore exception is translated in ``_translate``; throttling, 5xx and
timeouts become ``StorageUnavailableError``, which the store's caller retries
(``ambrosia.backends.retry``: the store makes one attempt per request, and botocore's
own retries are off). A retried call finds what an earlier attempt left: an append its
page, a lease renewal the lock record it wrote (``_rewrite_own_lock``), an acquisition
its own token in the lock (``AcquisitionToken``).
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import orjson
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from ambrosia.backends._aws import aws_session
from ambrosia.backends._cloud import (
    AcquisitionToken,
    checkpoint_name,
    chunk_name,
    decode_meta,
    encode_meta,
    parse_store_url,
    probe,
    request,
)
from ambrosia.backends.base import ChunkInfo, Lease, Meta, recorded_as_created
from ambrosia.backends.retry import RETRIABLE_HTTP_STATUSES
from ambrosia.errors import (
    AmbrosiaError,
    ConfigError,
    LeaseHeldError,
    LeaseLostError,
    NotFoundError,
    OffsetMismatchError,
    PreconditionFailedError,
    StorageError,
    StorageUnavailableError,
)

__all__ = ["S3LogStore", "open"]

offset_digits = 16
read_concurrency_max = 16
fence_attempts_max = 64
_FENCE_MAGIC = b"ambrosia-fence:"
_FENCE_BYTES = len(_FENCE_MAGIC) + 32  # the token is a 32-digit hex UUID
# Objects one tail read GETs at most (one request each, one after the other), before
# returning what it has: a standby replays what it read before it reads on, and a
# checkpointer standby takes its candidate at the first page of a new chunk, so a read
# that held back a whole chunk (a hundred GETs, seconds on a slow service) made the
# primary's wait for that candidate run out. The reads are as many either way.
_TAIL_OBJECTS_MAX = 16
_FENCE_METADATA_KEY = "ambrosia-fence"
_BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_RETRIABLE_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
)
_REPLICAS_PREFIX = "replicas/"
_CANDIDATES_PREFIX = "candidates/"
_Result = TypeVar("_Result")

logger = logging.getLogger("ambrosia.backends.s3")


def _translate(error: BaseException, where: str) -> AmbrosiaError:
    """The one place botocore exceptions become ambrosia errors."""
    if isinstance(error, TimeoutError):
        return StorageUnavailableError(f"{where}: timed out")
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return ConfigError(f"{where}: no usable AWS credentials: {error}")
    if isinstance(error, BotoConnectionError | HTTPClientError):
        return StorageUnavailableError(f"{where}: connection failed: {error}")
    if isinstance(error, ClientError):
        response: dict[str, Any] = error.response
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        detail = f"{where}: HTTP {status} {code}"
        if status == 412 or code == "PreconditionFailed":
            return PreconditionFailedError(detail)
        if status == 404 or code in ("NoSuchKey", "NoSuchBucket", "404"):
            return NotFoundError(detail)
        if status in (401, 403):
            return ConfigError(f"{detail}: access denied; check the AWS credentials")
        # 409 ConditionalRequestConflict: a concurrent conditional write is in flight.
        if status in RETRIABLE_HTTP_STATUSES or code in _RETRIABLE_CODES or status == 409:
            return StorageUnavailableError(detail)
        return StorageError(f"{detail}: {error}")
    if isinstance(error, BotoCoreError):
        return StorageUnavailableError(f"{where}: {error}")
    return StorageError(f"{where}: {error!r}")


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


@dataclass(frozen=True, slots=True)
class _LockRecord:
    epoch: int
    holder: str | None
    expires_at_s: float
    chunk_max: int

    def encode(self) -> bytes:
        # The nonce makes every write's ETag unique, so reading back proves which landed.
        return orjson.dumps(
            {
                "epoch": self.epoch,
                "holder": self.holder,
                "expires_at_s": self.expires_at_s,
                "chunkmax": self.chunk_max,
                "nonce": uuid.uuid4().hex,
            }
        )

    @staticmethod
    def decode(data: bytes, where: str) -> _LockRecord:
        try:
            record = orjson.loads(data)
            return _LockRecord(
                int(record["epoch"]),
                record["holder"],
                float(record["expires_at_s"]),
                int(record["chunkmax"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise StorageError(f"{where}: unreadable lock record: {error}") from error


@dataclass(frozen=True, slots=True)
class _ChunkObject:
    offset: int
    size: int
    key: str
    etag: str


@dataclass(frozen=True, slots=True)
class _ChunkState:
    pages: list[_ChunkObject]
    end: int
    fence: _ChunkObject | None
    fence_token: str | None


class S3LogStore:
    """One instance's log in an S3 bucket; see the module docstring."""

    def __init__(
        self,
        client: Any,
        stack: AsyncExitStack,
        *,
        bucket: str,
        prefix: str,
        instance: str,
        lease_duration_s: float,
        lease_poll_interval_s: float,
        request_timeout_s: float,
    ) -> None:
        self._client = client
        self._stack = stack
        self._bucket = bucket
        self._prefix = prefix
        self._instance = instance
        self._base = f"{prefix}/{instance}/" if prefix else f"{instance}/"
        self._lease_duration_s = lease_duration_s
        self._lease_poll_interval_s = lease_poll_interval_s
        self._request_timeout_s = request_timeout_s
        self._acquisition = AcquisitionToken()
        self._holder: Lease | None = None
        self._lock_etag: str | None = None
        self._chunk_max = -1
        self._lock_guard = anyio.Lock()
        self._ends: dict[int, int] = {}
        self._fences: dict[tuple[int, int], str] = {}

    # -- plumbing ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        path = f"/{self._prefix}" if self._prefix else ""
        return f"s3://{self._bucket}{path}"

    @property
    def instance(self) -> str:
        return self._instance

    def _where(self, what: str) -> str:
        return f"{what} of {self._instance!r} in {self.url}"

    def _chunk_prefix(self, number: int) -> str:
        return f"{self._base}{chunk_name(number)}/"

    def _page_key(self, chunk: int, offset: int) -> str:
        return f"{self._chunk_prefix(chunk)}{offset:0{offset_digits}d}"

    def _checkpoint_key(self, number: int) -> str:
        return f"{self._base}{checkpoint_name(number)}"

    async def _call(self, where: str, operation: Callable[[], Awaitable[_Result]]) -> _Result:
        """One storage request, timed out and translated; the caller retries."""
        return await request(
            where,
            operation,
            timeout_s=self._request_timeout_s,
            foreign=(BotoCoreError, ClientError),
            translate=_translate,
        )

    async def _get(self, key: str, **extra: Any) -> tuple[bytes, str, dict[str, str]]:
        response = await self._client.get_object(Bucket=self._bucket, Key=key, **extra)
        async with response["Body"] as stream:
            body = await stream.read()
        return bytes(body), str(response["ETag"]), dict(response.get("Metadata") or {})

    async def _get_or_none(self, key: str, where: str) -> tuple[bytes, str, dict[str, str]] | None:
        try:
            return await self._call(where, lambda: self._get(key))
        except NotFoundError:
            return None

    async def _list_keys(
        self, prefix: str, where: str, *, start_after: str | None = None
    ) -> list[tuple[str, int, str]]:
        extra = {} if start_after is None else {"StartAfter": start_after}

        async def listing() -> list[tuple[str, int, str]]:
            found: list[tuple[str, int, str]] = []
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix, **extra):
                for item in page.get("Contents", []):
                    found.append((str(item["Key"]), int(item["Size"]), str(item["ETag"])))
            return sorted(found)

        return await self._call(where, listing)

    def _require(self, lease: Lease) -> str:
        if self._holder is None or lease != self._holder:
            raise LeaseLostError(
                f"{self._where('log')}: epoch {lease.epoch} is not the lease this store holds"
            )
        return lease.token

    # -- lock object ---------------------------------------------------------------------

    async def _read_lock(self) -> tuple[_LockRecord | None, str | None]:
        where = self._where("lock")
        found = await self._get_or_none(self._base + "lock", where)
        if found is None:
            return None, None
        return _LockRecord.decode(found[0], where), found[1]

    async def _put_lock(self, record: _LockRecord, *, if_match: str | None) -> str:
        """Create (if_match None) or replace the lock; PreconditionFailedError if it moved."""
        key = self._base + "lock"
        body = record.encode()
        condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        response = await self._call(
            self._where("lock"),
            lambda: self._client.put_object(Bucket=self._bucket, Key=key, Body=body, **condition),
        )
        return str(response["ETag"])

    async def _rewrite_own_lock(self, lease: Lease, **changes: Any) -> None:
        """Replace our lock record (If-Match our ETag); LeaseLostError if it was taken."""
        token = self._require(lease)
        async with self._lock_guard:
            record = _LockRecord(
                epoch=lease.epoch,
                holder=changes.get("holder", token),
                expires_at_s=changes.get("expires_at_s", time.time() + self._lease_duration_s),
                chunk_max=changes.get("chunk_max", self._chunk_max),
            )
            try:
                self._lock_etag = await self._put_lock(record, if_match=self._lock_etag)
            except (PreconditionFailedError, NotFoundError) as error:
                # Our own earlier write, whose reply was lost (the caller saw a timeout
                # and retried), may have moved the ETag: then the rewrite is made on it.
                if not await self._adopt_own_lock(lease):
                    self._holder = None
                    raise LeaseLostError(
                        f"{self._where('writer lease')}: taken over by another writer"
                    ) from error
                try:
                    self._lock_etag = await self._put_lock(record, if_match=self._lock_etag)
                except (PreconditionFailedError, NotFoundError) as again:
                    self._holder = None
                    raise LeaseLostError(
                        f"{self._where('writer lease')}: taken over by another writer"
                    ) from again
            self._chunk_max = record.chunk_max

    async def _adopt_own_lock(self, lease: Lease) -> bool:
        """Whether the lock still names ``lease`` (then its ETag becomes the one to match).

        Only this store writes records with its token, so a record holding it is one of
        ours: an earlier rewrite that landed although the caller saw it fail (a timeout).
        """
        record, etag = await self._read_lock()
        if record is None or record.holder != lease.token or record.epoch != lease.epoch:
            return False
        self._lock_etag = etag
        return True

    async def _check_lock(self, lease: Lease) -> None:
        token = self._require(lease)
        record, _ = await self._read_lock()
        if record is None or record.holder != token or record.epoch != lease.epoch:
            self._holder = None
            raise LeaseLostError(f"{self._where('writer lease')}: taken over by another writer")

    async def acquire_lease(self, *, wait_s: float = 0.0) -> Lease:
        token = self._acquisition.propose(lambda: uuid.uuid4().hex)
        where = self._where("writer lease")
        deadline_s = time.monotonic() + wait_s
        said_so = False
        while True:
            record, etag = await self._read_lock()
            now_s = time.time()
            if record is not None and record.holder == token:
                lease = Lease(self._instance, record.epoch, token)
                chunk_max, self._lock_etag = record.chunk_max, etag
                break
            if record is None or record.holder is None or record.expires_at_s <= now_s:
                epoch = (record.epoch if record else 0) + 1
                chunk_max = record.chunk_max if record else -1
                mine = _LockRecord(epoch, token, now_s + self._lease_duration_s, chunk_max)
                try:
                    self._lock_etag = await self._put_lock(mine, if_match=etag)
                except (PreconditionFailedError, NotFoundError):
                    continue  # another contender moved first: look again
                lease = Lease(self._instance, epoch, token)
                break
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                raise LeaseHeldError(
                    f"{where}: another writer holds it until it stops renewing "
                    f"(expiry in {record.expires_at_s - now_s:.1f} s)",
                    free_in_s=record.expires_at_s - now_s,
                )
            if not said_so:  # a wait can be long: say why at once
                logger.warning(
                    "%s: waiting up to %.0f s for the lease held by another writer "
                    "(its lease runs out %.0f s after its last renewal)",
                    self._instance,
                    remaining_s,
                    self._lease_duration_s,
                )
                said_so = True
            await anyio.sleep(min(self._lease_poll_interval_s, remaining_s))
        self._holder = lease
        self._chunk_max = chunk_max
        self._ends.clear()
        self._fences.clear()
        await self._fence_previous_writer(token, chunk_max)
        self._acquisition.acquired()
        return lease

    async def _fence_previous_writer(self, token: str, chunk_max: int) -> None:
        existing = await self._chunk_numbers()
        highest = max(existing, default=-1)
        first = highest if highest >= 0 else chunk_max
        recorded, _ = await self.read_meta()
        for number in range(max(first, 0), max(highest, chunk_max) + 1):
            if number not in existing and recorded_as_created(recorded, number):
                continue  # deleted after it was recorded: damage the audit must name
            await self._plant_fence(number, token)
        where = self._where("metadata")
        for _ in range(fence_attempts_max):
            found = await self._get_or_none(self._base + "meta", where)
            if found is None:
                return
            meta, _ = decode_meta(found[0], where)
            try:
                await self._put_meta(encode_meta(meta, token), if_match=found[1])
                return
            except PreconditionFailedError:
                continue
        raise StorageUnavailableError(f"{where}: kept changing during takeover")

    async def _plant_fence(self, chunk: int, token: str) -> None:
        """Own the end of ``chunk``: a fence object there, created or taken over."""
        where = self._where(f"chunk {chunk}")
        body = _FENCE_MAGIC + token.encode()
        for _ in range(fence_attempts_max):
            state = await self._chunk_state(chunk, missing_ok=True)
            if state.fence is not None and state.fence_token == token:
                self._fences[(chunk, state.end)] = state.fence.etag
                self._ends[chunk] = state.end
                return
            condition = (
                {"IfMatch": state.fence.etag} if state.fence is not None else {"IfNoneMatch": "*"}
            )
            key = self._page_key(chunk, state.end)
            try:
                response = await self._call(
                    where,
                    lambda key=key, condition=condition: self._client.put_object(  # type: ignore[misc]
                        Bucket=self._bucket,
                        Key=key,
                        Body=body,
                        Metadata={_FENCE_METADATA_KEY: token},
                        **condition,
                    ),
                )
            except PreconditionFailedError:
                continue  # the end moved or our own attempt landed: look again
            self._fences[(chunk, state.end)] = str(response["ETag"])
            self._ends[chunk] = state.end
            return
        raise StorageUnavailableError(f"{where}: its end kept moving while fencing it")

    async def renew_lease(self, lease: Lease) -> Lease:
        await self._rewrite_own_lock(lease)
        return lease

    async def release_lease(self, lease: Lease) -> None:
        try:
            await self._rewrite_own_lock(lease, holder=None, expires_at_s=0.0)
        except AmbrosiaError as error:
            # A retriable failure leaves the lease ours, so that the caller's retry can
            # release it; anything else ends it here.
            if not error.retriable:
                self._holder = None
            raise
        self._holder = None

    # -- chunks --------------------------------------------------------------------------

    async def _list_names(self, prefix: str, where: str) -> list[str]:
        """The keys and ``.../`` folders right under ``prefix`` (a delimited listing: one
        request per thousand names, however many objects each folder holds)."""

        async def listing() -> list[str]:
            found: list[str] = []
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix, Delimiter="/"):
                found.extend(str(item["Prefix"]) for item in page.get("CommonPrefixes", []))
                found.extend(str(item["Key"]) for item in page.get("Contents", []))
            return sorted(found)

        return await self._call(where, listing)

    async def _chunk_numbers(self) -> set[int]:
        # Only the chunks' folders: the takeover asks for this, and a chunk holds one
        # object per append (thousands), which a full listing would page through.
        keys = await self._list_names(self._base + "chunk-", self._where("chunk listing"))
        numbers = set()
        for key in keys:
            name = key[len(self._base) :].split("/", 1)[0]
            suffix = name[len("chunk-") :]
            if suffix.isdigit():
                numbers.add(int(suffix))
        return numbers

    async def _analyze(self, chunk: int, objects: list[_ChunkObject]) -> _ChunkState:
        where = self._where(f"chunk {chunk}")
        fence: _ChunkObject | None = None
        fence_token: str | None = None
        if objects and objects[-1].size == _FENCE_BYTES:
            last = objects[-1]
            response = await self._call(
                where, lambda: self._client.head_object(Bucket=self._bucket, Key=last.key)
            )
            token = (response.get("Metadata") or {}).get(_FENCE_METADATA_KEY)
            if token is not None:
                fence, fence_token = last, str(token)
                objects = objects[:-1]
        end = 0
        for item in objects:
            if item.offset != end:
                raise StorageError(
                    f"{where}: object at offset {item.offset} does not follow the end {end}"
                )
            end += item.size
        if fence is not None and fence.offset != end:
            raise StorageError(f"{where}: a fence at {fence.offset} is not at the end {end}")
        return _ChunkState(objects, end, fence, fence_token)

    async def _chunk_state(self, chunk: int, *, missing_ok: bool = False) -> _ChunkState:
        prefix = self._chunk_prefix(chunk)
        where = self._where(f"chunk {chunk}")
        objects = []
        for key, size, etag in await self._list_keys(prefix, where):
            suffix = key[len(prefix) :]
            if suffix.isdigit():
                objects.append(_ChunkObject(int(suffix), size, key, etag))
        if not objects and not missing_ok:
            raise NotFoundError(f"{where}: no such chunk")
        return await self._analyze(chunk, objects)

    async def list_chunks(self) -> list[ChunkInfo]:
        keys = await self._list_keys(self._base + "chunk-", self._where("chunk listing"))
        grouped: dict[int, list[_ChunkObject]] = {}
        for key, size, etag in keys:
            name, _, suffix = key[len(self._base) :].partition("/")
            number_text = name[len("chunk-") :]
            if number_text.isdigit() and suffix.isdigit():
                grouped.setdefault(int(number_text), []).append(
                    _ChunkObject(int(suffix), size, key, etag)
                )
        chunks = []
        for number in sorted(grouped):
            state = await self._analyze(number, grouped[number])
            chunks.append(ChunkInfo(number, state.end))
        return chunks

    async def create_chunk(self, lease: Lease, number: int) -> None:
        token = self._require(lease)
        await self._rewrite_own_lock(lease, chunk_max=max(self._chunk_max, number))
        state = await self._chunk_state(number, missing_ok=True)
        if state.end != 0:
            raise OffsetMismatchError(self._where(f"chunk {number}"), 0, state.end)
        await self._plant_fence(number, token)

    async def append(
        self, lease: Lease, chunk: int, *, expected_offset: int, data: bytes | bytearray
    ) -> None:
        token = self._require(lease)
        where = self._where(f"chunk {chunk}")
        end = self._ends.get(chunk)
        if end != expected_offset:
            end = (await self._chunk_state(chunk)).end
            self._ends[chunk] = end
        if expected_offset != end:
            if data and expected_offset < end:
                existing = await self._get_or_none(self._page_key(chunk, expected_offset), where)
                if existing is not None and existing[0] == data:
                    return  # an exact retry of an append that landed
            raise OffsetMismatchError(where, expected_offset, end)
        if not data:
            return
        key = self._page_key(chunk, expected_offset)
        fence_etag = self._fences.get((chunk, expected_offset))
        try:
            await self._call(
                where,
                lambda: self._put_page(key, data, fence_etag, token, where, expected_offset),
            )
        except (OffsetMismatchError, LeaseLostError):
            self._ends.pop(chunk, None)
            raise
        self._fences.pop((chunk, expected_offset), None)
        self._ends[chunk] = expected_offset + len(data)

    async def _put_page(
        self,
        key: str,
        data: bytes | bytearray,
        fence_etag: str | None,
        token: str,
        where: str,
        offset: int,
    ) -> None:
        condition = {"IfMatch": fence_etag} if fence_etag else {"IfNoneMatch": "*"}
        try:
            await self._client.put_object(Bucket=self._bucket, Key=key, Body=data, **condition)
            return
        except ClientError as error:
            if _status(error) != 412:
                raise
        body, _, metadata = await self._get(key)
        if body == data:
            return  # an earlier attempt of this append landed before a timeout
        holder = metadata.get(_FENCE_METADATA_KEY)
        if holder is not None and holder != token:
            raise LeaseLostError(f"{where}: fenced at offset {offset} by a newer writer")
        raise OffsetMismatchError(where, offset, -1)

    async def read_chunk(self, chunk: int, *, offset: int = 0, length: int | None = None) -> bytes:
        state = await self._chunk_state(chunk)
        stop = state.end if length is None else min(state.end, offset + length)
        if offset >= stop:
            return b""
        wanted = [
            item for item in state.pages if item.offset < stop and item.offset + item.size > offset
        ]
        parts: list[bytes] = [b""] * len(wanted)
        limiter = anyio.CapacityLimiter(read_concurrency_max)
        where = self._where(f"chunk {chunk}")

        async def fetch(index: int, item: _ChunkObject) -> None:
            first = max(offset - item.offset, 0)
            last = min(item.size, stop - item.offset) - 1
            async with limiter:
                body, _, _ = await self._call(
                    where, lambda: self._get(item.key, Range=f"bytes={first}-{last}")
                )
            parts[index] = body

        async with anyio.create_task_group() as tasks:
            for index, item in enumerate(wanted):
                tasks.start_soon(fetch, index, item)
        return b"".join(parts)

    async def read_chunk_tail(self, chunk: int, offset: int) -> bytes:
        """What chunk ``chunk`` holds from ``offset`` on, read by GETs of the next objects.

        A standby's tail read (``ambrosia.coordinator.standby``). Page objects are named
        by their offset and each starts where the one before ends, so the next one's
        name is known: this GETs ``<chunk>/<offset>``, then the object after it, until
        a name is missing (404) or holds a fence (the end). An idle read is one GET
        answered 404, billed at the GET price, where a listing is billed at the PUT
        price (``ambrosia-bench standby-cost``). A chunk always has an object at offset
        0 (its creator's fence, then its first page), so a missing one there means
        there is no such chunk: NotFoundError, as from ``read_chunk``. At most
        ``_TAIL_OBJECTS_MAX`` objects per call; the caller reads again for the rest.
        """
        where = self._where(f"chunk {chunk}")
        parts = []
        end = offset
        for _ in range(_TAIL_OBJECTS_MAX):
            found = await self._get_or_none(self._page_key(chunk, end), where)
            if found is None:
                if end == 0:
                    raise NotFoundError(f"{where}: no such chunk")
                break
            body, _, metadata = found
            if metadata.get(_FENCE_METADATA_KEY) is not None:
                break  # a fence is always the last object: nothing written after it
            if not body:
                raise StorageError(f"{where}: empty object at offset {end}")
            parts.append(body)
            end += len(body)
        return b"".join(parts)

    # -- checkpoints ---------------------------------------------------------------------

    async def write_checkpoint(self, lease: Lease, number: int, data: bytes) -> None:
        await self._check_lock(lease)
        key = self._checkpoint_key(number)
        where = self._where(f"checkpoint {number}")
        try:
            await self._call(
                where,
                lambda: self._client.put_object(
                    Bucket=self._bucket, Key=key, Body=data, IfNoneMatch="*"
                ),
            )
        except PreconditionFailedError:
            # An earlier call's attempt may have written it (the caller's retry).
            if await self.read_checkpoint(number) != data:
                raise PreconditionFailedError(
                    f"{where}: already exists with other content"
                ) from None

    async def read_checkpoint(self, number: int) -> bytes:
        key = self._checkpoint_key(number)
        body, _, _ = await self._call(self._where(f"checkpoint {number}"), lambda: self._get(key))
        return body

    async def list_checkpoints(self) -> list[int]:
        prefix = self._base + "checkpoint-"
        keys = await self._list_keys(prefix, self._where("checkpoint listing"))
        return sorted(int(key[len(prefix) :]) for key, _, _ in keys if key[len(prefix) :].isdigit())

    # -- metadata ------------------------------------------------------------------------

    async def read_meta(self) -> tuple[Meta | None, str | None]:
        where = self._where("metadata")
        found = await self._get_or_none(self._base + "meta", where)
        if found is None:
            return None, None
        meta, _ = decode_meta(found[0], where)
        return meta, found[1]

    async def _put_meta(self, body: bytes, *, if_match: str | None) -> str:
        key = self._base + "meta"
        condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        where = self._where("metadata")
        try:
            response = await self._call(
                where,
                lambda: self._client.put_object(
                    Bucket=self._bucket, Key=key, Body=body, **condition
                ),
            )
            return str(response["ETag"])
        except (PreconditionFailedError, NotFoundError):
            # A retried swap whose first attempt landed lands here too (the nonce makes
            # its body differ): the caller compares the record it reads back.
            found = await self._get_or_none(key, where)
            current = found[1] if found is not None else None
            raise PreconditionFailedError(
                f"{where}: expected version {if_match}, found {current}"
            ) from None

    async def swap_meta(self, lease: Lease, *, expected: str | None, new: Meta) -> str:
        await self._check_lock(lease)
        return await self._put_meta(encode_meta(new, lease.token), if_match=expected)

    # -- retention -----------------------------------------------------------------------

    async def delete_before(
        self, lease: Lease, number: int, *, checkpoints_before: int | None = None
    ) -> None:
        await self._check_lock(lease)
        doomed = []
        for key, _, _ in await self._list_keys(self._base, self._where("listing")):
            name = key[len(self._base) :].split("/", 1)[0]
            limits = {"chunk-": number, "checkpoint-": number}
            if checkpoints_before is not None:
                limits["checkpoint-"] = checkpoints_before
            for kind, limit in limits.items():
                suffix = name[len(kind) :]
                if name.startswith(kind) and suffix.isdigit() and int(suffix) < limit:
                    doomed.append(key)
        where = self._where("retention")
        for start in range(0, len(doomed), 1000):
            batch = [{"Key": key} for key in doomed[start : start + 1000]]
            response = await self._call(
                where,
                lambda batch=batch: self._client.delete_objects(  # type: ignore[misc]
                    Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True}
                ),
            )
            if response.get("Errors"):
                raise StorageError(f"{where}: could not delete {response['Errors'][:3]}")
        for key in doomed:
            name = key[len(self._base) :].split("/", 1)[0]
            if name.startswith("chunk-"):
                self._ends.pop(int(name[len("chunk-") :]), None)

    # -- replica board (``ambrosia.coordinator.replicas``) ---------------------------------

    async def write_replica_note(self, replica_id: str, data: bytes) -> None:
        key = f"{self._base}{_REPLICAS_PREFIX}{replica_id}"
        await self._call(
            self._where("replica note"),
            lambda: self._client.put_object(Bucket=self._bucket, Key=key, Body=data),
        )

    async def list_replica_notes(self) -> list[tuple[str, bytes]]:
        prefix = f"{self._base}{_REPLICAS_PREFIX}"
        where = self._where("replica notes")
        notes = []
        for key, _, _ in await self._list_keys(prefix, where):
            found = await self._get_or_none(key, where)
            if found is not None:
                notes.append((key[len(prefix) :], found[0]))
        return notes

    async def remove_replica_note(self, replica_id: str) -> None:
        key = f"{self._base}{_REPLICAS_PREFIX}{replica_id}"
        await self._call(
            self._where("replica note"),
            lambda: self._client.delete_object(Bucket=self._bucket, Key=key),
        )

    # -- candidate area (``ambrosia.coordinator.checkpointer``) ----------------------------

    async def write_candidate(self, name: str, data: bytes) -> None:
        key = f"{self._base}{_CANDIDATES_PREFIX}{name}"
        # A PUT is whole or absent: readers never see a part.
        await self._call(
            self._where(f"candidate {name}"),
            lambda: self._client.put_object(Bucket=self._bucket, Key=key, Body=data),
        )

    async def read_candidate(self, name: str) -> bytes:
        key = f"{self._base}{_CANDIDATES_PREFIX}{name}"
        body, _, _ = await self._call(self._where(f"candidate {name}"), lambda: self._get(key))
        return body

    async def remove_candidate(self, name: str) -> None:
        key = f"{self._base}{_CANDIDATES_PREFIX}{name}"
        await self._call(
            self._where(f"candidate {name}"),
            lambda: self._client.delete_object(Bucket=self._bucket, Key=key),
        )

    async def close(self) -> None:
        await self._stack.aclose()


# -- opening -------------------------------------------------------------------------------


def check_url(url: urllib.parse.SplitResult) -> tuple[str, str]:
    """``(container, prefix)`` of a well-formed URL; ConfigError otherwise (no IO)."""
    return parse_store_url(
        url,
        container_word="bucket",
        container_pattern=_BUCKET_PATTERN,
        container_rule="3 to 63 lowercase letters, digits, dots and hyphens",
        credentials_from="the AWS credential chain",
    )


async def open(
    url: urllib.parse.SplitResult,
    instance: str,
    *,
    create: bool = False,
    endpoint_url: str | None = None,
    region: str | None = None,
    lease_duration_s: float = 60.0,
    lease_poll_interval_s: float = 0.05,
    connect_timeout_s: float = 5.0,
    request_timeout_s: float = 60.0,
    **unknown: object,
) -> S3LogStore:
    """Open the log of ``instance`` at ``s3://BUCKET/PREFIX``; see the module docstring.

    ConfigError, before anything is written, for a malformed URL, an unknown option,
    missing or refused credentials, an unreachable endpoint, or a missing bucket without
    ``create=True``.
    """
    bucket, prefix = check_url(url)
    if unknown:
        raise ConfigError(f"unknown s3 options: {', '.join(sorted(unknown))}")
    if lease_duration_s <= 0:
        raise ConfigError(f"lease_duration_s must be positive, not {lease_duration_s}")
    session, endpoint_url, region = await aws_session(
        endpoint_url=endpoint_url, endpoint_variable="AMBROSIA_S3_ENDPOINT_URL", region=region
    )
    config = AioConfig(
        connect_timeout=connect_timeout_s,
        read_timeout=request_timeout_s,
        # The store's caller retries (ambrosia.backends.retry): one attempt here.
        retries={"total_max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    stack = AsyncExitStack()
    client = await stack.enter_async_context(
        session.create_client("s3", region_name=region, endpoint_url=endpoint_url, config=config)
    )
    store = S3LogStore(
        client,
        stack,
        bucket=bucket,
        prefix=prefix,
        instance=instance,
        lease_duration_s=lease_duration_s,
        lease_poll_interval_s=lease_poll_interval_s,
        request_timeout_s=request_timeout_s,
    )
    try:
        await _probe_bucket(client, bucket, region, endpoint_url, create, connect_timeout_s)
    except BaseException:
        await store.close()
        raise
    return store


async def _probe_bucket(
    client: Any,
    bucket: str,
    region: str,
    endpoint_url: str | None,
    create: bool,
    timeout_s: float,
) -> None:
    """Check that the bucket exists (create it if asked); see ``_cloud.probe``."""

    async def check() -> None:
        try:
            await client.head_bucket(Bucket=bucket)
            return
        except ClientError as error:
            if _status(error) != 404 or not create:
                raise
        settings: dict[str, Any] = {}
        if region != "us-east-1":
            settings["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await client.create_bucket(Bucket=bucket, **settings)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    await probe(
        f"bucket {bucket!r} at {endpoint_url or 'AWS S3'}",
        "S3",
        check,
        timeout_s=timeout_s,
        foreign=(BotoCoreError, ClientError),
        translate=_translate,
    )
