"""Embedded mode end to end: the console scores a generated stream in process, audits every
alert raised, and feeds officers' outcomes back through the same codec and pipeline."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson

from tests import factories
from tests.test_console_world import TestClient, open_console
from vigie.schemas import decode_event
from vigie.schemas.generator import GeneratorConfig, write_stream
from vigie.streams.console_app import create_app


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
            event_id=f"out-{uuid.uuid4().hex[:12]}", office=alert["office"], alert_id=alert["alert_id"],
            event_time=datetime.now(UTC).isoformat(), selection="engine_alert",
        )
        client = TestClient(create_app(services, manage_lifecycle=False))
        response = client.post("/api/outcomes", content=orjson.dumps(outcome), headers={"X-API-Key": key})
        assert response.status_code == 201, response.text
        # The outcome goes through the in-process pipeline like any input line.
        _wait(lambda: replay.lines == lines + 1, "the outcome to be processed")
        assert replay.dead_letters == 0
        outbox = services.settings.resolved_state_dir / "outbox" / "outcomes.jsonl"
        assert [decode_event(line).event_id for line in outbox.read_bytes().splitlines()] == [outcome["event_id"]]
