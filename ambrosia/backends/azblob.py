"""Azure Blob log store: ``azblob://CONTAINER/PREFIX``.

Credentials and endpoint come from the environment, never from the URL:
``AZURE_STORAGE_CONNECTION_STRING``, or ``AZURE_STORAGE_ACCOUNT_URL`` plus
azure-identity's ``DefaultAzureCredential`` (managed identity, workload identity, az
login, ...). The options ``connection_string`` / ``account_url`` override them for
programs that hold the value already.

Layout under ``<PREFIX>/<instance>/``::

    lock                      empty block blob; its lease is the writer lease, its
                              metadata holds ``epoch`` and ``chunkmax``
    chunk-0000000000          append blob: pages, appended with append-position
                              conditions, leased (infinite) by the writer
    checkpoint-0000000000     block blob, committed at once (commit_block_list)
    meta                      block blob, JSON, replaced with If-Match on its ETag and
                              leased by the writer
    replicas/<id>             standbys' progress notes (advisory)
    candidates/<name>         a checkpointer standby's candidate checkpoints and status

How a stale writer is rejected by the storage itself
----------------------------------------------------
Azure conditions a request only on the blob it targets; an append cannot be made
conditional on the lease of the ``lock`` blob. So the writer's lease id (a fresh UUID per
acquisition, the ``Lease.token``) is proposed for every blob the writer mutates:

- the lock blob holds a fixed-duration lease with that id (15 to 60 s, renewed by the
  caller through ``renew_lease``); a dead holder's lease expires and the next writer
  acquires it and raises ``epoch`` in the lock's metadata;
- every chunk the writer creates gets an infinite lease with the same id, and every
  append carries ``x-ms-lease-id``: the append is refused unless that id holds the
  chunk's lease, and ``x-ms-blob-condition-appendpos`` refuses it unless it lands exactly
  at ``expected_offset``;
- on takeover the new writer breaks and re-acquires, with its own id, the lease of every
  chunk a previous writer may still append to: from the highest existing chunk up to the
  lock's ``chunkmax``. ``chunkmax`` closes the gap between "decided to create chunk n"
  and "created it": ``create_chunk`` first writes ``chunkmax >= n`` to the lock's
  metadata under the lock lease (refused once the lease is lost), and takeover creates
  and leases any reserved chunk that does not exist yet. A stale writer can therefore
  never append anywhere, nor create a chunk the new writer does not own;
- the meta blob is leased the same way, so a stale compare-and-swap fails even when
  its ETag is current.

``write_checkpoint``, ``swap_meta``, ``delete_before`` and ``create_chunk`` also renew
the lock lease (a storage-checked proof of holding it) right before acting. Checkpoints
are the one place where that check is not atomic with the write (a new block blob cannot
carry a lease condition); a checkpoint is written once (If-None-Match) and its content is
determined by the log before it, so a late stale checkpoint is either identical or
refused.

Appends and torn pages
----------------------
One append call moves at most ``append_block_bytes_max`` (4 MiB); a larger page is
appended in several blocks, each with its own append-position condition. If the writer
dies between blocks the chunk ends in a partial page, which the page format's checksum
shows as a torn tail; an append blob cannot be truncated, so a writer that recovers from
a torn tail must continue in a new chunk. A retry after a timeout never appends a second
copy: the position condition refuses it, and the store then reads the blob back and
accepts the append only if exactly these bytes are already at that position. An append
blob holds at most ``append_blocks_max`` (50,000) blocks: roll chunks over before that.

Every SDK exception is translated here, in ``_translate``, with the cause chained;
throttling, 5xx and timeouts become ``StorageUnavailableError``, which the store's caller
retries (``ambrosia.backends.retry``: the store makes one attempt per request, and the
SDK's own retries are switched off, so there is one policy with one set of limits). A
retried call finds what an earlier attempt left: an append its blocks, an acquisition
its own lease id on the lock (``AcquisitionToken``), a first metadata write its record.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock
from azure.storage.blob.aio import BlobClient, BlobLeaseClient, BlobServiceClient

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

__all__ = [
    "AzureBlobLogStore",
    "append_block_bytes_max",
    "append_blocks_max",
    "open",
]

append_block_bytes_max = 4 * 1024 * 1024
append_blocks_max = 50_000
checkpoint_block_bytes_max = 8 * 1024 * 1024
lease_duration_s_min = 15
lease_duration_s_max = 60

_CONTAINER_PATTERN = re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]")
_HELD_LEASE_CODES = frozenset({"LeaseAlreadyPresent", "LeaseIsBreakingAndCannotBeAcquired"})
_Result = TypeVar("_Result")
_REPLICAS_PREFIX = "replicas/"
_CANDIDATES_PREFIX = "candidates/"

logger = logging.getLogger("ambrosia.backends.azblob")


# A ranged read refused as past the end, of a chunk that then turned out longer, is tried
# again this many times (each time the writer appended between the read and the size).
_GREW_RETRIES = 3


class _InvalidRangeError(StorageError):
    """A read starting at or past the end of a blob (HTTP 416)."""


def _code(error: HttpResponseError) -> str:
    code = getattr(error, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _translate(error: BaseException, where: str) -> AmbrosiaError:
    """The one place Azure exceptions become ambrosia errors."""
    if isinstance(error, TimeoutError):
        return StorageUnavailableError(f"{where}: timed out")
    if isinstance(error, ClientAuthenticationError):
        return ConfigError(f"{where}: Azure refused the credentials: {error.message}")
    if isinstance(error, ServiceRequestError | ServiceResponseError):
        return StorageUnavailableError(f"{where}: connection failed: {error.message}")
    if isinstance(error, HttpResponseError):
        status = error.status_code or 0
        code = _code(error)
        detail = f"{where}: HTTP {status} {code}"
        if code == "AppendPositionConditionNotMet":
            return OffsetMismatchError(where, -1, -1)
        if code in _HELD_LEASE_CODES:
            return LeaseHeldError(f"{detail}: another writer holds the lease")
        if code.startswith("Lease"):
            return LeaseLostError(f"{detail}: this writer's lease is no longer current")
        if code == "BlockCountExceedsLimit":
            return StorageError(
                f"{detail}: the chunk reached {append_blocks_max} appends; "
                "start a new chunk before that"
            )
        if status == 416:
            return _InvalidRangeError(detail)
        if status == 412 or code in ("BlobAlreadyExists", "ConditionNotMet"):
            return PreconditionFailedError(detail)
        if status == 404:
            return NotFoundError(detail)
        if status in (401, 403):
            return ConfigError(f"{detail}: access denied; check the credentials")
        if status in RETRIABLE_HTTP_STATUSES:
            return StorageUnavailableError(detail)
        return StorageError(f"{detail}: {error.message}")
    if isinstance(error, AzureError):
        return StorageUnavailableError(f"{where}: {error.message}")
    return StorageError(f"{where}: {error!r}")


def _number_from_name(name: str, prefix: str) -> int | None:
    suffix = name[len(prefix) :]
    return int(suffix) if suffix.isdigit() else None


class AzureBlobLogStore:
    """One instance's log in an Azure Blob container; see the module docstring."""

    def __init__(
        self,
        service: BlobServiceClient,
        *,
        container: str,
        prefix: str,
        instance: str,
        lease_duration_s: int,
        lease_poll_interval_s: float,
        request_timeout_s: float,
        closers: list[Callable[[], Awaitable[None]]],
    ) -> None:
        self._service = service
        self._container = service.get_container_client(container)
        self._container_name = container
        self._prefix = prefix
        self._instance = instance
        self._base = f"{prefix}/{instance}/" if prefix else f"{instance}/"
        self._lease_duration_s = lease_duration_s
        self._lease_poll_interval_s = lease_poll_interval_s
        self._request_timeout_s = request_timeout_s
        self._acquisition = AcquisitionToken()
        # Whether the lock blob is known to exist: then an acquisition attempt is the
        # lease request alone (a standby tries every fraction of a second, each a
        # billed request; creating the blob again would be a second, at write prices).
        self._lock_exists = False
        self._closers = closers
        self._holder: Lease | None = None
        self._chunk_max = -1
        self._lock_metadata_guard = anyio.Lock()

    # -- plumbing ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        path = f"/{self._prefix}" if self._prefix else ""
        return f"azblob://{self._container_name}{path}"

    @property
    def instance(self) -> str:
        return self._instance

    def _blob(self, name: str) -> BlobClient:
        return self._container.get_blob_client(self._base + name)

    def _where(self, what: str) -> str:
        return f"{what} of {self._instance!r} in {self.url}"

    async def _call(self, where: str, operation: Callable[[], Awaitable[_Result]]) -> _Result:
        """One storage request, timed out and translated; the caller retries."""
        return await request(
            where,
            operation,
            timeout_s=self._request_timeout_s,
            foreign=(AzureError,),
            translate=_translate,
        )

    def _require(self, lease: Lease) -> str:
        if self._holder is None or lease != self._holder:
            raise LeaseLostError(
                f"{self._where('log')}: epoch {lease.epoch} is not the lease this store holds"
            )
        return lease.token

    async def _verify_lease(self, lease: Lease) -> None:
        """A storage-checked proof that the lock lease is still ours (a renewal)."""
        token = self._require(lease)
        lease_client = BlobLeaseClient(self._blob("lock"), token)
        await self._call(self._where("lease renewal"), lease_client.renew)

    async def _take_blob_lease(self, blob: BlobClient, token: str, *, steal: bool) -> None:
        """Hold an infinite lease with our id on ``blob``, breaking another's if ``steal``."""
        where = self._where(f"lease on {blob.blob_name}")
        ours = BlobLeaseClient(blob, token)
        try:
            await self._call(where, lambda: ours.acquire(lease_duration=-1))
            return
        except LeaseHeldError:
            if not steal:
                raise LeaseLostError(f"{where}: another writer holds it") from None
        breaker = BlobLeaseClient(blob)
        await self._call(where, lambda: breaker.break_lease(lease_break_period=0))
        await self._call(where, lambda: ours.acquire(lease_duration=-1))

    async def _list_numbers(self, kind: str) -> list[tuple[int, int]]:
        prefix = self._base + f"{kind}-"

        async def listing() -> list[tuple[int, int]]:
            found = []
            async for blob in self._container.list_blobs(name_starts_with=prefix):
                number = _number_from_name(blob.name, prefix)
                if number is not None:
                    found.append((number, int(blob.size)))
            return sorted(found)

        return await self._call(self._where(f"listing of {kind}s"), listing)

    # -- lease ---------------------------------------------------------------------------

    async def _create_lock(self, lock: BlobClient, where: str) -> None:
        if self._lock_exists:
            return
        # PreconditionFailedError: the lock blob exists, as it does after the first writer.
        with contextlib.suppress(PreconditionFailedError):
            await self._call(
                where,
                lambda: lock.upload_blob(
                    b"", overwrite=True, match_condition=MatchConditions.IfMissing
                ),
            )
        self._lock_exists = True

    async def acquire_lease(self, *, wait_s: float = 0.0) -> Lease:
        lock = self._blob("lock")
        where = self._where("writer lease")
        await self._create_lock(lock, where)
        # Azure grants an acquisition that proposes the lease id already holding the
        # lease, so a retry after a lost reply takes the lease it already has.
        token = self._acquisition.propose(lambda: str(uuid.uuid4()))
        lease_client = BlobLeaseClient(lock, token)
        deadline_s = time.monotonic() + wait_s
        said_so = False
        while True:
            try:
                await self._call(
                    where, lambda: lease_client.acquire(lease_duration=self._lease_duration_s)
                )
                break
            except NotFoundError:
                # The lock blob went away since it was seen (a deleted log): create it again.
                self._lock_exists = False
                await self._create_lock(lock, where)
                continue
            except LeaseHeldError:
                remaining_s = deadline_s - time.monotonic()
                if remaining_s <= 0:
                    raise LeaseHeldError(
                        f"{where}: another writer holds it; a dead holder's lease expires "
                        f"{self._lease_duration_s} s after its last renewal"
                    ) from None
                if not said_so:  # a wait can be long: say why at once
                    logger.warning(
                        "%s: waiting up to %.0f s for the lease held by another writer "
                        "(its lease runs out %s s after its last renewal)",
                        self._instance,
                        remaining_s,
                        self._lease_duration_s,
                    )
                    said_so = True
                await anyio.sleep(min(self._lease_poll_interval_s, remaining_s))
        try:
            lease = await self._become_writer(lock, token)
        except BaseException:
            # If even the release fails, the lease expires on its own.
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(self._request_timeout_s),
                contextlib.suppress(AzureError),
            ):
                await lease_client.release()
            raise
        self._acquisition.acquired()
        return lease

    async def _become_writer(self, lock: BlobClient, token: str) -> Lease:
        where = self._where("writer lease")
        properties = await self._call(where, lambda: lock.get_blob_properties(lease=token))
        metadata = dict(properties.metadata or {})
        epoch = int(metadata.get("epoch", "0")) + 1
        chunk_max = int(metadata.get("chunkmax", "-1"))
        await self._call(
            where,
            lambda: lock.set_blob_metadata(
                {"epoch": str(epoch), "chunkmax": str(chunk_max)}, lease=token
            ),
        )
        await self._fence_previous_writer(token, chunk_max)
        lease = Lease(self._instance, epoch, token)
        self._holder = lease
        self._chunk_max = chunk_max
        return lease

    async def _fence_previous_writer(self, token: str, chunk_max: int) -> None:
        """Take over every blob a previous writer could still mutate (module docstring)."""
        existing = {number for number, _ in await self._list_numbers("chunk")}
        highest = max(existing, default=-1)
        first = highest if highest >= 0 else chunk_max
        recorded, _ = await self.read_meta()
        for number in range(max(first, 0), max(highest, chunk_max) + 1):
            blob = self._blob(chunk_name(number))
            if number not in existing and recorded_as_created(recorded, number):
                continue  # deleted after it was recorded: damage the audit must name
            if number not in existing:
                # PreconditionFailedError: the previous writer created it after all.
                with contextlib.suppress(PreconditionFailedError):
                    await self._call(
                        self._where(f"chunk {number}"),
                        lambda blob=blob: blob.create_append_blob(if_none_match="*"),  # type: ignore[misc]
                    )
            await self._take_blob_lease(blob, token, steal=True)
        meta = self._blob("meta")
        # NotFoundError: no metadata yet; swap_meta creates and leases it.
        with contextlib.suppress(NotFoundError):
            await self._take_blob_lease(meta, token, steal=True)

    async def renew_lease(self, lease: Lease) -> Lease:
        await self._verify_lease(lease)
        return lease

    async def release_lease(self, lease: Lease) -> None:
        token = self._require(lease)
        lease_client = BlobLeaseClient(self._blob("lock"), token)
        try:
            await self._call(self._where("writer lease release"), lease_client.release)
        except AmbrosiaError as error:
            # A retriable failure leaves the lease ours, so that the caller's retry can
            # release it; anything else ends it here.
            if not error.retriable:
                self._holder = None
            raise
        self._holder = None

    async def _reserve_chunk(self, lease: Lease, number: int) -> None:
        """Record ``chunkmax >= number`` in the lock's metadata, under the lock lease."""
        token = self._require(lease)
        async with self._lock_metadata_guard:
            chunk_max = max(self._chunk_max, number)
            metadata = {"epoch": str(lease.epoch), "chunkmax": str(chunk_max)}
            lock = self._blob("lock")
            await self._call(
                self._where("chunk reservation"),
                lambda: lock.set_blob_metadata(metadata, lease=token),
            )
            self._chunk_max = chunk_max

    # -- chunks --------------------------------------------------------------------------

    async def list_chunks(self) -> list[ChunkInfo]:
        return [ChunkInfo(number, size) for number, size in await self._list_numbers("chunk")]

    async def create_chunk(self, lease: Lease, number: int) -> None:
        token = self._require(lease)
        await self._reserve_chunk(lease, number)
        blob = self._blob(chunk_name(number))
        where = self._where(f"chunk {number}")
        try:
            await self._call(where, lambda: blob.create_append_blob(if_none_match="*"))
        except PreconditionFailedError:
            properties = await self._call(where, blob.get_blob_properties)
            if properties.size != 0:
                raise OffsetMismatchError(where, 0, int(properties.size)) from None
        await self._take_blob_lease(blob, token, steal=False)

    async def append(
        self, lease: Lease, chunk: int, *, expected_offset: int, data: bytes | bytearray
    ) -> None:
        token = self._require(lease)
        blob = self._blob(chunk_name(chunk))
        where = self._where(f"chunk {chunk}")
        if not data:
            size = await self._chunk_size(blob, where)
            if size != expected_offset:
                raise OffsetMismatchError(where, expected_offset, size)
            return
        view = memoryview(data)
        for start in range(0, len(data), append_block_bytes_max):
            piece = bytes(view[start : start + append_block_bytes_max])
            position = expected_offset + start
            await self._call(
                where,
                lambda piece=piece, position=position: self._append_block(  # type: ignore[misc]
                    blob, token, position, piece, where
                ),
            )

    async def _append_block(
        self, blob: BlobClient, token: str, position: int, piece: bytes, where: str
    ) -> None:
        try:
            await blob.append_block(piece, appendpos_condition=position, lease=token)
            return
        except HttpResponseError as error:
            if _code(error) != "AppendPositionConditionNotMet":
                raise
        # Either an earlier attempt landed (a retry after a timeout) or the end moved.
        properties = await blob.get_blob_properties()
        size = int(properties.size)
        if size >= position + len(piece):
            downloader = await blob.download_blob(offset=position, length=len(piece))
            if await downloader.readall() == piece:
                return
        raise OffsetMismatchError(where, position, size)

    async def _chunk_size(self, blob: BlobClient, where: str) -> int:
        properties = await self._call(where, blob.get_blob_properties)
        return int(properties.size)

    async def read_chunk(self, chunk: int, *, offset: int = 0, length: int | None = None) -> bytes:
        blob = self._blob(chunk_name(chunk))
        where = self._where(f"chunk {chunk}")
        if length == 0:
            await self._chunk_size(blob, where)  # NotFoundError for a missing chunk
            return b""

        async def download() -> bytes:
            downloader = await blob.download_blob(offset=offset, length=length)
            return bytes(await downloader.readall())

        for attempt in range(_GREW_RETRIES + 1):
            try:
                return await self._call(where, download)
            except _InvalidRangeError:
                # 416: the read started at or past the end when it was served; the size
                # asked next can be larger (the writer appended in between): read again.
                size = await self._chunk_size(blob, where)
                if offset >= size:
                    return b""
                if attempt == _GREW_RETRIES:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- checkpoints ---------------------------------------------------------------------

    async def write_checkpoint(self, lease: Lease, number: int, data: bytes) -> None:
        await self._verify_lease(lease)
        blob = self._blob(checkpoint_name(number))
        where = self._where(f"checkpoint {number}")
        # Block ids carry a per-write nonce so two writers' uncommitted blocks never mix.
        nonce = uuid.uuid4().hex[:16]
        view = memoryview(data)
        blocks = []
        for index, start in enumerate(range(0, max(len(data), 1), checkpoint_block_bytes_max)):
            block_id = base64.b64encode(f"{nonce}-{index:08d}".encode()).decode()
            piece = bytes(view[start : start + checkpoint_block_bytes_max])
            await self._call(
                where,
                lambda block_id=block_id, piece=piece: blob.stage_block(block_id, piece),  # type: ignore[misc]
            )
            blocks.append(BlobBlock(block_id=block_id))
        try:
            await self._call(
                where,
                lambda: blob.commit_block_list(blocks, match_condition=MatchConditions.IfMissing),
            )
        except PreconditionFailedError:
            # An earlier call's attempt may have committed it (the caller's retry).
            if await self.read_checkpoint(number) != data:
                raise PreconditionFailedError(
                    f"{where}: already exists with other content"
                ) from None

    async def read_checkpoint(self, number: int) -> bytes:
        blob = self._blob(checkpoint_name(number))

        async def download() -> bytes:
            downloader = await blob.download_blob()
            return bytes(await downloader.readall())

        return await self._call(self._where(f"checkpoint {number}"), download)

    async def list_checkpoints(self) -> list[int]:
        return [number for number, _ in await self._list_numbers("checkpoint")]

    # -- metadata ------------------------------------------------------------------------

    async def read_meta(self) -> tuple[Meta | None, str | None]:
        found = await self._read_meta_raw()
        if found is None:
            return None, None
        body, etag = found
        meta, _ = decode_meta(body, self._where("metadata"))
        return meta, etag

    async def _read_meta_raw(self) -> tuple[bytes, str] | None:
        blob = self._blob("meta")

        async def download() -> tuple[bytes, str]:
            downloader = await blob.download_blob()
            body = bytes(await downloader.readall())
            return body, str(downloader.properties.etag)

        try:
            return await self._call(self._where("metadata"), download)
        except NotFoundError:
            return None

    async def swap_meta(self, lease: Lease, *, expected: str | None, new: Meta) -> str:
        await self._verify_lease(lease)
        token = lease.token
        blob = self._blob("meta")
        where = self._where("metadata")
        body = encode_meta(new, token)
        try:
            if expected is None:
                result: dict[str, Any] = await self._call(
                    where,
                    lambda: blob.upload_blob(
                        body, overwrite=True, match_condition=MatchConditions.IfMissing
                    ),
                )
                await self._take_blob_lease(blob, token, steal=False)
            else:
                result = await self._call(
                    where,
                    lambda: blob.upload_blob(
                        body,
                        overwrite=True,
                        etag=expected,
                        match_condition=MatchConditions.IfNotModified,
                        lease=BlobLeaseClient(blob, token),
                    ),
                )
            return str(result["etag"])
        except PreconditionFailedError:
            # A retried swap whose first attempt landed lands here too (the nonce makes
            # its body differ): the caller compares the record it reads back.
            current = await self._read_meta_raw()
            found = current[1] if current is not None else None
            if expected is None and current is not None:
                _, writer = decode_meta(current[0], where)
                if writer == token:
                    # Our first write landed but its lease was not taken: take it now,
                    # or every later swap (made under the lease) would be refused.
                    await self._take_blob_lease(blob, token, steal=False)
            raise PreconditionFailedError(
                f"{where}: expected version {expected}, found {found}"
            ) from None

    # -- retention -----------------------------------------------------------------------

    async def delete_before(
        self, lease: Lease, number: int, *, checkpoints_before: int | None = None
    ) -> None:
        await self._verify_lease(lease)
        token = lease.token
        for chunk, _ in await self._list_numbers("chunk"):
            if chunk < number:
                await self._delete(self._blob(chunk_name(chunk)), token)
        limit = number if checkpoints_before is None else checkpoints_before
        for checkpoint, _ in await self._list_numbers("checkpoint"):
            if checkpoint < limit:
                await self._delete(self._blob(checkpoint_name(checkpoint)), token)

    async def _delete(self, blob: BlobClient, token: str) -> None:
        where = self._where(f"deletion of {blob.blob_name}")
        try:
            await self._call(where, lambda: blob.delete_blob(lease=token))
        except NotFoundError:
            return
        except LeaseLostError:
            # Leased by an earlier writer (chunks before the takeover point) or unleased.
            try:
                await self._take_blob_lease(blob, token, steal=True)
                await self._call(where, lambda: blob.delete_blob(lease=token))
            except NotFoundError:
                return

    # -- replica board (``ambrosia.coordinator.replicas``) ---------------------------------

    async def write_replica_note(self, replica_id: str, data: bytes) -> None:
        blob = self._blob(f"{_REPLICAS_PREFIX}{replica_id}")
        await self._call(
            self._where("replica note"), lambda: blob.upload_blob(data, overwrite=True)
        )

    async def list_replica_notes(self) -> list[tuple[str, bytes]]:
        prefix = f"{self._base}{_REPLICAS_PREFIX}"
        where = self._where("replica notes")

        async def listing() -> list[str]:
            return [blob.name async for blob in self._container.list_blobs(name_starts_with=prefix)]

        notes = []
        for name in sorted(await self._call(where, listing)):
            blob = self._container.get_blob_client(name)

            async def download(blob: BlobClient = blob) -> bytes:
                return bytes(await (await blob.download_blob()).readall())

            with contextlib.suppress(NotFoundError):
                notes.append((name[len(prefix) :], await self._call(where, download)))
        return notes

    async def remove_replica_note(self, replica_id: str) -> None:
        blob = self._blob(f"{_REPLICAS_PREFIX}{replica_id}")
        with contextlib.suppress(NotFoundError):
            await self._call(self._where("replica note"), blob.delete_blob)

    # -- candidate area (``ambrosia.coordinator.checkpointer``) ----------------------------

    async def write_candidate(self, name: str, data: bytes) -> None:
        blob = self._blob(f"{_CANDIDATES_PREFIX}{name}")
        # A block blob appears when its block list is committed: whole or absent.
        await self._call(
            self._where(f"candidate {name}"), lambda: blob.upload_blob(data, overwrite=True)
        )

    async def read_candidate(self, name: str) -> bytes:
        blob = self._blob(f"{_CANDIDATES_PREFIX}{name}")

        async def download() -> bytes:
            return bytes(await (await blob.download_blob()).readall())

        return await self._call(self._where(f"candidate {name}"), download)

    async def remove_candidate(self, name: str) -> None:
        blob = self._blob(f"{_CANDIDATES_PREFIX}{name}")
        with contextlib.suppress(NotFoundError):
            await self._call(self._where(f"candidate {name}"), blob.delete_blob)

    async def close(self) -> None:
        closers, self._closers = self._closers, []
        for closer in closers:
            await closer()


# -- opening -------------------------------------------------------------------------------


def check_url(url: urllib.parse.SplitResult) -> tuple[str, str]:
    """``(container, prefix)`` of a well-formed URL; ConfigError otherwise (no IO)."""
    return parse_store_url(
        url,
        container_word="container",
        container_pattern=_CONTAINER_PATTERN,
        container_rule="3 to 63 lowercase letters, digits and single hyphens, starting and "
        "ending with a letter or digit",
        credentials_from="the environment",
    )


async def open(
    url: urllib.parse.SplitResult,
    instance: str,
    *,
    create: bool = False,
    connection_string: str | None = None,
    account_url: str | None = None,
    lease_duration_s: int = 60,
    lease_poll_interval_s: float = 0.05,
    connect_timeout_s: float = 5.0,
    request_timeout_s: float = 60.0,
    **unknown: object,
) -> AzureBlobLogStore:
    """Open the log of ``instance`` at ``azblob://CONTAINER/PREFIX``; see the module docstring.

    ConfigError, before anything is written, for a malformed URL, an unknown option,
    missing or refused credentials, an unreachable endpoint, or a missing container
    without ``create=True``.
    """
    container, prefix = check_url(url)
    if unknown:
        raise ConfigError(f"unknown azblob options: {', '.join(sorted(unknown))}")
    if not lease_duration_s_min <= lease_duration_s <= lease_duration_s_max:
        raise ConfigError(
            f"lease_duration_s {lease_duration_s} is outside Azure's "
            f"{lease_duration_s_min}..{lease_duration_s_max} s"
        )
    service, closers, endpoint = _make_service(
        connection_string, account_url, connect_timeout_s, request_timeout_s
    )
    store = AzureBlobLogStore(
        service,
        container=container,
        prefix=prefix,
        instance=instance,
        lease_duration_s=lease_duration_s,
        lease_poll_interval_s=lease_poll_interval_s,
        request_timeout_s=request_timeout_s,
        closers=closers,
    )
    try:
        await _probe_container(service, container, endpoint, create, connect_timeout_s)
    except BaseException:
        await store.close()
        raise
    return store


def _make_service(
    connection_string: str | None,
    account_url: str | None,
    connect_timeout_s: float,
    request_timeout_s: float,
) -> tuple[BlobServiceClient, list[Callable[[], Awaitable[None]]], str]:
    connection_string = connection_string or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    account_url = account_url or os.environ.get("AZURE_STORAGE_ACCOUNT_URL")
    # retry_total=0: the store's caller retries (ambrosia.backends.retry).
    settings: dict[str, Any] = {
        "retry_total": 0,
        "connection_timeout": connect_timeout_s,
        "read_timeout": request_timeout_s,
    }
    if connection_string:
        try:
            service = BlobServiceClient.from_connection_string(connection_string, **settings)
        except (ValueError, AzureError) as error:
            raise ConfigError(f"malformed AZURE_STORAGE_CONNECTION_STRING: {error}") from error
        return service, [service.close], str(service.url)
    if account_url:
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential()
        try:
            service = BlobServiceClient(account_url, credential=credential, **settings)
        except (ValueError, AzureError) as error:
            raise ConfigError(
                f"malformed AZURE_STORAGE_ACCOUNT_URL {account_url!r}: {error}"
            ) from error
        return service, [service.close, credential.close], account_url
    raise ConfigError(
        "no Azure Blob credentials: set AZURE_STORAGE_CONNECTION_STRING, or "
        "AZURE_STORAGE_ACCOUNT_URL for azure-identity (DefaultAzureCredential)"
    )


async def _probe_container(
    service: BlobServiceClient, container: str, endpoint: str, create: bool, timeout_s: float
) -> None:
    """Check that the container exists (create it if asked); see ``_cloud.probe``."""
    client = service.get_container_client(container)

    async def check() -> None:
        try:
            await client.get_container_properties()
            return
        except HttpResponseError as error:
            if error.status_code != 404 or not create:
                raise
        try:
            await client.create_container()
        except HttpResponseError as error:
            if _code(error) != "ContainerAlreadyExists":
                raise

    await probe(
        f"container {container!r} at {endpoint}",
        "Azure Blob storage",
        check,
        timeout_s=timeout_s,
        foreign=(AzureError,),
        translate=_translate,
    )
