"""Embedded mode end to end: the console scores a generated stream in process, audits every
alert raised, and feeds officers' outcomes back through the same codec and pipeline."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson

from tests import factories
from tests.test_console_world import EORI_X, OFFICE_A, TestClient, declaration_for, open_console
from vigie.operators.pipeline import PipelineResult
from vigie.schemas import ImportDeclaration, decode_event, encode_event
from vigie.schemas.generator import GeneratorConfig, write_stream
from vigie.streams.console_app import ConsoleServices, create_app


def _wait(condition: object, what: str, limit_s: float = 120.0) -> None:
    """Wait for ``condition()`` (a readiness wait, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_replayed_alerts_are_stored_audited_and_outcomes_reach_the_pipeline(tmp_path: Path) -> None:
    stream = tmp_path / "events.jsonl"
    write_stream(GeneratorConfig(seed=11, duration_hours=1.0), stream, tmp_path / "truth.jsonl")
    lines = sum(1 for line in stream.read_bytes().splitlines() if line.strip())
    with open_console(tmp_path, poll_s=0.5, replay=stream, replay_rate=0.0) as (services, key):
        replay = services.replay
        assert replay is not None
        services.start()
        _wait(replay.finished.is_set, "the replay to finish")
        assert replay.lines == lines and replay.dead_letters == 0 and replay.alerts > 0
        stored = services.store.query("SELECT count() AS n FROM vigie.alerts FINAL")[0]["n"]
        assert stored == replay.alerts

        services.watcher.poll_once()  # whatever the watcher thread has not picked up yet
        raised = services.store.query(
            "SELECT count() AS n, uniqExact(subject_id) AS ids FROM vigie.audit_log WHERE action = 'alert_raised'"
        )[0]
        assert raised == {"n": stored, "ids": stored}  # each alert audited exactly once
        assert services.audit.verify().ok

        alert = services.store.query("SELECT alert_id, office FROM vigie.alerts FINAL LIMIT 1")[0]
        outcome = factories.outcome_dict(
            event_id=f"out-{uuid.uuid4().hex[:12]}",
            office=alert["office"],
            alert_id=alert["alert_id"],
            event_time=datetime.now(UTC).isoformat(),
            selection="engine_alert",
        )
        client = TestClient(create_app(services, manage_lifecycle=False))
        response = client.post("/api/outcomes", content=orjson.dumps(outcome), headers={"X-API-Key": key})
        assert response.status_code == 201, response.text
        # The outcome goes through the in-process pipeline like any input line.
        _wait(lambda: replay.lines == lines + 1, "the outcome to be processed")
        assert replay.dead_letters == 0
        outbox = services.settings.resolved_state_dir / "outbox" / "outcomes.jsonl"
        assert [decode_event(line).event_id for line in outbox.read_bytes().splitlines()] == [outcome["event_id"]]


class _AlertingPipeline:
    """Raises one alert for every declaration it sees (the watcher's wake-up is under test, not scoring)."""

    def process(self, event: object) -> PipelineResult:
        from tests.test_console_world import alert_for

        assert isinstance(event, ImportDeclaration)
        return PipelineResult(event, alert=alert_for(event, risk=0.9))


def test_an_alert_from_the_embedded_engine_wakes_the_watcher_without_waiting_for_its_poll(tmp_path: Path) -> None:
    with open_console(tmp_path, poll_s=60.0) as (base, _):
        # Same store and settings, with an engine that alerts; the watcher polls only once a minute.
        services = ConsoleServices.create(
            base.settings, base.store, accounts=base.accounts, replay_pipeline=_AlertingPipeline(), owns_store=False
        )
        services.start()
        try:
            _wait(lambda: services.watcher._thread is not None, "the watcher to start")
            first = services.watcher.position()
            declaration = declaration_for(OFFICE_A, EORI_X, 77, hours=1.0)
            services.replay.inbox.put(encode_event(declaration))  # type: ignore[union-attr]
            # Well under the 60 s poll: only the engine's nudge after flushing can bring it this soon.
            _wait(lambda: services.watcher.position() > first, "the alert on the feed", limit_s=20.0)
            fresh, _ = services.watcher.since(first)
            assert [a["subject_event_id"] for a in fresh] == [declaration.event_id]
            stored = services.store.query("SELECT count() AS n FROM vigie.alerts FINAL")[0]["n"]
            assert stored == 1  # flushed at once, not after the sink's delay
        finally:
            services.close()
