"""Event-time deadlines: findings that are due when the stream's time passes a moment, not on an event.

Some findings are about something that did *not* happen: an e-AD (excise movement) with no
report of receipt or export by its deadline. No event of the subject's own reveals it; the
stream's time does. A detector that has such rules exposes

- ``deadlines(key, unit, state)``: epoch seconds at which the state under ``key`` must be
  checked again, after ``unit`` was learned (for keyed runtimes, e.g. Flink's timers);
- ``deadlines_of(event)``: the same for a whole event, as ``(state key, epoch seconds)``
  pairs (for runtimes that see whole events: the in-process pipeline, hence the runner and
  the Faust workers);
- ``expire(key, state, now)``: the scores of what fell due on ``key`` by ``now``, each once.

A deadline depends on the event alone, never on the state, so a runtime may ask before or
after the event's units were learned and get the same answer.

:class:`DeadlineTimers` keeps the pending wake-ups of a pipeline and says which are due. The
stream's *watermark* is its latest event time less ``lag_s`` (how late, in event time, a
record may come and still count before a deadline) less 1 ms, as Flink's
bounded-out-of-orderness watermark; a wake-up at ``t`` ms is due once the watermark reaches
``t``. Every runtime uses the same rule, so a deadline finding is the same whichever runtime
raised it. A runtime that reads several partitions at their own paces moves the timers with
a :class:`SourceClock` (the slowest partition's time, within a window of the latest) instead
of each event's own time.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from vigie.schemas import RiskScore

__all__ = ["DeadlineRule", "DeadlineTimers", "SourceClock", "WakeUp", "deadline_rule", "wake_up_ms"]

WakeUp = tuple[int, str, str]
"""``(epoch milliseconds, detector name, state key)``: when to check which key of which detector."""

_NEVER = 2**63


class DeadlineRule(Protocol):
    """What a runtime needs from a detector to wake it up at a deadline.

    A rule may also name ``deadline_event_types``: the event classes that can set a deadline
    (default: any); the timers ask the rule about those events only.
    """

    def deadlines(self, key: str, unit: Any, state: Any) -> Iterable[float]:
        """Epoch seconds at which ``key`` must be checked again, after ``unit`` was learned."""
        ...

    def deadlines_of(self, event: Any) -> Iterable[tuple[str, float]]:
        """``(state key, epoch seconds)`` of every deadline ``event`` sets."""
        ...

    def expire(self, key: str, state: Any, now: datetime) -> list[RiskScore]:
        """Scores of what fell due by ``now`` on ``key``; updates ``state`` so each is reported once."""
        ...


def deadline_rule(detector: Any) -> DeadlineRule | None:
    """The detector itself when it has deadline rules (``deadlines``, ``deadlines_of``, ``expire``), else None."""
    if all(callable(getattr(detector, name, None)) for name in ("deadlines", "deadlines_of", "expire")):
        return detector  # type: ignore[no-any-return]
    return None


def wake_up_ms(deadline_s: float) -> int:
    """The millisecond to check a deadline at: the detectors' tests are "strictly after" it.

    >>> wake_up_ms(1_700_000_000.0)
    1700000000001
    """
    return int(deadline_s * 1000) + 1


class DeadlineTimers:
    """Pending wake-ups of a pipeline's deadline rules, and the stream time that makes them due.

    ``rules``: ``(detector name, rule)`` pairs. :meth:`advance` takes each event's wake-ups
    (:meth:`wake_ups`) and event time, and returns the wake-ups now due, in time order; the
    caller asks the rule to :meth:`~DeadlineRule.expire` each. A wake-up is kept once however
    many events ask for it. Everything is in :meth:`to_dict`.

    >>> timers = DeadlineTimers([], lag_s=600.0)
    >>> timers.advance([(3_600_000, "excise", "ledger:A")], 0)  # stream time 0: nothing due
    []
    >>> timers.pending, timers.watermark_ms
    (1, -600001)
    >>> timers.advance([], 4_200_000)  # 1 h 10 min: the watermark (less 10 min) is still before it
    []
    >>> timers.advance([], 4_200_001)
    [(3600000, 'excise', 'ledger:A')]
    >>> timers.pending
    0
    """

    def __init__(self, rules: Sequence[tuple[str, DeadlineRule]], lag_s: float) -> None:
        self.rules = list(rules)
        self.typed = [(name, rule, getattr(rule, "deadline_event_types", (object,))) for name, rule in self.rules]
        """``(detector name, rule, event types that can set a deadline)``, for the compiled batch planner."""
        self.lag_ms = int(lag_s * 1000)
        self.stream_time_ms = -(2**63)
        """Latest event time seen, epoch milliseconds."""
        self.due: list[WakeUp] = []
        """Heap of pending wake-ups."""
        self._queued: set[WakeUp] = set(self.due)

    @property
    def pending(self) -> int:
        """Wake-ups not yet due."""
        return len(self.due)

    @property
    def watermark_ms(self) -> int:
        """Latest event time - ``lag_s`` - 1 ms: wake-ups at or before it are due."""
        return self.stream_time_ms - self.lag_ms - 1

    @property
    def first_due_ms(self) -> int:
        """The earliest pending wake-up (epoch ms; 2**63 when none is pending)."""
        return self.due[0][0] if self.due else _NEVER

    def wake_ups(self, event: Any) -> list[WakeUp]:
        """The wake-ups ``event`` sets, from every rule."""
        found: list[WakeUp] = []
        for name, rule, types in self.typed:
            if isinstance(event, types):  # the rule is asked only about the events that can set a deadline
                found += [(wake_up_ms(at), name, key) for key, at in rule.deadlines_of(event)]
        return found

    def advance(self, wake_ups: Iterable[WakeUp], event_ms: int) -> list[WakeUp]:
        """Queue an event's ``wake_ups``, move the stream time to its ``event_ms``; the wake-ups due."""
        for entry in wake_ups:
            if entry not in self._queued:
                self._queued.add(entry)
                heapq.heappush(self.due, entry)
        if event_ms > self.stream_time_ms:
            self.stream_time_ms = event_ms
        if not self.due:
            return []
        watermark = self.watermark_ms
        fired: list[WakeUp] = []
        while self.due and self.due[0][0] <= watermark:
            entry = heapq.heappop(self.due)
            self._queued.discard(entry)
            fired.append(entry)
        return fired

    def segment_end(self, wake_ups: Sequence[list[WakeUp]], times_ms: Sequence[int], start: int) -> int:
        """Index after the first event from ``start`` after which a wake-up may be due (else the end).

        A batch scored detector by detector must stop there: what the due wake-ups find
        depends on the state at that event, not at the end of the batch. ``wake_ups`` and
        ``times_ms``: each event's, as :meth:`advance` takes them.

        >>> timers = DeadlineTimers([], lag_s=0.0)
        >>> timers.segment_end([[], [(5, "excise", "k")], [], []], [1, 2, 3, 6], 0)
        4
        >>> timers.segment_end([[], [(2, "excise", "k")], [], []], [1, 2, 3, 6], 0)
        3
        """
        first_due = self.first_due_ms
        stream = self.stream_time_ms
        for i in range(start, len(times_ms)):
            for entry in wake_ups[i]:
                if entry[0] < first_due:
                    first_due = entry[0]
            if times_ms[i] > stream:
                stream = times_ms[i]
            if stream - self.lag_ms - 1 >= first_due:
                return i + 1
        return len(times_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"due": [list(entry) for entry in self.due], "stream_time_ms": self.stream_time_ms}

    def load_dict(self, data: dict[str, Any]) -> None:
        """Restore a :meth:`to_dict` (the rules and the lag are the constructor's)."""
        self.due = [(int(t), str(name), str(key)) for t, name, key in data["due"]]
        heapq.heapify(self.due)
        self._queued = set(self.due)
        self.stream_time_ms = int(data["stream_time_ms"])


class SourceClock:
    """The deadline clock of a runtime that reads several sources (Kafka partitions) at their own paces.

    One stream in order (a file) moves the clock with each event's own time. A worker that reads
    several partitions may be far ahead in one and behind in another (a backlog read at uneven
    paces): the latest event time would pass a deadline while a partition still holds a receipt
    dated before it. :meth:`tick` gives instead the earliest of the sources' latest event times,
    as Flink's watermarks take the minimum over the source partitions, but never more than
    ``window_s`` behind the latest time of all: a source that has gone quiet (a topic with no
    traffic, the end of a replay) holds deadlines back by that much at most. It counts event
    times only, so a replay of the same input gives the same clock.

    >>> clock = SourceClock(window_s=3.0)
    >>> clock.tick("excise:0", 1_000), clock.tick("excise:1", 2_500)  # partition 1 is ahead
    (1000, 1000)
    >>> clock.tick("excise:0", 2_000), clock.tick("excise:1", 9_000)  # partition 0 falls quiet
    (2000, 6000)
    """

    def __init__(self, window_s: float = 86_400.0) -> None:
        self.window_ms = int(window_s * 1000)
        self.latest: dict[str, int] = {}
        """Source -> its latest event time (epoch ms)."""
        self.newest = -(2**63)
        """The latest event time of all sources."""

    def tick(self, source: str, event_ms: int) -> int:
        """Account for an event of ``source`` at ``event_ms``; the clock (epoch ms) it moves the timers to."""
        if event_ms > self.latest.get(source, -(2**63)):
            self.latest[source] = event_ms
        if event_ms > self.newest:
            self.newest = event_ms
        return max(min(self.latest.values()), self.newest - self.window_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"window_ms": self.window_ms, "latest": self.latest, "newest": self.newest}

    def load_dict(self, data: dict[str, Any]) -> None:
        self.window_ms = int(data["window_ms"])
        self.latest = {str(s): int(t) for s, t in data["latest"].items()}
        self.newest = int(data["newest"])
