"""Small hand-built valid events for unit tests (the generator has its own tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from vigie.schemas import (
    Alert,
    ControlOutcome,
    DeadLetter,
    EntrySummaryDeclaration,
    ExciseMovement,
    ImportDeclaration,
    RiskScore,
)
from vigie.sinks.base import SinkMetrics

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def declaration_dict(**overrides: Any) -> dict[str, Any]:
    item = {
        "item_number": 1,
        "cn_code": "61091000",
        "description": "T-shirts of cotton, knitted",
        "origin_country": "CN",
        "dispatch_country": "CN",
        "net_mass_kg": 120.0,
        "supplementary_units": 600.0,
        "supplementary_unit_code": "p/st",
        "invoice_amount": 1300.0,
        "invoice_currency": "USD",
        "customs_value_eur": 1200.0,
        "duty_rate_pct": 12.0,
        "duty_eur": 144.0,
        "vat_eur": 268.8,
    }
    data: dict[str, Any] = {
        "event_type": "declaration",
        "event_id": "decl-0001",
        "event_time": T0.isoformat(),
        "source_system": "delta-g",
        "mrn": "26FR0002300000001A",
        "declarant_eori": "FR12345678900010",
        "importer_eori": "FR98765432100010",
        "seller": {"name": "Ningbo Textile Co", "country": "CN"},
        "customs_office": "FR002300",
        "transport_mode_at_border": "sea",
        "container": True,
        "ens_reference": "26FR0002300000009Z",
        "goods_items": [item],
    }
    data.update(overrides)
    return data


def ens_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "event_type": "ens",
        "event_id": "ens-0001",
        "event_time": (T0 - timedelta(days=30)).isoformat(),
        "source_system": "ics2",
        "ens_reference": "26FR0002300000009Z",
        "transport_mode": "sea",
        "carrier_eori": "DK12345678",
        "consignor": {"name": "Ningbo Textile Co", "country": "CN"},
        "consignee": {"name": "Textiles du Havre", "country": "FR", "eori": "FR98765432100010"},
        "transport_document": "MAEU123456789",
        "countries_of_routing": ["CN", "SG", "FR"],
        "place_of_loading": "CNNGB",
        "first_office_of_entry": "FR002300",
        "eta": (T0 - timedelta(hours=6)).isoformat(),
        "goods_items": [
            {
                "item_number": 1,
                "hs_code": "610910",
                "description": "cotton t-shirts",
                "gross_mass_kg": 130.0,
                "packages": 12,
            }
        ],
    }
    data.update(overrides)
    return data


def excise_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "event_type": "excise",
        "event_id": "exc-0001",
        "event_time": T0.isoformat(),
        "source_system": "emcs",
        "record_type": "e_ad",
        "arc": "26FRA1B2C3D4E5F6G7H81",
        "product_category": "spirits",
        "cn_code": "22083000",
        "operator_eori": "FR98765432100010",
        "consignor_excise_number": "FR012345E0001",
        "consignee_excise_number": "FR099999E0002",
        "volume_litres": 1000.0,
        "alcohol_strength_pct": 40.0,
        "dispatched_quantity": 1000.0,
        "quantity_unit": "l",
        "duty_declared_eur": 7200.0,
    }
    data.update(overrides)
    return data


def outcome_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "event_type": "outcome",
        "event_id": "out-0001",
        "event_time": (T0 + timedelta(hours=5)).isoformat(),
        "source_system": "officer-console",
        "target_type": "declaration",
        "target_reference": "26FR0002300000001A",
        "target_event_id": "decl-0001",
        "controlled": True,
        "positive": True,
        "infringement_type": "undervaluation",
        "duty_recovered_eur": 420.0,
        "tax_recovered_eur": 90.0,
        "officer_id": "agent-042",
        "office": "FR002300",
    }
    data.update(overrides)
    return data


def declaration(**overrides: Any) -> ImportDeclaration:
    return ImportDeclaration.model_validate(declaration_dict(**overrides))


def ens(**overrides: Any) -> EntrySummaryDeclaration:
    return EntrySummaryDeclaration.model_validate(ens_dict(**overrides))


def priced_declaration(i: int, customs_value_eur: float, **overrides: Any) -> ImportDeclaration:
    """Declaration ``decl-NNN`` of :func:`declaration_dict`'s one item at ``customs_value_eur``, lodged
    ``i`` minutes after :data:`T0`, quoting no ENS (a stream of these builds a reference price)."""
    item = {**declaration_dict()["goods_items"][0], "customs_value_eur": customs_value_eur}
    fields = {
        "event_id": f"decl-{i:03d}",
        "mrn": f"26FR00023{i:09d}",
        "ens_reference": None,
        "goods_items": [item],
        "event_time": (T0 + timedelta(minutes=i)).isoformat(),
        **overrides,
    }
    return declaration(**fields)


def excise(**overrides: Any) -> ExciseMovement:
    return ExciseMovement.model_validate(excise_dict(**overrides))


def outcome(**overrides: Any) -> ControlOutcome:
    return ControlOutcome.model_validate(outcome_dict(**overrides))


def score(score_id: str = "score-1", event_time: datetime = T0, **overrides: Any) -> RiskScore:
    """An undervaluation score of item 1 of :func:`declaration` (sink round trips, DDL checks)."""
    data: dict[str, Any] = {
        "score_id": score_id,
        "detector": "undervaluation",
        "subject_event_id": "decl-0001",
        "subject_type": "declaration",
        "subject_reference": "26FR0002300000001A",
        "item_number": 1,
        "event_time": event_time,
        "office": "FR002300",
        "operator_eori": "FR98765432100010",
        "cn_code": "61091000",
        "origin_country": "CN",
        "score": 0.8125,
        "eur_at_stake": 512.25,
        "reason": "Unit value 2.0 EUR/kg is 80% below the norm for 61091000 from CN",
        "reason_fields": {"unit_value": 2.0, "norm": 10.0, "unit": "EUR/kg", "missing": None},
    }
    return RiskScore(**{**data, **overrides})


def alert(alert_id: str = "alert-1", event_time: datetime = T0, **overrides: Any) -> Alert:
    """An alert on :func:`declaration`, arrival 5 h after ``event_time``."""
    data: dict[str, Any] = {
        "alert_id": alert_id,
        "subject_event_id": "decl-0001",
        "subject_type": "declaration",
        "subject_reference": "26FR0002300000001A",
        "event_time": event_time,
        "office": "FR002300",
        "operator_eori": "FR98765432100010",
        "transport_mode": "sea",
        "fused_risk": 0.91,
        "rank": 3,
        "contributions": {"undervaluation": 0.7, "operator_behaviour": 0.21},
        "reasons": ["Unit value far below the norm", "New importer"],
        "eur_at_stake": 812.0,
        "eta": event_time + timedelta(hours=5),
        "lead_time_hours": -1.5,
    }
    return Alert(**{**data, **overrides})


def dead_letter(raw: bytes, dead_letter_id: str = "dl-1", received_at: datetime = T0, **overrides: Any) -> DeadLetter:
    """A dead letter keeping ``raw`` (any bytes) with its size."""
    data: dict[str, Any] = {
        "dead_letter_id": dead_letter_id,
        "received_at": received_at,
        "source": "kafka:declarations:0:42",
        "reason": "not valid UTF-8",
        "field": None,
        "raw_size": len(raw),
        "raw": raw,
    }
    return DeadLetter(**{**data, **overrides})


class MemorySink:
    """A :class:`~vigie.sinks.base.Sink` keeping records in a list (for the in-process runner)."""

    def __init__(self) -> None:
        self.records: list[BaseModel] = []
        self.metrics = SinkMetrics()

    def write(self, records: Any) -> None:
        self.records.extend(records)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def query(self, sql: str) -> list[dict[str, Any]]:
        raise AssertionError(f"a MemorySink only keeps what is written: nothing may query it ({sql!r})")


def timer_events(last: Any) -> list[Any]:
    """e-AD A never received, e-AD B received two days later, then a clock record from a third
    consignor 8 days on: the event time passes A's deadline with nothing more from A's consignor."""
    t = last.event_time
    a = excise(event_id="timer-ead-a", arc="26FRT0000000000000A11", consignor_excise_number="FRTIMERA00001",
               event_time=(t + timedelta(hours=1)).isoformat())  # fmt: skip
    b = excise(event_id="timer-ead-b", arc="26FRT0000000000000B11", consignor_excise_number="FRTIMERB00001",
               event_time=(t + timedelta(hours=1)).isoformat())  # fmt: skip
    b_receipt = excise(event_id="timer-receipt-b", record_type="report_of_receipt", arc=b.arc,
                       consignor_excise_number=b.consignor_excise_number, received_quantity=1000.0,
                       event_time=(t + timedelta(days=2)).isoformat())  # fmt: skip
    clock = excise(event_id="timer-clock", record_type="release_for_consumption", arc=None,
                   consignor_excise_number="FRTIMERC00001", event_time=(t + timedelta(days=8)).isoformat())  # fmt: skip
    return [a, b, b_receipt, clock]


def receipt_behind_events(arc_x: str, arc_w: str, arc_ahead: str) -> list[Any]:
    """e-ADs X and W at T0; a record 6 days 3 h on (read ahead, from W's partition); X's report of
    receipt, on time at 5 days 20 h (read last, from X's partition). By the latest event time both
    deadlines (6 days) have passed before the receipt is read; by the earliest partition's, none has."""
    x = excise(event_id="ead-x", arc=arc_x, consignor_excise_number="FRKX000000001", event_time=T0.isoformat())
    w = excise(event_id="ead-w", arc=arc_w, consignor_excise_number="FRKW000000001", event_time=T0.isoformat())
    ahead = excise(event_id="ahead", arc=arc_ahead, consignor_excise_number="FRKZ000000001",
                   event_time=(T0 + timedelta(days=6, hours=3)).isoformat())  # fmt: skip
    receipt = excise(event_id="receipt-x", record_type="report_of_receipt", arc=arc_x, received_quantity=1000.0,
                     consignor_excise_number=x.consignor_excise_number,
                     event_time=(T0 + timedelta(days=5, hours=20)).isoformat())  # fmt: skip
    return [x, w, ahead, receipt]
