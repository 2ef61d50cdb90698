"""Sinks against a real chdb store in temporary directories, and the DDL per server version."""

from __future__ import annotations

import base64
import gc
import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from tests import factories
from tests.stored import read_back
from vigie.schemas import (
    Alert,
    ControlOutcome,
    DeadLetter,
    EnsGoodsItem,
    EntrySummaryDeclaration,
    ExciseMovement,
    GoodsItem,
    ImportDeclaration,
    Party,
    RiskScore,
)
from vigie.sinks import base
from vigie.sinks.base import BufferedSink, BufferPolicy, RowBuffer, Sink, SinkBufferFull
from vigie.sinks.chdb_sink import ChdbPathBusy, ChdbSink
from vigie.sinks.ddl import (
    COMPACT_PART_BYTES,
    LEGACY,
    MODERN,
    TABLES,
    ColumnBatch,
    Kind,
    RowPlans,
    ServerProfile,
    Table,
    column_writers,
    empty_columns,
    json_text,
    render_ddl,
    retention_statements,
    rows_for,
)

# Millisecond precision and a non-UTC offset: what DateTime64(3, 'UTC') must give back.
T0 = datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=timezone(timedelta(hours=2)))


# --- events built by hand -------------------------------------------------------------


def make_ens(event_id: str = "ens-1", notify: bool = True) -> EntrySummaryDeclaration:
    return EntrySummaryDeclaration(
        event_id=event_id,
        event_time=T0,
        source_system="ics2-test",
        ens_reference="26FR0000000000E001",
        transport_mode="sea",
        carrier_eori="FRCARRIER0001",
        consignor=Party(name="Shenzhen Export Co", country="CN"),
        consignee=Party(name="Importateur SARL", country="FR", eori="FR123456789"),
        notify_party=Party(name="Jean Dupont", country="FR") if notify else None,
        transport_document="BL-778899",
        countries_of_routing=["CN", "SG", "FR"],
        place_of_loading="CNSHA",
        first_office_of_entry="FR000690",
        eta=T0 + timedelta(days=21, hours=3),
        goods_items=[
            EnsGoodsItem(
                item_number=1, hs_code="851712", description="mobile phones", gross_mass_kg=120.5, packages=10
            ),
            EnsGoodsItem(item_number=2, hs_code="640399", description="shoes", gross_mass_kg=300.0, packages=25),
        ],
    )


def make_goods_item(number: int) -> GoodsItem:
    return GoodsItem(
        item_number=number,
        cn_code="85171200",
        taric_code="8517120000" if number == 1 else None,
        description=f"phones lot {number}",
        origin_country="CN",
        dispatch_country="CN",
        net_mass_kg=10.25 * number,
        supplementary_units=100.0 if number == 2 else None,
        supplementary_unit_code="p/st" if number == 2 else None,
        invoice_amount=1234.56 * number,
        invoice_currency="USD",
        customs_value_eur=1150.1 * number,
        statistical_value_eur=1160.0 if number == 3 else None,
        duty_rate_pct=0.0,
        duty_eur=0.0,
        vat_eur=230.02 * number,
    )


def make_declaration(event_id: str = "decl-1", items: int = 3) -> ImportDeclaration:
    return ImportDeclaration(
        event_id=event_id,
        event_time=T0,
        source_system="delta-g",
        mrn="26FR0000000000D001",
        declarant_eori="FRDECLARANT01",
        importer_eori="FRIMPORTER001",
        seller=Party(name="Guangzhou Trading Ltd", country="CN", eori="CN9988776655"),
        customs_office="FR000690",
        transport_mode_at_border="air",
        container=True,
        goods_items=[make_goods_item(n) for n in range(1, items + 1)],
    )


def make_excise(event_id: str = "exc-1") -> ExciseMovement:
    return ExciseMovement(
        event_id=event_id,
        event_time=T0,
        source_system="emcs",
        record_type="e_ad",
        arc="26FRA0000000000000011",
        product_category="spirits",
        cn_code="22083000",
        operator_eori="FRWAREHOUSE01",
        consignor_excise_number="FR00000000001",
        consignee_excise_number="DE00000000002",
        volume_litres=1000.0,
        alcohol_strength_pct=40.0,
        dispatched_quantity=1000.0,
        quantity_unit="l",
        duty_declared_eur=7340.5,
    )


def make_outcome(event_id: str = "out-1") -> ControlOutcome:
    return ControlOutcome(
        event_id=event_id,
        event_time=T0,
        source_system="control-app",
        target_type="declaration",
        target_reference="26FR0000000000D001",
        target_event_id="decl-1",
        item_number=2,
        controlled=True,
        positive=True,
        infringement_type="undervaluation",
        duty_recovered_eur=120.0,
        tax_recovered_eur=48.5,
        officer_id="officer-42",
        office="FR000690",
        selection="engine_alert",
        alert_id="alert-1",
    )


# The records of make_declaration's world: same MRN, office, importer, CN code.
_SUBJECT = {"subject_event_id": "decl-1", "subject_reference": "26FR0000000000D001", "office": "FR000690",
            "operator_eori": "FRIMPORTER001"}  # fmt: skip


def make_score(score_id: str = "score-1") -> RiskScore:
    return factories.score(
        score_id, T0, **_SUBJECT, item_number=2, cn_code="85171200",
        reason="Unit value 3.1 EUR/kg is 92% below the norm for 85171200 from CN",
        reason_fields={"unit_value": 3.1, "norm": 38.75, "unit": "EUR/kg", "missing": None},
    )  # fmt: skip


def make_alert(alert_id: str = "alert-1") -> Alert:
    return factories.alert(alert_id, T0, **_SUBJECT, transport_mode="air")


def make_dead_letter(raw: bytes, dead_letter_id: str = "dl-1") -> DeadLetter:
    return factories.dead_letter(
        raw, dead_letter_id, T0, source="file:inbox/events.jsonl:17", reason="not valid UTF-8: byte 0xff at offset 0"
    )


ALL_RECORDS = [
    make_ens(),
    make_ens("ens-2", notify=False),
    make_declaration(),
    make_excise(),
    make_outcome(),
    make_score(),
    make_alert(),
    make_dead_letter(b'\xff\xfe\x00{"a": "\\u00e9"}\n\r\t\x80 end'),
]


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[ChdbSink]:
    with ChdbSink(tmp_path / "store", batch_size=1000) as opened:
        yield opened


# --- DDL ------------------------------------------------------------------------------


def test_server_profile_parses_versions() -> None:
    assert ServerProfile.parse("26.9.2.1").modern
    assert ServerProfile.parse("22.3.1").modern
    legacy = ServerProfile.parse("18.16.1")
    assert not legacy.modern and legacy.version == (18, 16, 1)
    assert not ServerProfile.parse("21.8.15.7").modern
    with pytest.raises(ValueError):
        ServerProfile.parse("unknown")


def test_every_model_field_has_a_column() -> None:
    for table in TABLES.values():
        covered = {col.path[0] for col in table.columns if not col.inherited}
        children = {t.via for t in TABLES.values() if t.parent == table.name}
        expected = set(table.model.model_fields) - {"event_type"} - children
        assert covered == expected, table.name


def test_modern_ddl_executes_on_chdb(sink: ChdbSink) -> None:
    assert sink.profile.modern
    tables = {r["name"] for r in sink.query("SELECT name FROM system.tables WHERE database = 'vigie'")}
    assert set(TABLES) <= tables  # plus the indicator views of vigie.sinks.views
    types = {
        (r["table"], r["name"]): r["type"]
        for r in sink.query("SELECT table, name, type FROM system.columns WHERE database = 'vigie'")
    }
    assert types["ens", "event_time"] == "DateTime64(3, 'UTC')"
    assert types["ens", "consignor_country"] == "LowCardinality(String)"
    assert types["ens", "notify_party_country"] == "LowCardinality(Nullable(String))"
    assert types["ens", "countries_of_routing"] == "Array(String)"
    assert types["alerts", "contributions"] == "Map(String, Float64)"
    assert types["scores", "reason_fields"] == "String"
    assert types["declaration_items", "item_number"] == "UInt16"
    assert types["declarations", "container"] == "UInt8"
    create_ens = sink.query("SHOW CREATE TABLE vigie.ens")[0]["statement"]
    create_scores = sink.query("SHOW CREATE TABLE vigie.scores")[0]["statement"]
    create_items = sink.query("SHOW CREATE TABLE vigie.ens_items")[0]["statement"]
    assert "TTL" in create_ens and "1826" in create_ens
    assert "TTL" in create_scores, "scores name the operator (EORI)"
    assert "TTL" not in create_items, "ENS items: goods, no party"
    # Rendering again on an existing store is a no-op.
    for statement in render_ddl(sink.profile):
        sink.query(statement)


def test_legacy_ddl_avoids_modern_features() -> None:
    statements = render_ddl(ServerProfile.parse("18.16.1"), ttl_days=30, compact_part_bytes=COMPACT_PART_BYTES)
    text = "\n".join(statements)
    for feature in ("DateTime64", "LowCardinality", "Map(", "TTL", "EPHEMERAL", "JSON", "min_bytes_for_wide_part"):
        assert feature not in text, feature
    assert text.count("ENGINE = ReplacingMergeTree(ingested_at)") == len(TABLES)
    assert "PARTITION BY toYYYYMM(event_time)" in text
    assert "event_time DateTime('UTC')" in text
    assert re.search(r"\n    raw String,\n", text)
    assert "contributions String" in text


def _score_part_formats(sink: ChdbSink) -> set[tuple[str, int]]:
    """(part type, rows) of the active parts of the ``scores`` table."""
    parts = sink.query(
        "SELECT part_type, sum(rows) AS n FROM system.parts "
        "WHERE database = 'vigie' AND table = 'scores' AND active GROUP BY part_type"
    )
    return {(r["part_type"], r["n"]) for r in parts}


def test_embedded_store_writes_compact_parts(tmp_path: Path) -> None:
    """The embedded store's tables carry COMPACT_PART_BYTES; the threshold decides each part's
    format (0: every part wide, as ClickHouse writes parts past its default of 10 MiB), also for
    a store created with another one."""
    assert "SETTINGS min_bytes_for_wide_part" not in "\n".join(render_ddl(MODERN))  # servers: their own
    with pytest.raises(ValueError):
        render_ddl(MODERN, compact_part_bytes=-1)
    formats = {}
    for threshold in (COMPACT_PART_BYTES, 0):
        with ChdbSink(tmp_path / str(threshold), compact_part_bytes=threshold) as sink:
            create = sink.query("SHOW CREATE TABLE vigie.scores")[0]["statement"]
            assert f"min_bytes_for_wide_part = {threshold}" in create
            sink.write([factories.score(f"score-{i}") for i in range(50)])
            sink.flush()
            formats[threshold] = _score_part_formats(sink)
    assert formats == {COMPACT_PART_BYTES: {("Compact", 50)}, 0: {("Wide", 50)}}
    # An older store takes the threshold on when opened: new parts follow it, old ones stay.
    with ChdbSink(tmp_path / "0") as reopened:
        create = reopened.query("SHOW CREATE TABLE vigie.scores")[0]["statement"]
        assert f"min_bytes_for_wide_part = {COMPACT_PART_BYTES}" in create
        reopened.query("SYSTEM STOP MERGES vigie.scores")  # the two parts stay apart to be counted
        reopened.write([factories.score(f"later-{i}") for i in range(20)])
        reopened.flush()
        assert _score_part_formats(reopened) == {("Wide", 50), ("Compact", 20)}


def test_ttl_is_optional() -> None:
    assert not any("TTL" in s for s in render_ddl(MODERN, ttl_days=None))
    assert any("INTERVAL 30 DAY" in s for s in render_ddl(MODERN, ttl_days=30))
    with pytest.raises(ValueError):
        render_ddl(MODERN, database="vigie; DROP")


# --- rows -----------------------------------------------------------------------------


def test_declaration_rows() -> None:
    decl = make_declaration(items=3)
    rows = rows_for(decl)
    assert set(rows) == {"declarations", "declaration_items"}
    (head,) = rows["declarations"]
    items = rows["declaration_items"]
    assert len(items) == 3
    assert head["seller_name"] == "Guangzhou Trading Ltd" and head["seller_eori"] == "CN9988776655"
    assert head["container"] == 1
    assert head["event_time"] == T0 and head["event_time"].tzinfo is UTC
    for number, item in enumerate(items, start=1):
        assert item["item_number"] == number
        assert item["event_id"] == "decl-1" and item["mrn"] == decl.mrn
        assert item["importer_eori"] == "FRIMPORTER001" and item["customs_office"] == "FR000690"
        assert item["event_time"].tzinfo is UTC


def test_rows_follow_the_profile() -> None:
    alert = make_alert()
    assert rows_for(alert)["alerts"][0]["contributions"] == alert.contributions
    legacy = RowPlans(LEGACY).rows_for(alert)["alerts"][0]
    assert orjson.loads(legacy["contributions"]) == alert.contributions
    with pytest.raises(TypeError):
        rows_for(Party(name="x", country="FR"))


def _columns(records: list[BaseModel]) -> dict[str, dict[str, list[Any]]]:
    """What the column writers buffer for ``records``: per table, per column, the values."""
    columns = empty_columns()
    writers = column_writers(columns)
    added = sum(writers[type(record)](record) for record in records)
    assert added == sum(len(lists[0]) for lists in columns.values())
    named = {}
    for name, lists in columns.items():
        table = TABLES[name]
        assert len(lists) == len(table.columns) and len({len(values) for values in lists}) == 1
        named[name] = {col.name: values for col, values in zip(table.columns, lists, strict=True)}
    return named


def _buffered_rows(records: list[BaseModel]) -> dict[str, list[dict[str, Any]]]:
    """The buffered values of ``records`` as one dict per row, per table."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, columns in _columns(records).items():
        names = list(columns)
        rows[name] = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    return rows


def test_column_writers_hold_what_rows_for_converts() -> None:
    """The columnar path (model values per column) and rows_for (converted dicts) agree on every column."""
    buffered = _buffered_rows(ALL_RECORDS)
    for record in ALL_RECORDS:
        for name, rows in rows_for(record).items():
            for row in rows:
                key = TABLES[name].key
                (raw,) = [t for t in buffered[name] if all(t[k] == row[k] for k in key)]
                for col in TABLES[name].columns:
                    value, converted = raw[col.name], row[col.name]
                    if col.kind is Kind.DATETIME:
                        assert value == converted and value.utcoffset() == T0.utcoffset()  # as the model holds it
                    elif col.kind is Kind.JSON:
                        assert json_text(value) == converted
                    else:
                        assert value == converted, (name, col.name)


def test_write_is_all_or_nothing() -> None:
    sink = _FlakySink(BufferPolicy(batch_size=100, max_delay_s=3600, max_buffer_rows=1000))
    sink.write([make_score("kept")])
    with pytest.raises(TypeError, match="no table stores Party"):
        sink.write([make_declaration(), Party(name="x", country="FR"), make_score("lost")])
    broken = RiskScore.model_construct(score_id="broken")  # no validation: most fields missing
    with pytest.raises(TypeError, match="cannot store this RiskScore"):
        sink.write([make_ens(), broken])
    assert sink.metrics.buffered_rows == 1
    sink.flush()
    assert set(sink.stored) == {"scores"} and [r["score_id"] for r in sink.stored["scores"]] == ["kept"]


def test_a_value_that_does_not_fit_names_its_column(sink: ChdbSink) -> None:
    good = make_score("good")
    bad = good.model_copy(update={"score_id": "bad", "score": "high"})  # model_copy does not validate
    with pytest.raises(TypeError, match=r"scores\.score: expected a number, got str"):
        sink.write([good, bad])  # refused when written: nothing of that call stays
    assert sink.metrics.buffered_rows == 0
    missing = good.model_copy(update={"score_id": "missing", "reason": None})
    with pytest.raises(TypeError, match=r"scores\.reason: missing value, the column is not Nullable"):
        sink.write([missing])
    wide = make_declaration(items=2)
    wide.goods_items[1].__dict__["item_number"] = 70_000  # UInt16
    with pytest.raises(TypeError, match=r"declaration_items\.item_number: 70000 does not fit in 16 bits"):
        sink.write([good, wide])
    sink.write([good])
    sink.flush()
    assert sink.metrics.rows_written == {"scores": 1}
    assert [r["score_id"] for r in sink.query("SELECT score_id FROM vigie.scores FINAL")] == ["good"]


# --- chdb round trips -------------------------------------------------------------------


def test_every_record_type_round_trips(sink: ChdbSink) -> None:
    sink.write(ALL_RECORDS)
    sink.flush()
    for record in ALL_RECORDS:
        back = read_back(sink, record)
        assert back.model_dump() == record.model_dump(), type(record).__name__


def test_declaration_with_three_items(sink: ChdbSink) -> None:
    sink.write([make_declaration(items=3)])
    sink.flush()
    rows = sink.query("SELECT item_number, mrn, taric_code FROM vigie.declaration_items FINAL ORDER BY item_number")
    assert [r["item_number"] for r in rows] == [1, 2, 3]
    assert {r["mrn"] for r in rows} == {"26FR0000000000D001"}
    assert [r["taric_code"] for r in rows] == ["8517120000", None, None]
    assert sink.metrics.rows_written == {"declarations": 1, "declaration_items": 3}


def test_writing_twice_counts_once_with_final(sink: ChdbSink) -> None:
    sink.write(ALL_RECORDS)
    sink.flush()
    sink.write(ALL_RECORDS)  # a replay after a restart, in another part
    sink.write(ALL_RECORDS)  # and a duplicate inside one batch
    sink.flush()
    expected = {"ens": 2, "ens_items": 4, "declarations": 1, "declaration_items": 3}
    expected |= {"excise": 1, "outcomes": 1, "scores": 1, "alerts": 1, "dead_letters": 1}
    for table, count in expected.items():
        assert sink.query(f"SELECT count() AS n FROM vigie.{table} FINAL")[0]["n"] == count, table
        raw = sink.query(f"SELECT count() AS n FROM vigie.{table}")[0]["n"]
        assert raw in (count, 2 * count, 3 * count)  # merges may already have collapsed copies
    assert sink.metrics.rows_written["declaration_items"] == 9


def test_reading_the_same_bad_bytes_again_counts_once(sink: ChdbSink) -> None:
    """A re-run, a resume or a re-delivery reads the same bytes again: same dead_letter_id, a
    later received_at (the time of each read), possibly another month. One dead letter under FINAL."""
    raw = b"this is not json"
    first = make_dead_letter(raw, "dl-same")
    sink.write([first])
    sink.flush()
    again = first.model_copy(update={"received_at": first.received_at + timedelta(days=40)})
    sink.write([again])
    sink.flush()
    rows = sink.query("SELECT count() AS n, uniqExact(dead_letter_id) AS ids FROM vigie.dead_letters FINAL")
    assert rows == [{"n": 1, "ids": 1}]
    for profile in (MODERN, LEGACY):
        create = next(s for s in render_ddl(profile) if "vigie.dead_letters\n" in s)
        assert "ORDER BY (dead_letter_id)" in create and "PARTITION BY" not in create, profile


def test_rows_dated_long_ago_or_past_2106_are_kept(sink: ChdbSink) -> None:
    """Retention counts from storage: an accepted event dated 2019 (a back-fill), or past
    DateTime's 2106, is stored and stays after merges apply the TTL."""
    old = make_ens("ens-2019").model_copy(update={"event_time": datetime(2019, 5, 6, 7, 8, 9, tzinfo=UTC)})
    late = make_ens("ens-2107").model_copy(update={"event_time": datetime(2107, 1, 2, tzinfo=UTC)})
    outcome = make_outcome("out-2019").model_copy(update={"event_time": datetime(2019, 5, 6, tzinfo=UTC)})
    sink.write([old, late, outcome, make_ens("ens-now")])
    sink.flush()
    for table in ("ens", "outcomes"):
        sink.query(f"OPTIMIZE TABLE vigie.{table} FINAL")  # a merge applies the TTL again
    ids = [r["event_id"] for r in sink.query("SELECT event_id FROM vigie.ens FINAL ORDER BY event_id")]
    assert ids == ["ens-2019", "ens-2107", "ens-now"]
    assert sink.query("SELECT event_id FROM vigie.outcomes FINAL") == [{"event_id": "out-2019"}]
    create = sink.query("SHOW CREATE TABLE vigie.ens")[0]["statement"]
    assert "TTL ingested_at + toIntervalDay(1826)" in create


def test_reopening_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with ChdbSink(path) as first:
        first.write([make_score("a"), make_score("b")])
    # close() flushed; a restart in the same process reopens the same directory.
    with ChdbSink(path) as second:
        assert second.query("SELECT count() AS n FROM vigie.scores FINAL")[0]["n"] == 2
        second.write([make_score("b"), make_score("c")])
    with ChdbSink(path) as third:
        assert [r["score_id"] for r in third.query("SELECT score_id FROM vigie.scores FINAL ORDER BY 1")] == [
            "a",
            "b",
            "c",
        ]


def test_one_directory_per_process(tmp_path: Path) -> None:
    with ChdbSink(tmp_path / "one") as first:
        with ChdbSink(tmp_path / "one") as same:  # same path: shares the embedded server
            same.write([make_score()])
        with pytest.raises(ChdbPathBusy):
            ChdbSink(tmp_path / "two")
        assert first.query("SELECT count() AS n FROM vigie.scores")[0]["n"] == 1
    with ChdbSink(tmp_path / "two") as other:  # free again once the first is closed
        assert other.query("SELECT count() AS n FROM vigie.scores")[0]["n"] == 0


def test_dead_letter_bytes_are_lossless(sink: ChdbSink) -> None:
    small = bytes(range(256)) + b"\xc3\x28 invalid utf-8 \xed\xa0\x80"
    large = os.urandom(10 * 1024 * 1024)
    sink.write([make_dead_letter(small, "dl-small"), make_dead_letter(large, "dl-large")])
    sink.flush()
    rows = sink.query(
        "SELECT dead_letter_id, base64Encode(raw) AS raw_b64, length(raw) AS n, raw_size "
        "FROM vigie.dead_letters FINAL ORDER BY dead_letter_id"
    )
    by_id = {r["dead_letter_id"]: r for r in rows}
    for key, payload in (("dl-small", small), ("dl-large", large)):
        assert by_id[key]["n"] == by_id[key]["raw_size"] == len(payload)
        assert base64.b64decode(by_id[key]["raw_b64"]) == payload
    # Selected directly, non-UTF-8 bytes come back as surrogate escapes.
    direct = sink.query("SELECT raw FROM vigie.dead_letters FINAL WHERE dead_letter_id = 'dl-small'")[0]["raw"]
    assert direct.encode("utf-8", "surrogateescape") == small


def test_datetimes_land_in_utc_milliseconds(sink: ChdbSink) -> None:
    # 09:26:53.589999 at +02:00: 07:26:53.589 UTC, the microseconds truncated, not rounded.
    precise = T0.replace(microsecond=589999)
    alert = make_alert().model_copy(update={"event_time": precise, "eta": None})
    sink.write([alert])
    sink.flush()
    (row,) = sink.query("SELECT toString(event_time) AS at, eta FROM vigie.alerts FINAL")
    assert row == {"at": "2026-03-14 07:26:53.589", "eta": None}


# --- buffering ------------------------------------------------------------------------


def test_flushes_at_batch_size(tmp_path: Path) -> None:
    with ChdbSink(tmp_path / "store", batch_size=5, max_delay_s=3600) as sink:
        assert sink.metrics.lag_seconds == 0.0
        sink.write([make_score(f"s-{i}") for i in range(4)])
        assert sink.metrics.batches == 0 and sink.metrics.buffered_rows == 4
        time.sleep(0.02)
        assert sink.metrics.lag_seconds >= 0.02  # the oldest buffered row's age
        assert sink.query("SELECT count() AS n FROM vigie.scores")[0]["n"] == 0
        before = time.perf_counter()
        sink.write([make_score("s-4")])  # due: sent on the sender thread, the write returns
        assert sink.metrics.batches == 0 and sink.metrics.buffered_rows == 5  # counted until accounted for
        assert sink.query("SELECT count() AS n FROM vigie.scores")[0]["n"] == 5  # a query waits for the send
        assert sink.metrics.batches == 1 and sink.metrics.buffered_rows == 0
        assert sink.metrics.lag_seconds == 0.0
        assert sink.metrics.rows_written == {"scores": 5}
        assert sink.metrics.last_flush_at is not None
        assert list(sink.metrics.recent_flush_rows) == [5] and len(sink.metrics.recent_flush_seconds) == 1
        (ended,) = sink.metrics.recent_flush_ended  # when the send finished, on the same clock
        assert before < ended - sink.metrics.recent_flush_seconds[0] < ended < time.perf_counter()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_buffer_delay_and_backoff() -> None:
    clock = _Clock()
    buffer = RowBuffer(BufferPolicy(batch_size=100, max_delay_s=2.0, max_buffer_rows=150), clock=clock)
    assert not buffer.due()
    buffer.write([make_score("a")])
    clock.now = 1.9
    assert not buffer.due()
    clock.now = 2.0
    assert buffer.due()
    buffer.backoff()
    assert not buffer.due()
    clock.now = 4.0
    assert buffer.due()
    buffer.write([make_score(f"s{k}") for k in range(140)])
    assert buffer.size == 141 and not buffer.over_limit() and buffer.over_limit(unsent=10)
    buffer.write([make_score(f"t{k}") for k in range(10)])
    assert buffer.over_limit()
    buffer.discard("scores")
    assert buffer.size == 0 and not buffer.due() and buffer.peek("scores")[0] == []


def test_size_flush_sends_big_table_groups_and_small_ones_wait_for_their_clock() -> None:
    clock = _Clock()
    buffer = RowBuffer(BufferPolicy(batch_size=40, max_delay_s=2.0, max_buffer_rows=400), clock=clock)
    buffer.write([make_alert(f"a{k}") for k in range(2)])  # 2 rows: under an eighth of a batch
    clock.now = 1.0
    buffer.write([make_ens(f"e{k}") for k in range(2)])  # 2 headers + 4 items: a group of 6
    buffer.write([make_score(f"s{k}") for k in range(32)])
    assert buffer.size == 40 and buffer.due()
    # Scores (the largest) and the ENS group (6 >= 40 / 8), the items with their header;
    # the two alerts stay.
    assert buffer.due_tables() == ["ens", "ens_items", "scores"]
    for name in buffer.due_tables():
        buffer.discard(name)
    assert buffer.size == 2 and not buffer.due() and buffer.due_tables() == []
    clock.now = 2.0  # the alerts' first row is max_delay_s old: their own clock sends them
    assert buffer.due() and buffer.due_tables() == ["alerts"]


def test_size_flush_sends_at_least_the_largest_group(monkeypatch: pytest.MonkeyPatch) -> None:
    # With today's seven groups one always holds an eighth of a batch; a larger share (or
    # more tables) must still send something, or the buffer would only drain at its limit.
    monkeypatch.setattr(base, "SIZE_FLUSH_SHARE", 1.0)
    buffer = RowBuffer(BufferPolicy(batch_size=40, max_delay_s=60.0, max_buffer_rows=400), clock=_Clock())
    buffer.write([make_score(f"s{k}") for k in range(30)] + [make_alert(f"a{k}") for k in range(10)])
    assert buffer.due_tables() == ["scores"]


class _FlakySink(BufferedSink):
    """In-memory sink whose inserts fail while ``down`` is set."""

    def __init__(self, policy: BufferPolicy, background: bool = False, senders: int = 1) -> None:
        super().__init__(MODERN, policy, background=background, senders=senders)
        self.down = False
        self.stored: dict[str, list[dict[str, Any]]] = {}
        self.gate = threading.Event()  # background tests hold sends here
        self.gate.set()
        self.sending = threading.Event()
        self.sender_threads: set[str] = set()

    def _encode(self, table: Table, columns: ColumnBatch, rows: int) -> list[dict[str, Any]]:
        assert all(len(values) == rows for values in columns)
        names = [col.name for col in table.columns]
        return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]

    def _send(self, table: Table, payload: list[dict[str, Any]], rows: int, lane: int = 0) -> None:
        self.sender_threads.add(threading.current_thread().name)
        self.sending.set()
        assert self.gate.wait(30), "test never opened the gate"
        if self.down:
            raise ConnectionError("store unreachable")
        self.stored.setdefault(table.name, []).extend(payload)

    def _disconnect(self) -> None:
        pass

    def query(self, sql: str) -> list[dict[str, Any]]:
        return []


def test_failed_flush_keeps_rows_until_the_buffer_is_full() -> None:
    sink = _FlakySink(BufferPolicy(batch_size=2, max_delay_s=0.0, max_buffer_rows=4))
    assert isinstance(sink, Sink)
    sink.down = True
    sink.write([make_score("a"), make_score("b")])  # flush fails quietly, rows kept
    assert sink.metrics.failed_flushes == 1 and sink.metrics.buffered_rows == 2
    assert "store unreachable" in (sink.metrics.last_error or "")
    sink.write([make_score("c"), make_score("d")])  # at the bound, still backing off
    assert sink.metrics.buffered_rows == 4
    with pytest.raises(ConnectionError):
        sink.write([make_score("e")])  # above the bound: back-pressure
    assert sink.metrics.buffered_rows == 5
    sink.down = False
    sink.close()
    assert [r["score_id"] for r in sink.stored["scores"]] == ["a", "b", "c", "d", "e"]
    with pytest.raises(RuntimeError):
        sink.write([make_score("f")])


@pytest.mark.parametrize("background", [False, True])
def test_a_writer_that_goes_on_after_the_error_cannot_grow_the_buffer(background: bool) -> None:
    """Once over max_buffer_rows with the store down, each write() tries the store again first and,
    while it fails, refuses its records (SinkBufferFull, the store's error as cause), buffering none."""
    sink = _FlakySink(BufferPolicy(batch_size=2, max_delay_s=0.0, max_buffer_rows=10), background=background)
    sink.down = True
    accepted: list[str] = []
    refused = 0
    for k in range(50):
        ids = [f"s{k}-{j}" for j in range(3)]
        try:
            sink.write([make_score(i) for i in ids])
        except SinkBufferFull as exc:
            refused += 1
            assert isinstance(exc.__cause__, ConnectionError) and "not buffered" in str(exc)
            continue
        except ConnectionError:
            pass  # the write that crossed the bound: back-pressure failed, its rows are kept
        accepted.extend(ids)
        assert sink.metrics.buffered_rows <= 10 + 3  # the bound, plus the one call that crossed it
    assert sink.metrics.buffered_rows == len(accepted) <= 13 and refused >= 45
    sink.down = False
    sink.write([make_score("after")])  # the store is back: the buffer drains, rows are taken again
    accepted.append("after")
    sink.close()
    assert sorted(r["score_id"] for r in sink.stored["scores"]) == sorted(accepted)


def test_background_sends_let_the_writer_go_on_and_keep_failed_rows() -> None:
    sink = _FlakySink(BufferPolicy(batch_size=2, max_delay_s=0.0, max_buffer_rows=6), background=True)
    sink.gate.clear()
    sink.write([make_score("a"), make_score("b")])  # due: handed to the sender, which is held
    assert sink.sending.wait(30)
    assert sink.stored == {} and sink.metrics.buffered_rows == 2  # not stored yet, still counted
    sink.down = True
    sink.gate.set()  # the held send fails
    sink.write([make_score("c")])  # within the bound: the writer goes on
    sink.settle()
    assert sink.metrics.failed_flushes == 1 and "store unreachable" in (sink.metrics.last_error or "")
    assert sink.metrics.buffered_rows == 3 and sink.stored == {}
    sink.down = False
    sink.flush()  # the failed payload goes first, then the newer row
    assert [r["score_id"] for r in sink.stored["scores"]] == ["a", "b", "c"]
    assert sink.metrics.buffered_rows == 0 and sink.metrics.rows_written == {"scores": 3}
    assert sink.metrics.recent_flush_seconds and threading.current_thread().name not in sink.sender_threads
    sink.down = True
    sink.write([make_score(f"d{k}") for k in range(4)])
    with pytest.raises(ConnectionError):  # above the bound with unsent rows: back-pressure waits and raises
        sink.write([make_score(f"e{k}") for k in range(3)])
    sink.down = False
    sink.close()
    assert len(sink.stored["scores"]) == 10 and sink.metrics.buffered_rows == 0


@pytest.mark.parametrize("senders", [1, 2])
def test_a_sink_dropped_without_close_lets_its_sender_threads_go(senders: int) -> None:
    sink = _FlakySink(BufferPolicy(batch_size=1, max_delay_s=0.0, max_buffer_rows=10), background=True, senders=senders)
    sink.write([make_score("a"), make_alert("b")])  # two tables: two lanes when there are two senders
    sink.settle()
    threads = set(sink.sender_threads)
    assert len(threads) == senders and threads <= {t.name for t in threading.enumerate()}
    del sink
    gc.collect()
    deadline = time.monotonic() + 30
    while threads & {t.name for t in threading.enumerate()} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not threads & {t.name for t in threading.enumerate()}


def test_open_sink_names_the_embedded_store(tmp_path: Path) -> None:
    from vigie.sinks.open import open_sink

    assert open_sink(" none ") is None
    sink = open_sink(f"chdb:{tmp_path / 'store'}")
    assert isinstance(sink, ChdbSink)
    sink.close()


def test_sink_size_flush_leaves_small_tables_for_their_clock_and_flush_sends_all() -> None:
    sink = _FlakySink(BufferPolicy(batch_size=10, max_delay_s=3600, max_buffer_rows=100))
    sink.write([make_alert("a")])
    sink.write([make_score(f"s{k}") for k in range(9)])  # ten rows: due by size
    assert {name: len(rows) for name, rows in sink.stored.items()} == {"scores": 9}
    assert sink.metrics.buffered_rows == 1  # the alert waits, and counts as buffered
    sink.flush()
    assert {name: len(rows) for name, rows in sink.stored.items()} == {"scores": 9, "alerts": 1}
    assert sink.metrics.buffered_rows == 0


class _HeldSink(_FlakySink):
    """Background sink whose first send completes only once the writer waits for a send, and
    whose later sends each wait for a permit."""

    def __init__(self, policy: BufferPolicy) -> None:
        super().__init__(policy, background=True)
        self.writer_waits = threading.Event()
        self.permits = threading.Semaphore(0)
        self.sends = 0

    def _harvest(self, block: bool, raise_errors: bool, jobs: int | None = None) -> None:
        if block and self._jobs:
            self.writer_waits.set()
        super()._harvest(block, raise_errors, jobs)

    def _send(self, table: Table, payload: list[dict[str, Any]], rows: int, lane: int = 0) -> None:
        self.sends += 1
        if self.sends == 1:
            assert self.writer_waits.wait(30)
        else:
            assert self.permits.acquire(timeout=30)
        super()._send(table, payload, rows, lane)


def test_back_pressure_waits_for_the_oldest_send_only() -> None:
    sink = _HeldSink(BufferPolicy(batch_size=2, max_delay_s=3600, max_buffer_rows=5))
    sink.write([make_score("a"), make_score("b")])  # first send, held until the writer waits
    sink.write([make_score("c"), make_score("d")])  # second send, queued behind it
    # Six rows counting the two sends in flight: over the bound. Waiting for the first send
    # is enough (four rows left); the write must not also wait for the second.
    writer = threading.Thread(target=sink.write, args=([make_score("e"), make_score("f")],))
    writer.start()
    writer.join(30)
    returned = not writer.is_alive()
    sink.permits.release(10)  # lets everything through, whatever happened
    writer.join(30)
    assert returned, "back-pressure waited for every send, not just the oldest"
    assert [r["score_id"] for r in sink.stored["scores"][:2]] == ["a", "b"]
    sink.close()
    assert sorted(r["score_id"] for r in sink.stored["scores"]) == ["a", "b", "c", "d", "e", "f"]


# --- lanes: one flush's tables inserted side by side -------------------------------------


class _LaneSink(_FlakySink):
    """Records each send's table, lane and thread; the first send of every lane waits at a
    barrier until all lanes have one running, so a flush whose lanes ran one after the other
    would time out there."""

    def __init__(self, policy: BufferPolicy, senders: int, broken: str | None = None) -> None:
        super().__init__(policy, background=True, senders=senders)
        self.broken = broken  # sends of this table fail
        self.barrier: threading.Barrier | None = None
        self.log: list[tuple[str, str, int, str]] = []  # (start|end, table, lane, thread)
        self.log_lock = threading.Lock()

    def _send(self, table: Table, payload: list[dict[str, Any]], rows: int, lane: int = 0) -> None:
        thread = threading.current_thread().name
        with self.log_lock:
            first = all(entry[2] != lane for entry in self.log)
            self.log.append(("start", table.name, lane, thread))
        if first and self.barrier is not None:
            self.barrier.wait(30)  # BrokenBarrierError fails the test
        try:
            if table.name == self.broken:
                raise ConnectionError(f"{table.name} unreachable")
            super()._send(table, payload, rows, lane)
        finally:
            with self.log_lock:
                self.log.append(("end", table.name, lane, thread))


def _three_groups() -> list[BaseModel]:
    return [
        make_ens("e1"),
        make_ens("e2"),
        make_declaration("d1", items=3),
        *[make_score(f"s{k}") for k in range(6)],
    ]


def test_assign_lanes_keeps_each_table_with_its_items_and_balances_the_rest() -> None:
    def unsent(name: str, size: int) -> Any:
        return base._Unsent(TABLES[name], b"x" * size, size, 0.0)

    flush = [
        unsent("ens", 10),
        unsent("ens_items", 30),
        unsent("declarations", 20),
        unsent("declaration_items", 60),
        unsent("scores", 100),
        unsent("alerts", 5),
    ]
    lanes = base.assign_lanes(flush, 2)
    names = [[u.table.name for u in lane] for lane in lanes]
    # scores (100) alone on one lane; declarations with items (80), ENS with items (40) and
    # alerts (5) fill the other, each group whole and parents first.
    assert names == [["scores", "alerts"], ["declarations", "declaration_items", "ens", "ens_items"]]
    assert base.assign_lanes(flush, 1) == [flush]
    assert [[u.table.name for u in lane] for lane in base.assign_lanes(flush[:2], 4)] == [["ens", "ens_items"]]
    assert base.assign_lanes([], 2) == []
    spread = base.assign_lanes(flush, 8)
    assert len(spread) == 4 and sorted(u.table.name for lane in spread for u in lane) == sorted(
        u.table.name for u in flush
    )


def test_lanes_send_a_flush_side_by_side_items_after_their_header() -> None:
    sink = _LaneSink(BufferPolicy(batch_size=10_000, max_delay_s=3600, max_buffer_rows=100_000), senders=2)
    sink.barrier = threading.Barrier(2)
    sink.write(_three_groups())
    sink.flush()
    lanes = {lane for _, _, lane, _ in sink.log}
    threads = {thread for _, _, _, thread in sink.log}
    assert lanes == {0, 1} and len(threads) == 2 and threading.current_thread().name not in threads
    for parent, items in (("ens", "ens_items"), ("declarations", "declaration_items")):
        assert sink.log.index(("end", parent, *_lane_of(sink, parent))) < sink.log.index(
            ("start", items, *_lane_of(sink, items))
        )
        assert _lane_of(sink, parent) == _lane_of(sink, items)
    assert {name: len(rows) for name, rows in sink.stored.items()} == {
        "ens": 2,
        "ens_items": 4,
        "declarations": 1,
        "declaration_items": 3,
        "scores": 6,
    }
    assert sink.metrics.buffered_rows == 0 and sink.metrics.batches == 5
    sink.close()


def _lane_of(sink: _LaneSink, table: str) -> tuple[int, str]:
    (found,) = {(lane, thread) for _, name, lane, thread in sink.log if name == table}
    return found


def test_a_failing_lane_keeps_its_rows_and_the_other_lanes_store_theirs() -> None:
    sink = _LaneSink(BufferPolicy(batch_size=10_000, max_delay_s=3600, max_buffer_rows=100_000), senders=3)
    sink.broken = "ens"
    sink.write(_three_groups())  # below the batch size: buffered
    with pytest.raises(ConnectionError, match="ens unreachable"):
        sink.flush()
    # The ENS lane stopped at its header: its items were not sent before it (nor at all).
    assert not any(name == "ens_items" for _, name, _, _ in sink.log)
    assert {name: len(rows) for name, rows in sink.stored.items()} == {
        "declarations": 1,
        "declaration_items": 3,
        "scores": 6,
    }
    assert sink.metrics.failed_flushes == 1 and sink.metrics.buffered_rows == 6
    assert sink.metrics.rows_written == {"declarations": 1, "declaration_items": 3, "scores": 6}
    sink.broken = None
    sink.write([make_score("s9")])
    sink.flush()  # the ENS and their items go again, with the newer score
    assert {name: len(rows) for name, rows in sink.stored.items()} == {
        "ens": 2,
        "ens_items": 4,
        "declarations": 1,
        "declaration_items": 3,
        "scores": 7,
    }
    assert sink.metrics.buffered_rows == 0
    sink.close()


def test_chdb_lanes_store_every_row_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lanes: list[tuple[str, int]] = []
    send = ChdbSink._send

    def recording(self: ChdbSink, table: Table, payload: bytes, rows: int, lane: int = 0) -> None:
        lanes.append((table.name, lane))
        send(self, table, payload, rows, lane)

    monkeypatch.setattr(ChdbSink, "_send", recording)
    with ChdbSink(tmp_path / "store", senders=2) as sink:
        assert len(sink._sessions) == 2
        sink.write(_three_groups())
        sink.flush()
        counts = {
            name: sink.query(f"SELECT count() AS n FROM vigie.{name} FINAL")[0]["n"]
            for name in ("ens", "ens_items", "declarations", "declaration_items", "scores")
        }
    assert {lane for _, lane in lanes} == {0, 1}
    assert counts == {"ens": 2, "ens_items": 4, "declarations": 1, "declaration_items": 3, "scores": 6}
    with ChdbSink(tmp_path / "store", senders=1) as reopened:  # lanes share one data directory
        assert len(reopened._sessions) == 1
        assert reopened.query("SELECT count() AS n FROM vigie.scores FINAL") == [{"n": 6}]
    with pytest.raises(ValueError, match="senders"):
        ChdbSink(tmp_path / "store", senders=0)


# --- retention of personal data ------------------------------------------------------


def _ttls(sink: ChdbSink) -> dict[str, str | None]:
    rows = sink.query(f"SELECT name, engine_full FROM system.tables WHERE database = '{sink.database}'")
    found = {r["name"]: re.search(r"\bTTL (.+?)(?: SETTINGS |$)", r["engine_full"]) for r in rows}
    return {name: match.group(1) if match else None for name, match in found.items() if name in TABLES}


def test_every_table_naming_a_person_or_operator_expires_and_a_new_period_reaches_existing_tables(
    tmp_path: Path,
) -> None:
    from vigie.sinks.open import open_sink

    personal = {"ens", "declarations", "declaration_items", "excise", "outcomes", "scores", "alerts", "dead_letters"}
    with ChdbSink(tmp_path / "ch", ttl_days=30) as sink:  # created with it
        ttls = _ttls(sink)
        assert {name for name, ttl in ttls.items() if ttl} == personal
        assert set(ttls.values()) == {"ingested_at + toIntervalDay(30)", None}
    # Opened again with another period (the URL's ttl_days), the tables take it; with none, they lose it.
    reopened = open_sink(f"chdb:{tmp_path / 'ch'}?ttl_days=400")
    assert isinstance(reopened, ChdbSink)
    with reopened as sink:
        assert {ttl for name, ttl in _ttls(sink).items() if name in personal} == {"ingested_at + toIntervalDay(400)"}
        assert retention_statements(sink.profile, sink.database, 400, sink.query) == [], "nothing left to change"
    with ChdbSink(tmp_path / "ch") as sink:  # opened without a period: the store keeps its own
        assert {ttl for name, ttl in _ttls(sink).items() if name in personal} == {"ingested_at + toIntervalDay(400)"}
    with ChdbSink(tmp_path / "ch", ttl_days=None, enforce_ttl=True) as sink:
        assert set(_ttls(sink).values()) == {None}
    with pytest.raises(ValueError, match="ttl_days must be a whole number"):
        open_sink(f"chdb:{tmp_path / 'ch'}?ttl_days=0")


@pytest.mark.parametrize(
    "spec", ["postgres://x@h:5432/db", "clickhose://u:secret@h/vigie", "chdb:", "chdb", "chdb:?ttl_days=3"]
)
def test_a_spec_naming_no_sink_is_refused_before_anything_is_created(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, anything but clickhouse:// became a local directory (a typo'd URL's password in its name)."""
    from typer.testing import CliRunner

    from vigie.sinks.open import SinkSpecError, open_sink
    from vigie.streams.faust_app import faust_app_cli

    with pytest.raises(SinkSpecError):
        open_sink(spec)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(faust_app_cli, ["worker", "--sink", spec, "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 2 and "--sink" in result.output, result.output  # refused before Kafka is asked
    assert not any(tmp_path.iterdir()), "nothing created"
    assert "secret" not in result.output
