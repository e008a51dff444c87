"""``ambrosia log NAME``: an instance's log, in words.

What an operator wants to know about a log, read with the same rules recovery uses
(``ambrosia.coordinator.recovery``), so the inspector and recovery never disagree about
what a valid log is: the verdict below IS recovery's (``recover``, the audit every
start runs), not a second implementation of it.

- where it is (the store URL) and its metadata record (latest checkpoint, epoch, the
  range of chunks it records);
- every checkpoint: size, the page and chunk replay resumes at, the per-input
  high-water marks and, per output, the next sequence number, what the receiver
  acknowledged and the unacknowledged segments the checkpoint carries;
- every chunk: size, pages, first and last page sequence, the epochs that wrote it, and
  a torn tail (with the scanner's reason) if the last write was cut short;
- the connection watermarks at the end of the log: per source the last logged sequence
  number, per destination the latest logged trim point;
- with ``pages=True``, every page: sequence, epoch, offset, size, its input groups
  (source, sequence range, count) and trim points;
- the verdict recovery would reach: which checkpoint it loads (and which newer ones it
  would skip as unusable) and how many pages it replays, or the error it would refuse
  to start with.

Problems are part of the report, not a traceback
------------------------------------------------
A damaged log is exactly when an operator runs the inspector, so a problem (a corrupt
page in the middle of a chunk, a missing chunk, a sequence gap, an unreadable
checkpoint) never stops the inspection: everything that can be read is still shown,
and a ``PROBLEMS`` section at the end names each one with its location.

Problems are what makes recovery refuse to start: recovery's own error first, then any
further damage inside the recorded chunk range (found while showing each chunk), which
would stop the start as soon as the first is repaired. Damage recovery works around or
never reads is listed under ``WARNINGS`` instead: an unusable checkpoint it falls back
from, an unreadable older checkpoint, damage in a chunk outside the recorded range (a
retention leftover), a metadata record without a chunk range.

Then, by default (``check=True``), ``describe_log`` raises the first problem as the
same ``LogError`` subclass recovery would raise (``LogCorruptError``, ``LogGapError``),
so a script can tell a log ``ambrosia run`` refuses from one it starts by the exception
alone (and ``ambrosia log`` exits with status 2 exactly when ``ambrosia run`` would
refuse to start). The
raised error's message is the problem followed by the whole report, so
``ambrosia log NAME`` (which prints ``ambrosia: error: <message>`` for any
``AmbrosiaError`` and exits with status 2) still shows everything it read, on standard
error. ``check=False`` returns the report whatever it found. A torn tail is not a
problem: it is the expected trace of a crash during a write, and recovery cuts it off.

Reading a running instance's log is safe (the inspector never takes the lease and
never writes), but the page being written at that moment can show as a torn tail.
Chunks that recovery audited are read once; chunks outside the recorded range are read
as well, so their damage is shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ambrosia.backends import ChunkInfo, LogStore, Meta, open_store
from ambrosia.backends.retry import call_with_retry
from ambrosia.coordinator.recovery import LogReading, recover
from ambrosia.errors import LogError, NotFoundError
from ambrosia.log.page import (
    PAGE_BYTES_MAX_DEFAULT,
    ChunkScan,
    Page,
    instance_id_for,
    scan_chunk,
)
from ambrosia.protocol.checkpoint import CheckpointState, decode_checkpoint
from ambrosia.protocol.outputs import Segment

__all__ = ["describe_log"]


@dataclass(slots=True)
class _CheckpointView:
    number: int
    size_bytes: int
    state: CheckpointState | None
    problem: str | None
    error: LogError | None = None


@dataclass(slots=True)
class _ChunkView:
    info: ChunkInfo
    scan: ChunkScan | None
    problem: str | None


@dataclass(slots=True)
class _Survey:
    """Everything read from the store, before any formatting."""

    url: str
    instance: str
    meta: Meta | None = None
    meta_version: str | None = None
    checkpoints: list[_CheckpointView] = field(default_factory=list)
    chunks: list[_ChunkView] = field(default_factory=list)
    recovery: str = ""
    problems: list[LogError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    loaded: CheckpointState | None = None

    def add_problem(self, error: LogError) -> None:
        # Recovery's audit and the per-chunk scan can meet the same defect.
        if all(str(error) != str(known) for known in self.problems):
            self.problems.append(error)

    @property
    def latest(self) -> CheckpointState | None:
        """The checkpoint recovery loads (None if it would refuse or never started)."""
        return self.loaded


async def describe_log(
    log_url: str,
    instance: str,
    *,
    pages: bool = False,
    check: bool = True,
    page_bytes_max: int = PAGE_BYTES_MAX_DEFAULT,
) -> str:
    """A human-readable report on ``instance``'s log at ``log_url`` (module docstring).

    Raises the first problem found (a ``LogError``, its message ending with the full
    report) unless ``check`` is False. Storage and configuration errors (an unknown URL
    scheme, an unreachable store) are raised as they come: there is nothing to report.
    """
    store = await open_store(log_url, instance)
    try:
        survey = await _survey(store, page_bytes_max)
    finally:
        await store.close()
    text = _render(survey, pages=pages)
    if check and survey.problems:
        first = survey.problems[0]
        # Keep the error's type and fields (what scripts match on); only its message
        # grows, so that a command line that prints the message shows the report too.
        first.args = (f"{first}\n\n{text}",)
        raise first
    return text


# -- reading ------------------------------------------------------------------------------


async def _survey(store: LogStore, page_bytes_max: int) -> _Survey:
    survey = _Survey(url=store.url, instance=store.instance)
    # Transient storage failures are retried here, by the store's caller, as the
    # coordinator does (ambrosia.backends.retry says why not inside the store).
    survey.meta, survey.meta_version = await call_with_retry(store.read_meta)
    for number in await call_with_retry(store.list_checkpoints):
        survey.checkpoints.append(await _read_checkpoint(store, number))
    chunk_infos = await call_with_retry(store.list_chunks)
    reading = await _recovery_verdict(store, survey, page_bytes_max)
    for view in survey.checkpoints:
        if view.problem is not None and all(view.number != n for n, _ in _skipped(reading)):
            survey.warnings.append(f"checkpoint {view.number}: {view.problem}")
    scans = dict(reading.scans) if reading is not None else {}
    recorded = survey.meta.chunks if survey.meta is not None else None
    for info in chunk_infos:
        scan = scans.get(info.number)
        problem = None
        if scan is None:
            scan, error = await _scan(store, info, page_bytes_max)
            if error is not None:
                problem = str(error)
                if recorded is None or info.number in recorded:
                    survey.add_problem(error)
                else:
                    survey.warnings.append(f"outside the recorded chunk range: {error}")
        survey.chunks.append(_ChunkView(info, scan, problem))
    if survey.meta is not None and survey.meta.checkpoint is not None and recorded is None:
        survey.warnings.append(
            "the metadata record has no chunk range (written by an older version): a deleted "
            "newest chunk cannot be detected until the next start records one"
        )
    return survey


def _skipped(reading: LogReading | None) -> list[tuple[int, LogError]]:
    return [] if reading is None else reading.skipped


async def _read_checkpoint(store: LogStore, number: int) -> _CheckpointView:
    # Read the raw bytes (not recovery.read_checkpoint) to show the size as well; the
    # decoding, and so the checks, are recovery's.
    where = f"{store.url} {store.instance} checkpoint {number}"
    try:
        data = await call_with_retry(lambda: store.read_checkpoint(number))
    except NotFoundError as error:
        return _CheckpointView(number, 0, None, f"vanished while reading (retention?): {error}")
    try:
        return _CheckpointView(number, len(data), decode_checkpoint(data, where), None)
    except LogError as error:
        return _CheckpointView(number, len(data), None, str(error), error)


async def _recovery_verdict(
    store: LogStore, survey: _Survey, page_bytes_max: int
) -> LogReading | None:
    """Run recovery's own reading of the log; record what it would conclude."""
    try:
        reading = await recover(store, page_bytes_max)
    except LogError as error:
        survey.add_problem(error)
        survey.recovery = f"recovery would refuse to start: {error}"
        return None
    checkpoint = reading.checkpoint
    if checkpoint is None:
        survey.recovery = "never started: recovery would begin a new log"
        return reading
    survey.loaded = checkpoint
    for number, unusable in reading.skipped:
        survey.warnings.append(
            f"checkpoint {number} cannot be used, recovery falls back past it: {unusable}"
        )
    if reading.pages:
        replayed = (
            f"replay {len(reading.pages)} page(s), sequence "
            f"{reading.pages[0][1].sequence}..{reading.pages[-1][1].sequence}"
        )
    else:
        replayed = "replay no pages"
    survey.recovery = (
        f"recovery would load checkpoint {checkpoint.number} and {replayed}, "
        f"then write chunk {reading.next_chunk}"
    )
    return reading


async def _scan(
    store: LogStore, info: ChunkInfo, page_bytes_max: int
) -> tuple[ChunkScan | None, LogError | None]:
    where = f"{store.url} {store.instance} chunk {info.number}"
    try:
        data = await call_with_retry(lambda: store.read_chunk(info.number))
    except NotFoundError as missing:
        return None, LogError(f"{where} vanished while reading (retention?): {missing}")
    try:
        scan = scan_chunk(
            data,
            where=where,
            instance_id=instance_id_for(store.instance),
            page_bytes_max=page_bytes_max,
        )
    except LogError as damaged:
        return None, damaged
    return scan, None


# -- formatting -----------------------------------------------------------------------------


def _render(survey: _Survey, *, pages: bool) -> str:
    lines = [f"log of {survey.instance} at {survey.url}"]
    lines += _render_meta(survey)
    lines += _render_checkpoints(survey)
    lines += _render_chunks(survey)
    lines += _render_watermarks(survey)
    if pages:
        lines += _render_pages(survey)
    lines.append("")
    lines.append(survey.recovery)
    if survey.warnings:
        lines.append("")
        lines.append(f"WARNINGS ({len(survey.warnings)}):")
        lines += [f"  {warning}" for warning in survey.warnings]
    if survey.problems:
        lines.append("")
        lines.append(f"PROBLEMS ({len(survey.problems)}):")
        lines += [f"  {type(error).__name__}: {error}" for error in survey.problems]
    return "\n".join(lines) + "\n"


def _render_meta(survey: _Survey) -> list[str]:
    meta = survey.meta
    if meta is None:
        return ["metadata: none (the instance never started)"]
    latest = "none" if meta.checkpoint is None else str(meta.checkpoint)
    line = f"metadata: latest checkpoint {latest}, epoch {meta.epoch}"
    line += ", chunks " + ("not recorded" if meta.chunks is None else str(meta.chunks))
    if survey.meta_version is not None:
        line += f", version {survey.meta_version}"
    extra = ", ".join(f"{key}={value}" for key, value in meta.extra)
    return [line + (f", {extra}" if extra else "")]


def _render_checkpoints(survey: _Survey) -> list[str]:
    lines = ["", f"checkpoints ({len(survey.checkpoints)}):"]
    for view in survey.checkpoints:
        state = view.state
        if state is None:
            lines.append(f"  checkpoint {view.number}: {view.size_bytes} bytes, UNREADABLE")
            lines.append(f"    {view.problem}")
            continue
        lines.append(
            f"  checkpoint {view.number}: {view.size_bytes} bytes, epoch {state.epoch}, "
            f"resumes at page {state.resume_sequence} in chunk {state.resume_chunk}, "
            f"app state {len(state.app)} bytes"
        )
        binding = ", ".join(f"{key} {value}" for key, value in sorted(state.binding.items()))
        lines.append(f"    binding: {binding or '-'}")
        marks = sorted(state.inputs.items())
        inputs = ", ".join(f"{source} through {seq}" for source, seq in marks)
        lines.append(f"    inputs: {inputs or 'none'}")
        if not state.outputs:
            lines.append("    outputs: none")
        for destination, output in sorted(state.outputs.items()):
            lines.append(
                f"    output to {destination}: produced through {output.next_seq}, "
                f"acked through {output.acked_through}, {_segments(output.segments)}"
            )
    return lines


def _segments(buffered: list[Segment]) -> str:
    if not buffered:
        return "no buffered segments"
    messages = sum(segment.count for segment in buffered)
    size = sum(len(segment.data) for segment in buffered)
    return (
        f"{len(buffered)} buffered segment(s): seq {buffered[0].first_seq}.."
        f"{buffered[-1].last_seq}, {messages} message(s), {size} bytes"
    )


def _render_chunks(survey: _Survey) -> list[str]:
    lines = ["", f"chunks ({len(survey.chunks)}):"]
    recorded = survey.meta.chunks if survey.meta is not None else None
    for view in survey.chunks:
        head = f"  chunk {view.info.number}: {view.info.size_bytes} bytes"
        if recorded is not None and view.info.number < recorded.first:
            head += " (below the recorded range: a retention leftover)"
        elif recorded is not None and view.info.number > recorded.last:
            head += " (beyond the recorded range)"
        scan = view.scan
        if scan is None:
            lines.append(f"{head}, UNREADABLE")
            lines.append(f"    {view.problem}")
            continue
        if scan.pages:
            epochs = sorted({page.epoch for page in scan.pages})
            head += (
                f", {len(scan.pages)} page(s), sequence {scan.pages[0].sequence}.."
                f"{scan.pages[-1].sequence}, epoch(s) {', '.join(map(str, epochs))}"
            )
        else:
            head += ", no pages"
        lines.append(head)
        if scan.torn_tail:
            cut = view.info.size_bytes - scan.valid_bytes
            lines.append(f"    torn tail: {cut} byte(s) after offset {scan.valid_bytes} ignored")
            lines.append(f"      ({scan.torn_reason})")
    return lines


def _all_pages(survey: _Survey) -> list[Page]:
    return [page for view in survey.chunks if view.scan is not None for page in view.scan.pages]


def _render_watermarks(survey: _Survey) -> list[str]:
    latest = survey.latest
    inputs: dict[str, int] = dict(latest.inputs) if latest is not None else {}
    trims: dict[str, int] = {}
    for page in _all_pages(survey):
        for group in page.groups:
            inputs[group.source] = max(inputs.get(group.source, 0), group.last_seq)
        for destination, seq in page.trims:
            trims[destination] = max(trims.get(destination, 0), seq)
    lines = ["", "watermarks at the end of the log:"]
    lines.append("  inputs (last logged seq per source):")
    lines += [f"    {source}: {seq}" for source, seq in sorted(inputs.items())] or ["    none"]
    lines.append("  outputs (latest logged trim point per destination):")
    outputs = [f"    {destination}: {seq}" for destination, seq in sorted(trims.items())]
    if latest is not None:
        # Destinations with no trim in the pages kept: what the checkpoint knew.
        for destination, output in sorted(latest.outputs.items()):
            if destination not in trims and destination != survey.instance:
                outputs.append(
                    f"    {destination}: {output.acked_through} (from checkpoint {latest.number})"
                )
    lines += outputs or ["    none"]
    return lines


def _render_pages(survey: _Survey) -> list[str]:
    lines: list[str] = []
    for view in survey.chunks:
        if view.scan is None:
            continue
        lines.append("")
        lines.append(f"pages of chunk {view.info.number}:")
        for page in view.scan.pages:
            lines.append(
                f"  page {page.sequence}: epoch {page.epoch}, offset {page.offset}, "
                f"{page.size_bytes} bytes"
            )
            for group in page.groups:
                lines.append(
                    f"    group {group.source} {group.first_seq}..{group.last_seq}: "
                    f"{group.count} message(s), {group.replayable_count} replayable, "
                    f"{len(group.messages)} bytes"
                )
            if page.trims:
                trims = ", ".join(f"{destination} {seq}" for destination, seq in page.trims)
                lines.append(f"    trims: {trims}")
    return lines
