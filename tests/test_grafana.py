"""Supervisors' boards (sinks/grafana.py) without a Grafana server.

(a) The generated dashboards are structurally sound and match the committed files.
(b) The plugin's macros expand as the plugin expands them, and every panel query, expanded,
    runs on chdb holding a scored stream and returns plausible figures (the hit rate equals
    the one computed from the outcome events).
(c) ``vigie grafana provision`` against a local HTTP server emulating Grafana's API: the
    data source, folder and dashboards are pushed, and a second run writes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.test_views import Loaded, expected_hit_rate, open_shared_store
from vigie.schemas.metrics import PipelineMetrics
from vigie.sinks.ddl import render_ddl
from vigie.sinks.grafana import (
    DATASOURCE_TYPE,
    DATASOURCE_UID,
    FOLDER_UID,
    PSI_EPSILON,
    ClickHouseQuery,
    build_dashboards,
    datasource_payload,
    grafana_app,
    iter_panels,
)
from vigie.sinks.grafana_macros import (
    ALL,
    MacroError,
    QueryContext,
    apply_conditional_all,
    calculate_interval,
    expand_macros,
    format_interval,
    interpolate_variables,
    render_query,
)
from vigie.sinks.views import SCORE_BUCKETS, create_views, metrics_insert_sql

REPO = Path(__file__).resolve().parent.parent
GRAFANA_DIR = REPO / "deploy" / "grafana"
VARIABLE_USE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


@pytest.fixture(scope="module")
def boards() -> list[dict[str, Any]]:
    return build_dashboards()


# --- (a) structure ---------------------------------------------------------------------------------


def test_dashboards_are_well_formed(boards: list[dict[str, Any]]) -> None:
    assert [b["uid"] for b in boards] == ["vigie-targeting", "vigie-drift", "vigie-pipeline"]
    assert len({b["title"] for b in boards}) == len(boards)
    for board in boards:
        panels = list(iter_panels(board))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), board["uid"]
        variables = {v["name"] for v in board.get("templating", {}).get("list", [])}
        for v in board.get("templating", {}).get("list", []):
            assert v["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
            assert v["query"].startswith("SELECT")
        queried = [p for p in panels if p["type"] != "row"]
        assert len(queried) >= 5
        for panel in queried:
            where = f"{board['uid']} / {panel['title']}"
            assert panel["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}, where
            assert panel["targets"], where
            assert panel.get("description"), where
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), where
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID, where
                assert target["editorType"] == "sql"
                sql = target["rawSql"]
                assert sql.strip().upper().startswith("SELECT"), where
                assert "vigie." in sql, where
                if target["format"] == 0:
                    assert target["queryType"] == "timeseries"
                    assert "AS time" in sql and "ORDER BY time" in sql, where
                else:
                    assert (target["format"], target["queryType"]) == (1, "table")
                for match in VARIABLE_USE.finditer(sql):
                    name = match.group(1) or match.group(2)
                    assert name.startswith("__") or name in variables, f"{where}: ${name} is not defined"


def test_committed_dashboards_are_current(boards: list[dict[str, Any]]) -> None:
    for board in boards:
        committed = json.loads((GRAFANA_DIR / "dashboards" / f"{board['uid']}.json").read_text())
        assert committed == board, f"run `vigie grafana export deploy/grafana/dashboards` ({board['uid']})"


def test_export_command(tmp_path: Path, boards: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(grafana_app, ["export", str(tmp_path), "--database", "other_db"])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(f"{b['uid']}.json" for b in boards)
    text = (tmp_path / "vigie-targeting.json").read_text()
    assert "other_db.v_hit_rate" in text and "vigie.v_hit_rate" not in text


def test_provisioning_files_agree_with_the_code() -> None:
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "vigie-clickhouse.yaml").read_text())
    (ds,) = datasources["datasources"]
    wanted = datasource_payload()
    assert (ds["uid"], ds["type"], ds["name"]) == (wanted["uid"], wanted["type"], wanted["name"])
    for key in ("host", "port", "protocol", "defaultDatabase"):
        assert ds["jsonData"][key] == wanted["jsonData"][key], key
    assert ds["secureJsonData"]["password"].startswith("$")  # from the environment, never in the file
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "vigie.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["folderUid"] == FOLDER_UID
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_query_model_round_trips_through_the_sdk(boards: list[dict[str, Any]]) -> None:
    from grafana_foundation_sdk.cog.runtime import dataquery_from_json

    target = boards[0]["panels"][1]["targets"][0]
    decoded = dataquery_from_json(target, "")
    assert isinstance(decoded, ClickHouseQuery)
    assert json.loads(json.dumps(decoded.to_json(), default=lambda o: o.to_json())) == target


# --- (b) macros --------------------------------------------------------------------------------------

CTX = QueryContext(
    start=datetime(2026, 3, 2, 10, 0, 0, 500_000, tzinfo=UTC),
    end=datetime(2026, 3, 3, 9, 59, 59, 999_000, tzinfo=UTC),
    interval=timedelta(seconds=30),
    variables={"office": ["FR1", "O'Hara"], "det": ALL, "one": "x", "empty": ""},
    options={"det": ["a", "b"]},
)


def test_backend_macros_expand_like_the_plugin() -> None:
    expand = lambda sql: expand_macros(sql, CTX)  # noqa: E731
    assert expand("$__timeFilter(t)") == "t >= toDateTime(1772445600) AND t <= toDateTime(1772531999)"
    assert expand("$__timeFilter_ms(t)") == (
        "t >= fromUnixTimestamp64Milli(1772445600500) AND t <= fromUnixTimestamp64Milli(1772531999999)"
    )
    assert expand("$__dateFilter(d)") == "d >= toDate('2026-03-02') AND d <= toDate('2026-03-03')"
    assert expand("$__dt(d, t)") == (
        "(d >= toDate('2026-03-02') AND d <= toDate('2026-03-03')) AND "
        "(t >= toDateTime(1772445600) AND t <= toDateTime(1772531999))"
    )
    assert expand("$__fromTime, $__toTime") == "toDateTime(1772445600), toDateTime(1772531999)"
    assert expand("$__fromTime_ms") == "fromUnixTimestamp64Milli(1772445600500)"
    assert expand("$__timeInterval(ts)") == "toStartOfInterval(toDateTime(ts), INTERVAL 30 second)"
    assert expand("$__timeInterval_ms(ts)") == "toStartOfInterval(toDateTime64(ts, 3), INTERVAL 30000 millisecond)"
    assert expand("x / $__interval_s") == "x / 30"
    # Arguments with parentheses and commas of their own.
    assert expand("$__timeFilter(toDateTime(a, 'UTC'))").startswith("toDateTime(a, 'UTC') >= toDateTime(")
    sub_second = QueryContext(CTX.start, CTX.end, timedelta(milliseconds=200))
    assert expand_macros("$__interval_s", sub_second) == "1"  # at least one second
    with pytest.raises(MacroError, match="expected 1"):
        expand("$__timeFilter(a, b)")
    with pytest.raises(MacroError, match="parenthesis"):
        expand("$__timeFilter(a")
    assert expand("$__unknown(x)") == "$__unknown(x)"


def test_front_end_steps() -> None:
    assert apply_conditional_all("WHERE $__conditionalAll(d IN ($det), $det)", CTX.variables) == "WHERE 1=1"
    assert apply_conditional_all("WHERE $__conditionalAll(o IN (${office}), ${office})", CTX.variables) == (
        "WHERE o IN (${office})"
    )
    assert apply_conditional_all("$__conditionalAll(f(a, b) = 1, $empty)", CTX.variables) == "1=1"
    assert interpolate_variables("IN (${office:singlequote})", CTX) == "IN ('FR1','O\\'Hara')"
    assert interpolate_variables("IN (${office:sqlstring})", CTX) == "IN ('FR1','O''Hara')"
    assert interpolate_variables("IN ($office) AND ${det:csv} AND $one", CTX) == "IN ('FR1','O'Hara') AND a,b AND x"
    assert interpolate_variables("$__interval $__interval_ms $__from", CTX) == "30s 30000 1772445600500"
    assert interpolate_variables("$__timeFilter(t) $nope", CTX) == "$__timeFilter(t) $nope"
    assert format_interval(timedelta(hours=2)) == "2h" and format_interval(timedelta(milliseconds=250)) == "250ms"
    assert calculate_interval(timedelta(hours=6), 1000) == timedelta(seconds=20)
    assert calculate_interval(timedelta(days=7), 1000, "1h") == timedelta(hours=1)
    full = render_query("SELECT $__timeInterval(t) AS time WHERE $__conditionalAll(o IN ($office), $office)", CTX)
    assert full == "SELECT toStartOfInterval(toDateTime(t), INTERVAL 30 second) AS time WHERE o IN ('FR1','O'Hara')"


# --- (b) every panel on a scored stream --------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    store = open_shared_store(tmp_path_factory)
    try:
        yield store
    finally:
        store.sink.close()


def _range(store: Loaded, uid: str) -> tuple[datetime, datetime]:
    if uid == "vigie-pipeline":  # by time of storage: the store was built minutes ago
        now = datetime.now(UTC)
        return now - timedelta(hours=2), now + timedelta(minutes=5)
    times = [r.event.event_time for r in store.results]
    return min(times) - timedelta(days=1), max(times) + timedelta(days=1)


def _run_board(
    store: Loaded, board: dict[str, Any], selected: dict[str, Any] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Rows per panel title, with the board's variables set to ``selected`` (default: All)."""
    start, end = _range(store, board["uid"])
    variables: dict[str, Any] = {v["name"]: ALL for v in board.get("templating", {}).get("list", [])}
    variables.update(selected or {})
    options: dict[str, list[str]] = {}
    for v in board.get("templating", {}).get("list", []):
        rows = store.sink.query(render_query(v["query"], QueryContext.for_panel(start, end)))
        options[v["name"]] = [str(next(iter(r.values()))) for r in rows]
        assert options[v["name"]], f"variable {v['name']} has no values"
    out: dict[str, list[dict[str, Any]]] = {}
    for panel in iter_panels(board):
        for target in panel.get("targets", []):
            ctx = QueryContext.for_panel(
                start, end, min_interval=panel.get("interval"), variables=variables, options=options
            )
            sql = render_query(target["rawSql"], ctx)
            assert "$" not in sql, sql  # every macro and variable expanded
            out[panel["title"]] = store.sink.query(sql)
    return out


def _numbers(rows: list[dict[str, Any]], column: str) -> list[float]:
    return [float(r[column]) for r in rows if r[column] is not None]


def _hit(controls_positives: tuple[int, int]) -> float:
    return controls_positives[1] / controls_positives[0]


def test_every_panel_query_runs_with_plausible_results(loaded: Loaded, boards: list[dict[str, Any]]) -> None:
    results: dict[str, list[dict[str, Any]]] = {}
    for board in boards:
        results.update(_run_board(loaded, board))
    for title, rows in results.items():
        assert rows, f"{title}: no rows"
        for row in rows:
            for column, value in row.items():
                assert not (isinstance(value, float) and not math.isfinite(value)), (title, column, value)

    expected = expected_hit_rate(loaded)

    def population(name: str) -> tuple[int, int]:
        cells = [v for k, v in expected.items() if k[2] == name]
        return sum(c for c, _ in cells), sum(p for _, p in cells)

    # Hit rates: in [0, 1] and equal to the outcomes' figures.
    assert results["Hit rate, all controls"][0]["hit_rate"] == pytest.approx(_hit(population("all")))
    assert results["Hit rate after an alert"][0]["hit_rate"] == pytest.approx(_hit(population("alert")))
    assert results["Controls"][0] == {"controls": population("all")[0], "positives": population("all")[1]}
    per_office = results["Hit rate per office and detector"]
    assert all(0 <= r["hit_rate"] <= 1 for r in per_office)
    for r in per_office:
        cells = [v for k, v in expected.items() if k[1] == r["office"] and k[2] == r["detector"]]
        assert (r["controls"], r["positives"]) == (sum(c for c, _ in cells), sum(p for _, p in cells))
    assert all(0 <= x <= 1 for x in _numbers(results["Daily hit rate per population"], "hit_rate"))
    times = [r["time"] for r in results["Daily hit rate per population"]]
    assert times == sorted(times)

    # Budgets, revenue, lead time.
    assert all(x > 0 for x in _numbers(results["Share of the shift's control budget used"], "budget_use"))
    assert sum(r["alerts_in_range"] for r in results["Alerts per office and shift"]) == len(loaded.alerts)
    revenue = results["Revenue at stake and recovered"][0]
    assert revenue["at_stake"] == pytest.approx(sum(a.eur_at_stake for a in loaded.alerts))
    assert 0 < revenue["recovered_after_alert"] <= revenue["recovered"]
    with_lead = [a for a in loaded.alerts if a.lead_time_hours is not None]
    assert sum(r["alerts"] for r in results["Lead time distribution"]) == len(with_lead)
    for r in results["Lead time by transport mode (hours)"]:
        assert r["p10"] <= r["median"] <= r["p90"] and 0 <= r["share_before_arrival"] <= 1

    # Excise: each e-AD the runner found past its receipt deadline, once, with its EUR at stake.
    overdue = {
        s.subject_event_id: s
        for s in loaded.scores
        if s.detector == "excise" and "no_receipt" in str(s.reason_fields.get("findings")).split(",")
    }
    rows = results["e-ADs past their receipt deadline"]
    assert "timer-ead-a" in overdue and sum(r["overdue_e_ads"] for r in rows) == len(overdue)
    assert sum(r["eur_at_stake"] for r in rows) == pytest.approx(sum(s.eur_at_stake for s in overdue.values()))
    assert all(r["max_hours_past_deadline"] >= 0 for r in rows)

    # Drift.
    assert all(0 <= x <= 1 for x in _numbers(results["Mean and 90th percentile score"], "mean_score"))
    assert all(0 <= x <= 1 for x in _numbers(results["Share of scores above the suspicion threshold"], "flagged_share"))
    histogram = sum(r["scores"] for r in results["Score distribution over the range"])
    assert histogram == pytest.approx(len(loaded.scores), rel=0.02)
    assert all(x >= 0 for x in _numbers(results["Population stability index against the range"], "psi"))
    assert 0 < len(results["Operators whose declarations changed"]) <= 25

    # Pipeline health.
    assert all(x > 0 for x in _numbers(results["Inbound events stored per second"], "events_per_s"))
    rates = _numbers(results["Dead-letter rate"], "dead_letter_rate")
    assert all(0 <= x < 1 for x in rates) and max(rates) > 0
    assert sum(r["dead_letters"] for r in results["Dead letters by field"]) == loaded.dead_letters
    stored = {r["stream"]: r["records"] for r in results["Records stored per table"]}
    assert stored["alerts"] >= len(loaded.alerts)
    assert sum(_numbers(results["Reported throughput"], "events_per_s")) > 0
    assert all(x >= 0 for x in _numbers(results["Reported lag"], "lag_s"))


def test_office_variable_filters_the_targeting_board(loaded: Loaded, boards: list[dict[str, Any]]) -> None:
    expected = expected_hit_rate(loaded)
    controls_per_office: dict[str, tuple[int, int]] = {}
    for (_, office, pop), (c, p) in expected.items():
        if pop == "all":
            old = controls_per_office.get(office, (0, 0))
            controls_per_office[office] = (old[0] + c, old[1] + p)
    busiest = sorted(controls_per_office, key=lambda o: -controls_per_office[o][0])[:2]
    one = _run_board(loaded, boards[0], {"office": [busiest[0]]})
    assert one["Hit rate, all controls"][0]["hit_rate"] == pytest.approx(_hit(controls_per_office[busiest[0]]))
    assert {r["office"] for r in one["Hit rate per office and detector"]} == {busiest[0]}
    two = _run_board(loaded, boards[0], {"office": busiest})
    c = sum(controls_per_office[o][0] for o in busiest)
    p = sum(controls_per_office[o][1] for o in busiest)
    assert two["Controls"][0] == {"controls": c, "positives": p}


@contextlib.contextmanager
def _scratch_database(store: Loaded, name: str) -> Iterator[str]:
    """Tables and views in another database of the shared chdb session (one store per process)."""
    query = store.sink.query
    try:
        for statement in render_ddl(store.sink.profile, name):
            query(statement)
        create_views(query, store.sink.profile, name)
        yield name
    finally:
        query(f"DROP DATABASE IF EXISTS {name}")


def _panel_rows(store: Loaded, db: str, title: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The rows of the panel ``title`` (boards built for ``db``), every variable set to All."""
    panel = next(p for board in build_dashboards(db) for p in iter_panels(board) if p.get("title") == title)
    ctx = QueryContext.for_panel(start, end, min_interval=panel.get("interval"), variables={"detector": ALL})
    return store.sink.query(render_query(panel["targets"][0]["rawSql"], ctx))


def test_psi_counts_buckets_empty_on_a_day(loaded: Loaded) -> None:
    """Days whose scores leave deciles empty: those deciles carry most of the PSI. The panel gives
    the PSI computed here over every decile (empty ones with the panel's epsilon)."""
    counts = {
        date(2026, 3, 2): [10, 10, 10, 10, 10, 10, 10, 10, 10, 10],
        date(2026, 3, 3): [40, 0, 0, 0, 0, 0, 0, 0, 0, 60],
        date(2026, 3, 4): [5, 5, 0, 0, 20, 20, 0, 0, 0, 0],
    }
    assert len(next(iter(counts.values()))) == SCORE_BUCKETS
    values = [
        f"('{day}-{bucket}-{k}', '{day} 11:00:00', 'undervaluation', {(bucket + 0.5) / SCORE_BUCKETS})"
        for day, row in counts.items()
        for bucket, n in enumerate(row)
        for k in range(n)
    ]
    overall = [sum(column) for column in zip(*counts.values(), strict=True)]
    expected = {}
    for day, row in counts.items():
        pairs = zip((n / sum(row) for n in row), (n / sum(overall) for n in overall), strict=True)
        expected[day] = sum((d - o) * math.log((d + PSI_EPSILON) / (o + PSI_EPSILON)) for d, o in pairs)
    with _scratch_database(loaded, "vigie_psi") as db:
        loaded.sink.query(
            f"INSERT INTO {db}.scores (score_id, event_time, detector, score) VALUES " + ", ".join(values)
        )
        rows = _panel_rows(
            loaded,
            db,
            "Population stability index against the range",
            datetime(2026, 3, 1, tzinfo=UTC),
            datetime(2026, 3, 5, tzinfo=UTC),
        )
    got = {date.fromisoformat(str(r["time"])[:10]): r["psi"] for r in rows}  # a UTC midnight
    assert set(got) == set(expected)
    for day, psi in expected.items():
        assert got[day] == pytest.approx(psi, rel=1e-9), day
    assert expected[date(2026, 3, 3)] > 1  # the emptied deciles dominate


def test_reported_throughput_sums_a_components_instances(loaded: Loaded) -> None:
    """Three workers at 1,000 events/s each are 3,000/s for the component, one sink at 500/s is 500/s."""
    start = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    samples = [
        PipelineMetrics.sample(component, instance, start + timedelta(minutes=m, seconds=30), 60.0, events=60 * rate)
        for m in range(10)
        for component, instance, rate in [
            ("worker", "w1", 1000),
            ("worker", "w2", 1000),
            ("worker", "w3", 1000),
            ("sink", "s1", 500),
        ]
    ]
    with _scratch_database(loaded, "vigie_metrics") as db:
        loaded.sink.query(metrics_insert_sql(samples, loaded.sink.profile, db))
        rows = _panel_rows(loaded, db, "Reported throughput", start - timedelta(hours=3), start + timedelta(hours=3))
    by_component: dict[str, list[float]] = {}
    for r in rows:
        by_component.setdefault(r["component"], []).append(float(r["events_per_s"]))
    assert by_component == {"worker": [3000.0] * 10, "sink": [500.0] * 10}


# --- (c) provisioning against a recording HTTP server -------------------------------------------------


class FakeGrafana:
    """The few endpoints grafana-client calls for provisioning, with Grafana's answers."""

    def __init__(self, authorization: str) -> None:
        self.authorization = authorization
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self._ids = 0

    def _id(self) -> int:
        self._ids += 1
        return self._ids

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _ in self.requests if m != "GET"]

    def handle(self, method: str, path: str, headers: Any, body: Any) -> tuple[int, Any]:
        self.requests.append((method, path, body))
        if headers.get("Authorization") != self.authorization:
            return 401, {"message": "Unauthorized"}
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "datasources", "uid"] and method == "GET":
            found = self.datasources.get(parts[3])
            return (200, found) if found else (404, {"message": "Data source not found"})
        if parts == ["api", "datasources"] and method == "POST":
            stored = {k: v for k, v in body.items() if k != "secureJsonData"}
            stored |= {"id": self._id(), "secureJsonFields": {k: True for k in body.get("secureJsonData", {})}}
            self.datasources[body["uid"]] = stored
            return 200, {"datasource": stored, "id": stored["id"], "message": "Datasource added"}
        if parts[:3] == ["api", "datasources", "uid"] and method == "PUT":
            old = self.datasources[parts[3]]
            stored = {k: v for k, v in body.items() if k != "secureJsonData"} | {"id": old["id"]}
            secure = dict(old.get("secureJsonFields", {})) | {k: True for k in body.get("secureJsonData", {})}
            self.datasources[parts[3]] = stored | {"secureJsonFields": secure}
            return 200, {"message": "Datasource updated"}
        if parts[:2] == ["api", "folders"] and len(parts) == 3 and method == "GET":
            found = self.folders.get(parts[2])
            return (200, found) if found else (404, {"message": "folder not found"})
        if parts == ["api", "folders"] and method == "POST":
            folder = {"uid": body["uid"], "title": body["title"], "id": self._id(), "version": 1}
            self.folders[body["uid"]] = folder
            return 200, folder
        if parts[:2] == ["api", "folders"] and len(parts) == 3 and method == "PUT":
            folder = self.folders[parts[2]]
            folder.update(title=body["title"], version=folder["version"] + 1)
            return 200, folder
        if parts[:3] == ["api", "dashboards", "uid"] and method == "GET":
            found = self.dashboards.get(parts[3])
            return (200, found) if found else (404, {"message": "Dashboard not found"})
        if parts == ["api", "dashboards", "db"] and method == "POST":
            board = dict(body["dashboard"])
            old = self.dashboards.get(board["uid"])
            board["id"] = old["dashboard"]["id"] if old else self._id()
            board["version"] = old["dashboard"]["version"] + 1 if old else 1
            self.dashboards[board["uid"]] = {"dashboard": board, "meta": {"folderUid": body.get("folderUid")}}
            return 200, {"status": "success", "uid": board["uid"], "version": board["version"]}
        return 404, {"message": f"no route {method} {path}"}


@pytest.fixture
def fake_grafana() -> Iterator[tuple[str, FakeGrafana]]:
    grafana = FakeGrafana(authorization="Bearer glsa_test_token")

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, payload = grafana.handle(self.command, self.path, self.headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", grafana
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _provision(url: str, *extra: str) -> Any:
    args = ["provision", "--url", url, "--clickhouse-host", "ch.internal", "--clickhouse-password", "s3cret"]
    return CliRunner().invoke(grafana_app, [*args, *extra], env={"GRAFANA_TOKEN": "", "CLICKHOUSE_PASSWORD": ""})


def test_provision_pushes_everything_then_changes_nothing(
    fake_grafana: tuple[str, FakeGrafana], boards: list[dict[str, Any]]
) -> None:
    url, grafana = fake_grafana
    first = _provision(url, "--token", "glsa_test_token")
    assert first.exit_code == 0, first.output
    assert grafana.writes() == [
        ("POST", "/api/datasources"),
        ("POST", "/api/folders"),
        ("POST", "/api/dashboards/db"),
        ("POST", "/api/dashboards/db"),
        ("POST", "/api/dashboards/db"),
    ]
    ds = grafana.datasources[DATASOURCE_UID]
    assert ds["type"] == DATASOURCE_TYPE and ds["jsonData"]["host"] == "ch.internal"
    assert ds["secureJsonFields"] == {"password": True}
    sent_ds = next(body for m, p, body in grafana.requests if (m, p) == ("POST", "/api/datasources"))
    assert sent_ds["secureJsonData"] == {"password": "s3cret"}
    assert grafana.folders[FOLDER_UID]["title"] == "Vigie"
    for board in boards:
        stored = grafana.dashboards[board["uid"]]
        assert stored["meta"]["folderUid"] == FOLDER_UID
        assert {k: v for k, v in stored["dashboard"].items() if k not in ("id", "version")} == board

    grafana.requests.clear()
    second = _provision(url, "--token", "glsa_test_token")
    assert second.exit_code == 0, second.output
    assert grafana.writes() == []  # idempotent: only reads
    assert len(grafana.requests) == 2 + len(boards)
    assert all(line.endswith(": unchanged") for line in second.output.strip().splitlines())

    grafana.requests.clear()
    renamed = _provision(url, "--token", "glsa_test_token", "--folder-title", "Vigie boards")
    assert renamed.exit_code == 0, renamed.output
    assert grafana.writes() == [("PUT", f"/api/folders/{FOLDER_UID}")]


def test_provision_with_basic_auth_and_a_changed_data_source(fake_grafana: tuple[str, FakeGrafana]) -> None:
    url, grafana = fake_grafana
    grafana.authorization = "Basic " + base64.b64encode(b"admin:pw").decode()
    assert _provision(url, "--user", "admin", "--password", "pw").exit_code == 0
    grafana.requests.clear()
    moved = CliRunner().invoke(
        grafana_app, ["provision", "--url", url, "--user", "admin", "--password", "pw", "--clickhouse-host", "new"]
    )
    assert moved.exit_code == 0, moved.output
    assert grafana.writes() == [("PUT", f"/api/datasources/uid/{DATASOURCE_UID}")]
    assert grafana.datasources[DATASOURCE_UID]["jsonData"]["host"] == "new"
    assert grafana.datasources[DATASOURCE_UID]["secureJsonFields"] == {"password": True}  # kept


def test_provision_refuses_bad_credentials(fake_grafana: tuple[str, FakeGrafana]) -> None:
    url, grafana = fake_grafana
    result = _provision(url, "--token", "wrong")
    assert result.exit_code != 0
    assert grafana.writes() == []
