"""A small world for the officer console's tests, and unit tests of its access-control parts.

Two offices, two operators, one alert each, and one account per role. The other
``test_console_*`` modules import :func:`seed_world`, :func:`make_accounts` and
:func:`open_console` from here.
"""

from __future__ import annotations

import os
import stat
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import factories
from vigie.schemas import Alert, ImportDeclaration, RiskScore
from vigie.streams.console_app import ConsoleServices, ConsoleSettings
from vigie.streams.console_auth import (
    AccountStore,
    ConsoleSecrets,
    LoginRateLimiter,
    Principal,
    SessionStore,
    hash_password,
    verify_password,
)

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 and warns when its test client falls back to httpx.
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

__all__ = ["TestClient"]

OFFICE_A = "FR002300"
OFFICE_B = "FR000690"
EORI_X = "FR98765432100010"
EORI_Y = "DE12345678901234"
PASSWORD = "correct-horse-battery"
FAST_SCRYPT = 2**10  # tests only: production hashes use 2**15


@dataclass(frozen=True)
class World:
    """Ids of what :func:`seed_world` stored."""

    alert_a: str
    alert_b: str
    decl_a: str
    decl_b: str
    mrn_a: str
    mrn_b: str


def declaration_for(office: str, importer: str, n: int, hours: float = 0.0) -> ImportDeclaration:
    mrn = f"26FR{n:014d}"
    return factories.declaration(
        event_id=f"decl-{uuid.uuid4().hex[:12]}",
        mrn=mrn,
        customs_office=office,
        importer_eori=importer,
        event_time=(factories.T0 + timedelta(hours=hours)).isoformat(),
    )


def alert_for(declaration: ImportDeclaration, risk: float = 0.9, eta_hours: float | None = 6.0) -> Alert:
    eta = declaration.event_time + timedelta(hours=eta_hours) if eta_hours is not None else None
    return Alert(
        alert_id=f"alert-{uuid.uuid4().hex[:16]}",
        subject_event_id=declaration.event_id,
        subject_type="declaration",
        subject_reference=declaration.mrn,
        event_time=declaration.event_time,
        office=declaration.customs_office,
        operator_eori=declaration.importer_eori,
        transport_mode=declaration.transport_mode_at_border,
        fused_risk=risk,
        rank=1,
        contributions={"undervaluation": risk},
        reasons=[f"Declared unit value is far below the reference for CN 61091000 ({declaration.mrn})."],
        eur_at_stake=1234.5,
        eta=eta,
        lead_time_hours=eta_hours,
    )


def score_for(declaration: ImportDeclaration, alert: Alert) -> RiskScore:
    return RiskScore(
        score_id=f"score-{uuid.uuid4().hex[:12]}",
        detector="undervaluation",
        subject_event_id=declaration.event_id,
        subject_type="declaration",
        subject_reference=declaration.mrn,
        item_number=1,
        event_time=declaration.event_time,
        office=declaration.customs_office,
        operator_eori=declaration.importer_eori,
        cn_code="61091000",
        origin_country="CN",
        score=alert.fused_risk,
        eur_at_stake=alert.eur_at_stake,
        reason="Unit value 2.00 EUR/p/st against a reference of 9.50 EUR/p/st for CN 61091000 from CN.",
        reason_fields={"reference_unit_value_eur": 9.5, "declared_unit_value_eur": 2.0, "level": "CN8"},
    )


def seed_world(store: Any) -> World:
    """Store an ENS, one declaration per office/operator, a score and an alert for each."""
    decl_a = declaration_for(OFFICE_A, EORI_X, 1)
    decl_b = declaration_for(OFFICE_B, EORI_Y, 2)
    alert_a, alert_b = alert_for(decl_a), alert_for(decl_b, risk=0.8)
    ens = factories.ens(ens_reference=decl_a.ens_reference, event_id=f"ens-{uuid.uuid4().hex[:12]}")
    store.write([ens, decl_a, decl_b, score_for(decl_a, alert_a), score_for(decl_b, alert_b), alert_a, alert_b])
    store.flush()
    return World(alert_a.alert_id, alert_b.alert_id, decl_a.event_id, decl_b.event_id, decl_a.mrn, decl_b.mrn)


def make_accounts(path: Path) -> tuple[AccountStore, str]:
    """One account per role; returns the store and the integrator's API key."""
    accounts = AccountStore(path, scrypt_n=FAST_SCRYPT)
    accounts.add_user("ana", "officer", PASSWORD, offices=[OFFICE_A])
    accounts.add_user("bob", "officer", PASSWORD, offices=[OFFICE_B])
    accounts.add_user("sue", "supervisor", PASSWORD, offices=["*"])
    accounts.add_user("xop", "operator", PASSWORD, eori=EORI_X)
    accounts.add_user("yop", "operator", PASSWORD, eori=EORI_Y)
    accounts.add_user("rita", "officer", PASSWORD, offices=[OFFICE_A])  # the rate-limit test locks her out
    _, key = accounts.add_integrator("delta")
    return accounts, key


@contextmanager
def open_console(tmp: Path, poll_s: float = 0.1, **settings: Any) -> Iterator[tuple[ConsoleServices, str]]:
    """Services on a fresh chdb store under ``tmp``, with the accounts above; closed afterwards."""
    from vigie.sinks.chdb_sink import ChdbSink

    accounts, key = make_accounts(tmp / "state" / "accounts.json")
    sink = ChdbSink(tmp / "clickhouse", max_delay_s=poll_s)
    try:
        config = ConsoleSettings(data_dir=tmp, state_dir=tmp / "state", poll_s=poll_s, **settings)
        services = ConsoleServices.create(config, sink, accounts=accounts)
    except BaseException:
        sink.close()
        raise
    try:
        yield services, key
    finally:
        services.close()


# --------------------------------------------------------------------------------------------
# unit tests of the access-control parts
# --------------------------------------------------------------------------------------------


def test_passwords_are_salted_scrypt_and_checked() -> None:
    first, second = hash_password(PASSWORD, n=FAST_SCRYPT), hash_password(PASSWORD, n=FAST_SCRYPT)
    assert first != second  # salted
    assert PASSWORD not in first
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)
    assert not verify_password(PASSWORD + "x", first)
    assert not verify_password(PASSWORD, "md5$abc")


def test_accounts_file_is_private_and_holds_no_secret_in_clear(tmp_path: Path) -> None:
    accounts, key = make_accounts(tmp_path / "accounts.json")
    text = (tmp_path / "accounts.json").read_text()
    assert PASSWORD not in text and key not in text
    assert stat.S_IMODE(os.stat(tmp_path / "accounts.json").st_mode) == 0o600
    assert accounts.authenticate("ana", PASSWORD) == Principal("ana", "officer", frozenset({OFFICE_A}))
    assert accounts.authenticate("ana", "wrong-password") is None
    assert accounts.authenticate("nobody", PASSWORD) is None
    assert accounts.authenticate("delta", PASSWORD) is None  # integrators have no password
    integrator = accounts.authenticate_api_key(key)
    assert integrator is not None and integrator.role == "integrator" and not integrator.reads_alerts
    assert accounts.authenticate_api_key(key[:-2] + "xx") is None
    accounts.set_disabled("ana", True)
    assert accounts.authenticate("ana", PASSWORD) is None and accounts.principal("ana") is None


def test_scopes_must_fit_roles(tmp_path: Path) -> None:
    accounts = AccountStore(tmp_path / "accounts.json", scrypt_n=FAST_SCRYPT)
    with pytest.raises(ValueError, match="officer needs at least one office"):
        accounts.add_user("ann", "officer", PASSWORD, offices=["*"])
    with pytest.raises(ValueError, match="operator account needs its EORI"):
        accounts.add_user("opx", "operator", PASSWORD)
    with pytest.raises(ValueError, match="at least 10 characters"):
        accounts.add_user("ann", "officer", "short", offices=[OFFICE_A])
    with pytest.raises(ValueError, match="invalid customs office"):
        accounts.add_user("ann", "officer", PASSWORD, offices=["FR00'; DROP"])


def test_secrets_are_generated_once_and_private(tmp_path: Path) -> None:
    first = ConsoleSecrets.load_or_create(tmp_path / "state")
    second = ConsoleSecrets.load_or_create(tmp_path / "state")
    assert first == second and len(first.audit_key) == 32
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "secrets.json").st_mode) == 0o600
    assert ConsoleSecrets.load_or_create(tmp_path / "other").audit_key != first.audit_key


def test_sessions_expire_when_idle_and_can_be_revoked() -> None:
    now = [0.0]
    sessions = SessionStore(idle_s=10, absolute_s=100, clock=lambda: now[0])
    token, session = sessions.create("ana")
    assert sessions.get(token) is session and sessions.get("forged") is None
    now[0] = 9.0
    assert sessions.get(token) is session  # activity restarts the idle timer
    now[0] = 20.0
    assert sessions.get(token) is None
    token, _ = sessions.create("ana")
    sessions.revoke(token)
    assert sessions.get(token) is None


def test_rate_limiter_locks_a_name_then_releases_it() -> None:
    now = [0.0]
    limiter = LoginRateLimiter(
        max_failures_per_name=3, max_failures_per_address=100, lockout_s=60, clock=lambda: now[0]
    )
    for _ in range(2):
        limiter.record_failure("ana", "10.0.0.1")
    assert limiter.retry_after("ana", "10.0.0.9") is None
    limiter.record_failure("ana", "10.0.0.2")
    assert limiter.retry_after("ana", "10.0.0.9") == 60  # the name is locked, from any address
    assert limiter.retry_after("bob", "10.0.0.9") is None
    now[0] = 61.0
    assert limiter.retry_after("ana", "10.0.0.9") is None


def test_rate_limiter_counts_attempts_in_flight() -> None:
    limiter = LoginRateLimiter(max_failures_per_name=2, max_failures_per_address=100, clock=lambda: 0.0)
    assert limiter.begin_attempt("ana", "10.0.0.1") is None
    assert limiter.begin_attempt("ana", "10.0.0.2") is None
    assert limiter.begin_attempt("ana", "10.0.0.3") is not None  # two checks in flight: the limit
    limiter.end_attempt("ana", "10.0.0.1", success=False)
    limiter.end_attempt("ana", "10.0.0.2", success=False)
    assert limiter.begin_attempt("ana", "10.0.0.3") == 300.0  # both failed: locked out
    assert limiter.begin_attempt("bob", "10.0.0.1") is None
    limiter.end_attempt("bob", "10.0.0.1", success=True)
    assert limiter.begin_attempt("bob", "10.0.0.1") is None


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="console-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
