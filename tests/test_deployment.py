"""The deployment file: parsing, validation with named keys, and precedence."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ambrosia.backends.retry import RetryPolicy
from ambrosia.coordinator.runtime import Config
from ambrosia.coordinator.tls import TlsSettings, Transport
from ambrosia.deployment import (
    DeploymentFile,
    command_line_coordinator_fields,
    command_line_store_options,
    command_line_transport,
    find_deployment_file,
    load_deployment,
    parse_deployment,
    parse_option_assignment,
    resolve_run,
)
from ambrosia.errors import ConfigError

FULL = """
catalog = "sqlite:///srv/ambrosia/catalog.db"
log = "azblob://logs/prod"

[store]
create = true
lease_duration_s = 30

[coordinator]
checkpoint_log_bytes = 1048576
lease_wait_s = 5

[coordinator.retry_policy]
attempts_max = 4

[instances.server]
log = "s3://bucket/prod"
address = "127.0.0.1:7001"
app = "examples.counter.app:Counter"
store = { lease_duration_s = 6 }
coordinator = { checkpoints_kept = 3, lease_wait_s = 1.5 }
"""


def parse(text: str) -> DeploymentFile:
    return parse_deployment(text, Path("/etc/ambrosia.toml"))


def test_a_full_file_parses() -> None:
    deployment = parse(FULL)
    assert deployment.catalog_url == "sqlite:///srv/ambrosia/catalog.db"
    assert deployment.log_url == "azblob://logs/prod"
    assert dict(deployment.store) == {"create": True, "lease_duration_s": 30}
    assert deployment.coordinator["retry_policy"] == RetryPolicy(attempts_max=4)
    assert deployment.coordinator["lease_wait_s"] == 5.0
    server = deployment.instance("server")
    assert (server.log_url, server.address, server.app) == (
        "s3://bucket/prod",
        "127.0.0.1:7001",
        "examples.counter.app:Counter",
    )
    assert deployment.instance("other").log_url is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("logs = 'file:///x'", "logs: unknown key"),
        ("[coordinator]\ncheckpoint_bytes = 3", "coordinator.checkpoint_bytes: unknown"),
        ("[coordinator]\ncheckpoints_kept = 0", "coordinator.checkpoints_kept: must be a positive"),
        ("[coordinator]\nlease_wait_s = 'long'", "coordinator.lease_wait_s: must be a number"),
        ("[coordinator]\npersist = 1", "coordinator.persist: must be true or false"),
        ("[coordinator.retry_policy]\ntries = 3", "coordinator.retry_policy.tries: unknown"),
        ("[coordinator.retry_policy]\ndelay_initial_s = 5.0", "coordinator.retry_policy: need"),
        ("[store]\ncreate = 'yes'", "store.create: must be true or false"),
        ("[store]\nconnection_string = 'x'", "store.connection_string: credentials never"),
        ("[instances.server]\nlog = 'nowhere'", "instances.server.log: 'nowhere' is not a URL"),
        ("[instances.server]\nport = 1", "instances.server.port: unknown key"),
        ("[instances.server.coordinator]\nlease_wait = 1", "instances.server.coordinator.lease"),
        ("[instances.'bad name']\nlog = 'file:///x'", "instances.bad name"),
        ("store = 3", "store: must be a table"),
        ("log = ", "not valid TOML"),
    ],
)
def test_errors_name_the_file_and_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith("/etc/ambrosia.toml: "), message
    assert key in message, message


def test_precedence_command_line_over_file_over_registration() -> None:
    deployment = parse(FULL)
    from_file = resolve_run(
        "server",
        deployment,
        registered_log_url="file:///registered",
        registered_app="registered:App",
    )
    assert from_file.log_url == "s3://bucket/prod"  # the instance's table beats the top level
    assert from_file.app == "examples.counter.app:Counter"
    assert from_file.store_options == {"create": True, "lease_duration_s": 6}
    assert from_file.config.checkpoint_log_bytes == 1048576
    assert from_file.config.checkpoints_kept == 3
    assert from_file.config.lease_wait_s == 1.5
    assert from_file.config.retry_policy == RetryPolicy(attempts_max=4)
    # No renewal interval anywhere: a third of the lease duration.
    assert from_file.config.lease_renew_interval_s == 2.0

    other = resolve_run(
        "other", deployment, registered_log_url="file:///registered", registered_app="r:App"
    )
    assert other.log_url == "azblob://logs/prod"  # the file's default log beats the record
    assert other.app == "r:App"
    assert other.config.checkpoints_kept == Config().checkpoints_kept
    assert other.config.lease_wait_s == 5.0

    command_line = resolve_run(
        "server",
        deployment,
        registered_log_url="file:///registered",
        registered_app=None,
        log_url="s3://override/x",
        app="cli:App",
        store_options=command_line_store_options({"lease_duration_s": 9}),
        coordinator=command_line_coordinator_fields(
            {"checkpoints_kept": 7, "lease_renew_interval_s": 0.5}
        ),
    )
    assert command_line.log_url == "s3://override/x"
    assert command_line.app == "cli:App"
    assert command_line.store_options["lease_duration_s"] == 9
    assert command_line.config.checkpoints_kept == 7
    assert command_line.config.lease_renew_interval_s == 0.5


def test_registration_and_built_in_defaults_without_a_file() -> None:
    settings = resolve_run(
        "x", DeploymentFile(), registered_log_url="s3://b/p", registered_app="m:C"
    )
    assert (settings.log_url, settings.app, settings.store_options) == ("s3://b/p", "m:C", {})
    assert settings.config == Config()


def test_create_storage_only_reaches_backends_that_take_it() -> None:
    for url, expected in (("s3://b/p", {"create": True}), ("file:///tmp/x", {})):
        settings = resolve_run(
            "x", DeploymentFile(), registered_log_url=url, registered_app=None, create_storage=True
        )
        assert settings.store_options == expected


def test_catalog_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = parse(FULL)
    monkeypatch.delenv("AMBROSIA_CATALOG", raising=False)
    assert deployment.catalog_for(None) == "sqlite:///srv/ambrosia/catalog.db"
    assert DeploymentFile().catalog_for(None) is None
    monkeypatch.setenv("AMBROSIA_CATALOG", "sqlite:///from/env.db")
    assert deployment.catalog_for(None) == "sqlite:///from/env.db"
    assert deployment.catalog_for("sqlite:///flag.db") == "sqlite:///flag.db"


def test_finding_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AMBROSIA_CONFIG", raising=False)
    assert find_deployment_file() is None
    assert load_deployment() == DeploymentFile()
    (tmp_path / "ambrosia.toml").write_text('log = "file:///srv/log"\n')
    assert find_deployment_file() == tmp_path / "ambrosia.toml"
    assert load_deployment().log_url == "file:///srv/log"
    other = tmp_path / "other.toml"
    other.write_text('log = "s3://b/p"\n')
    monkeypatch.setenv("AMBROSIA_CONFIG", str(other))
    assert load_deployment().log_url == "s3://b/p"
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('log = "azblob://c/p"\n')
    assert load_deployment(explicit).log_url == "azblob://c/p"
    with pytest.raises(ConfigError, match=r"missing\.toml does not exist"):
        load_deployment(tmp_path / "missing.toml")


def test_command_line_assignments() -> None:
    assert parse_option_assignment("lease_duration_s=15", "--store-option") == (
        "lease_duration_s",
        15,
    )
    assert parse_option_assignment("create=true", "--store-option") == ("create", True)
    assert parse_option_assignment("endpoint_url=http://127.0.0.1:9", "--store-option") == (
        "endpoint_url",
        "http://127.0.0.1:9",
    )
    with pytest.raises(ConfigError, match="--store-option 'nothing': expected KEY=VALUE"):
        parse_option_assignment("nothing", "--store-option")
    with pytest.raises(ConfigError, match="--coordinator-option checkpoint_bytes"):
        command_line_coordinator_fields({"checkpoint_bytes": 1})


# -- the transport ([tls] and the --tls-*/--plaintext flags) ------------------------------------

TLS_FILE = """
[tls]
cert = "certs/{instance}.crt"
key = "certs/{instance}.key"
ca = "/etc/ambrosia/ca.crt"

[instances.special]
tls = { cert = "/srv/special.crt" }

[instances.local]
tls = { plaintext = true }
"""


def _transport(name: str, deployment: DeploymentFile, **flags: Any) -> Transport:
    return resolve_run(
        name,
        deployment,
        registered_log_url="file:///log",
        registered_app=None,
        transport=command_line_transport(**flags),
    ).transport


def test_tls_section_paths_templates_and_per_instance_overrides() -> None:
    deployment = parse(TLS_FILE)
    server = _transport("server", deployment)
    assert server.tls == TlsSettings(
        Path("/etc/certs/server.crt"), Path("/etc/certs/server.key"), Path("/etc/ambrosia/ca.crt")
    )
    settings = resolve_run(
        "server", deployment, registered_log_url="file:///l", registered_app=None
    )
    assert settings.config.tls == server.tls
    special = _transport("special", deployment)
    assert special.tls is not None
    assert special.tls.certificate_path == Path("/srv/special.crt")
    assert special.tls.key_path == Path("/etc/certs/special.key")
    # A layer choosing plaintext next to inherited TLS files is ambiguous.
    with pytest.raises(ConfigError, match="both plaintext and TLS files"):
        _transport("local", deployment)


def test_command_line_choice_replaces_the_files() -> None:
    deployment = parse(TLS_FILE)
    plain = _transport("server", deployment, plaintext=True)
    assert plain == Transport(plaintext=True)
    flags = _transport("local", deployment, cert="/x/c.crt", key="/x/c.key", ca="/x/ca.crt")
    assert flags.tls == TlsSettings(Path("/x/c.crt"), Path("/x/c.key"), Path("/x/ca.crt"))
    # Nothing chosen anywhere: resolution says so; starting refuses (Transport.check).
    assert _transport("x", DeploymentFile()) == Transport()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[tls]\nplaintext = 1\n", "tls.plaintext: must be true or false"),
        ('[tls]\ncertificate = "x"\n', "tls.certificate: unknown key"),
        ('[tls]\nplaintext = true\ncert = "x"\n', "choose one"),
        ('[instances.a]\ntls = { key = "" }\n', "instances.a.tls.key: must be a non-empty"),
    ],
)
def test_tls_section_errors_name_the_key(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        parse(text)


def test_incomplete_tls_names_what_is_missing() -> None:
    with pytest.raises(ConfigError, match=r"missing key \(--tls-key or tls.key\), ca"):
        _transport("x", DeploymentFile(), cert="/a.crt")
