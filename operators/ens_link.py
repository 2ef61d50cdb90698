"""Links a declaration to the entry summary declaration (ENS) filed for the same goods.

The ENS carries the expected arrival time; an alert on the later declaration uses it to
say how long officers have before the goods arrive. The registry also keeps a compact
:class:`EnsSummary` of each ENS (routing, consignor, per item HS6, gross mass, packages,
whether the description is vague) so that a detector can compare what the carrier filed
with what the importer declares (:class:`LinkedDeclaration`).

Why the runtime joins and not the detector: a detector's state is partitioned by one key
per unit; the ENS and its declaration share the ENS reference, but what a detector learns
about similar consignments lives under other keys (the HS chapter). The runtime already
keeps this registry to compute lead times, so it hands the ENS to the detectors that ask.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Self

from vigie.schemas import EntrySummaryDeclaration, ImportDeclaration

from ._ens_link import frozen, frozen_rows, summary_from_json, summary_json
from .base import OperatorState

_VAGUE_TEXT = """PART PARTS SPARE SPARES ACCESSORY ACCESSORIES GIFT GIFTS FAK FREIGHT ALL KIND KINDS SAMPLE
    SAMPLES GENERAL CARGO CONSOLIDATED CONSOLIDATION PERSONAL EFFECTS EFFECT GOODS GOOD MERCHANDISE MERCHANDISES
    ITEM ITEMS VARIOUS MISC MISCELLANEOUS STC SAID TO CONTAIN OF AND THE FOR NEW USED PRODUCT PRODUCTS STUFF
    MATERIAL MATERIALS COMMODITY COMMODITIES ARTICLE ARTICLES PACKAGE PACKAGES PARCEL PARCELS SUPPLIES EQUIPMENT
    AS PER INVOICE MIXED ASSORTED OTHER OTHERS SET SETS PKG PKGS PCS PC CTN CTNS CARTON CARTONS PALLET PALLETS
    UNIT UNITS BOX BOXES"""
VAGUE_WORDS: frozenset[str] = frozenset(_VAGUE_TEXT.split())
"""Words that say nothing about what the goods are. A description made only of these (after
dropping numbers and punctuation) is vague: "PARTS", "GIFTS", "FAK" (freight all kinds),
"SAMPLES", "GENERAL CARGO", "SAID TO CONTAIN GOODS". "SHOE PARTS" is not: "SHOE" says what."""

_WORD = re.compile(r"[A-Z]+")


@lru_cache(maxsize=8192)  # descriptions repeat a lot; the cache keeps the check off the hot path
def vague_description(text: str) -> bool:
    """True when the goods description says nothing about what the goods are.

    >>> [vague_description(t) for t in ("FAK", "General cargo", "2 PKGS SPARE PARTS", "SHOE PARTS", "LAPTOPS")]
    [True, True, True, False, False]
    """
    words = _WORD.findall(text.upper())
    return all(w in VAGUE_WORDS for w in words)


@dataclass(frozen=True, slots=True)
class EnsItemSummary:
    """One ENS goods item, as far as risk analysis needs it."""

    item_number: int
    hs6: str
    gross_mass_kg: float
    packages: int
    vague: bool
    """The filed description is too vague to risk-assess (see :func:`vague_description`)."""


@dataclass(frozen=True, slots=True)
class EnsSummary:
    """What an ENS said, kept until the declaration of the same goods comes."""

    ens_reference: str
    event_id: str
    filed: datetime
    """The ENS's ``event_time``: when the carrier filed it."""
    consignor_country: str
    consignor_name: str
    consignee_eori: str | None
    routing: tuple[str, ...]
    """``countries_of_routing`` in the order filed; ``routing[0]`` is where the goods started."""
    items: tuple[EnsItemSummary, ...]

    def item(self, number: int) -> EnsItemSummary | None:
        """The ENS item with ``item_number == number`` (numbering follows the declaration's)."""
        for it in self.items:
            if it.item_number == number:
                return it
        return None

    def to_list(self) -> list[Any]:
        return [
            self.ens_reference,
            self.event_id,
            self.filed.isoformat(),
            self.consignor_country,
            self.consignor_name,
            self.consignee_eori,
            list(self.routing),
            [[i.item_number, i.hs6, i.gross_mass_kg, i.packages, i.vague] for i in self.items],
        ]

    @classmethod
    def from_list(cls, data: list[Any]) -> EnsSummary:
        ref, event_id, filed, country, name, consignee, routing, items = data
        # frozen(cls, ...) is cls(...) without a frozen dataclass's per-field Python calls: this
        # runs for every linked declaration.
        filed_at, item_summaries = datetime.fromisoformat(filed), frozen_rows(EnsItemSummary, items)
        return frozen(cls, ref, event_id, filed_at, country, name, consignee, tuple(routing), item_summaries)

    @classmethod
    def of(cls, ens: EntrySummaryDeclaration) -> EnsSummary:
        return cls(
            ens_reference=ens.ens_reference,
            event_id=ens.event_id,
            filed=ens.event_time,
            consignor_country=ens.consignor.country,
            consignor_name=ens.consignor.name,
            consignee_eori=ens.consignee.eori,
            routing=tuple(ens.countries_of_routing),
            items=tuple(
                EnsItemSummary(i.item_number, i.hs_code, i.gross_mass_kg, i.packages, vague_description(i.description))
                for i in ens.goods_items
            ),
        )


@dataclass(frozen=True, slots=True)
class ArrivalInfo:
    """What the ENS told us about an arrival.

    ``summary``: the :class:`EnsSummary` as compact JSON bytes (the registry holds every ENS
    until days after its arrival: bytes take a fifth of the objects' memory); ``ens`` decodes it.
    """

    eta: datetime
    transport_mode: str
    first_office_of_entry: str
    summary: bytes | None = None

    @property
    def ens(self) -> EnsSummary | None:
        # EnsSummary.from_list(orjson.loads(self.summary)), read in C: every linked declaration decodes one
        return summary_from_json(self.summary, EnsSummary, EnsItemSummary) if self.summary is not None else None


@dataclass(frozen=True, slots=True)
class LinkedDeclaration:
    """A declaration and the ENS filed for the same goods (``None`` when not linked or not seen).

    Built by the runtime from its ENS registry (:meth:`EnsLinkState.link`) for detectors
    that compare the two; other detectors get the plain declaration.
    """

    declaration: ImportDeclaration
    ens: EnsSummary | None
    eta: datetime | None = None


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
        if info.eta < self._oldest_eta:  # min(self._oldest_eta, info.eta), without the builtin's call
            self._oldest_eta = info.eta

    def lookup(self, reference: str | None) -> ArrivalInfo | None:
        return self.arrivals.get(reference) if reference else None

    def link(self, declaration: ImportDeclaration) -> LinkedDeclaration:
        """The declaration with the summary of its ENS, when the registry holds it."""
        # self.lookup(reference) and info.ens written out: this runs for every declaration.
        reference = declaration.ens_reference
        info = self.arrivals.get(reference) if reference else None
        if info is None:  # frozen(LinkedDeclaration, ...): LinkedDeclaration(...), faster (see EnsSummary.from_list)
            return frozen(LinkedDeclaration, declaration, None, None)
        summary = info.summary
        ens = summary_from_json(summary, EnsSummary, EnsItemSummary) if summary is not None else None
        return frozen(LinkedDeclaration, declaration, ens, info.eta)

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
        """Remember the arrival of ``ens`` with its :class:`EnsSummary` (as compact JSON).

        >>> from vigie.schemas.generator import GeneratorConfig, generate
        >>> stream = generate(GeneratorConfig(duration_hours=1))
        >>> ens = next(e for e, _ in stream if isinstance(e, EntrySummaryDeclaration))
        >>> state = EnsLinkState()
        >>> state.register(ens)
        >>> state.lookup(ens.ens_reference).ens == EnsSummary.of(ens)
        True
        """
        summary = summary_json(ens, vague_description)  # EnsSummary.of(ens).to_list() as JSON, from the event
        mode, office = sys.intern(str(ens.transport_mode)), sys.intern(ens.first_office_of_entry)
        self.remember(ens.ens_reference, frozen(ArrivalInfo, ens.eta, mode, office, summary))

    def to_dict(self) -> dict[str, Any]:
        arrivals: dict[str, list[Any]] = {}
        for r, i in self.arrivals.items():
            # The datetime itself: orjson writes it as isoformat() would, in C (a third of a checkpoint's time).
            row: list[Any] = [i.eta, i.transport_mode, i.first_office_of_entry]
            if i.summary is not None:
                row.append(i.summary.decode())
            arrivals[r] = row
        return {"retention_s": self.retention.total_seconds(), "arrivals": arrivals}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        state = cls(timedelta(seconds=data["retention_s"]))
        for ref, row in data["arrivals"].items():
            eta, mode, office = row[:3]
            summary = row[3].encode() if len(row) > 3 else None
            when = eta if isinstance(eta, datetime) else datetime.fromisoformat(eta)  # in memory, or read back
            state.remember(ref, ArrivalInfo(when, sys.intern(mode), sys.intern(office), summary))
        return state
