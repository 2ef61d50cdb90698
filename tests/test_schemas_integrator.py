"""The codec as integrators meet it: ASCII digits, strict JSON types, sane times, later 1.x versions,
short reasons, a BOM named as such, and a JSON Schema that says what the engine requires."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.factories import declaration_dict, ens_dict, excise_dict, outcome_dict
from vigie.schemas import EventRejected, decode_event
from vigie.schemas.jsonschema import UNEXPRESSED_RULES, export_json_schemas


def _raw(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode()


def _rejection(data: dict[str, Any] | bytes) -> EventRejected:
    raw = data if isinstance(data, bytes) else _raw(data)
    with pytest.raises(EventRejected) as info:
        decode_event(raw)
    return info.value


def _item(**overrides: Any) -> dict[str, Any]:
    data = declaration_dict()
    data["goods_items"][0].update(overrides)
    return data


# -- item 2: digits are ASCII digits ----------------------------------------------------------

ARABIC_ZERO, FULL_WIDTH_ZERO = "\u0660", "\uff10"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_item(cn_code="8415109" + ARABIC_ZERO), "goods_items.0.cn_code"),
        (_item(cn_code="\u0668\u0664\u0661\u0665\u0661\u0660\u0669\u0660"), "goods_items.0.cn_code"),
        (_item(cn_code="61091000", taric_code="61091000" + FULL_WIDTH_ZERO * 2), "goods_items.0.taric_code"),
        (_item(preference="1" + FULL_WIDTH_ZERO * 2), "goods_items.0.preference"),
        (declaration_dict(procedure_code="\uff14\uff10\uff10\uff10"), "procedure_code"),
        (declaration_dict(mrn="\u0662\u0666FR0002300000001A"), "mrn"),
        (declaration_dict(schema_version="\u0661.\u0660"), "schema_version"),
        (declaration_dict(schema_version="1." + FULL_WIDTH_ZERO), "schema_version"),
        (excise_dict(arc="26FRA1B2C3D4E5F6G7H8" + ARABIC_ZERO), "arc"),
    ],
)
def test_non_ascii_digits_are_rejected(data: dict[str, Any], field: str) -> None:
    rejected = _rejection(data)
    assert rejected.field == field, rejected.reason
    assert "should match pattern" in rejected.reason


def test_ens_hs_code_needs_ascii_digits() -> None:
    data = ens_dict()
    data["goods_items"][0]["hs_code"] = "61091" + ARABIC_ZERO
    assert _rejection(data).field == "goods_items.0.hs_code"


def test_json_schema_patterns_use_ascii_digit_classes(tmp_path: Path) -> None:
    """The export says [0-9] (what JSON Schema's own \\d means): the schema and the engine agree."""
    for path in export_json_schemas(tmp_path):
        text = path.read_text()
        assert "\\\\d" not in text, path.name
    schema = json.loads((tmp_path / "declaration.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(_item(cn_code="84151090")))
    assert list(validator.iter_errors(_item(cn_code="8415109" + ARABIC_ZERO)))


# -- item 4: strict JSON types ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_item(customs_value_eur="12.5"), "goods_items.0.customs_value_eur"),
        (_item(net_mass_kg="120"), "goods_items.0.net_mass_kg"),
        (_item(item_number="3"), "goods_items.0.item_number"),
        (_item(item_number=2.0), "goods_items.0.item_number"),
        (declaration_dict(container="yes"), "container"),
        (declaration_dict(container="off"), "container"),
        (declaration_dict(container=1), "container"),
        (outcome_dict(controlled="true"), "controlled"),
        (outcome_dict(item_number="1"), "item_number"),
        (outcome_dict(duty_recovered_eur="420"), "duty_recovered_eur"),
        (declaration_dict(event_time=1772438400), "event_time"),  # epoch seconds: no offset to check
        (declaration_dict(event_time=1772438400.0), "event_time"),
        (ens_dict(eta=1772438400), "eta"),
        (excise_dict(volume_litres="1000"), "volume_litres"),
        (excise_dict(sticks=1000.0, record_type="export", arc=None), "sticks"),
    ],
)
def test_lax_json_types_are_rejected_naming_the_field(data: dict[str, Any], field: str) -> None:
    rejected = _rejection(data)
    assert rejected.field == field, rejected.reason
    assert rejected.reason.startswith(f"{field}: Input should be a valid"), rejected.reason


def test_strict_types_still_take_what_json_writes() -> None:
    """Integers for floats, ISO times with offsets, enum values as strings: all still valid."""
    event = decode_event(_raw(_item(customs_value_eur=1200, net_mass_kg=120)))
    assert event.goods_items[0].customs_value_eur == 1200.0
    assert decode_event(_raw(declaration_dict(event_time="2026-03-02T09:00:00+01:00"))).transport_mode_at_border == (
        "sea"
    )


def test_generated_events_still_decode() -> None:
    from vigie.schemas import encode_event
    from vigie.schemas.generator import GeneratorConfig, generate

    events = [event for event, _ in generate(GeneratorConfig(seed=3, duration_hours=2))]
    assert {e.event_type for e in events} == {"ens", "declaration", "excise", "outcome"}
    for event in events:
        assert decode_event(encode_event(event)) == event


# -- item 7: plausible times ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (declaration_dict(event_time="1999-12-31T23:59:59Z"), "event_time"),
        (declaration_dict(event_time="1970-01-01T00:00:00Z"), "event_time"),
        (declaration_dict(event_time="2100-01-01T00:00:00Z"), "event_time"),
        (declaration_dict(event_time="2099-12-31T23:00:00-02:00"), "event_time"),  # 2100 in UTC
        (outcome_dict(event_time="9999-12-31T00:00:00+00:00"), "event_time"),
        (ens_dict(eta="2206-03-02T08:00:00Z"), "eta"),
    ],
)
def test_implausible_times_are_rejected(data: dict[str, Any], field: str) -> None:
    rejected = _rejection(data)
    assert rejected.field == field
    assert "outside the accepted range 2000-01-01 to 2099-12-31" in rejected.reason


@pytest.mark.parametrize("when", ["2000-01-01T00:00:00Z", "2000-01-01T00:30:00+00:30", "2099-12-31T23:59:59Z"])
def test_times_at_the_edges_of_the_range_are_accepted(when: str) -> None:
    assert decode_event(_raw(declaration_dict(event_time=when))).event_id == "decl-0001"
    assert decode_event(_raw(ens_dict(event_time=when, eta=when))).event_id == "ens-0001"


# -- item 5: later minor versions -------------------------------------------------------------


def _with_newer_fields(schema_version: str) -> dict[str, Any]:
    data = declaration_dict(schema_version=schema_version, incoterm="FOB")
    data["goods_items"][0]["origin_region"] = "Zhejiang"
    data["seller"]["vat_number"] = "CN123"
    return data


@pytest.mark.parametrize("version", ["1.1", "1.2", "1.10"])
def test_later_minor_version_ignores_unknown_fields(version: str) -> None:
    event = decode_event(_raw(_with_newer_fields(version)))
    assert event.schema_version == version
    expected = decode_event(_raw(declaration_dict(schema_version=version)))
    assert event == expected


@pytest.mark.parametrize("version", ["1.0", "01.00", None])
def test_version_1_0_still_rejects_unknown_fields(version: str | None) -> None:
    data = _with_newer_fields(version or "1.0")
    if version is None:
        del data["schema_version"]  # defaults to 1.0
    rejected = _rejection(data)
    assert "Extra inputs are not permitted" in rejected.reason
    assert rejected.field in {"incoterm", "seller.vat_number", "goods_items.0.origin_region"}


def test_later_minor_version_still_validates_known_fields() -> None:
    data = _with_newer_fields("1.1")
    data["goods_items"][0]["net_mass_kg"] = -5
    rejected = _rejection(data)
    assert rejected.reason == "goods_items.0.net_mass_kg: Input should be greater than 0 (got -5)"


def test_unsupported_major_with_unknown_fields_is_still_rejected() -> None:
    rejected = _rejection(_with_newer_fields("2.1"))
    assert "2.1 is not supported" in rejected.reason


# -- item 3: unknown event_type ---------------------------------------------------------------


def test_unknown_event_type_reason_shows_the_tag_not_the_event() -> None:
    data = declaration_dict(event_type="invoice")
    data["goods_items"] = [{**data["goods_items"][0], "item_number": i} for i in range(1, 900)]
    raw = _raw(data)
    assert len(raw) > 200_000
    rejected = _rejection(raw)
    assert rejected.field == "event_type"
    assert rejected.reason == (
        "event_type: event_type must be one of 'ens', 'declaration', 'excise', 'outcome' (got 'invoice')"
    )


def test_a_long_or_odd_event_type_is_truncated() -> None:
    rejected = _rejection(declaration_dict(event_type="x" * 5000))
    assert rejected.field == "event_type" and len(rejected.reason) < 200 and rejected.reason.endswith("...)")


# -- item 10: byte-order mark -----------------------------------------------------------------


def test_byte_order_mark_is_named() -> None:
    rejected = _rejection(b"\xef\xbb\xbf" + _raw(declaration_dict()))
    assert rejected.reason == "starts with a UTF-8 byte-order mark (BOM); save the file as UTF-8 without BOM"


# -- item 6: the JSON Schema requires event_type and lists what it cannot express -------------


FACTORIES = {"declaration": declaration_dict, "ens": ens_dict, "excise": excise_dict, "outcome": outcome_dict}


@pytest.mark.parametrize("event_type", sorted(FACTORIES))
def test_json_schema_requires_event_type_and_states_other_rules(tmp_path: Path, event_type: str) -> None:
    paths = {p.name.split(".")[0]: p for p in export_json_schemas(tmp_path)}
    schema = json.loads(paths[event_type].read_text())
    assert "event_type" in schema["required"]
    assert "default" not in schema["properties"]["event_type"]
    validator = jsonschema.Draft202012Validator(schema)
    data = FACTORIES[event_type]()
    assert not list(validator.iter_errors(data))
    del data["event_type"]
    assert [e.message for e in validator.iter_errors(data)] == ["'event_type' is a required property"]
    for rule in UNEXPRESSED_RULES[event_type]:
        assert rule in schema["description"] and rule in schema["x-vigie-rules"]
    assert "2000-01-01" in schema["description"]


def test_json_schema_rules_name_the_cross_field_checks() -> None:
    rules = {event_type: " ".join(r) for event_type, r in UNEXPRESSED_RULES.items()}
    assert "taric_code starts with its cn_code" in rules["declaration"]
    assert "unique" in rules["declaration"]
    assert "arc is required" in rules["excise"]
    assert "positive implies controlled" in rules["outcome"]


def test_outbound_schemas_are_unchanged_by_inbound_rules(tmp_path: Path) -> None:
    paths = {p.name.split(".")[0]: p for p in export_json_schemas(tmp_path)}
    for name in ("risk_score", "alert", "dead_letter"):
        schema = json.loads(paths[name].read_text())
        assert "x-vigie-rules" not in schema and "event_type" not in schema.get("required", [])
