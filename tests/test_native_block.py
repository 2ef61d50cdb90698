"""The Native-block encoder of the chdb sink: its blocks are what ClickHouse itself writes."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from tests.test_sinks import ALL_RECORDS
from vigie.operators import ScoringPipeline
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.sinks._native_block import K_DATETIME, K_INT, K_JSON, K_STRING, NativeBlocks
from vigie.sinks.chdb_sink import ChdbSink
from vigie.sinks.ddl import TABLES, native_blocks
from vigie.streams.evaluate import build_detectors

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture()
def sink(tmp_path: Path) -> Iterator[ChdbSink]:
    with ChdbSink(tmp_path / "store", batch_size=1_000_000, max_buffer_rows=1_000_000) as opened:
        yield opened


def _key(record: BaseModel) -> str:
    for table in TABLES.values():
        if table.parent is None and isinstance(record, table.model):
            return (
                f"{table.name}/{getattr(record, table.time_column).timestamp():020.3f}/{getattr(record, table.key[0])}"
            )
    raise TypeError(type(record).__name__)


def _scored_records(hours: float) -> list[BaseModel]:
    pipeline = ScoringPipeline(build_detectors("all"))
    records: list[BaseModel] = []
    for event, _ in generate(GeneratorConfig(seed=11, duration_hours=hours)):
        result = pipeline.process(event)
        records += [event, *result.scores, *result.alerts]
    return records


def test_blocks_are_what_clickhouse_writes_for_the_same_rows(sink: ChdbSink) -> None:
    # In key order, so that ClickHouse reads the rows back (ORDER BY the table's key) as written.
    records = sorted([*_scored_records(3), *ALL_RECORDS], key=_key)
    blocks = native_blocks(sink.profile)
    for record in records:
        blocks.write(record)
    sink.write(records)
    sink.flush()
    compared = 0
    for name, table in TABLES.items():
        expected = blocks.batch(name)
        if not blocks.rows(name):
            continue
        # ClickHouse writes LowCardinality columns as such: read them as the plain type the blocks send.
        columns = ", ".join(
            f"CAST({col.name} AS {replace(col, low_cardinality=False).clickhouse_type(sink.profile)}) AS {col.name}"
            if col.low_cardinality
            else col.name
            for col in table.columns
        )
        # One output block (ClickHouse may otherwise cut the result into several); no FINAL, which
        # merges each partition apart: every record was written once.
        sql = (
            f"SELECT {columns} FROM vigie.{name} ORDER BY {', '.join(table.order_by)} "
            "SETTINGS max_block_size = 1000000, optimize_read_in_order = 0, max_threads = 1"
        )
        assert sink._session.query(sql, "Native").bytes() == expected, name
        compared += blocks.rows(name)
    assert compared == sum(blocks.rows(name) for name in TABLES) > 1000


class _Probe(BaseModel):
    probe_id: str
    at: datetime
    count: int
    details: dict[str, Any] | None


_PROBE_SPECS = {
    "probes": [
        ("probe_id", "String", K_STRING, -1, False, 8, False, ("probe_id",), False),
        ("at", "DateTime64(3, 'UTC')", K_DATETIME, -1, False, 8, False, ("at",), False),
        ("count", "UInt8", K_INT, -1, False, 1, False, ("count",), False),
        ("details", "Nullable(String)", K_JSON, -1, True, 8, False, ("details",), False),
    ]
}


def _probes() -> NativeBlocks:
    return NativeBlocks(_PROBE_SPECS, {_Probe: ("probes", [])})


def _strings(data: bytes, start: int, count: int) -> tuple[list[bytes], int]:
    out = []
    for _ in range(count):
        size = data[start]  # every string here is shorter than 128 bytes: a one-byte length
        out.append(data[start + 1 : start + 1 + size])
        start += 1 + size
    return out, start


def test_json_documents_split_where_orjson_ends_them() -> None:
    tricky = [
        {"text": 'braces } { ] [ and "quotes", a \\ backslash', "n": 1.5},
        None,
        {"nested": {"list": [1, {"x": "}"}]}, "é": "ü\n\u2028"},
        {},
    ]
    blocks = _probes()
    for k, details in enumerate(tricky):
        blocks.write(_Probe(probe_id=f"p{k}", at=datetime(2026, 1, 1, tzinfo=UTC), count=k, details=details))
    data = blocks.batch("probes")
    assert data[:2] == bytes([4, len(tricky)])  # columns, rows
    marker = b"\x07details\x10Nullable(String)"
    start = data.index(marker) + len(marker)
    assert list(data[start : start + 4]) == [0, 1, 0, 0]  # the null map
    texts, end = _strings(data, start + 4, len(tricky))
    assert end == len(data)
    for text, details in zip(texts, tricky, strict=True):
        assert text == (b"" if details is None else orjson.dumps(details, option=orjson.OPT_SORT_KEYS))


def _random_document(rng: random.Random, depth: int = 0) -> Any:
    """A JSON-able value heavy in what the splitter must not stop at: quotes, backslashes and
    brackets inside strings, escapes next to closing quotes, nesting."""
    alphabet = 'ab"\\{}[],:\n\u00e9\u2028 0'
    kind = rng.randrange(6 if depth < 3 else 3)
    if kind == 0:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
    if kind == 1:
        return rng.choice([0, -1.5, 1e300, True, False, None])
    if kind == 2:
        return rng.random()
    if kind == 3:
        return [_random_document(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{rng.choice(alphabet)}{i}": _random_document(rng, depth + 1) for i in range(rng.randrange(5))}


def test_json_documents_split_like_orjson_on_random_documents() -> None:
    rng = random.Random(11)
    # More than two orjson calls' worth (4,096 documents each), the last one partial.
    documents: list[dict[str, Any] | None] = [
        None if rng.random() < 0.1 else {f"d{k}": _random_document(rng) for k in range(rng.randrange(1, 4))}
        for _ in range(9_000)
    ]
    blocks = _probes()
    for k, details in enumerate(documents):
        blocks.write(_Probe(probe_id=f"p{k}", at=datetime(2026, 1, 1, tzinfo=UTC), count=k % 200, details=details))
    data = blocks.batch("probes")
    marker = b"\x07details\x10Nullable(String)"
    start = data.index(marker) + len(marker) + len(documents)  # past the null map
    for details in documents:
        size, shift = 0, 0
        while True:  # the LEB128 length
            byte = data[start]
            start += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        expected = b"" if details is None else orjson.dumps(details, option=orjson.OPT_SORT_KEYS)
        assert data[start : start + size] == expected
        start += size
    assert start == len(data)


def test_rollback_drops_what_was_written_since_the_mark() -> None:
    blocks = _probes()
    at = datetime(2026, 3, 14, 9, 26, 53, 589_999, tzinfo=timezone(timedelta(hours=2)))
    blocks.write(_Probe(probe_id="kept", at=at, count=255, details={"a": 1}))
    before = blocks.batch("probes")
    blocks.mark()
    blocks.write(_Probe(probe_id="dropped", at=at, count=1, details=None))
    with pytest.raises(ValueError, match=r"probes\.count: 256 does not fit in 8 bits"):
        blocks.write(_Probe(probe_id="half", at=at, count=256, details=None))
    blocks.rollback()
    assert blocks.rows("probes") == 1 and blocks.batch("probes") == before
    # 07:26:53.589 UTC in milliseconds: the offset applied, the microseconds truncated.
    expected_ms = int(datetime(2026, 3, 14, 7, 26, 53, 589_000, tzinfo=UTC).timestamp() * 1000)
    assert struct.pack("<q", expected_ms) in before
    blocks.clear("probes")
    assert blocks.rows("probes") == 0


def test_a_model_no_table_stores_is_refused() -> None:
    with pytest.raises(TypeError, match="no table stores str"):
        _probes().write("not a model")


def test_fields_are_found_whatever_the_order_and_identity_of_a_records_keys() -> None:
    """The encoder walks a record's dict in column order, matching interned keys by identity; records
    whose keys are copies (an unpickled record's), in another order, or missing a field (the error
    names it) still give the same rows."""
    records = _scored_records(1)
    assert {type(r).__name__ for r in records} >= {"EntrySummaryDeclaration", "ImportDeclaration", "RiskScore"}

    def reshaped(record: Any, order: Any) -> Any:
        copy = record.model_construct(**record.__dict__)
        items = [("".join(list(k)), v) for k, v in copy.__dict__.items()]  # equal keys, other objects
        object.__setattr__(copy, "__dict__", dict(order(items)))
        for field in ("goods_items", "items"):  # the item tables read their records' dicts too
            nested = copy.__dict__.get(field)
            if nested:
                copy.__dict__[field] = [reshaped(item, order) for item in nested]
        return copy

    expected = native_blocks()
    for record in records:
        expected.write(record)
    for order in (list, lambda items: reversed(items), lambda items: sorted(items, key=str)):
        blocks = native_blocks()
        for record in records:
            blocks.write(reshaped(record, order))
        for table in TABLES:
            assert blocks.rows(table) == expected.rows(table)
            assert blocks.batch(table) == expected.batch(table), table
    score = next(r for r in records if type(r).__name__ == "RiskScore")
    broken = score.model_construct(**score.__dict__)
    del broken.__dict__["reason"]
    with pytest.raises(KeyError, match=r"scores\.reason"):
        native_blocks().write(broken)
