"""Tests of the synthetic stream generator: determinism, validity, timing, physics, fraud truth.

Most tests share one 4-hour run at the default rate (about 4,000 consignments, 8,000
events, ~1 s). The default-sized run (24 h, ~73,000 events, ~10 s) is checked by a single
test so that only one test worker pays for it. Runs are cached per worker process.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import replace
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from vigie.schemas import (
    ControlOutcome,
    EntrySummaryDeclaration,
    ExciseMovement,
    ImportDeclaration,
    decode_event,
    encode_event,
)
from vigie.schemas.generator import (
    PATTERNS,
    EventStream,
    GenerationStats,
    GeneratorConfig,
    GroundTruth,
    generate,
    write_stream,
)
from vigie.schemas.generator.catalogue import EXCISE_RATES
from vigie.schemas.generator.stream import DIURNAL_AMPLITUDE

Run = tuple[list[Any], dict[str, GroundTruth], GenerationStats]

SMALL = GeneratorConfig(duration_hours=4.0)
"""Default rate, 4 h of ETAs from midnight (the quiet hours): about 4,000 consignments."""


@cache
def _run(config: GeneratorConfig) -> Run:
    stream = EventStream(config)
    events: list[Any] = []
    truths: dict[str, GroundTruth] = {}
    for event, truth in stream:
        events.append(event)
        if truth is not None:
            truths[truth.event_id] = truth
    return events, truths, stream.stats


FULL = GeneratorConfig(duration_hours=12)  # every pattern appears at this size


@pytest.fixture(scope="module")
def small() -> Run:
    return _run(SMALL)


@pytest.fixture(scope="module")
def full() -> Run:
    return _run(FULL)


def _by_type(events: list[Any], event_type: str) -> list[Any]:
    return [e for e in events if e.event_type == event_type]


# --- determinism and validity -------------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    config = GeneratorConfig(duration_hours=1.0, rate_per_hour=600.0, fraud_share=0.1, n_operators=400)
    paths = []
    for name, cfg in (("a", config), ("b", config), ("c", replace(config, seed=8))):
        events, truth = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.truth.jsonl"
        stats = write_stream(cfg, events, truth)
        assert stats.n_events == len(events.read_bytes().splitlines()) > 100
        assert stats.n_truth_records == len(truth.read_bytes().splitlines()) > 0
        paths.append((events.read_bytes(), truth.read_bytes()))
    assert paths[0] == paths[1]
    assert paths[0][0] != paths[2][0]
    assert paths[0][1] != paths[2][1]


def test_output_does_not_depend_on_the_process(tmp_path: Path) -> None:
    # str hashes are salted per process: nothing in the generator may depend on them.
    script = (
        "import sys; from pathlib import Path; from vigie.schemas.generator import GeneratorConfig, write_stream; "
        "write_stream(GeneratorConfig(duration_hours=0.5, rate_per_hour=400.0, fraud_share=0.2, n_operators=200), "
        "Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    outputs = []
    for hash_seed in ("1", "2"):
        events, truth = tmp_path / f"e{hash_seed}", tmp_path / f"t{hash_seed}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", script, str(events), str(truth)], check=True, env=env)
        outputs.append((events.read_bytes(), truth.read_bytes()))
    assert outputs[0] == outputs[1]
    assert len(outputs[0][0]) > 10_000


def test_every_event_revalidates_and_is_a_known_model(small: Run) -> None:
    events, _, _ = small
    models = (EntrySummaryDeclaration, ImportDeclaration, ExciseMovement, ControlOutcome)
    for event in events:
        assert isinstance(event, models)
        assert decode_event(encode_event(event)) == event


def test_event_ids_unique_and_truth_ids_exist(small: Run) -> None:
    events, truths, stats = small
    ids = [e.event_id for e in events]
    assert len(set(ids)) == len(ids) == stats.n_events
    by_id = {e.event_id: e for e in events}
    assert truths, "a 4 h run must contain frauds"
    for truth in truths.values():
        event = by_id[truth.event_id]
        assert event.event_type == truth.event_type
        reference = {"ens": "ens_reference", "declaration": "mrn"}.get(truth.event_type)
        if reference:
            assert getattr(event, reference) == truth.reference
        else:
            assert truth.reference in (event.arc, event.import_mrn)
        assert truth.patterns and set(truth.patterns) <= set(PATTERNS)
        assert truth.revenue_at_risk_eur > 0, truth  # every injected fraud costs something
        assert truth.to_dict()["event_id"] == truth.event_id


def test_generate_matches_event_stream() -> None:
    config = GeneratorConfig(duration_hours=0.5, rate_per_hour=300.0, n_operators=200)
    a = [(encode_event(e), t) for e, t in generate(config)]
    b = [(encode_event(e), t) for e, t in EventStream(config)]
    assert a == b


# --- timing and order ---------------------------------------------------------------------------
ENS_LEAD_BOUNDS_H = {
    "air": (4.0, 24.0),  # pre-loading filing, at least 4 h before arrival
    "postal": (4.0, 24.0),
    "road": (1.0, 6.0),  # ICS2: at least 1 h before arrival by road
    "rail": (2.0, 12.0),  # at least 2 h by rail
    "sea": (24.0 + 24.0, 72.0 + 45 * 24.0),  # 24 h before loading + 1 to 45 days at sea
}


def test_ens_precedes_its_declaration_and_lead_times_fit_the_mode(small: Run) -> None:
    events, _, _ = small
    ens_at: dict[str, int] = {}
    linked = 0
    for i, event in enumerate(events):
        if event.event_type == "ens":
            ens_at[event.ens_reference] = i
            lo, hi = ENS_LEAD_BOUNDS_H[event.transport_mode]
            lead_h = (event.eta - event.event_time).total_seconds() / 3600
            assert lo - 0.01 <= lead_h <= hi + 0.01, (event.transport_mode, lead_h)
        elif event.event_type == "declaration" and event.ens_reference is not None:
            j = ens_at.get(event.ens_reference)
            assert j is not None, "declaration emitted before (or without) its ENS"
            assert events[j].event_time < event.event_time
            linked += 1
    declarations = len(_by_type(events, "declaration"))
    assert 0.8 * declarations < linked < declarations  # most, not all, declarations are linked


def test_non_ens_events_sorted_and_outcomes_follow_their_target(small: Run) -> None:
    events, _, _ = small
    times = [e.event_time for e in events if e.event_type != "ens"]
    assert times == sorted(times)
    position = {e.event_id: i for i, e in enumerate(events)}
    for i, event in enumerate(events):
        if event.event_type == "outcome":
            target = events[position[event.target_event_id]]
            assert position[event.target_event_id] < i
            assert target.event_time < event.event_time
    # Declarations are lodged within [eta - 12 h, eta + 72 h] of their ENS's arrival.
    eta = {e.ens_reference: e.eta for e in events if e.event_type == "ens"}
    for event in _by_type(events, "declaration"):
        if event.ens_reference in eta:
            delta = event.event_time - eta[event.ens_reference]
            assert timedelta(hours=-12) <= delta <= timedelta(hours=72, seconds=1)


# --- declarations: taxes and supplementary units ------------------------------------------------
def test_declaration_taxes_are_consistent(small: Run) -> None:
    events, truths, _ = small
    checked = 0
    for decl in _by_type(events, "declaration"):
        for item in decl.goods_items:
            assert item.duty_eur == pytest.approx(item.customs_value_eur * item.duty_rate_pct / 100, abs=0.02)
            if decl.procedure_code == "4000":
                base = item.customs_value_eur + item.duty_eur + (item.excise_eur or 0.0)
                assert item.vat_eur == pytest.approx(0.2 * base, abs=0.02)
                checked += 1
            else:
                assert item.vat_eur == 0.0
            if decl.event_id not in truths and item.supplementary_unit_code in ("p/st", "pa"):
                assert item.supplementary_units == int(item.supplementary_units)
    assert checked > 1000


# --- excise physics --------------------------------------------------------------------------------
DENSITY_KG_PER_L = {"petrol": (0.72, 0.775), "diesel": (0.82, 0.845)}  # EN 228 / EN 590
STRENGTH_PCT = {"beer": (3.0, 10.0), "wine": (8.5, 15.0), "spirits": (35.0, 50.0)}
CN_PREFIX = {"beer": "2203", "wine": "2204", "spirits": "2208", "cigarettes": "2402", "fine_cut_tobacco": "2403",
             "petrol": "2710", "diesel": "2710"}  # fmt: skip


def _expected_duty(e: ExciseMovement) -> float:
    """Rate x base, written out from the record's own fields."""
    rate = EXCISE_RATES[e.product_category].amount
    volume = e.volume_litres or 0.0
    strength = e.alcohol_strength_pct or 0.0
    return {
        "spirits": rate * volume / 100 * strength / 100,  # per hl of pure alcohol
        "beer": rate * volume / 100 * strength,  # per hl per degree
        "wine": rate * volume / 100,
        "cigarettes": rate * (e.sticks or 0),
        "fine_cut_tobacco": rate * (e.mass_kg or 0.0),
        "petrol": rate * volume / 1000,
        "diesel": rate * volume / 1000,
    }[e.product_category]


def test_clean_excise_records_respect_physics_and_rates(small: Run) -> None:
    events, truths, _ = small
    clean = [e for e in _by_type(events, "excise") if e.event_id not in truths]
    assert len({e.product_category for e in clean}) >= 5
    for e in clean:
        product = e.product_category
        assert e.cn_code.startswith(CN_PREFIX[product])
        assert e.duty_declared_eur == pytest.approx(_expected_duty(e), rel=0.01)
        if product in STRENGTH_PCT:
            lo, hi = STRENGTH_PCT[product]
            assert e.volume_litres and lo <= (e.alcohol_strength_pct or 0) <= hi
            assert e.dispatched_quantity == pytest.approx(e.volume_litres, rel=1e-3)
        if product in DENSITY_KG_PER_L:
            lo, hi = DENSITY_KG_PER_L[product]
            assert e.density_kg_per_l_at_15c is not None and lo <= e.density_kg_per_l_at_15c <= hi
            assert e.mass_kg == pytest.approx(e.volume_litres * e.density_kg_per_l_at_15c, rel=0.01)
        if product == "cigarettes":
            assert e.sticks and e.mass_kg and 0.0007 <= e.mass_kg / e.sticks <= 0.0013
        if e.record_type == "report_of_receipt":
            assert e.received_quantity == e.dispatched_quantity
        if e.record_type in ("e_ad", "report_of_receipt", "export"):
            assert e.arc is not None


def test_excise_frauds_break_what_they_claim_to_break(small: Run) -> None:
    events, truths, _ = small
    seen = set()
    for e in _by_type(events, "excise"):
        truth = truths.get(e.event_id)
        if truth is None:
            continue
        seen.update(truth.patterns)
        if "excise_shortage" in truth.patterns:
            assert e.record_type == "report_of_receipt"
            assert e.received_quantity is not None and e.received_quantity < 0.98 * e.dispatched_quantity
        if "excise_physics" in truth.patterns:
            variant = truth.details["variant"]
            broken = e.duty_declared_eur < 0.9 * float(truth.details["true_excise_eur"])
            assert broken, variant
        assert truth.revenue_at_risk_eur > 0
    assert seen & {"excise_shortage", "excise_diversion", "excise_physics"}


# --- fraud share and patterns -------------------------------------------------------------------------
def test_default_sized_run(full: Run) -> None:
    """One test for the 24 h default run, so that only one test worker pays for generating it."""
    _check_fraud_share(full)
    _check_every_pattern(full)
    _check_fraud_marks(full)
    _check_control_selection(full)


def _expected_consignments(config: GeneratorConfig) -> float:
    """Rate x hours, weighted by the documented daily cycle (peak at 14:00 UTC)."""
    start_h = config.start.hour + config.start.minute / 60
    steps = 1000
    dt = config.duration_hours / steps
    weight = sum(
        1 + DIURNAL_AMPLITUDE * math.cos(2 * math.pi * (start_h + (i + 0.5) * dt - 14) / 24) for i in range(steps)
    )
    return config.rate_per_hour * weight * dt


def _check_fraud_share(run: Run) -> None:
    # ~16,000 consignments (12 h from midnight), ~640 expected frauds. Binomial sd ~25; frauds
    # cluster (split shipments of ~5.5 parts, behaviour-change importers' whole tails), which
    # roughly doubles the sd to ~0.3 percentage point: +-0.6 pp is two sd.
    _, truths, stats = run
    assert stats.n_consignments == pytest.approx(_expected_consignments(FULL), rel=0.05)
    assert 0.034 <= stats.fraud_share <= 0.046
    consignments = {t.details["consignment_id"] for t in truths.values()}
    assert len(consignments) == stats.n_fraud_consignments


def test_fraud_share_small_run(small: Run) -> None:
    # ~4,000 consignments, ~160 expected frauds, sd ~17 with clustering: +-1.3 pp is three sd.
    assert 0.027 <= small[2].fraud_share <= 0.053


def _check_every_pattern(run: Run) -> None:
    _, truths, stats = run
    found = {p for t in truths.values() for p in t.patterns}
    assert found == set(PATTERNS)
    assert set(stats.fraud_consignments_per_pattern) == set(PATTERNS)


def test_no_fraud_when_fraud_share_is_zero() -> None:
    config = GeneratorConfig(duration_hours=1.0, rate_per_hour=800.0, fraud_share=0.0, n_operators=300)
    events, truths, stats = _run(config)
    assert not truths and stats.n_fraud_consignments == 0
    assert not any(e.positive for e in _by_type(events, "outcome"))


def test_undervalued_items_far_below_clean_group_median(small: Run) -> None:
    events, truths, _ = small
    clean: dict[tuple[str, str], list[float]] = defaultdict(list)
    for decl in _by_type(events, "declaration"):
        if decl.event_id not in truths:
            for item in decl.goods_items:
                clean[(item.cn_code, item.origin_country)].append(item.customs_value_eur / item.net_mass_kg)
    medians = {k: statistics.median(v) for k, v in clean.items() if len(v) >= 5}
    ratios = []
    for decl in _by_type(events, "declaration"):
        truth = truths.get(decl.event_id)
        if truth is None or "undervaluation" not in truth.patterns:
            continue
        for item in decl.goods_items:
            key = (item.cn_code, item.origin_country)
            if item.item_number in truth.item_numbers and key in medians:
                ratios.append(item.customs_value_eur / item.net_mass_kg / medians[key])
    assert len(ratios) >= 30
    # Declared at 15-50 % of the true value; clean prices spread with sigma 0.3-0.6.
    assert statistics.median(ratios) < 0.45
    assert sum(r < 0.8 for r in ratios) >= 0.85 * len(ratios)


def _check_fraud_marks(run: Run) -> None:
    """Transshipment, splitting, cover loads and new importers leave the marks they should."""
    events, truths, _ = run
    by_id = {e.event_id: e for e in events}
    ens_by_ref = {e.ens_reference: e for e in events if e.event_type == "ens"}
    first_seen: dict[str, int] = {}
    for i, e in enumerate(events):
        if e.event_type in ("ens", "declaration"):
            eori = e.consignee.eori if e.event_type == "ens" else e.importer_eori
            first_seen.setdefault(eori, i)
    split_parts: dict[str, list[ImportDeclaration]] = defaultdict(list)
    new_values: list[float] = []
    for truth in truths.values():
        event = by_id[truth.event_id]
        if truth.event_type == "ens" and "origin_transshipment" in truth.patterns:
            assert event.countries_of_routing[0] == "CN" and event.consignor.country != "CN"
        if truth.event_type != "declaration":
            continue
        if "origin_transshipment" in truth.patterns:
            assert all(item.origin_country != "CN" for item in event.goods_items)
        if "splitting" in truth.patterns:
            assert sum(item.customs_value_eur for item in event.goods_items) < 150
            split_parts[str(truth.details["shipment_id"])].append(event)
        if "cover_load_smuggling" in truth.patterns and event.ens_reference in ens_by_ref:
            ens = ens_by_ref[event.ens_reference]
            gross = sum(i.gross_mass_kg for i in ens.goods_items)
            net = sum(i.net_mass_kg for i in event.goods_items)
            assert gross > 1.5 * net  # the cigarettes weigh on the scale, not in the declaration
        if "new_importer_large_flows" in truth.patterns:
            assert event.procedure_code == "4200"
            new_values.append(sum(i.customs_value_eur for i in event.goods_items))
    assert split_parts
    for parts in split_parts.values():
        assert len(parts) >= 3
        assert len({p.importer_eori for p in parts}) == 1
        assert len({p.event_time.date() for p in parts}) == 1
    new_importers = {by_id[t.event_id].importer_eori for t in truths.values()
                     if t.event_type == "declaration" and "new_importer_large_flows" in t.patterns}  # fmt: skip
    # Never seen before: no clean history; their very first event is already a flagged one.
    assert new_importers
    for eori in new_importers:
        assert events[first_seen[eori]].event_id in truths
        assert all(d.event_id in truths for d in _by_type(events, "declaration") if d.importer_eori == eori)
    clean_values = [sum(i.customs_value_eur for i in d.goods_items) for d in _by_type(events, "declaration")
                    if d.event_id not in truths]  # fmt: skip
    assert statistics.median(new_values) > 3 * statistics.median(clean_values)  # large flows


def test_behaviour_change_flags_every_later_consignment(small: Run) -> None:
    events, truths, _ = small
    switches: dict[str, str] = {}
    for e in _by_type(events, "declaration"):
        truth = truths.get(e.event_id)
        if truth is not None and "behaviour_change" in truth.patterns:
            switches[e.importer_eori] = str(truth.details["switch_time"])
    assert switches
    histories = 0
    for eori, switch in switches.items():
        ens = [e for e in _by_type(events, "ens") if e.consignee.eori == eori]
        after = [e for e in ens if e.eta.isoformat() >= switch]
        before = [e for e in ens if e.eta.isoformat() < switch]
        assert after and all("behaviour_change" in truths[e.event_id].patterns for e in after if e.event_id in truths)
        assert all(e.event_id in truths for e in after)
        # Before the switch: its usual business (possibly another, unrelated fraud now and then).
        assert not any("behaviour_change" in truths[e.event_id].patterns for e in before if e.event_id in truths)
        if before:
            histories += 1
            usual = statistics.mode(e.consignor.country for e in before)
            assert usual not in {e.consignor.country for e in after}  # it switched to new origins
    assert histories >= 1, "at least one switching importer must have a visible history"


# --- control outcomes ---------------------------------------------------------------------------------
def test_outcomes_target_existing_events_and_are_positive_only_on_fraud(small: Run) -> None:
    events, truths, _ = small
    by_id = {e.event_id: e for e in events}
    outcomes = _by_type(events, "outcome")
    declarations = _by_type(events, "declaration")
    on_declarations = [o for o in outcomes if o.target_type == "declaration"]
    # ~3,700 declarations x 3 %: ~110 controls, sd ~10.
    assert 0.02 * len(declarations) < len(on_declarations) < 0.04 * len(declarations)
    positives = 0
    for o in outcomes:
        target = by_id[o.target_event_id]
        assert o.controlled
        if o.target_type == "declaration":
            assert isinstance(target, ImportDeclaration) and target.mrn == o.target_reference
        else:
            assert isinstance(target, ExciseMovement) and o.target_reference in (target.arc, target.import_mrn)
        truth = truths.get(o.target_event_id)
        if o.positive:
            positives += 1
            assert truth is not None and o.infringement_type is not None
            recovered = o.duty_recovered_eur + o.tax_recovered_eur
            assert recovered == pytest.approx(truth.revenue_at_risk_eur, abs=0.02)
        elif truth is None:
            assert o.duty_recovered_eur == o.tax_recovered_eur == 0.0
    assert positives > 0


def _check_control_selection(run: Run) -> None:
    """Legacy targeting controls fraud about 4 times as often as clean goods; random is uniform."""
    events, truths, _ = run
    declarations = _by_type(events, "declaration")
    outcomes = [o for o in _by_type(events, "outcome") if o.target_type == "declaration"]
    fraud = {d.event_id for d in declarations if d.event_id in truths}
    clean = len(declarations) - len(fraud)

    def rate(selection: set[str], ids: set[str] | None, n: int) -> float:
        hits = [o for o in outcomes if o.selection in selection and (ids is None or o.target_event_id in ids)]
        if ids is None:
            hits = [o for o in hits if o.target_event_id not in fraud]
        return len(hits) / n

    ratio = rate({"random", "other"}, fraud, len(fraud)) / rate({"random", "other"}, None, clean)
    assert 2.5 < ratio < 6.0
    # A quarter of the control budget is drawn uniformly at random (~270 of ~1,080 controls).
    random_share = sum(o.selection == "random" for o in outcomes) / len(outcomes)
    assert 0.18 < random_share < 0.32
