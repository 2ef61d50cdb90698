"""The officer console (``vigie console serve``): a FastAPI application over the alert store.

What officers get
-----------------
* ``/alerts``: the live alert feed of their offices (server-sent events from ``/api/stream``),
  sorted by fused risk then by the time left before the arrival the ENS announced, with the
  detectors' reasons in plain words and filters by office, detector and transport mode.
* ``/alerts/{id}``: the alert with each detector's reason and figures, the declaration and its
  ENS, the operator's recent history (declarations and customs value per day, earlier alerts),
  the outcomes recorded so far, and the form recording the control outcome.
* ``/supervisor``: alerts against the daily budget and the hit rate, per office, live.
* ``/operator``: Vision 360, an economic operator's own flows (no alerts, no scores).

Where data comes from and goes
------------------------------
Alerts, declarations, ENS, scores and outcomes are read from the store through the
:class:`~vigie.sinks.base.Sink` ``query`` (chdb by default, a ClickHouse server with
``--clickhouse``). An :class:`AlertWatcher` polls the store for new alerts every
``poll_s`` (0.5 s), appends an ``alert_raised`` audit entry for each, and hands them to the
open feeds: an alert is on officers' screens about ``poll_s`` after it is stored, whatever
runtime stored it.

chdb serves one process per data directory, so the console cannot read the store while
``vigie run`` writes it. ``vigie console serve --replay FILE`` therefore runs the scoring in
the console's own process (:class:`LiveReplay`, paced at ``--replay-rate`` events per second)
into the same store. With a ClickHouse server the engine (Faust workers) and the console are
separate processes.

A recorded outcome is a :class:`~vigie.schemas.ControlOutcome` encoded and decoded by the
shared codec, then sent where integrators' outcomes go (:class:`OutcomePath`):

* embedded: appended to ``<state>/outbox/outcomes.jsonl`` (``vigie run --input`` scores it),
  fed to the in-process :class:`LiveReplay` when one runs (the pipeline processes it like any
  input line), and written to the store at once;
* Kafka (``--kafka-bootstrap``): published to the ``outcomes`` topic by
  :class:`vigie.streams.publish.VigiePublisher` (validated, idempotent producer, delivery
  awaited), and written to the store so the officer sees it immediately (the workers'
  later copy replaces it: same ``event_id``).

Access control is in :mod:`vigie.streams.console_auth`, the audit log in
:mod:`vigie.streams.console_audit`, the pages in :mod:`vigie.streams.console_templates`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlparse

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from vigie.schemas import ControlOutcome, EventRejected, TransportMode, dead_letter, decode_event, encode_event
from vigie.sinks.base import Sink, SinkMetrics
from vigie.sinks.ddl import DEFAULT_DATABASE, MODERN, ServerProfile, validate_identifier

from . import console_templates as tpl
from .console_audit import AuditAnchorMismatch, AuditLog, AuditRecord, sql_literal
from .console_auth import (
    AccountStore,
    ConsoleSecrets,
    LoginRateLimiter,
    Principal,
    Session,
    SessionStore,
    new_token,
    normalise_account_name,
    tokens_match,
)

__all__ = [
    "AlertFilter",
    "AlertWatcher",
    "ConsoleQueries",
    "ConsoleServices",
    "ConsoleSettings",
    "EmbeddedOutcomes",
    "KafkaOutcomes",
    "LiveReplay",
    "LockedStore",
    "OutcomePath",
    "build_services",
    "create_app",
]

log = logging.getLogger(__name__)

SESSION_COOKIE = "vigie_session"
LOGIN_CSRF_COOKIE = "vigie_login_csrf"
CSRF_HEADER = "x-csrf-token"
DETECTORS = ("undervaluation", "atypical_flow", "operator_behaviour", "excise", "ens_pre_arrival")
MODES = tuple(m.value for m in TransportMode)
INVALID_NAME = "(invalid)"
"""Actor of the audit entry (and rate-limit key) of a login with a malformed account name."""
FEED_LIMIT = 500
"""Alerts a feed snapshot or list shows at most (the most recent ones of the scope)."""
HISTORY_DAYS = 30
MAX_CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future an outcome's ``event_time`` may be (clocks of integrators' systems drift)."""
STREAM_RECHECK_S = 5.0
"""Seconds between the live feed's re-checks of the caller's session and account."""

_OFFICE = re.compile(r"^[A-Z]{2}[A-Z0-9]{6}$")
_EORI = re.compile(r"^[A-Z]{2}[A-Za-z0-9]{1,15}$")
_EVENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_SUBMISSION = re.compile(r"^[0-9a-f]{32}$")

ALERT_COLUMNS = (
    "alert_id",
    "subject_event_id",
    "subject_type",
    "subject_reference",
    "event_time",
    "office",
    "operator_eori",
    "transport_mode",
    "fused_risk",
    "rank",
    "selection",
    "contributions",
    "reasons",
    "eur_at_stake",
    "eta",
    "lead_time_hours",
)


# --------------------------------------------------------------------------------------------
# settings and the store
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsoleSettings:
    """How ``vigie console serve`` is set up. ``state_dir`` defaults to ``data_dir/console``."""

    data_dir: Path = Path("vigie-data")
    state_dir: Path | None = None
    database: str = DEFAULT_DATABASE
    clickhouse: str | None = None
    """``HOST:PORT`` of a ClickHouse server (native protocol); None: embedded chdb under ``data_dir``."""
    kafka_bootstrap: str | None = None
    kafka_prefix: str = "vigie."
    replay: Path | None = None
    """JSON-lines events to score in process while serving (embedded mode)."""
    replay_rate: float = 20.0
    """Replayed events per second (0: as fast as possible)."""
    alert_threshold: float = 0.5
    poll_s: float = 0.5
    daily_alert_budget: int = 40
    """Alerts one office can control in a day: the supervisor page compares alerts with it."""
    secure_cookies: bool = False
    """Mark cookies ``Secure`` (set when served over HTTPS, e.g. behind a reverse proxy)."""
    stream_recheck_s: float = STREAM_RECHECK_S
    """How often an open live feed re-checks that its session and account are still valid."""

    @property
    def resolved_state_dir(self) -> Path:
        return self.state_dir or self.data_dir / "console"


class LockedStore:
    """A :class:`~vigie.sinks.base.Sink` shared by the console's threads, one call at a time.

    chdb sessions are not safe for concurrent queries, and :class:`~vigie.sinks.base.BufferedSink`
    only serialises its writes; the console's request threads, the watcher and the replay
    all go through this lock.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.profile: ServerProfile = getattr(sink, "profile", MODERN)
        self._lock = threading.RLock()

    @property
    def metrics(self) -> SinkMetrics:
        return self.sink.metrics

    def write(self, records: Iterable[BaseModel]) -> None:
        with self._lock:
            self.sink.write(records)

    def flush(self) -> None:
        with self._lock:
            self.sink.flush()

    def flush_if_due(self) -> None:
        with self._lock:
            due = getattr(self.sink, "flush_if_due", None)
            if due is not None:
                due()

    def query(self, sql: str) -> list[dict[str, Any]]:
        with self._lock:
            return self.sink.query(sql)

    def close(self) -> None:
        with self._lock:
            self.sink.close()


# --------------------------------------------------------------------------------------------
# reading the store
# --------------------------------------------------------------------------------------------


def _dt(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value).replace(" ", "T"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(value: Any) -> str | None:
    parsed = _dt(value)
    return None if parsed is None else parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_field(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


_DATETIME_COLUMNS = frozenset({"event_time", "eta", "received_at", "entry_time"})
_BOOL_COLUMNS = frozenset({"controlled", "positive", "seizure", "container"})


def _clean(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row made JSON-ready and the same from every sink: datetimes as ISO-8601 UTC strings
    to the second, 0/1 flags as booleans."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in _DATETIME_COLUMNS or isinstance(value, datetime):
            value = _iso(value)
        elif key in _BOOL_COLUMNS and value is not None:
            value = bool(value)
        out[key] = value
    return out


def normalise_alert(row: Mapping[str, Any], clock: datetime | None) -> dict[str, Any]:
    """An alert row as the feed and the API send it, with ``hours_left`` before arrival on ``clock``."""
    alert = {k: row.get(k) for k in ALERT_COLUMNS}
    alert["event_time"] = _iso(alert["event_time"])
    alert["eta"] = _iso(alert["eta"])
    alert["contributions"] = _json_field(alert["contributions"]) or {}
    alert["reasons"] = list(alert["reasons"] or [])
    alert["fused_risk"] = float(alert["fused_risk"])
    alert["eur_at_stake"] = float(alert["eur_at_stake"])
    eta = _dt(alert["eta"])
    alert["hours_left"] = round((eta - clock).total_seconds() / 3600.0, 2) if eta and clock else None
    alert["has_outcome"] = bool(row.get("has_outcome", False))
    return alert


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Filters of the feed and list, validated; the principal's office scope applies on top."""

    office: str | None = None
    detector: str | None = None
    mode: str | None = None

    @classmethod
    def parse(cls, office: str | None, detector: str | None, mode: str | None) -> AlertFilter:
        office, detector, mode = office or None, detector or None, mode or None
        if office is not None and not _OFFICE.match(office):
            raise HTTPException(422, f"invalid office code {office!r}")
        if detector is not None and detector not in DETECTORS:
            raise HTTPException(422, f"unknown detector {detector!r}: one of {', '.join(DETECTORS)}")
        if mode is not None and mode not in MODES:
            raise HTTPException(422, f"unknown transport mode {mode!r}: one of {', '.join(MODES)}")
        return cls(office, detector, mode)

    def matches(self, principal: Principal, alert: Mapping[str, Any]) -> bool:
        """Whether ``alert`` (a normalised alert) is in ``principal``'s scope and passes the filter."""
        if not principal.may_read_office(alert.get("office")):
            return False
        if self.office is not None and alert.get("office") != self.office:
            return False
        if self.detector is not None and not (alert.get("contributions") or {}).get(self.detector, 0.0) > 0:
            return False
        return self.mode is None or alert.get("transport_mode") == self.mode


class ConsoleQueries:
    """Every SQL the console runs, scoped by the caller's principal. Values are validated and quoted."""

    def __init__(self, store: Sink, database: str = DEFAULT_DATABASE, profile: ServerProfile | None = None) -> None:
        self.store = store
        self.db = validate_identifier(database)
        self.profile = profile or getattr(store, "profile", MODERN)

    def _scope_sql(self, principal: Principal, column: str = "office") -> str:
        scope = principal.office_scope()
        if scope is None:
            return "1"
        if not scope:
            return "0"
        return f"{column} IN ({', '.join(sql_literal(o) for o in sorted(scope))})"

    def _contribution_sql(self, detector: str) -> str:
        if self.profile.map_type:
            return f"contributions[{sql_literal(detector)}] > 0"
        return f"visitParamExtractFloat(contributions, {sql_literal(detector)}) > 0"

    def clock(self) -> datetime | None:
        """The stream clock: the latest alert's event time (wall time in a live deployment)."""
        rows = self.store.query(f"SELECT max(event_time) AS t, count() AS n FROM {self.db}.alerts")
        if not rows or not rows[0]["n"]:
            return None
        return _dt(rows[0]["t"])

    def list_alerts(self, principal: Principal, filt: AlertFilter, limit: int = FEED_LIMIT) -> list[dict[str, Any]]:
        """The scope's most recent alerts passing ``filt``, highest priority first."""
        where = [self._scope_sql(principal)]
        if filt.office:
            where.append(f"office = {sql_literal(filt.office)}")
        if filt.detector:
            where.append(self._contribution_sql(filt.detector))
        if filt.mode:
            where.append(f"transport_mode = {sql_literal(filt.mode)}")
        rows = self.store.query(
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM {self.db}.alerts FINAL WHERE {' AND '.join(where)} "
            f"ORDER BY event_time DESC LIMIT {int(limit)}"
        )
        if rows:
            ids = ", ".join(sql_literal(r["alert_id"]) for r in rows)
            done = {
                r["alert_id"]
                for r in self.store.query(f"SELECT DISTINCT alert_id FROM {self.db}.outcomes WHERE alert_id IN ({ids})")
            }
            for row in rows:
                row["has_outcome"] = row["alert_id"] in done
        clock = self.clock()
        alerts = [normalise_alert(r, clock) for r in rows]
        alerts.sort(key=_priority)
        return alerts

    def new_alerts(
        self, since_epoch: int, after: tuple[int, str] | None = None, limit: int = 5_000
    ) -> list[dict[str, Any]]:
        """Alert rows stored at or after ``since_epoch`` (``ingested`` = their insert second), in
        (second, id) order; ``after`` continues past a full page."""
        where = f"ingested_at >= toDateTime({int(since_epoch)})"
        if after is not None:
            second, alert_id = int(after[0]), sql_literal(after[1])
            where += (
                f" AND (toUInt32(ingested_at) > {second}"
                f" OR (toUInt32(ingested_at) = {second} AND alert_id > {alert_id}))"
            )
        return self.store.query(
            f"SELECT {', '.join(ALERT_COLUMNS)}, toUInt32(ingested_at) AS ingested FROM {self.db}.alerts "
            f"WHERE {where} ORDER BY ingested, alert_id LIMIT {int(limit)}"
        )

    def alert(self, alert_id: str) -> dict[str, Any] | None:
        if not _EVENT_ID.match(alert_id):
            return None
        rows = self.store.query(
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM {self.db}.alerts FINAL WHERE alert_id = {sql_literal(alert_id)} "
            "LIMIT 1"
        )
        return rows[0] if rows else None

    def alert_detail(self, principal: Principal, alert_id: str) -> dict[str, Any] | None:
        """Everything the detail page shows, or None when missing or out of ``principal``'s scope."""
        row = self.alert(alert_id)
        if row is None or not principal.may_read_office(row["office"]):
            return None
        clock = self.clock()
        alert = normalise_alert(row, clock)
        subject = sql_literal(alert["subject_event_id"])
        detail: dict[str, Any] = {"alert": alert, "declaration": None, "ens": None, "excise": None}
        ens_reference: str | None = None
        if alert["subject_type"] == "declaration":
            decl = self.store.query(f"SELECT * FROM {self.db}.declarations FINAL WHERE event_id = {subject} LIMIT 1")
            if decl:
                declaration = _clean(decl[0])
                declaration["items"] = [
                    _clean(r)
                    for r in self.store.query(
                        f"SELECT * FROM {self.db}.declaration_items FINAL WHERE event_id = {subject} "
                        "ORDER BY item_number"
                    )
                ]
                detail["declaration"] = declaration
                ens_reference = declaration.get("ens_reference")
        elif alert["subject_type"] == "ens":
            ens_reference = alert["subject_reference"]
        elif alert["subject_type"] == "excise":
            rows = self.store.query(f"SELECT * FROM {self.db}.excise FINAL WHERE event_id = {subject} LIMIT 1")
            detail["excise"] = _clean(rows[0]) if rows else None
        if ens_reference:
            rows = self.store.query(
                f"SELECT * FROM {self.db}.ens FINAL WHERE ens_reference = {sql_literal(ens_reference)} "
                "ORDER BY event_time DESC LIMIT 1"
            )
            detail["ens"] = _clean(rows[0]) if rows else None
        detail["scores"] = [
            {**_clean(r), "reason_fields": _json_field(r["reason_fields"]) or {}}
            for r in self.store.query(
                f"SELECT detector, item_number, score, eur_at_stake, reason, reason_fields FROM {self.db}.scores FINAL "
                f"WHERE subject_event_id = {subject} ORDER BY score DESC LIMIT 20"
            )
        ]
        detail["outcomes"] = self.outcomes_for(alert)
        detail["history"] = self.operator_history(principal, alert, clock)
        return detail

    def outcomes_for(self, alert: Mapping[str, Any]) -> list[dict[str, Any]]:
        rows = self.store.query(
            f"SELECT event_id, event_time, officer_id, office, controlled, positive, infringement_type, "
            f"duty_recovered_eur, tax_recovered_eur, seizure, selection, alert_id, source_system "
            f"FROM {self.db}.outcomes FINAL WHERE alert_id = {sql_literal(alert['alert_id'])} "
            f"OR target_reference = {sql_literal(alert['subject_reference'])} ORDER BY event_time"
        )
        return [_clean(r) for r in rows]

    def outcome_exists(self, event_id: str) -> bool:
        rows = self.store.query(f"SELECT count() AS n FROM {self.db}.outcomes WHERE event_id = {sql_literal(event_id)}")
        return bool(rows and rows[0]["n"])

    def outcome_of_alert(self, alert_id: str, target_event_id: str | None = None) -> str | None:
        """The ``event_id`` of an outcome already recorded for ``alert_id`` (or for its subject
        ``target_event_id``: the engine learns from the first outcome of a subject), or None."""
        where = f"alert_id = {sql_literal(alert_id)}"
        if target_event_id:
            where += f" OR target_event_id = {sql_literal(target_event_id)}"
        rows = self.store.query(f"SELECT event_id FROM {self.db}.outcomes WHERE {where} ORDER BY event_time LIMIT 1")
        return str(rows[0]["event_id"]) if rows else None

    def operator_history(
        self, principal: Principal, alert: Mapping[str, Any], clock: datetime | None
    ) -> dict[str, Any]:
        """The operator's declarations and customs value per day over ``HISTORY_DAYS`` days of stream
        time (all offices: it is the operator's behaviour), and its earlier alerts in the
        principal's own offices only (other offices' alerts stay out of scope)."""
        eori = alert.get("operator_eori")
        if not eori or not _EORI.match(eori) or clock is None:
            return {"per_day": [], "alerts": []}
        since = sql_literal(clock - timedelta(days=HISTORY_DAYS))
        who = sql_literal(eori)
        counts = self.store.query(
            f"SELECT toString(toDate(event_time)) AS day, count() AS declarations FROM {self.db}.declarations FINAL "
            f"WHERE importer_eori = {who} AND event_time >= toDateTime({since}) GROUP BY day ORDER BY day"
        )
        values = {
            r["day"]: float(r["v"])
            for r in self.store.query(
                f"SELECT toString(toDate(event_time)) AS day, sum(customs_value_eur) AS v "
                f"FROM {self.db}.declaration_items FINAL WHERE importer_eori = {who} "
                f"AND event_time >= toDateTime({since}) GROUP BY day"
            )
        }
        per_day = [
            {"day": r["day"], "declarations": int(r["declarations"]), "customs_value_eur": values.get(r["day"], 0.0)}
            for r in counts
        ]
        earlier = self.store.query(
            f"SELECT event_time, office, subject_reference, fused_risk, eur_at_stake FROM {self.db}.alerts FINAL "
            f"WHERE operator_eori = {who} AND alert_id != {sql_literal(alert['alert_id'])} "
            f"AND {self._scope_sql(principal)} ORDER BY event_time DESC LIMIT 20"
        )
        return {"per_day": per_day, "alerts": [_clean(r) for r in earlier]}

    def indicators(self, principal: Principal, budget: int) -> dict[str, Any]:
        """Supervisor indicators for the latest day of alerts and the latest day of outcomes.

        ``hit_rate_pct``: positive controls per 100 controls; ``alert_hit_rate_pct``: the same
        for controls selected by an engine alert; ``budget_used_pct``: alerts per 100 of the
        daily budget.
        """
        scope = self._scope_sql(principal)
        day_rows = self.store.query(
            f"SELECT toString(toDate(max(event_time))) AS d, count() AS n FROM {self.db}.alerts WHERE {scope}"
        )
        alert_day = day_rows[0]["d"] if day_rows and day_rows[0]["n"] else None
        out_rows = self.store.query(
            f"SELECT toString(toDate(max(event_time))) AS d, count() AS n FROM {self.db}.outcomes WHERE {scope}"
        )
        outcome_day = out_rows[0]["d"] if out_rows and out_rows[0]["n"] else None
        per_office: dict[str, dict[str, Any]] = {}

        def office(name: str) -> dict[str, Any]:
            return per_office.setdefault(
                name,
                {
                    "office": name,
                    "alerts": 0,
                    "controlled": 0,
                    "positive": 0,
                    "alert_controlled": 0,
                    "alert_positive": 0,
                    "recovered_eur": 0.0,
                },
            )

        if alert_day:
            for r in self.store.query(
                f"SELECT office, count() AS n FROM {self.db}.alerts FINAL "
                f"WHERE {scope} AND toDate(event_time) = toDate({sql_literal(alert_day)}) GROUP BY office"
            ):
                office(r["office"])["alerts"] = int(r["n"])
        if outcome_day:
            for r in self.store.query(
                f"SELECT office, countIf(controlled = 1) AS c, countIf(positive = 1) AS p, "
                f"countIf(controlled = 1 AND selection = 'engine_alert') AS ac, "
                f"countIf(positive = 1 AND selection = 'engine_alert') AS ap, "
                f"sum(duty_recovered_eur + tax_recovered_eur) AS r FROM {self.db}.outcomes FINAL "
                f"WHERE {scope} AND toDate(event_time) = toDate({sql_literal(outcome_day)}) GROUP BY office"
            ):
                o = office(r["office"])
                o.update(
                    controlled=int(r["c"]),
                    positive=int(r["p"]),
                    alert_controlled=int(r["ac"]),
                    alert_positive=int(r["ap"]),
                    recovered_eur=round(float(r["r"]), 2),
                )
        rows = sorted(per_office.values(), key=lambda o: -o["alerts"])
        for o in rows:
            _rates(o, budget)
        total = {
            k: sum(o[k] for o in rows)
            for k in ("alerts", "controlled", "positive", "alert_controlled", "alert_positive", "recovered_eur")
        }
        _rates(total, budget * max(len(rows), 1))
        total["recovered_eur"] = round(total["recovered_eur"], 2)
        return {"alert_day": alert_day, "outcome_day": outcome_day, "offices": rows, "total": total}

    def operator_stats(self, eori: str) -> dict[str, Any]:
        """Vision 360: statistics of the flows declared by or for ``eori`` (importer or declarant)."""
        who = sql_literal(eori)
        own = f"SELECT event_id FROM {self.db}.declarations FINAL WHERE importer_eori = {who} OR declarant_eori = {who}"
        head = self.store.query(
            f"SELECT count() AS declarations FROM {self.db}.declarations FINAL "
            f"WHERE importer_eori = {who} OR declarant_eori = {who}"
        )[0]
        items = self.store.query(
            f"SELECT count() AS items, sum(customs_value_eur) AS v, sum(duty_eur) AS d, sum(vat_eur) AS t "
            f"FROM {self.db}.declaration_items FINAL WHERE event_id IN ({own})"
        )[0]
        controls = self.store.query(
            f"SELECT countIf(controlled = 1) AS c, countIf(positive = 1) AS p FROM {self.db}.outcomes FINAL "
            f"WHERE target_event_id IN ({own})"
        )[0]
        per_day = self.store.query(
            f"SELECT toString(toDate(event_time)) AS day, count() AS declarations FROM {self.db}.declarations FINAL "
            f"WHERE importer_eori = {who} OR declarant_eori = {who} GROUP BY day ORDER BY day"
        )
        chapters = self.store.query(
            f"SELECT substring(cn_code, 1, 2) AS chapter, count() AS items, round(sum(customs_value_eur)) AS "
            f"customs_value_eur, round(sum(duty_eur)) AS duty_eur FROM {self.db}.declaration_items FINAL "
            f"WHERE event_id IN ({own}) GROUP BY chapter ORDER BY customs_value_eur DESC LIMIT 15"
        )
        origins = self.store.query(
            f"SELECT origin_country, count() AS items, round(sum(customs_value_eur)) AS customs_value_eur "
            f"FROM {self.db}.declaration_items FINAL WHERE event_id IN ({own}) GROUP BY origin_country "
            "ORDER BY customs_value_eur DESC LIMIT 15"
        )
        offices = self.store.query(
            f"SELECT customs_office AS office, count() AS declarations FROM {self.db}.declarations FINAL "
            f"WHERE importer_eori = {who} OR declarant_eori = {who} GROUP BY office ORDER BY declarations DESC"
        )
        return {
            "eori": eori,
            "totals": {
                "declarations": int(head["declarations"]),
                "items": int(items["items"]),
                "customs_value_eur": round(float(items["v"] or 0), 2),
                "duty_eur": round(float(items["d"] or 0), 2),
                "vat_eur": round(float(items["t"] or 0), 2),
                "controls": int(controls["c"]),
                "positive_controls": int(controls["p"]),
            },
            "per_day": [{"day": r["day"], "declarations": int(r["declarations"])} for r in per_day],
            "chapters": chapters,
            "origins": origins,
            "offices": offices,
        }


def _rates(o: dict[str, Any], budget: int) -> None:
    o["budget"] = budget
    o["budget_used_pct"] = round(100.0 * o["alerts"] / budget, 1) if budget else None
    o["hit_rate_pct"] = round(100.0 * o["positive"] / o["controlled"], 1) if o["controlled"] else None
    o["alert_hit_rate_pct"] = (
        round(100.0 * o["alert_positive"] / o["alert_controlled"], 1) if o["alert_controlled"] else None
    )


def _priority(alert: Mapping[str, Any]) -> tuple[float, float]:
    """Feed order: highest risk first; among equal risks, the least time left before arrival
    (already-arrived goods after those still to come)."""
    left = alert.get("hours_left")
    if left is None:
        urgency = float("inf")
    elif left < 0:
        urgency = 1e9 - left
    else:
        urgency = left
    return (-float(alert["fused_risk"]), urgency)


# --------------------------------------------------------------------------------------------
# the alert watcher: new alerts -> audit log and live feeds
# --------------------------------------------------------------------------------------------


class AlertWatcher:
    """Polls the store for alerts not seen yet; audits each once and keeps the recent ones for feeds.

    Feeds read :meth:`since` with the position they last saw; positions count alerts since
    the console started.
    """

    def __init__(
        self,
        queries: ConsoleQueries,
        audit: AuditLog | None,
        poll_s: float = 0.5,
        keep: int = 2_000,
        page: int = 5_000,
    ) -> None:
        self.queries = queries
        self.page = page
        self.audit = audit
        self.poll_s = poll_s
        self.clock: datetime | None = None
        self._recent: deque[tuple[int, dict[str, Any]]] = deque(maxlen=keep)
        self._count = 0
        self._cursor = 0  # insert second (epoch) fully read
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()  # one poll at a time: the thread, or a caller of poll_once
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._known: set[str] = set()
        if audit is not None:
            rows = queries.store.query(
                f"SELECT DISTINCT subject_id FROM {audit.database}.audit_log WHERE action = 'alert_raised'"
            )
            self._known = {r["subject_id"] for r in rows}
        self.errors = 0

    def position(self) -> int:
        with self._lock:
            return self._count

    def since(self, position: int) -> tuple[list[dict[str, Any]], int]:
        """Alerts found after ``position`` (those still kept) and the new position."""
        with self._lock:
            return [a for n, a in self._recent if n > position], self._count

    def poll_once(self) -> int:
        """Read new alerts, audit them, publish them to feeds; returns how many were new."""
        with self._poll_lock:
            return self._poll()

    def _poll(self) -> int:
        # One second of overlap: rows inserted later in the second already read are re-read,
        # and recognised by id.
        rows: list[dict[str, Any]] = []
        after: tuple[int, str] | None = None
        while True:  # page through a backlog (first start on a full store)
            page = self.queries.new_alerts(max(self._cursor - 1, 0), after, self.page)
            rows += page
            if len(page) < self.page:
                break
            after = (int(page[-1]["ingested"]), page[-1]["alert_id"])
        fresh = [r for r in rows if r["alert_id"] not in self._known]
        if rows:
            self._cursor = max(self._cursor, max(int(r["ingested"]) for r in rows))
        if not fresh:
            return 0
        by_id = {r["alert_id"]: r for r in fresh}  # a re-sent alert within the batch counts once
        fresh = list(by_id.values())
        latest = max(_dt(r["event_time"]) for r in fresh)
        if latest is not None and (self.clock is None or latest > self.clock):
            self.clock = latest
        alerts = [normalise_alert(r, self.clock) for r in fresh]
        if self.audit is not None:
            self.audit.append_many(
                AuditRecord(
                    action="alert_raised",
                    actor="engine",
                    actor_role="engine",
                    subject_type="alert",
                    subject_id=a["alert_id"],
                    office=a["office"],
                    detail={
                        "subject_reference": a["subject_reference"],
                        "subject_event_id": a["subject_event_id"],
                        "operator_eori": a["operator_eori"],
                        "fused_risk": a["fused_risk"],
                        "eur_at_stake": a["eur_at_stake"],
                        "event_time": a["event_time"],
                        "reasons": a["reasons"][:3],
                    },
                )
                for a in alerts
            )
        self._known.update(by_id)
        with self._lock:
            for alert in sorted(alerts, key=_priority):
                self._count += 1
                self._recent.append((self._count, alert))
        return len(alerts)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="vigie-alert-watcher", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """Poll now rather than at the next tick: the in-process engine just stored an alert."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.poll_once()
            except Exception:
                self.errors += 1
                log.exception("alert watcher poll failed; retrying")
            self._wake.wait(self.poll_s)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


# --------------------------------------------------------------------------------------------
# the in-process engine for embedded mode
# --------------------------------------------------------------------------------------------


class LiveReplay:
    """Scores a JSON-lines file into the store while the console serves (embedded mode).

    Lines are paced at ``rate`` per second (0: flat out). Lines put on :attr:`inbox` (the
    console's outcomes) are processed between file lines, and after the file ends, through
    the same codec and pipeline. The store is flushed by its own policy (``flush_if_due``
    on every line and every idle tick), so an alert is stored within the sink's
    ``max_delay_s`` of being raised.
    """

    def __init__(self, store: LockedStore, pipeline: Any, path: Path | None, rate: float = 20.0) -> None:
        self.store = store
        self.pipeline = pipeline
        self.path = path
        self.rate = rate
        self.inbox: queue.Queue[bytes] = queue.Queue()
        self.lines = 0
        self.alerts = 0
        self.dead_letters = 0
        self.finished = threading.Event()
        """Set once the file is scored and flushed to the store (the inbox is still served)."""
        self.on_alert: Callable[[], None] | None = None
        """Called after an alert is flushed to the store (the console wakes its watcher)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inbox_lines = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vigie-live-replay", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        try:
            if self.path is not None:
                self._replay(self.path)
                self.store.flush()
            self.finished.set()
            while not self._stop.is_set():
                try:  # block on the inbox, so a line handed over is scored at once
                    raw = self.inbox.get(timeout=0.2)
                except queue.Empty:
                    self.store.flush_if_due()
                    continue
                self._inbox_lines += 1
                self.process(raw, f"console-outbox:{self._inbox_lines}")
                self._drain_inbox()
                self.store.flush_if_due()
            self._drain_inbox()
            self.store.flush()
        except Exception:
            log.exception("live replay stopped on an error")

    def _replay(self, path: Path) -> None:
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        next_at = time.monotonic()
        source = f"file:{path.resolve()}"
        with open(path, "rb") as lines:
            for line_no, raw in enumerate(lines, start=1):
                if self._stop.is_set():
                    return
                self._drain_inbox()
                if interval:
                    wait = next_at - time.monotonic()
                    if wait > 0 and self._stop.wait(wait):
                        return
                    next_at = max(next_at + interval, time.monotonic() - 1.0)  # no burst after a stall
                self.process(raw.rstrip(b"\r\n"), f"{source}:{line_no}")
                self.store.flush_if_due()

    def _drain_inbox(self) -> None:
        while True:
            try:
                raw = self.inbox.get_nowait()
            except queue.Empty:
                return
            self._inbox_lines += 1
            self.process(raw, f"console-outbox:{self._inbox_lines}")

    def process(self, raw: bytes, where: str) -> None:
        """Decode one line, score it, write event, scores and alert (or its dead letter)."""
        if not raw.strip():
            return
        self.lines += 1
        try:
            event = decode_event(raw)
        except EventRejected as rejected:
            self.dead_letters += 1
            self.store.write([dead_letter(raw, where, rejected)])
            return
        result = self.pipeline.process(event)
        alerts = result.alerts
        records: list[BaseModel] = [event, *result.scores, *alerts]
        self.alerts += len(alerts)
        self.store.write(records)
        if alerts:
            # An officer waits for this one: store it now (alerts are ~1 % of events) and wake the watcher.
            self.store.flush()
            if self.on_alert is not None:
                self.on_alert()


# --------------------------------------------------------------------------------------------
# where recorded outcomes go
# --------------------------------------------------------------------------------------------


class OutcomeNotDelivered(RuntimeError):
    """The outcome could not be handed to the engine (Kafka did not acknowledge it)."""


class OutcomeConflict(RuntimeError):
    """The alert already has an outcome: a second one is refused (there is no correction yet)."""

    def __init__(self, alert_id: str, earlier: str) -> None:
        super().__init__(
            f"an outcome is already recorded for alert {alert_id} (event {earlier}); "
            "a second outcome is refused: outcomes cannot be corrected through the console"
        )
        self.alert_id = alert_id
        self.earlier = earlier


class OutcomePath(Protocol):
    """Sends a validated control outcome where integrators' outcomes go."""

    def emit(self, outcome: ControlOutcome) -> None: ...

    def close(self) -> None: ...


def _checked_bytes(outcome: ControlOutcome) -> bytes:
    """The outcome's wire bytes, proven decodable by the shared codec (what every runtime reads)."""
    raw = encode_event(outcome)
    decoded = decode_event(raw)
    if not isinstance(decoded, ControlOutcome) or decoded != outcome:
        raise EventRejected("the outcome does not survive encoding", None)
    return raw


class EmbeddedOutcomes:
    """Embedded mode: outbox file, in-process engine (when running) and the store."""

    def __init__(self, store: Sink, outbox: Path, inbox: queue.Queue[bytes] | None = None) -> None:
        self.store = store
        self.outbox = outbox
        self.inbox = inbox
        self._lock = threading.Lock()
        outbox.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def emit(self, outcome: ControlOutcome) -> None:
        raw = _checked_bytes(outcome)
        with self._lock:
            # Durable first: the outbox is what `vigie run --input` scores after a crash.
            fd = os.open(self.outbox, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, raw + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        if self.inbox is not None:
            self.inbox.put(raw)
        self.store.write([outcome])
        self.store.flush()

    def close(self) -> None:
        return None


class KafkaOutcomes:
    """Kafka mode: the ``outcomes`` topic through :class:`vigie.streams.publish.VigiePublisher`."""

    def __init__(self, bootstrap: str, prefix: str = "vigie.", store: Sink | None = None, timeout_s: float = 10.0):
        from .publish import VigiePublisher

        self.publisher: VigiePublisher | None = VigiePublisher(bootstrap, prefix=prefix)
        self.store = store
        self.timeout_s = timeout_s
        self._lock = threading.Lock()  # the publisher is not thread-safe

    def emit(self, outcome: ControlOutcome) -> None:
        raw = _checked_bytes(outcome)
        with self._lock:
            publisher = self.publisher
            if publisher is None:
                raise OutcomeNotDelivered("the console is shutting down")
            before = len(publisher.report.rejections)
            if not publisher.publish("outcomes", raw, source="vigie-console"):
                raise OutcomeNotDelivered(str(publisher.report.rejections[-1]))
            remaining = publisher.flush(self.timeout_s)
            new = publisher.report.rejections[before:]
        if remaining or new:
            raise OutcomeNotDelivered(str(new[0]) if new else f"not acknowledged within {self.timeout_s:.0f}s")
        if self.store is not None:
            self.store.write([outcome])
            self.store.flush()

    def close(self) -> None:
        if self.publisher is None:
            return
        self.publisher.close(self.timeout_s)
        # Drop the producer now: a live librdkafka client keeps reconnecting to a stopped broker.
        self.publisher = None


# --------------------------------------------------------------------------------------------
# services
# --------------------------------------------------------------------------------------------


@dataclass
class ConsoleServices:
    """Everything the routes use; :func:`build_services` wires them from :class:`ConsoleSettings`."""

    settings: ConsoleSettings
    store: LockedStore
    queries: ConsoleQueries
    accounts: AccountStore
    audit: AuditLog
    outcomes: OutcomePath
    watcher: AlertWatcher
    sessions: SessionStore = field(default_factory=SessionStore)
    limiter: LoginRateLimiter = field(default_factory=LoginRateLimiter)
    replay: LiveReplay | None = None
    owns_store: bool = True
    _started: bool = False

    @classmethod
    def create(
        cls,
        settings: ConsoleSettings,
        sink: Sink,
        accounts: AccountStore | None = None,
        outcomes: OutcomePath | None = None,
        replay_pipeline: Any = None,
        owns_store: bool = True,
    ) -> ConsoleServices:
        """Wire services around an open ``sink`` (tests pass their own)."""
        state = settings.resolved_state_dir
        secrets = ConsoleSecrets.load_or_create(state)
        store = sink if isinstance(sink, LockedStore) else LockedStore(sink)
        queries = ConsoleQueries(store, settings.database)
        audit = AuditLog(store, secrets.audit_key, state / "audit-head.json", settings.database)
        if audit.refusal is not None:
            # Serving would audit nothing (every append is refused): refuse to start instead.
            raise AuditAnchorMismatch(audit.refusal)
        replay = None
        if settings.replay is not None or replay_pipeline is not None:
            if replay_pipeline is None:
                from vigie.operators import NoisyOrAlerting, ScoringPipeline

                replay_pipeline = ScoringPipeline(alerting=NoisyOrAlerting(threshold=settings.alert_threshold))
            replay = LiveReplay(store, replay_pipeline, settings.replay, settings.replay_rate)
        if outcomes is None:
            if settings.kafka_bootstrap:
                outcomes = KafkaOutcomes(settings.kafka_bootstrap, settings.kafka_prefix, store)
            else:
                outcomes = EmbeddedOutcomes(
                    store, state / "outbox" / "outcomes.jsonl", replay.inbox if replay is not None else None
                )
        watcher = AlertWatcher(queries, audit, settings.poll_s)
        if replay is not None:
            replay.on_alert = watcher.nudge
        return cls(
            settings=settings,
            store=store,
            queries=queries,
            accounts=accounts or AccountStore(state / "accounts.json"),
            audit=audit,
            outcomes=outcomes,
            watcher=watcher,
            replay=replay,
            owns_store=owns_store,
        )

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.watcher.start()
        if self.replay is not None:
            self.replay.start()

    def close(self) -> None:
        if self.replay is not None:
            self.replay.stop()
        self.watcher.stop()
        with contextlib.suppress(Exception):
            self.outcomes.close()
        if self.owns_store:
            self.store.close()
        self._started = False


def build_services(settings: ConsoleSettings) -> ConsoleServices:
    """Open the store named by ``settings`` and wire the console around it."""
    sink: Sink
    if settings.clickhouse:
        from vigie.sinks.native_sink import NativeSink

        host, _, port = settings.clickhouse.rpartition(":")
        sink = NativeSink(host or "127.0.0.1", int(port or 9000), settings.database, max_delay_s=settings.poll_s)
    else:
        from vigie.sinks.chdb_sink import ChdbSink

        sink = ChdbSink(settings.data_dir / "clickhouse", settings.database, max_delay_s=settings.poll_s)
    try:
        return ConsoleServices.create(settings, sink)
    except BaseException:
        sink.close()
        raise


# --------------------------------------------------------------------------------------------
# the application
# --------------------------------------------------------------------------------------------

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _user_view(principal: Principal) -> dict[str, Any]:
    offices = sorted(principal.offices)
    return {"name": principal.name, "role": principal.role, "offices": offices, "eori": principal.eori}


def _safe_next(value: str | None) -> str:
    """Only same-site paths after login (no open redirect to another host)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def create_app(services: ConsoleServices, manage_lifecycle: bool = True) -> FastAPI:
    """The console application. With ``manage_lifecycle`` it starts the watcher (and replay)
    when the server starts and closes every service when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            services.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await run_in_threadpool(services.close)

    app = FastAPI(title="Vigie officer console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.services = services
    s = services
    cookie_flags: dict[str, Any] = {"httponly": True, "samesite": "strict", "secure": s.settings.secure_cookies}

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            # Defence in depth beside CSRF tokens: a browser's cross-site POST carries a foreign Origin.
            origin = request.headers.get("origin")
            if origin and origin != "null" and urlparse(origin).netloc != request.headers.get("host"):
                return PlainTextResponse("cross-origin request refused", status_code=403)
        response: Response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    # -- who is calling ---------------------------------------------------------------------

    def session_of(request: Request) -> tuple[Principal, Session] | None:
        session = s.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return None
        principal = s.accounts.principal(session.name)
        if principal is None:  # disabled or deleted since login
            s.sessions.revoke(request.cookies.get(SESSION_COOKIE))
            return None
        return principal, session

    def api_principal(request: Request) -> tuple[Principal, Session | None]:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if key:
            principal = s.accounts.authenticate_api_key(key)
            if principal is None:
                raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
            return principal, None
        found = session_of(request)
        if found is None:
            raise HTTPException(401, "not signed in", headers={"WWW-Authenticate": "Bearer"})
        return found

    def alert_reader(request: Request) -> Principal:
        principal, _ = api_principal(request)
        if not principal.reads_alerts:
            raise HTTPException(403, f"the {principal.role} role cannot read alerts")
        return principal

    def html_user(request: Request, roles: tuple[str, ...]) -> tuple[Principal, Session] | Response:
        found = session_of(request)
        if found is None:
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        principal, session = found
        if principal.role not in roles:
            return HTMLResponse(
                tpl.error_page(
                    403, f"the {principal.role} role cannot open this page", _user_view(principal), session.csrf
                ),
                status_code=403,
            )
        return found

    # -- static -----------------------------------------------------------------------------

    static = {
        "console.css": (tpl.CONSOLE_CSS, "text/css"),
        "feed.js": (tpl.FEED_JS, "text/javascript"),
        "supervisor.js": (tpl.SUPERVISOR_JS, "text/javascript"),
    }

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in static:
            raise HTTPException(404, "no such file")
        body, media = static[name]
        return Response(body, media_type=media, headers={"Cache-Control": "max-age=300"})

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        health: dict[str, Any] = {
            "status": "ok",
            "watcher_errors": s.watcher.errors,
            "audit_next_seq": s.audit.next_seq,
        }
        if s.replay is not None:
            health["replay"] = {
                "lines": s.replay.lines,
                "alerts": s.replay.alerts,
                "dead_letters": s.replay.dead_letters,
                "finished": s.replay.finished.is_set(),
            }
        return health

    # -- login ------------------------------------------------------------------------------

    def login_form(next_url: str, error: str | None = None, status: int = 200) -> Response:
        token = new_token()
        response = HTMLResponse(tpl.login_page(token, next_url, error), status_code=status)
        response.set_cookie(LOGIN_CSRF_COOKIE, token, path="/login", max_age=1800, **cookie_flags)
        return response

    @app.get("/login")
    def login_get(request: Request, next: str = "/") -> Response:
        if session_of(request) is not None:
            return RedirectResponse(_safe_next(next), status_code=303)
        return login_form(_safe_next(next))

    @app.post("/login")
    async def login_post(request: Request) -> Response:
        form = await request.form()
        # None for what cannot be an account name (too long, non-ASCII...): no password check,
        # but the same answer, rate limit and audit entry as a wrong password.
        name = normalise_account_name(str(form.get("username", "")))
        password = str(form.get("password", ""))[:1024]
        next_url = _safe_next(str(form.get("next", "/")))
        if not tokens_match(request.cookies.get(LOGIN_CSRF_COOKIE), str(form.get("csrf_token", ""))):
            return login_form(next_url, "The form expired: please sign in again.", 403)
        address = _client_address(request)
        limited = name or INVALID_NAME
        # Reserve the attempt before the slow scrypt check, so concurrent tries count at once.
        wait = s.limiter.begin_attempt(limited, address)
        if wait is not None:
            response = login_form(next_url, f"Too many failed attempts: try again in {int(wait) + 1} s.", 429)
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        principal = None
        try:
            if name is not None:
                principal = await run_in_threadpool(s.accounts.authenticate, name, password)
        finally:
            s.limiter.end_attempt(limited, address, success=principal is not None)
        if principal is None:
            detail = {"address": address} if name is not None else {"address": address, "reason": "invalid name"}
            await run_in_threadpool(
                s.audit.append, "login_failed", limited, "unknown", "account", name or "", None, detail
            )
            return login_form(next_url, "Wrong account name or password.", 401)
        token, _ = s.sessions.create(principal.name)
        await run_in_threadpool(
            s.audit.append,
            "login",
            principal.name,
            principal.role,
            "account",
            principal.name,
            None,
            {"address": address},
        )
        response = RedirectResponse(next_url, status_code=303)
        response.set_cookie(SESSION_COOKIE, token, path="/", **cookie_flags)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        found = session_of(request)
        if found is not None:
            principal, session = found
            form = await request.form()
            if not tokens_match(session.csrf, str(form.get("csrf_token", ""))):
                raise HTTPException(403, "missing or wrong CSRF token")
            s.sessions.revoke(request.cookies.get(SESSION_COOKIE))
            await run_in_threadpool(s.audit.append, "logout", principal.name, principal.role, "account", principal.name)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # -- pages ------------------------------------------------------------------------------

    @app.get("/")
    def home(request: Request) -> Response:
        found = session_of(request)
        if found is None:
            return RedirectResponse("/login", status_code=303)
        role = found[0].role
        target = {"officer": "/alerts", "supervisor": "/alerts", "operator": "/operator"}.get(role)
        if target is None:
            return HTMLResponse(tpl.error_page(403, "integrator accounts publish through the API only"), 403)
        return RedirectResponse(target, status_code=303)

    @app.get("/alerts")
    def alerts_html(request: Request) -> Response:
        found = html_user(request, ("officer", "supervisor"))
        if isinstance(found, Response):
            return found
        principal, session = found
        offices = sorted(principal.offices - {"*"}) if not principal.all_offices else _known_offices(s)
        return HTMLResponse(tpl.alerts_page(_user_view(principal), session.csrf, offices, DETECTORS, MODES))

    @app.get("/alerts/{alert_id}")
    def alert_html(request: Request, alert_id: str, recorded: str | None = None) -> Response:
        found = html_user(request, ("officer", "supervisor"))
        if isinstance(found, Response):
            return found
        principal, session = found
        detail = s.queries.alert_detail(principal, alert_id)
        if detail is None:
            return HTMLResponse(
                tpl.error_page(404, "no such alert in your offices", _user_view(principal), session.csrf), 404
            )
        s.audit.append("alert_viewed", principal.name, principal.role, "alert", alert_id, detail["alert"]["office"])
        message = {"1": "Outcome recorded.", "dup": "This outcome was already recorded."}.get(recorded or "")
        return HTMLResponse(
            tpl.alert_detail_page(_user_view(principal), session.csrf, detail, uuid.uuid4().hex, message)
        )

    @app.post("/alerts/{alert_id}/outcome")
    async def outcome_form(request: Request, alert_id: str) -> Response:
        found = html_user(request, ("officer", "supervisor"))
        if isinstance(found, Response):
            return found
        principal, session = found
        form = await request.form()
        if not tokens_match(session.csrf, str(form.get("csrf_token", ""))):
            return HTMLResponse(tpl.error_page(403, "missing or wrong CSRF token: reload the page"), 403)
        row = await run_in_threadpool(s.queries.alert, alert_id)
        if row is None or not principal.may_read_office(row["office"]):
            return HTMLResponse(tpl.error_page(404, "no such alert in your offices"), 404)
        submission = str(form.get("submission_id", ""))
        if not _SUBMISSION.match(submission):
            return HTMLResponse(tpl.error_page(400, "malformed form: reload the page"), 400)
        event_id = f"console-{submission}"

        def flag(name: str) -> bool:
            return str(form.get(name, "")) in ("1", "on", "true")

        def amount(name: str) -> Any:
            text = str(form.get(name, "") or "0").strip()
            try:
                return float(text)
            except ValueError:
                return text  # pydantic names the field and the reason

        data = {
            "event_id": event_id,
            "event_time": event_time_for(event_id).isoformat(),
            "source_system": "vigie-console",
            "target_type": row["subject_type"],
            "target_reference": row["subject_reference"],
            "target_event_id": row["subject_event_id"],
            "controlled": flag("controlled"),
            "positive": flag("positive"),
            "infringement_type": str(form.get("infringement_type", "")) or None,
            "duty_recovered_eur": amount("duty_recovered_eur"),
            "tax_recovered_eur": amount("tax_recovered_eur"),
            "seizure": flag("seizure"),
            "officer_id": principal.name,
            "office": row["office"],
            "selection": "engine_alert",
            "alert_id": alert_id,
        }
        try:
            outcome = ControlOutcome.model_validate(data)
        except ValidationError as exc:
            detail = await run_in_threadpool(s.queries.alert_detail, principal, alert_id)
            assert detail is not None
            problem = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'form'}: {err['msg'].removeprefix('Value error, ')}"
                for err in exc.errors()
            )
            return HTMLResponse(
                tpl.alert_detail_page(_user_view(principal), session.csrf, detail, submission, error=problem), 422
            )
        try:
            status = await run_in_threadpool(record_once, principal, outcome, "form")
        except OutcomeNotDelivered as exc:
            return HTMLResponse(tpl.error_page(503, f"the outcome could not be sent: {exc}"), 503)
        except OutcomeConflict as exc:
            return HTMLResponse(tpl.error_page(409, str(exc), _user_view(principal), session.csrf), 409)
        done = "1" if status == "recorded" else "dup"
        return RedirectResponse(f"/alerts/{quote(alert_id)}?recorded={done}", status_code=303)

    # Why one lock for every outcome: "is it recorded yet?" and the send must be one step, or
    # concurrent posts of one submission all pass the check (each outcome path already sends
    # one outcome at a time, so the lock costs no throughput).
    outcome_lock = threading.Lock()
    submission_times: OrderedDict[str, datetime] = OrderedDict()

    def event_time_for(event_id: str) -> datetime:
        """The server's ``event_time`` for a console-made outcome, fixed at its first try: a retry
        of the same submission gets the same time, so its copies share the sorting key
        ``(event_time, event_id)`` and the store's replacing merge collapses them."""
        with outcome_lock:
            when = submission_times.get(event_id)
            if when is None:
                when = submission_times[event_id] = datetime.now(UTC).replace(microsecond=0)
                while len(submission_times) > 10_000:
                    submission_times.popitem(last=False)
            return when

    def record_once(principal: Principal, outcome: ControlOutcome, via: str) -> str:
        """Send ``outcome`` unless its ``event_id`` is already stored ("already recorded");
        :class:`OutcomeConflict` when its alert already has another outcome."""
        with outcome_lock:
            if s.queries.outcome_exists(outcome.event_id):
                return "already recorded"
            if outcome.alert_id is not None:
                earlier = s.queries.outcome_of_alert(outcome.alert_id, outcome.target_event_id)
                if earlier is not None:
                    raise OutcomeConflict(outcome.alert_id, earlier)
            record_outcome(principal, outcome, via)
        return "recorded"

    def officer_outcome(principal: Principal, event: ControlOutcome) -> ControlOutcome:
        """An officer's (or supervisor's) API outcome, tied to an alert of its offices: the target
        comes from the stored alert, as on the form, and the time from the server's clock."""
        if event.alert_id is None:
            raise HTTPException(422, {"field": "alert_id", "reason": "officers record outcomes of an alert"})
        row = s.queries.alert(event.alert_id)
        if row is None or not principal.may_read_office(row["office"]):
            raise HTTPException(404, "no such alert in your offices")
        if row["office"] != event.office:
            raise HTTPException(403, f"alert {event.alert_id} is of office {row['office']}, not {event.office}")
        data = event.model_dump(mode="json")
        data.update(
            event_time=event_time_for(event.event_id).isoformat(),
            target_type=row["subject_type"],
            target_reference=row["subject_reference"],
            target_event_id=row["subject_event_id"],
        )
        try:
            return ControlOutcome.model_validate(data)
        except ValidationError as exc:
            raise HTTPException(422, str(exc)) from None

    def record_outcome(principal: Principal, outcome: ControlOutcome, via: str) -> None:
        s.outcomes.emit(outcome)
        s.audit.append(
            "outcome_recorded",
            principal.name,
            principal.role,
            "outcome",
            outcome.event_id,
            outcome.office,
            {
                "via": via,
                "alert_id": outcome.alert_id,
                "target_type": outcome.target_type,
                "target_reference": outcome.target_reference,
                "controlled": outcome.controlled,
                "positive": outcome.positive,
                "infringement_type": outcome.infringement_type,
                "duty_recovered_eur": outcome.duty_recovered_eur,
                "tax_recovered_eur": outcome.tax_recovered_eur,
                "seizure": outcome.seizure,
                "officer_id": outcome.officer_id,
            },
        )

    @app.get("/supervisor")
    def supervisor_html(request: Request) -> Response:
        found = html_user(request, ("supervisor",))
        if isinstance(found, Response):
            return found
        principal, session = found
        indicators = s.queries.indicators(principal, s.settings.daily_alert_budget)
        return HTMLResponse(tpl.supervisor_page(_user_view(principal), session.csrf, indicators))

    @app.get("/operator")
    def operator_html(request: Request) -> Response:
        found = html_user(request, ("operator",))
        if isinstance(found, Response):
            return found
        principal, session = found
        assert principal.eori is not None
        stats = s.queries.operator_stats(principal.eori)
        return HTMLResponse(tpl.operator_page(_user_view(principal), session.csrf, stats))

    # -- JSON API ---------------------------------------------------------------------------

    @app.get("/api/me")
    def me(request: Request) -> dict[str, Any]:
        principal, session = api_principal(request)
        view = _user_view(principal)
        if session is not None:
            view["csrf_token"] = session.csrf  # for scripts posting with the session cookie
        return view

    @app.get("/api/alerts")
    def api_alerts(
        request: Request, office: str | None = None, detector: str | None = None, mode: str | None = None
    ) -> dict[str, Any]:
        principal = alert_reader(request)
        filt = AlertFilter.parse(office, detector, mode)
        if filt.office is not None and not principal.may_read_office(filt.office):
            raise HTTPException(403, f"office {filt.office} is not in your scope")
        return {"alerts": s.queries.list_alerts(principal, filt)}

    @app.get("/api/alerts/{alert_id}")
    def api_alert(request: Request, alert_id: str) -> dict[str, Any]:
        principal = alert_reader(request)
        detail = s.queries.alert_detail(principal, alert_id)
        if detail is None:
            raise HTTPException(404, "no such alert in your offices")
        s.audit.append("alert_viewed", principal.name, principal.role, "alert", alert_id, detail["alert"]["office"])
        return detail

    @app.get("/api/stream")
    async def api_stream(
        request: Request,
        office: str | None = None,
        detector: str | None = None,
        mode: str | None = None,
        max_events: int = 0,
    ) -> StreamingResponse:
        """Server-sent events: one ``snapshot`` (the scope's current alerts), then one ``alert``
        per new alert in scope. ``max_events`` > 0 ends the stream after that many events.

        Every ``stream_recheck_s`` the caller's session and account are checked again: after a
        logout, a session expiry or a disabled account the stream sends ``end`` and closes; a
        changed office scope applies from then on.
        """
        principal = alert_reader(request)
        filt = AlertFilter.parse(office, detector, mode)
        if filt.office is not None and not principal.may_read_office(filt.office):
            raise HTTPException(403, f"office {filt.office} is not in your scope")
        start = s.watcher.position()  # before the snapshot: nothing falls between the two
        snapshot = await run_in_threadpool(s.queries.list_alerts, principal, filt)
        clock = s.watcher.clock or await run_in_threadpool(s.queries.clock)

        token = request.cookies.get(SESSION_COOKIE)

        def still_allowed() -> Principal | None:
            """The caller's principal as it is now, or None once it may no longer read this feed."""
            if principal.via == "session" and s.sessions.peek(token) is None:
                return None  # logged out, or the session expired
            current = s.accounts.principal(principal.name)
            if current is None or not current.reads_alerts:
                return None  # disabled or deleted
            if filt.office is not None and not current.may_read_office(filt.office):
                return None
            return current

        async def events() -> AsyncIterator[bytes]:
            sent = 1
            yield _sse("snapshot", {"alerts": snapshot, "clock": _iso(clock)})
            position = start
            idle_since = time.monotonic()
            scope = principal
            next_check = time.monotonic() + s.settings.stream_recheck_s
            while not (max_events and sent >= max_events):
                if await request.is_disconnected():
                    return
                if time.monotonic() >= next_check:
                    current = await run_in_threadpool(still_allowed)
                    if current is None:
                        yield _sse("end", {"reason": "signed out: sign in again"})
                        return
                    scope, next_check = current, time.monotonic() + s.settings.stream_recheck_s
                fresh, position = s.watcher.since(position)
                for alert in fresh:
                    if filt.matches(scope, alert):
                        yield _sse("alert", alert)
                        sent += 1
                        idle_since = time.monotonic()
                        if max_events and sent >= max_events:
                            return
                if time.monotonic() - idle_since > 15:
                    yield b": keep-alive\n\n"  # proxies close idle connections
                    idle_since = time.monotonic()
                await asyncio.sleep(min(0.2, s.settings.stream_recheck_s))

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    @app.post("/api/outcomes", status_code=201)
    async def api_outcomes(request: Request) -> dict[str, Any]:
        """Record one control outcome (a ``ControlOutcome`` JSON body, validated by the shared codec).

        Integrators (API key) may record outcomes for any office; officers and supervisors
        (session cookie plus ``X-CSRF-Token``) only for an alert of their offices (``alert_id``,
        whose office must be ``office``), under their own name; their target fields are taken
        from the alert and their ``event_time`` from the server. An ``event_time`` more than
        ``MAX_CLOCK_SKEW`` ahead is refused; a second outcome for an alert is refused (409).
        """
        principal, session = api_principal(request)
        if principal.role == "operator":
            raise HTTPException(403, "operators cannot record outcomes")
        if session is not None and not tokens_match(session.csrf, request.headers.get(CSRF_HEADER)):
            raise HTTPException(403, "missing or wrong X-CSRF-Token")
        raw = await request.body()
        try:
            event = decode_event(raw)
        except EventRejected as rejected:
            raise HTTPException(422, {"field": rejected.field, "reason": rejected.reason}) from None
        if not isinstance(event, ControlOutcome):
            raise HTTPException(422, {"field": "event_type", "reason": "this endpoint takes 'outcome' events"})
        if event.event_time > datetime.now(UTC) + MAX_CLOCK_SKEW:
            raise HTTPException(422, {"field": "event_time", "reason": "is in the future"})
        if principal.role != "integrator":
            if not principal.may_read_office(event.office):
                raise HTTPException(403, f"office {event.office} is not in your scope")
            if event.officer_id != principal.name:
                raise HTTPException(403, "officer_id must be your own account name")
            event = await run_in_threadpool(officer_outcome, principal, event)
        try:
            status = await run_in_threadpool(record_once, principal, event, "api")
        except OutcomeNotDelivered as exc:
            raise HTTPException(503, f"not delivered: {exc}") from None
        except OutcomeConflict as exc:
            raise HTTPException(409, str(exc)) from None
        return {"event_id": event.event_id, "status": status}

    @app.get("/api/supervisor/indicators")
    def api_indicators(request: Request) -> dict[str, Any]:
        principal, _ = api_principal(request)
        if principal.role != "supervisor":
            raise HTTPException(403, "supervisors only")
        return s.queries.indicators(principal, s.settings.daily_alert_budget)

    @app.get("/api/operators/{eori}/stats")
    def api_operator_stats(request: Request, eori: str) -> dict[str, Any]:
        principal, _ = api_principal(request)
        if not _EORI.match(eori):
            raise HTTPException(422, "invalid EORI")
        if not principal.may_read_operator(eori):
            raise HTTPException(403, "you may only see your own flows")
        return s.queries.operator_stats(eori)

    @app.get("/api/audit/verify")
    def api_audit_verify(request: Request) -> JSONResponse:
        principal, _ = api_principal(request)
        if principal.role != "supervisor":
            raise HTTPException(403, "supervisors only")
        report = s.audit.verify()
        broken = report.first_broken
        return JSONResponse(
            {
                "ok": report.ok,
                "entries": report.entries,
                "head_seq": report.head_seq,
                "first_broken_seq": broken.seq if broken else None,
                "message": str(report),
            }
        )

    return app


def _known_offices(s: ConsoleServices) -> list[str]:
    return [r["office"] for r in s.store.query(f"SELECT DISTINCT office FROM {s.queries.db}.alerts ORDER BY office")]


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
