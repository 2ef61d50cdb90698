"""The ENS detector's and registry's C paths give exactly what the Python they replace gives.

The detector's ``process`` loop (its reference: :meth:`Operator.process`), its scores built without
the keyword call to ``risk_score``, its units read from the events' field values, and the
registry's summary dates and links are each compared with their Python reference.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Any

import orjson
import pytest

from vigie.models.feedback import LabelledOutcome
from vigie.operators import Operator, OperatorState
from vigie.operators._ens_link import summary_json
from vigie.operators.ens_link import EnsLinkState, EnsSummary, LinkedDeclaration, vague_description
from vigie.operators.ens_risk import DeclaredItem, EnsItem, EnsPreArrivalDetector, EnsRiskState
from vigie.operators.pipeline import ScoringPipeline
from vigie.schemas import EntrySummaryDeclaration, ImportDeclaration
from vigie.schemas.generator import GeneratorConfig, generate


@cache
def _calls() -> tuple[Any, ...]:
    """What a pipeline hands the ENS detector over a fraud-rich stream: ENS, linked and unlinked
    declarations, labelled outcomes and events it ignores."""
    detector = EnsPreArrivalDetector()
    seen: list[Any] = []
    process = detector.process

    def recording(event: Any, store: Any) -> Any:
        seen.append(event)
        return process(event, store)

    detector.process = recording  # type: ignore[method-assign]
    pipeline = ScoringPipeline([detector])
    for event, _ in generate(GeneratorConfig(seed=5, duration_hours=6, rate_per_hour=1000, fraud_share=0.1)):
        pipeline.process(event)
    assert any(isinstance(e, LabelledOutcome) for e in seen)
    assert any(isinstance(e, LinkedDeclaration) and e.ens is not None for e in seen)
    return tuple(seen)


class _Mapping(MutableMapping[str, OperatorState]):
    """A store that is not a dict (as a runtime's keyed state is), each state kept as bytes."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def __getitem__(self, key: str) -> OperatorState:
        return EnsRiskState.from_bytes(self.data[key])

    def __setitem__(self, key: str, value: OperatorState) -> None:
        self.data[key] = value.to_bytes()

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def _replay(detector: Operator[Any, Any], store: MutableMapping[str, Any], reference: bool) -> list[Any]:
    process = (lambda e, s: Operator.process(detector, e, s)) if reference else detector.process
    return [s.model_dump() for event in _calls() for s in process(event, store)]


@pytest.mark.parametrize("store_type", [dict, _Mapping])
def test_process_is_operator_process(store_type: type) -> None:
    """The detector's C loop scores and stores exactly as the base class's Python loop."""
    fast_store, slow_store = store_type(), store_type()
    fast = _replay(EnsPreArrivalDetector(), fast_store, reference=False)
    slow = _replay(EnsPreArrivalDetector(), slow_store, reference=True)
    assert fast and fast == slow
    assert list(fast_store) == list(slow_store)
    assert all(fast_store[k].to_dict() == slow_store[k].to_dict() for k in fast_store)


class _KeywordScores(EnsPreArrivalDetector):
    """Scores built through ``risk_score`` itself, as the detector built them before its C path."""

    def risk_score(self, **values: Any) -> Any:  # type: ignore[override]
        return super().risk_score(**values)


def test_scores_built_in_c_are_risk_score_s() -> None:
    direct = _replay(EnsPreArrivalDetector(), {}, reference=False)
    assert direct == _replay(_KeywordScores(), {}, reference=False)


def _reference_units(event: Any) -> list[tuple[Any, ...]]:
    """What each unit holds, read with plain attribute access (the fields' reference)."""
    if isinstance(event, EntrySummaryDeclaration):
        return [
            (
                it.hs_code[:2],
                event.event_id,
                event.ens_reference,
                it.item_number,
                event.event_time,
                event.eta,
                event.first_office_of_entry,
                str(event.transport_mode),
                event.consignee.eori,
                event.consignor.country,
                event.consignor.name,
                it.hs_code,
                it.gross_mass_kg,
                it.packages,
                vague_description(it.description),
                event.countries_of_routing[0],
            )
            for it in event.goods_items
        ]
    decl, ens = (event.declaration, event.ens) if isinstance(event, LinkedDeclaration) else (event, None)
    rows = []
    for it in decl.goods_items:
        found = ens.item(it.item_number) if ens is not None else None
        linked = (None, None, None, False, None, None)
        if found is not None:
            linked = (ens.ens_reference, found.hs6, found.gross_mass_kg, found.vague, ens.routing[0],
                      ens.consignor_country)  # fmt: skip
        chapter = found.hs6[:2] if found is not None else it.cn_code[:2]
        taxes = it.duty_eur + it.vat_eur + (it.excise_eur or 0.0)
        rows.append(
            (
                chapter,
                decl.event_id,
                decl.mrn,
                it.item_number,
                decl.event_time,
                decl.customs_office,
                decl.importer_eori,
                it.cn_code,
                it.origin_country,
                it.dispatch_country,
                it.net_mass_kg,
                it.customs_value_eur,
                it.duty_rate_pct,
                taxes,
                *linked,
            )
        )
    return rows


def _held(key: str, unit: Any) -> tuple[Any, ...]:
    if isinstance(unit, EnsItem):
        return (
            key, unit.event_id, unit.ens_reference, unit.item_number, unit.filed, unit.eta, unit.office,
            unit.transport_mode, unit.consignee_eori, unit.consignor_country, unit.consignor_name, unit.hs6,
            unit.gross_mass_kg, unit.packages, unit.vague, unit.route_start,
        )  # fmt: skip
    assert isinstance(unit, DeclaredItem)
    return (
        key, unit.event_id, unit.mrn, unit.item_number, unit.event_time, unit.office, unit.importer_eori,
        unit.cn_code, unit.origin_country, unit.dispatch_country, unit.net_mass_kg, unit.customs_value_eur,
        unit.duty_rate_pct, unit.taxes_eur, unit.ens_reference, unit.ens_hs6, unit.ens_gross_mass_kg,
        unit.ens_vague, unit.route_start, unit.consignor_country,
    )  # fmt: skip


def test_units_hold_what_attribute_access_reads() -> None:
    detector = EnsPreArrivalDetector()
    checked = 0
    for event in _calls():
        if not isinstance(event, EntrySummaryDeclaration | LinkedDeclaration | ImportDeclaration):
            continue
        held = [_held(key, unit) for key, unit in detector.units(event)]
        assert held == _reference_units(event)
        checked += len(held)
    assert checked > 1000


def test_summary_dates_are_isoformat() -> None:
    """The registry's summary writes the filing time as ``isoformat()`` does, odd years and fractions included."""
    ens = next(e for e in _calls() if isinstance(e, EntrySummaryDeclaration))
    zones = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(0))]  # the last: UTC, not the UTC object
    times = [
        datetime(y, 3, 2, 13, 45, 7, us, tzinfo=z) for y in (5, 999, 2026, 9999) for us in (0, 1, 999999) for z in zones
    ]
    for when in times:
        event = ens.model_copy(update={"event_time": when})
        assert summary_json(event, vague_description) == orjson.dumps(EnsSummary.of(event).to_list())
        assert orjson.loads(summary_json(event, vague_description))[2] == when.isoformat()


def test_link_is_the_registry_lookup() -> None:
    registry = EnsLinkState()
    linked = 0
    for event, _ in generate(GeneratorConfig(seed=6, duration_hours=2)):
        if isinstance(event, EntrySummaryDeclaration):
            registry.register(event)
        elif isinstance(event, ImportDeclaration):
            info = registry.lookup(event.ens_reference)
            expected = LinkedDeclaration(event, None) if info is None else LinkedDeclaration(event, info.ens, info.eta)
            assert registry.link(event) == expected
            linked += info is not None
    assert linked > 0


class _CountingLearner(EnsPreArrivalDetector):
    """A subclass with its own ``score_learn_one``: ``process`` must call it, as the base class's loop does."""

    calls = 0

    def score_learn_one(self, unit: Any, state: Any) -> Any:  # type: ignore[override]
        self.calls += 1
        return super().score_learn_one(unit, state)


def test_process_honours_a_subclass_s_own_methods() -> None:
    detector = _CountingLearner()
    scores = _replay(detector, {}, reference=False)
    assert detector.calls > 0 and scores == _replay(EnsPreArrivalDetector(), {}, reference=False)
