"""A version 2 of the chain workload's server, for the live upgrade tests.

``ChainServerV2`` keeps every attribute of ``ChainServer`` (the default migration copies
them), records where it took over (``upgraded_at``: the calls the old code had handled)
and counts the calls the new code handled; its status file says so.
``ChainServerBadMigration`` is a version whose migration raises.
"""

from __future__ import annotations

from ambrosia.binding.immortal import Immortal
from ambrosia.testing.workloads import ChainClient, ChainServer


class ChainServerV2(ChainServer):
    def __init__(self) -> None:
        super().__init__()
        self.upgraded_at = -1
        self.handled_by_v2 = 0

    @classmethod
    def upgrade_from(cls, old: Immortal) -> ChainServerV2:
        new = super().upgrade_from(old)
        assert isinstance(old, ChainServer)
        new.upgraded_at = old.count
        new.handled_by_v2 = 0
        return new

    def _record(self, n: int) -> int:
        self.handled_by_v2 += 1
        return super()._record(n)

    def _status(self) -> dict[str, object]:
        return {
            **super()._status(),
            "version": 2,
            "upgraded_at": self.upgraded_at,
            "handled_by_v2": self.handled_by_v2,
        }


class ChainServerBadMigration(ChainServer):
    @classmethod
    def upgrade_from(cls, old: Immortal) -> ChainServerBadMigration:
        raise ValueError("this migration does not know the old state")


class ChainServerV3Diverging(ChainServerV2):
    """A version whose results differ from what version 1 returned (the upgrade test
    reports it)."""

    def _record(self, n: int) -> int:
        return super()._record(n) + 1


class ChainClientV1(ChainClient):
    """The chain client declaring its version (``__ambrosia_version__``)."""

    __ambrosia_version__ = 1


class ChainClientV2(ChainClientV1):
    """Version 2 of the client: records how far version 1 had got (``upgraded_at``:
    the last call it sent) and says in its status that it runs."""

    __ambrosia_version__ = 2

    def __init__(self) -> None:
        super().__init__()
        self.upgraded_at = -1

    @classmethod
    def upgrade_from(cls, old: Immortal) -> ChainClientV2:
        new = super().upgrade_from(old)
        assert isinstance(old, ChainClient)
        new.upgraded_at = old.sent
        return new

    def _status(self) -> dict[str, object]:
        return {
            **super()._status(),
            "version": 2,
            "upgraded_at": self.upgraded_at,
        }
