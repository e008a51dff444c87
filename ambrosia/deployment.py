"""The deployment file: where the logs and the catalog live, and the coordinator's limits.

A deployment is described once, in ``ambrosia.toml`` (TOML, read with ``tomllib``), and
every ``ambrosia`` command on every machine of the deployment reads the same file::

    catalog = "aztable://ambrosia"            # default catalog URL
    log = "azblob://ambrosia-logs/prod"       # default log URL (register, run, log)

    [store]                                   # options of the log store backend
    create = true                             # create a missing container / bucket
    lease_duration_s = 30

    [coordinator]                             # fields of ambrosia.coordinator.runtime.Config
    checkpoint_log_bytes = 67108864
    lease_wait_s = 60

    [coordinator.retry_policy]                # fields of ambrosia.backends.retry.RetryPolicy
    attempts_max = 10

    [tls]                                     # mutual TLS between coordinators
    cert = "/etc/ambrosia/certs/{instance}.crt"   # {instance}: the instance's name
    key = "/etc/ambrosia/certs/{instance}.key"
    ca = "/etc/ambrosia/certs/ca.crt"
    # or, instead of the three files: plain TCP, on loopback only unless
    # plaintext_beyond_loopback = true as well
    # plaintext = true

    [operations]                              # see ambrosia.operations
    health_address = "0.0.0.0:9102"           # /healthz, /readyz, /status, /metrics
    metrics = true                            # needs ambrosia[prometheus]
    log_format = "json"

    [instances.server]                        # per-instance overrides of all of the above
    log = "s3://ambrosia-logs/prod"
    address = "10.0.0.4:7001"                 # default for `ambrosia register server`
    app = "myapp.server:Server"
    store = { lease_duration_s = 15 }
    coordinator = { checkpoints_kept = 3 }
    tls = { cert = "server.crt", key = "server.key" }   # relative: to this file's folder

Which file: ``--config PATH`` on the command line, else the ``AMBROSIA_CONFIG``
environment variable, else ``./ambrosia.toml`` if it exists, else none (built-in
defaults). A file named explicitly must exist.

Precedence, highest first: the command line (and the ``AMBROSIA_CATALOG`` environment
variable for the catalog), the deployment file (an instance's own table before the
file's top level), the catalog registration (log URL and app), built-in defaults. The
resolution is a pure function (``resolve_run``) so that it is tested without processes.

Credentials never go into this file, as they never go into the catalog: endpoints and
secrets come from the environment (see docs/storage.md). Store options that carry
secrets (``connection_string``) are refused here. A malformed file, an unknown key or a
value of the wrong type is a ``ConfigError`` that names the file and the dotted key, so
a typo never silently falls back to a default.

The transport (``[tls]``, and ``--tls-cert``/``--tls-key``/``--tls-ca``/``--plaintext``
on the command line) has no default: mutual TLS, or plain TCP chosen explicitly (see
``ambrosia.coordinator.tls``). The three TLS files merge across layers (a shared ``ca``
at the top, ``cert`` and ``key`` per instance); a choice on the command line replaces the
file's choice, and one layer naming both TLS files and ``plaintext`` is refused.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ambrosia.backends.retry import RetryPolicy
from ambrosia.catalog import CATALOG_ENVIRONMENT_VARIABLE
from ambrosia.coordinator.runtime import Config
from ambrosia.coordinator.tls import TlsSettings, Transport
from ambrosia.errors import ConfigError
from ambrosia.names import validate_instance_name
from ambrosia.operations import OperationsSettings, parse_operations

__all__ = [
    "CONFIG_ENVIRONMENT_VARIABLE",
    "DEFAULT_FILE_NAME",
    "DeploymentFile",
    "InstanceSettings",
    "RunSettings",
    "build_config",
    "command_line_transport",
    "find_deployment_file",
    "load_deployment",
    "parse_deployment",
    "parse_option_assignment",
    "resolve_run",
    "resolve_transport",
]

CONFIG_ENVIRONMENT_VARIABLE = "AMBROSIA_CONFIG"
DEFAULT_FILE_NAME = "ambrosia.toml"
DEPLOYMENT_FILE_BYTES_MAX = 1024 * 1024

# Schemes whose backend creates its location on demand; ``create`` means nothing there.
_SCHEMES_WITHOUT_CREATE = frozenset({"file", "memory"})
# Store options that would put a secret into a file every machine reads.
_SECRET_STORE_OPTIONS = frozenset({"connection_string", "account_key", "sas_token", "credential"})
# The renewal interval a lease duration implies when none is configured: renewing three
# times per duration survives one slow or failed renewal without losing the lease.
_RENEWALS_PER_LEASE = 3.0

_TOP_LEVEL_KEYS = frozenset(
    {"catalog", "log", "store", "coordinator", "tls", "instances", "operations"}
)
_INSTANCE_KEYS = frozenset({"log", "app", "address", "store", "coordinator", "tls"})
_TLS_FILE_KEYS = ("cert", "key", "ca")
_TLS_CHOICE_KEYS = ("plaintext", "plaintext_beyond_loopback")
_TLS_KEYS = frozenset(_TLS_FILE_KEYS + _TLS_CHOICE_KEYS)
# Replaced by the instance's name in TLS file paths, so one [tls] table serves them all.
_INSTANCE_PLACEHOLDER = "{instance}"
# ``tls`` has its own section ([tls]), not a coordinator option.
_CONFIG_FIELDS = {item.name: item for item in dataclasses.fields(Config) if item.name != "tls"}
_RETRY_FIELDS = {item.name: item for item in dataclasses.fields(RetryPolicy)}
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class InstanceSettings:
    """One ``[instances.NAME]`` table: overrides for that instance only."""

    log_url: str | None = None
    app: str | None = None
    address: str | None = None
    store: Mapping[str, Any] = field(default_factory=_empty)
    coordinator: Mapping[str, Any] = field(default_factory=_empty)
    tls: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class DeploymentFile:
    """A parsed, validated deployment file (``path`` None: no file, built-in defaults)."""

    path: Path | None = None
    catalog_url: str | None = None
    log_url: str | None = None
    store: Mapping[str, Any] = field(default_factory=_empty)
    coordinator: Mapping[str, Any] = field(default_factory=_empty)
    tls: Mapping[str, Any] = field(default_factory=_empty)
    instances: Mapping[str, InstanceSettings] = field(default_factory=_empty)
    # Health endpoint, metrics, log format (``ambrosia.operations``).
    operations: OperationsSettings = field(default_factory=OperationsSettings)

    def instance(self, name: str) -> InstanceSettings:
        return self.instances.get(name) or InstanceSettings()

    def catalog_for(self, explicit: str | None) -> str | None:
        """Catalog URL: command line, then ``$AMBROSIA_CATALOG``, then this file (None: default)."""
        environment = os.environ.get(CATALOG_ENVIRONMENT_VARIABLE, "").strip()
        return explicit or environment or self.catalog_url

    def log_for(self, name: str, explicit: str | None = None) -> str | None:
        """Log URL from the command line or this file; None means: ask the registration."""
        return explicit or self.instance(name).log_url or self.log_url


@dataclass(frozen=True, slots=True)
class RunSettings:
    """Everything ``ambrosia run NAME`` needs, resolved by precedence."""

    log_url: str
    app: str | None
    store_options: dict[str, Any]
    config: Config  # its ``tls`` is ``transport.tls``
    transport: Transport = field(default_factory=Transport)


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a value came from, for error messages: a file, or a command-line flag."""

    name: str
    prefix: str = ""

    def key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.name}: {self.key(key)}: {problem}")


# -- finding and reading the file ----------------------------------------------------------


def find_deployment_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The deployment file to use: ``explicit``, ``$AMBROSIA_CONFIG``, ``./ambrosia.toml``."""
    named = explicit if explicit is not None else os.environ.get(CONFIG_ENVIRONMENT_VARIABLE)
    if named is not None and str(named).strip():
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"deployment file {path} does not exist or is not a file")
        return path
    default = Path.cwd() / DEFAULT_FILE_NAME
    return default if default.is_file() else None


def load_deployment(explicit: str | os.PathLike[str] | None = None) -> DeploymentFile:
    """Find, read and validate the deployment file; an empty one when there is none."""
    path = find_deployment_file(explicit)
    if path is None:
        return DeploymentFile()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read deployment file {path}: {error}") from error
    if len(data) > DEPLOYMENT_FILE_BYTES_MAX:
        raise ConfigError(
            f"deployment file {path} is {len(data)} bytes, limit {DEPLOYMENT_FILE_BYTES_MAX}"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"deployment file {path} is not UTF-8: {error}") from error
    return parse_deployment(text, path)


def parse_deployment(text: str, path: Path) -> DeploymentFile:
    """Parse and validate the text of a deployment file named ``path``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    source = _Source(str(path))
    _refuse_unknown(document, _TOP_LEVEL_KEYS, source)
    instances: dict[str, InstanceSettings] = {}
    instance_tables = _table(document, "instances", source)
    for name, table in instance_tables.items():
        try:
            validate_instance_name(name)
        except ConfigError as error:
            raise source.error(f"instances.{name}", str(error)) from None
        if not isinstance(table, dict):
            raise source.error(f"instances.{name}", "must be a table")
        instances[name] = _parse_instance(table, _Source(str(path), f"instances.{name}."))
    return DeploymentFile(
        path=path,
        catalog_url=_url(document, "catalog", source),
        log_url=_url(document, "log", source),
        store=_store_options(_table(document, "store", source), _Source(str(path), "store.")),
        coordinator=_coordinator_fields(
            _table(document, "coordinator", source), _Source(str(path), "coordinator.")
        ),
        tls=_tls_options(_table(document, "tls", source), _Source(str(path), "tls."), path.parent),
        instances=MappingProxyType(instances),
        operations=parse_operations(_table(document, "operations", source), f"{path}: operations."),
    )


def _parse_instance(table: dict[str, Any], source: _Source) -> InstanceSettings:
    _refuse_unknown(table, _INSTANCE_KEYS, source)
    return InstanceSettings(
        log_url=_url(table, "log", source),
        app=_string(table, "app", source),
        address=_string(table, "address", source),
        store=_store_options(
            _table(table, "store", source), _Source(source.name, source.key("store."))
        ),
        coordinator=_coordinator_fields(
            _table(table, "coordinator", source), _Source(source.name, source.key("coordinator."))
        ),
        tls=_tls_options(
            _table(table, "tls", source),
            _Source(source.name, source.key("tls.")),
            Path(source.name).parent,
        ),
    )


def _refuse_unknown(table: Mapping[str, Any], known: frozenset[str], source: _Source) -> None:
    for key in table:
        if key not in known:
            raise source.error(key, f"unknown key; known keys here: {', '.join(sorted(known))}")


def _table(table: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise source.error(key, f"must be a table, not {type(value).__name__}")
    return value


def _string(table: Mapping[str, Any], key: str, source: _Source) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise source.error(key, f"must be a non-empty string, not {value!r}")
    return value


def _url(table: Mapping[str, Any], key: str, source: _Source) -> str | None:
    value = _string(table, key, source)
    if value is not None and (not urlsplit(value).scheme or "://" not in value):
        raise source.error(key, f"{value!r} is not a URL (scheme://location)")
    return value


# -- store options and coordinator fields -------------------------------------------------------


def _store_options(table: Mapping[str, Any], source: _Source) -> Mapping[str, Any]:
    options: dict[str, Any] = {}
    for key, value in table.items():
        if key in _SECRET_STORE_OPTIONS:
            raise source.error(
                key, "credentials never go into the deployment file; set them in the environment"
            )
        if key == "create" and not isinstance(value, bool):
            raise source.error(key, f"must be true or false, not {value!r}")
        if key == "retry_policy":
            if not isinstance(value, dict):
                raise source.error(key, "must be a table of RetryPolicy fields")
            value = _retry_policy(value, _Source(source.name, source.key("retry_policy.")))
        elif isinstance(value, dict | list):
            raise source.error(key, "must be a single value")
        options[key] = value
    return MappingProxyType(options)


def _coordinator_fields(table: Mapping[str, Any], source: _Source) -> Mapping[str, Any]:
    values: dict[str, Any] = {}
    for key, value in table.items():
        known = _CONFIG_FIELDS.get(key)
        if known is None:
            raise source.error(
                key, f"unknown coordinator setting; known: {', '.join(sorted(_CONFIG_FIELDS))}"
            )
        if key == "retry_policy":
            if not isinstance(value, dict):
                raise source.error(key, "must be a table of RetryPolicy fields")
            values[key] = _retry_policy(value, _Source(source.name, source.key("retry_policy.")))
        else:
            values[key] = _typed(key, value, type(known.default), source)
    return MappingProxyType(values)


def _retry_policy(table: Mapping[str, Any], source: _Source) -> RetryPolicy:
    values: dict[str, Any] = {}
    for key, value in table.items():
        known = _RETRY_FIELDS.get(key)
        if known is None:
            raise source.error(
                key, f"unknown retry setting; known: {', '.join(sorted(_RETRY_FIELDS))}"
            )
        values[key] = _typed(key, value, type(known.default), source)
    try:
        return RetryPolicy(**values)
    except ValueError as error:
        raise ConfigError(f"{source.name}: {source.prefix.rstrip('.')}: {error}") from None


def _typed(key: str, value: Any, kind: type, source: _Source) -> Any:
    """Check one limit: booleans are booleans, counts positive, durations not negative."""
    if kind is bool:
        if not isinstance(value, bool):
            raise source.error(key, f"must be true or false, not {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise source.error(key, f"must be a positive integer, not {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise source.error(key, f"must be a number of at least 0, not {value!r}")
    return float(value)


def _tls_options(table: Mapping[str, Any], source: _Source, base: Path) -> Mapping[str, Any]:
    """A ``[tls]`` table: file paths (relative ones to ``base``) and explicit choices."""
    _refuse_unknown(table, _TLS_KEYS, source)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in _TLS_CHOICE_KEYS:
            if not isinstance(value, bool):
                raise source.error(key, f"must be true or false, not {value!r}")
            values[key] = value
        else:
            text = _string(table, key, source)
            assert text is not None
            values[key] = str(base / text)  # an absolute ``text`` stays as it is
    if values.get("plaintext") and any(key in values for key in _TLS_FILE_KEYS):
        raise source.error("plaintext", "and TLS files in one table: choose one")
    return MappingProxyType(values)


def command_line_transport(
    *,
    cert: str | None = None,
    key: str | None = None,
    ca: str | None = None,
    plaintext: bool = False,
    plaintext_beyond_loopback: bool = False,
) -> Mapping[str, Any]:
    """The transport flags of ``ambrosia run`` as a layer (paths relative to the cwd)."""
    values: dict[str, Any] = {}
    for name, path in (("cert", cert), ("key", key), ("ca", ca)):
        if path is not None:
            values[name] = str(Path(path).absolute())
    if plaintext:
        if values:
            raise ConfigError("--plaintext and --tls-cert/--tls-key/--tls-ca: choose one")
        values["plaintext"] = True
    if plaintext_beyond_loopback:
        if not plaintext:
            raise ConfigError("--plaintext-beyond-loopback only goes with --plaintext")
        values["plaintext_beyond_loopback"] = True
    return MappingProxyType(values)


def resolve_transport(
    name: str, layers: list[Mapping[str, Any]], command_line: Mapping[str, Any]
) -> Transport:
    """The transport of instance ``name``: the command line's choice, else the file's.

    ``layers`` are the file's tables, lowest first (top-level ``[tls]``, then the
    instance's own). TLS files on the command line complete the file's (a shared ``ca``,
    say) and override its plaintext choice; ``--plaintext`` replaces the file's choice.
    """
    if command_line.get("plaintext"):
        layers = []
    elif any(key in command_line for key in _TLS_FILE_KEYS):
        layers = [{k: v for k, v in layer.items() if k in _TLS_FILE_KEYS} for layer in layers]
    merged: dict[str, Any] = {}
    for layer in [*layers, command_line]:
        merged.update(layer)
    files = {key: merged[key] for key in _TLS_FILE_KEYS if key in merged}
    if files and merged.get("plaintext"):
        raise ConfigError(
            f"{name}: the deployment file chooses both plaintext and TLS files "
            "(tls.plaintext in one table, tls.cert/key/ca in another): choose one"
        )
    if not files:
        return Transport(
            plaintext=bool(merged.get("plaintext")),
            plaintext_beyond_loopback=bool(merged.get("plaintext_beyond_loopback")),
        )
    missing = [key for key in _TLS_FILE_KEYS if key not in files]
    if missing:
        raise ConfigError(
            f"{name}: TLS needs cert, key and ca; missing "
            + ", ".join(f"{key} (--tls-{key} or tls.{key})" for key in missing)
        )
    paths = {key: Path(value.replace(_INSTANCE_PLACEHOLDER, name)) for key, value in files.items()}
    return Transport(tls=TlsSettings(paths["cert"], paths["key"], paths["ca"]))


def parse_option_assignment(text: str, flag: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line; VALUE is read as a TOML value, else a string."""
    key, separator, raw = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ConfigError(f"{flag} {text!r}: expected KEY=VALUE")
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as an endpoint URL: take it as written
    return key, value


def command_line_store_options(assignments: Mapping[str, Any]) -> Mapping[str, Any]:
    return _store_options(assignments, _Source("command line", "--store-option "))


def command_line_coordinator_fields(assignments: Mapping[str, Any]) -> Mapping[str, Any]:
    return _coordinator_fields(assignments, _Source("command line", "--coordinator-option "))


# -- resolution ----------------------------------------------------------------------------------


def build_config(*layers: Mapping[str, Any]) -> Config:
    """A ``Config`` from validated field layers, later layers winning.

    A lease duration in the store options implies the renewal interval when no layer sets
    it: see ``_RENEWALS_PER_LEASE``.
    """
    values: dict[str, Any] = {}
    for layer in layers:
        values.update(layer)
    return Config(**values)


def resolve_run(
    name: str,
    deployment: DeploymentFile,
    *,
    registered_log_url: str,
    registered_app: str | None,
    log_url: str | None = None,
    app: str | None = None,
    store_options: Mapping[str, Any] = _EMPTY,
    coordinator: Mapping[str, Any] = _EMPTY,
    transport: Mapping[str, Any] = _EMPTY,
    create_storage: bool = False,
) -> RunSettings:
    """Resolve the settings of ``ambrosia run NAME``: command line > file > registration.

    ``log_url``, ``app``, ``store_options``, ``coordinator`` and ``create_storage`` are
    the command line's (already validated), as is ``transport``
    (``command_line_transport``); the registration supplies the log URL and app when
    neither the command line nor the file does.
    """
    instance = deployment.instance(name)
    resolved_log = deployment.log_for(name, log_url) or registered_log_url
    options: dict[str, Any] = {**deployment.store, **instance.store, **store_options}
    if create_storage:
        options["create"] = True
    scheme = urlsplit(resolved_log).scheme.lower()
    if scheme in _SCHEMES_WITHOUT_CREATE:
        # These backends create their location on open; the flag has nothing to do.
        options.pop("create", None)
    layers: list[Mapping[str, Any]] = [deployment.coordinator, instance.coordinator, coordinator]
    if not any("lease_renew_interval_s" in layer for layer in layers):
        lease_duration_s = options.get("lease_duration_s")
        if isinstance(lease_duration_s, int | float) and not isinstance(lease_duration_s, bool):
            layers.append({"lease_renew_interval_s": lease_duration_s / _RENEWALS_PER_LEASE})
    chosen = resolve_transport(name, [deployment.tls, instance.tls], transport)
    layers.append({"tls": chosen.tls})
    return RunSettings(
        log_url=resolved_log,
        app=app or instance.app or registered_app,
        store_options=options,
        config=build_config(*layers),
        transport=chosen,
    )
