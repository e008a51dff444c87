"""``ambrosia config from-terraform``: the deployment file from ``terraform output -json``.

The saved outputs below have the shape Terraform prints for the example roots of
``infra/terraform`` (names checked against the .tf files by tests/infra); the written file
must be one that ``ambrosia`` reads, with the exact URLs the backends accept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ambrosia.backends.azblob import check_url as parse_azblob_url
from ambrosia.backends.s3 import check_url as parse_s3_url
from ambrosia.catalog import check_catalog_url
from ambrosia.catalog.dynamodb import check_url as check_dynamodb_url
from ambrosia.deployment import load_deployment
from ambrosia.errors import ConfigError
from ambrosia.terraform import load_outputs, parse_outputs, write_deployment


def _output(value: object, sensitive: bool = False) -> dict[str, object]:
    return {"sensitive": sensitive, "type": "string", "value": value}


AZURE_OUTPUTS = {
    "log_url": _output("azblob://ambrosia-logs/prod"),
    "catalog_url": _output("aztable://ambrosia"),
    "blob_account_url": _output("https://myambrosialogs.blob.core.windows.net/"),
    "table_account_url": _output("https://myambrosialogs.table.core.windows.net/"),
    "file_share_url": _output("//myambrosialogs.file.core.windows.net/ambrosia-logs"),
    "client_id": _output("00000000-0000-0000-0000-000000000001"),
    "storage_account_name": _output("myambrosialogs"),
    "kubernetes_namespace": _output("ambrosia"),
    "kubernetes_service_account": _output("ambrosia"),
    "cluster_name": {"sensitive": False, "type": "string", "value": None},
    "secret_thing": _output("do-not-print", sensitive=True),
}
AWS_OUTPUTS = {
    "log_url": _output("s3://my-ambrosia-logs/prod"),
    "catalog_url": _output("dynamodb://ambrosia-ambrosia-catalog?region=eu-west-1"),
    "catalog_table": _output("ambrosia-ambrosia-catalog"),
    "region": _output("eu-west-1"),
    "bucket": _output("my-ambrosia-logs"),
    "role_arn": _output("arn:aws:iam::123456789012:role/ambrosia-ambrosia"),
}


def _cli(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.pop("AMBROSIA_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "ambrosia.cli", "config", "from-terraform", *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_azure_outputs_make_a_deployment_file(tmp_path: Path) -> None:
    saved = tmp_path / "outputs.json"
    saved.write_text(json.dumps(AZURE_OUTPUTS))
    done = _cli(tmp_path, str(saved), "--env-file", str(tmp_path / "environment.env"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "environment.env").read_text().splitlines() == [
        "AZURE_STORAGE_ACCOUNT_URL=https://myambrosialogs.blob.core.windows.net/",
        "AZURE_TABLES_ACCOUNT_URL=https://myambrosialogs.table.core.windows.net/",
        "AZURE_CLIENT_ID=00000000-0000-0000-0000-000000000001",
    ]
    deployment = load_deployment(tmp_path / "ambrosia.toml")
    assert deployment.log_url == "azblob://ambrosia-logs/prod"
    assert deployment.catalog_url == "aztable://ambrosia"
    assert deployment.store == {"create": False}
    assert parse_azblob_url(urlsplit(deployment.log_url)) == ("ambrosia-logs", "prod")
    text = (tmp_path / "ambrosia.toml").read_text()
    assert "AZURE_STORAGE_ACCOUNT_URL=https://myambrosialogs.blob.core.windows.net/" in text
    assert "AZURE_CLIENT_ID=00000000-0000-0000-0000-000000000001" in text
    assert "do-not-print" not in text

    # A second run does not overwrite the file unless asked to.
    again = _cli(tmp_path, str(saved))
    assert again.returncode == 2 and "--force" in again.stderr
    assert _cli(tmp_path, str(saved), "--force").returncode == 0


def test_aws_outputs_to_stdout(tmp_path: Path) -> None:
    saved = tmp_path / "outputs.json"
    saved.write_text(json.dumps(AWS_OUTPUTS))
    done = _cli(tmp_path, str(saved), "-o", "-")
    assert done.returncode == 0, done.stderr
    assert 'log = "s3://my-ambrosia-logs/prod"' in done.stdout
    assert 'catalog = "dynamodb://ambrosia-ambrosia-catalog?region=eu-west-1"' in done.stdout
    assert "catalog_table = ambrosia-ambrosia-catalog" in done.stdout
    assert "AWS_REGION=eu-west-1" in done.stdout
    assert not (tmp_path / "ambrosia.toml").exists()
    parse_s3_url(urlsplit("s3://my-ambrosia-logs/prod"))
    assert check_dynamodb_url(
        check_catalog_url("dynamodb://ambrosia-ambrosia-catalog?region=eu-west-1")
    ) == (
        "ambrosia-ambrosia-catalog",
        "eu-west-1",
    )


@pytest.mark.parametrize(
    ("catalog", "log", "fragment"),
    [
        ("dynamodb://ab?region=eu-west-1", "s3://my-ambrosia-logs/prod", "3 to 255"),
        ("dynamodb://table?region=nowhere", "s3://my-ambrosia-logs/prod", "not an AWS region"),
        ("mysql://db/catalog", "s3://my-ambrosia-logs/prod", "unknown catalog scheme"),
        ("dynamodb://table", "s3://B/prod", "bucket"),
    ],
)
def test_outputs_with_urls_ambrosia_would_refuse_are_not_written(
    tmp_path: Path, catalog: str, log: str, fragment: str
) -> None:
    outputs = parse_outputs(
        json.dumps({"catalog_url": _output(catalog), "log_url": _output(log)}), "saved"
    )
    with pytest.raises(ConfigError, match=fragment):
        write_deployment(outputs, tmp_path / "ambrosia.toml")
    assert not (tmp_path / "ambrosia.toml").exists()


def test_missing_output_is_named(tmp_path: Path) -> None:
    outputs = parse_outputs(json.dumps({"log_url": _output("s3://b-b/p")}), "saved")
    with pytest.raises(ConfigError, match="no output 'catalog_url'"):
        write_deployment(outputs, None)
    with pytest.raises(ConfigError, match="not the JSON"):
        parse_outputs("{", "saved")
    with pytest.raises(ConfigError, match="neither"):
        load_outputs(tmp_path / "absent")


def test_outputs_from_a_terraform_directory(tmp_path: Path) -> None:
    """`terraform output -json` in a root whose state holds outputs (no cloud needed)."""
    from tests.infra.tools import terraform_binary

    terraform = terraform_binary()
    root = tmp_path / "root"
    root.mkdir()
    (root / "main.tf").write_text(
        'output "log_url" {\n  value = "s3://my-ambrosia-logs/prod"\n}\n'
        'output "catalog_url" {\n  value = "sqlite:///var/lib/ambrosia/catalog.db"\n}\n'
    )
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}
    applied = subprocess.run(
        [terraform, "apply", "-auto-approve", "-input=false", "-no-color"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert applied.returncode == 0, applied.stderr
    outputs = load_outputs(root)
    assert outputs.values["log_url"] == "s3://my-ambrosia-logs/prod"
    assert 'catalog = "sqlite:///var/lib/ambrosia/catalog.db"' in write_deployment(outputs, None)
