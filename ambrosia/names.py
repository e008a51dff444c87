"""Instance names: the one rule, and the one limit every layer shares.

An instance name is 1 to ``INSTANCE_NAME_BYTES_MAX`` characters of ``[A-Za-z0-9_.-]``,
other than ``.`` and ``..`` (a directory of the file store must not be its parent).
The alphabet is what is safe in a file name, a blob prefix, an Azure table row key, a
URL path segment and a certificate's URI without escaping, so one name works on every
backend; being ASCII, its length in characters is its length in bytes of UTF-8.

Every layer takes the limit from here: the catalog (registration), the log stores
(``open_store``), the deployment file, certificates, the log's page format (the source
and destination names of a page) and the wire format (names in messages). So a name
that registers can be run, called and logged, and one that is too long is refused at
the first layer it reaches, with the message ``validate_instance_name`` gives. The
codecs check only the length (they see names from peers and from the log, already
validated where they entered) and refuse a longer one as malformed bytes.
"""

from __future__ import annotations

import re
from typing import Final

from ambrosia.errors import ConfigError

__all__ = ["INSTANCE_NAME_BYTES_MAX", "validate_instance_name"]

INSTANCE_NAME_BYTES_MAX: Final = 64

_INSTANCE_NAME_PATTERN = re.compile(rf"[A-Za-z0-9_.\-]{{1,{INSTANCE_NAME_BYTES_MAX}}}")


def validate_instance_name(name: str) -> str:
    """Return ``name`` if it is a valid instance name (module docstring); else ConfigError."""
    if (
        not isinstance(name, str)
        or _INSTANCE_NAME_PATTERN.fullmatch(name) is None
        or name in (".", "..")
    ):
        raise ConfigError(
            f"invalid instance name {name!r}: use 1 to {INSTANCE_NAME_BYTES_MAX} "
            "characters of letters, digits, '_', '.' and '-', other than '.' and '..'"
        )
    return name
