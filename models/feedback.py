"""Learning from control outcomes: join each outcome to what the engine said about its target.

Labels exist only for controlled items, and they come hours (declarations) or days (an ENS
controlled at arrival) after the engine scored the item. :class:`LabelJoin` keeps, for each
scored subject, the fused model's input features and what each detector asked to remember
(:meth:`feedback_context`), until an outcome names the subject (by ``target_event_id``, or
by type and ``target_reference``) or until the subject expires. It is bounded twice: by
time (``horizon``, and for an ENS ``after_eta`` past its arrival) and by count
(``max_pending``, oldest expiry first).

Everything is deterministic and survives :meth:`LabelJoin.to_dict` /
:meth:`LabelJoin.from_dict`, so a restarted engine joins exactly the outcomes the
uninterrupted one would have joined.
"""

from __future__ import annotations

import base64
import sys
from array import array
from dataclasses import dataclass
from typing import Any, Self

import orjson

from vigie.schemas import ControlOutcome

_DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class LabelledOutcome:
    """A control outcome joined to what one detector remembered about its subject.

    The runtime passes it to detectors that learn from outcomes (their ``units`` accept it);
    ``context`` is what that detector's ``feedback_context`` returned when it scored the subject.
    """

    outcome: ControlOutcome
    context: Any


class PendingSubject:
    """A scored subject waiting for its control outcome.

    What the outcome will need (the fused model's features, the detectors' contexts) is kept
    as one bytes blob: hundreds of thousands of subjects wait at once.
    """

    __slots__ = ("blob", "event_id", "expires", "reference", "selection", "seq", "subject_type")

    def __init__(
        self, event_id: str, subject_type: str, reference: str, expires: float, seq: int, blob: bytes, selection: str
    ) -> None:
        self.event_id = event_id
        self.subject_type = subject_type
        self.reference = reference
        self.expires = expires
        """Epoch seconds of event time after which the subject is forgotten."""
        self.seq = seq
        self.blob = blob
        self.selection = selection
        """How the engine picked it for control: ``exploitation``, ``exploration``, or ``""`` (not alerted)."""

    @staticmethod
    def pack(features: array[float], contexts: dict[str, Any]) -> bytes:
        head = len(features).to_bytes(2, "little")
        return head + features.tobytes() + (orjson.dumps(contexts) if contexts else b"")

    @property
    def features(self) -> array[float]:
        """The learned fusion's learning record (its model input, then the operator key); empty without one."""
        n = int.from_bytes(self.blob[:2], "little")
        out = array("d")
        out.frombytes(self.blob[2 : 2 + 8 * n])
        return out

    @property
    def contexts(self) -> dict[str, Any]:
        """Detector name -> its feedback context."""
        n = int.from_bytes(self.blob[:2], "little")
        rest = self.blob[2 + 8 * n :]
        return orjson.loads(rest) if rest else {}

    def to_list(self) -> list[Any]:
        return [self.event_id, self.subject_type, self.reference, self.expires, self.seq,
                base64.b64encode(self.blob).decode(), self.selection]  # fmt: skip

    @classmethod
    def from_list(cls, data: list[Any]) -> PendingSubject:
        event_id, subject_type, reference, expires, seq, blob, selection = data
        return cls(event_id, sys.intern(subject_type), reference, expires, seq, base64.b64decode(blob),
                   sys.intern(selection))  # fmt: skip


class LabelJoin:
    """Scored subjects awaiting their outcome, bounded in time and count.

    >>> from array import array
    >>> join = LabelJoin(max_pending=2)
    >>> for i in range(3):
    ...     join.remember(f"e{i}", "declaration", f"26FR0000000000000{i}", 1000.0 + i, array("d", [i]), {})
    >>> sorted(join.by_id)  # the earliest to expire made room
    ['e1', 'e2']
    >>> join.evict(1001.5)
    1
    >>> join.find("declaration", "26FR00000000000002", None).event_id
    'e2'
    """

    def __init__(self, horizon_days: float = 3.0, after_eta_days: float = 2.0, max_pending: int = 500_000) -> None:
        self.horizon_s = horizon_days * _DAY_S
        self.after_eta_s = after_eta_days * _DAY_S
        self.max_pending = max_pending
        self.by_id: dict[str, PendingSubject] = {}
        self.by_ref: dict[str, str] = {}
        # The C hot paths live in vigie.operators, whose package imports this module: imported here.
        from vigie.operators._labels import ExpiryHeap, pack_pending

        self._heap = ExpiryHeap()
        """``(expires, seq, event_id)`` of every subject remembered, earliest first (stale ones included)."""
        self._pack = pack_pending  # PendingSubject.pack, in C
        self._seq = 0

    def __len__(self) -> int:
        return len(self.by_id)

    def expiry(self, when: float, eta: float | None) -> float:
        """When a subject scored at ``when`` (arriving at ``eta``, if known) stops waiting for its label."""
        expires = when + self.horizon_s
        if eta is not None:
            expires = max(expires, eta + self.after_eta_s)
        return expires

    def remember(
        self,
        event_id: str,
        subject_type: str,
        reference: str,
        expires: float,
        features: array[float],
        contexts: dict[str, Any],
        selection: str = "",
    ) -> None:
        self._seq = seq = self._seq + 1
        by_id = self.by_id
        replaced = by_id.get(event_id)
        if replaced is not None:
            self._forget(replaced)
        blob = self._pack(features, contexts)
        by_id[event_id] = PendingSubject(event_id, sys.intern(subject_type), reference, expires, seq, blob, selection)
        self.by_ref[reference] = event_id
        self._heap.push(expires, seq, event_id)
        while len(by_id) > self.max_pending:
            self._pop_earliest()

    def find(self, subject_type: str, reference: str, event_id: str | None) -> PendingSubject | None:
        """The pending subject an outcome targets, by event id first, else by type and reference."""
        if event_id is not None:
            entry = self.by_id.get(event_id)
            if entry is not None:
                return entry
        found = self.by_ref.get(reference)
        entry = self.by_id.get(found) if found is not None else None
        return entry if entry is not None and entry.subject_type == subject_type else None

    def take(self, outcome: ControlOutcome) -> PendingSubject | None:
        """Remove and return the subject ``outcome`` controls (a second outcome finds nothing)."""
        entry = self.find(outcome.target_type, outcome.target_reference, outcome.target_event_id)
        if entry is not None:
            self._forget(entry)
        return entry

    def evict(self, now: float) -> int:
        """Forget subjects whose expiry is before ``now``; return how many."""
        if not self._heap.earliest() < now:
            return 0  # nothing due: what most events find
        removed = 0
        by_id = self.by_id
        for seq, event_id in self._heap.pop_before(now):
            entry = by_id.get(event_id)
            if entry is not None and entry.seq == seq:  # else already taken or replaced: a stale heap entry
                self._forget(entry)
                removed += 1
        return removed

    def _pop_earliest(self) -> bool:
        _, seq, event_id = self._heap.pop()
        entry = self.by_id.get(event_id)
        if entry is None or entry.seq != seq:
            return False  # already taken or replaced: a stale heap entry
        self._forget(entry)
        return True

    def _forget(self, entry: PendingSubject) -> None:
        """Remove ``entry``, a subject :attr:`by_id` holds, and its reference if it still points to it."""
        del self.by_id[entry.event_id]
        if self.by_ref.get(entry.reference) == entry.event_id:
            del self.by_ref[entry.reference]

    def to_dict(self) -> dict[str, Any]:
        return {
            "horizon_s": self.horizon_s,
            "after_eta_s": self.after_eta_s,
            "max_pending": self.max_pending,
            "seq": self._seq,
            "pending": [e.to_list() for e in self.by_id.values()],
            "by_ref": dict(self.by_ref),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        join = cls(max_pending=data["max_pending"])
        join.horizon_s, join.after_eta_s, join._seq = data["horizon_s"], data["after_eta_s"], data["seq"]
        for row in data["pending"]:
            entry = PendingSubject.from_list(row)
            join.by_id[entry.event_id] = entry
            join._heap.push(entry.expires, entry.seq, entry.event_id)
        join.by_ref = dict(data["by_ref"])
        return join
