"""Indicator views (sinks/views.py) against figures recomputed in Python from the events.

A three-hour generated stream (controls raised to 30 % so alerted declarations get
controlled) is scored by the in-process runner into chdb, with malformed lines appended
(dead letters) and part of the output written a second time (re-delivery). Every indicator
is then checked against the same figure computed here from the events and the pipeline's
results: re-delivered rows must not count twice. The same records go to a real ClickHouse
18.16 server (legacy rendering) and its views must give the same answers.

:func:`open_shared_store` is shared with ``tests/test_grafana.py`` (one build per process).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.factories import timer_events
from vigie.operators import PipelineResult, ScoringPipeline
from vigie.schemas import Alert, ControlOutcome, RiskScore, decode_event, encode_event
from vigie.schemas.generator import GeneratorConfig, write_stream
from vigie.schemas.metrics import PipelineMetrics
from vigie.sinks.chdb_sink import ChdbSink
from vigie.sinks.ddl import LEGACY, MODERN, render_ddl
from vigie.sinks.native_sink import NativeSink
from vigie.sinks.views import (
    MARKER_PREFIX,
    METRICS_TABLE,
    PipelineMetricsRecorder,
    ViewSettings,
    create_views,
    metrics_insert_sql,
    render_views,
    views_fingerprint,
)
from vigie.streams.runner import RunSummary, run_file

pytest_plugins = ["tests.clickhouse_fixtures"]

SETTINGS = ViewSettings()
TZ = ZoneInfo(SETTINGS.timezone)
BAD_LINES = [
    b"this is not json",
    b'{"event_type": "declaration", "event_id": "x-1"}',
    b'{"event_type": "teleport", "event_id": "x-2"}',
    b"[1, 2, 3]",
    b'{"event_type": "outcome", "event_id": "x-3", "controlled": "maybe"}',
]
REDELIVERED_SCORE_RESULTS = 400


@dataclass
class Loaded:
    """A chdb store holding a scored stream, and what was put in it."""

    path: Path
    results: list[PipelineResult]
    summary: RunSummary
    recorder: PipelineMetricsRecorder
    dead_letters: int
    sink: ChdbSink | Any = None

    @property
    def outcomes(self) -> list[ControlOutcome]:
        return [r.event for r in self.results if isinstance(r.event, ControlOutcome)]

    @property
    def alerts(self) -> list[Alert]:
        """Every alert the runner wrote: the events' own, then later findings' (a missed deadline's)."""
        return [a for r in self.results for a in r.alerts]

    @property
    def scores(self) -> list[RiskScore]:
        return [s for r in self.results for s in r.scores]

    def records(self) -> list[Any]:
        """Every record the runner wrote except dead letters (events, scores, alerts)."""
        out: list[Any] = []
        for r in self.results:
            out.append(r.event)
            out.extend(r.scores)
            out.extend(r.alerts)
        return out


def load_store(directory: Path) -> Loaded:
    """Generate, score into chdb under ``directory``, re-deliver part of the output; the sink is left closed."""
    events = directory / "events.jsonl"
    write_stream(GeneratorConfig(duration_hours=3, control_rate=0.3), events, directory / "truth.jsonl")
    last = max((decode_event(line) for line in events.read_bytes().splitlines()), key=lambda e: e.event_time)
    with events.open("ab") as out:
        out.write(b"\n".join(BAD_LINES) + b"\n")
        # 8 days on, the stream's time passes the receipt deadlines of the e-ADs never received.
        out.writelines(encode_event(e) + b"\n" for e in timer_events(last))
    path = directory / "store"
    with ChdbSink(path, batch_size=2_000) as sink:
        create_views(sink.query, sink.profile, sink.database, SETTINGS)  # again if the sink already did: harmless
        results: list[PipelineResult] = []
        recorder = PipelineMetricsRecorder(sink, component="runner", instance="test")
        summary = run_file(events, ScoringPipeline(), sink, on_result=results.append, on_progress=recorder)
        # Re-delivery: outcomes, alerts and some scores land a second time, in new parts.
        again: list[Any] = [r.event for r in results if isinstance(r.event, ControlOutcome)]
        again += [a for r in results for a in r.alerts]
        again += [s for r in results[:REDELIVERED_SCORE_RESULTS] for s in r.scores]
        sink.write(again)
        sink.flush()
    return Loaded(path, results, summary, recorder, summary.dead_letters)


_BUILT: list[Loaded] = []


def open_shared_store(tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    """The scored store of this process (built on first use), opened; the caller closes ``.sink``.

    Built once per process and shared by test_views and test_grafana. The sink must be
    closed at the end of each module: chdb serves one data directory per process, and other
    modules open theirs.
    """
    if not _BUILT:
        _BUILT.append(load_store(tmp_path_factory.mktemp("scored-stream")))
    store = _BUILT[0]
    store.sink = ChdbSink(store.path)
    return store


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    store = open_shared_store(tmp_path_factory)
    try:
        yield store
    finally:
        store.sink.close()


# --- expected figures, from the events ---------------------------------------------------------


def local_day(t: datetime) -> str:
    return t.astimezone(TZ).date().isoformat()


def expected_hit_rate(store: Loaded) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(day, office, population) -> (controls, positives), as v_hit_rate defines them."""
    alerted = {a.subject_event_id for a in store.alerts}
    best: dict[tuple[str, str], float] = defaultdict(float)
    for s in store.scores:
        key = (s.subject_event_id, s.detector)
        best[key] = max(best[key], s.score)
    flagged: dict[str, set[str]] = defaultdict(set)
    for (subject, detector), score in best.items():
        if score >= SETTINGS.suspicion:
            flagged[subject].add(detector)
    out: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for o in store.outcomes:
        if not o.controlled or o.target_event_id is None:
            continue
        populations = ["all", *(["alert"] if o.target_event_id in alerted else []), *flagged[o.target_event_id]]
        for population in populations:
            cell = out[(local_day(o.event_time), o.office, population)]
            cell[0] += 1
            cell[1] += int(o.positive)
    return {k: (v[0], v[1]) for k, v in out.items()}


def view_hit_rate(query: Any) -> dict[tuple[str, str, str], tuple[int, int]]:
    rows = query("SELECT toString(day) AS d, office, detector, controls, positives FROM {db}.v_hit_rate")
    return {(r["d"], r["office"], r["detector"]): (int(r["controls"]), int(r["positives"])) for r in rows}


def shift_key(t: datetime) -> tuple[str, str]:
    """(local day the shift starts, shift label), on the local wall clock (23- and 25-hour days too)."""
    local = t.astimezone(TZ)
    first, hours = SETTINGS.first_shift_hour, SETTINGS.shift_hours
    index = ((local.hour + 24 - first) % 24) // hours
    cycle_day = local.date() - timedelta(days=1 if local.hour < first else 0)
    day = cycle_day + timedelta(days=(first + index * hours) // 24)
    return day.isoformat(), SETTINGS.shift_labels[index]


# Alerts around the 2026 daylight-saving changes in Paris (29 March: 23 hours; 25 October: 25),
# with the shift each falls in and that shift's local start.
DST_ALERTS = [
    (datetime(2026, 3, 29, 5, 30, tzinfo=TZ), "22-06", datetime(2026, 3, 28, 22, 0, tzinfo=TZ)),
    (datetime(2026, 3, 29, 6, 30, tzinfo=TZ), "06-14", datetime(2026, 3, 29, 6, 0, tzinfo=TZ)),
    (datetime(2026, 3, 29, 13, 59, tzinfo=TZ), "06-14", datetime(2026, 3, 29, 6, 0, tzinfo=TZ)),
    (datetime(2026, 10, 25, 5, 30, tzinfo=TZ), "22-06", datetime(2026, 10, 24, 22, 0, tzinfo=TZ)),
    (datetime(2026, 10, 25, 6, 30, tzinfo=TZ), "06-14", datetime(2026, 10, 25, 6, 0, tzinfo=TZ)),
    (datetime(2026, 10, 25, 22, 30, tzinfo=TZ), "22-06", datetime(2026, 10, 25, 22, 0, tzinfo=TZ)),
]


def check_shifts_on_dst_days(query: Any, db: str) -> None:
    """Insert :data:`DST_ALERTS` into ``db`` (tables and views created, no alerts yet) and check
    v_alerts_per_shift puts each in its shift, starting at the local hour."""
    selects = [
        f"SELECT 'dst-{i}' AS alert_id, toDateTime('{t.astimezone(UTC):%Y-%m-%d %H:%M:%S}', 'UTC') AS event_time, "
        "'FR000690' AS office"
        for i, (t, _, _) in enumerate(DST_ALERTS)
    ]
    query(f"INSERT INTO {db}.alerts (alert_id, event_time, office)\n" + "\nUNION ALL\n".join(selects))
    rows = query(
        f"SELECT toUnixTimestamp(shift_start) AS start, toString(day) AS d, shift, alerts FROM {db}.v_alerts_per_shift"
    )
    got = {(int(r["start"]), r["d"], r["shift"]): int(r["alerts"]) for r in rows}
    expected = Counter((int(start.timestamp()), start.date().isoformat(), label) for _, label, start in DST_ALERTS)
    assert got == dict(expected)
    for t, label, start in DST_ALERTS:  # the helper the big-stream test uses agrees
        assert shift_key(t) == (start.date().isoformat(), label)


def chdb_query(store: Loaded) -> Any:
    return lambda sql: store.sink.query(sql.format(db=store.sink.database))


# --- chdb (modern rendering) -----------------------------------------------------------------


def test_hit_rate_matches_the_outcomes(loaded: Loaded) -> None:
    expected = expected_hit_rate(loaded)
    got = view_hit_rate(chdb_query(loaded))
    assert got == expected
    # The populations the boards rely on are all there, and the re-delivered outcomes did not count twice.
    assert {k[2] for k in got} >= {"all", "alert", "undervaluation"}
    total = sum(v[0] for k, v in got.items() if k[2] == "all")
    assert total == sum(1 for o in loaded.outcomes if o.controlled and o.target_event_id)
    rows = loaded.sink.query("SELECT min(hit_rate) AS lo, max(hit_rate) AS hi FROM vigie.v_hit_rate")
    assert 0.0 <= rows[0]["lo"] <= rows[0]["hi"] <= 1.0


def test_alerts_per_shift_and_budget(loaded: Loaded) -> None:
    expected = Counter((a.office, *shift_key(a.event_time)) for a in loaded.alerts)
    rows = loaded.sink.query(
        "SELECT office, toString(toDate(shift_start, 'Europe/Paris')) AS d, shift, alerts, budget, budget_use "
        "FROM vigie.v_alerts_per_shift"
    )
    got = {(r["office"], r["d"], r["shift"]): int(r["alerts"]) for r in rows}
    assert got == dict(expected)
    for r in rows:
        assert r["budget"] == SETTINGS.default_shift_budget
        assert math.isclose(r["budget_use"], r["alerts"] / r["budget"])


def test_budget_table_overrides_the_default(loaded: Loaded) -> None:
    office = loaded.alerts[0].office
    loaded.sink.query(f"INSERT INTO vigie.alert_budgets (office, alerts_per_shift) SELECT '{office}', 1")
    try:
        rows = loaded.sink.query(f"SELECT DISTINCT budget FROM vigie.v_alerts_per_shift WHERE office = '{office}'")
        assert [r["budget"] for r in rows] == [1]
    finally:
        # A newer row puts the default back for the other tests (ReplacingMergeTree keeps the latest).
        loaded.sink.query(
            f"INSERT INTO vigie.alert_budgets (office, alerts_per_shift, updated_at) SELECT '{office}', 0, now() + 1"
        )


def test_revenue_lead_time_and_scores(loaded: Loaded) -> None:
    rows = loaded.sink.query(
        "SELECT sum(alerts) AS alerts, sum(eur_at_stake) AS at_stake, sum(controls) AS controls, "
        "sum(eur_recovered) AS recovered, sum(eur_recovered_on_alerts) AS on_alerts FROM vigie.v_revenue_daily"
    )[0]
    alerts = loaded.alerts
    controls = [o for o in loaded.outcomes if o.controlled and o.target_event_id]
    alerted = {a.subject_event_id for a in alerts}
    assert rows["alerts"] == len(alerts)
    assert math.isclose(rows["at_stake"], sum(a.eur_at_stake for a in alerts), rel_tol=1e-9)
    assert rows["controls"] == len(controls)
    recovered = [o.duty_recovered_eur + o.tax_recovered_eur for o in controls]
    assert math.isclose(rows["recovered"], sum(recovered), rel_tol=1e-9)
    on_alerts = sum(o.duty_recovered_eur + o.tax_recovered_eur for o in controls if o.target_event_id in alerted)
    assert math.isclose(rows["on_alerts"], on_alerts, rel_tol=1e-9, abs_tol=1e-6)
    assert 0 < rows["on_alerts"] <= rows["recovered"]

    lead = loaded.sink.query(
        "SELECT count() AS n, min(lead_bucket) AS lo, max(lead_bucket) AS hi FROM vigie.v_lead_time"
    )
    assert lead[0]["n"] == sum(1 for a in alerts if a.lead_time_hours is not None) > 0
    assert -48 <= lead[0]["lo"] <= lead[0]["hi"] <= 72

    by_day: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in loaded.scores:
        by_day[(local_day(s.event_time), s.detector)].append(s.score)
    daily = loaded.sink.query(
        "SELECT toString(day) AS d, detector, scores, mean_score, p50, p99 FROM vigie.v_score_daily"
    )
    assert {(r["d"], r["detector"]): r["scores"] for r in daily} == {k: len(v) for k, v in by_day.items()}
    for r in daily:
        values = sorted(by_day[(r["d"], r["detector"])])
        assert math.isclose(r["mean_score"], sum(values) / len(values), rel_tol=1e-9)
        # Exact quantiles (ClickHouse's quantileExact: the value at floor(level * n)), so every read agrees.
        for column, level in (("p50", 0.5), ("p99", 0.99)):
            assert r[column] == values[min(len(values) - 1, int(level * len(values)))], (column, r)
    hist = loaded.sink.query(
        "SELECT detector, bucket, sum(scores) AS n FROM vigie.v_score_histogram GROUP BY detector, bucket"
    )
    expected_hist = Counter((s.detector, min(9, math.floor(s.score * 10))) for s in loaded.scores)
    got_hist = {(r["detector"], r["bucket"]): r["n"] for r in hist}
    assert set(got_hist) == set(expected_hist)
    for key, n in expected_hist.items():  # distinct-id estimates: exact when small, ~1 % when large
        assert got_hist[key] == pytest.approx(n, rel=0.02), key


def test_shifts_follow_the_wall_clock_on_daylight_saving_days(loaded: Loaded) -> None:
    db = "vigie_dst"
    query = loaded.sink.query
    try:
        for statement in render_ddl(loaded.sink.profile, db):
            query(statement)
        create_views(query, loaded.sink.profile, db, SETTINGS)
        check_shifts_on_dst_days(query, db)
    finally:
        query(f"DROP DATABASE IF EXISTS {db}")


def test_operator_daily(loaded: Loaded) -> None:
    declarations = Counter(
        (local_day(r.event.event_time), r.event.importer_eori)
        for r in loaded.results
        if r.event.event_type == "declaration"
    )
    rows = loaded.sink.query(
        "SELECT toString(day) AS d, operator_eori, declarations, alerts FROM vigie.v_operator_daily"
    )
    assert {(r["d"], r["operator_eori"]): r["declarations"] for r in rows} == dict(declarations)
    # Alerts counted on the (day, importer) rows that have declarations (ENS or excise alerts
    # name other operators, or the same one on another day).
    alerts = Counter((local_day(a.event_time), a.operator_eori) for a in loaded.alerts)
    assert {(r["d"], r["operator_eori"]): r["alerts"] for r in rows if r["alerts"]} == {
        k: n for k, n in alerts.items() if k in declarations
    }


def test_pipeline_health_counts_distinct_records_per_minute(loaded: Loaded) -> None:
    rows = loaded.sink.query(
        "SELECT sum(events) AS n_events, sum(dead_letters) AS dead, sum(alerts) AS n_alerts, "
        "dead / (n_events + dead) AS rate FROM vigie.v_pipeline_health"
    )[0]
    inbound = len({r.event.event_id for r in loaded.results})
    redelivered_outcomes = len(loaded.outcomes)
    # Distinct ids per minute of landing (uniqCombined: exact when small, ~1 % for thousands).
    # The re-delivery counts again only if it landed in a later minute than the first copy.
    assert inbound * 0.98 <= rows["n_events"] <= (inbound + redelivered_outcomes) * 1.02
    assert len(loaded.alerts) <= rows["n_alerts"] <= 2 * len(loaded.alerts)
    assert rows["dead"] == loaded.dead_letters == len(BAD_LINES)
    assert rows["rate"] == pytest.approx(len(BAD_LINES) / (rows["n_events"] + len(BAD_LINES)))
    # Feeding the same (minute, id) pairs again, as a back-fill does, changes no count.
    spec = next(s for s, _ in render_views(loaded.sink.profile) if s.name.startswith("mv_ingest_alerts_"))
    count = "SELECT minute, records FROM vigie.v_pipeline_minutely WHERE stream = 'alerts' ORDER BY minute"
    before = loaded.sink.query(count)
    loaded.sink.query(f"INSERT INTO vigie.{spec.target}\n{spec.select}")
    assert loaded.sink.query(count) == before

    metrics = loaded.sink.query(
        "SELECT count() AS n, sum(events) AS events, sum(dead_letters) AS dead, min(lag_s) AS lag "
        "FROM vigie.pipeline_metrics FINAL"
    )[0]
    assert metrics["n"] == len(loaded.recorder.samples) >= 2
    assert metrics["events"] == loaded.summary.events
    assert metrics["dead"] == len(BAD_LINES)
    assert metrics["lag"] is not None and metrics["lag"] >= 0


def test_create_views_is_idempotent_and_keeps_the_figures(loaded: Loaded) -> None:
    before = view_hit_rate(chdb_query(loaded))
    names = create_views(loaded.sink.query, loaded.sink.profile, loaded.sink.database, SETTINGS)
    assert view_hit_rate(chdb_query(loaded)) == before
    assert len(names) == len(set(names))
    # Materialised views already existed: no second back-fill, so the counts did not double.
    health = loaded.sink.query("SELECT sum(dead_letters) AS dead FROM vigie.v_pipeline_health")
    assert health[0]["dead"] == len(BAD_LINES)
    markers = "SELECT name FROM system.tables WHERE database = 'vigie' AND name LIKE 'vigie_views_%'"
    assert [r["name"] for r in loaded.sink.query(markers)] == [
        MARKER_PREFIX + views_fingerprint(render_views(loaded.sink.profile, "vigie", SETTINGS))
    ]
    # Other settings re-render the views (new marker, old one dropped); then back to the defaults.
    budget = "SELECT DISTINCT budget FROM vigie.v_alerts_per_shift"
    try:
        create_views(loaded.sink.query, loaded.sink.profile, "vigie", ViewSettings(default_shift_budget=40))
        assert [r["budget"] for r in loaded.sink.query(budget)] == [40]
        assert len(loaded.sink.query(markers)) == 1
    finally:
        create_views(loaded.sink.query, loaded.sink.profile, "vigie", SETTINGS)
    assert [r["budget"] for r in loaded.sink.query(budget)] == [SETTINGS.default_shift_budget]


# --- rendering -----------------------------------------------------------------------------


def test_rendering_per_profile() -> None:
    modern = [s for _, statements in render_views(MODERN) for s in statements]
    legacy = [s for _, statements in render_views(LEGACY) for s in statements]
    assert any(s.startswith("CREATE OR REPLACE VIEW vigie.v_hit_rate") for s in modern)
    assert not any("CREATE OR REPLACE" in s for s in legacy)
    assert "DROP TABLE IF EXISTS vigie.v_hit_rate" in legacy
    metrics_modern = next(s for s in modern if "vigie.pipeline_metrics\n" in s)
    metrics_legacy = next(s for s in legacy if "vigie.pipeline_metrics\n" in s)
    assert "at DateTime64(3, 'UTC')" in metrics_modern
    assert "at DateTime('UTC')" in metrics_legacy
    # Every view reads its base tables' latest versions.
    for spec, _ in render_views(MODERN):
        for table in ("outcomes", "scores", "alerts", "declaration_items"):
            if spec.kind == "view" and f"vigie.{table}" in spec.select:
                assert f"vigie.{table} FINAL" in spec.select, (spec.name, table)
    with pytest.raises(ValueError, match="identifier"):
        render_views(MODERN, "vigie; DROP TABLE x")
    with pytest.raises(ValueError, match="divide 24"):
        ViewSettings(shift_hours=7)
    assert ViewSettings(first_shift_hour=22, shift_hours=12).shift_labels == ["22-10", "10-22"]


def test_metrics_insert_literals() -> None:
    sample = PipelineMetrics.sample(
        "sink", "pod-'1'", datetime(2026, 3, 2, 10, 0, 0, 123456, tzinfo=UTC), 2.0, events=10, lag_s=None
    )
    modern = metrics_insert_sql([sample], MODERN)
    legacy = metrics_insert_sql([sample], LEGACY)
    assert "toDateTime64('2026-03-02 10:00:00.123', 3, 'UTC') AS at" in modern
    assert "toDateTime('2026-03-02 10:00:00', 'UTC') AS at" in legacy
    assert "'pod-\\'1\\''" in modern  # quotes escaped
    assert "NULL AS lag_s" in modern
    assert METRICS_TABLE.columns[0].name == "metric_id"


# --- ClickHouse 18.16 (legacy rendering) ---------------------------------------------------------


@pytest.mark.integration
def test_views_on_clickhouse_18_16_agree_with_chdb(loaded: Loaded, native_sink: NativeSink) -> None:
    assert native_sink.profile.version[0] == 18
    names = create_views(native_sink.query, native_sink.profile, native_sink.database, SETTINGS)
    assert "v_hit_rate" in names and any(n.startswith("mv_ingest_") for n in names)
    records = loaded.records()
    native_sink.write(records)
    native_sink.flush()
    db = native_sink.database

    def legacy_query(sql: str) -> list[dict[str, Any]]:
        return native_sink.query(sql.format(db=db))

    health_sql = "SELECT sum(events) AS e, sum(alerts) AS a FROM {db}.v_pipeline_health"
    first = legacy_query(health_sql)[0]
    assert first["a"] == len(loaded.alerts)
    assert first["e"] == pytest.approx(len(loaded.results), rel=0.02)
    redelivered = [r for r in records if isinstance(r, ControlOutcome | Alert)]
    native_sink.write(redelivered)
    native_sink.flush()
    assert view_hit_rate(legacy_query) == expected_hit_rate(loaded)
    revenue = legacy_query(
        "SELECT sum(alerts) AS a, sum(controls) AS c, sum(eur_at_stake) AS s FROM {db}.v_revenue_daily"
    )[0]
    assert (revenue["a"], revenue["c"]) == (len(loaded.alerts), sum(1 for o in loaded.outcomes if o.target_event_id))
    assert math.isclose(revenue["s"], sum(a.eur_at_stake for a in loaded.alerts), rel_tol=1e-9)
    shifts = legacy_query("SELECT office, toString(day) AS d, shift, alerts FROM {db}.v_alerts_per_shift")
    assert sum(r["alerts"] for r in shifts) == len(loaded.alerts)
    counts = {
        name: legacy_query(f"SELECT count() AS n FROM {{db}}.{name}")[0]["n"] for name in names if name.startswith("v_")
    }
    assert all(n > 0 for n in counts.values()), counts
    # Ingestion counts are per minute of landing (server clock): a copy landing in a later
    # minute than the first counts again there, one in the same minute does not.
    health = legacy_query(health_sql)[0]
    assert len(loaded.alerts) <= health["a"] <= 2 * len(loaded.alerts)
    outcomes = sum(1 for r in redelivered if isinstance(r, ControlOutcome))
    assert first["e"] <= health["e"] <= first["e"] + outcomes * 1.02
    # e-ADs past their receipt deadline: JSON fields read with 18.16's visitParam functions, as on chdb.
    overdue_sql = (
        "SELECT count() AS n, sum(eur_at_stake) AS eur, max(hours_past_deadline) AS h FROM {db}.v_excise_overdue"
    )
    on_legacy = legacy_query(overdue_sql)[0]
    on_chdb = loaded.sink.query(overdue_sql.format(db=loaded.sink.database))[0]
    assert on_legacy["n"] == on_chdb["n"] > 0
    assert on_legacy["eur"] == pytest.approx(on_chdb["eur"]) and on_legacy["h"] == pytest.approx(on_chdb["h"])
    sample = PipelineMetrics.sample("sink", "t", datetime.now(UTC), 1.0, events=5)
    native_sink.query(metrics_insert_sql([sample], native_sink.profile, db))
    assert legacy_query("SELECT sum(events) AS e FROM {db}.pipeline_metrics FINAL")[0]["e"] == 5


@pytest.mark.integration
def test_shifts_on_daylight_saving_days_on_clickhouse_18_16(native_sink: NativeSink) -> None:
    check_shifts_on_dst_days(native_sink.query, native_sink.database)


def test_local_day_helper() -> None:
    # 23:30 UTC on 2 March is already 3 March in Paris: days follow the settings' time zone.
    assert local_day(datetime(2026, 3, 2, 23, 30, tzinfo=UTC)) == date(2026, 3, 3).isoformat()
