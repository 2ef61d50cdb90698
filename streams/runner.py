"""The in-process runner: JSON lines in, scores, alerts and dead letters into a sink.

It is the thinnest possible shell around :class:`~vigie.operators.ScoringPipeline`:
decode each line with the shared codec, dead-letter what fails, process the rest in input
order, hand every record to the sink in batches, and checkpoint the learned state together
with the input position after each flush. Lines are decoded :data:`DECODE_BATCH` at a time,
and their events scored together, in order (:meth:`ScoringPipeline.process_all
<vigie.operators.ScoringPipeline.process_all>`): decoding holds no state and the batch gives
what scoring event after event gives, so the results are the same. A batch never runs past
a checkpoint's line, so a checkpoint holds exactly the state of the lines it covers.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

from vigie.models.persistence import load_checkpoint, save_checkpoint
from vigie.operators import PipelineResult, ScoringPipeline
from vigie.schemas import EventRejected, InboundEvent, dead_letter, decode_event
from vigie.sinks.base import Sink

WRITE_BATCH = 2_000
"""Events per call to the sink (it buffers further and flushes by size and time)."""

DECODE_BATCH = 256
"""Lines decoded together, then scored together. Why: decoding (pydantic's validators) and
scoring each push the other's code and data out of the CPU caches; alternating them per line
made each about a fifth slower than when run apart (2026-11-23, 8 h stream: 170 us per event
decoded and scored line by line, 140-150 us in batches of 16 to 2,000). The same holds between
detectors, hence ``process_all``: scoring a batch of 256 took 53-55 us per event where event
after event took 64-66 (2026-11-24, 8 h stream, interleaved runs). Sink writes and checkpoints still fall on
the same lines. An input that is a live feed would wait for a batch to fill: ``vigie run``
reads files (live feeds go through Kafka or the console's engine)."""

GC_THRESHOLDS = (50_000, 20, 100)
"""``gc.set_threshold`` of a streaming scoring process, a Faust worker or a Flink function
(CPython's default: 700, 10, 10): young collections stay short, for latency."""

RUNNER_GC_THRESHOLDS = (500_000, 20, 100)
"""``gc.set_threshold`` of the in-process runner (``vigie run``).

The runner holds ``WRITE_BATCH`` events' records (about 38,000 tracked objects) until it hands
them to the sink, and its learned state grows meanwhile (about 8,000 per batch before idle keys
are swept), so young collections at 50,000 kept walking objects that were all alive: on the 24 h stream,
34 young and one middle collection, 26-29 us per event (about 8%), pauses up to 240-384 ms,
for nothing: a full collection after such a run finds no cyclic garbage. At 500,000 that run
has no collection at all (measured with ``gc.callbacks``, 2026-11-23).
"""


def tune_garbage_collector(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> tuple[int, int, int]:
    """Make the cyclic garbage collector run less often in a scoring process; returns the old thresholds.

    Scoring allocates many short-lived objects (decoded events, scores, dicts) that reference
    counting frees, and builds few cycles; but every young collection promotes survivors into
    the old generations, whose collections walk the whole learned state (hundreds of thousands
    of keys on a long run). At CPython's defaults that costs about a fifth of the CPU of the
    five-detector pipeline; at :data:`GC_THRESHOLDS` it costs a few percent (bench/pipeline.py),
    at :data:`RUNNER_GC_THRESHOLDS` nothing measurable for the in-process runner.
    Objects alive at start-up (modules, reference tables) are frozen out of collections.
    """
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*thresholds)
    return old


@dataclass
class RunSummary:
    """Counts for one run; ``seconds`` is wall time spent in :meth:`InProcessRunner.run`."""

    lines_read: int = 0
    lines_skipped: int = 0
    events_by_type: Counter[str] = field(default_factory=Counter)
    scores: int = 0
    alerts: int = 0
    dead_letters: int = 0
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    resent: int = 0
    """Events skipped because their ``event_id`` was processed already (a re-send: see :mod:`vigie.operators.dedup`)."""
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return sum(self.events_by_type.values())

    @property
    def events_per_second(self) -> float:
        return self.lines_read / self.seconds if self.seconds > 0 else 0.0


def iter_lines(stream: BinaryIO) -> Iterator[bytes]:
    """Lines of a binary stream without their line ending; blank lines are skipped by the caller."""
    for line in stream:
        yield line.rstrip(b"\r\n")


class CheckpointMismatch(ValueError):
    """``--resume`` on another input than the checkpoint's."""


class InProcessRunner:
    """Scores lines of JSON events through a pipeline into a sink.

    ``on_result`` sees every processed event's result (the live terminal view uses it);
    ``checkpoint_path`` makes runs resumable.
    """

    def __init__(
        self,
        pipeline: ScoringPipeline,
        sink: Sink,
        checkpoint_path: Path | None = None,
        checkpoint_every: int = 50_000,
        on_result: Callable[[PipelineResult], None] | None = None,
        on_progress: Callable[[RunSummary], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.sink = sink
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        self.on_result = on_result
        self.on_progress = on_progress

    def resume_position(self, source: str) -> int:
        """Restore the checkpoint (if any) and return how many lines of ``source`` it covers."""
        if self.checkpoint_path is None:
            return 0
        checkpoint = load_checkpoint(self.checkpoint_path)
        if checkpoint is None:
            return 0
        if checkpoint.position.get("source") != source:
            raise CheckpointMismatch(
                f"checkpoint {self.checkpoint_path} is for {checkpoint.position.get('source')!r}, not {source!r}: "
                "remove it or pass the same input"
            )
        self.pipeline.load_state_dict(checkpoint.state)
        return int(checkpoint.position["lines"])

    def run(self, source: str, lines: Iterable[bytes], skip: int = 0) -> RunSummary:
        """Process ``lines`` (named ``source`` in dead letters), skipping the first ``skip``."""
        summary = RunSummary()
        started = time.perf_counter()
        batch: list[Any] = []
        line_no = 0
        numbered = enumerate(lines, start=1)
        for _ in islice(numbered, skip):  # covered by the checkpoint: read past, not decoded
            summary.lines_skipped += 1
        while chunk := list(islice(numbered, self._batch_size(summary))):
            # Blank lines are not decoded (None); the rest are events or their rejection.
            decoded = [_decode(raw) if raw.strip() else None for _, raw in chunk]
            events = [e for e in decoded if e is not None and not isinstance(e, EventRejected)]
            results = iter(self.pipeline.process_all(events))
            for (line_no, raw), event in zip(chunk, decoded, strict=True):
                result = next(results) if event is not None and not isinstance(event, EventRejected) else None
                batch = self._line(source, line_no, raw, event, result, summary, batch, started)
        self._checkpoint(batch, source, max(line_no, skip))
        summary.seconds = time.perf_counter() - started
        if self.on_progress is not None:
            self.on_progress(summary)
        return summary

    def _batch_size(self, summary: RunSummary) -> int:
        """Lines to decode and score together next: :data:`DECODE_BATCH`, or fewer to end on a checkpoint's line."""
        if self.checkpoint_path is None:
            return DECODE_BATCH
        return min(DECODE_BATCH, self.checkpoint_every - summary.lines_read % self.checkpoint_every)

    def _line(
        self,
        source: str,
        line_no: int,
        raw: bytes,
        event: InboundEvent | EventRejected | None,
        result: PipelineResult | Exception | None,
        summary: RunSummary,
        batch: list[Any],
        started: float,
    ) -> list[Any]:
        """Account for one line and its event's ``result``, write and checkpoint when due; returns the
        records not yet handed to the sink. A failure to score an event ends the run there, as before
        batches: what the last checkpoint covers was written, the rest is scored again on resume."""
        summary.lines_read += 1
        if event is None:
            return batch  # a blank line
        if isinstance(event, EventRejected):
            batch.append(dead_letter(raw, f"{source}:{line_no}", event))
            summary.dead_letters += 1
            summary.dead_letter_reasons[event.field or "(event)"] += 1
            return batch
        if not isinstance(result, PipelineResult):
            raise result if isinstance(result, Exception) else RuntimeError(f"no result for line {line_no}")
        if result.duplicate:  # stored and scored when it first came
            summary.resent += 1
            return batch
        summary.events_by_type[event.event_type] += 1
        summary.scores += len(result.scores)
        batch.append(event)
        batch.extend(result.scores)
        if result.alert is not None or result.later_alerts:
            alerts = result.alerts
            summary.alerts += len(alerts)
            batch.extend(alerts)
        if self.on_result is not None:
            self.on_result(result)
        if summary.lines_read % WRITE_BATCH == 0:
            self.sink.write(batch)
            batch = []
            summary.seconds = time.perf_counter() - started
            if self.on_progress is not None:
                self.on_progress(summary)
        if self.checkpoint_path is not None and summary.lines_read % self.checkpoint_every == 0:
            self._checkpoint(batch, source, line_no)
            batch = []
        return batch

    def _checkpoint(self, batch: list[Any], source: str, lines: int) -> None:
        # Results reach the sink before the checkpoint that claims them.
        self.sink.write(batch)
        self.sink.flush()
        if self.checkpoint_path is not None:
            save_checkpoint(self.checkpoint_path, self.pipeline.state_dict(), {"source": source, "lines": lines})


def _decode(raw: bytes) -> InboundEvent | EventRejected:
    """The event ``raw`` holds, or why it is rejected."""
    try:
        return decode_event(raw)
    except EventRejected as rejected:
        return rejected


def run_file(
    path: Path,
    pipeline: ScoringPipeline,
    sink: Sink,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    on_result: Callable[[PipelineResult], None] | None = None,
    on_progress: Callable[[RunSummary], None] | None = None,
) -> RunSummary:
    """Score a JSON-lines file; with ``resume``, continue after the checkpointed position."""
    runner = InProcessRunner(pipeline, sink, checkpoint_path, on_result=on_result, on_progress=on_progress)
    source = f"file:{path.resolve()}"
    skip = runner.resume_position(source) if resume else 0
    with open(path, "rb") as stream:
        return runner.run(source, iter_lines(stream), skip=skip)
