"""Events already processed, by id: a re-sent event is not learned twice.

Integrators re-send: a producer retried after a timeout, a file published again, a gateway
replaying its queue. Every sink is idempotent on ``event_id`` (a re-sent event's rows are stored
once), but the detectors learn from what they read: a declaration counted twice moves its
commodity's reference price, its importer's volume and the office's alert budget. The
:class:`~vigie.operators.ScoringPipeline` therefore remembers the ids it processed over a
window of event time (:data:`DEFAULT_DUPLICATE_WINDOW`, two days: re-sends come within minutes
or hours) and skips an event whose id it holds: no scores, no learning, no alert
(``PipelineResult.duplicate``).

The ids live in the pipeline's checkpoint, so a restarted runtime still recognises what it
processed before its checkpoint, and a replay after the checkpoint (what a runtime reads again
after a crash) is processed as the first time, exactly as before.

>>> seen = RecentEventIds()
>>> seen.first_time("decl-1", 100.0), seen.first_time("decl-1", 100.0), seen.first_time("decl-2", 200.0)
(True, False, True)
>>> seen.evict_before(150.0)
1
>>> seen.first_time("decl-1", 100.0), len(seen)
(True, 2)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

__all__ = ["DEFAULT_DUPLICATE_WINDOW", "RecentEventIds"]

DEFAULT_DUPLICATE_WINDOW = timedelta(days=2)
"""How long (event time, behind the stream's latest) a processed event's id is remembered."""


class RecentEventIds:
    """Event id -> event time (epoch seconds) of the events processed, in the order they came.

    Bounded by :meth:`evict_before`: the pipeline forgets ids older than its window at its
    periodic sweeps. Ids are kept in arrival order and forgotten from the oldest arrival on, up
    to the first one still inside the window (one that came out of order waits for those
    before it: a little longer, never less).
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def first_time(self, event_id: str, when_s: float) -> bool:
        """True (and remember ``event_id``) unless it was processed already."""
        ids = self._ids
        if event_id in ids:
            return False
        ids[event_id] = when_s
        return True

    def evict_before(self, horizon_s: float) -> int:
        """Forget the ids of events older than ``horizon_s`` (in arrival order, see the class); returns how many."""
        ids = self._ids
        stale = []
        for event_id, when in ids.items():
            if when >= horizon_s:
                break
            stale.append(event_id)
        for event_id in stale:
            del ids[event_id]
        return len(stale)

    def to_dict(self) -> dict[str, Any]:
        return {"ids": list(self._ids), "times": list(self._ids.values())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecentEventIds:
        seen = cls()
        seen._ids = dict(zip(data["ids"], data["times"], strict=True))
        return seen
