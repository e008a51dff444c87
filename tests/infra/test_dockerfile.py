"""The Dockerfile, checked by structure (no Docker engine runs on the test machines).

It must build from a pinned base, install the package with the extras the manifests
need, run as the non-root uid the manifests name, expose the peer and health ports,
carry no credential, and send only the package and examples into the build context.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib

import yaml

from tests.infra.tools import KUBERNETES_ROOT, REPOSITORY_ROOT

DOCKERFILE = REPOSITORY_ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result


def test_bases_are_pinned() -> None:
    for keyword, rest in instructions():
        if keyword == "FROM":
            image = rest.split()[0]
            assert ":" in image and not image.endswith(":latest"), image
            assert re.search(r":\d+\.\d+\.\d+", image), f"pin the patch version: {image}"


def test_runs_as_the_manifests_user() -> None:
    final = stages()[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0
    base = KUBERNETES_ROOT / "base"
    for name in ("server.yaml", "client.yaml"):
        for document in yaml.safe_load_all((base / name).read_text()):
            if document["kind"] == "StatefulSet":
                context = document["spec"]["template"]["spec"]["securityContext"]
                assert context["runAsUser"] == int(uid)
                assert context["runAsGroup"] == int(gid)


def test_installs_the_extras_the_deployments_use() -> None:
    runs = " ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    match = re.search(r'"\.\[([a-z0-9,]+)\]"', runs)
    assert match, runs
    extras = set(match.group(1).split(","))
    assert {"azure", "s3", "prometheus"} <= extras
    declared = tomllib.loads((REPOSITORY_ROOT / "pyproject.toml").read_text())
    assert extras <= set(declared["project"]["optional-dependencies"])


def test_ports_and_entrypoint() -> None:
    final = dict(stages()[-1])
    assert set(final["EXPOSE"].split()) == {"7001", "9102"}
    assert shlex.split(final["ENTRYPOINT"].strip("[]").replace(",", " ")) == ["ambrosia"]
    assert "/healthz" in final["HEALTHCHECK"]


def test_no_credentials_in_the_image() -> None:
    secret_words = ("SECRET", "PASSWORD", "ACCESS_KEY", "CONNECTION_STRING", "SAS", "TOKEN")
    for keyword, rest in instructions():
        if keyword in ("ENV", "ARG"):
            assert not any(word in rest.upper() for word in secret_words), rest
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"\.(key|pem|crt)\b|\.env\b|credentials", rest), rest


def test_build_context_is_the_package_and_examples() -> None:
    rules = [
        line.strip()
        for line in (REPOSITORY_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "start by excluding everything"

    def included(path: str) -> bool:
        keep = True
        for rule in rules:
            negated = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negated
        return keep

    for path in ("ambrosia/cli.py", "examples/counter/app.py", "pyproject.toml"):
        assert included(path), path
    for path in (".venv/bin/python", ".git/config", "certs/server.key", "results/a.json"):
        assert not included(path), path
    copied = {
        rest.split()[0]
        for keyword, rest in instructions()
        if keyword == "COPY" and not rest.startswith("--from")
    }
    for source in copied:
        assert (REPOSITORY_ROOT / source).exists() and included(source), source
