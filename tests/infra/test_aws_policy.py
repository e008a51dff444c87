"""The AWS module's IAM policy, enforced: the counter runs on S3 and DynamoDB with nothing more.

The policy document is read from the module's HCL (python-hcl2), its references filled
in for one bucket, prefix and table, and attached to a user of a moto server that
enforces IAM (``INITIAL_NO_AUTH_ACTION_COUNT``: the set-up calls pass, everything after
is checked). With that user's keys, both instances are registered in the DynamoDB
catalog and the counter example runs end to end on ``s3://BUCKET/PREFIX`` (leases,
conditional puts, listings, checkpoints, and deletes of retired chunks, with
``checkpoints_kept = 1``); a write outside the prefix and a DynamoDB call the policy does
not grant (Scan) are refused. A policy missing an action the s3 backend or the dynamodb
catalog uses fails here. Where moto checks differently from AWS,
``as_moto_reads_it`` adds the grant moto looks for, so those parts are not proven here:
moto names the HeadBucket action ``s3:HeadBucket`` (AWS checks ``s3:ListBucket``), checks
a multi-object delete as ``s3:DeleteObject`` on the bucket (AWS checks it per key, on
``PREFIX/*``), evaluates only ``StringEquals`` conditions (the ``s3:prefix``
condition on listings is not exercised), and checks DynamoDB actions against the
resource ``*`` rather than the table's ARN (the table statement's actions are proven
here; that its resource is the table alone is checked in test_terraform.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ambrosia.testing.emulators import free_loopback_ports, start_moto_server, start_or_skip
from tests.infra.test_terraform import _load
from tests.infra.tools import REPOSITORY_ROOT, TERRAFORM_ROOT

BUCKET = "ambrosia-policy-test"
PREFIX = "prod"
TABLE = "ambrosia-policy-test-catalog"
TABLE_ARN = f"arn:aws:dynamodb:us-east-1:123456789012:table/{TABLE}"
# Unauthenticated set-up calls before moto starts enforcing IAM.
SETUP_CALLS = 5
LIVENESS_S = 90.0


def policy_document() -> dict[str, Any]:
    """The ``logs`` policy document of the module, as Terraform would render it."""
    module = _load(TERRAFORM_ROOT / "aws" / "modules" / "ambrosia")
    documents = {
        name: body
        for block in module["data"]
        for name, body in block.get("aws_iam_policy_document", {}).items()
    }
    locals_ = {name: value for block in module["locals"] for name, value in block.items()}
    references = {
        "${aws_s3_bucket.logs.arn}": f"arn:aws:s3:::{BUCKET}",
        "${var.log_prefix}": PREFIX,
        "${aws_kms_key.logs.arn}": "arn:aws:kms:us-east-1:123456789012:key/test",
        "${aws_dynamodb_table.catalog.arn}": TABLE_ARN,
    }

    def fill(text: str) -> str:
        text = text.replace("${local.object_arn}", locals_["object_arn"])
        for reference, value in references.items():
            text = text.replace(reference, value)
        assert "${" not in text, f"unresolved reference in the policy: {text}"
        return text

    statements = []
    for statement in documents["logs"]["statement"]:
        rendered: dict[str, Any] = {
            "Sid": statement["sid"],
            "Effect": statement.get("effect", "Allow"),
            "Action": statement["actions"],
            "Resource": [fill(resource) for resource in statement["resources"]],
        }
        for condition in statement.get("condition", []):
            rendered.setdefault("Condition", {}).setdefault(condition["test"], {})[
                condition["variable"]
            ] = [fill(value) for value in condition["values"]]
        statements.append(rendered)
    return {"Version": "2012-10-17", "Statement": statements}


def as_moto_reads_it(document: dict[str, Any]) -> dict[str, Any]:
    """The same grants in the names moto checks (see the module docstring)."""
    for statement in document["Statement"]:
        if "s3:ListBucket" in statement["Action"]:
            statement["Action"] = [*statement["Action"], "s3:HeadBucket"]
        if statement["Resource"] == [TABLE_ARN]:
            statement["Resource"] = ["*"]
    document["Statement"].append(
        {
            "Sid": "MotoChecksMultiDeleteOnTheBucket",
            "Effect": "Allow",
            "Action": ["s3:DeleteObject"],
            "Resource": [f"arn:aws:s3:::{BUCKET}"],
        }
    )
    return document


def test_policy_document_is_limited_to_the_prefix() -> None:
    document = policy_document()
    resources = [resource for s in document["Statement"] for resource in s["Resource"]]
    assert f"arn:aws:s3:::{BUCKET}/{PREFIX}/*" in resources
    assert not any(re.fullmatch(r"arn:aws:s3:::[^/]*/\*", resource) for resource in resources)
    tables = [s for s in document["Statement"] if "dynamodb:GetItem" in s["Action"]]
    assert [s["Resource"] for s in tables] == [[TABLE_ARN]]


@pytest.mark.emulator
def test_counter_runs_with_only_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", str(SETUP_CALLS))
    moto = start_or_skip(start_moto_server)
    monkeypatch.delenv("INITIAL_NO_AUTH_ACTION_COUNT")
    processes: list[subprocess.Popen[str]] = []
    try:
        setup = {
            "endpoint_url": moto.endpoint_url,
            "region_name": "us-east-1",
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
        # The table as the module declares it (ambrosia/catalog/dynamodb.py's layout).
        boto3.client("dynamodb", **setup).create_table(
            TableName=TABLE,
            AttributeDefinitions=[
                {"AttributeName": "kind", "AttributeType": "S"},
                {"AttributeName": "name", "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": "kind", "KeyType": "HASH"},
                {"AttributeName": "name", "KeyType": "RANGE"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="ambrosia")
        iam.put_user_policy(
            UserName="ambrosia",
            PolicyName="logs",
            PolicyDocument=json.dumps(as_moto_reads_it(policy_document())),
        )
        key = iam.create_access_key(UserName="ambrosia")["AccessKey"]
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AMBROSIA_S3_ENDPOINT_URL": moto.endpoint_url,
            "AMBROSIA_DYNAMODB_ENDPOINT_URL": moto.endpoint_url,
            "PYTHONPATH": str(REPOSITORY_ROOT),
        }
        for name in ("AWS_PROFILE", "AMBROSIA_CONFIG", "AMBROSIA_CATALOG"):
            env.pop(name, None)

        # Outside the prefix: refused (the keys are enforced, not merely accepted).
        user = boto3.client(
            "s3",
            endpoint_url=moto.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        )
        with pytest.raises(user.exceptions.ClientError, match="AccessDenied"):
            user.put_object(Bucket=BUCKET, Key="elsewhere/x", Body=b"x")
        catalog_user = boto3.client(
            "dynamodb",
            endpoint_url=moto.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        )
        with pytest.raises(catalog_user.exceptions.ClientError, match="AccessDenied"):
            catalog_user.scan(TableName=TABLE)

        server_port, client_port = free_loopback_ports(2)
        config = tmp_path / "ambrosia.toml"
        config.write_text(
            f'catalog = "dynamodb://{TABLE}?region=us-east-1"\n'
            f'log = "s3://{BUCKET}/{PREFIX}"\n'
            "[store]\ncreate = false\n"
            "[coordinator]\ncheckpoints_kept = 1\n"
            "[tls]\nplaintext = true\n"
            f'[instances.server]\naddress = "127.0.0.1:{server_port}"\n'
            'app = "examples.counter.app:Counter"\n'
            f'[instances.client]\naddress = "127.0.0.1:{client_port}"\n'
            'app = "examples.counter.app:Client"\n'
        )
        for name in ("server", "client"):
            done = subprocess.run(
                [sys.executable, "-m", "ambrosia.cli", "--config", str(config), "register", name],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
        outputs = {name: tmp_path / f"{name}.out" for name in ("server", "client")}
        for name, output in outputs.items():
            with output.open("w") as sink:
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "ambrosia.cli",
                            "--config",
                            str(config),
                            "run",
                            name,
                        ],
                        env=env,
                        cwd=tmp_path,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                )
        printed: list[str] = []
        deadline = time.monotonic() + LIVENESS_S
        while len(printed) < 2 and time.monotonic() < deadline:
            if any(process.poll() is not None for process in processes):
                break  # an immortal does not end: one that did has failed
            time.sleep(0.2)
            text = outputs["client"].read_text()
            printed = [line for line in text.splitlines() if line.strip().isdigit()]
        everything = "".join(f"--- {name}\n{path.read_text()}" for name, path in outputs.items())
        assert printed == ["1", "2"], everything
        assert "AccessDenied" not in everything and "403" not in everything, everything
        # Retired chunks were deleted under the policy (checkpoints_kept = 1).
        keys = [
            item["Key"]
            for item in user.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/client/")["Contents"]
        ]
        assert any("/checkpoint-" in key for key in keys), keys
        # Both registrations are in the table, written and read under the policy.
        rows = catalog_user.query(
            TableName=TABLE,
            KeyConditionExpression="kind = :kind",
            ExpressionAttributeValues={":kind": {"S": "instance"}},
        )["Items"]
        assert sorted(row["name"]["S"] for row in rows) == ["client", "server"]
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=30)
        moto.stop()
