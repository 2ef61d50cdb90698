"""NativeSink against a real ClickHouse 18.16 server (Debian's package), started by the fixtures.

Tests marked ``integration`` start servers (``tests/clickhouse_fixtures.py``, which installs the
package first when missing and running as root); the others need no server.

The server's legacy DDL, every record type written and read back, dead-letter bytes, idempotent
re-writes, and the server going away mid-stream (SIGTERM and SIGKILL) and coming back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest
from clickhouse_driver.errors import NetworkError, ServerException
from pydantic import BaseModel

from tests import factories
from tests.stored import read_back
from vigie.schemas import Alert, DeadLetter, RiskScore
from vigie.sinks.base import Sink
from vigie.sinks.clickhouse_server import ClickHouseServer, ClickHouseServerError
from vigie.sinks.ddl import (
    LEGACY,
    MODERN,
    TABLES,
    native_blocks,
    native_type,
    render_ddl,
)
from vigie.sinks.native_sink import NativeSink, header_matches, without_low_cardinality

if TYPE_CHECKING:
    from collections.abc import Callable

pytest_plugins = ["tests.clickhouse_fixtures"]

integration = pytest.mark.integration

# 18.16 stores DateTime in whole seconds: records meant to compare equal use whole seconds.
T0 = datetime(2026, 3, 2, 8, 0, 17, tzinfo=UTC)


# --- records built by hand ------------------------------------------------------------


def make_score(score_id: str = "score-1", event_time: datetime = T0) -> RiskScore:
    return factories.score(score_id, event_time)


def make_alert(alert_id: str = "alert-1") -> Alert:
    return factories.alert(alert_id, T0)


def make_dead_letter(raw: bytes, dead_letter_id: str = "dl-1") -> DeadLetter:
    return factories.dead_letter(raw, dead_letter_id, T0)


NON_UTF8 = b'\xff\xfe\x00{"a": "\\u00e9"}\n\r\t\x80 end' + bytes(range(256)) + b"\xc3\x28 \xed\xa0\x80"

ALL_RECORDS: list[BaseModel] = [
    factories.ens(),
    factories.ens(
        event_id="ens-0002",
        consignee={"name": "Jean Dupont", "country": "FR"},  # an optional nested field absent
        goods_items=[factories.ens_dict()["goods_items"][0] | {"item_number": n} for n in (1, 2)],
    ),
    factories.declaration(),
    factories.declaration(
        event_id="decl-0002",
        goods_items=[factories.declaration_dict()["goods_items"][0] | {"item_number": n} for n in (1, 2, 3)],
    ),
    factories.excise(),
    factories.outcome(),
    make_score(),
    make_alert(),
    make_dead_letter(NON_UTF8),
]


def _count(sink: NativeSink, table: str, final: bool = True) -> int:
    rows = sink.query(f"SELECT count() AS n FROM {sink.database}.{table}{' FINAL' if final else ''}")
    return int(rows[0]["n"])


# --- DDL ------------------------------------------------------------------------------


@integration
def test_legacy_ddl_executes_on_18_16(native_sink: NativeSink) -> None:
    assert isinstance(native_sink, Sink)
    assert native_sink.server_version.startswith("18.16")
    assert not native_sink.profile.modern
    db = native_sink.database
    tables = {r["name"] for r in native_sink.query(f"SELECT name FROM system.tables WHERE database = '{db}'")}
    assert set(TABLES) <= tables  # plus the indicator views of vigie.sinks.views
    types = {
        (r["table"], r["name"]): r["type"]
        for r in native_sink.query(f"SELECT table, name, type FROM system.columns WHERE database = '{db}'")
    }
    assert types["ens", "event_time"] == "DateTime('UTC')"
    assert types["ens", "consignor_country"] == "String"
    assert types["ens", "notify_party_country"] == "Nullable(String)"
    assert types["ens", "countries_of_routing"] == "Array(String)"
    assert types["alerts", "contributions"] == "String"
    assert types["alerts", "eta"] == "Nullable(DateTime('UTC'))"
    assert types["dead_letters", "raw"] == "String"
    assert types["declaration_items", "item_number"] == "UInt16"
    engines = {
        r["name"]: r["engine"]
        for r in native_sink.query(f"SELECT name, engine FROM system.tables WHERE database = '{db}'")
    }
    assert {engines[name] for name in TABLES} == {"ReplacingMergeTree"}
    # Creating again on an existing database is a no-op.
    for statement in render_ddl(native_sink.profile, db):
        native_sink.query(statement)


@integration
def test_only_the_legacy_render_runs_on_18_16(clickhouse_server: ClickHouseServer, clickhouse_database: str) -> None:
    """Each legacy CREATE TABLE works on 18.16 and each modern one fails: the rendering matters."""
    client = clickhouse_server.client()
    try:
        legacy_db, modern_db = clickhouse_database, f"{clickhouse_database}_modern"
        create_db, *legacy_tables = render_ddl(LEGACY, legacy_db)
        client.execute(create_db)
        for statement in legacy_tables:
            client.execute(statement)
        create_db, *modern_tables = render_ddl(MODERN, modern_db)
        client.execute(create_db)
        failures: list[str] = []
        for statement in modern_tables:
            with pytest.raises(ServerException) as raised:
                client.execute(statement)
            failures.append(raised.value.message.splitlines()[0])
        assert len(failures) == len(TABLES)
        text = "\n".join(failures)
        assert "DateTime64" in text or "TTL" in text or "EPHEMERAL" in text, text
        assert client.execute(f"SELECT count() FROM system.tables WHERE database = '{modern_db}'") == [(0,)]
        assert client.execute(f"SELECT count() FROM system.tables WHERE database = '{legacy_db}'") == [(len(TABLES),)]
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {clickhouse_database}_modern")
        client.disconnect()


def _datetime_ticks(block: bytes, name: str, type_name: str, rows: int, width: int) -> list[int]:
    """The ``rows`` integers of datetime column ``name`` in a Native block (no null map)."""
    header = bytes([len(name)]) + name.encode() + bytes([len(type_name)]) + type_name.encode()
    start = block.index(header) + len(header)
    fmt = "<q" if width == 8 else "<I"
    return [struct.unpack_from(fmt, block, start + k * width)[0] for k in range(rows)]


def test_blocks_follow_the_server_profile() -> None:
    """No server needed: datetimes become UTC seconds (18.16) or milliseconds (DateTime64(3)),
    floored, whatever the offset; 18.16's DateTime cannot hold a time before 1970: refused when written."""
    with_ms = datetime(2026, 3, 2, 9, 0, 17, 589000, tzinfo=timezone(timedelta(hours=1)))
    before_epoch = datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)
    modern = native_blocks(MODERN)
    modern.write(make_score(event_time=with_ms))
    modern.write(make_score("s-2", event_time=before_epoch))
    ticks = _datetime_ticks(modern.batch("scores"), "event_time", "DateTime64(3, 'UTC')", 2, 8)
    assert ticks == [int(T0.timestamp()) * 1000 + 589, -500]  # floor, not truncation
    legacy = native_blocks(LEGACY)
    legacy.write(make_score(event_time=with_ms))
    assert _datetime_ticks(legacy.batch("scores"), "event_time", "DateTime('UTC')", 1, 4) == [int(T0.timestamp())]
    with pytest.raises(ValueError, match=r"scores\.event_time: .* outside DateTime's range"):
        legacy.write(make_score("s-2", event_time=before_epoch))
    flagged = native_blocks(MODERN, serialization_flags=True)
    flagged.write(make_score())
    plain = native_blocks(MODERN)
    plain.write(make_score())
    # One zero byte per column after its type: "no custom serialization" (protocol revision 54454+).
    assert len(flagged.batch("scores")) == len(plain.batch("scores")) + len(TABLES["scores"].columns)


@integration
def test_blocks_are_what_18_16_writes_for_the_same_rows(
    native_sink: NativeSink, clickhouse_server: ClickHouseServer
) -> None:
    def sort_key(record: BaseModel) -> tuple[str, datetime, str]:
        table = TABLES[_table_of(record)]
        return table.name, getattr(record, table.time_column), getattr(record, table.key[0])

    records = sorted(ALL_RECORDS, key=sort_key)  # as the tables' ORDER BY reads them back
    blocks = native_blocks(LEGACY)
    for record in records:
        blocks.write(record)
    native_sink.write(records)
    native_sink.flush()
    for name, table in TABLES.items():
        if not blocks.rows(name):
            continue
        sql = (
            f"SELECT {', '.join(c.name for c in table.columns)} FROM {native_sink.database}.{name} FINAL "
            f"ORDER BY {', '.join(table.order_by)} FORMAT Native"
        )
        url = f"http://{clickhouse_server.host}:{clickhouse_server.http_port}/?" + urllib.parse.urlencode(
            {"query": sql}
        )
        with urllib.request.urlopen(url, timeout=30) as response:
            written = response.read()
        # 18.16 prints DateTime('UTC') as DateTime in its output headers (its own zone is UTC here);
        # the insert's header, which the sink checks, says DateTime('UTC').
        for plain, zoned in (("DateTime", "DateTime('UTC')"), ("Nullable(DateTime)", "Nullable(DateTime('UTC'))")):
            written = written.replace(bytes([len(plain)]) + plain.encode(), bytes([len(zoned)]) + zoned.encode())
        assert written == blocks.batch(name), name


def _table_of(record: BaseModel) -> str:
    return next(n for n, t in TABLES.items() if t.model is type(record) and t.parent is None)


# --- round trips ----------------------------------------------------------------------


@integration
def test_every_record_type_round_trips(native_sink: NativeSink) -> None:
    native_sink.write(ALL_RECORDS)
    native_sink.flush()
    for record in ALL_RECORDS:
        back = read_back(native_sink, record)
        assert back.model_dump() == record.model_dump(), type(record).__name__
    items = native_sink.query(
        f"SELECT item_number, mrn FROM {native_sink.database}.declaration_items FINAL "
        "WHERE event_id = 'decl-0002' ORDER BY item_number"
    )
    assert [r["item_number"] for r in items] == [1, 2, 3]
    assert native_sink.metrics.rows_written["declaration_items"] == 4


@integration
def test_datetimes_are_utc_seconds(native_sink: NativeSink) -> None:
    paris = datetime(2026, 3, 2, 9, 0, 17, 589000, tzinfo=timezone(timedelta(hours=1)))  # 08:00:17.589 UTC
    native_sink.write([make_score("ms", event_time=paris)])
    native_sink.flush()
    (row,) = native_sink.query(
        f"SELECT event_time, toUnixTimestamp(event_time) AS ts, toString(event_time) AS text "
        f"FROM {native_sink.database}.scores FINAL"
    )
    assert row["event_time"] == T0 and row["event_time"].tzinfo is UTC  # milliseconds truncated
    assert row["ts"] == int(T0.timestamp())
    assert row["text"] == "2026-03-02 08:00:17"


@integration
def test_dead_letter_bytes_are_lossless(native_sink: NativeSink) -> None:
    large = os.urandom(10 * 1024 * 1024)
    utf8 = "déclaration € ok".encode()
    native_sink.write(
        [make_dead_letter(NON_UTF8, "dl-small"), make_dead_letter(large, "dl-large"), make_dead_letter(utf8, "dl-utf8")]
    )
    native_sink.flush()
    rows = native_sink.query(
        f"SELECT dead_letter_id, raw, length(raw) AS n, raw_size FROM {native_sink.database}.dead_letters FINAL"
    )
    by_id = {r["dead_letter_id"]: r for r in rows}
    for key, payload in (("dl-small", NON_UTF8), ("dl-large", large), ("dl-utf8", utf8)):
        assert by_id[key]["n"] == by_id[key]["raw_size"] == len(payload)
        assert isinstance(by_id[key]["raw"], bytes)  # even when it is valid UTF-8
        assert by_id[key]["raw"] == payload, key
    (hexed,) = native_sink.query(
        f"SELECT hex(raw) AS h FROM {native_sink.database}.dead_letters FINAL WHERE dead_letter_id = 'dl-small'"
    )
    assert bytes.fromhex(hexed["h"]) == NON_UTF8


@integration
def test_writing_twice_counts_once_with_final(native_sink: NativeSink) -> None:
    native_sink.write(ALL_RECORDS)
    native_sink.flush()
    native_sink.write(ALL_RECORDS)  # a replay after a restart, in another part
    native_sink.write(ALL_RECORDS)  # and a duplicate inside one batch
    native_sink.flush()
    expected = {"ens": 2, "ens_items": 3, "declarations": 2, "declaration_items": 4, "excise": 1}
    expected |= {"outcomes": 1, "scores": 1, "alerts": 1, "dead_letters": 1}
    for table, count in expected.items():
        assert _count(native_sink, table) == count, table
        assert _count(native_sink, table, final=False) in (count, 2 * count, 3 * count)
    assert native_sink.metrics.rows_written["declaration_items"] == 12
    assert native_sink.metrics.batches == 2 * len(expected)


@integration
def test_metrics_and_lag(native_sink: NativeSink) -> None:
    assert native_sink.metrics.lag_seconds == 0.0 and native_sink.metrics.last_flush_at is None
    native_sink.write([make_score(f"s-{i}") for i in range(10)])
    time.sleep(0.05)
    assert native_sink.metrics.buffered_rows == 10
    assert native_sink.metrics.lag_seconds >= 0.05
    native_sink.flush()
    assert native_sink.metrics.lag_seconds == 0.0 and native_sink.metrics.buffered_rows == 0
    assert native_sink.metrics.rows_written == {"scores": 10} and native_sink.metrics.batches == 1
    assert native_sink.metrics.last_flush_at is not None and native_sink.metrics.failed_flushes == 0


@integration
def test_a_value_that_does_not_fit_names_its_column(native_sink: NativeSink) -> None:
    good = make_score("good")
    wrong_type = good.model_copy(update={"score_id": "bad", "eur_at_stake": "a lot"})  # not validated
    with pytest.raises(TypeError, match=r"scores\.eur_at_stake: expected a number, got str"):
        native_sink.write([good, wrong_type])  # refused when written: nothing of that call stays
    missing = good.model_copy(update={"score_id": "missing", "event_time": None})
    with pytest.raises(TypeError, match=r"scores\.event_time: missing value"):
        native_sink.write([missing])
    assert native_sink.metrics.buffered_rows == 0
    native_sink.write([good])
    native_sink.flush()
    assert _count(native_sink, "scores") == 1 and native_sink.metrics.failed_flushes == 0


@integration
def test_a_block_the_server_header_does_not_match_is_refused(native_sink: NativeSink) -> None:
    native_sink._headers["scores"] = [("score_id", "String")]  # as if the table had been altered
    native_sink.write([make_score()])
    with pytest.raises(RuntimeError, match=r"INSERT INTO .*\.scores: the server's columns"):
        native_sink.flush()
    assert native_sink.metrics.buffered_rows == 1  # kept for a retry


def test_low_cardinality_is_removed_wherever_it_is_nested() -> None:
    assert without_low_cardinality("LowCardinality(String)") == "String"
    assert without_low_cardinality("LowCardinality(Nullable(String))") == "Nullable(String)"
    assert without_low_cardinality("Array(LowCardinality(String))") == "Array(String)"
    assert without_low_cardinality("Map(LowCardinality(String), String)") == "Map(String, String)"
    assert (
        without_low_cardinality(
            "Tuple(LowCardinality(String), Map(LowCardinality(String), Array(LowCardinality(String))))"
        )
        == "Tuple(String, Map(String, Array(String)))"
    )
    for plain in ("String", "Nullable(String)", "DateTime64(3, 'UTC')", "Map(String, Float64)", "Array(Int64)"):
        assert without_low_cardinality(plain) == plain
    with pytest.raises(ValueError, match="unbalanced"):
        without_low_cardinality("LowCardinality(String")


def test_a_modern_servers_header_takes_the_plain_blocks() -> None:
    """A server >= 22 names the tables' own types, LowCardinality included, in its insert header
    (protocol revision >= 54405): the blocks (plain String columns) still match, for every table."""
    wrapped = 0
    for table in TABLES.values():
        server = [(col.name, col.clickhouse_type(MODERN)) for col in table.columns]
        sent = [(col.name, native_type(col, MODERN)) for col in table.columns]
        wrapped += sum("LowCardinality" in type_name for _, type_name in server)
        assert header_matches(server, sent), table.name
        # A real difference is still one: another type, another name, a missing column.
        assert not header_matches([(server[0][0], "UInt8"), *server[1:]], sent)
        assert not header_matches([("other", server[0][1]), *server[1:]], sent)
        assert not header_matches(server[:-1], sent)
    assert wrapped > 0  # the modern tables do have LowCardinality columns
    assert header_matches(
        [("office", "LowCardinality(Nullable(String))"), ("codes", "Array(LowCardinality(String))")],
        [("office", "Nullable(String)"), ("codes", "Array(String)")],
    )


# --- the server going away ------------------------------------------------------------


def _stream(prefix: str, n: int) -> list[BaseModel]:
    """``n`` scores and one three-item declaration: parent and item tables both buffered."""
    decl = factories.declaration(
        event_id=f"{prefix}-decl",
        goods_items=[factories.declaration_dict()["goods_items"][0] | {"item_number": k} for k in (1, 2, 3)],
    )
    return [*(make_score(f"{prefix}-{i}") for i in range(n)), decl]


@integration
@pytest.mark.parametrize("how", ["stop", "kill"])
@pytest.mark.parametrize("background", [False, True], ids=["in-writer", "sender-thread"])
def test_server_down_mid_stream_then_back(
    how: str,
    background: bool,
    clickhouse_server_factory: Callable[..., ClickHouseServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = clickhouse_server_factory()
    sink = NativeSink(
        server.host,
        server.tcp_port,
        "vigie_crash",
        batch_size=20,
        max_delay_s=0.0,  # every write attempts a flush, even right after a failed one
        max_buffer_rows=1_000,
        retries=2,
        backoff=0.01,
        connect_timeout=1.0,
        background=background,
    )
    try:
        sink.write(_stream("before", 40))
        sink.flush()
        assert _count(sink, "scores") == 40
        if how == "stop":
            server.stop()
        else:
            server.kill()
        assert not server.is_running()

        with caplog.at_level(logging.WARNING, logger="vigie.sinks.base"):
            for batch in range(5):  # flushes fail and are retried; nothing raised below the bound
                sink.write(_stream(f"during-{batch}", 30))
            sink.settle()  # background: the sender thread's failures are accounted for
        assert sink.metrics.failed_flushes >= (1 if background else 5)
        assert sink.metrics.retries >= 2 * sink.metrics.failed_flushes
        assert sink.metrics.buffered_rows == 5 * (30 + 1 + 3)
        assert sink.metrics.lag_seconds > 0
        assert sink.metrics.last_error
        assert any("rows kept for retry" in r.getMessage() for r in caplog.records)

        server.restart()
        sink.write(_stream("before", 40))  # a replay of rows already stored
        sink.flush()
        assert sink.metrics.buffered_rows == 0 and sink.metrics.lag_seconds == 0.0
        assert _count(sink, "scores") == 40 + 5 * 30
        assert _count(sink, "declarations") == 1 + 5
        assert _count(sink, "declaration_items") == 3 * (1 + 5)
        ids = {r["score_id"] for r in sink.query("SELECT score_id FROM vigie_crash.scores FINAL")}
        assert {f"during-4-{i}" for i in range(30)} <= ids and "before-0" in ids
    finally:
        with contextlib.suppress(Exception):
            sink.close()


@integration
def test_back_pressure_when_the_buffer_is_full(clickhouse_server_factory: Callable[..., ClickHouseServer]) -> None:
    server = clickhouse_server_factory()
    sink = NativeSink(
        server.host, server.tcp_port, "vigie_full", batch_size=10, max_delay_s=0.0, max_buffer_rows=50, retries=0
    )
    server.kill()
    sink.write([make_score(f"a-{i}") for i in range(50)])  # at the bound: kept, no error
    assert sink.metrics.buffered_rows == 50
    with pytest.raises(NetworkError):  # connection refused: the caller gets the back-pressure
        sink.write([make_score("a-50")])
    assert sink.metrics.buffered_rows == 51
    server.restart()
    sink.close()  # flushes the 51 rows
    client = server.client()
    assert client.execute("SELECT count() FROM vigie_full.scores FINAL") == [(51,)]
    client.disconnect()


# --- the server launcher --------------------------------------------------------------


@integration
def test_server_runs_on_loopback_with_its_own_files(clickhouse_server: ClickHouseServer) -> None:
    assert clickhouse_server.is_running() and clickhouse_server.version
    assert clickhouse_server.last_start_seconds is not None and clickhouse_server.last_start_seconds < 30
    config = clickhouse_server.config_file.read_text()
    assert "<listen_host>127.0.0.1</listen_host>" in config
    assert f"<tcp_port>{clickhouse_server.tcp_port}</tcp_port>" in config
    assert "interserver_http_port" not in config
    assert str(clickhouse_server.data_dir) in config
    assert clickhouse_server.log_file.exists()
    assert (clickhouse_server.data_dir / "data" / "metadata" / "system").is_dir()
    # Every listening socket on the server's ports is bound to 127.0.0.1 (no IPv6, no wildcard).
    ports = {clickhouse_server.tcp_port, clickhouse_server.http_port}
    listening: list[tuple[str, int]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port = local.rsplit(":", 1)
                if state == "0A" and int(port, 16) in ports:
                    listening.append((address, int(port, 16)))
    if listening:  # /proc/net may be unavailable in some sandboxes
        assert sorted(listening) == sorted(("0100007F", port) for port in ports)


def test_a_server_that_cannot_start_says_why(tmp_path: Any) -> None:
    server = ClickHouseServer(tmp_path / "broken", binary="/bin/false", startup_timeout=5)
    with pytest.raises(ClickHouseServerError, match="exited with code 1"):
        server.start()
    assert not server.is_running()


@integration
def test_open_sink_reaches_a_server_by_url(clickhouse_server: ClickHouseServer, clickhouse_database: str) -> None:
    from vigie.sinks.open import open_sink

    address = f"{clickhouse_server.host}:{clickhouse_server.tcp_port}/{clickhouse_database}"
    # The URL's credentials reach the server: a wrong user is refused, the right one connects.
    with pytest.raises(Exception, match=r"(?i)auth|password|unknown user|nobody"):
        open_sink(f"clickhouse://nobody:wr%40ng@{address}")
    with pytest.raises(ValueError, match="senders must be a whole number"):
        open_sink(f"clickhouse://default:@{address}?senders=0")
    sink = open_sink(f"clickhouse://default:@{address}?senders=3")
    assert isinstance(sink, NativeSink) and sink.database == clickhouse_database
    assert sink.senders == 3 and len(sink._clients) == 3
    try:
        sink.write([factories.outcome()])
        sink.flush()
        assert sink.query(f"SELECT count() AS n FROM {clickhouse_database}.outcomes FINAL")[0]["n"] == 1
    finally:
        sink.close()


@integration
def test_on_18_16_a_sink_deletes_rows_stored_longer_than_the_period(
    clickhouse_server: ClickHouseServer, clickhouse_database: str
) -> None:
    """18.16 has no TTL: opening a sink deletes the personal-data rows stored more than ``ttl_days`` ago."""
    first = NativeSink(clickhouse_server.host, clickhouse_server.tcp_port, clickhouse_database, ttl_days=None)
    try:
        first.write(ALL_RECORDS)
        first.flush()
        # Copies of the scores and outcomes as if stored 400 days ago (the version column says when).
        for table in ("scores", "outcomes"):
            names = ", ".join(c.name for c in TABLES[table].columns)
            first.query(
                f"INSERT INTO {clickhouse_database}.{table} ({names}, ingested_at)"
                f" SELECT {names}, subtractDays(now(), 400) FROM {clickhouse_database}.{table}"
            )
        before = {t: _count(first, t, final=False) for t in ("scores", "outcomes", "declarations")}
        assert before["scores"] == 2 and before["outcomes"] == 2
    finally:
        first.close()
    second = NativeSink(
        clickhouse_server.host, clickhouse_server.tcp_port, clickhouse_database, ttl_days=365, enforce_ttl=True
    )
    try:
        deadline = time.monotonic() + 30
        while _count(second, "scores", final=False) > 1 or _count(second, "outcomes", final=False) > 1:
            assert time.monotonic() < deadline, "the delete mutations did not finish"
            time.sleep(0.2)
        assert _count(second, "declarations", final=False) == before["declarations"], "recent rows kept"
        assert _count(second, "scores") == 1 and _count(second, "outcomes") == 1
    finally:
        second.close()
