"""Supervisors' indicators as ClickHouse views, rendered for the connected server.

:func:`create_views` runs after the tables exist, when a sink opens
(``create_views(sink.query, sink.profile, sink.database)``). It creates:

Tables
    ``pipeline_metrics``
        :class:`~vigie.schemas.metrics.PipelineMetrics` samples (runtime throughput and lag),
        ``ReplacingMergeTree`` on ``metric_id`` like every other table.
    ``alert_budgets``
        Alerts an office can handle per shift (``office``, ``alerts_per_shift``,
        ``updated_at``; the newest row per office wins). Offices without a row get
        :attr:`ViewSettings.default_shift_budget`.
    ``ingest_minutely``, ``score_histogram_daily``
        Targets of the materialised views below (``AggregatingMergeTree``).

Materialised views (insert triggers, cheap to read at any volume)
    ``mv_ingest_<table>_v1``
        Per minute of ingestion (``ingested_at``) and per table: the distinct record ids
        (``uniqCombined`` state) and the largest delay between the record's own time and its
        landing. Distinct ids, not rows: copies of a record landing in the same minute (a
        retried batch) count once, and back-filling is harmless; a copy landing in a later
        minute counts in that minute, as work the pipeline did again. ``uniqCombined`` is an
        estimate: exact for small sets, typically within 1 % for large ones, at a few
        kilobytes per minute and table.
    ``mv_score_histogram_v1``
        Distinct score ids per (day, detector, score decile): the score distribution, for drift.

Views (computed when read; every table is read with ``FINAL``, so each record counts once
however often it was delivered)
    ``v_controls``
        One row per control outcome: its day, office, the controlled event (``subject_event_id``,
        the outcome's ``target_event_id``), whether it was positive and the EUR recovered.
    ``v_hit_rate``
        Per (day, office, detector): ``controls``, ``positives``, ``hit_rate`` = positives /
        controls. ``detector`` is a detector name (controls of events that detector scored at
        least :attr:`ViewSettings.suspicion`), ``'alert'`` (controls of events that raised an
        alert) or ``'all'`` (every control: the baseline of the current selection).
    ``v_alerts_per_shift``
        Per (office, shift): alerts raised, EUR at stake, the office's ``budget`` and
        ``budget_use`` = alerts / budget (above 1: more alerts than the office can control).
        Shifts follow the local wall clock, also on the 23- and 25-hour days of daylight saving
        (``shift_start`` is the local start hour, not midnight plus a fixed number of seconds).
    ``v_revenue_daily``
        Per (day, office): alerts and EUR at stake (duty and taxes the alerts estimate), controls,
        positives, EUR recovered by all controls and by controls of alerted events.
    ``v_lead_time``
        One row per alert with a known arrival: ``lead_time_hours`` (ETA minus alert time;
        negative: the goods had arrived) and ``lead_bucket`` (whole hours, clipped to [-48, 72]).
    ``v_score_daily``
        Detector drift: per (day, detector) count, mean, exact p50/p90/p99 of the score
        (``quantilesExact``: the same on every read) and the share of scores at or above the
        suspicion threshold.
    ``v_score_histogram``
        Per (day, detector, decile): scores (from ``score_histogram_daily``).
    ``v_operator_daily``
        Per (day, importer EORI): declarations, items, customs value, net mass, origins, the
        highest ``operator_behaviour`` score and any detector's highest score, alerts.
    ``v_pipeline_minutely``, ``v_pipeline_health``
        Per minute of ingestion: records per table; inbound ``events``, ``events_per_s``,
        ``dead_letters``, ``dead_letter_rate`` = dead letters / (events + dead letters),
        ``max_delay_s`` (event time to storage).

"Day" and shifts are in :attr:`ViewSettings.timezone` (``Europe/Paris`` by default).

A marker view ``vigie_views_<fingerprint>`` records which rendering a database holds, so
opening a sink on an up-to-date database costs one query (:func:`create_views`).

Server versions
---------------
Everything is rendered for both profiles of :mod:`vigie.sinks.ddl`: the SQL is the subset
ClickHouse 18.16 runs (``ANY``/``ALL`` joins with ``USING``, one join per ``SELECT``, no
window functions, no ``toStartOfInterval``). Modern servers replace views with
``CREATE OR REPLACE VIEW``; 18.16 drops and re-creates them. Grafana's ClickHouse plugin
itself needs ClickHouse >= 22.7 (its macros use functions 18.16 lacks): the boards are for
modern servers, the views work on both.
"""

from __future__ import annotations

import hashlib
import logging
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from vigie.schemas.metrics import PipelineMetrics

from .ddl import TABLES, Kind, ServerProfile, Table, model_columns, validate_identifier

__all__ = [
    "MARKER_PREFIX",
    "METRICS_TABLE",
    "SCORE_BUCKETS",
    "PipelineMetricsRecorder",
    "ViewSettings",
    "ViewSpec",
    "create_views",
    "metrics_insert_sql",
    "render_views",
    "view_specs",
    "views_fingerprint",
]

log = logging.getLogger(__name__)

Execute = Callable[[str], Any]
"""Runs one SQL statement; for :func:`create_views` it must return rows as dicts (``Sink.query``)."""

# Root tables and (id column, time column) for the ingest materialised views.
_INGEST_SOURCES: dict[str, tuple[str, str]] = {
    name: (table.key[0], table.time_column) for name, table in TABLES.items() if table.parent is None
}
INBOUND_STREAMS = ("ens", "declarations", "excise", "outcomes")
"""Tables whose rows are inbound events (the ``events`` of pipeline health)."""

SCORE_BUCKETS = 10
"""Score buckets of ``score_histogram_daily`` (deciles): bucket ``b`` holds scores in [b/10, (b+1)/10)."""

# Bumped when a materialised view's SELECT changes: a new name gets a new trigger (and a
# backfill); old ones are left for an operator to drop.
_MV_VERSION = "v1"


def _metrics_table() -> Table:
    # Derived from the model like every table of ddl.TABLES; used until ddl lists it itself.
    existing = TABLES.get("pipeline_metrics")
    if existing is not None:
        return existing
    return Table(
        name="pipeline_metrics",
        model=PipelineMetrics,
        columns=tuple(model_columns(PipelineMetrics)),
        key=("metric_id",),
        time_column="at",
        personal_data=False,
    )


METRICS_TABLE: Table = _metrics_table()
"""The ``pipeline_metrics`` table (columns from :class:`~vigie.schemas.metrics.PipelineMetrics`)."""


@dataclass(frozen=True, slots=True)
class ViewSettings:
    """Business parameters baked into the views (re-rendered on every :func:`create_views`)."""

    suspicion: float = 0.5
    """Score from which a detector counts as having flagged an event (hit rate per detector)."""
    timezone: str = "Europe/Paris"
    """Time zone of days and shifts."""
    first_shift_hour: int = 6
    """Local hour the first shift of the day starts."""
    shift_hours: int = 8
    """Length of a shift; must divide 24."""
    default_shift_budget: int = 25
    """Alerts an office can control per shift when ``alert_budgets`` has no row for it."""

    def __post_init__(self) -> None:
        if not 0.0 < self.suspicion <= 1.0:
            raise ValueError(f"suspicion must be in (0, 1], got {self.suspicion}")
        if not 0 <= self.first_shift_hour < 24:
            raise ValueError(f"first_shift_hour must be in [0, 24), got {self.first_shift_hour}")
        if self.shift_hours < 1 or 24 % self.shift_hours:
            raise ValueError(f"shift_hours must divide 24, got {self.shift_hours}")
        if self.default_shift_budget < 1:
            raise ValueError(f"default_shift_budget must be >= 1, got {self.default_shift_budget}")
        if not self.timezone.replace("/", "").replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"not a time zone name: {self.timezone!r}")  # it is interpolated into SQL

    @property
    def shift_labels(self) -> list[str]:
        """``['06-14', '14-22', '22-06']`` for the defaults: local start and end hours."""
        starts = [(self.first_shift_hour + i * self.shift_hours) % 24 for i in range(24 // self.shift_hours)]
        return [f"{s:02d}-{(s + self.shift_hours) % 24:02d}" for s in starts]


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """One object :func:`create_views` manages."""

    name: str
    kind: Literal["table", "materialized", "view"]
    select: str
    """The ``SELECT`` of a view; the column list and engine of a table."""
    target: str | None = None
    """Materialised views: the table they insert into."""
    source: str | None = None
    """Materialised views: the table whose inserts trigger them."""


def _sql(text: str) -> str:
    return textwrap.dedent(text).strip()


def _tables(profile: ServerProfile, db: str) -> list[ViewSpec]:
    metrics_columns = ",\n".join(f"    {c.name} {c.clickhouse_type(profile)}" for c in METRICS_TABLE.columns)
    specs = []
    if "pipeline_metrics" not in TABLES:  # else ddl.render_ddl already created it
        specs.append(
            ViewSpec(
                "pipeline_metrics",
                "table",
                f"(\n{metrics_columns},\n    ingested_at DateTime('UTC') DEFAULT now()\n)\n"
                "ENGINE = ReplacingMergeTree(ingested_at)\nPARTITION BY toYYYYMM(at)\nORDER BY (metric_id)",
            )
        )
    specs += [
        ViewSpec(
            "alert_budgets",
            "table",
            _sql("""
                (
                    office String,
                    alerts_per_shift UInt32,
                    updated_at DateTime('UTC') DEFAULT now()
                )
                ENGINE = ReplacingMergeTree(updated_at)
                ORDER BY (office)
            """),
        ),
        ViewSpec(
            "ingest_minutely",
            "table",
            _sql("""
                (
                    minute DateTime('UTC'),
                    stream String,
                    ids AggregateFunction(uniqCombined, String),
                    max_delay_s AggregateFunction(max, Float64)
                )
                ENGINE = AggregatingMergeTree()
                PARTITION BY toYYYYMM(minute)
                ORDER BY (stream, minute)
            """),
        ),
        ViewSpec(
            "score_histogram_daily",
            "table",
            _sql("""
                (
                    day Date,
                    detector String,
                    bucket UInt8,
                    ids AggregateFunction(uniqCombined, String)
                )
                ENGINE = AggregatingMergeTree()
                PARTITION BY toYYYYMM(day)
                ORDER BY (detector, day, bucket)
            """),
        ),
    ]
    return specs


def _materialized(db: str, s: ViewSettings) -> list[ViewSpec]:
    specs = []
    for table, (id_col, time_col) in _INGEST_SOURCES.items():
        specs.append(
            ViewSpec(
                f"mv_ingest_{table}_{_MV_VERSION}",
                "materialized",
                _sql(f"""
                    SELECT
                        toStartOfMinute(ingested_at) AS minute,
                        '{table}' AS stream,
                        uniqCombinedState({id_col}) AS ids,
                        maxState(toFloat64(toUnixTimestamp(ingested_at)) - toFloat64(toUnixTimestamp({time_col})))
                            AS max_delay_s
                    FROM {db}.{table}
                    GROUP BY minute
                """),
                target="ingest_minutely",
                source=table,
            )
        )
    specs.append(
        ViewSpec(
            f"mv_score_histogram_{_MV_VERSION}",
            "materialized",
            _sql(f"""
                SELECT
                    toDate(event_time, '{s.timezone}') AS day,
                    detector,
                    toUInt8(least({SCORE_BUCKETS - 1}, floor(score * {SCORE_BUCKETS}))) AS bucket,
                    uniqCombinedState(score_id) AS ids
                FROM {db}.scores
                GROUP BY day, detector, bucket
            """),
            target="score_histogram_daily",
            source="scores",
        )
    )
    return specs


def _views(db: str, s: ViewSettings) -> list[ViewSpec]:
    tz = s.timezone
    labels = ", ".join(f"'{label}'" for label in s.shift_labels)
    budget = int(s.default_shift_budget)
    alerted = f"(SELECT DISTINCT subject_event_id FROM {db}.alerts FINAL)"
    return [
        ViewSpec(
            "v_controls",
            "view",
            _sql(f"""
                SELECT
                    event_id AS outcome_id,
                    event_time,
                    toDate(event_time, '{tz}') AS day,
                    office,
                    target_type,
                    assumeNotNull(target_event_id) AS subject_event_id,
                    positive,
                    duty_recovered_eur + tax_recovered_eur AS eur_recovered,
                    selection
                FROM {db}.outcomes FINAL
                WHERE controlled = 1 AND isNotNull(target_event_id)
            """),
        ),
        ViewSpec(
            "v_hit_rate",
            "view",
            # Three populations in one table, told apart by `detector`; each control of the
            # 'all' population counts once, a control appears under every detector that flagged it.
            _sql(f"""
                SELECT
                    day,
                    office,
                    detector,
                    count() AS controls,
                    sum(positive) AS positives,
                    positives / controls AS hit_rate,
                    sum(eur_recovered) AS eur_recovered
                FROM
                (
                    SELECT day, office, 'all' AS detector, positive, eur_recovered
                    FROM {db}.v_controls
                    UNION ALL
                    SELECT day, office, 'alert' AS detector, positive, eur_recovered
                    FROM {db}.v_controls
                    ALL INNER JOIN {alerted} AS alerted USING (subject_event_id)
                    UNION ALL
                    SELECT day, office, flagged_by AS detector, positive, eur_recovered
                    FROM {db}.v_controls
                    ALL INNER JOIN
                    (
                        SELECT subject_event_id, toString(detector) AS flagged_by
                        FROM {db}.scores FINAL
                        GROUP BY subject_event_id, flagged_by
                        HAVING max(score) >= {s.suspicion!r}
                    ) AS flagged USING (subject_event_id)
                )
                GROUP BY day, office, detector
            """),
        ),
        ViewSpec(
            "v_alerts_per_shift",
            "view",
            # Shifts follow the local wall clock: a day of 23 or 25 hours (daylight saving) must
            # not move them, so the start is the local date and hour parsed in the zone, not
            # midnight plus a number of seconds. (String parsing: 18.16 has no makeDateTime.)
            _sql(f"""
                SELECT
                    toDateTime(
                        concat(
                            toString(shift_day + intDiv(start_hour, 24)),
                            if(start_hour % 24 < 10, ' 0', ' '),
                            toString(start_hour % 24),
                            ':00:00'
                        ),
                        '{tz}'
                    ) AS shift_start,
                    toDate(shift_start, '{tz}') AS day,
                    office,
                    arrayElement([{labels}], shift_index + 1) AS shift,
                    alerts,
                    exploration_alerts,
                    eur_at_stake,
                    if(office_budget = 0, {budget}, office_budget) AS budget,
                    alerts / budget AS budget_use
                FROM
                (
                    SELECT
                        office,
                        intDiv((toHour(event_time, '{tz}') + 24 - {s.first_shift_hour}) % 24, {s.shift_hours})
                            AS shift_index,
                        -- The local day the shift's cycle began: the day before, before the first shift.
                        toDate(event_time, '{tz}') - if(toHour(event_time, '{tz}') < {s.first_shift_hour}, 1, 0)
                            AS shift_day,
                        {s.first_shift_hour} + shift_index * {s.shift_hours} AS start_hour,
                        count() AS alerts,
                        countIf(selection = 'exploration') AS exploration_alerts,
                        sum(eur_at_stake) AS eur_at_stake
                    FROM {db}.alerts FINAL
                    GROUP BY office, shift_index, shift_day, start_hour
                ) AS raised
                ANY LEFT JOIN
                (
                    SELECT office, argMax(alerts_per_shift, updated_at) AS office_budget
                    FROM {db}.alert_budgets
                    GROUP BY office
                ) AS budgets USING (office)
            """),
        ),
        ViewSpec(
            "v_revenue_daily",
            "view",
            _sql(f"""
                SELECT
                    day,
                    office,
                    sum(alerts) AS alerts,
                    sum(eur_at_stake) AS eur_at_stake,
                    sum(controls) AS controls,
                    sum(positives) AS positives,
                    sum(eur_recovered) AS eur_recovered,
                    sum(eur_recovered_on_alerts) AS eur_recovered_on_alerts
                FROM
                (
                    -- Columns are matched by position; names of the later branches differ
                    -- from the base columns they sum so that no alias hides a column.
                    SELECT
                        toDate(event_time, '{tz}') AS day,
                        toString(office) AS office,
                        toUInt64(count()) AS alerts,
                        toFloat64(sum(eur_at_stake)) AS eur_at_stake,
                        toUInt64(0) AS controls,
                        toUInt64(0) AS positives,
                        toFloat64(0) AS eur_recovered,
                        toFloat64(0) AS eur_recovered_on_alerts
                    FROM {db}.alerts FINAL
                    GROUP BY day, office
                    UNION ALL
                    SELECT
                        day,
                        toString(office) AS office,
                        toUInt64(0) AS no_alerts,
                        toFloat64(0) AS no_eur_at_stake,
                        toUInt64(count()) AS controls,
                        toUInt64(sum(positive)) AS positives,
                        toFloat64(sum(eur_recovered)) AS recovered,
                        toFloat64(0) AS no_recovered_on_alerts
                    FROM {db}.v_controls
                    GROUP BY day, office
                    UNION ALL
                    SELECT
                        day,
                        toString(office) AS office,
                        toUInt64(0) AS no_alerts,
                        toFloat64(0) AS no_eur_at_stake,
                        toUInt64(0) AS no_controls,
                        toUInt64(0) AS no_positives,
                        toFloat64(0) AS no_recovered,
                        toFloat64(sum(eur_recovered)) AS recovered_on_alerts
                    FROM {db}.v_controls
                    ALL INNER JOIN {alerted} AS alerted USING (subject_event_id)
                    GROUP BY day, office
                )
                GROUP BY day, office
            """),
        ),
        ViewSpec(
            "v_lead_time",
            "view",
            _sql(f"""
                SELECT
                    alert_id,
                    event_time,
                    toDate(event_time, '{tz}') AS day,
                    office,
                    ifNull(transport_mode, 'unknown') AS mode,
                    assumeNotNull(lead_time_hours) AS lead_hours,
                    greatest(-48, least(72, floor(lead_hours))) AS lead_bucket,
                    fused_risk,
                    eur_at_stake
                FROM {db}.alerts FINAL
                WHERE isNotNull(lead_time_hours)
            """),
        ),
        ViewSpec(
            # One row per e-AD found past its receipt deadline with no report of receipt or export
            # (the excise detector's "no_receipt" finding, at the deadline or on a later record).
            "v_excise_overdue",
            "view",
            _sql(f"""
                SELECT
                    subject_event_id AS ead_event_id,
                    subject_reference AS arc,
                    event_time AS found_at,
                    toDate(event_time, '{tz}') AS day,
                    office,
                    operator_eori,
                    eur_at_stake,
                    visitParamExtractFloat(reason_fields, 'hours_past_deadline') AS hours_past_deadline
                FROM {db}.scores FINAL
                WHERE detector = 'excise'
                  AND has(splitByChar(',', visitParamExtractString(reason_fields, 'findings')), 'no_receipt')
            """),
        ),
        ViewSpec(
            "v_score_daily",
            "view",
            _sql(f"""
                SELECT
                    toDate(event_time, '{tz}') AS day,
                    detector,
                    count() AS scores,
                    avg(score) AS mean_score,
                    -- Exact: quantile() samples, and two reads of the same data could differ.
                    quantilesExact(0.5, 0.9, 0.99)(score) AS quantiles,
                    quantiles[1] AS p50,
                    quantiles[2] AS p90,
                    quantiles[3] AS p99,
                    countIf(score >= {s.suspicion!r}) / scores AS flagged_share,
                    sumIf(eur_at_stake, score >= {s.suspicion!r}) AS eur_flagged
                FROM {db}.scores FINAL
                GROUP BY day, detector
            """),
        ),
        ViewSpec(
            "v_score_histogram",
            "view",
            _sql(f"""
                SELECT day, detector, bucket, bucket / {SCORE_BUCKETS} AS score_from, uniqCombinedMerge(ids) AS scores
                FROM {db}.score_histogram_daily
                GROUP BY day, detector, bucket
            """),
        ),
        ViewSpec(
            "v_operator_daily",
            "view",
            # One join per SELECT (18.16): declarations, then scores, then alerts.
            _sql(f"""
                SELECT
                    day, operator_eori, declarations, items, customs_value_eur, net_mass_kg, origins,
                    behaviour_score, max_score, alerts
                FROM
                (
                    SELECT
                        day, operator_eori, declarations, items, customs_value_eur, net_mass_kg, origins,
                        behaviour_score, max_score
                    FROM
                    (
                        SELECT
                            toDate(event_time, '{tz}') AS day,
                            importer_eori AS operator_eori,
                            uniqExact(event_id) AS declarations,
                            count() AS items,
                            sum(customs_value_eur) AS customs_value_eur,
                            sum(net_mass_kg) AS net_mass_kg,
                            groupUniqArray(toString(origin_country)) AS origins
                        FROM {db}.declaration_items FINAL
                        GROUP BY day, operator_eori
                    ) AS declared
                    ANY LEFT JOIN
                    (
                        SELECT
                            toDate(event_time, '{tz}') AS day,
                            assumeNotNull(operator_eori) AS operator_eori,
                            maxIf(score, detector = 'operator_behaviour') AS behaviour_score,
                            max(score) AS max_score
                        FROM {db}.scores FINAL
                        WHERE isNotNull(operator_eori)
                        GROUP BY day, operator_eori
                    ) AS scored USING (day, operator_eori)
                ) AS declared_scored
                ANY LEFT JOIN
                (
                    SELECT
                        toDate(event_time, '{tz}') AS day,
                        assumeNotNull(operator_eori) AS operator_eori,
                        count() AS alerts
                    FROM {db}.alerts FINAL
                    WHERE isNotNull(operator_eori)
                    GROUP BY day, operator_eori
                ) AS alerted USING (day, operator_eori)
            """),
        ),
        ViewSpec(
            "v_pipeline_minutely",
            "view",
            _sql(f"""
                SELECT minute, stream, uniqCombinedMerge(ids) AS records, maxMerge(max_delay_s) AS max_delay_s
                FROM {db}.ingest_minutely
                GROUP BY minute, stream
            """),
        ),
        ViewSpec(
            "v_pipeline_health",
            "view",
            _sql(f"""
                SELECT
                    minute,
                    sumIf(records, stream IN ({", ".join(f"'{t}'" for t in INBOUND_STREAMS)})) AS events,
                    events / 60 AS events_per_s,
                    sumIf(records, stream = 'scores') AS scores,
                    sumIf(records, stream = 'alerts') AS alerts,
                    sumIf(records, stream = 'dead_letters') AS dead_letters,
                    dead_letters / greatest(1, events + dead_letters) AS dead_letter_rate,
                    maxIf(max_delay_s, stream IN ({", ".join(f"'{t}'" for t in INBOUND_STREAMS)})) AS max_delay_s
                FROM {db}.v_pipeline_minutely
                GROUP BY minute
            """),
        ),
    ]


def view_specs(database: str = "vigie", settings: ViewSettings | None = None) -> list[ViewSpec]:
    """Every managed object in creation order: tables, materialised views, views.

    The SQL is the same on every server version (see the module docstring); only column
    types of ``pipeline_metrics`` and the statement that replaces a view differ.
    """
    db = validate_identifier(database)
    s = settings or ViewSettings()
    # Tables need a profile for column types; rendered in render_views.
    return [*_materialized(db, s), *_views(db, s)]


def render_views(
    profile: ServerProfile, database: str = "vigie", settings: ViewSettings | None = None
) -> list[tuple[ViewSpec, list[str]]]:
    """Each managed object with the statements that create (or refresh) it on ``profile``."""
    db = validate_identifier(database)
    out: list[tuple[ViewSpec, list[str]]] = []
    for spec in _tables(profile, db):
        out.append((spec, [f"CREATE TABLE IF NOT EXISTS {db}.{spec.name}\n{spec.select}"]))
    for spec in view_specs(db, settings):
        if spec.kind == "materialized":
            sql = f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{spec.name} TO {db}.{spec.target}\nAS\n{spec.select}"
            out.append((spec, [sql]))
        elif profile.modern:
            out.append((spec, [f"CREATE OR REPLACE VIEW {db}.{spec.name}\nAS\n{spec.select}"]))
        else:
            # 18.16 has no CREATE OR REPLACE: a reader may briefly miss the view.
            drop = f"DROP TABLE IF EXISTS {db}.{spec.name}"
            out.append((spec, [drop, f"CREATE VIEW IF NOT EXISTS {db}.{spec.name}\nAS\n{spec.select}"]))
    return out


MARKER_PREFIX = "vigie_views_"
"""Names of the marker views recording which rendering of the views a database holds."""


def views_fingerprint(rendered: list[tuple[ViewSpec, list[str]]]) -> str:
    """Short hash of every statement: changes whenever the views' SQL (or settings) change."""
    digest = hashlib.sha256("\n;\n".join(s for _, statements in rendered for s in statements).encode())
    return digest.hexdigest()[:16]


def create_views(
    execute: Execute, profile: ServerProfile, database: str = "vigie", settings: ViewSettings | None = None
) -> list[str]:
    """Create the indicator tables, materialised views and views; return the objects' names.

    ``execute`` runs one statement and returns rows as dicts (a sink's ``query``). Safe and
    cheap to call on every open: when the database already holds this rendering (a marker
    view named after :func:`views_fingerprint`) and every object exists, it runs one query.
    Otherwise tables and materialised views are created ``IF NOT EXISTS`` and views replaced,
    so their SQL follows the code. A materialised view created now is back-filled from its
    source table (harmless if rows arrive meanwhile: its states count distinct ids per minute).

    A sink calls it after creating the tables::

        create_views(self.query, self.profile, self.database)
    """
    db = validate_identifier(database)
    rendered = render_views(profile, db, settings)
    names = [spec.name for spec, _ in rendered]
    marker = MARKER_PREFIX + views_fingerprint(rendered)
    existing = {str(r["name"]) for r in execute(f"SELECT name FROM system.tables WHERE database = '{db}'")}
    if marker in existing and existing.issuperset(names):
        return names
    for spec, statements in rendered:
        for statement in statements:
            execute(statement)
        if spec.kind == "materialized" and spec.name not in existing:
            log.info("back-filling %s.%s from %s", db, spec.target, spec.source)
            execute(f"INSERT INTO {db}.{spec.target}\n{spec.select}")
    execute(f"CREATE VIEW IF NOT EXISTS {db}.{marker} AS SELECT 1 AS rendered")
    for name in existing:
        if name.startswith(MARKER_PREFIX) and name != marker:
            execute(f"DROP TABLE IF EXISTS {db}.{name}")
    return names


# --- pipeline metrics ---------------------------------------------------------------------


def _literal(value: Any, kind: Kind, profile: ServerProfile) -> str:
    """A SQL literal both 18.16 and modern servers read for a column of ``kind``."""
    if value is None:
        return "NULL"
    if kind is Kind.DATETIME:
        assert isinstance(value, datetime)
        utc = value.astimezone(UTC)
        if profile.datetime64:
            return f"toDateTime64('{utc:%Y-%m-%d %H:%M:%S}.{utc.microsecond // 1000:03d}', 3, 'UTC')"
        return f"toDateTime('{utc:%Y-%m-%d %H:%M:%S}', 'UTC')"
    if kind is Kind.BOOL:
        return "1" if value else "0"
    if kind is Kind.INT:
        return str(int(value))
    if kind is Kind.FLOAT:
        return repr(float(value))
    if kind is Kind.STRING:
        escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
        return f"'{escaped}'"
    raise TypeError(f"no literal for {kind}")


def metrics_insert_sql(samples: list[PipelineMetrics], profile: ServerProfile, database: str = "vigie") -> str:
    """``INSERT ... SELECT`` of literal rows: the form every client sends as a plain query.

    (clickhouse-driver cannot send ``INSERT ... VALUES`` without a data block.)
    """
    if not samples:
        raise ValueError("no samples")
    db = validate_identifier(database)
    cols = METRICS_TABLE.columns
    selects = []
    for sample in samples:
        data = sample.__dict__
        values = [f"{_literal(data[c.path[0]], c.kind, profile)} AS {c.name}" for c in cols]
        selects.append("SELECT " + ", ".join(values))
    names = ", ".join(c.name for c in cols)
    return f"INSERT INTO {db}.pipeline_metrics ({names})\n" + "\nUNION ALL\n".join(selects)


class _MetricsSink(Protocol):
    database: str
    profile: ServerProfile

    def query(self, sql: str) -> list[dict[str, Any]]: ...


class PipelineMetricsRecorder:
    """Turns a runtime's progress callbacks into :class:`PipelineMetrics` rows.

    Plug it into the in-process runner: ``run_file(..., on_progress=PipelineMetricsRecorder(sink))``.
    Each call writes one sample with the counts since the previous call; ``lag_s`` is the
    sink's ``metrics.lag_seconds`` (age of the oldest buffered row) when it has one (the
    native sink), else the seconds since its last flush, else empty.

    ``clock`` returns the wall-clock time (UTC), injectable for tests.
    """

    def __init__(
        self,
        sink: _MetricsSink,
        component: str = "runner",
        instance: str = "local",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sink = sink
        self.component = component
        self.instance = instance
        self._clock = clock
        self._last_at = clock()
        self._last: dict[str, int] = {"events": 0, "scores": 0, "alerts": 0, "dead_letters": 0}
        self.samples: list[PipelineMetrics] = []

    def __call__(self, summary: Any) -> None:
        """Record a sample from a :class:`~vigie.streams.runner.RunSummary` (cumulative counts)."""
        now = self._clock()
        totals = {
            "events": int(summary.events),
            "scores": int(summary.scores),
            "alerts": int(summary.alerts),
            "dead_letters": int(summary.dead_letters),
        }
        delta = {k: max(0, v - self._last[k]) for k, v in totals.items()}
        metrics = getattr(self.sink, "metrics", None)
        lag = getattr(metrics, "lag_seconds", None)
        if lag is None:
            # Without a buffer age, the time since the last flush bounds how stale the store is.
            flushed = getattr(metrics, "last_flush_at", None)
            lag = max(0.0, (now - flushed).total_seconds()) if isinstance(flushed, datetime) else None
        buffered = getattr(metrics, "buffered_rows", None)
        sample = PipelineMetrics.sample(
            self.component,
            self.instance,
            now,
            max(0.0, (now - self._last_at).total_seconds()),
            lag_s=float(lag) if lag is not None else None,
            buffered_rows=int(buffered) if buffered is not None else None,
            **delta,
        )
        self.record(sample)
        self._last, self._last_at = totals, now

    def record(self, sample: PipelineMetrics) -> None:
        """Store one sample now (a plain ``INSERT ... SELECT``, outside the sink's buffer)."""
        self.sink.query(metrics_insert_sql([sample], self.sink.profile, self.sink.database))
        self.samples.append(sample)
