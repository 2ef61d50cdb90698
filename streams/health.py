"""Pipeline health: each runtime's throughput, rejections and sink lag, sampled into ``vigie.pipeline_metrics``.

Supervisors' pipeline-health panels ("Reported throughput", "Reported lag") read these samples.
Every runtime that writes to a ClickHouse sink reports through a :class:`HealthReporter`: the
in-process runner (component ``runner``), each Faust worker (``faust``, one instance per worker)
and the Flink job's sink loader (``flink``). A sample covers the counts since the previous one
(:class:`~vigie.sinks.views.PipelineMetricsRecorder`); samples are taken at most every
``every_s`` seconds of wall time, and once more when the runtime stops, so the samples of a run
add up to its totals.

A failed sample is logged and skipped: health reporting never stops the scoring.

>>> written = []
>>> class Recorder:
...     def __call__(self, counts): written.append(counts.events)
>>> ticks = iter([0.0, 1.0, 12.0])
>>> reporter = HealthReporter(Recorder(), every_s=10.0, clock=lambda: next(ticks))
>>> reporter.maybe(Counts(events=5)), reporter.maybe(Counts(events=9)), written
(False, True, [9])
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_HEALTH_INTERVAL_S", "Counts", "HealthReporter", "health_reporter", "instance_name"]

log = logging.getLogger(__name__)

DEFAULT_HEALTH_INTERVAL_S = 10.0
"""Seconds between two samples of one runtime: fine enough for Grafana's 1-minute buckets, a
handful of rows a minute per worker."""


@dataclass(slots=True)
class Counts:
    """A runtime's cumulative counts since it started (what :class:`PipelineMetricsRecorder` reads)."""

    events: int = 0
    """Inbound events processed (scored)."""
    scores: int = 0
    alerts: int = 0
    dead_letters: int = 0
    """Inputs rejected."""


def instance_name() -> str:
    """``host:pid``: tells apart the workers of one deployment on the boards."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


class HealthReporter:
    """Hands cumulative :class:`Counts` to ``recorder`` at most every ``every_s`` seconds.

    ``recorder`` is a :class:`~vigie.sinks.views.PipelineMetricsRecorder` (or any callable
    taking the counts). :meth:`maybe` records when the interval has passed; :meth:`final`
    records whatever is left, at stop.
    """

    def __init__(
        self, recorder: Callable[[Any], None], every_s: float = DEFAULT_HEALTH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.recorder = recorder
        self.every_s = every_s
        self._clock = clock
        self._last = clock()
        self._recorded: Counts | None = None
        self.samples = 0
        self.failures = 0

    def maybe(self, counts: Counts) -> bool:
        """Record ``counts`` if ``every_s`` passed since the last sample; True when recorded."""
        now = self._clock()
        if now - self._last < self.every_s:
            return False
        self._last = now
        return self._record(counts)

    def final(self, counts: Counts) -> bool:
        """Record what changed since the last sample (nothing when nothing did); True when recorded."""
        if _snapshot(counts) == self._recorded:
            return False
        return self._record(counts)

    def _record(self, counts: Counts) -> bool:
        snapshot = _snapshot(counts)
        try:
            self.recorder(snapshot)
        except Exception:  # the boards miss a sample; the scoring goes on
            self.failures += 1
            log.warning("could not record a pipeline-health sample", exc_info=True)
            return False
        self._recorded = snapshot
        self.samples += 1
        return True


def _snapshot(counts: Any) -> Counts:
    """The counts of ``counts`` (a :class:`Counts`, a runner's ``RunSummary``...) as they are now."""
    return Counts(int(counts.events), int(counts.scores), int(counts.alerts), int(counts.dead_letters))


def health_reporter(sink: Any, component: str, every_s: float = DEFAULT_HEALTH_INTERVAL_S) -> HealthReporter | None:
    """A reporter writing ``component``'s samples into ``sink``'s ``pipeline_metrics`` table; None
    when the sink has no database to write them to (no ``query``, ``profile`` and ``database``)."""
    if sink is None or not all(hasattr(sink, name) for name in ("query", "profile", "database")):
        return None
    from vigie.sinks.views import PipelineMetricsRecorder

    return HealthReporter(PipelineMetricsRecorder(sink, component, instance_name()), every_s)
