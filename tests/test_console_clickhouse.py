"""The console over a ClickHouse server (Debian's 18.16, legacy schema) through the native-protocol sink."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_console_world import FAST_SCRYPT, OFFICE_A, OFFICE_B, PASSWORD, TestClient, make_accounts, seed_world
from vigie.streams.console_app import ConsoleServices, ConsoleSettings, create_app

pytestmark = pytest.mark.integration


def _wait_for_mutations(sink: Any, database: str, limit_s: float = 60.0) -> None:
    sql = f"SELECT count() AS n FROM system.mutations WHERE database = '{database}' AND is_done = 0"
    deadline = time.monotonic() + limit_s
    while sink.query(sql)[0]["n"]:
        assert time.monotonic() < deadline, "the ALTER UPDATE mutation did not finish"
        time.sleep(0.1)


def test_scoped_alerts_outcomes_and_audit_on_a_legacy_server(native_sink: Any, tmp_path: Path) -> None:
    accounts, _ = make_accounts(tmp_path / "state" / "accounts.json")
    assert accounts.scrypt_n == FAST_SCRYPT
    settings = ConsoleSettings(data_dir=tmp_path, state_dir=tmp_path / "state", database=native_sink.database)
    services = ConsoleServices.create(settings, native_sink, accounts=accounts, owns_store=False)
    try:
        world = seed_world(services.store)
        assert services.watcher.poll_once() == 2
        client = TestClient(create_app(services, manage_lifecycle=False))
        form = client.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
        client.post("/login", data={"username": "ana", "password": PASSWORD, "csrf_token": form})

        alerts = client.get("/api/alerts", params={"detector": "undervaluation"}).json()["alerts"]
        assert [a["alert_id"] for a in alerts] == [world.alert_a]
        assert alerts[0]["contributions"] == {"undervaluation": 0.9} and alerts[0]["office"] == OFFICE_A
        assert client.get(f"/api/alerts/{world.alert_b}").status_code == 404
        detail = client.get(f"/api/alerts/{world.alert_a}").json()
        assert detail["declaration"]["mrn"] == world.mrn_a and detail["history"]["per_day"]

        page = client.get(f"/alerts/{world.alert_a}").text
        token = page.split('name="csrf_token" value="')[1].split('"')[0]
        submission = page.split('name="submission_id" value="')[1].split('"')[0]
        recorded = client.post(
            f"/alerts/{world.alert_a}/outcome",
            data={"csrf_token": token, "submission_id": submission, "controlled": "1"},
            follow_redirects=False,
        )
        assert recorded.status_code == 303
        assert services.queries.outcome_exists(f"console-{submission}")

        assert services.audit.verify().ok
        db = native_sink.database
        native_sink.query(f"ALTER TABLE {db}.audit_log UPDATE actor = 'mallory' WHERE seq = 1")
        _wait_for_mutations(native_sink, db)  # 18.16 has no mutations_sync
        broken = services.audit.verify().first_broken
        assert broken is not None and broken.seq == 1
        assert OFFICE_B not in {a["office"] for a in alerts}
    finally:
        services.close()
