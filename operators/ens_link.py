"""Links a declaration to the entry summary declaration (ENS) filed for the same goods.

The ENS carries the expected arrival time; an alert on the later declaration uses it to
say how long officers have before the goods arrive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from vigie.schemas import EntrySummaryDeclaration

from .base import OperatorState


@dataclass(frozen=True, slots=True)
class ArrivalInfo:
    """What the ENS told us about an arrival."""

    eta: datetime
    transport_mode: str
    first_office_of_entry: str


class EnsLinkState(OperatorState):
    """ENS references seen, with their arrival info; entries are forgotten
    ``retention`` after their ETA so the registry stays bounded.

    >>> from datetime import UTC, datetime
    >>> state = EnsLinkState()
    >>> state.remember("26FR00000000000001", ArrivalInfo(datetime(2026, 3, 2, tzinfo=UTC), "sea", "FR002300"))
    >>> state.lookup("26FR00000000000001").transport_mode
    'sea'
    """

    def __init__(self, retention: timedelta = timedelta(days=14)) -> None:
        self.retention = retention
        self.arrivals: dict[str, ArrivalInfo] = {}
        self._oldest_eta = datetime.max.replace(tzinfo=UTC)

    def remember(self, reference: str, info: ArrivalInfo) -> None:
        self.arrivals[reference] = info
        self._oldest_eta = min(self._oldest_eta, info.eta)

    def lookup(self, reference: str | None) -> ArrivalInfo | None:
        return self.arrivals.get(reference) if reference else None

    def evict_before(self, now: datetime) -> int:
        """Forget arrivals whose ETA is older than ``now - retention``; return how many."""
        horizon = now - self.retention
        if self._oldest_eta >= horizon:
            return 0
        stale = [ref for ref, info in self.arrivals.items() if info.eta < horizon]
        for ref in stale:
            del self.arrivals[ref]
        self._oldest_eta = min((i.eta for i in self.arrivals.values()), default=datetime.max.replace(tzinfo=UTC))
        return len(stale)

    def register(self, ens: EntrySummaryDeclaration) -> None:
        self.remember(ens.ens_reference, ArrivalInfo(ens.eta, str(ens.transport_mode), ens.first_office_of_entry))

    def to_dict(self) -> dict[str, Any]:
        return {
            "retention_s": self.retention.total_seconds(),
            "arrivals": {
                r: [i.eta.isoformat(), i.transport_mode, i.first_office_of_entry] for r, i in self.arrivals.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        state = cls(timedelta(seconds=data["retention_s"]))
        for ref, (eta, mode, office) in data["arrivals"].items():
            state.remember(ref, ArrivalInfo(datetime.fromisoformat(eta), mode, office))
        return state
