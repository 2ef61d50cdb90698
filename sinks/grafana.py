"""Supervisors' Grafana boards as code, and pushing them to a Grafana server.

Dashboards are built with the Grafana Foundation SDK (``grafana-foundation-sdk``, the build
for Grafana 11.6) on the ClickHouse data source (``grafana-clickhouse-datasource`` v4). Every
panel reads the indicator views of :mod:`vigie.sinks.views`, so the SQL that defines an
indicator lives in one place and the panels only filter and shape it. Three boards, in a
folder ``Vigie``:

``vigie-targeting``
    Hit rate (overall, after an alert, per office and detector, per day), alerts per shift
    against each office's control budget, revenue at stake and recovered, alert lead time
    before arrival.
``vigie-drift``
    Detector score distributions per day (mean, p90, share flagged, deciles, population
    stability index against the selected range) and economic operators whose declarations
    changed.
``vigie-pipeline``
    Events per second stored, dead-letter rate and reasons, runtime lag and throughput as the
    runtimes report it (``pipeline_metrics``), records per table.

Command line (mounted as ``vigie grafana``)::

    vigie grafana export deploy/grafana/dashboards
    vigie grafana provision --url http://grafana:3000 --token "$GRAFANA_TOKEN" \\
        --clickhouse-host clickhouse --clickhouse-password "$CLICKHOUSE_PASSWORD"

``provision`` is idempotent: it reads the data source, the folder and each dashboard first
and writes only what differs, so a second run sends no write at all.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import typer
from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError
from grafana_foundation_sdk.builders import barchart, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dashboard_models

from .ddl import DEFAULT_DATABASE, validate_identifier
from .views import SCORE_BUCKETS

__all__ = [
    "DATASOURCE_TYPE",
    "DATASOURCE_UID",
    "FOLDER_TITLE",
    "FOLDER_UID",
    "ClickHouseQuery",
    "ClickHouseQueryBuilder",
    "ProvisionReport",
    "build_dashboards",
    "datasource_payload",
    "export_dashboards",
    "grafana_app",
    "iter_panels",
    "provision",
]

DATASOURCE_TYPE = "grafana-clickhouse-datasource"
DATASOURCE_UID = "vigie-clickhouse"
DATASOURCE_NAME = "Vigie ClickHouse"
FOLDER_UID = "vigie"
FOLDER_TITLE = "Vigie"
PLUGIN_VERSION = "4.10.1"
"""Plugin version recorded in the queries (the plugin migrates older query models on load)."""

PSI_EPSILON = 0.0001
"""Added to each bucket's share in the PSI's logarithm, so an empty bucket gives a large term, not infinity."""

# The plugin's query format (grafana-plugin-sdk-go sqlutil.FormatQueryOption).
_FORMATS: dict[str, tuple[int, str]] = {"time_series": (0, "timeseries"), "table": (1, "table")}


# --- the ClickHouse query model ------------------------------------------------------------------


class ClickHouseQuery(cogvariants.Dataquery):
    """A raw-SQL query of the ClickHouse data source, as the plugin (v4) saves it."""

    def __init__(
        self,
        raw_sql: str = "",
        ref_id: str = "A",
        format_name: Literal["table", "time_series"] = "table",
        datasource: dashboard_models.DataSourceRef | None = None,
    ) -> None:
        self.raw_sql = raw_sql
        self.ref_id = ref_id
        self.format_name = format_name
        self.datasource = datasource

    def to_json(self) -> dict[str, object]:
        fmt, query_type = _FORMATS[self.format_name]
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "editorType": "sql",
            "format": fmt,
            "queryType": query_type,
            "rawSql": self.raw_sql,
            "pluginVersion": PLUGIN_VERSION,
        }
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        fmt = {v[0]: k for k, v in _FORMATS.items()}.get(int(data.get("format", 1)), "table")
        ref = data.get("datasource")
        return cls(
            raw_sql=str(data.get("rawSql", "")),
            ref_id=str(data.get("refId", "A")),
            format_name=fmt,  # type: ignore[arg-type]
            datasource=dashboard_models.DataSourceRef.from_json(ref) if isinstance(ref, dict) else None,
        )


# Lets the SDK decode saved dashboards' ClickHouse targets back into ClickHouseQuery.
cogruntime.Runtime().register_dataquery_variant(
    cogruntime.DataqueryConfig(identifier=DATASOURCE_TYPE, from_json_hook=ClickHouseQuery.from_json)
)


class ClickHouseQueryBuilder(cogbuilder.Builder[ClickHouseQuery]):
    """Builder in the SDK's style for :class:`ClickHouseQuery`."""

    def __init__(self, raw_sql: str) -> None:
        self._internal = ClickHouseQuery(raw_sql=_dedent(raw_sql))

    def build(self) -> ClickHouseQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def time_series(self) -> Self:
        """Time-series frames (first column the time, long frames pivoted by the plugin)."""
        self._internal.format_name = "time_series"
        return self

    def table(self) -> Self:
        self._internal.format_name = "table"
        return self

    def datasource(self, ref: dashboard_models.DataSourceRef) -> Self:
        self._internal.datasource = ref
        return self


def _dedent(sql: str) -> str:
    lines = [line.rstrip() for line in sql.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    return "\n".join(line[indent:] for line in lines)


# --- dashboards -----------------------------------------------------------------------------------


@dataclass
class _Board:
    """Keeps panel ids unique and every query on the one data source."""

    uid: str
    title: str
    description: str
    time_from: str
    datasource: dashboard_models.DataSourceRef
    refresh: str = "1m"
    builder: dashboard_builders.Dashboard = field(init=False)
    next_id: int = 1

    def __post_init__(self) -> None:
        self.builder = (
            dashboard_builders.Dashboard(self.title)
            .uid(self.uid)
            .description(self.description)
            .tags(["vigie", "customs"])
            .time(self.time_from, "now")
            .timezone("browser")
            .refresh(self.refresh)
            .editable()
        )

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self.builder.with_row(dashboard_builders.Row(title).id(self._id()))

    def panel(self, panel: Any, description: str, *queries: ClickHouseQueryBuilder) -> None:
        panel.id(self._id()).description(description).datasource(self.datasource)
        for i, query in enumerate(queries):
            panel.with_target(query.ref_id(chr(ord("A") + i)).datasource(self.datasource))
        self.builder.with_panel(panel)

    def variable(self, name: str, label: str, sql: str) -> None:
        self.builder.with_variable(
            dashboard_builders.QueryVariable(name)
            .label(label)
            .datasource(self.datasource)
            .query(_dedent(sql))
            .multi(True)
            .include_all(True)
            .current(dashboard_models.VariableOption(selected=True, text=["All"], value=["$__all"]))
            .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True).encode(self.builder.build()))
        return data


def _q(sql: str) -> ClickHouseQueryBuilder:
    return ClickHouseQueryBuilder(sql)


def _ts(title: str, unit: str, height: int = 8, width: int = 12) -> timeseries.Panel:
    return timeseries.Panel().title(title).unit(unit).height(height).span(width)


def _stat(title: str, unit: str, height: int = 5, width: int = 6) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .unit(unit)
        .height(height)
        .span(width)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def _table(title: str, height: int = 8, width: int = 12) -> table.Panel:
    return table.Panel().title(title).height(height).span(width)


def _bars(title: str, x_field: str, unit: str, height: int = 8, width: int = 12) -> barchart.Panel:
    return barchart.Panel().title(title).x_field(x_field).unit(unit).height(height).span(width)


def _targeting(db: str, ds: dashboard_models.DataSourceRef) -> dict[str, Any]:
    office = "$__conditionalAll(office IN (${office:singlequote}), $office)"
    b = _Board(
        "vigie-targeting",
        "Vigie · Targeting performance",
        "Hit rate, alerts against control budgets, revenue, alert lead time. Each record counts once "
        "however often it was delivered (views read the latest version).",
        "now-7d",
        ds,
        refresh="5m",
    )
    b.variable("office", "Office", f"SELECT DISTINCT office FROM {db}.v_revenue_daily ORDER BY office")

    b.row("Hit rate")
    b.panel(
        _stat("Hit rate, all controls", "percentunit"),
        "Positive controls / controls over the range: the baseline of the current selection.",
        _q(f"""
            SELECT sum(positives) / nullIf(sum(controls), 0) AS hit_rate
            FROM {db}.v_hit_rate
            WHERE detector = 'all' AND $__dateFilter(day) AND {office}
        """),
    )
    b.panel(
        _stat("Hit rate after an alert", "percentunit"),
        "Positive controls / controls, for controls of declarations that raised an alert.",
        _q(f"""
            SELECT sum(positives) / nullIf(sum(controls), 0) AS hit_rate
            FROM {db}.v_hit_rate
            WHERE detector = 'alert' AND $__dateFilter(day) AND {office}
        """),
    )
    b.panel(
        _stat("Controls", "short"),
        "Control outcomes recorded over the range, and how many were positive.",
        _q(f"""
            SELECT sum(controls) AS controls, sum(positives) AS positives
            FROM {db}.v_hit_rate
            WHERE detector = 'all' AND $__dateFilter(day) AND {office}
        """),
    )
    b.panel(
        _stat("EUR recovered", "currencyEUR"),
        "Duty and taxes recovered by positive controls over the range.",
        _q(f"""
            SELECT sum(eur_recovered) AS eur_recovered
            FROM {db}.v_hit_rate
            WHERE detector = 'all' AND $__dateFilter(day) AND {office}
        """),
    )
    b.panel(
        _table("Hit rate per office and detector"),
        "'all': every control; 'alert': controls of alerted declarations; a detector name: controls of "
        "events that detector scored at or above the suspicion threshold.",
        _q(f"""
            SELECT
                office,
                detector,
                sum(controls) AS controls,
                sum(positives) AS positives,
                positives / controls AS hit_rate,
                sum(eur_recovered) AS eur_recovered
            FROM {db}.v_hit_rate
            WHERE $__dateFilter(day) AND {office}
            GROUP BY office, detector
            ORDER BY office, detector
        """),
    )
    b.panel(
        _ts("Daily hit rate per population", "percentunit"),
        "Positive controls / controls per day.",
        _q(f"""
            SELECT toDateTime(day) AS time, detector, sum(positives) / sum(controls) AS hit_rate
            FROM {db}.v_hit_rate
            WHERE $__dateFilter(day) AND {office}
            GROUP BY time, detector
            ORDER BY time
        """).time_series(),
    )

    b.row("Alerts and control budget")
    b.panel(
        _ts("Share of the shift's control budget used", "percentunit"),
        "Alerts raised in a shift / alerts the office can control in a shift (vigie.alert_budgets). "
        "Above 100 %: alerts will go unchecked.",
        _q(f"""
            SELECT shift_start AS time, office, budget_use
            FROM {db}.v_alerts_per_shift
            WHERE $__timeFilter(shift_start) AND {office}
            ORDER BY time
        """).time_series(),
    )
    b.panel(
        _table("Alerts per office and shift"),
        "Shifts with at least one alert; peak = the busiest shift's share of the budget.",
        _q(f"""
            SELECT
                office,
                shift,
                count() AS shifts,
                sum(alerts) AS alerts_in_range,
                round(avg(alerts), 1) AS alerts_per_shift,
                any(budget) AS budget,
                max(budget_use) AS peak_budget_use
            FROM {db}.v_alerts_per_shift
            WHERE $__timeFilter(shift_start) AND {office}
            GROUP BY office, shift
            ORDER BY office, shift
        """),
    )

    b.row("Revenue")
    b.panel(
        _stat("Revenue at stake and recovered", "currencyEUR", width=12),
        "At stake: duty and taxes the alerts estimate. Recovered: by all positive controls, and by "
        "positive controls of alerted declarations.",
        _q(f"""
            SELECT
                sum(eur_at_stake) AS at_stake,
                sum(eur_recovered) AS recovered,
                sum(eur_recovered_on_alerts) AS recovered_after_alert
            FROM {db}.v_revenue_daily
            WHERE $__dateFilter(day) AND {office}
        """),
    )
    b.panel(
        _ts("Revenue per day", "currencyEUR"),
        "EUR at stake in the day's alerts and EUR recovered by the day's controls.",
        _q(f"""
            SELECT toDateTime(day) AS time, sum(eur_at_stake) AS at_stake, sum(eur_recovered) AS recovered
            FROM {db}.v_revenue_daily
            WHERE $__dateFilter(day) AND {office}
            GROUP BY time
            ORDER BY time
        """).time_series(),
    )

    b.panel(
        _table("e-ADs past their receipt deadline"),
        "Excise movements under duty suspension with no report of receipt or export 6 days after "
        "dispatch: the goods may have been released on the home market. Found as the stream's time "
        "passes the deadline (or on the consignor's next record). Duty and VAT at stake, per office.",
        _q(f"""
            SELECT
                office,
                count() AS overdue_e_ads,
                sum(eur_at_stake) AS eur_at_stake,
                max(hours_past_deadline) AS max_hours_past_deadline
            FROM {db}.v_excise_overdue
            WHERE $__dateFilter(day) AND {office}
            GROUP BY office
            ORDER BY eur_at_stake DESC
        """),
    )

    b.row("Alert lead time before arrival")
    b.panel(
        _bars("Lead time distribution", "lead_hours", "short"),
        "Alerts per whole hour between the alert and the ETA of the linked ENS (negative: the goods "
        "had arrived; clipped to [-48, 72] h).",
        _q(f"""
            SELECT toString(lead_bucket) AS lead_hours, count() AS alerts
            FROM {db}.v_lead_time
            WHERE $__timeFilter(event_time) AND {office}
            GROUP BY lead_bucket
            ORDER BY lead_bucket
        """),
    )
    b.panel(
        _table("Lead time by transport mode (hours)"),
        "Deciles of the lead time and the share of alerts raised before arrival.",
        _q(f"""
            SELECT
                mode,
                count() AS alerts,
                quantile(0.1)(lead_hours) AS p10,
                quantile(0.5)(lead_hours) AS median,
                quantile(0.9)(lead_hours) AS p90,
                countIf(lead_hours > 0) / count() AS share_before_arrival
            FROM {db}.v_lead_time
            WHERE $__timeFilter(event_time) AND {office}
            GROUP BY mode
            ORDER BY alerts DESC
        """),
    )
    return b.to_json()


def _drift(db: str, ds: dashboard_models.DataSourceRef) -> dict[str, Any]:
    detector = "$__conditionalAll(detector IN (${detector:singlequote}), $detector)"
    b = _Board(
        "vigie-drift",
        "Vigie · Detector drift and operators",
        "How each detector's score distribution moves from day to day, and economic operators whose "
        "declarations change.",
        "now-30d",
        ds,
        refresh="15m",
    )
    b.variable("detector", "Detector", f"SELECT DISTINCT detector FROM {db}.v_score_daily ORDER BY detector")

    b.row("Score distributions")
    b.panel(
        _ts("Mean and 90th percentile score", "short"),
        "Per detector and day. A step change without a change in the traffic is drift.",
        _q(f"""
            SELECT toDateTime(day) AS time, detector, mean_score, p90
            FROM {db}.v_score_daily
            WHERE $__dateFilter(day) AND {detector}
            ORDER BY time
        """).time_series(),
    )
    b.panel(
        _ts("Share of scores above the suspicion threshold", "percentunit"),
        "Per detector and day: what share of the scored flow the detector flags.",
        _q(f"""
            SELECT toDateTime(day) AS time, detector, flagged_share
            FROM {db}.v_score_daily
            WHERE $__dateFilter(day) AND {detector}
            ORDER BY time
        """).time_series(),
    )
    b.panel(
        _bars("Score distribution over the range", "score", "short"),
        "Scores per decile, all selected detectors together.",
        _q(f"""
            SELECT concat(toString(score_from), '-', toString(score_from + 0.1)) AS score, sum(scores) AS scores
            FROM {db}.v_score_histogram
            WHERE $__dateFilter(day) AND {detector}
            GROUP BY score_from
            ORDER BY score_from
        """),
    )
    # Each distribution as an array over every bucket, empty ones 0: a bucket empty on a day
    # (or over the range) carries most of the PSI and must not drop out as in a join on buckets.
    counts = f"sumForEach(arrayMap(b -> if(b = bucket, scores, 0), range({SCORE_BUCKETS})))"
    b.panel(
        _ts("Population stability index against the range", "short"),
        "Per detector and day, PSI of the day's score deciles against the whole range's (every decile, "
        "empty ones included): below 0.1 stable, 0.1-0.25 moving, above 0.25 drifted.",
        _q(f"""
            SELECT
                toDateTime(daily.day) AS time,
                daily.detector AS detector,
                arraySum(
                    (d, o) -> (d - o) * log((d + {PSI_EPSILON}) / (o + {PSI_EPSILON})),
                    arrayMap(n -> n / arraySum(daily.counts), daily.counts),
                    arrayMap(n -> n / arraySum(overall.counts), overall.counts)
                ) AS psi
            FROM
            (
                SELECT day, detector, {counts} AS counts
                FROM {db}.v_score_histogram
                WHERE $__dateFilter(day) AND {detector}
                GROUP BY day, detector
            ) AS daily
            INNER JOIN
            (
                SELECT detector, {counts} AS counts
                FROM {db}.v_score_histogram
                WHERE $__dateFilter(day) AND {detector}
                GROUP BY detector
            ) AS overall
            ON daily.detector = overall.detector
            ORDER BY time
        """).time_series(),
    )

    b.row("Economic operators")
    b.panel(
        _table("Operators whose declarations changed", height=10, width=24),
        "Importers over the range: highest operator-behaviour score, declarations, value per kg, "
        "origins, and the range's last day against their mean day (volume jumps).",
        _q(f"""
            SELECT
                operator_eori,
                max(behaviour_score) AS behaviour_score,
                max(max_score) AS max_score,
                sum(declarations) AS declarations_in_range,
                round(sum(customs_value_eur) / greatest(sum(net_mass_kg), 0.001), 2) AS eur_per_kg,
                length(groupUniqArrayArray(origins)) AS origins,
                sum(alerts) AS alerts,
                round(
                    sumIf(declarations, day = toDate($__toTime))
                        / greatest(1, avgIf(declarations, day < toDate($__toTime))),
                    2
                ) AS last_day_vs_mean
            FROM {db}.v_operator_daily
            WHERE $__dateFilter(day)
            GROUP BY operator_eori
            ORDER BY behaviour_score DESC, max_score DESC, declarations_in_range DESC
            LIMIT 25
        """),
    )
    return b.to_json()


def _pipeline(db: str, ds: dashboard_models.DataSourceRef) -> dict[str, Any]:
    b = _Board(
        "vigie-pipeline",
        "Vigie · Pipeline health",
        "Throughput, dead letters and lag, from what the store receives and what the runtimes report.",
        "now-6h",
        ds,
        refresh="30s",
    )
    b.row("Store")
    b.panel(
        _ts("Inbound events stored per second", "short").interval("1m"),
        "Distinct inbound events (ENS, declarations, excise, outcomes) landed per second, by time of storage.",
        _q(f"""
            SELECT $__timeInterval(minute) AS time, sum(events) / $__interval_s AS events_per_s
            FROM {db}.v_pipeline_health
            WHERE $__timeFilter(minute)
            GROUP BY time
            ORDER BY time
        """).time_series(),
    )
    b.panel(
        _ts("Dead-letter rate", "percentunit").interval("1m"),
        "Rejected inputs / (accepted events + rejected inputs).",
        _q(f"""
            SELECT
                $__timeInterval(minute) AS time,
                sum(dead_letters) / greatest(1, sum(events) + sum(dead_letters)) AS dead_letter_rate
            FROM {db}.v_pipeline_health
            WHERE $__timeFilter(minute)
            GROUP BY time
            ORDER BY time
        """).time_series(),
    )
    b.panel(
        _table("Records stored per table"),
        "Distinct records landed over the range, and the longest delay from a record's own time to storage.",
        _q(f"""
            SELECT stream, sum(records) AS records, max(max_delay_s) AS max_delay_s
            FROM {db}.v_pipeline_minutely
            WHERE $__timeFilter(minute)
            GROUP BY stream
            ORDER BY stream
        """),
    )
    b.panel(
        _table("Dead letters by field"),
        "Where inputs were rejected (the first offending field), with one reason as an example.",
        _q(f"""
            SELECT ifNull(field, '(event)') AS rejected_at, count() AS dead_letters, any(reason) AS example
            FROM {db}.dead_letters FINAL
            WHERE $__timeFilter(received_at)
            GROUP BY rejected_at
            ORDER BY dead_letters DESC
            LIMIT 10
        """),
    )
    b.row("Runtimes")
    b.panel(
        # At least a minute per point: runtimes report about that often, and a shorter interval
        # would put a sample's events into one point and none into the next.
        _ts("Reported throughput", "short").interval("1m"),
        "Events per second each runtime component handled, all its instances together: the events "
        "they report (vigie.pipeline_metrics) over each interval, divided by its seconds.",
        # Summed, not averaged: three workers at 1,000/s each are 3,000/s for the component.
        _q(f"""
            SELECT $__timeInterval(at) AS time, component, sum(events) / $__interval_s AS events_per_s
            FROM {db}.pipeline_metrics FINAL
            WHERE $__timeFilter(at)
            GROUP BY time, component
            ORDER BY time
        """).time_series(),
    )
    b.panel(
        _ts("Reported lag", "s"),
        "Seconds each component is behind: the age of a sink's oldest unflushed row, or the time since "
        "its last flush; consumer lag for stream workers.",
        _q(f"""
            SELECT $__timeInterval(at) AS time, component, max(lag_s) AS lag_s
            FROM {db}.pipeline_metrics FINAL
            WHERE $__timeFilter(at)
            GROUP BY time, component
            ORDER BY time
        """).time_series(),
    )
    return b.to_json()


def build_dashboards(database: str = DEFAULT_DATABASE, datasource_uid: str = DATASOURCE_UID) -> list[dict[str, Any]]:
    """The boards as Grafana dashboard JSON (the model ``POST /api/dashboards/db`` takes)."""
    db = validate_identifier(database)
    ds = dashboard_models.DataSourceRef(type_val=DATASOURCE_TYPE, uid=datasource_uid)
    return [_targeting(db, ds), _drift(db, ds), _pipeline(db, ds)]


def iter_panels(dashboard: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """Every panel of a dashboard, rows and panels nested in collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def export_dashboards(directory: Path, database: str = DEFAULT_DATABASE) -> list[Path]:
    """Write ``<uid>.json`` per board into ``directory`` (for Grafana's file provisioning)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for board in build_dashboards(database):
        path = directory / f"{board['uid']}.json"
        path.write_text(json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


# --- provisioning through the HTTP API ------------------------------------------------------------


def datasource_payload(
    host: str = "clickhouse",
    port: int = 9000,
    username: str = "default",
    password: str | None = None,
    database: str = DEFAULT_DATABASE,
    protocol: Literal["native", "http"] = "native",
) -> dict[str, Any]:
    """The ClickHouse data source as ``POST /api/datasources`` takes it (plugin v4 settings)."""
    payload: dict[str, Any] = {
        "uid": DATASOURCE_UID,
        "name": DATASOURCE_NAME,
        "type": DATASOURCE_TYPE,
        "access": "proxy",
        "isDefault": False,
        "jsonData": {
            "host": host,
            "port": int(port),
            "protocol": protocol,
            "secure": False,
            "username": username,
            "defaultDatabase": validate_identifier(database),
        },
    }
    if password:
        payload["secureJsonData"] = {"password": password}
    return payload


@dataclass
class ProvisionReport:
    """What :func:`provision` did to each object: ``created``, ``updated`` or ``unchanged``."""

    actions: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(action != "unchanged" for action in self.actions.values())


def _get_or_none(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except GrafanaClientError as exc:
        if exc.status_code == 404:
            return None
        raise


def _datasource_differs(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    for key in ("name", "type", "access", "isDefault"):
        if current.get(key) != wanted[key]:
            return True
    have = current.get("jsonData") or {}
    if any(have.get(k) != v for k, v in wanted["jsonData"].items()):
        return True
    # Grafana never returns secrets, only whether one is stored.
    return "secureJsonData" in wanted and not (current.get("secureJsonFields") or {}).get("password")


def _comparable(board: dict[str, Any]) -> dict[str, Any]:
    clean = copy.deepcopy(board)
    for key in ("id", "version"):
        clean.pop(key, None)
    return clean


def provision(
    api: GrafanaApi,
    datasource: dict[str, Any],
    dashboards: list[dict[str, Any]],
    folder_uid: str = FOLDER_UID,
    folder_title: str = FOLDER_TITLE,
    force: bool = False,
) -> ProvisionReport:
    """Make Grafana hold ``datasource``, the folder and ``dashboards``; write only what differs.

    A stored data-source password cannot be read back: it is sent when the data source is
    created or changed, when none is stored, or with ``force``.
    """
    report = ProvisionReport()
    uid = datasource["uid"]
    current = _get_or_none(api.datasource.get_datasource_by_uid, uid)
    if current is None:
        api.datasource.create_datasource(datasource)
        report.actions[f"datasource {uid}"] = "created"
    elif force or _datasource_differs(current, datasource):
        api.datasource.update_datasource_by_uid(uid, datasource)
        report.actions[f"datasource {uid}"] = "updated"
    else:
        report.actions[f"datasource {uid}"] = "unchanged"

    folder = _get_or_none(api.folder.get_folder, folder_uid)
    if folder is None:
        api.folder.create_folder(folder_title, uid=folder_uid)
        report.actions[f"folder {folder_uid}"] = "created"
    elif folder.get("title") != folder_title:
        api.folder.update_folder(folder_uid, title=folder_title, version=folder.get("version"), overwrite=True)
        report.actions[f"folder {folder_uid}"] = "updated"
    else:
        report.actions[f"folder {folder_uid}"] = "unchanged"

    for board in dashboards:
        existing = _get_or_none(api.dashboard.get_dashboard, board["uid"])
        same = (
            existing is not None
            and (existing.get("meta") or {}).get("folderUid") == folder_uid
            and _comparable(existing.get("dashboard") or {}) == _comparable(board)
        )
        key = f"dashboard {board['uid']}"
        if same and not force:
            report.actions[key] = "unchanged"
            continue
        api.dashboard.update_dashboard(
            {
                "dashboard": {**board, "id": None},
                "folderUid": folder_uid,
                "overwrite": True,
                "message": "vigie grafana provision",
            }
        )
        report.actions[key] = "created" if existing is None else "updated"
    return report


# --- command line ---------------------------------------------------------------------------------

grafana_app = typer.Typer(
    help="Supervisors' Grafana boards: export them, or push them to a server.", no_args_is_help=True
)


@grafana_app.command("export")
def export_command(
    directory: Annotated[Path, typer.Argument(help="Folder to write <uid>.json into.")],
    database: Annotated[str, typer.Option(help="ClickHouse database the panels read.")] = DEFAULT_DATABASE,
) -> None:
    """Write the dashboards' JSON (what deploy/grafana provisions from files)."""
    for path in export_dashboards(directory, database):
        typer.echo(f"wrote {path}")


@grafana_app.command("provision")
def provision_command(
    url: Annotated[str, typer.Option(help="Grafana base URL, e.g. http://grafana:3000")],
    token: Annotated[
        str | None, typer.Option(envvar="GRAFANA_TOKEN", help="Service-account token (or --user/--password).")
    ] = None,
    user: Annotated[str | None, typer.Option(help="Basic-auth user.")] = None,
    password: Annotated[str | None, typer.Option(envvar="GRAFANA_PASSWORD", help="Basic-auth password.")] = None,
    clickhouse_host: Annotated[str, typer.Option(help="ClickHouse host as Grafana reaches it.")] = "clickhouse",
    clickhouse_port: Annotated[int, typer.Option(help="ClickHouse native port.")] = 9000,
    clickhouse_user: Annotated[str, typer.Option(help="ClickHouse user (read-only is enough).")] = "default",
    clickhouse_password: Annotated[
        str | None, typer.Option(envvar="CLICKHOUSE_PASSWORD", help="ClickHouse password (stored encrypted).")
    ] = None,
    database: Annotated[str, typer.Option(help="ClickHouse database of the views.")] = DEFAULT_DATABASE,
    folder_title: Annotated[str, typer.Option(help="Title of the dashboards' folder.")] = FOLDER_TITLE,
    force: Annotated[bool, typer.Option(help="Write everything even when unchanged.")] = False,
) -> None:
    """Push the ClickHouse data source, the folder and the dashboards. Running it twice changes nothing."""
    if token and (user or password):
        raise typer.BadParameter("give --token or --user/--password, not both")
    credential: str | tuple[str, str] | None = token
    if user is not None:
        credential = (user, password or "")
    api = GrafanaApi.from_url(url, credential=credential, timeout=float(os.environ.get("GRAFANA_TIMEOUT", "10")))
    report = provision(
        api,
        datasource_payload(clickhouse_host, clickhouse_port, clickhouse_user, clickhouse_password, database),
        build_dashboards(database),
        folder_title=folder_title,
        force=force,
    )
    for what, action in report.actions.items():
        typer.echo(f"{what}: {action}")
