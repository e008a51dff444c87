"""Testing helpers for applications built on ambrosia.

``replay_test`` (retroactive testing: replay a recorded log with new code and report the
first divergence) and ``open_replay`` (step through a recorded log) are the public API for
an application's own tests; the rest of this package is the project's test machinery.
"""

from ambrosia.timetravel import (
    Divergence,
    LoggedCall,
    Replay,
    ReplayTestReport,
    open_replay,
    replay_test,
)

__all__ = [
    "Divergence",
    "LoggedCall",
    "Replay",
    "ReplayTestReport",
    "open_replay",
    "replay_test",
]
