"""The contract every detector implements, whatever runtime drives it.

A detector is shaped like a River estimator, with one addition that streaming runtimes
need: all the state a piece of work touches lives under one *key*, in an explicit state
object. A runtime partitions by that key (a Faust table, Flink keyed state, or a plain
dict in the in-process runner) and hands the state back to the operator:

1. ``units(event)`` splits an event into ``(key, unit)`` pairs (e.g. one per goods item);
2. ``score_one(unit, state)`` reads the state and returns a :class:`RiskScore` (or ``None``);
3. ``learn_one(unit, state)`` updates the state *after* scoring (prequential order).

States serialise to plain JSON-able dicts, so any runtime can checkpoint them and a
restored state gives exactly the scores the original would have given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, MutableMapping
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Self, TypeVar

import orjson

from vigie.schemas import RiskScore

# epoch_seconds(when) is when.timestamp(), from the datetime's fields in C: every unit of every event reads it.
from ._score import build_score, epoch_seconds, score_id

__all__ = ["Operator", "OperatorState", "epoch_seconds", "score_id"]


class OperatorState(ABC):
    """Per-key state of an operator. Subclasses say what each field means."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A snapshot from which :meth:`from_dict` rebuilds an equal state: JSON types, numpy
        arrays and aware datetimes, all of which orjson writes (the datetimes as ISO 8601 text,
        which :meth:`from_dict` must accept as well as the datetime)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Rebuild a state saved with :meth:`to_dict`."""

    def last_activity(self) -> float | None:
        """Event time (epoch s) this key last learned something; None: the key never idles out
        (its key space is bounded by design, e.g. CN chapters)."""
        return None

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        return cls.from_dict(orjson.loads(data))


StateT = TypeVar("StateT", bound=OperatorState)
UnitT = TypeVar("UnitT")


class Operator(ABC, Generic[UnitT, StateT]):
    """A detector. Never imports a runtime; never keeps per-key state on ``self``.

    ``self`` holds configuration only (thresholds, rates), so one instance serves every
    key and every runtime computes the same scores from the same state.
    """

    name: ClassVar[str]
    state_type: ClassVar[type[OperatorState]]
    idle_retention: timedelta | None = None
    """Keys idle (no event) for longer are forgotten by :meth:`evict_idle`; None: never."""

    @abstractmethod
    def units(self, event: Any) -> Iterable[tuple[str, UnitT]]:
        """The ``(state key, unit of work)`` pairs this event gives; empty if it is not for us."""

    def new_state(self) -> StateT:
        return self.state_type()  # type: ignore[return-value]

    @abstractmethod
    def score_one(self, unit: UnitT, state: StateT) -> RiskScore | None:
        """Score one unit against the state as it was before this unit. Must not mutate."""

    @abstractmethod
    def learn_one(self, unit: UnitT, state: StateT) -> None:
        """Update the state with one unit."""

    def score_learn_one(self, unit: UnitT, state: StateT) -> RiskScore | None:
        """:meth:`score_one` then :meth:`learn_one`; returns the score.

        Exactly what the two calls give (a detector overrides it only to share the work both do,
        such as feature extraction or state look-ups); :meth:`process` calls it for every unit.
        """
        score = self.score_one(unit, state)
        self.learn_one(unit, state)
        return score

    def risk_score(
        self,
        *,
        subject_event_id: str,
        subject_type: str,
        subject_reference: str,
        item_number: int | None,
        event_time: datetime,
        office: str,
        operator_eori: str | None,
        cn_code: str | None,
        origin_country: str | None,
        score: float,
        eur_at_stake: float,
        reason: str,
        reason_fields: dict[str, float | str | None],
        id_key: str | None = None,
    ) -> RiskScore:
        """One score of this detector, with its deterministic id and EUR rounded to the cent.

        Built without validation (it runs for every item); the shared contract test validates
        every detector's scores. ``id_key`` names the subject in the id when it differs from
        ``subject_event_id``.
        """
        return build_score(
            self.name, score_id(self.name, id_key or subject_event_id, item_number), subject_event_id, subject_type,
            subject_reference, item_number, event_time, office, operator_eori, cn_code, origin_country, score,
            round(eur_at_stake, 2), reason, reason_fields,
        )  # fmt: skip

    def evict_idle(self, store: MutableMapping[str, StateT], now: datetime) -> int:
        """Forget the keys of ``store`` idle for longer than :attr:`idle_retention` at event time
        ``now``; returns how many. A forgotten key starts again from a new state, like a key never seen."""
        if self.idle_retention is None:
            return 0
        horizon = now.timestamp() - self.idle_retention.total_seconds()
        idle = [key for key, state in store.items() if (last := state.last_activity()) is not None and last < horizon]
        for key in idle:
            del store[key]
        return len(idle)

    def process(self, event: Any, store: MutableMapping[str, StateT]) -> list[RiskScore]:
        """Score then learn every unit of ``event`` against a keyed ``store``.

        The state is written back with ``store[key] = state`` even when it was mutated
        in place, because changelog-backed tables only persist on assignment.
        """
        scores: list[RiskScore] = []
        score_learn_one = self.score_learn_one
        for key, unit in self.units(event):
            state = store.get(key)
            if state is None:
                state = self.new_state()
            score = score_learn_one(unit, state)
            if score is not None:
                scores.append(score)
            store[key] = state
        return scores
