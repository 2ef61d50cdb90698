"""Event models and the codec: strict validation with precise rejections."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import jsonschema
import pytest

from tests.factories import declaration_dict, ens_dict, excise_dict, outcome_dict
from vigie.schemas import (
    MAX_EVENT_BYTES,
    EventRejected,
    ImportDeclaration,
    dead_letter,
    decode_event,
    encode_event,
)
from vigie.schemas.jsonschema import export_json_schemas

VALID = {"declaration": declaration_dict, "ens": ens_dict, "excise": excise_dict, "outcome": outcome_dict}


def _raw(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_valid_events_round_trip(event_type: str) -> None:
    event = decode_event(_raw(VALID[event_type]()))
    assert event.event_type == event_type
    assert decode_event(encode_event(event)) == event


def _rejection(data: dict[str, Any] | bytes) -> EventRejected:
    raw = data if isinstance(data, bytes) else _raw(data)
    with pytest.raises(EventRejected) as info:
        decode_event(raw)
    return info.value


def test_negative_mass_names_the_item_field() -> None:
    data = declaration_dict()
    data["goods_items"][0]["net_mass_kg"] = -5
    rejected = _rejection(data)
    assert rejected.field == "goods_items.0.net_mass_kg"
    assert "greater than 0" in rejected.reason and "-5" in rejected.reason


def test_unknown_country_code() -> None:
    data = declaration_dict()
    data["goods_items"][0]["origin_country"] = "ZZ"
    rejected = _rejection(data)
    assert rejected.field == "goods_items.0.origin_country"
    assert "unknown country code 'ZZ'" in rejected.reason


def test_customs_specific_country_codes_accepted() -> None:
    data = declaration_dict()
    data["goods_items"][0]["origin_country"] = "XK"
    assert decode_event(_raw(data)).goods_items[0].origin_country == "XK"


def test_unknown_schema_version() -> None:
    rejected = _rejection(declaration_dict(schema_version="2.0"))
    assert rejected.field == "schema_version"
    assert "2.0 is not supported" in rejected.reason


def test_minor_version_accepted() -> None:
    assert decode_event(_raw(declaration_dict(schema_version="1.7"))).schema_version == "1.7"


def test_wrong_type() -> None:
    data = declaration_dict()
    data["goods_items"][0]["customs_value_eur"] = "a lot"
    assert _rejection(data).field == "goods_items.0.customs_value_eur"


def test_truncated_json() -> None:
    raw = _raw(declaration_dict())[:-40]
    rejected = _rejection(raw)
    assert "Invalid JSON" in rejected.reason and "EOF" in rejected.reason


def test_non_utf8_bytes() -> None:
    raw = _raw(declaration_dict()).replace(b"T-shirts", b"T-shirts \xff\xfe")
    rejected = _rejection(raw)
    assert "not valid UTF-8" in rejected.reason and "0xff" in rejected.reason


def test_oversized_line() -> None:
    raw = b'{"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    rejected = _rejection(raw)
    assert str(MAX_EVENT_BYTES) in rejected.reason


def test_unknown_field_rejected() -> None:
    rejected = _rejection(declaration_dict(discount_code="SPRING"))
    assert rejected.field == "discount_code" and "Extra inputs" in rejected.reason


def test_unknown_event_type() -> None:
    rejected = _rejection(declaration_dict(event_type="invoice"))
    assert rejected.field == "event_type" and "'invoice'" in rejected.reason


def test_missing_event_type() -> None:
    data = declaration_dict()
    del data["event_type"]
    assert _rejection(data).field == "event_type"


def test_naive_datetime_rejected() -> None:
    rejected = _rejection(declaration_dict(event_time="2026-03-02T08:00:00"))
    assert rejected.field == "event_time" and "timezone" in rejected.reason


@pytest.mark.parametrize(
    ("written", "offset"),
    [
        ("2026-03-02T08:00:00Z", timedelta(0)),
        ("2026-03-02T08:00:00+00:00", timedelta(0)),
        ("2026-03-02T09:00:00.25+01:00", timedelta(hours=1)),
        ("2026-03-02T02:30:00-05:30", timedelta(hours=-5, minutes=-30)),
    ],
)
def test_decoded_times_keep_their_offset_in_a_standard_zone(written: str, offset: timedelta) -> None:
    """Times come out in datetime.timezone (UTC itself for +00:00), never pydantic's TzInfo, whose
    offset is a call into Python each time two times are compared or subtracted: same instant, same
    wall clock, same offset, written back the same way."""
    event = decode_event(_raw(ens_dict(event_time=written, eta=written)))
    parsed = datetime.fromisoformat(written)
    for value in (event.event_time, event.eta):
        assert type(value.tzinfo) is timezone
        assert value.utcoffset() == offset and value == parsed
        assert value.replace(tzinfo=None) == parsed.replace(tzinfo=None)
    if offset == timedelta(0):
        assert event.event_time.tzinfo is UTC
    assert decode_event(encode_event(event)) == event
    written_back = datetime.fromisoformat(json.loads(encode_event(event))["event_time"])
    assert written_back == parsed and written_back.utcoffset() == offset


def _pydantic_bytes(model: Any) -> bytes:
    return model.model_dump_json(exclude_none=True).encode()


def test_scores_and_alerts_encode_byte_for_byte_as_pydantic() -> None:
    """encode_event writes scores and alerts with orjson (the runtimes send several per event): the
    bytes must be pydantic's, on a scored stream and on the awkward values a stream rarely holds."""
    from vigie.operators.pipeline import ScoringPipeline
    from vigie.schemas import Alert, RiskScore
    from vigie.schemas.generator import GeneratorConfig, generate

    pipeline = ScoringPipeline()  # every detector, learned fusion: alerts with their reasons and shares
    scores: list[RiskScore] = []
    alerts: list[Alert] = []
    for event, _ in generate(GeneratorConfig(seed=11, duration_hours=6)):
        result = pipeline.process(event)
        scores.extend(result.scores)
        alerts.extend(result.alerts)
    assert len(scores) > 10_000 and len(alerts) > 20
    assert {s.detector for s in scores} == {d.name for d in pipeline.detectors}
    assert any(a.eta is not None for a in alerts) and any(s.cn_code is None for s in scores)
    for model in [*scores, *alerts]:
        assert encode_event(model) == _pydantic_bytes(model)

    base = scores[0].model_dump()
    odd_times = [
        datetime(2026, 3, 2, 8, 0, 0, 123456, tzinfo=UTC),
        datetime(2026, 3, 2, 8, 0, 0, 500000, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 3, 2, 8, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(2026, 3, 2, 8, 0, tzinfo=timezone(timedelta(0))),
    ]
    odd_fields: list[dict[str, Any]] = [
        {"gap": None, "nan": float("nan"), "inf": float("-inf"), "tiny": 1e-7, "big": 1e16, "whole": 3.0},
        {"text": 'quote " backslash \\ slash / tab \t newline \n nul \x00 del \x7f'},
        {"unicode": "Évreux \u2013 東京 \u2028 😀", "exponent": 123456789012345678.0, "neg": -0.0},
    ]
    for when, fields in zip(odd_times, [*odd_fields, {}], strict=True):
        score = RiskScore(**{**base, "event_time": when, "reason": "R\u00e9f. \"x\"\n", "reason_fields": fields,
                             "operator_eori": None, "item_number": None, "score": 1e-9})  # fmt: skip
        constructed = RiskScore.model_construct(**score.model_dump())  # how the detectors build them
        for model in (score, constructed):
            assert encode_event(model) == _pydantic_bytes(model)
    alert = alerts[0].model_copy(update={"eta": odd_times[1], "lead_time_hours": None, "operator_eori": None})
    assert encode_event(alert) == _pydantic_bytes(alert)


def test_duplicate_item_numbers_rejected() -> None:
    data = declaration_dict()
    data["goods_items"] = data["goods_items"] * 2
    assert "unique" in _rejection(data).reason


def test_positive_outcome_needs_control_and_infringement() -> None:
    assert "only a control can be positive" in _rejection(outcome_dict(controlled=False)).reason
    assert "infringement_type is required" in _rejection(outcome_dict(infringement_type=None)).reason


def test_e_ad_needs_arc() -> None:
    assert "arc is required" in _rejection(excise_dict(arc=None)).reason


def test_dead_letter_keeps_bytes_and_is_stable() -> None:
    raw = b"\x00\xffnot json"
    rejected = _rejection(raw)
    first = dead_letter(raw, "file:x:3", rejected)
    second = dead_letter(raw, "file:x:3", rejected)
    assert first.raw == raw and first.raw_size == len(raw)
    assert first.dead_letter_id == second.dead_letter_id
    assert dead_letter(raw, "file:x:4", rejected).dead_letter_id != first.dead_letter_id
    assert type(first).model_validate_json(first.model_dump_json()).raw == raw


def test_json_schemas_accept_valid_and_reject_broken(tmp_path) -> None:
    paths = {p.name.split(".")[0]: p for p in export_json_schemas(tmp_path)}
    assert {"ens", "declaration", "excise", "outcome", "risk_score", "alert", "dead_letter"} <= set(paths)
    for event_type, factory in VALID.items():
        schema = json.loads(paths[event_type].read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema)
        assert not list(validator.iter_errors(factory())), event_type
    schema = json.loads(paths["declaration"].read_text())
    broken = declaration_dict()
    broken["goods_items"][0]["origin_country"] = "ZZ"
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(broken))
    broken = declaration_dict()
    broken["goods_items"][0]["cn_code"] = "6109"
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(broken))


def test_model_is_frozen() -> None:
    event = ImportDeclaration.model_validate(declaration_dict())
    with pytest.raises(Exception, match="frozen"):
        event.mrn = "x"  # type: ignore[misc]
