"""One way for every runtime to open the sink its configuration names."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .base import Sink


class SinkSpecError(ValueError):
    """A sink spec that names no sink (a typo'd scheme, an empty path, a bad parameter)."""


def open_sink(spec: str) -> Sink | None:
    """Open the sink ``spec`` names, or return ``None`` for ``none``.

    - ``none`` (or empty): no sink;
    - ``chdb:PATH[?ttl_days=N]`` or a bare path: embedded ClickHouse in that directory;
    - ``clickhouse://[USER[:PASSWORD]@]HOST[:PORT][/DATABASE][?senders=N&ttl_days=N]``: a
      ClickHouse server over the native protocol (user ``default`` with no password, port 9000
      and database ``vigie`` by default; percent-encode special characters in the password).
      ``senders``: connections inserting a flush's tables side by side (2 by default; a
      flush holds at most a handful of table groups, so more than 4 rarely helps).

    ``ttl_days``: how long tables holding personal data keep rows (default 1826, five years, for
    tables created; ``none``: no limit). Given in the spec, it is applied to existing tables too
    (see :mod:`vigie.sinks.ddl`); without it, an existing store keeps its period.

    >>> open_sink("none") is None
    True
    >>> for spec in ("clickhose://vigie:secret@db.example/vigie", "chdb:", "clickhouse://db.example/vigie?batch=5"):
    ...     try:
    ...         resolve_sink_spec(spec)
    ...     except SinkSpecError as exc:
    ...         print(exc)
    unknown sink 'clickhose://...': use 'none', 'chdb:PATH' or 'clickhouse://[USER[:PASSWORD]@]HOST[:PORT][/DB]'
    chdb sink: no directory given (chdb:PATH)
    clickhouse:// sink: unknown parameter(s) batch (known: senders, ttl_days)
    >>> sink_options("chdb", "ttl_days=none"), sink_options("clickhouse://", "senders=3&ttl_days=365")
    ({'ttl_days': None, 'enforce_ttl': True}, {'senders': 3, 'ttl_days': 365, 'enforce_ttl': True})
    """
    kind, options = resolve_sink_spec(spec)
    if kind == "none":
        return None
    if kind == "clickhouse":
        from .native_sink import NativeSink

        return NativeSink(**options)  # type: ignore[arg-type]
    from .chdb_sink import ChdbSink

    return ChdbSink(**options)  # type: ignore[arg-type]


def resolve_sink_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``("none" | "chdb" | "clickhouse", the sink's keyword arguments)`` for ``spec``, without opening
    anything: a runtime checks its ``--sink`` with it before connecting elsewhere. Raises
    :class:`SinkSpecError` for a spec that names no sink."""
    spec = spec.strip()
    if spec.lower() in ("", "none"):
        return "none", {}
    if spec.startswith("clickhouse://"):
        url = urlsplit(spec)
        return "clickhouse", {
            "host": url.hostname or "127.0.0.1",
            "port": url.port or 9000,
            "database": url.path.strip("/") or "vigie",
            "user": unquote(url.username) if url.username else "default",
            "password": unquote(url.password) if url.password else "",
            **sink_options("clickhouse://", url.query),
        }
    if "://" in spec or spec.lower() in ("chdb", "clickhouse"):
        # A typo'd scheme would otherwise become a local directory, a password in its name.
        shown = spec.split("://", 1)[0] + "://..." if "://" in spec else spec
        raise SinkSpecError(
            f"unknown sink {shown!r}: use 'none', 'chdb:PATH' or 'clickhouse://[USER[:PASSWORD]@]HOST[:PORT][/DB]'"
        )
    path, _, query = spec.removeprefix("chdb:").partition("?")
    if not path.strip():
        raise SinkSpecError("chdb sink: no directory given (chdb:PATH)")
    return "chdb", {"path": Path(path), **sink_options("chdb", query)}


def sink_options(kind: str, query: str) -> dict[str, int | bool | None]:
    """The keyword arguments a sink spec's query string sets (``senders`` for a server, ``ttl_days``);
    unknown ones refused."""
    params = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    known = ["senders", "ttl_days"] if kind == "clickhouse://" else ["ttl_days"]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise SinkSpecError(f"{kind} sink: unknown parameter(s) {', '.join(unknown)} (known: {', '.join(known)})")
    options: dict[str, int | bool | None] = {}
    if "senders" in params:
        value = params["senders"][-1]
        if not value.isdigit() or int(value) < 1:
            raise SinkSpecError(f"{kind} sink: senders must be a whole number >= 1, got {value!r}")
        options["senders"] = int(value)
    if "ttl_days" in params:
        value = params["ttl_days"][-1]
        if value.lower() == "none":
            options["ttl_days"] = None
        elif value.isdigit() and int(value) >= 1:
            options["ttl_days"] = int(value)
        else:
            raise SinkSpecError(f"{kind} sink: ttl_days must be a whole number of days >= 1 or 'none', got {value!r}")
        options["enforce_ttl"] = True  # set explicitly: existing tables take it too
    return options
