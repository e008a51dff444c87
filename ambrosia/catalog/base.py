"""The catalog: which immortals exist, where they listen, where their logs live.

The catalog is deployment metadata, not part of any log. One row per instance name:

- ``address``: ``host:port`` where the instance's coordinator accepts its peers. A
  coordinator that wants to call ``b`` looks ``b`` up here to connect.
- ``log_url``: the log store URL of the instance (``file:///var/lib/ambrosia``,
  ``azblob://container/prefix``, ``s3://bucket/prefix``). Every replica of the instance
  opens the same log and competes for its lease; the catalog only says where it is.
- ``app``: the ``module:Class`` of the immortal, so that ``ambrosia run NAME`` needs no
  further arguments (optional: an instance may be started with an explicit class).
- ``current_version`` / ``upgrade_version``: the code version that runs and the one a
  live upgrade moves to (equal outside an upgrade, section 5 of the paper).
- ``replicas``: how many active/active replicas the deployment runs.

Registration is idempotent: registering a name again with the same settings changes
nothing, so deployment scripts can be re-run. Registering it with other settings is
refused (``RegistrationConflictError`` names the fields that differ) unless the caller
says ``replace=True``; silently re-pointing a live instance at another log would break
exactly-once delivery for its peers.

Credentials never go into the catalog: a table readable by every coordinator is no place
for secrets. They come from the environment (azure-identity, the AWS credential chain,
connection-string variables). A log URL that carries a password or a signature in its
query string is refused at construction, before any catalog sees it.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields, replace
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from ambrosia.backends.retry import RetryStats, call_with_retry, probe_policy
from ambrosia.errors import ConfigError
from ambrosia.names import validate_instance_name

address_length_max = 255
log_url_length_max = 2048
replicas_max = 64

_APP_PATTERN = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
)
_URL_SCHEME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")

# Query parameters that carry secrets in the URL forms of the storage services we know
# (Azure SAS tokens, S3 presigned URLs) or that people commonly use for passwords.
_SECRET_QUERY_KEYS = frozenset(
    {
        "sig",
        "accountkey",
        "sharedaccesssignature",
        "password",
        "secret",
        "token",
        "x-amz-signature",
        "x-amz-security-token",
        "x-amz-credential",
        "aws_secret_access_key",
    }
)

# Fields that make up an instance's settings; the timestamps are bookkeeping and two
# registrations that differ only in them are the same registration.
SETTINGS_FIELDS = (
    "name",
    "address",
    "log_url",
    "app",
    "current_version",
    "upgrade_version",
    "replicas",
    "receive_port",
    "send_port",
)


def validate_address(address: str) -> str:
    """Return ``address`` if it is ``host:port`` (IPv6 hosts in brackets); else ConfigError."""
    if not isinstance(address, str) or not 0 < len(address) <= address_length_max:
        raise ConfigError(f"invalid address {address!r}: expected host:port")
    host, separator, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if (
        not separator
        or not host
        or any(character.isspace() for character in host)
        or "/" in host
        or not port_text.isdigit()
        or not 0 < int(port_text) < 65536
    ):
        raise ConfigError(f"invalid address {address!r}: expected host:port with a port 1..65535")
    return address


def validate_log_url(log_url: str) -> str:
    """Return ``log_url`` if it is a URL with a scheme and no credentials; else ConfigError."""
    if not isinstance(log_url, str) or not 0 < len(log_url) <= log_url_length_max:
        raise ConfigError(f"invalid log URL {log_url!r}")
    try:
        parts = urlsplit(log_url)
        password = parts.password
    except ValueError as error:
        raise ConfigError(f"invalid log URL {log_url!r}: {error}") from error
    if _URL_SCHEME_PATTERN.fullmatch(parts.scheme) is None or "://" not in log_url:
        raise ConfigError(f"invalid log URL {log_url!r}: expected scheme://location")
    if password is not None:
        raise ConfigError(
            "the log URL carries a password; credentials never go into the catalog, "
            "give them to the process through its environment"
        )
    secret_keys = sorted(
        {
            key
            for key, _ in parse_qsl(parts.query, keep_blank_values=True)
            if key.lower() in _SECRET_QUERY_KEYS
        }
    )
    if secret_keys:
        raise ConfigError(
            f"the log URL carries credentials in its query ({', '.join(secret_keys)}); "
            "credentials never go into the catalog, give them to the process through "
            "its environment"
        )
    return log_url


def validate_app(app: str | None) -> str | None:
    """Return ``app`` if it is None or ``package.module:Class``; else ConfigError."""
    if app is not None and (not isinstance(app, str) or _APP_PATTERN.fullmatch(app) is None):
        raise ConfigError(f"invalid app {app!r}: expected 'package.module:Class'")
    return app


def _validate_count(field_name: str, value: int, minimum: int, maximum: int | None) -> None:
    # bool is an int subclass; True as a version is a bug in the caller, not a version.
    if type(value) is not int or value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"invalid {field_name} {value!r}: expected an integer {bound}")


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One registered immortal. Validated on construction (ConfigError).

    ``created`` and ``updated`` are ISO 8601 timestamps. Leave them empty and the catalog
    fills them in when it stores the record; ``get`` and ``list`` always return them set.
    """

    name: str
    address: str
    log_url: str
    app: str | None = None
    current_version: int = 0
    upgrade_version: int = 0
    replicas: int = 1
    # Where ``ambrosia coordinator`` listens for its binding process (loopback); 0: a
    # free port, chosen at start and logged.
    receive_port: int = 0
    send_port: int = 0
    created: str = ""
    updated: str = ""

    def __post_init__(self) -> None:
        validate_instance_name(self.name)
        validate_address(self.address)
        validate_log_url(self.log_url)
        validate_app(self.app)
        _validate_count("current_version", self.current_version, 0, None)
        _validate_count("upgrade_version", self.upgrade_version, 0, None)
        _validate_count("replicas", self.replicas, 1, replicas_max)
        _validate_count("receive_port", self.receive_port, 0, 65535)
        _validate_count("send_port", self.send_port, 0, 65535)
        if self.receive_port and self.receive_port == self.send_port:
            raise ConfigError(f"receive_port and send_port are both {self.send_port}")
        if not isinstance(self.created, str) or not isinstance(self.updated, str):
            raise ConfigError("created and updated must be ISO 8601 strings")

    def settings(self) -> tuple[tuple[str, object], ...]:
        """The (field, value) pairs that identify a registration; timestamps excluded."""
        return tuple((name, getattr(self, name)) for name in SETTINGS_FIELDS)

    def differences(self, other: InstanceRecord) -> builtins.list[str]:
        """Human-readable ``field: ours != theirs`` for every settings field that differs."""
        return [
            f"{name}: {getattr(self, name)!r} != {getattr(other, name)!r}"
            for name in SETTINGS_FIELDS
            if getattr(self, name) != getattr(other, name)
        ]

    def with_timestamps(self, *, created: str, updated: str) -> InstanceRecord:
        return replace(self, created=created, updated=updated)


assert {field.name for field in fields(InstanceRecord)} == {*SETTINGS_FIELDS, "created", "updated"}


class Catalog(Protocol):
    """Async access to a table of registered instances.

    Implementations: ``ambrosia.catalog.sqlite`` (embedded default),
    ``ambrosia.catalog.aztable`` (Azure Tables) and ``ambrosia.catalog.dynamodb``
    (DynamoDB). Obtain one with
    ``ambrosia.catalog.open_catalog(url)``; every method may raise ``CatalogError``.
    """

    @property
    def url(self) -> str:
        """The catalog URL, without credentials."""
        ...

    async def register(self, record: InstanceRecord, *, replace: bool = False) -> InstanceRecord:
        """Store ``record`` and return the stored version (timestamps filled in).

        Same name, same settings: a no-op that returns the existing record.
        Same name, other settings: ``RegistrationConflictError`` listing the differing
        fields, unless ``replace`` is true; a replacement keeps ``created`` and sets
        ``updated``.
        """
        ...

    async def get(self, name: str) -> InstanceRecord:
        """The record of ``name``; ``InstanceNotFoundError`` if there is none."""
        ...

    async def list(self) -> builtins.list[InstanceRecord]:
        """Every record, ordered by name."""
        ...

    async def remove(self, name: str) -> None:
        """Delete the record of ``name``; ``InstanceNotFoundError`` if there is none."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...


class CatalogUnreachableError(ConfigError):
    """A catalog's table did not answer the probe at open (a timeout, a failed connection,
    throttling, a 5xx): worth another attempt (``probe``), and a ``ConfigError`` once the
    attempts are spent."""

    retriable = True


async def probe(check: Callable[[], Awaitable[None]], timeout_s: float) -> None:
    """Run a catalog's check of its table at open, again while it raises
    ``CatalogUnreachableError`` (``ambrosia.backends.retry.probe_policy``); any other
    error (a missing table, refused credentials) ends it at once.

    As with the log stores' probe: a service that answers nothing for one request
    timeout is often only busy, and every later call of the catalog runs long after
    the open; failing the whole start on one slow answer would make it the least
    patient step of all.
    """
    stats = RetryStats()
    try:
        await call_with_retry(check, probe_policy(timeout_s), stats=stats)
    except CatalogUnreachableError as error:
        if stats.attempts == 1:
            raise
        raise CatalogUnreachableError(f"{error} ({stats.attempts} attempts)") from error
