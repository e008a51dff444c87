"""The deployment docs quote commands, not typed figures: run them and compare.

Every ``$ ambrosia-bench deployment-cost ...`` in a ``console`` block of the deployment
docs is run (in the repository root, where its price sheets are), and the block must
show exactly what it prints. A price sheet that changes fails here until the docs are
regenerated.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.infra.tools import REPOSITORY_ROOT

DOCS = ["deploy-azure.md", "deploy-aws.md", "kubernetes.md"]
_BLOCK = re.compile(r"```console\n\$ (ambrosia-bench deployment-cost[^\n]*)\n(.*?)```", re.S)


@pytest.mark.parametrize("name", DOCS)
def test_cost_figures_are_what_the_command_prints(name: str) -> None:
    text = (REPOSITORY_ROOT / "docs" / name).read_text()
    blocks = _BLOCK.findall(text)
    assert blocks, f"docs/{name} shows no `ambrosia-bench deployment-cost` run"
    for command, shown in blocks:
        arguments = shlex.split(command)[1:]
        done = subprocess.run(
            [sys.executable, "-m", "ambrosia.bench.cli", *arguments],
            cwd=REPOSITORY_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert shown == done.stdout, f"docs/{name}: `{command}` now prints:\n{done.stdout}"


def test_aws_cost_defaults_are_what_infra_provisions() -> None:
    """``ambrosia-bench deployment-cost``'s AWS defaults, read from the modules and manifests."""
    import yaml

    from ambrosia.bench.cost import AwsDeploymentUsage
    from tests.infra.test_terraform import AWS, _load

    usage = AwsDeploymentUsage()
    variables = {
        name: body.get("default")
        for block in _load(AWS / "modules" / "ambrosia")["variable"]
        for name, body in block.items()
    }
    assert usage.nodes == variables["node_count"]
    assert usage.node_disk_gb == variables["node_disk_gb"]
    assert usage.stored_days == variables["noncurrent_version_days"]
    base = REPOSITORY_ROOT / "infra" / "kubernetes" / "base"
    claims = []
    for path in sorted(base.glob("*.yaml")):
        for item in yaml.safe_load_all(path.read_text()):
            if item and item.get("kind") == "StatefulSet":
                (claim,) = item["spec"]["volumeClaimTemplates"]
                claims.append(claim["spec"]["resources"]["requests"]["storage"])
    assert len(claims) == usage.instances
    assert claims == [f"{usage.volume_gb:g}Gi"] * usage.instances
    # The AWS overlay runs one hot standby per immortal (components/standby).
    standby = REPOSITORY_ROOT / "infra" / "kubernetes" / "components" / "standby"
    replicas = yaml.safe_load((standby / "replicas.yaml").read_text())["spec"]["replicas"]
    overlay = (REPOSITORY_ROOT / "infra" / "kubernetes" / "overlays" / "aws").joinpath(
        "kustomization.yaml"
    )
    assert "../../components/standby" in yaml.safe_load(overlay.read_text())["components"]
    assert usage.standbys == usage.instances * (replicas - 1)
