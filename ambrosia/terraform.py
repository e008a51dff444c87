"""The deployment file from Terraform outputs: ``ambrosia config from-terraform DIR``.

The modules under ``infra/terraform/`` (Azure and AWS) name their outputs for this
module: ``log_url`` and ``catalog_url`` become the file's ``log`` and ``catalog``; the
rest (account URLs, the identity's client id, the region) are settings of the
coordinators' environment, never of the file (credentials and endpoints stay out of it,
see ``ambrosia.deployment``), so they are written as comments an operator can read, and
the Kubernetes overlays take them as environment variables.

The outputs come from ``terraform output -json`` run in DIR, or from a file that holds
that command's output (``terraform output -json > outputs.json``), so the same path is
tested without Terraform or a cloud. The result is parsed back with
``ambrosia.deployment.parse_deployment`` before it is written: a file this command
writes is one ``ambrosia`` accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambrosia.backends import check_store_url
from ambrosia.catalog import check_catalog_url
from ambrosia.deployment import parse_deployment
from ambrosia.errors import ConfigError

__all__ = [
    "ENVIRONMENT_OUTPUTS",
    "TerraformOutputs",
    "deployment_text",
    "environment_text",
    "load_outputs",
    "parse_outputs",
    "write_deployment",
]

# Output name -> the environment variable of the coordinators it sets.
ENVIRONMENT_OUTPUTS: Mapping[str, str] = {
    "blob_account_url": "AZURE_STORAGE_ACCOUNT_URL",
    "table_account_url": "AZURE_TABLES_ACCOUNT_URL",
    "client_id": "AZURE_CLIENT_ID",
    "region": "AWS_REGION",
}
# Outputs worth a line in the file's header, for the operator.
_NOTED_OUTPUTS = (
    "file_share_url",
    "role_arn",
    "storage_account_name",
    "bucket",
    "catalog_table",
    "cluster_name",
    "kubernetes_namespace",
    "kubernetes_service_account",
)
OUTPUTS_BYTES_MAX = 1024 * 1024
TERRAFORM_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class TerraformOutputs:
    """The outputs of one Terraform root, by name (non-string values left out)."""

    source: str
    values: Mapping[str, str]

    def required(self, name: str) -> str:
        value = self.values.get(name)
        if not value:
            raise ConfigError(
                f"{self.source}: no output {name!r}; the root must expose the module's "
                f"outputs (infra/terraform/*/example/outputs.tf); found: "
                f"{', '.join(sorted(self.values)) or 'none'}"
            )
        return value


def parse_outputs(text: str, source: str) -> TerraformOutputs:
    """The output of ``terraform output -json``: ``{name: {"value": ..., ...}}``."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{source}: not the JSON of `terraform output -json`: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a JSON object of outputs")
    values: dict[str, str] = {}
    for name, output in document.items():
        if not isinstance(output, dict) or "value" not in output:
            raise ConfigError(f"{source}: output {name!r} has no 'value'")
        if output.get("sensitive"):
            continue  # nothing secret goes into the file, not even as a comment
        value = output["value"]
        if isinstance(value, str) and value:
            values[name] = value
    return TerraformOutputs(source, values)


def load_outputs(location: str | os.PathLike[str]) -> TerraformOutputs:
    """Outputs from a Terraform root directory (runs terraform) or a saved JSON file."""
    path = Path(location)
    if path.is_file():
        if path.stat().st_size > OUTPUTS_BYTES_MAX:
            raise ConfigError(f"{path}: larger than {OUTPUTS_BYTES_MAX} bytes")
        return parse_outputs(path.read_text(encoding="utf-8"), str(path))
    if not path.is_dir():
        raise ConfigError(f"{path}: neither a Terraform directory nor a saved outputs file")
    terraform = shutil.which("terraform")
    if terraform is None:
        raise ConfigError(
            "terraform is not on PATH: install it, or save the outputs elsewhere with "
            "`terraform output -json > outputs.json` and pass that file"
        )
    try:
        completed = subprocess.run(
            [terraform, f"-chdir={path}", "output", "-json"],
            capture_output=True,
            text=True,
            timeout=TERRAFORM_TIMEOUT_S,
            check=False,
            env={**os.environ, "CHECKPOINT_DISABLE": "1"},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ConfigError(f"terraform output -json in {path} failed: {error}") from error
    if completed.returncode != 0:
        raise ConfigError(
            f"terraform output -json in {path} exited with {completed.returncode}: "
            f"{completed.stderr.strip()[-2000:]}"
        )
    return parse_outputs(completed.stdout, f"terraform output -json in {path}")


def _toml_string(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=False)


def deployment_text(outputs: TerraformOutputs, *, create_storage: bool = False) -> str:
    """The ``ambrosia.toml`` these outputs describe."""
    lines = [
        f"# Written by `ambrosia config from-terraform` from {outputs.source}.",
        "# Credentials are not here: the coordinators get them from the platform's",
        "# workload identity. Their environment:",
    ]
    for name, variable in ENVIRONMENT_OUTPUTS.items():
        if name in outputs.values:
            lines.append(f"#   {variable}={outputs.values[name]}")
    noted = [name for name in _NOTED_OUTPUTS if name in outputs.values]
    if noted:
        lines.append("# Also provisioned:")
        lines.extend(f"#   {name} = {outputs.values[name]}" for name in noted)
    lines += [
        "",
        f"catalog = {_toml_string(outputs.required('catalog_url'))}",
        f"log = {_toml_string(outputs.required('log_url'))}",
        "",
        "[store]",
        "# Terraform made the container or bucket: a missing one is a mistake to report.",
        f"create = {'true' if create_storage else 'false'}",
        "",
    ]
    return "\n".join(lines)


def write_deployment(
    outputs: TerraformOutputs, destination: Path | None, *, force: bool = False
) -> str:
    """Check and write the file (``destination`` None: only return its text).

    The URLs are checked as ``ambrosia`` checks them before any IO (a malformed table or
    bucket name, an unknown scheme), so a file written here is not refused later.
    """
    text = deployment_text(outputs)
    parse_deployment(text, destination or Path("ambrosia.toml"))
    check_catalog_url(outputs.required("catalog_url"))
    check_store_url(outputs.required("log_url"))
    if destination is not None:
        if destination.exists() and not force:
            raise ConfigError(f"{destination} exists; pass --force to replace it")
        temporary = destination.with_name(destination.name + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(destination)
    return text


def environment_text(outputs: TerraformOutputs) -> str:
    """``KEY=VALUE`` lines of the coordinators' environment (a kustomize ``envs`` file)."""
    lines = [
        f"{variable}={outputs.values[name]}"
        for name, variable in ENVIRONMENT_OUTPUTS.items()
        if name in outputs.values
    ]
    for line in lines:
        if "\n" in line:
            raise ConfigError(f"{outputs.source}: an output holds a line break: {line!r}")
    return "".join(f"{line}\n" for line in lines)


def run_from_terraform(arguments: Any) -> int:
    """The ``ambrosia config from-terraform`` command."""
    outputs = load_outputs(arguments.directory)
    destination = None if arguments.output == "-" else Path(arguments.output)
    text = write_deployment(outputs, destination, force=arguments.force)
    if arguments.env_file is not None:
        Path(arguments.env_file).write_text(environment_text(outputs), encoding="utf-8")
    if destination is None:
        print(text, end="")
    else:
        print(
            f"wrote {destination}: log {outputs.values['log_url']}, "
            f"catalog {outputs.values['catalog_url']}"
        )
    return 0
