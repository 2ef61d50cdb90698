"""The officer console through its HTTP API: scopes per role, CSRF, login rate limiting, outcomes, live feed."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests import factories
from tests.test_console_world import (
    EORI_X,
    EORI_Y,
    OFFICE_A,
    OFFICE_B,
    PASSWORD,
    TestClient,
    World,
    alert_for,
    declaration_for,
    live_server,
    open_console,
    seed_world,
)
from vigie.schemas import ControlOutcome, decode_event
from vigie.streams.console_app import ConsoleServices, create_app

_HIDDEN = re.compile(r'name="(csrf_token|submission_id)" value="([^"]+)"')


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ConsoleServices, str, World, Any]]:
    """One console over a seeded store for the module; the watcher is polled by the tests."""
    with open_console(tmp_path_factory.mktemp("console-api")) as (services, key):
        world = seed_world(services.store)
        services.watcher.poll_once()
        yield services, key, world, create_app(services, manage_lifecycle=False)


def hidden(html: str) -> dict[str, str]:
    return dict(_HIDDEN.findall(html))


def login(app: Any, name: str, password: str = PASSWORD) -> TestClient:
    client = TestClient(app)
    form = client.get("/login")
    assert form.status_code == 200
    response = client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": hidden(form.text)["csrf_token"], "next": "/"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return client


def csrf_of(client: TestClient) -> str:
    token: str = client.get("/api/me").json()["csrf_token"]
    return token


def outcome_json(office: str, officer: str, alert_id: str | None = None, **overrides: Any) -> bytes:
    data = factories.outcome_dict(
        event_id=f"out-{uuid.uuid4().hex[:12]}",
        office=office,
        officer_id=officer,
        alert_id=alert_id,
        event_time=datetime.now(UTC).isoformat(),
    )
    data.update(overrides)
    return orjson.dumps(data)


def ids(response: httpx.Response) -> set[str]:
    return {a["alert_id"] for a in response.json()["alerts"]}


# --------------------------------------------------------------------------------------------
# scopes
# --------------------------------------------------------------------------------------------


def test_an_officer_reads_only_the_alerts_of_its_offices(console: tuple[ConsoleServices, str, World, Any]) -> None:
    _, _, world, app = console
    ana, bob = login(app, "ana"), login(app, "bob")

    assert world.alert_a in ids(ana.get("/api/alerts")) and world.alert_b not in ids(ana.get("/api/alerts"))
    assert world.alert_b in ids(bob.get("/api/alerts")) and world.alert_a not in ids(bob.get("/api/alerts"))
    # Asking for the other office explicitly, or for its alert by id, gets nothing.
    assert ana.get("/api/alerts", params={"office": OFFICE_B}).status_code == 403
    assert ana.get(f"/api/alerts/{world.alert_b}").status_code == 404
    assert ana.get(f"/alerts/{world.alert_b}").status_code == 404
    assert world.mrn_b not in ana.get(f"/alerts/{world.alert_b}").text

    detail = ana.get(f"/api/alerts/{world.alert_a}").json()
    assert detail["alert"]["office"] == OFFICE_A
    assert detail["declaration"]["event_id"] == world.decl_a and detail["declaration"]["items"]
    assert detail["ens"]["ens_reference"] == detail["declaration"]["ens_reference"]
    assert detail["scores"][0]["reason_fields"]["reference_unit_value_eur"] == 9.5
    assert detail["alert"]["hours_left"] is not None
    page = ana.get(f"/alerts/{world.alert_a}").text
    assert world.mrn_a in page and "<svg" in page and 'name="csrf_token"' in page


def test_filters_by_detector_and_transport_mode(console: tuple[ConsoleServices, str, World, Any]) -> None:
    _, _, world, app = console
    sue = login(app, "sue")
    assert {world.alert_a, world.alert_b} <= ids(sue.get("/api/alerts"))
    assert world.alert_a in ids(sue.get("/api/alerts", params={"detector": "undervaluation", "mode": "sea"}))
    assert not ids(sue.get("/api/alerts", params={"detector": "excise"}))
    assert not ids(sue.get("/api/alerts", params={"mode": "air"}))
    assert sue.get("/api/alerts", params={"mode": "teleport"}).status_code == 422
    assert sue.get("/api/alerts", params={"office": "FR00' OR 1=1"}).status_code == 422


def test_an_operator_reads_only_its_own_flows(console: tuple[ConsoleServices, str, World, Any]) -> None:
    _, _, world, app = console
    xop, yop = login(app, "xop"), login(app, "yop")

    own = xop.get(f"/api/operators/{EORI_X}/stats")
    assert own.status_code == 200 and own.json()["totals"]["declarations"] >= 1
    assert xop.get(f"/api/operators/{EORI_Y}/stats").status_code == 403
    assert yop.get(f"/api/operators/{EORI_X}/stats").status_code == 403
    assert yop.get(f"/api/operators/{EORI_Y}/stats").status_code == 200
    # No alert, no score, no detail for operators.
    assert xop.get("/api/alerts").status_code == 403
    assert xop.get(f"/api/alerts/{world.alert_a}").status_code == 403
    assert xop.get("/api/stream").status_code == 403
    assert xop.get("/alerts", follow_redirects=False).status_code == 403
    page = xop.get("/operator")
    assert page.status_code == 200 and EORI_X in page.text and EORI_Y not in page.text
    assert "risk" not in page.text.lower()


def test_an_integrator_publishes_outcomes_but_reads_no_alert(
    console: tuple[ConsoleServices, str, World, Any], tmp_path: Path
) -> None:
    services, key, world, app = console
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {key}"}
    for path in (
        "/api/alerts",
        f"/api/alerts/{world.alert_a}",
        "/api/stream",
        "/api/supervisor/indicators",
        f"/api/operators/{EORI_X}/stats",
        "/api/audit/verify",
    ):
        assert client.get(path, headers=auth).status_code == 403, path
    assert client.get("/api/alerts", headers={"Authorization": "Bearer vgk_forged"}).status_code == 401
    assert client.get("/api/alerts").status_code == 401
    assert client.post("/api/outcomes", content=outcome_json(OFFICE_B, "agent-7")).status_code == 401

    body = outcome_json(OFFICE_B, "agent-7", world.alert_b)
    response = client.post("/api/outcomes", content=body, headers=auth)
    assert response.status_code == 201, response.text
    event_id = orjson.loads(body)["event_id"]
    stored = services.store.query(f"SELECT officer_id, office FROM vigie.outcomes FINAL WHERE event_id = '{event_id}'")
    assert stored == [{"officer_id": "agent-7", "office": OFFICE_B}]
    outbox = (services.settings.resolved_state_dir / "outbox" / "outcomes.jsonl").read_bytes().splitlines()
    assert any(decode_event(line).event_id == event_id for line in outbox)

    bad = client.post(
        "/api/outcomes", content=outcome_json(OFFICE_B, "agent-7", positive=True, controlled=False), headers=auth
    )
    assert bad.status_code == 422 and "only a control can be positive" in bad.text
    ens = client.post("/api/outcomes", content=orjson.dumps(factories.ens_dict(event_id="ens-x")), headers=auth)
    assert ens.status_code == 422


# --------------------------------------------------------------------------------------------
# outcomes through the officer's form
# --------------------------------------------------------------------------------------------


def test_an_officer_records_an_outcome_once_through_the_form(console: tuple[ConsoleServices, str, World, Any]) -> None:
    services, _, world, app = console
    ana = login(app, "ana")
    fields = hidden(ana.get(f"/alerts/{world.alert_a}").text)
    form = {
        **fields,
        "controlled": "1",
        "positive": "1",
        "infringement_type": "undervaluation",
        "duty_recovered_eur": "812.40",
        "tax_recovered_eur": "170.6",
    }
    response = ana.post(f"/alerts/{world.alert_a}/outcome", data=form, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].endswith("recorded=1")
    event_id = f"console-{fields['submission_id']}"

    rows = services.store.query(
        f"SELECT officer_id, alert_id, selection, positive, duty_recovered_eur, target_reference "
        f"FROM vigie.outcomes FINAL WHERE event_id = '{event_id}'"
    )
    assert rows == [
        {
            "officer_id": "ana",
            "alert_id": world.alert_a,
            "selection": "engine_alert",
            "positive": 1,
            "duty_recovered_eur": 812.4,
            "target_reference": world.mrn_a,
        }
    ]
    outbox = (services.settings.resolved_state_dir / "outbox" / "outcomes.jsonl").read_bytes().splitlines()
    emitted = [e for e in map(decode_event, outbox) if e.event_id == event_id]
    assert len(emitted) == 1 and isinstance(emitted[0], ControlOutcome) and emitted[0].tax_recovered_eur == 170.6
    assert event_id in ana.get(f"/alerts/{world.alert_a}").text  # shown under recorded outcomes

    # The same form sent twice records nothing more.
    again = ana.post(f"/alerts/{world.alert_a}/outcome", data=form, follow_redirects=False)
    assert again.headers["location"].endswith("recorded=dup")
    assert services.store.query(f"SELECT count() AS n FROM vigie.outcomes WHERE event_id = '{event_id}'") == [{"n": 1}]
    audit = services.store.query(
        f"SELECT actor, office FROM vigie.audit_log WHERE action = 'outcome_recorded' AND subject_id = '{event_id}'"
    )
    assert audit == [{"actor": "ana", "office": OFFICE_A}]

    # Inconsistent input is refused with the reason, and nothing is stored.
    fields = hidden(ana.get(f"/alerts/{world.alert_a}").text)
    refused = ana.post(f"/alerts/{world.alert_a}/outcome", data={**fields, "controlled": "1", "positive": "1"})
    assert refused.status_code == 422 and "infringement_type is required" in refused.text
    assert not services.queries.outcome_exists(f"console-{fields['submission_id']}")


def test_forms_and_api_calls_need_the_csrf_token(console: tuple[ConsoleServices, str, World, Any]) -> None:
    services, _, world, app = console
    ana = login(app, "ana")
    fields = hidden(ana.get(f"/alerts/{world.alert_a}").text)
    no_token = ana.post(
        f"/alerts/{world.alert_a}/outcome", data={"submission_id": fields["submission_id"], "controlled": "1"}
    )
    assert no_token.status_code == 403
    forged = ana.post(f"/alerts/{world.alert_a}/outcome", data={**fields, "csrf_token": "forged"})
    assert forged.status_code == 403
    cross_site = ana.post(f"/alerts/{world.alert_a}/outcome", data=fields, headers={"Origin": "https://evil.test"})
    assert cross_site.status_code == 403
    assert not services.queries.outcome_exists(f"console-{fields['submission_id']}")

    body = outcome_json(OFFICE_A, "ana", world.alert_a)
    assert ana.post("/api/outcomes", content=body).status_code == 403
    assert ana.post("/api/outcomes", content=body, headers={"X-CSRF-Token": csrf_of(ana)}).status_code == 201
    # An officer records only for its offices, under its own name; not for another office's alert.
    token = {"X-CSRF-Token": csrf_of(ana)}
    assert ana.post("/api/outcomes", content=outcome_json(OFFICE_B, "ana"), headers=token).status_code == 403
    assert ana.post("/api/outcomes", content=outcome_json(OFFICE_A, "bob"), headers=token).status_code == 403
    fields = hidden(ana.get(f"/alerts/{world.alert_a}").text)
    assert ana.post(f"/alerts/{world.alert_b}/outcome", data=fields).status_code == 404

    # Login itself needs the pre-session token (no login CSRF).
    anonymous = TestClient(app)
    assert anonymous.post("/login", data={"username": "ana", "password": PASSWORD}).status_code == 403


def test_logins_are_rate_limited_per_account(console: tuple[ConsoleServices, str, World, Any]) -> None:
    services, _, _, app = console
    client = TestClient(app)
    statuses = []
    for _ in range(5):
        form = hidden(client.get("/login").text)
        statuses.append(
            client.post("/login", data={"username": "rita", "password": "wrong-password", **form}).status_code
        )
    assert statuses == [401] * 5
    form = hidden(client.get("/login").text)
    locked = client.post("/login", data={"username": "rita", "password": PASSWORD, **form}, follow_redirects=False)
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert login(app, "ana").get("/api/me").json()["name"] == "ana"  # other accounts unaffected
    failed = services.store.query(
        "SELECT count() AS n FROM vigie.audit_log WHERE action = 'login_failed' AND actor = 'rita'"
    )
    assert failed == [{"n": 5}]


def test_pages_need_a_session_and_the_right_role(console: tuple[ConsoleServices, str, World, Any]) -> None:
    _, _, world, app = console
    anonymous = TestClient(app)
    assert anonymous.get("/alerts", follow_redirects=False).headers["location"].startswith("/login")
    assert anonymous.get("/api/alerts").status_code == 401
    login_page = anonymous.get("/login")
    assert "default-src 'self'" in login_page.headers["content-security-policy"]
    assert "httponly" in login_page.headers["set-cookie"].lower()
    ana = login(app, "ana")
    assert ana.get("/supervisor").status_code == 403
    assert ana.get("/api/supervisor/indicators").status_code == 403
    assert ana.get(f"/api/operators/{EORI_X}/stats").status_code == 403
    logout = ana.post("/logout", data={"csrf_token": csrf_of(ana)}, follow_redirects=False)
    assert logout.status_code == 303
    assert ana.get("/api/alerts").status_code == 401
    sue = login(app, "sue")
    indicators = sue.get("/api/supervisor/indicators").json()
    offices = {o["office"]: o for o in indicators["offices"]}
    assert offices[OFFICE_A]["alerts"] >= 1 and offices[OFFICE_B]["alerts"] >= 1
    assert offices[OFFICE_A]["budget"] == 40 and indicators["total"]["alerts"] >= 2
    assert "kpi-hit-rate" in sue.get("/supervisor").text
    assert sue.get(f"/api/operators/{EORI_Y}/stats").status_code == 200
    assert world.alert_b in ids(sue.get("/api/alerts"))


# --------------------------------------------------------------------------------------------
# live feed
# --------------------------------------------------------------------------------------------


def _events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event is not None:
            yield event, orjson.loads(line[6:])
            event = None


def test_the_live_feed_pushes_new_alerts_of_the_officers_offices_only(
    console: tuple[ConsoleServices, str, World, Any],
) -> None:
    services, _, world, app = console
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        form = hidden(http.get("/login").text)
        http.post("/login", data={"username": "ana", "password": PASSWORD, **form})
        with http.stream("GET", "/api/stream", params={"max_events": 2}) as stream:
            events = _events(stream.iter_lines())
            kind, snapshot = next(events)
            assert kind == "snapshot"
            snapshot_ids = {a["alert_id"] for a in snapshot["alerts"]}
            assert world.alert_a in snapshot_ids and world.alert_b not in snapshot_ids

            # Office B's alert is stored first: if scoping failed it would be the next event.
            other = alert_for(declaration_for(OFFICE_B, EORI_Y, 901))
            mine = alert_for(declaration_for(OFFICE_A, EORI_X, 902))
            services.store.write([other])
            services.store.flush()
            services.watcher.poll_once()
            services.store.write([mine])
            services.store.flush()
            poller = threading.Thread(target=services.watcher.poll_once)
            poller.start()
            kind, alert = next(events)
            poller.join()
            assert kind == "alert" and alert["alert_id"] == mine.alert_id
            assert alert["office"] == OFFICE_A and alert["reasons"] and alert["hours_left"] == 6.0
    raised = services.store.query(
        "SELECT subject_id FROM vigie.audit_log WHERE action = 'alert_raised' "
        f"AND subject_id IN ('{other.alert_id}', '{mine.alert_id}', '{world.alert_a}')"
    )
    assert {r["subject_id"] for r in raised} == {other.alert_id, mine.alert_id, world.alert_a}
