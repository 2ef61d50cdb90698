"""Operator behaviour detector: the operator contract with novelty on, the Page-Hinkley test against River's,
change detection with its onset and size, new importers, bounded state, a generated stream."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import pytest
from river.drift import PageHinkley as RiverPageHinkley

import tests.test_operator_contract as contract
from tests.factories import T0, declaration_dict
from vigie.operators.behaviour import (
    BehaviourState,
    OperatorBehaviourDetector,
    PageHinkley,
    PageHinkleyParams,
)
from vigie.schemas import ImportDeclaration, RiskScore
from vigie.schemas.generator import GeneratorConfig, generate

IMPORTER = "FR98765432100010"


def test_score_one_leaves_the_state_unchanged_with_novelty_on() -> None:
    # The contract's detector has no history start, so it never scores an importer as new.
    contract.test_score_one_does_not_mutate(OperatorBehaviourDetector(history_start=contract._events()[0].event_time))


@pytest.mark.parametrize("mode", ["up", "down"])
def test_page_hinkley_follows_rivers_update_rule(mode: str) -> None:
    rng = random.Random(3)
    shift = 1.5 if mode == "up" else -1.5
    data = [rng.gauss(0, 1) for _ in range(300)] + [rng.gauss(shift, 1) for _ in range(100)]
    data += [rng.gauss(0, 1) for _ in range(300)]
    river = RiverPageHinkley(min_instances=30, delta=0.005, threshold=20.0, alpha=1 - 1e-4, mode=mode)
    params = PageHinkleyParams(
        1 if mode == "up" else -1, delta=0.005, threshold=20.0, min_instances=30, prior_weight=0.0
    )
    ours = PageHinkley()
    river_alarms, our_alarms = [], []
    for i, x in enumerate(data):
        river.update(x)
        if river.drift_detected:
            river_alarms.append(i)
        if ours.update(x, float(i), params):
            our_alarms.append(i)
            ours.reset()  # River resets at its next update: same thing
    assert river_alarms and river_alarms == our_alarms
    assert any(300 <= i < 330 for i in river_alarms)  # the shift at 300 is caught within 30 observations


def test_page_hinkley_prior_sees_a_change_at_the_start() -> None:
    # River's mean starts at the first value, so a stream that is shifted from the start never alarms;
    # with a prior at the in-control level it does, after a few observations.
    params = PageHinkleyParams(1, delta=0.2, threshold=2.0)
    river_like = PageHinkleyParams(1, delta=0.2, threshold=2.0, prior_weight=0.0)
    ours, plain = PageHinkley(), PageHinkley()
    assert [ours.update(1.0, float(t), params) for t in range(5)][-1]
    assert not any(plain.update(1.0, float(t), river_like) for t in range(5))


def _declaration(
    i: int,
    when: datetime,
    *,
    importer: str = IMPORTER,
    origin: str = "CN",
    cn: str = "61091000",
    value_per_kg: float = 14.0,
    mass: float = 1000.0,
    procedure: str = "4000",
) -> ImportDeclaration:
    data = declaration_dict(
        event_id=f"d{i}",
        mrn=f"26FR{i:014d}",
        event_time=when.isoformat(),
        importer_eori=importer,
        procedure_code=procedure,
    )
    item = data["goods_items"][0]
    item.pop("supplementary_units")
    item.pop("supplementary_unit_code")
    value = round(value_per_kg * mass, 2)
    item.update(
        cn_code=cn,
        origin_country=origin,
        dispatch_country=origin,
        net_mass_kg=mass,
        customs_value_eur=value,
        invoice_amount=value,
        duty_eur=round(value * 0.12, 2),
        vat_eur=round(value * 0.2, 2),
    )
    return ImportDeclaration.model_validate(data)


def _steady(n: int, rng: random.Random, start: datetime = T0, every_h: float = 6.0) -> list[ImportDeclaration]:
    """A habitual importer: Chinese (80 %) or Bangladeshi T-shirts at about 14 EUR/kg."""
    out, when = [], start
    for i in range(n):
        when += timedelta(hours=rng.expovariate(1 / every_h))
        origin = "CN" if rng.random() < 0.8 else "BD"
        out.append(_declaration(i, when, origin=origin, value_per_kg=14.0 * rng.lognormvariate(0, 0.35)))
    return out


def _run(detector: OperatorBehaviourDetector, events: list[Any], store: dict[str, Any]) -> list[RiskScore | None]:
    out: list[RiskScore | None] = []
    for event in events:
        scores = detector.process(event, store)
        out.append(scores[0] if scores else None)
    return out


def test_a_steady_importer_raises_nothing() -> None:
    rng = random.Random(5)
    scores = _run(OperatorBehaviourDetector(), _steady(200, rng), {})
    assert max((s.score for s in scores if s is not None), default=0.0) < 0.5


def _switch(rng: random.Random, n_before: int = 40, n_after: int = 10) -> tuple[list[ImportDeclaration], datetime]:
    before = _steady(n_before, rng)
    when = before[-1].event_time
    after = []
    for i in range(n_after):
        when += timedelta(hours=rng.expovariate(1 / 1.5))  # four times its usual rate
        value = 14.0 * 0.4 * rng.lognormvariate(0, 0.1)  # 60 % cheaper
        after.append(_declaration(n_before + i, when, origin="MY", value_per_kg=value, mass=2500.0))
    return before + after, after[0].event_time


def test_a_change_is_detected_with_its_onset_and_size() -> None:
    events, switched_at = _switch(random.Random(8))
    scores = _run(OperatorBehaviourDetector(), events, {})
    assert all(s is None or s.score < 0.5 for s in scores[:40])
    last = scores[-1]
    assert last is not None and last.score > 0.85
    fields = last.reason_fields
    # The onset is where the test's cumulative sum bottomed out: the switch, give or take one declaration.
    around = {e.event_time.strftime("%Y-%m-%d %H:%M") for e in events[39:42]}
    assert fields["change_since"] in around and switched_at == events[40].event_time
    assert set(str(fields["changed_signals"]).split(",")) >= {"unit_value", "origin"}
    assert 50.0 <= float(fields["unit_value_drop_pct"]) <= 70.0  # type: ignore[arg-type]
    assert fields["new_origins"] == "MY"
    assert f"Importer {IMPORTER}: behaviour change since {fields['change_since']}" in last.reason
    assert "from origins never used before (MY)" in last.reason and "below its usual level" in last.reason
    assert last.eur_at_stake > 0
    # Every declaration of the new regime after the first few is flagged.
    assert all(s is not None and s.score > 0.7 for s in scores[44:])


def test_a_change_clears_when_the_importer_returns_to_its_habits() -> None:
    rng = random.Random(8)
    events, _ = _switch(rng)
    store: dict[str, BehaviourState] = {}
    detector = OperatorBehaviourDetector()
    _run(detector, events, store)
    assert store[IMPORTER].change is not None
    back = _steady(12, rng, start=events[-1].event_time)
    back = [e.model_copy(update={"event_id": f"back{i}"}) for i, e in enumerate(back)]
    scores = _run(detector, back, store)
    assert store[IMPORTER].change is None
    assert all(s is None or s.score < 0.5 for s in scores[-4:])


def test_state_round_trip_during_a_change() -> None:
    events, _ = _switch(random.Random(8))
    detector = OperatorBehaviourDetector()
    store: dict[str, BehaviourState] = {}
    _run(detector, events[:45], store)
    assert store[IMPORTER].change is not None
    restored = {k: BehaviourState.from_bytes(v.to_bytes()) for k, v in store.items()}
    assert restored[IMPORTER].to_dict() == store[IMPORTER].to_dict()
    a = [s.model_dump() if s else None for s in _run(detector, events[45:], store)]
    b = [s.model_dump() if s else None for s in _run(OperatorBehaviourDetector(), events[45:], restored)]
    assert a == b


def test_new_importer_with_large_flows() -> None:
    history = T0 - timedelta(days=60)
    detector = OperatorBehaviourDetector(history_start=history)
    store: dict[str, BehaviourState] = {}
    new = "FR11112222333344"
    first = _declaration(1, T0, importer=new, cn="85171300", value_per_kg=700.0, mass=3000.0, procedure="4200")
    score = _run(detector, [first], store)[0]
    assert score is not None and score.score > 0.9
    assert f"Importer {new} has no history (first declaration seen)" in score.reason
    assert "procedure 4200" in score.reason and "import VAT not collected" in score.reason
    assert score.eur_at_stake == pytest.approx(0.2 * (2_100_000 + 252_000))
    second = _declaration(
        2, T0 + timedelta(hours=5), importer=new, cn="85171300", value_per_kg=700.0, mass=1000.0, procedure="4200"
    )
    later = _run(detector, [second], store)[0]
    assert later is not None and later.score > 0.8 and "is new (first seen" in later.reason
    # A small first declaration is not "large flows".
    small = _declaration(3, T0, importer="FR55556666777788", value_per_kg=14.0, mass=100.0)
    assert _run(detector, [small], {})[0] is None
    # Without knowing where its history starts, the detector cannot call anyone new.
    assert _run(OperatorBehaviourDetector(), [first], {})[0] is None
    # Importers first met within the grace period after the history start may predate it.
    early = first.model_copy(update={"event_time": history + timedelta(days=2)})
    assert _run(detector, [early], {})[0] is None


def test_state_stays_bounded() -> None:
    detector = OperatorBehaviourDetector(max_categories=8, max_uv_groups=5)
    rng = random.Random(2)
    origins = ["CN", "VN", "BD", "IN", "TR", "PK", "MA", "TN", "KH", "ID", "TH", "MY", "LK", "EG"]
    codes = [f"{c}0000" for c in range(6101, 6117)] + [f"{c}0000" for c in range(9501, 9507)]
    store: dict[str, BehaviourState] = {}
    when = T0
    for i in range(1500):
        when += timedelta(hours=rng.expovariate(1 / 3))
        event = _declaration(
            i, when, origin=rng.choice(origins), cn=rng.choice(codes), value_per_kg=10 * rng.lognormvariate(0, 0.4)
        )
        detector.process(event, store)
    state = store[IMPORTER]
    base = state.baseline
    assert len(base.origins) <= 8 and len(base.chapters) <= 8 and len(base.uv) <= 5
    assert all(len(ring[0]) <= detector.uv_window for ring in base.uv.values())
    assert len(state.window) <= detector.window and len(base.times) <= detector.rate_window
    assert state.seen == 1500 and len(state.to_bytes()) < 8000


# --- a generated stream ----------------------------------------------------------------------------------
PATTERNS = frozenset(("behaviour_change", "new_importer_large_flows"))
WARM_UP_H = 24.0


@cache
def _stream() -> tuple[GeneratorConfig, tuple[Any, ...], dict[str, Any]]:
    # Three days, 150 importers: each habitual importer files a few declarations a day, so a
    # switching importer has a history. The first day is warm-up: the synthetic stream ramps up
    # (declarations of the first ETAs only) and every importer is met for the first time.
    config = GeneratorConfig(seed=1, duration_hours=72, rate_per_hour=150, n_operators=150)
    pairs = [(e, t) for e, t in generate(config) if isinstance(e, ImportDeclaration)]
    return config, tuple(e for e, _ in pairs), {e.event_id: t for e, t in pairs if t is not None}


def _scored(config: GeneratorConfig, events: tuple[Any, ...]) -> list[tuple[float, float, str]]:
    """(hours since start, score, event id) per declaration."""
    detector = OperatorBehaviourDetector(history_start=config.start, novelty_grace_days=0.25)
    store: dict[str, BehaviourState] = {}
    out = []
    for event in events:
        scores = detector.process(event, store)
        hours = (event.event_time - config.start).total_seconds() / 3600.0
        out.append((hours, scores[0].score if scores else 0.0, event.event_id))
    return out


def test_generated_stream_precision_recall_and_determinism() -> None:
    config, events, truth = _stream()
    scored = _scored(config, events)
    # Deterministic, and a score depends only on the events before it.
    head = len(events) // 4
    assert _scored(config, events[:head]) == scored[:head]
    rows = [r for r in scored if WARM_UP_H <= r[0] < config.duration_hours]
    positive = {r[2] for r in rows if r[2] in truth and PATTERNS & set(truth[r[2]].patterns)}
    base_rate = len(positive) / len(rows)
    ranked = sorted(rows, key=lambda r: -r[1])

    def precision(k: int) -> float:
        return sum(r[2] in positive for r in ranked[:k]) / k

    # A ranking by chance reaches the base rate (about 1 %). Measured on this seed: 0.86 in the
    # top half of the frauds' count, 0.52 at their count (seeds 7 and 2: 0.61-0.71 and 0.42-0.55);
    # recall at 0.5: behaviour change 0.71, new importers 0.52 (seeds 7 and 2: 0.36-0.59, 0.58-0.81).
    assert base_rate < 0.02
    assert precision(len(positive) // 2) >= max(0.3, 20 * base_rate)
    assert precision(len(positive)) >= 10 * base_rate
    for pattern in PATTERNS:
        ids = [r for r in rows if r[2] in truth and pattern in truth[r[2]].patterns]
        recall = sum(r[1] >= 0.5 for r in ids) / len(ids)
        assert recall >= 0.3, (pattern, recall)


def test_a_late_declaration_older_than_the_change_onset_is_scored() -> None:
    # Partitions interleave: a declaration can arrive after later ones and predate the change's
    # onset, while none of the importer's recent declarations in the window is after the onset
    # (they are quarantined during a change). Its rate sentence then has nothing to span.
    events, switched_at = _switch(random.Random(8), n_after=20)
    detector = OperatorBehaviourDetector()
    store: dict[str, BehaviourState] = {}
    _run(detector, events, store)
    state = store[IMPORTER]
    assert state.change is not None and "volume" in state.change["signals"]
    late = _declaration(99, switched_at - timedelta(days=2), origin="MY", value_per_kg=5.6, mass=2500.0)
    [(_, unit)] = detector.units(late)
    state.window = [e for e in state.window if e["t"] < unit.when]
    fields: dict[str, float | str | None] = {}
    sentences = detector._change_details(
        unit, state, detector.features(unit, state), ["volume"], state.change["since"], fields
    )
    assert sentences == ["declaration rate well above its usual rate"]
    assert "declarations_per_day" not in fields


def test_an_importers_baseline_reads_at_a_glance() -> None:
    store: dict[str, Any] = {}
    _run(OperatorBehaviourDetector(), _steady(200, random.Random(5)), store)
    [state] = store.values()
    baseline = state.baseline
    assert baseline.n > 150 and len(baseline.origins) == 2, "CN and BD"
    assert repr(baseline) == (
        f"<Baseline of {baseline.n} declarations: {len(baseline.times)} leaving times, 2 origins, "
        f"{len(baseline.chapters)} chapters, {len(baseline.uv)} unit-value groups>"
    )
    assert repr(state.tests["unit_value"]).startswith(f"PageHinkley(n={state.tests['unit_value'].n}, mean=")
