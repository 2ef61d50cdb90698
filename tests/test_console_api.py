"""The officer console through its HTTP API: scopes per role, CSRF, login rate limiting, outcomes, live feed."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
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
from vigie.schemas import Alert, ControlOutcome, decode_event
from vigie.streams.console_app import SESSION_COOKIE, ConsoleServices, OutcomeNotDelivered, create_app
from vigie.streams.console_auth import LoginRateLimiter

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


def fresh_alert(services: ConsoleServices, office: str, importer: str = EORI_X) -> Alert:
    """A new alert (and its declaration) of ``office`` with no outcome yet."""
    declaration = declaration_for(office, importer, int(uuid.uuid4().int % 10**9))
    alert = alert_for(declaration)
    services.store.write([declaration, alert])
    services.store.flush()
    services.watcher.poll_once()  # seen now, so that the live-feed test's next alert is its own
    return alert


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

    body = outcome_json(OFFICE_A, "ana", fresh_alert(services, OFFICE_A).alert_id)
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


def test_an_officer_records_outcomes_only_on_alerts_of_its_offices(
    console: tuple[ConsoleServices, str, World, Any],
) -> None:
    services, _, _, app = console
    ana, sue = login(app, "ana"), login(app, "sue")
    theirs, mine = fresh_alert(services, OFFICE_B, EORI_Y), fresh_alert(services, OFFICE_A)

    # Office A's officer, naming her own office, on office B's alert: refused, nothing stored.
    stolen = outcome_json(OFFICE_A, "ana", theirs.alert_id)
    response = ana.post("/api/outcomes", content=stolen, headers={"X-CSRF-Token": csrf_of(ana)})
    assert response.status_code == 404 and "no such alert in your offices" in response.text
    # A supervisor of both offices cannot file office B's alert under office A either.
    mixed = outcome_json(OFFICE_A, "sue", theirs.alert_id)
    response = sue.post("/api/outcomes", content=mixed, headers={"X-CSRF-Token": csrf_of(sue)})
    assert response.status_code == 403 and f"of office {OFFICE_B}" in response.text
    # An officer's outcome names its alert.
    response = ana.post("/api/outcomes", content=outcome_json(OFFICE_A, "ana"), headers={"X-CSRF-Token": csrf_of(ana)})
    assert response.status_code == 422 and "alert_id" in response.text
    assert services.queries.outcome_of_alert(theirs.alert_id, theirs.subject_event_id) is None

    # Her own office's alert is accepted; the target comes from the alert, not from the body.
    body = outcome_json(
        OFFICE_A, "ana", mine.alert_id, target_reference=theirs.subject_reference, target_event_id="decl-elsewhere"
    )
    response = ana.post("/api/outcomes", content=body, headers={"X-CSRF-Token": csrf_of(ana)})
    assert response.status_code == 201 and response.json()["status"] == "recorded"
    stored = services.store.query(
        "SELECT target_reference, target_event_id, office FROM vigie.outcomes FINAL "
        f"WHERE event_id = '{orjson.loads(body)['event_id']}'"
    )
    assert stored == [
        {"target_reference": mine.subject_reference, "target_event_id": mine.subject_event_id, "office": OFFICE_A}
    ]


def test_outcome_times_come_from_the_server_and_the_future_is_refused(
    console: tuple[ConsoleServices, str, World, Any],
) -> None:
    services, key, _, app = console
    ana = login(app, "ana")
    alert = fresh_alert(services, OFFICE_A)
    future = outcome_json(OFFICE_A, "ana", alert.alert_id, event_time="2099-01-01T00:00:00+00:00")
    response = ana.post("/api/outcomes", content=future, headers={"X-CSRF-Token": csrf_of(ana)})
    assert response.status_code == 422 and "future" in response.text
    integrator = TestClient(app).post(
        "/api/outcomes",
        content=outcome_json(OFFICE_B, "agent-7", event_time="2099-01-01T00:00:00+00:00"),
        headers={"X-API-Key": key},
    )
    assert integrator.status_code == 422 and "future" in integrator.text

    # An officer's claimed time (here years before the alert) is replaced by the server's.
    before = datetime.now(UTC).replace(microsecond=0)
    past = outcome_json(OFFICE_A, "ana", alert.alert_id, event_time="2020-01-01T00:00:00+00:00")
    assert ana.post("/api/outcomes", content=past, headers={"X-CSRF-Token": csrf_of(ana)}).status_code == 201
    event_id = orjson.loads(past)["event_id"]
    row = services.store.query(f"SELECT event_time FROM vigie.outcomes FINAL WHERE event_id = '{event_id}'")[0]
    stored = datetime.fromisoformat(str(row["event_time"]).replace(" ", "T")).replace(tzinfo=UTC)
    assert before <= stored <= datetime.now(UTC)


def test_a_second_outcome_for_an_alert_is_refused(console: tuple[ConsoleServices, str, World, Any]) -> None:
    services, key, _, app = console
    ana = login(app, "ana")
    alert = fresh_alert(services, OFFICE_A)
    fields = hidden(ana.get(f"/alerts/{alert.alert_id}").text)
    first = ana.post(f"/alerts/{alert.alert_id}/outcome", data={**fields, "controlled": "1"}, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"].endswith("recorded=1")

    fields = hidden(ana.get(f"/alerts/{alert.alert_id}").text)  # a new submission: another outcome
    second = ana.post(f"/alerts/{alert.alert_id}/outcome", data={**fields, "controlled": "1"}, follow_redirects=False)
    assert second.status_code == 409 and "already recorded for alert" in second.text
    api = ana.post(
        "/api/outcomes", content=outcome_json(OFFICE_A, "ana", alert.alert_id), headers={"X-CSRF-Token": csrf_of(ana)}
    )
    assert api.status_code == 409 and "cannot be corrected" in api.text
    integrator = TestClient(app).post(
        "/api/outcomes", content=outcome_json(OFFICE_A, "agent-7", alert.alert_id), headers={"X-API-Key": key}
    )
    assert integrator.status_code == 409
    count = services.store.query(f"SELECT count() AS n FROM vigie.outcomes WHERE alert_id = '{alert.alert_id}'")
    assert count == [{"n": 1}]


def test_concurrent_copies_of_one_outcome_are_recorded_once(
    console: tuple[ConsoleServices, str, World, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services, key, _, app = console
    ana = login(app, "ana")
    emit = services.outcomes.emit

    def slow_emit(outcome: ControlOutcome) -> None:
        time.sleep(0.2)  # wide enough for every copy to pass an unlocked "already recorded?" check
        emit(outcome)

    monkeypatch.setattr(services.outcomes, "emit", slow_emit)
    alert = fresh_alert(services, OFFICE_A)
    fields = {**hidden(ana.get(f"/alerts/{alert.alert_id}").text), "controlled": "1"}
    body = outcome_json(OFFICE_B, "agent-7")
    statuses: list[int] = []

    def post_form() -> None:
        client = TestClient(app, cookies=dict(ana.cookies))
        statuses.append(
            client.post(f"/alerts/{alert.alert_id}/outcome", data=fields, follow_redirects=False).status_code
        )

    def post_api() -> None:
        statuses.append(TestClient(app).post("/api/outcomes", content=body, headers={"X-API-Key": key}).status_code)

    threads = [threading.Thread(target=f) for f in (post_form, post_api) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] * 3 + [303] * 3
    for event_id in (f"console-{fields['submission_id']}", orjson.loads(body)["event_id"]):
        assert services.store.query(f"SELECT count() AS n FROM vigie.outcomes WHERE event_id = '{event_id}'") == [
            {"n": 1}
        ]


def test_a_retried_submission_keeps_its_event_time(
    console: tuple[ConsoleServices, str, World, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services, _, _, app = console
    ana = login(app, "ana")
    emit = services.outcomes.emit
    tried: list[ControlOutcome] = []

    def flaky_emit(outcome: ControlOutcome) -> None:
        tried.append(outcome)
        if len(tried) == 1:
            raise OutcomeNotDelivered("not acknowledged within 10s")
        emit(outcome)

    monkeypatch.setattr(services.outcomes, "emit", flaky_emit)
    alert = fresh_alert(services, OFFICE_A)
    fields = {**hidden(ana.get(f"/alerts/{alert.alert_id}").text), "controlled": "1"}
    assert ana.post(f"/alerts/{alert.alert_id}/outcome", data=fields).status_code == 503
    time.sleep(1.1)  # a fresh now() would differ by a second
    assert ana.post(f"/alerts/{alert.alert_id}/outcome", data=fields, follow_redirects=False).status_code == 303
    assert len(tried) == 2 and tried[0].event_time == tried[1].event_time


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


def test_concurrent_logins_check_at_most_the_limit(
    console: tuple[ConsoleServices, str, World, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services, _, _, app = console
    monkeypatch.setattr(services, "limiter", LoginRateLimiter(max_failures_per_name=5))
    authenticate = services.accounts.authenticate
    checked: list[str] = []

    def slow_authenticate(name: str, password: str) -> Any:
        checked.append(name)
        time.sleep(0.3)  # scrypt is slow: every request arrives while the first is checked
        return authenticate(name, password)

    monkeypatch.setattr(services.accounts, "authenticate", slow_authenticate)
    clients = [TestClient(app) for _ in range(12)]
    forms = [hidden(client.get("/login").text) for client in clients]
    barrier = threading.Barrier(len(clients))
    statuses: list[int] = []

    def attempt(client: TestClient, form: dict[str, str]) -> None:
        barrier.wait()
        data = {"username": "ana", "password": "wrong-password", **form}
        statuses.append(client.post("/login", data=data).status_code)

    threads = [threading.Thread(target=attempt, args=pair) for pair in zip(clients, forms, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(checked) == 5 and statuses.count(401) == 5  # the limit, not one per request
    assert statuses.count(429) == len(clients) - len(checked)


def test_a_name_that_grows_when_lower_cased_is_refused_not_a_crash(
    console: tuple[ConsoleServices, str, World, Any],
) -> None:
    services, _, _, app = console
    client = TestClient(app)
    for username in ("\u0130" * 64, "x" * 300, ""):
        form = hidden(client.get("/login").text)
        response = client.post("/login", data={"username": username, "password": PASSWORD, **form})
        assert response.status_code == 401 and "Wrong account name or password" in response.text
    audited = services.store.query(
        "SELECT count() AS n FROM vigie.audit_log WHERE action = 'login_failed' AND actor = '(invalid)'"
    )
    assert audited[0]["n"] >= 3
    # Names are still case-insensitive.
    form = hidden(client.get("/login").text)
    response = client.post("/login", data={"username": " Sue ", "password": PASSWORD, **form}, follow_redirects=False)
    assert response.status_code == 303


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


def test_the_live_feed_ends_after_logout_or_when_the_account_is_disabled(
    console: tuple[ConsoleServices, str, World, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services, _, _, app = console
    monkeypatch.setattr(services, "settings", dataclasses.replace(services.settings, stream_recheck_s=0.2))
    services.accounts.add_user("tom", "officer", PASSWORD, offices=[OFFICE_A])
    with live_server(app) as url:
        for name, cut_off in (
            ("ana", lambda http: services.sessions.revoke(http.cookies[SESSION_COOKIE])),  # as /logout does
            ("tom", lambda http: services.accounts.set_disabled("tom", True)),
        ):
            with httpx.Client(base_url=url, timeout=30) as http:
                form = hidden(http.get("/login").text)
                http.post("/login", data={"username": name, "password": PASSWORD, **form})
                with http.stream("GET", "/api/stream") as stream:
                    events = _events(stream.iter_lines())
                    assert next(events)[0] == "snapshot"
                    started = time.monotonic()
                    cut_off(http)
                    kind, data = next(events)
                    assert kind == "end" and "signed out" in data["reason"], name
                    assert time.monotonic() - started < 5
                    assert next(events, None) is None  # and the stream is closed
