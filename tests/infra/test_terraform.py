"""The Terraform modules: formatted, valid (AWS, offline), and shaped as the docs say.

The AWS root is initialised from an offline provider mirror and validated in a copy of
``infra/terraform`` (``terraform init`` writes a lock file and ``.terraform``; nothing is
written into the project). No azurerm provider is available offline, so the Azure module
is checked here with python-hcl2: the settings the issue requires are present with the
required values, the outputs are the names ``ambrosia config from-terraform`` and the docs
use, and the example root passes every variable it sets to the module.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

from ambrosia.terraform import ENVIRONMENT_OUTPUTS
from tests.infra.tools import (
    TERRAFORM_CLI_CONFIG,
    TERRAFORM_ROOT,
    provider_mirror,
    terraform_binary,
)

AZURE = TERRAFORM_ROOT / "azure"
AWS = TERRAFORM_ROOT / "aws"
# Outputs every root exposes, read by `ambrosia config from-terraform`.
COMMON_OUTPUTS = {"log_url", "catalog_url", "kubernetes_namespace", "kubernetes_service_account"}


def _terraform(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [terraform_binary(), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _offline_env(data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TF_CLI_CONFIG_FILE": str(TERRAFORM_CLI_CONFIG),
        "CHECKPOINT_DISABLE": "1",
        "TF_IN_AUTOMATION": "1",
        "TF_DATA_DIR": str(data_dir),
    }


def _plain(value: Any) -> Any:
    """python-hcl2 keeps string quotes and marks blocks; drop both for comparisons."""
    if isinstance(value, dict):
        return {
            _unquote(key): _plain(item) for key, item in value.items() if not key.startswith("__")
        }
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return _unquote(value)


def _load(directory: Path) -> dict[str, list[Any]]:
    """Every block of every .tf file in ``directory``, merged by block type."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as handle:
            for key, blocks in _plain(hcl2.load(handle)).items():
                merged.setdefault(key, []).extend(blocks)
    return merged


def _resources(document: dict[str, list[Any]], kind: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for block in document.get("resource", []):
        for resource_kind, named in block.items():
            if resource_kind == kind:
                found.update(named)
    return found


def _names(document: dict[str, list[Any]], key: str) -> set[str]:
    return {name for block in document.get(key, []) for name in block}


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def test_every_module_is_formatted(tmp_path: Path) -> None:
    done = _terraform(
        "fmt", "-check", "-recursive", "-diff", cwd=TERRAFORM_ROOT, env=_offline_env(tmp_path)
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_aws_root_validates_offline(tmp_path: Path) -> None:
    mirror = provider_mirror()
    copy = tmp_path / "terraform"
    shutil.copytree(AWS, copy / "aws", ignore=shutil.ignore_patterns(".terraform*"))
    root = copy / "aws" / "example"
    env = _offline_env(tmp_path / "data")
    init = _terraform(
        "init",
        "-backend=false",
        f"-plugin-dir={mirror}",
        "-input=false",
        "-no-color",
        cwd=root,
        env=env,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    validate = _terraform("validate", "-no-color", cwd=root, env=env)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "The configuration is valid" in validate.stdout


def test_aws_policy_allows_only_the_calls_of_the_s3_backend() -> None:
    module = _load(AWS / "modules" / "ambrosia")
    documents = {
        name: body
        for block in module["data"]
        for name, body in block.get("aws_iam_policy_document", {}).items()
    }
    statements = documents["logs"]["statement"]
    actions = {action for statement in statements for action in statement["actions"]}
    assert actions == {
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:ListBucket",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
        "kms:Decrypt",
        "kms:GenerateDataKey",
    }
    # Every call the backend makes maps to one of these actions.
    source = (Path(__file__).parents[2] / "ambrosia" / "backends" / "s3.py").read_text()
    calls = set(re.findall(r"self\._client\.(\w+)\(|client\.(\w+)\(", source))
    made = {name for pair in calls for name in pair if name} | {"list_objects_v2"}
    needs = {
        "get_object": "s3:GetObject",
        "head_object": "s3:GetObject",
        "put_object": "s3:PutObject",
        "delete_objects": "s3:DeleteObject",
        "delete_object": "s3:DeleteObject",  # a standby's progress note, under the prefix
        "list_objects_v2": "s3:ListBucket",
        "head_bucket": "s3:ListBucket",
        "get_paginator": "s3:ListBucket",
        "create_bucket": None,  # only with --create; Terraform makes the bucket
    }
    assert made <= set(needs), f"the s3 backend makes calls the policy does not cover: {made}"
    for statement in statements:
        for resource in statement["resources"]:
            assert "*" not in resource.replace("/*", "") or "prefix" in resource, resource
    objects = next(s for s in statements if "s3:GetObject" in s["actions"])
    assert objects["resources"] == ["${local.object_arn}"]


def test_aws_policy_allows_only_the_calls_of_the_dynamodb_catalog_on_its_table() -> None:
    module = _load(AWS / "modules" / "ambrosia")
    documents = {
        name: body
        for block in module["data"]
        for name, body in block.get("aws_iam_policy_document", {}).items()
    }
    statements = documents["logs"]["statement"]
    dynamodb = [s for s in statements if any(a.startswith("dynamodb:") for a in s["actions"])]
    assert len(dynamodb) == 1, dynamodb
    (statement,) = dynamodb
    assert statement["resources"] == ["${aws_dynamodb_table.catalog.arn}"]
    granted = set(statement["actions"])
    # Every call the catalog makes, found in its source, maps to a granted action.
    source = (Path(__file__).parents[2] / "ambrosia" / "catalog" / "dynamodb.py").read_text()
    made = set(re.findall(r"client\.(\w+)\(", source))
    made |= set(re.findall(r"get_paginator\(\"(\w+)\"\)", source))
    needs = {
        "get_item": "dynamodb:GetItem",
        "put_item": "dynamodb:PutItem",
        "delete_item": "dynamodb:DeleteItem",
        "query": "dynamodb:Query",
        "get_paginator": "dynamodb:Query",  # the listing's pages
        "create_table": None,  # only with create=True; Terraform makes the table
        "describe_table": None,  # likewise: waiting for the created table
    }
    assert made <= set(needs), f"the catalog makes calls the policy does not cover: {made}"
    assert {"get_item", "put_item", "delete_item", "query"} <= made
    assert granted == {needs[call] for call in made if needs[call] is not None}


def test_aws_catalog_table_is_the_backends_layout_on_demand_recoverable_encrypted() -> None:
    from ambrosia.catalog.dynamodb import PARTITION_KEY, SORT_KEY

    module = _load(AWS / "modules" / "ambrosia")
    table = _resources(module, "aws_dynamodb_table")["catalog"]
    assert table["billing_mode"] == "PAY_PER_REQUEST"
    assert (table["hash_key"], table["range_key"]) == (PARTITION_KEY, SORT_KEY)
    assert {(a["name"], a["type"]) for a in table["attribute"]} == {
        (PARTITION_KEY, "S"),
        (SORT_KEY, "S"),
    }
    assert table["point_in_time_recovery"] == [{"enabled": True}]
    assert table["server_side_encryption"] == [
        {"enabled": True, "kms_key_arn": "${aws_kms_key.logs.arn}"}
    ]
    outputs = {name: body for block in module["output"] for name, body in block.items()}
    assert outputs["catalog_url"]["value"] == (
        "dynamodb://${aws_dynamodb_table.catalog.name}?region=${data.aws_region.current.name}"
    )


def test_aws_bucket_is_private_encrypted_and_keeps_live_objects() -> None:
    module = _load(AWS / "modules" / "ambrosia")
    block = _resources(module, "aws_s3_bucket_public_access_block")["logs"]
    for setting in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert block[setting] is True, setting
    encryption = _resources(module, "aws_s3_bucket_server_side_encryption_configuration")["logs"]
    default = encryption["rule"][0]["apply_server_side_encryption_by_default"][0]
    assert default["sse_algorithm"] == "aws:kms"
    lifecycle = _resources(module, "aws_s3_bucket_lifecycle_configuration")["logs"]
    for rule in lifecycle["rule"]:
        # Expiring current objects would delete live log pages: only ambrosia deletes.
        for expiration in rule.get("expiration", []):
            assert set(expiration) == {"expired_object_delete_marker"}, expiration
        assert "transition" not in rule


def test_azure_storage_account_settings() -> None:
    module = _load(AZURE / "modules" / "ambrosia")
    account = _resources(module, "azurerm_storage_account")["this"]
    assert account["https_traffic_only_enabled"] is True
    assert account["min_tls_version"] == "TLS1_2"
    assert account["allow_nested_items_to_be_public"] is False
    assert account["network_rules"][0]["default_action"] == "Deny"
    assert _resources(module, "azurerm_storage_container")["logs"]["container_access_type"] == (
        "private"
    )
    assert "catalog" in _resources(module, "azurerm_storage_table")
    assert "logs" in _resources(module, "azurerm_storage_share")


def test_azure_identity_has_only_data_roles_on_its_three_resources() -> None:
    module = _load(AZURE / "modules" / "ambrosia")
    assignments = _resources(module, "azurerm_role_assignment")
    roles = {name: body["role_definition_name"] for name, body in assignments.items()}
    assert roles == {
        "logs": "Storage Blob Data Contributor",
        "catalog": "Storage Table Data Contributor",
        "share": "Storage File Data SMB Share Contributor",
    }
    scopes = {name: body["scope"] for name, body in assignments.items()}
    assert scopes == {
        "logs": "${local.container_scope}",
        "catalog": "${local.table_scope}",
        "share": "${local.share_scope}",
    }
    for assignment in assignments.values():
        assert "ambrosia.principal_id" in assignment["principal_id"]
    cluster = _resources(module, "azurerm_kubernetes_cluster")["this"]
    assert cluster["workload_identity_enabled"] is True and cluster["oidc_issuer_enabled"] is True
    credential = _resources(module, "azurerm_federated_identity_credential")["ambrosia"]
    assert "var.kubernetes_service_account" in credential["subject"]


@pytest.mark.parametrize("cloud", ["azure", "aws"])
def test_outputs_are_named_as_the_docs_say(cloud: str) -> None:
    module = _load(TERRAFORM_ROOT / cloud / "modules" / "ambrosia")
    example = _load(TERRAFORM_ROOT / cloud / "example")
    module_outputs = _names(module, "output")
    assert module_outputs >= COMMON_OUTPUTS
    # The example exposes every module output under the same name.
    assert _names(example, "output") == module_outputs
    for block in example["output"]:
        for name, body in block.items():
            assert body["value"] == f"${{module.ambrosia.{name}}}", name
    # Environment outputs that from-terraform knows are the ones the modules define.
    known_here = {name for name in ENVIRONMENT_OUTPUTS if name in module_outputs}
    assert known_here, cloud
    docs = (Path(__file__).parents[2] / "docs" / f"deploy-{cloud}.md").read_text()
    for name in module_outputs:
        assert f"`{name}`" in docs, f"docs/deploy-{cloud}.md does not mention output {name}"


@pytest.mark.parametrize("cloud", ["azure", "aws"])
def test_example_passes_only_variables_the_module_declares(cloud: str) -> None:
    module = _load(TERRAFORM_ROOT / cloud / "modules" / "ambrosia")
    example = _load(TERRAFORM_ROOT / cloud / "example")
    declared = _names(module, "variable")
    call = example["module"][0]["ambrosia"]
    passed = set(call) - {"source"}
    assert passed <= declared, passed - declared
    required = {
        name
        for block in module["variable"]
        for name, body in block.items()
        if "default" not in body
    }
    assert required <= passed, required - passed
    for name in passed - {"tags"}:
        value = _unquote(call[name])
        assert value == f"${{var.{name}}}", (name, value)


@pytest.mark.parametrize("cloud", ["azure", "aws"])
def test_log_url_output_has_the_backend_scheme(cloud: str) -> None:
    module = _load(TERRAFORM_ROOT / cloud / "modules" / "ambrosia")
    outputs = {name: body for block in module["output"] for name, body in block.items()}
    scheme = {"azure": "azblob://", "aws": "s3://"}[cloud]
    assert outputs["log_url"]["value"].startswith(scheme)
    catalog = {"azure": "aztable://", "aws": "dynamodb://"}[cloud]
    assert outputs["catalog_url"]["value"].startswith(catalog)
