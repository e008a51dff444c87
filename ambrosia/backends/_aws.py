"""What the AWS clients (the s3 log store, the DynamoDB catalog) resolve the same way:
the endpoint, the credentials and the region. Imported only with the ``s3`` extra."""

from __future__ import annotations

import os

from aiobotocore.session import AioSession, get_session

from ambrosia.errors import ConfigError

__all__ = ["aws_session"]


async def aws_session(
    *, endpoint_url: str | None, endpoint_variable: str, region: str | None
) -> tuple[AioSession, str | None, str]:
    """(session, endpoint URL or None, region). The endpoint: ``endpoint_url``, else
    ``$endpoint_variable``, else ``$AWS_ENDPOINT_URL``. The region: ``region``, else
    ``$AWS_REGION``, ``$AWS_DEFAULT_REGION``, the profile's, else us-east-1. ConfigError
    when the credential chain finds nothing."""
    endpoint = (
        endpoint_url
        or os.environ.get(endpoint_variable)
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )
    session = get_session()
    if await session.get_credentials() is None:
        raise ConfigError(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "a profile (AWS_PROFILE), or run where an instance, task or pod role is available"
        )
    chosen = (
        region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or session.get_config_variable("region")
        or "us-east-1"
    )
    return session, endpoint, chosen
