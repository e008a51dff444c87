"""The Temporal workflow of ``ambrosia-bench peers``: a counter entity with an update.

A module of its own, importing nothing but ``temporalio``: the worker's sandbox imports
it again for every workflow run. One workflow run is one counter; ``add`` is a workflow
update, whose result the caller receives once the server has recorded its completion in
the workflow's history; ``stop`` (a signal) ends the run.
"""

from temporalio import workflow

__all__ = ["PeerCounterWorkflow"]


@workflow.defn
class PeerCounterWorkflow:
    def __init__(self) -> None:
        self.count = 0
        self.stopped = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.stopped)
        return self.count

    @workflow.update
    def add(self, payload: str) -> int:
        self.count += 1
        return self.count

    @workflow.signal
    def stop(self) -> None:
        self.stopped = True
