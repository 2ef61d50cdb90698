"""Command line of the officer console and of the audit log.

Mount in the ``vigie`` CLI::

    app.add_typer(console_app_cli, name="console")   # vigie console serve | user ... | apikey ...
    app.add_typer(audit_app_cli, name="audit")       # vigie audit verify

``vigie console audit verify`` works too (the audit app is also mounted under the console).

Examples::

    vigie console user add ana --role officer --office FR002300          # asks for the password
    vigie console apikey delta-g                                         # prints the key once
    vigie console serve --replay vigie-data/generated/events-seed7.jsonl --replay-rate 50
    vigie audit verify                                                   # exit 1 names the first broken entry

On first start with no account, ``serve`` creates a ``supervisor`` account (every office)
with a random password printed once on stderr. Accounts, the audit key and the outbox live
under ``--state-dir`` (default ``DATA_DIR/console``), outside the repository.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Annotated, cast

import typer

from vigie.sinks.ddl import DEFAULT_DATABASE

from .console_auth import ROLES, AccountStore, ConsoleSecrets, Role

__all__ = ["audit_app_cli", "console_app_cli"]

console_app_cli = typer.Typer(help="Officer console: web application, local accounts, API keys.", no_args_is_help=True)
audit_app_cli = typer.Typer(help="Tamper-evident audit log.", no_args_is_help=True)
user_app = typer.Typer(help="Local accounts (officers, supervisors, operators).", no_args_is_help=True)
console_app_cli.add_typer(user_app, name="user")
console_app_cli.add_typer(audit_app_cli, name="audit")

DataDir = Annotated[Path, typer.Option("--data-dir", help="Where embedded ClickHouse lives (as for `vigie run`).")]
StateDir = Annotated[
    Path | None, typer.Option("--state-dir", help="Accounts, secrets, audit anchor, outbox [DATA_DIR/console].")
]
DEFAULT_DATA_DIR = Path("vigie-data")


def _state(data_dir: Path, state_dir: Path | None) -> Path:
    return state_dir or data_dir / "console"


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@console_app_cli.command("serve")
def serve(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    state_dir: StateDir = None,
    host: Annotated[str, typer.Option(help="Address to listen on (put a TLS reverse proxy in front).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    replay: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Score this JSON-lines file in process while serving."),
    ] = None,
    replay_rate: Annotated[float, typer.Option(min=0.0, help="Replayed events per second (0: flat out).")] = 20.0,
    generate_hours: Annotated[
        float | None, typer.Option(help="Generate this many hours of synthetic traffic and replay them.")
    ] = None,
    seed: int = 7,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fused risk raising an alert.")] = 0.5,
    clickhouse: Annotated[
        str | None, typer.Option(help="HOST:PORT of a ClickHouse server (native protocol) instead of chdb.")
    ] = None,
    database: str = DEFAULT_DATABASE,
    kafka_bootstrap: Annotated[
        str | None, typer.Option(help="Publish recorded outcomes to this Kafka cluster's outcomes topic.")
    ] = None,
    kafka_prefix: str = "vigie.",
    budget: Annotated[int, typer.Option(min=1, help="Alerts one office can control per day.")] = 40,
    secure_cookies: Annotated[bool, typer.Option(help="Mark cookies Secure (when served over HTTPS).")] = False,
) -> None:
    """Serve the officer console (FastAPI + uvicorn), one process per store."""
    import uvicorn

    from .console_app import ConsoleSettings, build_services, create_app
    from .console_audit import AuditAnchorMismatch

    state = _state(data_dir, state_dir)
    accounts = AccountStore(state / "accounts.json")
    if len(accounts) == 0:
        password = secrets.token_urlsafe(12)
        accounts.add_user("supervisor", "supervisor", password, offices=["*"])
        typer.echo(
            f"first start: created account 'supervisor' (every office) with password {password}\n"
            "  shown once; change it with `vigie console user passwd supervisor`",
            err=True,
        )
    if generate_hours is not None and replay is None:
        from vigie.schemas.generator import GeneratorConfig, write_stream

        replay = data_dir / "generated" / f"console-seed{seed}.jsonl"
        replay.parent.mkdir(parents=True, exist_ok=True)
        write_stream(GeneratorConfig(seed=seed, duration_hours=generate_hours), replay, replay.with_suffix(".truth"))
        typer.echo(f"generated {replay}", err=True)
    settings = ConsoleSettings(
        data_dir=data_dir,
        state_dir=state,
        database=database,
        clickhouse=clickhouse,
        kafka_bootstrap=kafka_bootstrap,
        kafka_prefix=kafka_prefix,
        replay=replay,
        replay_rate=replay_rate,
        alert_threshold=threshold,
        daily_alert_budget=budget,
        secure_cookies=secure_cookies,
    )
    try:
        services = build_services(settings)
    except AuditAnchorMismatch as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    app = create_app(services)
    typer.echo(f"officer console on http://{host}:{port}/ (store: {clickhouse or data_dir / 'clickhouse'})", err=True)
    # One worker: sessions, the rate limiter and the audit chain's head live in this process.
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=3)


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="Account name: lower-case letters, digits, '.', '_', '-'.")],
    role: Annotated[str, typer.Option(help=f"One of {', '.join(r for r in ROLES if r != 'integrator')}.")],
    office: Annotated[
        list[str] | None, typer.Option("--office", help="Office in scope (repeat); '*' = all, supervisors only.")
    ] = None,
    eori: Annotated[str | None, typer.Option(help="The operator's EORI (operator accounts).")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin instead of prompting.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    state_dir: StateDir = None,
) -> None:
    """Create a password account."""
    if role not in ROLES or role == "integrator":
        raise typer.BadParameter(
            "officer, supervisor or operator (integrators: `vigie console apikey`)", param_hint="--role"
        )
    accounts = AccountStore(_state(data_dir, state_dir) / "accounts.json")
    try:
        accounts.add_user(name, cast(Role, role), _read_password(password_stdin), offices=office or [], eori=eori)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"created {role} {name}")


@user_app.command("passwd")
def user_passwd(
    name: str,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin instead of prompting.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    state_dir: StateDir = None,
) -> None:
    """Set an account's password."""
    accounts = AccountStore(_state(data_dir, state_dir) / "accounts.json")
    try:
        accounts.set_password(name, _read_password(password_stdin))
    except (KeyError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"password of {name} changed")


@user_app.command("disable")
def user_disable(
    name: str,
    enable: Annotated[bool, typer.Option("--enable", help="Re-enable instead.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    state_dir: StateDir = None,
) -> None:
    """Disable (or re-enable) an account: its sessions and API key stop working at once."""
    accounts = AccountStore(_state(data_dir, state_dir) / "accounts.json")
    try:
        accounts.set_disabled(name, not enable)
    except KeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{name} {'enabled' if enable else 'disabled'}")


@user_app.command("list")
def user_list(data_dir: DataDir = DEFAULT_DATA_DIR, state_dir: StateDir = None) -> None:
    """List accounts with role and scope (no secret is shown)."""
    for account in AccountStore(_state(data_dir, state_dir) / "accounts.json").accounts():
        scope = ",".join(account.offices) or account.eori or "-"
        flag = " (disabled)" if account.disabled else ""
        typer.echo(f"{account.name}\t{account.role}\t{scope}{flag}")


@console_app_cli.command("apikey")
def apikey(
    name: Annotated[str, typer.Argument(help="Integrator account to create.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    state_dir: StateDir = None,
) -> None:
    """Create an integrator account and print its API key (once; only its hash is stored)."""
    accounts = AccountStore(_state(data_dir, state_dir) / "accounts.json")
    try:
        _, key = accounts.add_integrator(name)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(key)


@audit_app_cli.command("verify")
def audit_verify(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    state_dir: StateDir = None,
    clickhouse: Annotated[str | None, typer.Option(help="HOST:PORT of a ClickHouse server instead of chdb.")] = None,
    database: str = DEFAULT_DATABASE,
    allow_missing_anchor: Annotated[
        bool, typer.Option(help="Pass without audit-head.json (deleted newest entries then go unnoticed).")
    ] = False,
    allow_missing_key: Annotated[
        bool, typer.Option(help="Pass without secrets.json (seals are then not checked, only hashes).")
    ] = False,
) -> None:
    """Check the audit log's hash chain, seals and anchor; exit 1 naming the first broken entry.

    A missing anchor or audit key is a failure too (exit 1): without them a truncated or
    re-hashed log would pass. ``--allow-missing-anchor`` / ``--allow-missing-key`` accept
    that, explicitly. With embedded chdb, stop the console first (one process per store),
    or ask a running console: GET /api/audit/verify as a supervisor.
    """
    from .console_audit import verify_log

    state = _state(data_dir, state_dir)
    anchor_path = state / "audit-head.json"
    # Never load_or_create here: creating a fresh key would make every seal look forged.
    key = ConsoleSecrets.load_or_create(state).audit_key if (state / "secrets.json").exists() else None
    missing: list[str] = []
    if key is None:
        typer.echo(f"no {state / 'secrets.json'}: checking hashes only, not seals", err=True)
        if not allow_missing_key:
            missing.append(f"no audit key ({state / 'secrets.json'}); pass --allow-missing-key to accept")
    if not anchor_path.exists():
        typer.echo(f"no {anchor_path}: deleted newest entries cannot be detected", err=True)
        if not allow_missing_anchor:
            missing.append(f"no anchor ({anchor_path}); pass --allow-missing-anchor to accept")
    if clickhouse:
        from vigie.sinks.native_sink import NativeSink

        host, _, port = clickhouse.rpartition(":")
        store = NativeSink(host or "127.0.0.1", int(port or 9000), database)
    else:
        from vigie.sinks.chdb_sink import ChdbSink

        store = ChdbSink(data_dir / "clickhouse", database)
    try:
        from .console_audit import audit_ddl

        store.query(audit_ddl(store.profile, database))
        report = verify_log(store, key, anchor_path, database)
    finally:
        store.close()
    typer.echo(str(report))
    if not report.ok:
        raise typer.Exit(1)
    if missing:
        typer.echo("audit log NOT verified: " + "; ".join(missing), err=True)
        raise typer.Exit(1)
